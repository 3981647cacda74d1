"""Render the card section comparing training recipes on the left-out patients (issue 16).

    .venv/bin/python scripts/recipe_comparison.py --name longer_training --runs runs/real \
        --reports runs/real_card --title "Longer training: 6000 steps instead of 1400"

Reads each fold's ``latentseg evaluate`` report (``<reports>/fold_<case>/evaluation.json``) and run provenance
(``<runs>/fold_<case>/bundle``), keeps copies in ``docs/model_card/evaluations/<name>/`` (so the section
re-renders on a clone without the runs), puts them beside the recorded earlier recipes
(``docs/model_card/history/*.json``) and writes ``docs/model_card/<name>.md``; MODEL_CARD.md shows that file
between ``<!-- <name> -->`` markers (replaced in place, or added before the ceilings section).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="section name (file stem, marker)")
    parser.add_argument("--title", required=True)
    parser.add_argument("--label", default="new recipe", help="column label of the new folds")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "real")
    parser.add_argument("--reports", type=Path, default=REPO / "runs" / "real_card")
    parser.add_argument("--history", type=Path, default=REPO / "docs" / "model_card" / "history" / "v0.7_left_out.json")
    parser.add_argument("--notes", type=Path, help="markdown appended under the tables")
    parser.add_argument("--card", type=Path, default=REPO / "MODEL_CARD.md")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from training import card_sections as cs
    from training.evaluate import read_report

    store = REPO / "docs" / "model_card" / "evaluations" / args.name
    store.mkdir(parents=True, exist_ok=True)
    for report in sorted(args.reports.glob("fold_*/evaluation.json")):
        shutil.copyfile(report, store / f"{report.parent.name}.json")
    provenance_path = store / "runs.json"
    provenance = json.loads(provenance_path.read_text()) if provenance_path.is_file() else {}
    for manifest in sorted(args.runs.glob("fold_*/bundle/bundle.json")):
        provenance[manifest.parent.parent.name] = json.loads(manifest.read_text())["provenance"]
    provenance_path.write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    folds = [read_report(p) for p in sorted(store.glob("fold_*.json"))]
    if not folds:
        raise SystemExit(f"no fold reports in {args.reports} or {store}")
    history = json.loads(args.history.read_text())["runs"] if args.history.is_file() else {}
    order = list(dict.fromkeys(r.target for rep in folds for r in rep.results))
    steps = sorted({p.get("stages", {}).get("diffusion", {}).get("steps", 0) for p in provenance.values()})
    label = f"{args.label} ({'/'.join(str(s) for s in steps)} steps)"
    rows = ["| run | left out | init from | datasets | diffusion steps |", "|---|---|---|---|---:|"]
    for name, prov in sorted(provenance.items()):
        parent = prov.get("init_from") or {}
        rows.append(f"| `{name}` | {', '.join(prov.get('exclude_cases') or [])} | {parent.get('name', '—')} "
                    f"{parent.get('version', '')} | {', '.join(prov.get('datasets', []))} | "
                    f"{prov.get('stages', {}).get('diffusion', {}).get('steps', 0)} |")
    columns = {name: cs.dice_from_history(run) for name, run in history.items()}
    columns[label] = cs.dice_of(folds)
    body = [f"### {args.title}", "", "\n".join(rows), "", cs.dice_columns_table(columns, order), ""]
    if args.notes and args.notes.is_file():
        body += [args.notes.read_text().strip(), ""]
    text = "\n".join(body)
    (REPO / "docs" / "model_card" / f"{args.name}.md").write_text(text)
    card = args.card.read_text()
    start, end = f"<!-- {args.name} -->", f"<!-- /{args.name} -->"
    block = f"{start}\n{text}\n{end}"
    if start in card and end in card:
        card = card[: card.index(start)] + block + card[card.index(end) + len(end):]
    else:
        anchor = "## Ceilings on the real masks"
        card = card.replace(anchor, block + "\n\n" + anchor, 1) if anchor in card else card + "\n" + block + "\n"
    args.card.write_text(card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
