"""Learn mode: turn the syscalls a real workload made into a minimal policy, as code.

The cover is built from the real builtin RuleSets (the same catalogue violation reports
use), checked by enabling it in a SafetyContext, and printed as Python with a comment
on each line saying which calls needed it.

The code users are told to paste is built from a structure, never from pasted text:
ruleset and method names come from the builtin catalogue and are checked to be
identifiers, raw syscall names are ``repr()``-ed, and every comment that quotes the
child's calls (paths included) goes through ``printable``, so it stays one comment line.
The result is parsed back and must be exactly one import and one ``rules = [...]``.

A call no chosen grant covers becomes a raw syscall name only when no builtin has a
condition on that syscall: ``"clone3"`` or ``"socket"`` by name would allow every
form of them, so such calls are listed in a comment as left denied instead.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .._policy._context import SafetyContext
from .._text import printable
from ..errors import RuleConflictError
from ._advice import Grant, builtin_grants, grants_allowing, raw_advice_widens
from ._report import Violation

__all__ = ["LearnedPolicy", "learn_everything", "learn_policy", "learning_everything"]

#: Set only by ``python -m compartments learn -m module`` / ``learn script.py``: every
#: ``@compartment`` decorated from then on runs in learn mode, as the whole program does.
_everything = False


def learn_everything() -> None:
    global _everything
    _everything = True


def learning_everything() -> bool:
    return _everything


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
    uncovered = [c for c in calls if not any(g.covers(c.syscall, c.args) for g in chosen)]
    raw = sorted({c.syscall for c in uncovered if not raw_advice_widens(c.syscall)})
    denied = [c for c in uncovered if c.syscall not in raw]
    code = _render(chosen, raw, denied, calls)
    return LearnedPolicy(tuple(_rulesets(chosen, raw)), code, tuple(c.decoded for c in calls))


def _unique_calls(observed: Iterable[Violation]) -> list[_Call]:
    seen: dict[tuple[str, tuple[int, ...]], _Call] = {}
    for v in observed:
        seen.setdefault((v.syscall, v.args), _Call(v.syscall, v.args, v.decoded))
    return list(seen.values())


def _cover(calls: Sequence[_Call]) -> list[Grant]:
    """Greedy set cover over each call's narrowest grants (as violation reports advise):
    most calls covered first, then safest, then narrowest. A broader grant is chosen
    only for a call nothing narrower covers."""
    narrowest = {c: {g.code for g in grants_allowing(c.syscall, c.args)} for c in calls}
    remaining = [c for c in calls if narrowest[c]]
    chosen: list[Grant] = []
    while remaining:
        best, covered = None, []
        for grant in builtin_grants():
            hits = [c for c in remaining if grant.code in narrowest[c]]
            if not hits:
                continue
            key = (len(hits), not grant.risky, -grant.breadth)
            if best is None or key > (len(covered), not best.risky, -best.breadth):
                best, covered = grant, hits
        if best is None:
            break
        chosen.append(best)
        remaining = [c for c in remaining if not best.covers(c.syscall, c.args)]
    return chosen


def _without_conflicts(chosen: list[Grant], calls: Sequence[_Call]) -> list[Grant]:
    """Drop a grant whose conditional rule clashes with another's simple rule, when the
    simple one already covers everything the dropped grant was chosen for."""
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
        needed = [c for c in calls if grant.covers(c.syscall, c.args)]
        if all(any(o.covers(c.syscall, c.args) for o in others) for c in needed):
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


def _identifier(name: str) -> str:
    if not name.isidentifier():
        raise ValueError(f"learn mode: {printable(name)!r} is not an identifier")
    return name


def _render(chosen: Sequence[Grant], raw: Sequence[str], denied: Sequence[_Call],
            calls: Sequence[_Call]) -> str:  # fmt: skip
    """The policy as code, from the grants' names and repr()-ed values; child data only
    ever appears in comments, each escaped onto its one line."""
    imported = sorted({_identifier(g.ruleset) for g in chosen}) or ["SystemIO"]
    lines = ["from compartments.rulesets import " + ", ".join(imported)]
    lines += ["", "# Suggested by compartments learn mode from one real run: review it."]
    for call in denied:
        lines.append(f"# Left denied (no builtin allows it): {_comment(call.decoded)}")
    lines.append("rules = [")
    groups: dict[str, list[Grant]] = {}
    for grant in chosen:
        groups.setdefault(grant.ruleset, []).append(grant)
    for ruleset, grants in groups.items():
        lines.append(f"    {_identifier(ruleset)}.nothing()")
        for index, grant in enumerate(grants):
            confirm = ".yes_really()" if grant.risky else ""
            comma = "," if index == len(grants) - 1 else ""
            needed = [c for c in calls if grant.covers(c.syscall, c.args)]
            method = f"{_identifier(grant.method)}(){confirm}{comma}"
            lines.append(f"    .{method}  # {_summary(needed)}")
    for syscall in raw:
        needed = [c for c in calls if c.syscall == syscall]
        lines.append(f"    {_identifier(syscall)!r},  # no builtin RuleSet: {_summary(needed)}")
    lines.append("]")
    code = "\n".join(lines)
    _check_shape(code)
    return code


def _check_shape(code: str) -> None:
    """The generated module must be exactly the import and the one assignment."""
    body = ast.parse(code).body
    if not (
        len(body) == 2
        and isinstance(body[0], ast.ImportFrom)
        and isinstance(body[1], ast.Assign)
        and [ast.unparse(t) for t in body[1].targets] == ["rules"]
        and isinstance(body[1].value, ast.List)
    ):
        raise AssertionError("learn mode generated code of an unexpected shape")


def _comment(text: str) -> str:
    return printable(text, limit=200)


def _summary(calls: Sequence[_Call], limit: int = 2, width: int = 60) -> str:
    counts = Counter(c.syscall for c in calls)
    examples = [_shorten(printable(c.decoded), width) for c in calls[:limit]]
    more = f" (+{len(calls) - limit} more)" if len(calls) > limit else ""
    names = ", ".join(f"{n} x{k}" if k > 1 else n for n, k in counts.items())
    return f"{names}: {'; '.join(examples)}{more}"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
