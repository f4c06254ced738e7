"""Importing after the seal: only from the import roots, and clear errors otherwise.

Once sealed, a compartment reads files only under the import roots (``_roots``), served
by the parent (``_broker``). Just before the seal this module:

- stops the interpreter writing bytecode caches (a write under the roots is denied);
- takes every ``sys.path`` entry outside the roots (the application's directory, the
  working directory) out of ``sys.path``, so that no import and no ``importlib.metadata``
  scan touches it, each touch being a denial;
- installs finders that turn a lazy import that cannot work into a plain
  ModuleNotFoundError (a builtin, so the caller gets it as such) naming the module and
  the fix: a submodule of a package outside the roots (the application's own modules),
  and, where the parent serves nothing (see ``_broker.mode``), any module not found.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Iterable, Sequence
from types import ModuleType

from .._policy import _roots
from .._policy._imports import preload_codecs

__all__ = ["configure", "not_served", "prepare"]


_FIX = (
    "import it before the seal: at the top of the compartment's module, or in the "
    "class's __init__ (setup runs before the seal)"
)


class _OutsideRoots(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: a submodule of a package that lives outside the roots."""

    def __init__(self, granted: tuple[str, ...]) -> None:
        self.granted = granted  # paths the policy itself lets the compartment read

    def _readable(self, entry: str) -> bool:
        entry = os.path.normpath(entry)
        return _roots.lexically_under(entry) or any(
            entry == g or entry.startswith(g.rstrip("/") + "/") for g in self.granted
        )

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not path:
            return None
        entries = [p for p in path if isinstance(p, str)]
        if not entries or any(self._readable(p) for p in entries):
            return None
        where = ", ".join(entries[:3])
        raise ModuleNotFoundError(
            f"lazy import of `{fullname}` after the seal: it lives in {where}, outside the "
            f"import roots a sealed compartment can read (the stdlib and site-packages); "
            f"{_FIX}"
        )  # no name=: `from pkg import mod` would swallow it as "mod does not exist"


class _NotServed(importlib.abc.MetaPathFinder):
    """Last on sys.meta_path: nothing found, and the parent serves no reads here."""

    def __init__(self, removed: list[str], reason: str) -> None:
        self.removed = removed
        self.reason = reason

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not self.reason:
            if path is not None or not self.removed:
                return None
            where = ", ".join(repr(p) for p in self.removed[:3])
            raise ModuleNotFoundError(
                f"No module named {fullname!r} under the import roots: after the seal a "
                f"compartment imports only from the stdlib and site-packages, not from "
                f"{where}; if `{fullname}` lives there, {_FIX}",
                name=fullname,
            )
        raise ModuleNotFoundError(
            f"lazy import of `{fullname}` after the seal failed: this machine cannot serve "
            f"reads of the import roots to a sealed compartment ({self.reason}); {_FIX}",
            name=fullname,
        )


#: Why the parent serves no reads under the roots here ("" when it does): set by the
#: zygote from the parent's ``_broker.mode()``.
_not_served = ""


def configure(served: bool, reason: str) -> None:
    """Record what the parent said it serves; without reads served, preload the codecs."""
    global _not_served
    _not_served = "" if served else reason or "unknown"
    if not served:
        preload_codecs()


def prepare(*, listener: bool = True, granted: Iterable[str] = ()) -> list[str]:
    """Make the interpreter ready to be sealed; returns the ``sys.path`` entries taken out.

    ``listener``: whether the seal hands a listener to the parent (without one, the
    parent serves nothing). ``granted``: paths the policy's own Landlock rules let the
    compartment read; ``sys.path`` entries under them stay importable.
    """
    sys.dont_write_bytecode = True
    readable = tuple(
        {spelling for g in granted for spelling in (os.path.normpath(g), os.path.realpath(g))}
    )
    finder = _OutsideRoots(readable)
    removed: list[str] = []
    kept: list[str] = []
    for entry in sys.path:
        keep = isinstance(entry, str) and bool(entry) and (
            _roots.under_roots(entry)
            or (bool(readable) and finder._readable(os.path.realpath(entry)))
        )  # fmt: skip
        (kept if keep else removed).append(entry)
    sys.path[:] = kept
    sys.meta_path.insert(0, finder)
    reason = _not_served or ("" if listener else "the compartment has no violation listener")
    sys.meta_path.append(_NotServed(removed, reason))
    return removed


def not_served(reason: str) -> None:
    """The seal found no user notification after all: lazy imports will fail, say why."""
    for finder in sys.meta_path:
        if isinstance(finder, _NotServed):
            finder.reason = reason
