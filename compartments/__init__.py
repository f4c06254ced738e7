"""compartments: privilege-separated, multi-process Python on Linux.

Each compartment is a subprocess sealed by its own default-deny seccomp filter, built
from named RuleSets, and called by msgpack-RPC over a unix socketpair.
"""

from __future__ import annotations

from . import errors
from ._isolation._isolate import Bind, Isolate, IsolateResult
from ._parent._learn import LearnedPolicy
from ._parent._pool import Pool
from ._parent._proxy import (
    CompartmentClass,
    CompartmentFunction,
    Control,
    Proxy,
    RestartPolicy,
    compartment,
    control,
)
from ._parent._serve import Served, serve
from ._parent._violations import Violation
from ._policy._context import SafetyContext
from ._policy._landlock import Scope
from ._policy._rules import Arg, RuleSet, SeccompRule
from ._wire._frames import Fd
from .errors import (
    BootstrapError,
    CallTimeout,
    CompartmentClosed,
    CompartmentCrashed,
    CompartmentsError,
    LandlockError,
    NoRulesEnabledError,
    PolicyViolation,
    ProtocolError,
    RemoteError,
    RuleConflictError,
    UnknownSyscallError,
    UnsupportedError,
)

__all__ = [
    "Arg",
    "Bind",
    "BootstrapError",
    "CallTimeout",
    "CompartmentClass",
    "CompartmentClosed",
    "CompartmentCrashed",
    "CompartmentFunction",
    "CompartmentsError",
    "Control",
    "Fd",
    "Isolate",
    "IsolateResult",
    "LandlockError",
    "LearnedPolicy",
    "NoRulesEnabledError",
    "PolicyViolation",
    "Pool",
    "ProtocolError",
    "Proxy",
    "RemoteError",
    "RestartPolicy",
    "RuleConflictError",
    "RuleSet",
    "SafetyContext",
    "Scope",
    "SeccompRule",
    "Served",
    "UnknownSyscallError",
    "UnsupportedError",
    "Violation",
    "compartment",
    "control",
    "errors",
    "serve",
]
