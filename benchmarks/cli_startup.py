"""Start-up of a fresh ``latentseg segment`` process: importing MONAI and the pipeline, with and
without ``transformers`` hidden while MONAI loads (``model.monai_import``, which the CLI uses).

Each row is a fresh interpreter; plain and lean runs alternate, so both see the same machine load.

    python -m benchmarks.cli_startup [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from benchmarks.common import REPO, Table, load_average, publish, summary

CASES: dict[str, tuple[str, str]] = {
    "import monai.inferers": (
        "import monai.inferers",
        "from model.monai_import import import_monai_lean; import_monai_lean(); import monai.inferers",
    ),
    "import model.inference.pipeline (what segment loads)": (
        "import model.inference.pipeline",
        "from model.monai_import import import_monai_lean; import_monai_lean(); import model.inference.pipeline",
    ),
}


def fresh(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load_before = load_average()
    table = Table("Fresh-process start-up: MONAI with and without transformers (seconds, median (min–max))",
                  ["what", "plain", "transformers hidden", "saved (median)"])
    raw: dict[str, dict[str, list[float]]] = {}
    for name, (plain_code, lean_code) in CASES.items():
        plain: list[float] = []
        lean: list[float] = []
        for _ in range(args.repeats):
            plain.append(fresh(plain_code))
            lean.append(fresh(lean_code))
        raw[name] = {"plain": plain, "lean": lean}
        table.rows.append([name, summary(plain), summary(lean), f"{statistics.median(plain) - statistics.median(lean):.2f}"])
    table.notes.append(f"{args.repeats} fresh interpreters each, alternating; transformers is installed (the dev extra)")
    publish("cli_startup", [table], {"seconds": raw}, load_before)


if __name__ == "__main__":
    main()
