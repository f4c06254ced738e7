"""compartments: privilege-separated, multi-process Python on Linux.

Each compartment is a subprocess sealed by its own default-deny seccomp filter, built
from named RuleSets, and called by msgpack-RPC over a unix socketpair.
"""

from __future__ import annotations

from . import errors
from ._context import SafetyContext
from ._rules import Arg, RuleSet, SeccompRule

__all__ = ["Arg", "RuleSet", "SafetyContext", "SeccompRule", "errors"]
