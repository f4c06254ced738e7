"""Futures from ``fn.submit()`` keep the concurrent.futures contract, in real processes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time

import pytest
from calling_workloads import echo, spin, spin_with_timeout

from compartments import compartment
from compartments.errors import CallTimeout, CompartmentCrashed
from compartments.rulesets import SystemIO

pytestmark = pytest.mark.timeout(60)


@compartment(rules=[SystemIO.nothing()], workers=2)
def echo_in_workers(value: int) -> int:
    return value


@compartment(rules=[SystemIO.nothing()], fresh=True)
def echo_fresh(value: int) -> int:
    return value


@compartment(rules=[SystemIO.nothing()])
def exit_now() -> None:
    os._exit(3)


def _wait_until_done(future: concurrent.futures.Future[object], limit: float = 10.0) -> bool:
    """Poll ``done()`` only: nobody calls result(), so the Future must settle by itself."""
    end = time.monotonic() + limit
    while not future.done():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_future_settles_without_anyone_waiting_on_it() -> None:
    future = echo.submit(7)
    assert _wait_until_done(future)
    assert future.result(0) == 7


def test_done_callback_may_read_the_result() -> None:
    results: list[int] = []
    called = threading.Event()

    def callback(future: concurrent.futures.Future[int]) -> None:
        results.append(future.result())
        called.set()

    echo.submit(5).add_done_callback(callback)
    assert called.wait(10)
    assert results == [5]


def test_done_callback_may_call_the_same_compartment() -> None:
    results: list[int] = []
    called = threading.Event()

    def callback(future: concurrent.futures.Future[int]) -> None:
        results.append(echo(future.result() + 1))
        called.set()

    echo.submit(1).add_done_callback(callback)
    assert called.wait(10)
    assert results == [2]


def test_wait_reports_every_future_done() -> None:
    futures = [echo.submit(value) for value in range(3)]
    done, not_done = concurrent.futures.wait(futures, timeout=10)
    assert len(done) == 3
    assert not not_done


def test_as_completed_yields_every_future() -> None:
    futures = [echo.submit(value) for value in range(5)]
    values = [future.result() for future in concurrent.futures.as_completed(futures, timeout=10)]
    assert sorted(values) == [0, 1, 2, 3, 4]


def test_wrap_future_resolves_in_an_event_loop() -> None:
    async def main() -> int:
        return await asyncio.wrap_future(echo.submit(9))

    assert asyncio.run(main()) == 9


def test_cancel_of_a_sent_call_returns_false_and_the_call_completes() -> None:
    future = spin.submit(0.2)
    assert future.cancel() is False
    assert future.running() or future.done()
    assert future.result(10) == 0.2


@pytest.mark.parametrize(
    "function", [echo, echo_in_workers, echo_fresh], ids=["one", "workers", "fresh"]
)
def test_every_mode_returns_a_plain_future_that_settles_by_itself(function: object) -> None:
    future = function.submit(4)  # type: ignore[attr-defined]
    assert type(future) is concurrent.futures.Future
    assert _wait_until_done(future)
    assert future.result(0) == 4


def test_a_future_past_its_timeout_fails_with_call_timeout_and_the_child_is_replaced() -> None:
    first_pid = spin_with_timeout(0)
    future = spin_with_timeout.submit(30)
    assert isinstance(future.exception(10), CallTimeout)
    assert spin_with_timeout(0) != first_pid


def test_a_crash_fails_every_pending_future() -> None:
    echo(0)  # the child is up
    doomed = exit_now.submit()
    assert isinstance(doomed.exception(10), CompartmentCrashed)


def test_a_crash_fails_futures_queued_behind_the_crashing_call() -> None:
    exit_now.close()
    crash = exit_now.submit()
    behind = [exit_now.submit() for _ in range(3)]
    assert isinstance(crash.exception(10), CompartmentCrashed)
    for future in behind:
        assert isinstance(future.exception(10), CompartmentCrashed)


def test_many_futures_in_flight_settle_in_order() -> None:
    futures = [echo.submit(value) for value in range(500)]
    assert [future.result(30) for future in futures] == list(range(500))


def test_submit_to_a_crashed_compartment_returns_a_failed_future() -> None:
    exit_now.close()
    assert isinstance(exit_now.submit().exception(10), CompartmentCrashed)
    late = exit_now.submit()  # restart="never": the compartment stays down
    assert isinstance(late.exception(10), CompartmentCrashed)


def test_an_argument_that_cannot_cross_raises_at_submit() -> None:
    with pytest.raises(TypeError, match="value"):
        echo.submit(object())  # type: ignore[arg-type]


def test_the_error_of_a_dead_compartment_does_not_grow_with_each_call() -> None:
    """Every later call raises the one recorded failure: its traceback must not keep the
    frames of every earlier raise (memory, and tracebacks too deep to print)."""
    import traceback

    exit_now.close()
    with pytest.raises(CompartmentCrashed):
        exit_now()
    depths = []
    for _ in range(300):
        try:
            exit_now()
        except CompartmentCrashed as exc:
            depths.append(len(traceback.extract_tb(exc.__traceback__)))
    assert max(depths) < 30, depths[-1]
