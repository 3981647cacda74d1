"""Errors a user can fix: bad input files, bad requests, bad bundles."""

from __future__ import annotations


class InputError(ValueError):
    """The input volume cannot be segmented (unreadable, not 3-D, empty, ...)."""


class BundleError(ValueError):
    """A bundle is missing, incomplete, or does not match this code."""
