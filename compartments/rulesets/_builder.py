"""What every builtin RuleSet shares: immutable builder steps and risky-method confirmation."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from .._policy._base import BuiltinRuleSet, known

__all__ = ["BuilderRuleSet", "BuiltinRuleSet", "YesReally", "fd_number", "known"]

Self = TypeVar("Self", bound=BuiltinRuleSet)


def fd_number(file: Any, method: str) -> int:
    """An fd from an int or anything with ``fileno()``, checked and named on error."""
    fd = file.fileno() if hasattr(file, "fileno") else file
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise TypeError(f"{method}: expected a file or an fd, got {type(file).__name__}")
    if fd < 0:
        raise ValueError(f"{method}: fd must not be negative, got {fd}")
    return fd


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
