"""What the enabled RuleSets allow, merged: each syscall's unconditional or conditional
rules with the RuleSet each came from, and the conflict two RuleSets' errnos make.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import RuleConflictError
from ._rules import SeccompRule

__all__ = ["Grants"]


@dataclass
class Grants:
    """What the enabled RuleSets allow, keyed by syscall, with where each grant came from."""

    simple: dict[str, str] = field(default_factory=dict)
    conditional: dict[str, list[tuple[str, SeccompRule]]] = field(default_factory=dict)
    landlock: list[Any] = field(default_factory=list)

    def copy(self) -> Grants:
        return Grants(
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
