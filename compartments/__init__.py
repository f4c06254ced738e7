"""compartments: privilege-separated, multi-process Python on Linux."""

from __future__ import annotations

from . import errors

__all__ = ["errors"]
