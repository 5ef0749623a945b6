"""Errors of the command line itself (the library's and the runtime's are their own)."""

from __future__ import annotations


class UsageError(ValueError):
    """Options that can never work together: exit 2, as argparse's own usage errors."""
