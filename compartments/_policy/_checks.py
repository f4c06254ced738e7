"""What ``@compartment`` can refuse at decoration, before any process exists.

A mistake found here is raised where the user wrote it, with its own type: a static
``rules=`` list that names an unknown syscall or conflicts is an UnknownSyscallError or a
RuleConflictError at the decorator, not a RemoteError at the first call; a target the
child cannot find by module and name (a lambda, a function under the ``__main__`` guard,
anything defined by ``python -c`` or the REPL) is a TypeError naming the fix.
"""

from __future__ import annotations

import ast
import functools
import os
import sys
from collections.abc import Iterable
from typing import Any

from . import _seccomp
from ._context import SafetyContext

__all__ = [
    "check_rules",
    "check_static_rules",
    "check_target",
    "import_time_call_message",
    "main_path",
]

_NEEDS = "@compartment needs a module-level function or class, got {qualname!r}: "


def main_path() -> str | None:
    """The file the zygote re-runs (as ``__mp_main__``) to find ``__main__``'s targets."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return os.path.abspath(path) if isinstance(path, str) and os.path.exists(path) else None


def check_target(obj: Any) -> None:
    """Refuse a target the child could not find by its module and qualified name."""
    qualname = getattr(obj, "__qualname__", "")
    module = getattr(obj, "__module__", None)
    if not module or not qualname or "<" in qualname:  # <locals>, <lambda>
        raise TypeError(_NEEDS.format(qualname=qualname) + "the child finds it by module and name")
    if module != "__main__":
        return
    path = main_path()
    if path is None:
        raise TypeError(
            _NEEDS.format(qualname=qualname)
            + "it is defined in a __main__ with no file (python -c, stdin or the REPL), which "
            "the child cannot import: put it in a module file and import it from there"
        )
    if _under_main_guard(obj, qualname, path):
        raise TypeError(
            _NEEDS.format(qualname=qualname)
            + f'it is defined under `if __name__ == "__main__":` in {path}, which the '
            "child does not run (it imports the script as a module to find it): define "
            "it above the guard"
        )


def _under_main_guard(obj: Any, qualname: str, path: str) -> bool:
    guarded = _guarded_definitions(path, _mtime(path))
    if guarded is None:
        return False
    ranges, inside, outside = guarded
    code = getattr(obj, "__code__", None)
    if code is not None and os.path.abspath(code.co_filename) == path:
        return any(first <= code.co_firstlineno <= last for first, last in ranges)
    top = qualname.split(".")[0]  # a class: its name, bound only inside a guard
    return top in inside and top not in outside


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


@functools.lru_cache(maxsize=8)
def _guarded_definitions(
    path: str, _mtime: float
) -> tuple[list[tuple[int, int]], frozenset[str], frozenset[str]] | None:
    """Parsed once per file: the line ranges of its ``__main__`` guards' bodies, and the
    names defined inside them and outside any of them."""
    try:
        with open(path, "rb") as source:
            tree = ast.parse(source.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    ranges: list[tuple[int, int]] = []
    inside: set[str] = set()
    outside: set[str] = set()

    def visit(statements: list[ast.stmt], guarded: bool) -> None:
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                (inside if guarded else outside).add(node.name)
            elif isinstance(node, ast.If) and _is_main_guard(node.test):
                last = node.body[-1].end_lineno or node.lineno  # the body, decorators included
                ranges.append(((node.test.end_lineno or node.lineno) + 1, last))
                visit(node.body, True)
                visit(node.orelse, guarded)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        visit([c for c in children if isinstance(c, ast.stmt)], guarded)
                        for handler in children:
                            if isinstance(handler, ast.ExceptHandler):
                                visit(handler.body, guarded)

    visit(tree.body, False)
    return ranges, frozenset(inside), frozenset(outside)


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not isinstance(test, ast.Compare) or len(test.ops) != 1:
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    mains = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(mains) == 1


def check_rules(rules: object) -> Any:
    """``rules=`` as the compartment keeps it: a callable (evaluated in the child, after
    setup), or a static list checked now by :func:`check_static_rules`."""
    if callable(rules) and not isinstance(rules, type):
        return rules
    return check_static_rules(rules)


def check_static_rules(rules: object) -> tuple[Any, ...]:
    """A static ``rules=`` as the tuple the child seals with, its RuleSets merged now as
    the child will merge them: an unknown syscall, a conflict or a wrong type raises here.

    Nothing is applied. Without libseccomp nothing can be resolved: the first call says
    so (UnsupportedError), as it always has.
    """
    if isinstance(rules, (str, bytes, type)) or not isinstance(rules, Iterable):
        kind = f"the class {rules.__name__}" if isinstance(rules, type) else type(rules).__name__
        raise TypeError(
            "rules= takes a list of RuleSets (or syscall names), or a callable returning "
            f"one, got {kind}"
        )
    checked = tuple(rules)
    if not checked or not _seccomp.available():
        return checked

    ctx = SafetyContext().preload(codecs="none")
    for ruleset in checked:
        ctx.enable(ruleset)
    return checked


def import_time_call_message(name: str, module: str, path: str | None) -> str:
    """What to do when a module's import (in its zygote) started a compartment."""
    if module in ("__main__", "__mp_main__"):
        where = f"the script {path}" if path else "the script"
        return (
            f"compartment `{name}` was started while {where} was being imported by its "
            "zygote. The zygote runs the script's top level to find its compartments, and "
            "that top level calls a compartment. Put what the script does (not what it "
            "defines) under the main guard:\n\n"
            '    if __name__ == "__main__":\n'
            "        ...\n"
        )
    return (
        f"compartment `{name}` was started while module `{module}` was being imported by "
        "its zygote: a module that defines compartments must not call them at import "
        "time. Call them from a function, or under an `if __name__ == \"__main__\":` guard."
    )
