"""A stand-in validator process that never answers, for the sandbox timeout test."""

from __future__ import annotations

import time

if __name__ == "__main__":
    time.sleep(3600)
