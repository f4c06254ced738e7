"""Learn mode: turn the syscalls a real workload made into a minimal policy, as code.

The cover is built from the real builtin RuleSets (the same catalogue violation reports
use), checked by enabling it in a SafetyContext, and printed as Python with a comment
on each line saying which calls needed it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._violations import Grant, Violation, builtin_grants
from .errors import RuleConflictError

__all__ = ["LearnedPolicy", "learn_policy"]

BANNER = (
    "LEARN MODE: compartment `{name}` runs UNSAFE: every syscall its policy denies is "
    "allowed and recorded. Never use learn mode in production."
)


@dataclass(frozen=True)
class _Call:
    syscall: str
    args: tuple[int, ...]
    decoded: str


@dataclass(frozen=True)
class LearnedPolicy:
    """The suggested policy: ``rulesets`` to pass as ``rules=``, and ``code`` to paste."""

    rulesets: tuple[Any, ...]
    code: str
    calls: tuple[str, ...]

    def __str__(self) -> str:
        return self.code


def learn_policy(observed: Iterable[Violation]) -> LearnedPolicy:
    calls = _unique_calls(observed)
    chosen = _cover(calls)
    chosen = _without_conflicts(chosen, calls)
    raw = sorted({c.syscall for c in calls if not any(g.allows(c.syscall, c.args) for g in chosen)})
    code = _render(chosen, raw, calls)
    return LearnedPolicy(tuple(_rulesets(chosen, raw)), code, tuple(c.decoded for c in calls))


def _unique_calls(observed: Iterable[Violation]) -> list[_Call]:
    seen: dict[tuple[str, tuple[int, ...]], _Call] = {}
    for v in observed:
        seen.setdefault((v.syscall, v.args), _Call(v.syscall, v.args, v.decoded))
    return list(seen.values())


def _cover(calls: Sequence[_Call]) -> list[Grant]:
    """Greedy set cover: most calls covered first, then safest, then narrowest."""
    remaining = list(calls)
    chosen: list[Grant] = []
    while remaining:
        best, covered = None, []
        for grant in builtin_grants():
            hits = [c for c in remaining if grant.allows(c.syscall, c.args)]
            if not hits:
                continue
            key = (len(hits), not grant.risky, -grant.breadth)
            if best is None or key > (len(covered), not best.risky, -best.breadth):
                best, covered = grant, hits
        if best is None:
            break
        chosen.append(best)
        remaining = [c for c in remaining if c not in covered]
    return chosen


def _without_conflicts(chosen: list[Grant], calls: Sequence[_Call]) -> list[Grant]:
    """Drop a grant whose conditional rule clashes with another's simple rule, when the
    simple one already covers everything the dropped grant was chosen for."""
    from ._context import SafetyContext

    for _ in range(len(chosen)):
        context = SafetyContext()
        try:
            for grant in chosen:
                for ruleset in grant.rulesets:
                    context.enable(ruleset)
            return chosen
        except RuleConflictError as conflict:
            chosen = _drop_conditional_side(chosen, conflict.syscall, calls)
    return chosen


def _drop_conditional_side(
    chosen: list[Grant], syscall: str, calls: Sequence[_Call]
) -> list[Grant]:
    conditional = [g for g in chosen if any(r.syscall == syscall for r in g.conditional)]
    for grant in conditional:
        others = [g for g in chosen if g is not grant]
        needed = [c for c in calls if grant.allows(c.syscall, c.args)]
        if all(any(o.allows(c.syscall, c.args) for o in others) for c in needed):
            return others
    # Nothing covers it otherwise: widen to the unconditional grant of that syscall.
    return [g for g in chosen if g not in conditional] + _simple_grants_for(syscall)


def _simple_grants_for(syscall: str) -> list[Grant]:
    grants = [g for g in builtin_grants() if syscall in g.simple]
    return sorted(grants, key=lambda g: (g.risky, g.breadth))[:1]


def _rulesets(chosen: Sequence[Grant], raw: Sequence[str]) -> list[Any]:
    by_class: dict[str, Any] = {}
    for grant in chosen:
        current = by_class.get(grant.ruleset)
        by_class[grant.ruleset] = _merge(current, grant)
    return [*by_class.values(), *raw]


def _merge(current: Any, grant: Grant) -> Any:
    (granted,) = grant.rulesets
    if current is None:
        return granted
    return current._with(
        simple=granted.simple_rules(),
        conditional=[r for rs in granted.conditional_rules().values() for r in rs],
    )


def _render(chosen: Sequence[Grant], raw: Sequence[str], calls: Sequence[_Call]) -> str:
    lines = ["from compartments.rulesets import " + ", ".join(
        sorted({g.ruleset for g in chosen}) or ["SystemIO"])]  # fmt: skip
    lines += ["", "# Suggested by compartments learn mode from one real run: review it."]
    lines.append("rules = [")
    groups: dict[str, list[Grant]] = {}
    for grant in chosen:
        groups.setdefault(grant.ruleset, []).append(grant)
    for ruleset, grants in groups.items():
        lines.append(f"    {ruleset}.nothing()")
        for grant in grants:
            call = grant.code.split(".", 1)[1]
            needed = [c for c in calls if grant.allows(c.syscall, c.args)]
            lines.append(f"    .{call}  # {_summary(needed)}")
        lines[-1] = lines[-1].replace("  #", ",  #", 1)
    for syscall in raw:
        needed = [c for c in calls if c.syscall == syscall]
        lines.append(f'    "{syscall}",  # no builtin RuleSet: {_summary(needed)}')
    lines.append("]")
    return "\n".join(lines)


def _summary(calls: Sequence[_Call], limit: int = 2, width: int = 60) -> str:
    counts = Counter(c.syscall for c in calls)
    examples = [_shorten(c.decoded, width) for c in calls[:limit]]
    more = f" (+{len(calls) - limit} more)" if len(calls) > limit else ""
    names = ", ".join(f"{n} x{k}" if k > 1 else n for n, k in counts.items())
    return f"{names}: {'; '.join(examples)}{more}"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
