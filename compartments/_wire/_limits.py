"""The wire's limits on what a hostile peer may make the receiver do, shared by the
encoder, the sender's own key checks and the decoder (below all three).
"""

from __future__ import annotations

import sys

__all__ = ["MAX_NESTING", "MAX_PREDICTABLE_KEY_COST", "PREDICTABLE_KEY_TYPES"]

#: Map keys whose hash a compartment can predict: CPython hashes ints and floats without
#: a secret, so a sender can pick keys that share probe paths (``i << 17`` for every
#: ``i`` will do), and building a dict of ``m`` of them costs up to ``m**2``. str and
#: bytes hashes are keyed (SipHash) with a secret a compartment does not share, unless
#: randomization is off. Tuple keys hash their items without a key, so they are refused
#: outright from compartments and peers.
PREDICTABLE_KEY_TYPES: frozenset[type] = frozenset(
    {int, float} | (set() if sys.flags.hash_randomization else {str, bytes})
)
#: What a frame from a compartment or peer may cost in such keys, counted as ``m**2`` for
#: each map of ``m`` of them: one map of 4096 int keys, or many smaller ones.
MAX_PREDICTABLE_KEY_COST = 4096**2
#: msgpack's Packer refuses deeper nesting than this.
MAX_NESTING = 511
