"""Keys the parent refuses from a child, refused before they are sent: a compartment or
peer that sends its own frames checks them as the parent will, so an honest call never
drops the line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ._limits import MAX_NESTING, MAX_PREDICTABLE_KEY_COST, PREDICTABLE_KEY_TYPES

__all__ = ["LEAVES", "check_keys_from_compartment"]

LEAVES = frozenset({type(None), bool, int, float, str, bytes})
_SAFE_KEYS = frozenset({type(None), bool, str, bytes}) - PREDICTABLE_KEY_TYPES
_PREDICTABLE = tuple(PREDICTABLE_KEY_TYPES)


class _KeyBudget:
    __slots__ = ("cost",)

    def __init__(self) -> None:
        self.cost = 0


def check_keys_from_compartment(value: object, label: str, root: str) -> None:
    """Raise what the parent's decoder would refuse in ``value``, before it is sent.

    The parent decodes a compartment's frames in linear time only (see ``_decoder``):
    it refuses tuple keys and more predictable-hash keys than one frame's budget. A
    compartment that sends them gets this TypeError/ValueError as its call's error
    instead of a channel killed for breaking the protocol.
    """
    _walk_keys(value, label, root, _KeyBudget(), 0)


def _walk_keys(value: object, label: str, path: str, budget: _KeyBudget, depth: int) -> None:
    if depth > MAX_NESTING:
        return  # the encoder refuses it, and names it
    if isinstance(value, dict):
        if not _SAFE_KEYS.issuperset(map(type, value)):  # at C speed, like the others
            _charge_keys(value, label, path, budget)
        items: Iterable[Any] = value.values()
        if LEAVES.issuperset(map(type, items)):
            return
        for key, item in value.items():
            if type(item) not in LEAVES:
                _walk_keys(item, label, _key_path(path, key), budget, depth + 1)
    elif isinstance(value, (list, tuple)):
        if LEAVES.issuperset(map(type, value)):
            return  # the common case: nothing below holds a dict
        for index, item in enumerate(value):
            if type(item) not in LEAVES:
                _walk_keys(item, label, f"{path}[{index}]", budget, depth + 1)


def _charge_keys(value: dict[Any, Any], label: str, path: str, budget: _KeyBudget) -> None:
    predictable = 0
    for key in value:
        if type(key) in PREDICTABLE_KEY_TYPES or (
            type(key) is not bool and isinstance(key, _PREDICTABLE)
        ):
            predictable += 1
        elif isinstance(key, tuple):
            raise TypeError(
                f"{label} holds, at `{path}`, a dict key of type tuple ({_short_repr(key)}), "
                "which a compartment may not send: tuple keys hash without a secret key, so "
                "the parent refuses them (a frame of them could cost it quadratic time); "
                "use str keys or a list of pairs"
            )
    budget.cost += predictable * predictable
    if budget.cost > MAX_PREDICTABLE_KEY_COST:
        raise ValueError(
            f"{label} holds too many int/float dict keys (at `{path}`, {predictable} of "
            f"them): a frame from a compartment may hold one dict of "
            f"{math.isqrt(MAX_PREDICTABLE_KEY_COST)} such keys or many smaller ones, as "
            "their hashes are predictable and building the dicts could cost the parent "
            "quadratic time; use str keys or a list of pairs"
        )


def _key_path(path: str, key: object) -> str:
    return f"{path}[{_short_repr(key)}]"


def _short_repr(value: object) -> str:
    if isinstance(value, (str, bytes, int, float, bool, type(None), tuple)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"<{type(value).__name__}>"
