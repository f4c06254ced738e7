"""Attacks on the calling side (issue 14): Futures that settle themselves and awaits an
event loop reads for. Whatever the compartment sends, the loop keeps running, every
Future and await settles by its deadline with its own reply, and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from calls_attacks import Hangup

from compartments import control
from compartments.errors import CompartmentCrashed

T = TypeVar("T")

#: The longest the event loop may go without running a ready task: far above a tick on
#: a loaded 2-core machine, far below the second a child is given to exit.
LOOP_STALL = 0.5


async def _longest_stall(work: Awaitable[T]) -> tuple[T | BaseException, float]:
    """Run ``work`` beside a ticker on the same loop; its outcome and the longest gap
    between two ticks."""
    gaps = [0.0]
    done = False

    async def ticker() -> None:
        last = time.monotonic()
        while not done:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.02)
    outcome: T | BaseException
    try:
        outcome = await work
    except Exception as exc:
        outcome = exc
    await asyncio.sleep(0.05)
    done = True
    await ticking
    return outcome, max(gaps)


def _stall_of(method: Callable[[Any], Awaitable[Any]], count: int = 1) -> tuple[list[Any], float]:
    """Each of ``count`` Hangups, awaited on one loop through ``method``."""
    hangups = [Hangup() for _ in range(count)]
    try:

        async def main() -> tuple[Any, float]:
            await asyncio.gather(*(control(h).aio.ping() for h in hangups))
            return await _longest_stall(
                asyncio.gather(*(method(h) for h in hangups), return_exceptions=True)
            )

        outcomes, stall = asyncio.run(main())
    finally:
        for hangup in hangups:
            control(hangup).close()
    return list(outcomes), stall


# -- the end of the stream, read by an event loop -------------------------------------------


@pytest.mark.timeout(60)
def test_a_child_that_closes_its_channel_and_lives_does_not_stall_the_loop() -> None:
    outcomes, stall = _stall_of(lambda h: control(h).aio.close_channel_and_live())
    assert isinstance(outcomes[0], CompartmentCrashed)
    assert stall < LOOP_STALL


@pytest.mark.timeout(60)
def test_half_a_frame_then_the_end_of_the_stream_does_not_stall_the_loop() -> None:
    outcomes, stall = _stall_of(lambda h: control(h).aio.half_a_frame_then_close_and_live())
    assert isinstance(outcomes[0], CompartmentCrashed)
    assert stall < LOOP_STALL


@pytest.mark.timeout(60)
def test_several_children_hanging_up_at_once_do_not_stall_the_loop() -> None:
    outcomes, stall = _stall_of(lambda h: control(h).aio.close_channel_and_live(), count=3)
    assert all(isinstance(outcome, CompartmentCrashed) for outcome in outcomes)
    assert stall < LOOP_STALL
