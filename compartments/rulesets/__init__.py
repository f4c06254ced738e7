"""The builtin RuleSets, with extrasafe's names and meaning (and its weak spots fixed)."""

from __future__ import annotations

from ._builder import YesReally
from .basic import BasicCapabilities, CPythonRuntime
from .fork_and_exec import ForkAndExec
from .networking import Networking
from .pipes import Pipes
from .system_io import SystemIO
from .threads import Threads
from .time import Time

__all__ = [
    "BasicCapabilities",
    "CPythonRuntime",
    "ForkAndExec",
    "Networking",
    "Pipes",
    "SystemIO",
    "Threads",
    "Time",
    "YesReally",
]
