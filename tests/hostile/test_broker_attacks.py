"""Brokering a direct line is part of the call: a target that never takes its end costs
the caller no more than the call's timeout, and is killed like any stuck compartment."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from broker_attacks import Caller, SilentPeer

from compartments import control
from compartments.errors import CallTimeout, CompartmentCrashed

PROMPTLY = 5.0


@pytest.fixture
def refused() -> Iterator[tuple[Any, Any, float]]:
    """A caller whose call handing over a silent peer timed out: (caller, peer, seconds)."""
    with Caller() as caller, SilentPeer() as peer:
        peer.turn_evil()
        started = time.monotonic()
        with pytest.raises(CallTimeout):
            control(caller).with_timeout(1).use(peer)  # 30 s (the start timeout) before
        yield caller, peer, time.monotonic() - started


@pytest.mark.timeout(60)
def test_a_target_that_never_takes_its_line_costs_only_the_calls_timeout(
    refused: tuple[Any, Any, float],
) -> None:
    assert refused[2] < 1 + PROMPTLY


@pytest.mark.timeout(60)
def test_a_target_that_never_takes_its_line_is_killed(refused: tuple[Any, Any, float]) -> None:
    with pytest.raises(CompartmentCrashed, match="timed out"):
        refused[1].ping()


@pytest.mark.timeout(60)
def test_the_caller_still_answers_after_a_target_failed_to_take_its_line(
    refused: tuple[Any, Any, float],
) -> None:
    with SilentPeer() as honest:
        assert control(refused[0]).with_timeout(5).use(honest) == "got a line"
