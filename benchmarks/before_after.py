"""The standard case in process with the pipeline as it was before the performance work
(commit 43b5d16: ``model/pipeline.py`` + ``model/ensemble.py``, their paths then, taken from git) and as it is now,
same bundle, same volume, same process.

    python -m benchmarks.before_after [--commit 43b5d16]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from model.bundle.config import ModelConfig

from benchmarks.common import (
    BENCH_DIR,
    REPO,
    STANDARD_TARGETS,
    Table,
    benchmark_bundle,
    load_average,
    publish,
    set_threads,
    standard_phantom,
)

BEFORE = "43b5d16"
# Where the modules the old pipeline imports live now (model/ was grouped into folders since).
MOVED = {"bundle": "model.bundle.loaded", "preprocessing": "model.inference.preprocessing",
         "vocabulary": "model.targets.vocabulary"}


def old_pipeline(commit: str, folder: Path) -> ModuleType:
    """model/pipeline.py and model/ensemble.py at ``commit``, importable as stand-alone modules
    (their imports of modules that moved since are pointed at the new paths)."""
    for name in ("ensemble", "pipeline"):
        source = subprocess.run(["git", "show", f"{commit}:model/{name}.py"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
        source = source.replace("from model.ensemble import", "from old_ensemble import")
        source = re.sub(r"\bfrom model\.(\w+) import", lambda m: f"from {MOVED.get(m[1], 'model.' + m[1])} import", source)
        (folder / f"old_{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("old_pipeline", folder / "old_pipeline.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["old_pipeline"] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def latent_only_bundle(config: ModelConfig) -> Path:
    """A random bundle (cached under runs/bench) of ``config`` with ``denoiser.image_pixels`` off."""
    from model.bundle.loaded import write_random_bundle
    from model.bundle.manifest import read_manifest

    path = BENCH_DIR / "random-latent-only"
    latent_only = config.model_copy(update={"denoiser": config.denoiser.model_copy(update={"image_pixels": False, "context_slices": 0})})
    if not (path / "bundle.json").is_file() or read_manifest(path).config != latent_only.to_dict():
        write_random_bundle(path, seed=0, config=latent_only)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commit", default=BEFORE)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    load_before = load_average()
    import model.inference.pipeline as now
    from model.bundle.loaded import load_bundle

    bundle_path, trained = benchmark_bundle()
    bundle = load_bundle(bundle_path, device="cpu")
    note = "" if trained else "; random weights with the demo configuration"
    if bundle.config.denoiser.image_pixels:
        # The old pipeline predates pixel conditioning (it sizes z_t from z_image): both pipelines run
        # a random bundle of the same design with latent-only conditioning instead.
        bundle = load_bundle(latent_only_bundle(bundle.config), device="cpu")
        note = "; random weights, the demo design with latent-only conditioning (the old pipeline predates image_pixels)"
    image = standard_phantom()
    work = Path(tempfile.mkdtemp(prefix="bench-before-"))
    try:
        before = old_pipeline(args.commit, work)
        seconds = {}
        for label, module in ((f"before ({args.commit})", before), ("now", now)):
            start = time.perf_counter()
            module.segment_file(bundle, image, work / label, STANDARD_TARGETS, ensemble=5, steps=10, seed=0)
            seconds[label] = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = next(iter(seconds.values()))
    table = Table(
        f"Before and after the performance work: standard case in process ({STANDARD_TARGETS}, ensemble 5, 10 steps, torch)",
        ["pipeline", "seconds", "speed-up"],
        [[label, f"{value:.1f}", f"{first / value:.1f}×"] for label, value in seconds.items()],
        [f"one run each, same process and bundle, {threads} threads" + note],
    )
    publish("before_after", [table], {"seconds": seconds, "commit": args.commit}, load_before)


if __name__ == "__main__":
    main()
