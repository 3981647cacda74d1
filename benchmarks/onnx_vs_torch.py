"""ONNX Runtime vs torch: the standard case end to end (CLI and in process, per phase), each
network on its own, and how far the mean masks of the two backends are apart.

    python -m benchmarks.onnx_vs_torch [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from benchmarks.common import (
    STANDARD_TARGETS,
    Table,
    benchmark_bundle,
    load_average,
    publish,
    set_threads,
    standard_phantom,
)
from benchmarks.standard_case import PHASES, in_process, load, through_cli

BACKENDS = ("torch", "onnx")

# The batch sizes the pipeline uses on the demo configuration (ensemble.encode_batch_size,
# max_batch, ensemble.decode_batch_size), and batch 1.
NETWORK_BATCHES = {"encode_image": 4, "denoiser": 250, "decode_mask": 8}


def network_inputs(config: Any, name: str, batch: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    c, h, w = config.latent_shape
    if name == "encode_image":
        return (torch.rand(batch, config.image_window_channels, *config.preprocess.patch_size, generator=g),)
    if name == "decode_mask":  # channels-last, as model.inference.ensemble passes it
        return (torch.randn(batch, c, h, w, generator=g).contiguous(memory_format=torch.channels_last),)
    return (torch.randn(batch, c, h, w, generator=g), torch.full((batch,), 500),
            torch.randn(batch, config.encoded_image_channels, h, w, generator=g), torch.full((batch,), 5))


def interleaved_ms(bundles: dict[str, Any], name: str, batch: int, repeats: int) -> tuple[float, float]:
    """Median ms per sample of network ``name`` for torch and onnx, calls alternated after a warm-up."""
    x = network_inputs(bundles["torch"].config, name, batch)
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    with torch.inference_mode():
        for b in BACKENDS:
            getattr(bundles[b], name)(*x)
        for _ in range(repeats):
            for b in BACKENDS:
                start = time.perf_counter()
                getattr(bundles[b], name)(*x)
                times[b].append(time.perf_counter() - start)
    return tuple(1000 * statistics.median(times[b]) / batch for b in BACKENDS)  # type: ignore[return-value]


def interleaved(bundle_path: Path, trained: bool, repeats: int, threads: int, outputs: Path) -> dict[str, Any]:
    """torch and onnx runs alternated (in process, then CLI), so a change in machine load hits both alike."""
    image = standard_phantom()
    bundles = {b: load(bundle_path, b) for b in BACKENDS}
    results: dict[str, Any] = {b: {"bundle": str(bundle_path), "trained": trained, "backend": b, "targets": STANDARD_TARGETS,
                                   "ensemble": 5, "steps": 10, "in_process": [], "cli": []} for b in BACKENDS}
    for i in range(repeats):
        for b in BACKENDS:
            keep = outputs / b if i == 0 else None
            results[b]["in_process"].append(in_process(bundles[b], image, STANDARD_TARGETS, 5, 10, keep=keep))
    for _ in range(repeats):
        for b in BACKENDS:
            results[b]["cli"].append(through_cli(bundle_path, b, image, STANDARD_TARGETS, 5, 10, threads))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    load_before = load_average()
    bundle_path, trained = benchmark_bundle()
    outputs = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    try:
        results = interleaved(bundle_path, trained, args.repeats, threads, outputs)
        difference: dict[str, float] = {}
        above: dict[str, float] = {}
        for target in STANDARD_TARGETS.split(","):
            for kind in ("mean", "variance"):
                a, b = (np.asarray(nib.load(str(outputs / backend / f"{target}_{kind}.nii.gz")).dataobj)
                        for backend in ("torch", "onnx"))
                gap = np.abs(a - b)
                difference[f"{target}_{kind}"] = float(gap.max())
                above[f"{target}_{kind}"] = float((gap > 1e-4).mean())
    finally:
        shutil.rmtree(outputs, ignore_errors=True)

    def median(backend: str, key: str) -> float:
        return statistics.median(r["seconds"][key] for r in results[backend]["in_process"])

    phases = Table(
        f"ONNX Runtime vs torch, standard case ({STANDARD_TARGETS}, ensemble 5, 10 steps), seconds",
        ["phase", "torch", "onnx", "torch / onnx"],
    )
    for key, label in PHASES:
        t, o = median("torch", key), median("onnx", key)
        phases.rows.append([label, f"{t:.2f}", f"{o:.2f}", f"{t / o:.2f}×" if o > 0 else "—"])
    t, o = median("torch", "total"), median("onnx", "total")
    phases.rows.append(["**in process, bundle loaded**", f"**{t:.2f}**", f"**{o:.2f}**", f"**{t / o:.2f}×**"])
    cli = {b: statistics.median(r["seconds"] for r in results[b]["cli"]) for b in results}
    phases.rows.append(["**end to end: `latentseg segment`**", f"**{cli['torch']:.2f}**", f"**{cli['onnx']:.2f}**",
                        f"**{cli['torch'] / cli['onnx']:.2f}×**"])
    phases.notes.append("max |onnx − torch| over the written maps: "
                        + ", ".join(f"{k} {v:.1e}" for k, v in difference.items())
                        + "; voxels differing by more than 1e-4: "
                        + ", ".join(f"{k} {100 * v:.3f} %" for k, v in above.items()))
    phases.notes.append(f"{threads} threads for torch and for ONNX Runtime (intra-op; no spinning); median of "
                        f"{args.repeats}, torch and onnx runs alternated"
                        + ("" if trained else "; random weights with the demo configuration"))

    bundles = {b: load(bundle_path, b) for b in BACKENDS}
    networks = Table("Each network alone, ms per sample", ["network", "batch", "torch", "onnx", "torch / onnx"])
    micro: dict[str, Any] = {}
    for name, batch in NETWORK_BATCHES.items():
        for b in (batch, 1):
            t_ms, o_ms = interleaved_ms(bundles, name, b, 3)
            micro[f"{name}@{b}"] = {"torch": t_ms, "onnx": o_ms}
            networks.rows.append([name, b, f"{t_ms:.2f}", f"{o_ms:.2f}", f"{t_ms / o_ms:.2f}×"])
    publish("onnx_vs_torch", [phases, networks], {"results": results, "max_abs_difference": difference,
                                                  "fraction_above_1e-4": above,
                                                  "networks": micro, "cli_seconds": cli}, load_before)


if __name__ == "__main__":
    main()
