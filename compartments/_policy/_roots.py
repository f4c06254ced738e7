"""The interpreter's import roots: the directories a sealed compartment may still read.

A sealed compartment keeps working Python only if it can read what the interpreter
reads lazily: modules imported inside functions, codecs, package data, dist-info. All of
that lives under a few directories that belong to the interpreter and the environment,
not to the application: the stdlib (with lib-dynload) and the environment's
site-packages. The application's own directory, the working directory and every other
``sys.path`` entry are not roots, so the data and secrets beside the code (a ``.env``, a
database, a config file) stay unreadable.

The parent computes the roots it serves for itself (``_broker``); the child computes
the same list only to know which ``sys.path`` entries it can still import from.
"""

from __future__ import annotations

import functools
import os
import site
import sys
import sysconfig

__all__ = [
    "import_roots",
    "lexically_under",
    "module_for",
    "root_ancestors",
    "root_of",
    "under_roots",
    "warm",
]

_SCHEME_KEYS = ("stdlib", "platstdlib", "purelib", "platlib")


def _candidates() -> list[str]:
    found = sysconfig.get_paths()
    paths = [found[key] for key in _SCHEME_KEYS if key in found]
    # A venv's stdlib is its base interpreter's; that interpreter's own site-packages
    # count only when on sys.path (system-site-packages).
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    paths += [base[key] for key in ("stdlib", "platstdlib") if key in base]
    in_path = {os.path.realpath(p) for p in sys.path if p}
    paths += [
        base[key] for key in ("purelib", "platlib")
        if key in base and os.path.realpath(base[key]) in in_path
    ]  # fmt: skip
    # lib-dynload sits under the *base* platstdlib (a venv's own platstdlib has none),
    # and an interpreter may keep it elsewhere: where the stdlib's C modules really are.
    paths += [p for p in sys.path if os.path.basename(p.rstrip("/")) == "lib-dynload"]
    with_site = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        with_site.append(site.getusersitepackages())
    paths += [p for p in with_site if os.path.realpath(p) in in_path]
    return paths


@functools.lru_cache(maxsize=1)
def import_roots() -> tuple[str, ...]:
    """Real paths of the existing import roots, deepest first, without duplicates."""
    roots = {os.path.realpath(p) for p in _candidates() if p and os.path.isabs(p)}
    existing = [r for r in roots if os.path.isdir(r) and r != "/"]
    return tuple(sorted(existing, key=lambda r: (-r.count("/"), r)))


@functools.lru_cache(maxsize=1)
def root_ancestors() -> frozenset[str]:
    """The directories above the roots: their metadata (not their listing) is public,
    since ``os.path.realpath`` and ``pathlib.Path.resolve`` lstat every component."""
    found: set[str] = set()
    for root in import_roots():
        parent = os.path.dirname(root)
        while parent not in found:
            found.add(parent)
            if parent == "/":
                break
            parent = os.path.dirname(parent)
    return frozenset(found)


@functools.lru_cache(maxsize=1)
def _excluded() -> tuple[str, ...]:
    """site-packages directories inside a root that are not roots themselves: the base
    interpreter's own, inside its stdlib, when a venv does not use it."""
    found = []
    for root in import_roots():
        for name in ("site-packages", "dist-packages"):
            inner = os.path.join(root, name)
            if inner not in import_roots() and os.path.isdir(inner):
                found.append(inner)
    return tuple(found)


def root_of(path: str) -> str | None:
    """The deepest root that lexically contains ``path`` (absolute and normalized)."""
    for excluded in _excluded():
        if path == excluded or path.startswith(excluded + "/"):
            return None
    for root in import_roots():
        if path == root or path.startswith(root + "/"):
            return root
    return None


@functools.lru_cache(maxsize=256)
def under_roots(path: str) -> bool:
    """Whether ``path`` (any spelling) lies under a root, by its real path (touches the
    filesystem: before the seal only)."""
    if not path:
        return False
    return root_of(os.path.realpath(os.path.abspath(path))) is not None


@functools.lru_cache(maxsize=1)
def _spellings() -> tuple[str, ...]:
    """The roots as resolved, and as the interpreter spells them (a venv's lib64 link)."""
    spelled = {os.path.normpath(p) for p in (*_candidates(), *sys.path) if p and os.path.isabs(p)}
    spelled = {p for p in spelled if under_roots(p)}
    return tuple(sorted(spelled | set(import_roots()), key=lambda r: -len(r)))


def lexically_under(path: str) -> bool:
    """Whether ``path`` lies under a root as spelled, without touching the filesystem
    (a sealed process cannot lstat its way along a path)."""
    path = os.path.normpath(path)
    return any(path == r or path.startswith(r + "/") for r in _spellings())


def warm() -> None:
    """Compute everything once before forking, so a compartment pays nothing for it."""
    _spellings()
    _excluded()
    root_ancestors()
    for entry in sys.path:
        if isinstance(entry, str):
            under_roots(entry)


_MODULE_SUFFIXES = (".py", ".pyc", ".so", ".pyd")


def module_for(path: str) -> str | None:
    """The module a read of ``path`` (under a root) would import, if it is a module file
    or a package directory: ``.../PIL/__pycache__/PngImagePlugin.cpython-311.pyc`` ->
    ``PIL.PngImagePlugin``. Lexical only."""
    path = os.path.normpath(path)
    entries = sorted(
        (os.path.normpath(p) for p in sys.path if isinstance(p, str) and os.path.isabs(p)),
        key=len, reverse=True,
    )  # fmt: skip
    entry = next((e for e in entries if path.startswith(e + "/")), None)
    if entry is None:
        return None
    parts = [p for p in path[len(entry) + 1 :].split("/") if p != "__pycache__"]
    last = parts[-1]
    if "." in last:
        if not last.endswith(_MODULE_SUFFIXES):
            return None
        parts[-1] = last.split(".", 1)[0]
    if parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts)
