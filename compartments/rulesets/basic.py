"""The base set every compartment gets: enough for CPython to compute and exit cleanly."""

from __future__ import annotations

from .._policy._rules import Arg, SeccompRule
from ._builder import BuiltinRuleSet

__all__ = ["BasicCapabilities", "CPythonRuntime"]

# extrasafe's base set, less readlink (it takes a path, so it would let a sealed process
# probe which files exist) and less unconditional mmap (see MMAP below).
BASIC = (
    "brk", "munmap", "madvise", "mlock", "mlock2", "mlockall", "mprotect",
    "munlock", "munlockall", "sigaltstack", "rt_sigaction", "rt_sigprocmask",
    "rt_sigreturn", "futex", "get_robust_list", "set_robust_list", "getpid", "gettid",
    "uname", "getrandom", "sched_getaffinity", "sched_yield", "rseq",
    "exit", "exit_group",
)  # fmt: skip

# What sealed CPython needs beyond that: large reallocs move with mremap, and closing an
# object closes its fd. Neither reaches a path.
CPYTHON = ("mremap", "close", "restart_syscall")


# mmap only for memory, never to write through a held fd. A MAP_SHARED mapping of a file
# opened for writing writes the file, whatever the RuleSets say about write(), and
# mprotect (which cannot be checked: it takes no fd) would make a read-only shared mapping
# writable later. So the base set allows anonymous mappings of any kind (the kernel never
# looks at the fd then; multiprocessing's shared anonymous memory keeps working) and
# MAP_PRIVATE file mappings (copy-on-write: the loader, read-only payloads). The type is
# masked with MAP_TYPE (0x0f), as the kernel's switch does, so MAP_SHARED_VALIDATE (0x03)
# and MAP_DROPPABLE (0x08) are not MAP_PRIVATE. A shared mapping of one named fd is
# SystemIO.allow_shared_mapping(fd). mremap cannot change a mapping's sharing (it moves
# or resizes; MREMAP_DONTUNMAP keeps the old mapping as it was) and remap_file_pages
# works only inside shared mappings and is not granted.
MAP_SHARED, MAP_PRIVATE, MAP_TYPE, MAP_ANONYMOUS = 0x01, 0x02, 0x0F, 0x20
MMAP = (
    SeccompRule("mmap").and_condition(Arg(3) & MAP_ANONYMOUS == MAP_ANONYMOUS),
    SeccompRule("mmap").and_condition(Arg(3) & MAP_TYPE == MAP_PRIVATE),
)

# extrasafe allows sched_setaffinity on any pid; here only on the caller (pid 0), so a
# compartment cannot pin the parent or a sibling to one busy core.
PIN_ONLY_ITSELF = SeccompRule("sched_setaffinity").and_condition(Arg(0, bits=32) == 0)


class BasicCapabilities(BuiltinRuleSet):
    """Memory, signals, futexes and exit: always enabled.

    mmap is conditional: anonymous memory and private (copy-on-write) file mappings only.
    """

    name = "BasicCapabilities"

    def __init__(self) -> None:
        super().__init__()
        granted = self._with(simple=BASIC, conditional=[*MMAP, PIN_ONLY_ITSELF])
        self._simple, self._conditional = granted._simple, granted._conditional


class CPythonRuntime(BuiltinRuleSet):
    """What the interpreter itself needs once sealed: always enabled."""

    name = "CPythonRuntime"

    def __init__(self) -> None:
        super().__init__()
        self._simple = frozenset(self._with(simple=CPYTHON)._simple)
