"""The base set every compartment gets, and the immutable RuleSet it shares with the builtins.

It lives in the policy layer, below ``compartments.rulesets``, because every SafetyContext
starts from it: ``rulesets.basic`` and ``rulesets._builder`` re-export it from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from ._rules import Arg, SeccompRule
from ._seccomp import syscall_exists

__all__ = ["BasicCapabilities", "BuiltinRuleSet", "CPythonRuntime", "known"]

Self = TypeVar("Self", bound="BuiltinRuleSet")


def known(*syscalls: str) -> tuple[str, ...]:
    """The syscalls that exist on this architecture (``open`` is absent on aarch64)."""
    return tuple(name for name in syscalls if syscall_exists(name))


class BuiltinRuleSet:
    """An immutable RuleSet: each ``allow_*`` returns a new one with more granted."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self._simple: frozenset[str] = frozenset()
        self._conditional: tuple[SeccompRule, ...] = ()
        self._landlock: tuple[Any, ...] = ()

    @classmethod
    def nothing(cls: type[Self]) -> Self:
        """Nothing granted yet; add capabilities with the ``allow_*`` methods."""
        return cls()

    def _with(
        self: Self,
        simple: Iterable[str] = (),
        conditional: Iterable[SeccompRule] = (),
        landlock: Iterable[Any] = (),
    ) -> Self:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._simple = self._simple | frozenset(known(*simple))
        extra = [r for r in conditional if syscall_exists(r.syscall)]
        fresh = tuple(rule for rule in extra if rule not in self._conditional)
        clone._conditional = self._conditional + fresh
        clone._landlock = self._landlock + tuple(landlock)
        return clone

    def simple_rules(self) -> Sequence[str]:
        return sorted(self._simple)

    def conditional_rules(self) -> Mapping[str, Sequence[SeccompRule]]:
        table: dict[str, list[SeccompRule]] = {}
        for rule in self._conditional:
            table.setdefault(rule.syscall, []).append(rule)
        return table

    def landlock_rules(self) -> Sequence[Any]:
        return self._landlock

    def __repr__(self) -> str:
        conditional = sorted({r.syscall for r in self._conditional})
        return f"{self.name}(simple={self.simple_rules()}, conditional={conditional})"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and self._simple == other._simple
            and set(self._conditional) == set(other._conditional)
            and self._landlock == other._landlock
        )

    __hash__ = None  # type: ignore[assignment]


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
