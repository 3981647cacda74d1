"""Measure the review flag and the calibration on labelled cases; write the model card's data.

The evaluations themselves are ``latentseg evaluate`` runs (steps 10, ensemble 5, seed 0), one
folder per run under ``--evaluations`` (what issue 18's measurement ran, 2 CPU cores)::

    latentseg phantoms --out M/data/phantoms9000 --cases 4 --seed 9000        # never in any training set
    latentseg evaluate --data M/data/phantoms9000 --out M/out/v07_phantoms    # the shipped bundle (v0.7)
    latentseg evaluate --data ../shared/data/ts-examples --out M/out/v07_ts
    latentseg evaluate --data M/data/spleen8 --out M/out/v07_spleen8          # msd-spleen8 with a labelmap.json
    git show 06aa22b:model/bundles/demo/bundle.json > M/v06/bundle.json         # v0.6: phantoms only, so
    git show 06aa22b:model/bundles/demo/weights.safetensors > M/v06/weights.safetensors   # real CT is held out
    latentseg evaluate --bundle M/v06 --data ... --out M/out/v06_{phantoms,ts,spleen8}

    python scripts/measure_review_flag.py --evaluations M/out

After a change of the shipped rule alone, ``--from-measurement`` re-applies it to the rows stored in
``docs/model_card/review_flag.json`` (no model is run; the reliability diagrams are left as they are).

Phantom runs are the validation set (thresholds are chosen there); real CT is the test set.
Writes ``docs/model_card/review_flag.json`` (the measured rows), ``review_flag.md`` (the card's
sections, included by scripts/real_model_card.py) and ``reliability_<bundle>.png``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training.cards import card_sections as cs
from training.evaluation.evaluate import merge_bins, read_report, reliability_diagram
from training.evaluation.review_flag import MeasuredRun, measure, read_measurement, write_measurement

log = logging.getLogger("measure_review_flag")
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = "v0.7"
# run folder -> (bundle, the bundle never trained on these cases, a validation run)
PLAN: dict[str, tuple[str, bool, bool]] = {
    "v07_phantoms": (SHIPPED, True, True), "v06_phantoms": ("v0.6", True, True),
    "v06_ts": ("v0.6", True, False), "v06_spleen8": ("v0.6", True, False),
    "v07_ts": (SHIPPED, False, False), "v07_spleen8": (SHIPPED, False, False),
}


def reading(document: dict) -> list[str]:
    """What the numbers say, with the numbers (so a re-measurement keeps the prose true)."""
    test, val = document["rule"]["test"], document["rule"]["validation"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.0f} %"

    return [
        "Reading it:",
        f"- The members' pairwise Dice ranks the true Dice best; the shipped rule (it at the validation threshold, "
        f"plus the size rule) flags {pct(test['sensitivity'])} of the poor real segmentations and "
        f"{pct(test['false_alarm'])} of the good ones. "
        "Fewer false alarms cost missed poor ones: the threshold is a trade-off, not a guarantee.",
        f"- The empty / implausible-size rule flagged {pct(test['size_rule_false_alarm'])} of {test['good']} good real "
        f"rows and {pct(val['size_rule_false_alarm'])} of the phantoms' good rows (their organs are drawn smaller than "
        "the adult ranges); it caught v0.6's misplaced kidneys (Dice 0, 46 ml each), on which its members largely "
        "agreed. Its real false alarms are the MSD spleen case, a 756 ml spleen (splenomegaly: above the 80-500 ml "
        "range, segmented at Dice 0.96-0.97): 'above the typical range' says 'enlarged organ, or a mask that spilled "
        "onto its neighbours', and a look tells which. It was added for the second kind: the left-out folds that "
        "drew the liver into the pelvis (3.2 l for 1.1 l true, members agreeing; 'The review flag on the left-out "
        "patients').",
        f"- Every organ absent from the field of view ({test['absent']} rows) was flagged (an empty mask, or a few ml "
        "of false positive): the flag then reads 'check whether the scan contains it', a false alarm when it does "
        "not. A target absent from the mask because the model missed it (the confidently wrong case) looks the same.",
        "- Few cases (4 phantoms, 2 of them for both bundles; 3 real patients): the rates are rough. The real cases are v0.7's "
        "training data, held out only for v0.6.",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--evaluations", type=Path, help="folder of evaluate runs named as in PLAN")
    source.add_argument("--from-measurement", type=Path, metavar="JSON",
                        help="re-apply the shipped rule to the rows of an earlier review_flag.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "model_card")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    runs, reports = [], {}
    if args.from_measurement is not None:
        runs, _ = read_measurement(args.from_measurement)
    for label, (bundle, held_out, validation) in PLAN.items() if args.evaluations is not None else ():
        path = args.evaluations / label / "evaluation.json"
        if not path.is_file():
            log.warning("missing %s: left out", path)
            continue
        reports[label] = read_report(path)
        runs.append(MeasuredRun.from_report(label, reports[label], held_out=held_out, validation=validation,
                                            bundle=bundle))
    document = measure(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    write_measurement(document, args.out / "review_flag.json")
    shipped = SHIPPED
    for bundle in sorted({b for b, _, _ in PLAN.values()}):
        curves: dict[str, list] = {}
        for report in (reports[label] for label in reports if PLAN[label][0] == bundle):
            for s in report.summary:
                parts = [r.calibration_region for r in report.results if r.target == s.target and r.calibration_region]
                curves.setdefault(s.target, []).extend(parts)
        merged = {t: b for t, parts in curves.items() if (b := merge_bins(parts)) is not None}
        if merged:
            reliability_diagram(merged, args.out / f"reliability_{bundle}.png")
    text = "\n".join([
        "## Review flag (statistics.json `needs_review`)",
        "",
        cs.review_flag_section(document),
        "",
        *reading(document),
        "",
        f"## Calibration of the shipped bundle ({shipped})",
        "Mean probability per target, pooled over each data set's cases: ECE over 15 equal-width bins and the "
        "Brier score, near the structure (within 10 mm of truth ∪ prediction, as the variance AUROC) and over "
        f"the whole volume (dominated by easy background). Reliability diagram: `docs/model_card/reliability_{shipped}.png`. "
        "The real cases are this bundle's training data; the phantoms are new.",
        "",
        cs.calibration_section(document, shipped),
        "",
    ])
    (args.out / "review_flag.md").write_text(text)
    log.info("wrote %s", args.out / "review_flag.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
