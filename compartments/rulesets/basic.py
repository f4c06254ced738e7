"""The base set every compartment gets: enough for CPython to compute and exit cleanly."""

from __future__ import annotations

from .._rules import Arg, SeccompRule
from ._builder import BuiltinRuleSet

__all__ = ["BasicCapabilities", "CPythonRuntime"]

# extrasafe's base set, less readlink: it takes a path, so it would let a sealed process
# probe which files exist.
BASIC = (
    "brk", "mmap", "munmap", "madvise", "mlock", "mlock2", "mlockall", "mprotect",
    "munlock", "munlockall", "sigaltstack", "rt_sigaction", "rt_sigprocmask",
    "rt_sigreturn", "futex", "get_robust_list", "set_robust_list", "getpid", "gettid",
    "uname", "getrandom", "sched_getaffinity", "sched_yield", "rseq",
    "exit", "exit_group",
)  # fmt: skip

# What sealed CPython needs beyond that: large reallocs move with mremap, and closing an
# object closes its fd. Neither reaches a path.
CPYTHON = ("mremap", "close", "restart_syscall")


# extrasafe allows sched_setaffinity on any pid; here only on the caller (pid 0), so a
# compartment cannot pin the parent or a sibling to one busy core.
PIN_ONLY_ITSELF = SeccompRule("sched_setaffinity").and_condition(Arg(0, bits=32) == 0)


class BasicCapabilities(BuiltinRuleSet):
    """Memory, signals, futexes and exit: always enabled."""

    name = "BasicCapabilities"

    def __init__(self) -> None:
        super().__init__()
        granted = self._with(simple=BASIC, conditional=[PIN_ONLY_ITSELF])
        self._simple, self._conditional = granted._simple, granted._conditional


class CPythonRuntime(BuiltinRuleSet):
    """What the interpreter itself needs once sealed: always enabled."""

    name = "CPythonRuntime"

    def __init__(self) -> None:
        super().__init__()
        self._simple = frozenset(self._with(simple=CPYTHON)._simple)
