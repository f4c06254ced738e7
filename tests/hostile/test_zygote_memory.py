"""Class 2 of issue 12: nothing a compartment receives reaches memory another inherits.

The victim gets a secret through its constructor: a key of 64 pieces, each ``NEEDLE`` +
32 random hex digits, about as long as a PEM private key. A compartment started later
scans its own memory for the pieces. Before the fix the key rode in the zygote's spawn
request, so every later fork held the decoded strings and the receive buffer they came in.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import zygote_victims
from zygote_attacks import Scavenger
from zygote_support import own_zygote
from zygote_victims import Neighbour, Vault

NEEDLE = "zygote-vault-key:"


def _secret(pieces: int = 64) -> tuple[str, set[str]]:
    tokens = [secrets.token_hex(16) for _ in range(pieces)]
    return "".join(NEEDLE + token for token in tokens), set(tokens)


def _stolen(tokens: set[str], found: list[str]) -> int:
    return len(tokens & set(found))


@pytest.fixture(autouse=True)
def fresh_zygote() -> Iterator[None]:
    """Each attack starts from zygotes that have seen nothing yet."""
    with own_zygote():
        yield


@pytest.mark.timeout(60)
def test_a_constructor_secret_is_not_found_by_a_compartment_of_another_module() -> None:
    key, tokens = _secret()
    with Vault(key=key) as vault:
        assert vault.fingerprint()
        with Scavenger() as scavenger:
            found = scavenger.in_objects(NEEDLE)
    assert _stolen(tokens, found) == 0, f"pieces of the key found: {_stolen(tokens, found)}"


@pytest.mark.timeout(60)
def test_a_constructor_secret_is_not_found_by_a_compartment_of_the_same_module() -> None:
    key, tokens = _secret()
    with Vault(key, extra=key.split(NEEDLE)) as vault:
        assert vault.fingerprint()
        with Neighbour() as neighbour:
            found = neighbour.in_objects(NEEDLE)
    assert _stolen(tokens, found) == 0, f"pieces of the key found: {_stolen(tokens, found)}"


@pytest.mark.timeout(60)
def test_a_constructor_secret_is_not_in_the_raw_heap_pages_of_a_later_compartment() -> None:
    key, tokens = _secret()
    with Vault(key=key) as vault:
        assert vault.fingerprint()
    with Neighbour() as neighbour, Scavenger() as scavenger:
        found = neighbour.in_pages(NEEDLE) + scavenger.in_pages(NEEDLE)
    assert _stolen(tokens, found) == 0, f"pieces of the key found: {_stolen(tokens, found)}"


@pytest.mark.timeout(60)
def test_module_state_of_one_module_is_not_visible_to_a_compartment_of_another() -> None:
    with Vault(key="k") as vault, Scavenger() as scavenger:
        theirs = vault.module_secret()
        seen = scavenger.module_state("zygote_victims", "MODULE_SECRET")
    assert theirs != zygote_victims.MODULE_SECRET  # the zygote's import, not the parent's
    assert seen is None
