"""``latentseg submit``: upload volumes to a latentseg server, wait, download the results."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "submit",
        help="send volumes to a latentseg server and fetch mean/variance masks",
        description=(
            "Upload each FILE (.nii/.nii.gz, a .zip of one DICOM series, or a folder holding one series, "
            "zipped on the fly) as one job. With --wait (implied by --out), batch-poll all jobs with a "
            "progress bar and download each job's results into OUT/<input stem>/; the line per job then ends "
            "with each target's volume (± the ensemble's sd) and the targets statistics.json flags for review."
        ),
    )
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE")
    parser.add_argument("--study-uid", help="instead of FILEs: segment a series of this study on the server's "
                        "DICOMweb source (PACS)")
    parser.add_argument("--series-uid", help="the series (default: the study's CT series with the most instances)")
    parser.add_argument("--push", action="store_true",
                        help="the server stores segmentation.dcm in the PACS when done (with --wait: wait for it)")
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="API base URL (default %(default)s)")
    parser.add_argument(
        "--api-key", help="bearer API key (default: the LATENTSEG_API_KEY environment variable)"
    )
    parser.add_argument("--targets", required=True, help="comma-separated targets, e.g. liver,pancreas")
    parser.add_argument("--ensemble", type=int, help="ensemble size (default: the served bundle's)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the served bundle's)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument(
        "--dicom-seg", action=argparse.BooleanOptionalAction, default=None,
        help="ask for (or turn off) segmentation.dcm, a DICOM-SEG; the server's default is on for DICOM input "
        "and off for NIfTI (which then also gets dicom_ct.zip, the CT series the SEG references)",
    )
    parser.add_argument("--fractional", action="store_true", help="make segmentation.dcm FRACTIONAL (mean probability)")
    parser.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                        help="keep only the largest connected piece of one-piece organs (default: the model's)")
    parser.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=None,
                        help="one-piece organs requested together never share a voxel (default: the model's)")
    parser.add_argument("--wait", action="store_true", help="wait for the jobs to end")
    parser.add_argument("--out", type=Path, help="download results here (implies --wait)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def _out_dirs(files: list[Path], out: Path) -> list[Path]:
    from service.client import input_stem

    seen: dict[str, int] = {}
    dirs: list[Path] = []
    for path in files:
        stem = input_stem(path)
        seen[stem] = seen.get(stem, 0) + 1
        dirs.append(out / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return dirs


def _statistics_summary(directory: Path) -> str:
    """``; liver 1523 ml (±12), ... REVIEW: ...`` from the job's statistics.json (empty when it has none)."""
    from model.inference.statistics import STATISTICS_FILE, read_statistics, summary_line

    path = directory / STATISTICS_FILE
    if not path.is_file():
        return ""
    try:
        return f"; {summary_line(read_statistics(path))}"
    except (ValueError, KeyError, TypeError):
        return "; statistics.json unreadable"


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    import httpx
    from tqdm import tqdm

    from cli.main import CliError
    from service.client import ApiError, LatentsegClient

    missing = [str(p) for p in args.files if not (p.is_file() or p.is_dir())]
    if missing:
        raise CliError(f"no such file or folder: {', '.join(missing)}")
    if bool(args.files) == (args.study_uid is not None):
        raise CliError("give FILEs or --study-uid (a series on the server's PACS), not both" if args.files
                       else "give FILEs to upload, or --study-uid")
    if (args.series_uid is not None or args.push) and args.study_uid is None:
        raise CliError("--series-uid and --push need --study-uid")
    if args.study_uid is not None:  # one reference job; its results go to OUT/<series or study UID>/
        args.files = [Path(args.series_uid or args.study_uid)]
    if args.fractional and args.dicom_seg is False:
        raise CliError("--fractional describes the DICOM-SEG: it cannot go with --no-dicom-seg")
    wait = args.wait or args.out is not None
    out = args.out if args.out is not None else Path("latentseg-results")

    try:
        api_key = args.api_key or os.environ.get("LATENTSEG_API_KEY") or None
        with LatentsegClient(args.server, api_key=api_key) as client:
            job_ids: list[str] = []
            for path in args.files:
                try:
                    if args.study_uid is not None:
                        body = client.submit_reference(
                            args.study_uid, args.targets, series_uid=args.series_uid, push=args.push,
                            ensemble=args.ensemble, steps=args.steps, seed=args.seed, fractional=args.fractional,
                            largest_component=args.largest_component, exclusive=args.exclusive,
                        )
                    else:
                        body = client.submit(
                            path, args.targets, ensemble=args.ensemble, steps=args.steps, seed=args.seed,
                            dicom=args.dicom_seg, fractional=args.fractional,
                            largest_component=args.largest_component, exclusive=args.exclusive,
                        )
                except ApiError as exc:
                    raise CliError(f"{path}: the server refused it: {exc.message}") from exc
                except ValueError as exc:
                    raise CliError(str(exc)) from exc
                job_ids.append(body["job_id"])
                print(f"{path}\t{body['job_id']}")
            if not wait:
                return 0

            total = 100 * len(job_ids)
            with tqdm(total=total, unit="%", desc="segmenting", disable=args.no_progress, file=sys.stderr) as bar:

                def update(states: dict[str, dict[str, Any]]) -> None:
                    done = sum(100 if s["status"] in ("finished", "failed", "canceled") else s["progress"] for s in states.values())
                    bar.update(done - bar.n)
                    counts = {}
                    for s in states.values():
                        counts[s["status"]] = counts.get(s["status"], 0) + 1
                    bar.set_postfix(counts, refresh=False)

                states = client.wait(
                    job_ids, poll_interval_s=args.poll_interval, timeout_s=args.timeout, on_update=update
                )

            failures = 0
            dirs = [out / args.files[0].name] if args.study_uid is not None else _out_dirs(list(args.files), out)
            for path, job_id, directory in zip(args.files, job_ids, dirs, strict=True):
                state = states[job_id]
                if state["status"] != "finished":
                    failures += 1
                    print(f"{path}: {state['status']}: {state.get('error') or 'no reason given'}", file=sys.stderr)
                    continue
                files = client.download(job_id, directory)
                if args.push:  # the push follows the job's end: wait for its outcome too
                    push_state = _push_outcome(client, job_id, args.poll_interval, args.timeout)
                    print(f"{path}: {push_state['push_status']}")
                    failures += 0 if push_state["push_status"] == "pushed" else 1
                print(f"{path}: finished -> {directory} ({len(files)} files){_statistics_summary(directory)}")
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach {args.server}: {exc}") from exc
    except TimeoutError as exc:
        raise CliError(str(exc)) from exc
    return 1 if failures else 0


def _push_outcome(client: Any, job_id: str, poll_interval_s: float, timeout_s: float | None) -> dict[str, Any]:
    """Poll the job until its push_status is ``pushed`` or ``push_failed: …``."""
    import time

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        state: dict[str, Any] = client.jobs([job_id])[job_id]
        status = str(state.get("push_status") or "")
        if status == "pushed" or status.startswith("push_failed"):
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: the push did not end within {timeout_s} s ({status or 'not started'})")
        time.sleep(poll_interval_s)
