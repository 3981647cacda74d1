"""model.monai_import, in fresh interpreters (what is imported is process-wide state)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from model.bundle.loaded import write_random_bundle

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed: nothing to hide"
)


def _run(code: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_monai_loads_without_transformers_which_stays_importable() -> None:
    out = _run(
        "import sys\n"
        "from model.monai_import import import_monai_lean\n"
        "print(import_monai_lean(), 'transformers' in sys.modules, 'monai.inferers' in sys.modules)\n"
        "from monai.networks.nets import AutoencoderKL, DiffusionModelUNet\n"
        "import transformers\n"
        "print(import_monai_lean(), 'transformers' in sys.modules)\n"
    )
    assert out == ["True", "False", "True", "False", "True"]


def test_a_plain_monai_import_does_pull_in_transformers() -> None:
    # The cost being avoided is real: without the helper, MONAI imports transformers.
    assert _run("import sys, monai.inferers\nprint('transformers' in sys.modules)") == ["True"]


def test_latentseg_segment_never_imports_transformers(tmp_path: Path) -> None:
    bundle = write_random_bundle(tmp_path / "bundle", seed=0)
    data = np.full((24, 24, 4), -1000, np.int16)
    data[4:-4, 4:-4, :] = 50
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), str(source))
    args = ["segment", str(source), "--targets", "liver", "--out", str(tmp_path / "out"), "--steps", "1",
            "--ensemble", "1", "--quiet", "--bundle", str(bundle), "--device", "cpu"]
    out = _run(f"import sys\nfrom cli.main import main\nrc = main({args!r})\nprint(rc, 'transformers' in sys.modules)")
    assert out[-2:] == ["0", "False"]
    assert (tmp_path / "out" / "liver_mean.nii.gz").is_file()
