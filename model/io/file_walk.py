"""Walking a folder of uploads: every regular file, in a stable order, symlinks never followed.

Standard library only, so the HTTP client (``service.client``) can share it without torch or pydicom.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def regular_files(folder: Path) -> Iterator[Path]:
    """Every regular file under ``folder``, recursively, sorted per directory; symlinks skipped."""
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if not path.is_symlink() and path.is_file():
                yield path
