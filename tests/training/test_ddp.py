"""DDP with no code change: `latentseg train` under torchrun, 2 CPU processes, gloo.

A small launcher script (written here, run by torchrun) wraps ``training.loops.run_stage`` to
record, per rank, each stage's initial and final weights and a fingerprint of every batch,
then runs the real CLI entry point. The library itself has no test hooks.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.bundle.loaded import load_bundle
from tests.conftest import clean_env, find_free_port
from tests.training.conftest import REPO_ROOT, write_train_config

TORCHRUN = Path(sys.executable).with_name("torchrun")

LAUNCHER = '''
import copy
import os
import sys
from pathlib import Path

import torch

from training import loops

OUT = Path(os.environ["DDP_TEST_OUT"])
RANK = int(os.environ["RANK"])
_run_stage = loops.run_stage


def recording_run_stage(ctx, name, stage, model, step_fn, **kwargs):
    initial = copy.deepcopy(model.state_dict())
    batches = []

    def step(net, batch):
        batches.append((float(batch.images.double().sum()), batch.target_ids.tolist()))
        return step_fn(net, batch)

    trained, result = _run_stage(ctx, name, stage, model, step, **kwargs)
    record = {
        "initial": initial,
        "final": copy.deepcopy(model.state_dict()),
        "returned": copy.deepcopy(trained.state_dict()),
        "batches": batches,
        "world": ctx.world_size,
        "steps": result.steps,
    }
    torch.save(record, OUT / f"{os.environ['DDP_TEST_TAG']}-{name}-rank{RANK}.pt")
    return trained, result


loops.run_stage = recording_run_stage

from cli.main import main  # noqa: E402

os.environ.setdefault("DDP_TEST_TAG", "run")
sys.exit(main(sys.argv[1:]))
'''


def _torchrun(script: Path, records: Path, tag: str, command: list[str], log: Path, timeout_s: float = 300) -> None:
    """Run ``command`` under torchrun (2 CPU processes); on timeout stop torchrun (it stops its
    workers), then fail with the log."""
    args = [
        str(TORCHRUN), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(find_free_port()), str(script), *command,
    ]
    env = clean_env(DDP_TEST_OUT=str(records), DDP_TEST_TAG=tag, OMP_NUM_THREADS="1")
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        pytest.fail(f"torchrun ({tag}) did not finish in {timeout_s} s:\n{log.read_text()[-4000:]}")
    assert proc.returncode == 0, log.read_text()[-6000:]


def _load(out: Path, tag: str, stage: str, rank: int) -> dict:
    return torch.load(out / f"{tag}-{stage}-rank{rank}.pt", map_location="cpu", weights_only=False)


def _identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, msd_phantoms: Path) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    stage = {"steps": 3, "batch_size": 4, "log_every": 1}
    first = write_train_config(root / "first.yaml", [msd_phantoms], mask_ae=stage, image_vae=stage,
                               diffusion={**stage, "scale_batches": 1})
    resumed = write_train_config(root / "resumed.yaml", [msd_phantoms], mask_ae={**stage, "steps": 6},
                                 image_vae=stage, diffusion={**stage, "scale_batches": 1})
    script = root / "launch.py"
    script.write_text(LAUNCHER)
    records = root / "records"
    records.mkdir()
    _torchrun(script, records, "first", ["train", "all", "--config", str(first), "--device", "cpu"], root / "first.log")
    # A new launch resumes mask-ae from its step-3 checkpoint to step 6.
    _torchrun(script, records, "resumed", ["train", "mask-ae", "--config", str(resumed), "--device", "cpu"],
              root / "resumed.log")
    return root


@pytest.mark.parametrize("stage", ["mask-ae", "image-vae", "diffusion"])
def test_weights_stay_in_sync_across_ranks(ddp_run: Path, stage: str) -> None:
    records = ddp_run / "records"
    rank0, rank1 = _load(records, "first", stage, 0), _load(records, "first", stage, 1)
    assert rank0["world"] == rank1["world"] == 2
    assert rank0["steps"] == rank1["steps"] == 3
    assert _identical(rank0["initial"], rank1["initial"])
    assert _identical(rank0["final"], rank1["final"]), "DDP ranks diverged"
    assert _identical(rank0["returned"], rank1["returned"])  # EMA too, for the diffusion stage
    assert not _identical(rank0["initial"], rank0["final"]), "no training happened"
    # Data parallel, not duplicated: each rank saw its own batches.
    assert rank0["batches"] != rank1["batches"]


def test_resumed_ddp_run_keeps_ranks_on_different_data(ddp_run: Path) -> None:
    records = ddp_run / "records"
    rank0, rank1 = _load(records, "resumed", "mask-ae", 0), _load(records, "resumed", "mask-ae", 1)
    assert rank0["steps"] == rank1["steps"] == 6
    assert len(rank0["batches"]) == len(rank1["batches"]) == 3  # steps 4-6 only
    assert _identical(rank0["final"], rank1["final"])
    assert all(a != b for a, b in zip(rank0["batches"], rank1["batches"], strict=True)), "ranks resumed onto the same batches"
    state = torch.load(ddp_run / "run" / "checkpoints" / "mask-ae.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 6
    assert _identical(state["model"], rank0["final"])


def test_ddp_bundle_is_written_once_and_loads(ddp_run: Path) -> None:
    bundle = load_bundle(ddp_run / "run" / "bundle", device="cpu")
    assert bundle.manifest.provenance["world_size"] == 2
    assert bundle.manifest.provenance["device"] == "cpu"
    records = ddp_run / "records"
    ema = _load(records, "first", "diffusion", 0)["returned"]
    for key, value in bundle.networks.denoiser.state_dict().items():
        assert torch.equal(value, ema[key])
    assert not list((ddp_run / "run").glob(".bundle.*"))  # no leftover temp folder from a second writer
