"""Every builtin RuleSet method and exactly what it allows, read from the code itself.

``python -m compartments rulesets`` prints this, as ``systemd-analyze syscall-filter``
lists its groups. Each method is called for real on ``nothing()``; a method that takes
an fd, a path or a port is called with a stand-in value, shown by the parameter's name
(``read(file, ...)``), so what is listed is what the method builds, not a description.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Mapping
from typing import Any

from .._policy._explain import condition_data, rule_text, table
from .._policy._landlock import PathRule, PortRule, right_names
from .._policy._rules import SeccompRule

__all__ = ["catalog", "catalog_text"]

# Stand-ins, unlikely to collide with any constant a rule compares.
_FD_BASE = 0x5EED0
_PORT_BASE = 64000


def _classes() -> list[tuple[Any, str]]:
    from .. import rulesets
    from .runtime import ChannelRuntime, ImportRootsRuntime

    always = "always enabled"
    framework = "the framework's own, added to every compartment"
    return [
        (rulesets.BasicCapabilities, always),
        (rulesets.CPythonRuntime, always),
        (rulesets.SystemIO, ""),
        (rulesets.Networking, ""),
        (rulesets.Pipes, ""),
        (rulesets.Time, ""),
        (rulesets.Threads, ""),
        (rulesets.ForkAndExec, ""),
        (ChannelRuntime, framework),
        (ImportRootsRuntime, framework),
    ]


def _stand_ins(function: Any) -> tuple[list[Any], dict[int, str], list[str]]:
    """Arguments for a method's required parameters, and the names to show for them."""
    args: list[Any] = []
    names: dict[int, str] = {}
    shown: list[str] = []
    for parameter in list(inspect.signature(function).parameters.values())[1:]:
        if parameter.default is not inspect.Parameter.empty or parameter.kind in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD
        ):  # fmt: skip
            continue
        shown.append(parameter.name)
        if "port" in parameter.name:
            value: Any = _PORT_BASE + len(args)
        elif "path" in parameter.name:
            value = f"/<{parameter.name}>"
        else:
            value = _FD_BASE + len(args)
        if isinstance(value, int):
            names[value] = parameter.name
        args.append(value)
    return args, names, shown


def _entry(cls: Any, method: str, note: str) -> dict[str, Any]:
    from . import YesReally

    base = cls.nothing() if hasattr(cls, "nothing") else None
    names: dict[int, str] = {}
    shown: list[str] = []
    if method == "":
        built, risky = cls(), False
        base = None
    else:
        function = inspect.getattr_static(cls, method)
        function = function.__func__ if isinstance(function, classmethod) else function
        args, names, shown = _stand_ins(function)
        built = getattr(cls if method == "everything" else cls.nothing(), method)(*args)
        risky = isinstance(built, YesReally)
        if risky:
            built = built.yes_really()
    simple = sorted(set(built.simple_rules()) - set(base.simple_rules() if base else ()))
    before = {r for rs in base.conditional_rules().values() for r in rs} if base else set()
    conditional = [r for rs in built.conditional_rules().values() for r in rs if r not in before]
    landlock = [r for r in built.landlock_rules() if not base or r not in base.landlock_rules()]
    call = f"{cls.name}" if method == "" else f"{cls.__name__}.{method}({', '.join(shown)})"
    doc = inspect.getdoc(getattr(cls, method) if method else cls) or ""
    return {
        "ruleset": cls.name,
        "method": method or None,
        "call": call + (".yes_really()" if risky else ""),
        "risky": risky,
        "note": note,
        "summary": doc.split("\n\n")[0].replace("\n", " "),
        "syscalls": [
            *({"syscall": s, "allowed_when": "always", "conditions": []} for s in simple),
            *(_conditional(rule, names) for rule in conditional),
        ],
        "landlock": [_landlock(rule, names) for rule in landlock],
    }


def _conditional(rule: SeccompRule, names: Mapping[int, str]) -> dict[str, Any]:
    comparisons = [c.comparison for c in rule.conditions]
    return {"syscall": rule.syscall, "allowed_when": rule_text(rule.syscall, rule, names),
            "conditions": condition_data(rule.syscall, comparisons, names)}  # fmt: skip


def _landlock(rule: Any, names: Mapping[int, str]) -> dict[str, Any]:
    if isinstance(rule, PathRule):
        path = rule.path[1:] if rule.path.startswith("/<") else rule.path
        return {"path": path, "rights": right_names(rule), "missing_ok": rule.missing_ok}
    assert isinstance(rule, PortRule)
    return {"port": names.get(rule.port, rule.port), "rights": right_names(rule)}


def _methods(cls: Any) -> list[str]:
    found = []
    for method, value in inspect.getmembers(cls):
        if (method == "everything" or method.startswith("allow_")) and callable(value):
            found.append(method)
    return sorted(found, key=lambda m: (m != "everything", m))


def catalog(only: str = "") -> list[dict[str, Any]]:
    """One entry per builtin method (``only``: a RuleSet, or ``RuleSet.method``)."""
    wanted_class, _, wanted_method = only.partition(".")
    entries = []
    for cls, note in _classes():
        if wanted_class and wanted_class not in (cls.__name__, cls.name):
            continue
        methods = _methods(cls) if hasattr(cls, "nothing") and _methods(cls) else [""]
        for method in methods:
            if wanted_method and method != wanted_method:
                continue
            entries.append(_entry(cls, method, note))
    return entries


def catalog_text(entries: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for entry in entries:
        note = f"  [{entry['note']}]" if entry["note"] else ""
        lines.append(f"{entry['call']}{note}")
        if entry["summary"]:
            lines.append(f"    {entry['summary']}")
        always = [row["syscall"] for row in entry["syscalls"] if not row["conditions"]
                  and row["allowed_when"] == "always"]  # fmt: skip
        if always:
            lines += textwrap.wrap(" ".join(always), 96, initial_indent="    always: ",
                                   subsequent_indent="            ")  # fmt: skip
        rows = [(row["syscall"], row["allowed_when"]) for row in entry["syscalls"]
                if row["syscall"] not in always]  # fmt: skip
        rows += [
            ("Landlock", f"{rule.get('path', rule.get('port'))}: {', '.join(rule['rights'])}"
             + (" (if present)" if rule.get("missing_ok") else ""))
            for rule in entry["landlock"]
        ]  # fmt: skip
        if rows:
            lines += ["    " + line for line in table(("syscall", "allowed when"), rows)[2:]]
        if not always and not rows:
            lines.append("    (nothing beyond the base set)")
        lines.append("")
    return "\n".join(lines).rstrip("\n")
