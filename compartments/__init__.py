"""compartments: privilege-separated, multi-process Python on Linux.

Each compartment is a subprocess sealed by its own default-deny seccomp filter, built
from named RuleSets, and called by msgpack-RPC over a unix socketpair.
"""

# Layout, top to bottom; each layer imports only the ones below it (the import-linter
# contracts in pyproject.toml, run by `make lint`, keep it so, and forbid import cycles):
#
#   __main__.py    the CLI: check, inspect, rulesets, learn
#   _parent/       the parent's runtime: supervisor and zygote processes, one supervised
#                  compartment, proxies and calls, Pool, serve(), learn mode, violation
#                  reports and the broker, and the relay of the children's output and logs
#   _child/        the compartment's runtime: zygotes, the setup -> seal -> serve loop, the
#                  server, external clients' lines, sealed imports and stdio, log forwarding
#   _isolation/    namespaces and the Isolate built from them
#   rulesets/      the builtin RuleSets (public)
#   _policy/       the policy language: RuleSet, SafetyContext, the base set, seccomp and
#                  Landlock bindings, the floor filter, checks and explanations
#   _wire/         msgpack-RPC frames, the bounded decoder, channels, fds, large payloads,
#                  errors and tracebacks as data, and the calling end of a channel
#   errors.py, _privileges.py, _text.py
#                  the exception tree, no_new_privs and capabilities, and text escaping

from __future__ import annotations

from . import errors
from ._isolation._isolate import Bind, Isolate, IsolateResult
from ._parent._control import Control, control
from ._parent._decorator import compartment
from ._parent._learn import LearnedPolicy
from ._parent._pool import Pool
from ._parent._proxy import CompartmentClass, CompartmentFunction, Proxy, RestartPolicy
from ._parent._report import Violation
from ._parent._serve import Served, serve
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
