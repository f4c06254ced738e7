"""What a process imports before it seals: once sealed it may not read a module's file.

Below the SafetyContext (which preloads when it is applied) and the child's sealed
imports (which preload every codec when the parent serves no reads).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

__all__ = ["COMMON_CODECS", "import_preloads", "preload_codecs"]

#: Imported before a SafetyContext is applied, unless ``preload(codecs="none")``: once
#: sealed, a thread cannot read the file of a codec it looks up lazily, and these are
#: the ones the stdlib itself looks up (idna for getaddrinfo and socket.create_connection,
#: cp437 for zipfile, the escapes for repr-like parsers). About 10 ms, once.
COMMON_CODECS = (
    "encodings.idna", "encodings.punycode", "encodings.ascii", "encodings.latin_1",
    "encodings.utf_8_sig", "encodings.utf_16", "encodings.utf_16_le", "encodings.utf_16_be",
    "encodings.utf_32", "encodings.utf_32_le", "encodings.utf_32_be", "encodings.cp437",
    "encodings.cp1252", "encodings.unicode_escape", "encodings.raw_unicode_escape",
)  # fmt: skip



def preload_codecs() -> None:
    """Import every stdlib codec (about 150 ms, once per zygote)."""
    import encodings
    import pkgutil

    for module in pkgutil.iter_modules(encodings.__path__):
        try:
            importlib.import_module(f"encodings.{module.name}")
        except ImportError:  # mbcs and oem exist on Windows only
            continue


def import_preloads(codecs: str, modules: Iterable[str]) -> None:
    """Import the codecs named by ``codecs`` ("common", "all" or "none"), then ``modules``."""
    if codecs == "all":
        preload_codecs()
    for module in [*(COMMON_CODECS if codecs == "common" else ()), *modules]:
        importlib.import_module(module)
