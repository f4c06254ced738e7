"""SafetyContext: gather RuleSets, refuse conflicts, compile and apply one filter."""

from __future__ import annotations

import errno as errno_module
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import _seccomp
from ._rules import RuleSet, SeccompRule, as_ruleset
from ._seccomp import CompiledRule
from .errors import NoRulesEnabledError, RuleConflictError

__all__ = ["SafetyContext"]


@dataclass
class _Grants:
    """What the enabled RuleSets allow, keyed by syscall, with where each grant came from."""

    simple: dict[str, str] = field(default_factory=dict)
    conditional: dict[str, list[tuple[str, SeccompRule]]] = field(default_factory=dict)
    landlock: list[Any] = field(default_factory=list)

    def copy(self) -> _Grants:
        return _Grants(
            dict(self.simple),
            {k: list(v) for k, v in self.conditional.items()},
            list(self.landlock),
        )

    def add_simple(self, syscall: str, source: str) -> None:
        rules = self.conditional.get(syscall)
        if rules:
            raise RuleConflictError(syscall, rules[0][0], source)
        self.simple.setdefault(syscall, source)

    def add_conditional(self, rule: SeccompRule, source: str) -> None:
        if rule.syscall in self.simple:
            raise RuleConflictError(rule.syscall, source, self.simple[rule.syscall])
        rules = self.conditional.setdefault(rule.syscall, [])
        for other_source, other in rules:
            if (other.errno is None) != (rule.errno is None) or (
                rule.errno is not None and other.errno != rule.errno
            ):
                clash = _errno_clash(rule, source, other, other_source)
                raise RuleConflictError(rule.syscall, source, other_source, clash)
        if all(other != rule for _, other in rules):
            rules.append((source, rule))


def _errno_clash(rule: SeccompRule, source: str, other: SeccompRule, other_source: str) -> str:
    def what(r: SeccompRule, s: str) -> str:
        answer = f"answers {r.describe()[2:]}" if r.errno is not None else "allows it"
        return f"RuleSet `{s}` {answer}"

    return (
        f"Conflicting rules on syscall `{rule.syscall}`: {what(rule, source)} while "
        f"{what(other, other_source)}."
    )


class SafetyContext:
    """A default-deny seccomp policy built from named RuleSets.

    Every syscall no enabled RuleSet allows fails with EPERM (see :meth:`with_errno`).
    A foreign architecture, x32 numbers included, kills the process.
    """

    def __init__(self) -> None:
        from .rulesets import BasicCapabilities, CPythonRuntime

        self._grants = _Grants()
        self._enabled: list[str] = []
        self._errno = errno_module.EPERM
        for base in (BasicCapabilities(), CPythonRuntime()):
            self._merge(base, yielding=False)

    # -- building -------------------------------------------------------------------

    def enable(self, ruleset: RuleSet | str) -> SafetyContext:
        """Add a RuleSet (or a bare syscall name). Atomic: on error nothing changes."""
        resolved = as_ruleset(ruleset)
        self._merge(resolved, yielding=False)
        self._enabled.append(resolved.name)
        return self

    def enable_yielding(self, ruleset: RuleSet) -> SafetyContext:
        """Add a framework RuleSet whose conditions give way to the user's simple rules."""
        self._merge(as_ruleset(ruleset), yielding=True)
        return self

    def with_errno(self, number: int) -> SafetyContext:
        """Answer denied syscalls with this errno instead of EPERM."""
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 4095:
            raise ValueError(f"with_errno() takes an errno from 1 to 4095, got {number!r}")
        self._errno = number
        return self

    def _merge(self, ruleset: RuleSet, *, yielding: bool) -> None:
        name = str(ruleset.name)
        staged = self._grants.copy()
        for syscall in ruleset.simple_rules():
            _seccomp_name(syscall, name)
            staged.add_simple(syscall, name)
        for syscall, rules in ruleset.conditional_rules().items():
            _seccomp_name(syscall, name)
            if yielding and syscall in staged.simple:
                continue
            for rule in rules:
                if not isinstance(rule, SeccompRule) or rule.syscall != syscall:
                    raise TypeError(
                        f"RuleSet `{name}`: conditional_rules()[{syscall!r}] must hold "
                        f"SeccompRule({syscall!r}, ...) objects, got {rule!r}"
                    )
                staged.add_conditional(rule, name)
        landlock_rules = getattr(ruleset, "landlock_rules", None)
        if callable(landlock_rules):
            staged.landlock.extend(landlock_rules())
        self._grants = staged

    # -- inspecting -------------------------------------------------------------------

    @property
    def enabled(self) -> tuple[str, ...]:
        """Names of the RuleSets enabled by the user, in order."""
        return tuple(self._enabled)

    def allowed_syscalls(self) -> dict[str, list[tuple[str, str]]]:
        """syscall → [(condition text or "" for unconditional, RuleSet name)]."""
        table: dict[str, list[tuple[str, str]]] = {}
        for syscall, source in self._grants.simple.items():
            table.setdefault(syscall, []).append(("", source))
        for syscall, rules in self._grants.conditional.items():
            for source, rule in rules:
                table.setdefault(syscall, []).append((rule.describe(), source))
        return dict(sorted(table.items()))

    def describe(self) -> str:
        """A readable table: each allowed syscall, its conditions and its RuleSet."""
        rows = [("syscall", "allowed when", "RuleSet")]
        for syscall, grants in self.allowed_syscalls().items():
            for condition, source in grants:
                rows.append((syscall, condition or "always", source))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"(everything else: {errno_module.errorcode.get(self._errno, self._errno)})")
        return "\n".join(lines)

    def export_pfc(self) -> str:
        """libseccomp's pseudo-filter code for this policy, as text."""
        return _seccomp.export_pfc(self._build(tsync=False))

    def export_bpf(self) -> bytes:
        """The raw BPF program this policy loads."""
        return _seccomp.export_bpf(self._build(tsync=False))

    # -- applying ---------------------------------------------------------------------

    def apply_to_current_thread(self) -> None:
        """Seal the calling thread (and anything it later starts)."""
        self._apply(tsync=False)

    def apply_to_all_threads(self) -> None:
        """Seal every thread of the process at once (SECCOMP_FILTER_FLAG_TSYNC)."""
        self._apply(tsync=True)

    def _apply(self, *, tsync: bool) -> None:
        flt = self._build(tsync=tsync)
        self._apply_landlock()
        _seccomp.load(flt)

    def _apply_landlock(self) -> None:
        if not self._grants.landlock:
            return
        from ._landlock import LandlockPolicy

        policy = LandlockPolicy()
        for rule in self._grants.landlock:
            policy.add(rule)
        policy.apply(best_effort=any(getattr(r, "best_effort", False) for r in policy.rules))

    def _build(self, *, tsync: bool, default_action: int | None = None) -> Any:
        if not self._enabled:
            raise NoRulesEnabledError()
        if default_action is None:
            default_action = _seccomp.errno_action(self._errno)
        return _seccomp.build_filter(
            self._compiled_rules(), default_action=default_action, tsync=tsync
        )

    def _compiled_rules(self) -> Iterable[CompiledRule]:
        for syscall in self._grants.simple:
            yield CompiledRule(syscall, _seccomp.ALLOW)
        for syscall, rules in self._grants.conditional.items():
            for _, rule in rules:
                action = (
                    _seccomp.ALLOW if rule.errno is None else _seccomp.errno_action(rule.errno)
                )
                yield CompiledRule(syscall, action, tuple(c.comparison for c in rule.conditions))


def _seccomp_name(syscall: object, ruleset: str) -> None:
    from .errors import UnknownSyscallError

    if not isinstance(syscall, str):
        raise TypeError(f"RuleSet `{ruleset}` names a syscall that is not a str: {syscall!r}")
    try:
        _seccomp.syscall_number(syscall)
    except UnknownSyscallError:
        raise UnknownSyscallError(syscall, ruleset) from None
