"""Peak resident memory of `latentseg segment` on a 512×512×300 volume (and the standard 100 slices).

Each run is a fresh CLI process (streamed outputs: one full-resolution map in memory at a
time); its peak RSS comes from the kernel's rusage. For comparison, the in-memory Python API
(``segment_volume`` + ``write_segmentation``: every map held at once) on the same volume.

    python -m benchmarks.peak_rss [--slices 300]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (
    LATENTSEG,
    STANDARD_SEED,
    STANDARD_SPACING,
    STANDARD_TARGETS,
    Table,
    benchmark_bundle,
    load_average,
    phantom_path,
    publish,
    run_measured,
    set_threads,
)

IN_MEMORY = """
import sys
from pathlib import Path
from model.bundle.loaded import load_bundle
from model.inference.pipeline import SegmentationOptions, segment_volume
from model.inference.writing import write_segmentation
from model.inference.preprocessing import load_nifti
bundle = load_bundle(sys.argv[1], device="cpu")
result = segment_volume(bundle, load_nifti(sys.argv[2]), sys.argv[3], SegmentationOptions(ensemble=5, steps=10))
write_segmentation(result, Path(sys.argv[4]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    load_before = load_average()
    bundle_path, trained = benchmark_bundle()
    table = Table("Peak RSS (ensemble 5, 10 steps, liver + spleen, torch backend)",
                  ["volume", "how", "peak RSS", "seconds"])
    data = {}
    for slices in sorted({100, args.slices}):
        image, _ = phantom_path(STANDARD_SEED, (512, 512, slices), STANDARD_SPACING)
        ways = [("`latentseg segment` (streamed)",
                 lambda out: [LATENTSEG, "segment", str(image), "--targets", STANDARD_TARGETS, "--out", str(out),
                              "--ensemble", "5", "--steps", "10", "--bundle", str(bundle_path), "--device", "cpu",
                              "--quiet", "--threads", str(threads)])]
        if slices == args.slices:
            ways.append(("Python API, every map in memory",
                         lambda out: [sys.executable, "-c", IN_MEMORY, str(bundle_path), str(image), STANDARD_TARGETS,
                                      str(out)]))
        for how, command in ways:
            out = Path(tempfile.mkdtemp(prefix="bench-rss-"))
            try:
                run = run_measured(command(out / "out"))
            finally:
                shutil.rmtree(out, ignore_errors=True)
            if run.returncode != 0:
                raise RuntimeError(f"{how} failed: {run.stderr}")
            gib = run.max_rss_mib / 1024
            data[f"{slices}:{how}"] = {"max_rss_gib": gib, "seconds": run.seconds}
            table.rows.append([f"512×512×{slices} int16 ({512 * 512 * slices * 2 / 2**20:.0f} MiB on disk before gzip)",
                               how, f"**{gib:.2f} GiB**", f"{run.seconds:.1f}"])
    table.notes.append(f"{threads} threads" + ("" if trained else "; random weights with the demo configuration"))
    publish("peak_rss", [table], data, load_before)


if __name__ == "__main__":
    main()
