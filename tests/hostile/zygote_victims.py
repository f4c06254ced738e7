"""The victims: a compartment given a secret, and module state made at import.

``zygote_attacks`` supplies the scanners for a neighbour of the same module; nothing
the victims hold may reach another compartment, whichever module it is of.
"""

from __future__ import annotations

import hashlib
import secrets

import zygote_attacks

from compartments import compartment
from compartments.rulesets import SystemIO

#: Made when a process imports this module, so each importer holds its own value.
MODULE_SECRET = secrets.token_hex(16)


@compartment(rules=[SystemIO.nothing()])
class Vault:
    """Holds a key given to its constructor (issue 12's example)."""

    def __init__(self, key: str, extra: list[str] | None = None) -> None:
        self._key = key
        self._extra = extra or []

    def fingerprint(self) -> str:
        return hashlib.sha256(self._key.encode()).hexdigest()[:16]

    def module_secret(self) -> str:
        return MODULE_SECRET


@compartment(rules=[SystemIO.nothing()])
class Neighbour:
    """Another class of the victim's module: forked from the same module zygote."""

    def in_objects(self, needle: str) -> list[str]:
        return zygote_attacks.tokens_in_objects(needle)

    def in_pages(self, needle: str) -> list[str]:
        return zygote_attacks.tokens_in_pages(needle)
