"""`latentseg segment INPUT --targets liver,pancreas --out DIR`: the whole pipeline on one volume.

INPUT is a NIfTI file, a folder holding one DICOM series, or a .zip of one series. Targets may
be names, synonyms or plain words ("left kidney", "pancreatic tumour"; see model.prompts).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.bundle import LoadedBundle
    from model.dicom_io import DicomSeries
    from model.onnx_backend import OnnxBundle
    from model.pipeline import Progress, SegmentationOptions
    from model.preprocessing import Volume


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment a CT volume (NIfTI or DICOM) and write mean and variance masks per target",
        description="Segment a CT volume: for each target, write {target}_mean.nii.gz (probability), "
        "{target}_variance.nii.gz (ensemble variance), plus labels.nii.gz, labels.json and statistics.json. "
        "Optionally a DICOM-SEG (segmentation.dcm) and a picture (preview.png).",
    )
    p.add_argument("input", type=Path, help="CT volume (.nii or .nii.gz), a DICOM series folder, or a .zip of one series")
    p.add_argument(
        "--targets",
        required=True,
        help="comma-separated target names, synonyms or plain words, e.g. 'liver, left kidney, pancreatic tumour'",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--ensemble", type=int, default=None, help="ensemble members per target (default: the bundle's)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps, 1-1000 (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same result)")
    p.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the largest connected piece of one-piece organs (default: the bundle's)")
    p.add_argument("--bundle", type=Path, default=None, help="model bundle folder (default: $LATENTSEG_BUNDLE or the demo bundle)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="run the networks in torch (default) or ONNX Runtime (needs `latentseg export-onnx` first)")
    p.add_argument("--onnx-dir", type=Path, default=None, help="ONNX export folder (default: BUNDLE/onnx)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for torch and ONNX Runtime (default: torch's, the physical cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="also write segmentation.dcm, a BINARY DICOM-SEG of labels.nii.gz (NIfTI input: plus the derived CT "
        "series it references, in dicom_ct/)",
    )
    p.add_argument(
        "--fractional", action="store_true", help="make segmentation.dcm a FRACTIONAL SEG of the mean probability"
    )
    p.add_argument("--preview", action="store_true", help="also write preview.png (axial slices, contours, variance)")
    p.add_argument("--statistics", action=argparse.BooleanOptionalAction, default=True,
                   help="write statistics.json: per-target volume (with the ensemble's spread), HU, bounding box, "
                   "components and the review flag (default: on; docs/statistics.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    # OpenMP threads sleep instead of spinning between parallel regions. Set before torch loads
    # libgomp; on shared or busy CPUs spinning made the denoiser 2-3x slower (BENCHMARKS.md, Threads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from tqdm import tqdm

    from cli.main import CliError
    from model.errors import BundleError, InputError
    from model.onnx_backend import load_backend
    from model.pipeline import SegmentationOptions, predict_model_grid, resolve_targets, write_prediction
    from model.preprocessing import load_nifti
    from model.prompts import PromptResolver, packaged_embedder
    from model.vocabulary import UnknownTargetError

    if args.threads is not None:
        if args.threads < 1:
            raise CliError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.backend == "onnx" and args.device is not None:
        raise CliError("--device applies to the torch backend; onnx uses CUDA when onnxruntime-gpu finds it, else CPU")
    try:
        bundle = load_backend(args.bundle, args.backend, device=args.device, onnx_dir=args.onnx_dir,
                              threads=args.threads)
        # Names, synonyms or plain words ("left kidney") -> vocabulary names (model.prompts).
        targets = [t.name for t in PromptResolver(bundle.vocabulary, packaged_embedder).resolve(args.targets)]
        resolve_targets(bundle, targets)  # fail fast, before reading the volume
        defaults = bundle.config.sampling
        options = SegmentationOptions(
            ensemble=args.ensemble if args.ensemble is not None else defaults.ensemble,
            steps=args.steps if args.steps is not None else defaults.steps,
            seed=args.seed,
            largest_component=args.largest_component,
        )
        # Read a NIfTI before the progress bar opens, so an unreadable input fails with one line.
        volume = load_nifti(args.input) if _plain_nifti_run(args) else None
        source = None if volume is not None else _read_input(args.input)
        with tqdm(total=100, desc="segment", unit="%", disable=args.quiet, leave=False) as bar:

            def progress(fraction: float) -> None:
                bar.update(round(100 * fraction) - bar.n)

            if volume is not None:
                # Streamed outputs, one full-resolution map in memory at a time (as segment_file).
                prediction = predict_model_grid(bundle, volume, targets, options, progress)
                written = write_prediction(prediction, args.out, progress, hu=volume.data,
                                           statistics=args.statistics)
                del volume
            else:
                assert source is not None
                written = _segment_with_extras(args, bundle, targets, options, progress, *source)
    except (UnknownTargetError, InputError, BundleError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    except ImportError as exc:
        raise CliError(f"the onnx backend needs the onnx extra (pip install 'latentseg[onnx]'): {exc}") from exc
    for path in written:
        print(path)
    return 0


def _plain_nifti_run(args: argparse.Namespace) -> bool:
    """NIfTI in, NIfTI out only: the streamed path (one full-resolution map in memory at a time)."""
    from model.dicom_io import is_dicom_input

    return not (args.dicom_seg or args.fractional or args.preview or is_dicom_input(args.input))


def _read_input(path: Path) -> tuple[Volume, DicomSeries | None]:
    """A DICOM series (folder, .zip or file) or a NIfTI volume, with the series when it is DICOM."""
    from model.dicom_io import is_dicom_input, read_dicom_series
    from model.preprocessing import load_nifti

    if is_dicom_input(path):
        series = read_dicom_series(path)
        return series.volume, series
    return load_nifti(path), None


def _segment_with_extras(
    args: argparse.Namespace,
    bundle: LoadedBundle | OnnxBundle,
    targets: list[str],
    options: SegmentationOptions,
    progress: Progress,
    volume: Volume,
    dicom: DicomSeries | None,
) -> list[Path]:
    """DICOM input and/or extra outputs: the NIfTI outputs are streamed (model.pipeline.write_prediction),
    then the DICOM-SEG and the preview, when asked for, read them back (model.interop)."""
    from model.interop import InteropRequest, write_interop_outputs
    from model.pipeline import predict_model_grid, write_prediction

    request = InteropRequest(dicom_seg=args.dicom_seg, fractional=args.fractional, preview=args.preview)
    prediction = predict_model_grid(bundle, volume, targets, options, progress)
    written = write_prediction(prediction, args.out, progress, hu=volume.data, statistics=args.statistics)
    return written + write_interop_outputs(
        args.out, volume, prediction.targets, request,
        source_images=dicom.headers if dicom is not None else None,
        bundle_name=bundle.name, bundle_version=bundle.version,
        parameters={"ensemble": str(options.ensemble), "steps": str(options.steps), "seed": str(options.seed)},
    )
