"""compartments: privilege-separated, multi-process Python on Linux.

Each compartment is a subprocess sealed by its own default-deny seccomp filter, built
from named RuleSets, and called by msgpack-RPC over a unix socketpair.
"""

from __future__ import annotations

from . import errors
from ._context import SafetyContext
from ._proxy import CompartmentClass, CompartmentFunction, Proxy, RestartPolicy, compartment
from ._rules import Arg, RuleSet, SeccompRule
from ._wire import Fd

__all__ = [
    "Arg",
    "CompartmentClass",
    "CompartmentFunction",
    "Fd",
    "Proxy",
    "RestartPolicy",
    "RuleSet",
    "SafetyContext",
    "SeccompRule",
    "compartment",
    "errors",
]
