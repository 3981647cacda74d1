"""Importing MONAI without the ~2 s it spends on ``transformers``.

MONAI's ``networks/nets/transchex.py`` imports ``transformers`` (and BERT's modules) whenever
it is installed, so ``import monai`` costs a fresh ``latentseg segment`` process about 2 s more in
an environment that also has the text-embedding extra. latentseg uses none of MONAI's
transformer networks. :func:`import_monai_lean` imports MONAI once with ``transformers`` hidden;
MONAI then treats it as absent (only Transchex would notice), and ``transformers`` stays
importable as usual afterwards.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence

__all__ = ["import_monai_lean"]

_HIDDEN = "transformers"


class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: object | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == _HIDDEN or fullname.startswith(_HIDDEN + "."):
            raise ModuleNotFoundError(f"{fullname} is hidden while MONAI loads", name=fullname)
        return None


def import_monai_lean() -> bool:
    """Import MONAI (the parts latentseg uses) with ``transformers`` hidden; True if this call did it.

    Does nothing when MONAI or ``transformers`` is already imported."""
    if "monai" in sys.modules or _HIDDEN in sys.modules:
        return False
    hide = _Hide()
    sys.meta_path.insert(0, hide)
    try:
        importlib.import_module("monai.inferers")
        importlib.import_module("monai.networks.nets")
    finally:
        sys.meta_path.remove(hide)
    return True
