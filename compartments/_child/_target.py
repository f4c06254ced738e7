"""Importing a compartment's target module by name, in a zygote or a compartment.

Below the zygote and the child's loop, which both import targets; the parent asks it
whether this process is importing one (a compartment started then is refused).
"""

from __future__ import annotations

import importlib
import runpy
import sys
from types import ModuleType

__all__ = [
    "IMPORT_TIME_CALL",
    "MAIN_ALIAS",
    "ImportTimeCall",
    "import_target_module",
    "importing",
    "module_key",
    "set_main_path",
]

MAIN_ALIAS = "__mp_main__"

#: The parent's ``__main__`` file, re-run as :data:`MAIN_ALIAS` for its targets.
_main_path: str | None = None


def set_main_path(path: str | None) -> None:
    """Where the parent's ``__main__`` lives (the zygote hears it from the parent)."""
    global _main_path
    _main_path = path


class ImportTimeCall(RuntimeError):
    """Raised in a zygote by a compartment started while its module is imported."""


def module_key(module: str) -> str:
    """The name a target module's zygote goes by: ``__main__`` under either alias."""
    return "__main__" if module == MAIN_ALIAS else module


#: The target module this zygote is importing right now: no compartment may start then.
_importing: str | None = None

#: What a zygote answers a spawn whose module's import started a compartment; the parent
#: replaces it with a message of its own saying what to do.
IMPORT_TIME_CALL = "a compartment was started while its module was being imported"


def importing() -> str | None:
    """The module this process (a zygote) is importing to fork its compartments, if any:
    a compartment started now would start a zygote that imports it again."""
    return _importing


def import_target_module(module: str) -> ModuleType:
    """The module a target lives in, imported with compartment starts refused."""
    global _importing
    outer, _importing = _importing, module
    try:
        return _import(module)
    finally:
        _importing = outer


def _import(module: str) -> ModuleType:
    """The parent's ``__main__`` is re-run as a module."""
    if module in ("__main__", MAIN_ALIAS):
        loaded = sys.modules.get(MAIN_ALIAS)
        if loaded is None:
            if _main_path is None:
                raise ImportError("the parent's __main__ has no file to import from")
            namespace = runpy.run_path(_main_path, run_name=MAIN_ALIAS)
            loaded = ModuleType(MAIN_ALIAS)
            loaded.__dict__.update(namespace)
            sys.modules[MAIN_ALIAS] = loaded
        return loaded
    return importlib.import_module(module)
