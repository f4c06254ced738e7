"""The base set every compartment gets: enough for CPython to compute and exit cleanly.

Defined in ``compartments._policy._base`` (every SafetyContext starts from it); this is
its public name.
"""

from __future__ import annotations

from .._policy._base import BasicCapabilities, CPythonRuntime

__all__ = ["BasicCapabilities", "CPythonRuntime"]
