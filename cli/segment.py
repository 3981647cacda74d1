"""`latentseg segment INPUT --targets liver,pancreas --out DIR`: the whole pipeline on one volume.

INPUT is a NIfTI file, a folder holding one DICOM series, or a .zip of one series. Targets may
be names, synonyms or plain words ("left kidney", "pancreatic tumour"; see model.targets.prompts).

Instead of INPUT, ``--study-uid UID [--series-uid UID] [--dicomweb URL]`` retrieves the series
from a PACS with WADO-RS (model.io.dicomweb; URL and auth default to ``LATENTSEG_DICOMWEB_*``; a
study alone picks its CT series with the most instances); ``--push`` stores segmentation.dcm
back with STOW-RS.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager

    from model.bundle.loaded import LoadedBundle
    from model.io.dicom_io import DicomSeries
    from model.io.dicomweb import DicomwebSettings
    from model.bundle.onnx_backend import OnnxBundle
    from model.inference.pipeline import Progress, SegmentationOptions
    from model.inference.preprocessing import Volume


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment a CT volume (NIfTI or DICOM) and write mean and variance masks per target",
        description="Segment a CT volume: for each target, write {target}_mean.nii.gz (probability), "
        "{target}_variance.nii.gz (ensemble variance), plus labels.nii.gz, labels.json and statistics.json. "
        "Optionally a DICOM-SEG (segmentation.dcm) and a picture (preview.png).",
    )
    p.add_argument("input", type=Path, nargs="?", default=None,
                   help="CT volume (.nii or .nii.gz), a DICOM series folder, or a .zip of one series "
                   "(or --study-uid: a series on a PACS)")
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
    p.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=None,
                   help="one-piece organs requested together never share a voxel (default: the bundle's)")
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
    p.add_argument("--dicomweb", metavar="URL", default=None,
                   help="DICOMweb root of the PACS, e.g. http://pacs:8042/dicom-web (default: $LATENTSEG_DICOMWEB_URL; "
                   "auth from LATENTSEG_DICOMWEB_AUTH/_USERNAME/_PASSWORD/_TOKEN)")
    p.add_argument("--study-uid", default=None, help="segment a series of this study on the PACS instead of INPUT")
    p.add_argument("--series-uid", default=None,
                   help="the series (default: the study's CT series with the most instances)")
    p.add_argument("--push", action="store_true",
                   help="store segmentation.dcm in the PACS with STOW-RS (implies --dicom-seg; needs --study-uid)")
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

    from cli.main import CliError

    if args.threads is not None:
        if args.threads < 1:
            raise CliError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.backend == "onnx" and args.device is not None:
        raise CliError("--device applies to the torch backend; onnx uses CUDA when onnxruntime-gpu finds it, else CPU")
    if (args.input is None) == (args.study_uid is None):
        raise CliError("give INPUT or --study-uid (a series on a PACS), not both" if args.input is not None
                       else "give INPUT (a file or folder) or --study-uid (a series on a PACS)")
    if (args.series_uid is not None or args.push or args.dicomweb is not None) and args.study_uid is None:
        raise CliError("--series-uid, --push and --dicomweb need --study-uid")
    with _pacs_input(args) as pacs:
        written = _run(args, CliError)
        if pacs is not None and args.push:
            written_seg = [p for p in written if p.name == "segmentation.dcm"]
            try:
                from model.io.dicomweb import DicomwebError, push_files

                stored = push_files(pacs, written_seg)
            except DicomwebError as exc:
                raise CliError(f"push failed (the results are in {args.out}): {exc}") from exc
            for uid in stored:
                print(f"pushed {uid}")
    for path in written:
        print(path)
    return 0


def _pacs_input(args: argparse.Namespace) -> AbstractContextManager[DicomwebSettings | None]:
    """A context: with --study-uid, the series retrieved into a temporary zip (args.input), and
    the DICOMweb settings; otherwise None."""
    import contextlib
    import tempfile

    from cli.main import CliError

    @contextlib.contextmanager
    def context() -> Iterator[DicomwebSettings | None]:
        if args.study_uid is None:
            yield None
            return
        from pydantic import ValidationError

        from model.io.dicom_io import DicomLimits
        from model.io.dicomweb import DicomwebError, DicomwebSettings, RetrievalLimits, fetch_reference

        try:
            settings = DicomwebSettings(**({"url": args.dicomweb} if args.dicomweb else {}))
        except ValidationError as exc:
            raise CliError(f"DICOMweb settings: {exc.errors()[0]['msg']}") from None
        if args.push:
            args.dicom_seg = True
        limits = DicomLimits()
        with tempfile.TemporaryDirectory(prefix="latentseg-dicomweb-") as scratch:
            path = Path(scratch) / "series.zip"
            try:
                fetch_reference(settings, args.study_uid, args.series_uid, path,
                                RetrievalLimits(max_bytes=limits.max_total_bytes, max_files=limits.max_files))
            except (DicomwebError, ValueError) as exc:
                raise CliError(str(exc)) from None
            args.input = path
            yield settings

    return context()


def _run(args: argparse.Namespace, CliError: type[Exception]) -> list[Path]:  # noqa: N803
    """The pipeline on ``args.input``; returns the written paths."""
    from tqdm import tqdm

    from model.errors import BundleError, InputError
    from model.bundle.manifest import resolve_sampling
    from model.bundle.onnx_backend import load_backend
    from model.inference.pipeline import SegmentationOptions, predict_model_grid, resolve_targets, write_prediction
    from model.inference.preprocessing import load_nifti
    from model.targets.prompts import PromptResolver, packaged_embedder
    from model.targets.vocabulary import UnknownTargetError

    try:
        bundle = load_backend(args.bundle, args.backend, device=args.device, onnx_dir=args.onnx_dir,
                              threads=args.threads)
        # Names, synonyms or plain words ("left kidney") -> vocabulary names (model.targets.prompts).
        targets = [t.name for t in PromptResolver(bundle.vocabulary, packaged_embedder).resolve(args.targets)]
        resolve_targets(bundle, targets)  # fail fast, before reading the volume
        # The bundle's sampling section unless given, in the model's range (model.bundle.manifest.check_sampling).
        ensemble, steps = resolve_sampling(bundle.config.sampling, args.ensemble, args.steps)
        options = SegmentationOptions(ensemble=ensemble, steps=steps, seed=args.seed,
                                      largest_component=args.largest_component, exclusive=args.exclusive)
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
    return written


def _plain_nifti_run(args: argparse.Namespace) -> bool:
    """NIfTI in, NIfTI out only: the streamed path (one full-resolution map in memory at a time)."""
    from model.io.dicom_io import is_dicom_input

    return not (args.dicom_seg or args.fractional or args.preview or is_dicom_input(args.input))


def _read_input(path: Path) -> tuple[Volume, DicomSeries | None]:
    """A DICOM series (folder, .zip or file) or a NIfTI volume, with the series when it is DICOM."""
    from model.io.dicom_io import is_dicom_input, read_dicom_series
    from model.inference.preprocessing import load_nifti

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
    """DICOM input and/or extra outputs: the NIfTI outputs are streamed (model.inference.pipeline.write_prediction),
    then the DICOM-SEG and the preview, when asked for, read them back (model.io.interop)."""
    from model.io.interop import InteropRequest, write_interop_outputs
    from model.inference.pipeline import predict_model_grid, write_prediction

    request = InteropRequest(dicom_seg=args.dicom_seg, fractional=args.fractional, preview=args.preview)
    prediction = predict_model_grid(bundle, volume, targets, options, progress)
    written = write_prediction(prediction, args.out, progress, hu=volume.data, statistics=args.statistics)
    return written + write_interop_outputs(
        args.out, volume, prediction.targets, request,
        source_images=dicom.headers if dicom is not None else None,
        bundle_name=bundle.name, bundle_version=bundle.version,
        parameters={"ensemble": str(options.ensemble), "steps": str(options.steps), "seed": str(options.seed)},
    )
