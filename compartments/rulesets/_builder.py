"""What every builtin RuleSet shares: immutable builder steps and risky-method confirmation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from .._policy._rules import SeccompRule
from .._policy._seccomp import syscall_exists

__all__ = ["BuilderRuleSet", "BuiltinRuleSet", "YesReally", "fd_number", "known"]

Self = TypeVar("Self", bound="BuiltinRuleSet")


def known(*syscalls: str) -> tuple[str, ...]:
    """The syscalls that exist on this architecture (``open`` is absent on aarch64)."""
    return tuple(name for name in syscalls if syscall_exists(name))


def fd_number(file: Any, method: str) -> int:
    """An fd from an int or anything with ``fileno()``, checked and named on error."""
    fd = file.fileno() if hasattr(file, "fileno") else file
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise TypeError(f"{method}: expected a file or an fd, got {type(file).__name__}")
    if fd < 0:
        raise ValueError(f"{method}: fd must not be negative, got {fd}")
    return fd


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


class BuilderRuleSet(BuiltinRuleSet):
    """A RuleSet built up from ``nothing()`` (or taken whole with ``everything()``).

    Its bare constructor is refused: ``SystemIO()`` would be a RuleSet granting nothing,
    enabled without a word where the user meant some grant.
    """

    def __init__(self) -> None:
        cls = type(self).__name__
        whole = (
            f"{cls}.everything() for all of it"
            if hasattr(type(self), "everything")
            else f"there is no {cls}.everything()"
        )
        raise TypeError(
            f"{cls}() is not a RuleSet to enable: start from {cls}.nothing() and add the "
            f"allow_* methods you need ({whole})"
        )

    @classmethod
    def nothing(cls: type[Self]) -> Self:
        """Nothing granted yet; add capabilities with the ``allow_*`` methods."""
        empty = object.__new__(cls)
        BuiltinRuleSet.__init__(empty)
        return empty


T = TypeVar("T", bound=BuiltinRuleSet)


class YesReally(Generic[T]):
    """A risky grant that does nothing until confirmed with :meth:`yes_really`."""

    __slots__ = ("_inner", "_what")

    def __init__(self, inner: T, what: str) -> None:
        self._inner = inner
        self._what = what

    def yes_really(self) -> T:
        """Confirm that you want the risky grant."""
        return self._inner

    @property
    def _unconfirmed_reason(self) -> str:
        return (
            f"{self._what} is risky and must be confirmed: "
            f"{self._what}.yes_really() before enabling or chaining"
        )

    def __getattr__(self, attr: str) -> Any:
        raise AttributeError(f"{self._unconfirmed_reason} (tried .{attr})")

    def __repr__(self) -> str:
        return f"YesReally({self._what}, unconfirmed)"
