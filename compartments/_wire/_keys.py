"""Map keys from a peer, checked so that building its dicts costs linear time.

CPython hashes tuples, ints and floats without a secret, so a sender can make them
collide: from any stream but the parent's, array keys are refused and int/float keys
are charged per frame. A mixin of ``FrameDecoder`` (it is the unpacker's
``object_pairs_hook``, on the hot path).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..errors import ProtocolError
from ._extensions import Ext
from ._limits import MAX_PREDICTABLE_KEY_COST, PREDICTABLE_KEY_TYPES

__all__ = ["KEY_TYPES", "KeyChecks"]

KEY_TYPES = frozenset({str, bytes, int, bool, float, type(None)})
_ARRAY_KEYS_WHY = (
    " (tuple keys hash without a secret key, so a frame of them can cost quadratic time)"
)
_KEY_BUDGET_TEXT = f"a map of {math.isqrt(MAX_PREDICTABLE_KEY_COST)} or many smaller ones"


class KeyChecks:
    """The maps of one frame, built only if that stays linear."""

    _from_parent: bool
    #: Worst-case dict work on keys with predictable hashes in the frame being parsed.
    _key_cost: int
    _fail: Callable[[str], ProtocolError]

    def _checked_map(self, pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        """The dict of one map, built only if that costs linear time.

        From an untrusted stream, array keys are refused and keys whose hash the sender
        can predict are charged ``m**2`` per map of ``m`` of them, against a per-frame
        budget (see ``_limits.PREDICTABLE_KEY_TYPES``); the trusted parent may send any.
        msgpack's pure-Python build before 1.2.4 hands the hook a generator: consumed
        once by the checks below, it would leave every map empty.
        """
        if type(pairs) is not list:
            pairs = list(pairs)
        if self._from_parent:
            for key, _ in pairs:
                if type(key) not in KEY_TYPES:
                    pairs = [(self._hashable(k), v) for k, v in pairs]
                    break
        else:
            self._charge_keys(pairs)
        return dict(pairs)  # an extension as a key is an _Ext: refused by its type above

    def _charge_keys(self, pairs: list[tuple[Any, Any]]) -> None:
        predictable = 0
        for key, _ in pairs:
            kind = type(key)
            if kind in PREDICTABLE_KEY_TYPES:
                predictable += 1
            elif kind not in KEY_TYPES:
                if kind is list:
                    raise self._fail(f"an array as a map key is not allowed{_ARRAY_KEYS_WHY}")
                raise self._fail(_bad_key(kind))
        if predictable:
            self._key_cost += predictable * predictable
            if self._key_cost > MAX_PREDICTABLE_KEY_COST:
                raise self._fail(
                    f"int/float map keys over the frame's budget ({_KEY_BUDGET_TEXT}): "
                    "their hashes are predictable, so building the dicts could cost "
                    "quadratic time"
                )

    def _hashable(self, key: Any) -> Any:
        """A key Python can hash: an array (a tuple when it was sent) becomes a tuple."""
        if type(key) in KEY_TYPES:
            return key
        if type(key) is list:
            return tuple([self._hashable(item) for item in key])
        raise self._fail(_bad_key(type(key)))


def _bad_key(kind: type) -> str:
    if kind is Ext:  # hashing unfilled trailing bytes would cache a hash of garbage
        return "an extension (trailing bytes, an Fd or a PeerRef) used as a map key"
    return f"map key of type {kind.__name__} is not allowed"
