"""The vocabulary of a policy: argument conditions, rules, and the RuleSet protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._seccomp import OPERATORS, Comparison, describe_comparisons, unsigned

__all__ = ["Arg", "Condition", "RuleSet", "SeccompRule", "as_ruleset"]

_FULL_WIDTH_OPERATORS = {"!=", "<", "<=", ">", ">="}


@dataclass(frozen=True, slots=True)
class Condition:
    """A comparison on one syscall argument, made by comparing an :class:`Arg`."""

    comparison: Comparison

    def __str__(self) -> str:
        return describe_comparisons([self.comparison])


class Arg:
    """A syscall argument by position, compared with ``== != < <= > >=`` or ``& mask ==``.

    ``bits=32`` looks only at the low 32 bits, for ``int`` arguments whose upper half the
    kernel leaves unspecified.
    """

    __slots__ = ("bits", "index")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, index: int, bits: int = 64) -> None:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= 5:
            raise ValueError(f"syscall argument index must be 0 to 5, got {index!r}")
        if bits not in (32, 64):
            raise ValueError(f"Arg bits must be 32 or 64, got {bits!r}")
        self.index = index
        self.bits = bits

    def _compare(self, op: str, value: object) -> Condition:
        value = _integer(value, f"arg{self.index} {op}")
        if self.bits == 32:
            if op in _FULL_WIDTH_OPERATORS:
                raise ValueError(
                    f"arg{self.index} {op} with bits=32: libseccomp 2.5 compares the low 32 "
                    "bits only with == or a mask; use bits=64"
                )
            mask = 0xFFFFFFFF
            return Condition(
                Comparison(self.index, OPERATORS["&=="], mask, unsigned(value, 32))
            )
        return Condition(Comparison(self.index, OPERATORS[op], unsigned(value, 64)))

    def __eq__(self, value: object) -> Condition:  # type: ignore[override]
        return self._compare("==", value)

    def __ne__(self, value: object) -> Condition:  # type: ignore[override]
        return self._compare("!=", value)

    def __lt__(self, value: object) -> Condition:
        return self._compare("<", value)

    def __le__(self, value: object) -> Condition:
        return self._compare("<=", value)

    def __gt__(self, value: object) -> Condition:
        return self._compare(">", value)

    def __ge__(self, value: object) -> Condition:
        return self._compare(">=", value)

    def __and__(self, mask: object) -> MaskedArg:
        return MaskedArg(self, unsigned(_integer(mask, f"arg{self.index} & mask"), self.bits))

    def __repr__(self) -> str:
        return f"Arg({self.index}, bits={self.bits})"


class MaskedArg:
    """``Arg(i) & mask``: only ``==`` makes sense on it."""

    __slots__ = ("arg", "mask")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, arg: Arg, mask: int) -> None:
        self.arg = arg
        self.mask = mask

    def __eq__(self, value: object) -> Condition:  # type: ignore[override]
        value = unsigned(_integer(value, f"arg{self.arg.index} & mask =="), self.arg.bits)
        return Condition(Comparison(self.arg.index, OPERATORS["&=="], self.mask, value))

    def __ne__(self, value: object) -> Condition:  # type: ignore[override]
        raise ValueError("a masked argument can only be compared with ==")


def _integer(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{where}: expected an int, got {type(value).__name__}")
    if not -(1 << 63) <= value < (1 << 64):
        raise ValueError(f"{where}: {value} does not fit in a 64-bit syscall argument")
    return value


@dataclass(frozen=True, slots=True)
class SeccompRule:
    """A syscall allowed when all of its conditions hold.

    Rules for the same syscall are OR-ed, also across RuleSets. ``errno`` makes the rule
    answer with that error instead of allowing the call (``clone3`` → ENOSYS, so that
    glibc falls back to ``clone``, which can be checked).
    """

    syscall: str
    conditions: tuple[Condition, ...] = ()
    errno: int | None = None

    def holds_for(self, args: Sequence[int]) -> bool:
        """Whether every condition is true for these syscall arguments."""
        return all(c.comparison.holds(args) for c in self.conditions)

    def and_condition(self, condition: Condition) -> SeccompRule:
        if not isinstance(condition, Condition):
            raise TypeError(
                f"and_condition() on `{self.syscall}` takes a Condition such as "
                f"Arg(0) == 1, got {type(condition).__name__}"
            )
        index = condition.comparison.index
        if any(c.comparison.index == index for c in self.conditions):
            raise ValueError(
                f"rule on `{self.syscall}` already compares arg{index}: libseccomp allows one "
                "comparison per argument in a rule; add a second rule (OR) or use a mask"
            )
        return SeccompRule(self.syscall, (*self.conditions, condition), self.errno)

    def returning_errno(self, number: int) -> SeccompRule:
        if not isinstance(number, int) or not 1 <= number <= 4095:
            raise ValueError(f"errno for `{self.syscall}` must be 1 to 4095, got {number!r}")
        return SeccompRule(self.syscall, self.conditions, number)

    def describe(self) -> str:
        cond = describe_comparisons([c.comparison for c in self.conditions])
        if self.errno is not None:
            errname = _errno_name(self.errno)
            return f"→ {errname}" + (f" if {cond}" if cond else "")
        return cond


def _errno_name(number: int) -> str:
    import errno as errno_module

    return errno_module.errorcode.get(number, str(number))


@runtime_checkable
class RuleSet(Protocol):
    """A named group of syscalls that together enable one capability."""

    @property
    def name(self) -> str: ...

    def simple_rules(self) -> Sequence[str]: ...

    def conditional_rules(self) -> Mapping[str, Sequence[SeccompRule]]: ...


@dataclass(frozen=True, slots=True)
class SyscallRuleSet:
    """A bare syscall name, allowed unconditionally, standing in for a RuleSet."""

    syscall: str

    @property
    def name(self) -> str:
        return self.syscall

    def simple_rules(self) -> Sequence[str]:
        return (self.syscall,)

    def conditional_rules(self) -> Mapping[str, Sequence[SeccompRule]]:
        return {}


def as_ruleset(value: object) -> RuleSet:
    """Accept a RuleSet or a bare syscall name; reject anything else by name."""
    if isinstance(value, str):
        return SyscallRuleSet(value)
    confirm = getattr(value, "_unconfirmed_reason", None)
    if confirm is not None:
        raise TypeError(str(confirm))
    if isinstance(value, RuleSet) and not isinstance(value, type):
        return value
    kind = value.__name__ if isinstance(value, type) else type(value).__name__
    hint = " (did you mean to call a constructor such as .nothing()?)" if isinstance(
        value, type
    ) else ""
    raise TypeError(
        f"expected a RuleSet (name, simple_rules(), conditional_rules()) or a syscall name, "
        f"got {kind}{hint}"
    )


# -- rules as data -----------------------------------------------------------------------
# A policy chosen at run time (a Pool's rules) travels to the child as plain msgpack data,
# never pickled, and is rebuilt there as a DataRuleSet.


@dataclass(frozen=True, slots=True)
class DataRuleSet:
    """A RuleSet rebuilt from data: same name, same rules, same Landlock grants."""

    name: str
    simple: tuple[str, ...]
    conditional: tuple[SeccompRule, ...]
    landlock: tuple[object, ...] = ()

    def simple_rules(self) -> Sequence[str]:
        return self.simple

    def conditional_rules(self) -> Mapping[str, Sequence[SeccompRule]]:
        table: dict[str, list[SeccompRule]] = {}
        for rule in self.conditional:
            table.setdefault(rule.syscall, []).append(rule)
        return table

    def landlock_rules(self) -> Sequence[object]:
        return self.landlock


def ruleset_to_data(value: object) -> dict[str, object]:
    ruleset = as_ruleset(value)
    conditional = [
        [rule.syscall, rule.errno, [list(_comparison_fields(c)) for c in rule.conditions]]
        for rules in ruleset.conditional_rules().values()
        for rule in rules
    ]
    landlock = getattr(ruleset, "landlock_rules", lambda: ())()
    return {
        "name": str(ruleset.name),
        "simple": list(ruleset.simple_rules()),
        "conditional": conditional,
        "landlock": [_landlock_to_data(rule) for rule in landlock],
    }


def ruleset_from_data(data: Mapping[str, object]) -> DataRuleSet:
    conditional = []
    for syscall, errno, comparisons in data["conditional"]:  # type: ignore[attr-defined]
        conditions = tuple(Condition(Comparison(*fields)) for fields in comparisons)
        conditional.append(SeccompRule(syscall, conditions, errno))
    landlock = tuple(_landlock_from_data(item) for item in data["landlock"])  # type: ignore[attr-defined]
    return DataRuleSet(
        str(data["name"]), tuple(data["simple"]), tuple(conditional), landlock  # type: ignore[arg-type]
    )


def _comparison_fields(condition: Condition) -> tuple[int, int, int, int]:
    c = condition.comparison
    return (c.index, c.op, c.datum_a, c.datum_b)


def _landlock_to_data(rule: object) -> list[object]:
    from ._landlock import PathRule, PortRule

    if isinstance(rule, PathRule):
        return ["path", rule.path, rule.access, rule.ruleset, rule.missing_ok]
    if isinstance(rule, PortRule):
        return ["port", rule.port, rule.access, rule.ruleset]
    raise TypeError(f"cannot send Landlock rule {rule!r}")


def _landlock_from_data(item: list[object]) -> object:
    from ._landlock import PathRule, PortRule

    kind, *fields = item
    if kind == "path":
        return PathRule(*fields)  # type: ignore[arg-type]
    return PortRule(*fields)  # type: ignore[arg-type]
