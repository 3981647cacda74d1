"""`bash scripts/demo.sh` on a fresh checkout: set-up (new .venv) and the demo itself, timed apart.

A clean clone of this repository's HEAD in a temporary folder (no .venv, no runs/, no shared data
needed), then ``scripts/setup.sh`` and ``scripts/demo.sh`` one after the other, each timed. The demo
segments the shipped real example case (examples/ts_a_torso) through the REST API with the embedded
worker. Package downloads come from the machine's pip cache or registry: a first install on a new
machine with a cold cache takes longer, and that is the set-up row, not the demo's.

    python -m benchmarks.demo_script [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="latentseg-demo-"))
    clone = work / "latentseg"
    try:
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        setup_s, _ = _timed(["bash", "scripts/setup.sh"], clone)
        demo_s, out = _timed(["bash", "scripts/demo.sh"], clone)
        results = sorted(p.name for p in (clone / "out" / "demo" / "results").glob("*/*"))
        print("| step | seconds |")
        print("|---|---:|")
        print(f"| `scripts/setup.sh` on a fresh clone (new .venv) | {setup_s:.0f} |")
        print(f"| `scripts/demo.sh` (server start, upload, segmentation, download) | {demo_s:.0f} |")
        print(f"| both (a fresh machine's first `bash scripts/demo.sh`) | {setup_s + demo_s:.0f} |")
        print()
        print(f"results: {', '.join(results)}")
        print(out.strip().splitlines()[-1] if out.strip() else "")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
