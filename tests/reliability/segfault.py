"""A stand-in validator process that crashes natively (SIGSEGV), for the sandbox test."""

from __future__ import annotations

import ctypes

if __name__ == "__main__":
    ctypes.string_at(0)
