"""Every `latentseg` command (segment, worker, serve, evaluate) must set OMP_WAIT_POLICY before torch loads libgomp (which reads it only then):
set later, OpenMP threads keep spinning (a CLI run was 2.6x slower on 2 loaded cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, os, sys
import importlib
import cli.main
command = json.loads(sys.argv[1])
module = importlib.import_module("cli." + command[0])
seen = {}
real_import = __import__
def spy(name, *args, **kwargs):
    if (name == "torch" or name.startswith("torch.")) and "torch" not in sys.modules and "policy" not in seen:
        seen["policy"] = os.environ.get("OMP_WAIT_POLICY")
    return real_import(name, *args, **kwargs)
import builtins
builtins.__import__ = spy
module.run = lambda args: 0
status = cli.main.main(command)
print(json.dumps({"status": status, "policy_when_torch_loads": seen.get("policy", "torch never imported")}))
"""


SEGMENT = ["segment", "in.nii.gz", "--targets", "liver", "--out", "out"]


def probe(env_policy: str | None, command: list[str] = SEGMENT) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(command)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", [SEGMENT, ["worker"], ["serve"], ["evaluate", "--data", "d"]], ids=lambda c: c[0])
def test_every_command_sets_passive_before_torch_loads(command: list[str]) -> None:
    result = probe(None, command)
    assert result["status"] == 0
    assert result["policy_when_torch_loads"] in ("PASSIVE", "torch never imported")
    if command[0] != "serve":  # the API process itself need not load torch; its embedded worker does
        assert result["policy_when_torch_loads"] == "PASSIVE"


def test_an_explicit_policy_is_kept() -> None:
    assert probe("ACTIVE") == {"status": 0, "policy_when_torch_loads": "ACTIVE"}
