"""`latentseg segment` must set OMP_WAIT_POLICY before torch loads libgomp (which reads it only then):
set later, OpenMP threads keep spinning (a CLI run was 2.6x slower on 2 loaded cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, os, sys
import cli.main, cli.segment
seen = {}
real_import = __import__
def spy(name, *args, **kwargs):
    if (name == "torch" or name.startswith("torch.")) and "torch" not in sys.modules and "policy" not in seen:
        seen["policy"] = os.environ.get("OMP_WAIT_POLICY")
    return real_import(name, *args, **kwargs)
import builtins
builtins.__import__ = spy
cli.segment.run = lambda args: 0
status = cli.main.main(["segment", "in.nii.gz", "--targets", "liver", "--out", "out"])
print(json.dumps({"status": status, "policy_when_torch_loads": seen.get("policy", "torch never imported")}))
"""


def probe(env_policy: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_segment_sets_passive_before_torch_loads() -> None:
    assert probe(None) == {"status": 0, "policy_when_torch_loads": "PASSIVE"}


def test_an_explicit_policy_is_kept() -> None:
    assert probe("ACTIVE") == {"status": 0, "policy_when_torch_loads": "ACTIVE"}
