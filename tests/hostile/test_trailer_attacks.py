"""Trailing-bytes frames cost the decoder linear work and bounded memory: a compartment
(or a peer) may not announce tiny trailing values by the thousand, and pending trailing
bytes never make each later map cost more (that was trailers x maps, found by the
attack round on the merged fixes)."""

from __future__ import annotations

import resource
import time

import pytest
from trailer_attacks import PeerTrailerForger, TrailerForger, Victim

from compartments import control
from compartments._wire._largebytes import TRAILING_MIN
from compartments.errors import ProtocolError

PROMPTLY = 5.0


def _parent_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.timeout(60)
def test_a_reply_of_tiny_trailing_values_beside_many_maps_is_refused_promptly() -> None:
    with TrailerForger() as forger:
        assert forger.ping() == 1
        started, cpu = time.monotonic(), _parent_cpu()
        with pytest.raises(ProtocolError, match="trailing bytes of 2 bytes"):
            control(forger).with_timeout(20).reply(20_000, 20_000)  # ~260 KB: ~110 s of CPU before
        assert time.monotonic() - started < PROMPTLY
        assert _parent_cpu() - cpu < PROMPTLY


@pytest.mark.timeout(60)
def test_a_reply_of_millions_of_tiny_trailing_values_does_not_grow_the_parent() -> None:
    with TrailerForger() as forger, pytest.raises(ProtocolError):
        control(forger).with_timeout(20).reply(2_000_000, 0)  # 1.8 GiB of parent RSS before


@pytest.mark.timeout(60)
def test_legal_trailing_values_beside_many_maps_decode_in_linear_time() -> None:
    with TrailerForger() as forger:
        cpu = _parent_cpu()
        # Honest-sized trailing values (the smallest an honest sender sends): the old
        # decoder spent trailers x maps set builds on this 50 MiB reply.
        result = control(forger).with_timeout(20).reply(400, 200_000, TRAILING_MIN)
        assert len(result) == 200_400 and result[0] == b"x" * TRAILING_MIN
        assert _parent_cpu() - cpu < PROMPTLY


@pytest.mark.timeout(60)
def test_a_peer_request_of_tiny_trailing_values_does_not_freeze_its_sibling() -> None:
    with Victim() as victim, PeerTrailerForger(victim) as forger:
        forger.send(20_000, 20_000)
        assert control(victim).with_timeout(5).ping() == 1  # the sibling drops that line, lives on
