"""Timed calls end at their deadline in the kernel (SO_RCVTIMEO on the parent's socket);
calls without a timeout on the same channel still wait as long as they take."""

from __future__ import annotations

import time

import pytest

from compartments import compartment
from compartments.errors import CallTimeout, CompartmentCrashed
from compartments.rulesets import SystemIO

pytestmark = pytest.mark.timeout(60)


@compartment(rules=[SystemIO.nothing()], restart="on-crash")
def spin(seconds: float) -> float:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds


def test_an_untimed_call_after_a_timed_one_waits_past_the_old_timeout() -> None:
    assert spin.with_timeout(0.2)(0.0) == 0.0  # the socket now times receives out at 0.2 s
    assert spin(1.0) == 1.0


def test_a_timed_call_raises_call_timeout_at_its_deadline() -> None:
    spin(0.0)
    started = time.monotonic()
    with pytest.raises(CallTimeout):
        spin.with_timeout(0.3)(10.0)
    assert time.monotonic() - started < 5.0


def test_a_longer_timeout_after_a_shorter_one_is_honoured() -> None:
    with pytest.raises((CallTimeout, CompartmentCrashed)):
        spin.with_timeout(0.1)(5.0)
    assert spin.with_timeout(5.0)(0.5) == 0.5
