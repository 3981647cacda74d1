"""The standard case, end to end through the CLI and per phase in process.

A phantom of 512×512×100 at 0.8×0.8×2.5 mm (seed 9000, held out), the demo bundle, targets
liver and spleen, ensemble 5, 10 steps. ``--targets liver --ensemble 1 --name preview`` is
the 1-target 1-sample preview.

    python -m benchmarks.standard_case [--backend torch|onnx] [--targets ...] [--ensemble E] [--steps S]
    python -m benchmarks.standard_case --compare-paths   # torch: per-window conditioning features vs
                                                         # the whole denoiser at every step, alternated in one process

``OMP_WAIT_POLICY`` defaults to PASSIVE here as in ``latentseg segment`` (set before torch loads).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    LATENTSEG,
    STANDARD_SHAPE,
    STANDARD_SPACING,
    STANDARD_TARGETS,
    Table,
    TimedBundle,
    benchmark_bundle,
    ensure_onnx_export,
    load_average,
    patched,
    publish,
    run_measured,
    set_threads,
    standard_phantom,
    summary,
)

PHASES = (
    ("load", "read NIfTI"),
    ("model_grid", "reorient + resample to the model grid"),
    ("encode_image", "encode (image VAE)"),
    ("denoiser", "denoise (U-Net)"),
    ("decode_mask", "decode (mask decoder)"),
    ("sampling_other", "noise, DDPM updates, crop, blending"),
    ("output", "resample to the input grid + write NIfTI (overlapped)"),
)
# Inside "output", on different threads (so they add up to more than its wall time):
OUTPUT_PARTS = (("resample", "resampling (main thread)"), ("write", "gzip + write (writer threads, summed)"))


def load(bundle_path: Path, backend: str) -> Any:
    from model.bundle.onnx_backend import load_backend

    onnx_dir = ensure_onnx_export(bundle_path) if backend == "onnx" else None
    return load_backend(bundle_path, backend, device="cpu" if backend == "torch" else None, onnx_dir=onnx_dir)


class _TimedBundle(TimedBundle):
    """:class:`TimedBundle` that also times the torch backend's split denoiser: ``condition_features`` (once
    per window) counts as encoding, ``denoiser_features`` (every step) as denoising."""

    NETWORKS = (*TimedBundle.NETWORKS, "condition_features", "denoiser_features")
    FOLDED = {"condition_features": "encode_image", "denoiser_features": "denoiser"}

    def folded(self) -> tuple[dict[str, float], dict[str, int]]:
        seconds, calls = dict(self.seconds), dict(self.calls)
        for name, into in self.FOLDED.items():
            seconds[into] += seconds.pop(name)
            calls[into] += calls.pop(name)
        return seconds, calls


class WholeDenoiserEachStep:
    """A torch bundle without ``condition_features``: sampling takes the straightforward path (the whole
    denoiser, first convolution over the full conditioning included, at every step for every member)."""

    def __init__(self, bundle: Any) -> None:
        self._bundle = bundle

    def __getattr__(self, name: str) -> Any:
        if name in ("condition_features", "denoiser_features"):
            raise AttributeError(name)
        return getattr(self._bundle, name)


def in_process(bundle: Any, image: Path, targets: str, ensemble: int, steps: int, seed: int = 0,
               keep: Path | None = None) -> dict[str, Any]:
    """One segment_file run with every phase timed; returns seconds per phase and counts.
    The output files are deleted unless ``keep`` names a folder for them."""
    import model.inference.pipeline as pipeline
    import model.inference.writing as writing

    timed = _TimedBundle(bundle)
    seconds: dict[str, float] = {}
    out = keep or Path(tempfile.mkdtemp(prefix="bench-"))
    options = pipeline.SegmentationOptions(ensemble=ensemble, steps=steps, seed=seed)
    try:
        with (
            patched(pipeline, "load_nifti", seconds, "load"),
            patched(pipeline, "to_model_grid", seconds, "model_grid"),
            patched(pipeline, "predict_model_grid", seconds, "predict"),
            patched(pipeline, "write_prediction", seconds, "output"),
            patched(pipeline, "resample_to_source", seconds, "resample"),
            patched(writing, "save_nifti", seconds, "write"),
        ):
            start = time.perf_counter()
            pipeline.segment_file(timed, image, out, targets, options=options)
            total = time.perf_counter() - start
    finally:
        if keep is None:
            shutil.rmtree(out, ignore_errors=True)
    network_seconds, calls = timed.folded()
    seconds.update(network_seconds)
    seconds["sampling_other"] = seconds.pop("predict") - seconds["model_grid"] - sum(network_seconds.values())
    seconds["total"] = total
    return {"seconds": seconds, "calls": calls}


def compare_paths(targets: str, ensemble: int, steps: int, repeats: int) -> tuple[Table, dict[str, Any]]:
    """The standard case in process with the torch backend, the per-window-features path and the
    straightforward path alternated ``repeats`` times, and the largest difference between their maps."""
    import nibabel as nib
    import numpy as np

    bundle_path, _ = benchmark_bundle()
    image = standard_phantom()
    bundle = load(bundle_path, "torch")
    paths = {"features once per window (now)": bundle, "whole denoiser every step (before)": WholeDenoiserEachStep(bundle)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    folders = {name: Path(tempfile.mkdtemp(prefix="bench-paths-")) for name in paths}
    try:
        for i in range(repeats):
            for name, b in paths.items():
                runs[name].append(in_process(b, image, targets, ensemble, steps, keep=folders[name] if i == 0 else None))
        now, before = (folders[name] for name in paths)
        maps = sorted(now.glob("*_mean.nii.gz")) + sorted(now.glob("*_variance.nii.gz"))
        diffs = {f.name.removesuffix(".nii.gz"): float(np.abs(np.asarray(nib.load(f).dataobj)
                                                              - np.asarray(nib.load(before / f.name).dataobj)).max())
                 for f in maps}
    finally:
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
    table = Table(f"Standard case in process, torch: conditioning features once per window vs the whole denoiser "
                  f"every step ({targets}, ensemble {ensemble}, {steps} steps)", ["path", "denoise s", "in process s"])
    for name, values in runs.items():
        table.rows.append([name, summary([r["seconds"]["denoiser"] for r in values]),
                           summary([r["seconds"]["total"] for r in values])])
    names = list(paths)
    for key, label in (("denoiser", "denoise"), ("total", "in process")):
        ratios = [b["seconds"][key] / a["seconds"][key] for a, b in zip(runs[names[0]], runs[names[1]], strict=True)]
        table.notes.append(f"{label} before / now, per alternated pair: " + ", ".join(f"{r:.2f}x" for r in ratios))
    table.notes.append("max |now - before| over the written maps: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    return table, {"runs": runs, "max_abs_diff": diffs}


def through_cli(bundle_path: Path, backend: str, image: Path, targets: str, ensemble: int, steps: int,
                threads: int) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    args = [LATENTSEG, "segment", str(image), "--targets", targets, "--out", str(out / "out"), "--ensemble",
            str(ensemble), "--steps", str(steps), "--bundle", str(bundle_path), "--backend", backend, "--quiet",
            "--threads", str(threads)]
    if backend == "onnx":
        args += ["--onnx-dir", str(ensure_onnx_export(bundle_path))]
    try:
        run = run_measured(args)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if run.returncode != 0:
        raise RuntimeError(f"latentseg segment failed ({run.returncode}): {run.stderr}")
    return {"seconds": run.seconds, "max_rss_mib": run.max_rss_mib}


def measure(backend: str, targets: str, ensemble: int, steps: int, repeats: int, threads: int,
            cli: bool = True, keep: Path | None = None) -> dict[str, Any]:
    """``repeats`` in-process runs (the first one's files kept in ``keep`` if given) and CLI runs."""
    bundle_path, trained = benchmark_bundle()
    image = standard_phantom()
    bundle = load(bundle_path, backend)
    in_proc = [in_process(bundle, image, targets, ensemble, steps, keep=keep if i == 0 else None) for i in range(repeats)]
    cli_runs = [through_cli(bundle_path, backend, image, targets, ensemble, steps, threads) for _ in range(repeats)] if cli else []
    return {"bundle": str(bundle_path), "trained": trained, "backend": backend, "targets": targets,
            "ensemble": ensemble, "steps": steps, "in_process": in_proc, "cli": cli_runs}


def phase_table(title: str, results: dict[str, Any]) -> Table:
    runs = results["in_process"]
    table = Table(title, ["phase", "seconds: median (min–max)", "share"])
    total = statistics.median(r["seconds"]["total"] for r in runs)
    for key, label in PHASES:
        values = [r["seconds"].get(key, 0.0) for r in runs]
        table.rows.append([label, summary(values), f"{100 * statistics.median(values) / total:.0f} %"])
    for key, label in OUTPUT_PARTS:
        table.rows.append([f"  of which {label}", summary([r["seconds"].get(key, 0.0) for r in runs]), ""])
    table.rows.append(["**in process, bundle loaded**", f"**{summary([r['seconds']['total'] for r in runs])}**", ""])
    if results["cli"]:
        table.rows.append(["**end to end: `latentseg segment`** (process start, imports, bundle load included)",
                           f"**{summary([r['seconds'] for r in results['cli']])}**", ""])
        table.rows.append(["peak RSS of the CLI process", f"{max(r['max_rss_mib'] for r in results['cli']):.0f} MiB", ""])
    calls = runs[0]["calls"]
    table.notes.append(
        f"{results['targets']}, ensemble {results['ensemble']}, {results['steps']} steps, backend {results['backend']}; "
        f"network calls per run: encode {calls['encode_image']}, denoise {calls['denoiser']}, decode {calls['decode_mask']}"
    )
    if not results["trained"]:
        table.notes.append("bundle: random weights with the demo configuration (the trained demo bundle was absent)")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="standard_case")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--targets", default=STANDARD_TARGETS)
    parser.add_argument("--ensemble", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch/ORT intra-op threads (default: torch's)")
    parser.add_argument("--compare-paths", action="store_true",
                        help="torch, in process only: features once per window vs the whole denoiser every step")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp, as `latentseg segment`
    threads = set_threads(args.threads)
    load_before = load_average()
    if args.compare_paths:
        table, data = compare_paths(args.targets, args.ensemble, args.steps, args.repeats)
        publish(f"{args.name}_paths", [table], {**data, "threads": threads}, load_before)
        return
    results = measure(args.backend, args.targets, args.ensemble, args.steps, args.repeats, threads)
    shape = "×".join(map(str, STANDARD_SHAPE))
    spacing = "×".join(map(str, STANDARD_SPACING))
    title = (f"{args.name.replace('_', ' ').capitalize()}: phantom {shape} at {spacing} mm, {args.targets}, "
             f"ensemble {args.ensemble}, {args.steps} steps ({args.backend}, {threads} threads)")
    publish(args.name, [phase_table(title, results)], {"results": results, "threads": threads}, load_before)


if __name__ == "__main__":
    main()
