"""Brokering a direct line is part of the call: a target that never takes its end costs
the caller no more than the call's timeout, and is killed like any stuck compartment."""

from __future__ import annotations

import time

import pytest
from broker_attacks import Caller, SilentPeer

from compartments.errors import CallTimeout, CompartmentCrashed

PROMPTLY = 5.0


@pytest.mark.timeout(60)
def test_a_target_that_never_takes_its_line_costs_only_the_calls_timeout() -> None:
    with Caller() as caller, SilentPeer() as peer:
        peer.turn_evil()
        started = time.monotonic()
        with pytest.raises(CallTimeout):
            caller.with_timeout(1).use(peer)  # 30 s (the start timeout) before
        assert time.monotonic() - started < 1 + PROMPTLY


@pytest.mark.timeout(60)
def test_a_target_that_never_takes_its_line_is_killed() -> None:
    with Caller() as caller, SilentPeer() as peer:
        peer.turn_evil()
        with pytest.raises(CallTimeout):
            caller.with_timeout(1).use(peer)
        with pytest.raises(CompartmentCrashed, match="timed out"):
            peer.ping()


@pytest.mark.timeout(60)
def test_the_caller_still_answers_after_a_target_failed_to_take_its_line() -> None:
    with Caller() as caller, SilentPeer() as peer:
        peer.turn_evil()
        with pytest.raises(CallTimeout):
            caller.with_timeout(1).use(peer)
        with SilentPeer() as honest:
            assert caller.with_timeout(5).use(honest) == "got a line"
