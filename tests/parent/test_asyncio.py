"""``await fn.aio(...)`` holds no thread: the event loop watches the channel, in real
processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import pytest
from calling_workloads import echo, spin, spin_with_timeout

from compartments import compartment, control
from compartments.errors import CallTimeout, CompartmentCrashed
from compartments.rulesets import SystemIO, Threads

pytestmark = pytest.mark.timeout(90)


@compartment(rules=[SystemIO.nothing()])
class Counter:
    def __init__(self) -> None:
        self.count = 0

    def add(self, amount: int) -> int:
        self.count += amount
        return self.count


@compartment(rules=[SystemIO.nothing(), Threads.nothing().allow_sleep().yes_really()])
class Napper:
    def nap(self, seconds: float) -> tuple[float, float]:
        started = time.monotonic()  # CLOCK_MONOTONIC: the parent's clock too
        time.sleep(seconds)
        return started, time.monotonic()


@pytest.mark.timeout(120)
def test_awaits_on_many_compartments_all_run_at_once() -> None:
    """No process-wide cap: 40 awaited naps (a pool of 32 threads ran 32) all start
    before the first ends."""
    nappers = [Napper() for _ in range(40)]
    try:

        async def main() -> list[tuple[float, float]]:
            return await asyncio.gather(*(control(n).aio.nap(3.0) for n in nappers))

        spans = asyncio.run(main())
    finally:
        for napper in nappers:
            control(napper).close()
    assert max(start for start, _ in spans) < min(end for _, end in spans)


def test_a_thousand_concurrent_awaits_complete() -> None:
    async def main() -> list[int]:
        return await asyncio.gather(*(echo.aio(value) for value in range(1000)))

    assert asyncio.run(main()) == list(range(1000))


_COUNT_THREADS = """
import asyncio, threading
from calling_workloads import spin

spin(0.0)  # the child is up: starting one takes a thread, briefly
before = threading.active_count()
seen = []

async def main():
    tasks = [asyncio.ensure_future(spin.aio(0.001)) for _ in range(200)]
    while not all(task.done() for task in tasks):
        seen.append(threading.active_count())
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)

asyncio.run(main())
print(max(seen) - before)
"""


def test_awaiting_calls_hold_no_thread() -> None:
    # A fresh process: this one may hold threads from earlier tests.
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, here])}
    counted = subprocess.run(
        [sys.executable, "-c", _COUNT_THREADS], cwd=here, env=environment,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert counted.returncode == 0, counted.stderr
    assert int(counted.stdout) <= 0


def test_a_cancelled_await_drops_its_late_reply() -> None:
    async def main() -> list[float]:
        slow = asyncio.ensure_future(spin.aio(0.3))
        await asyncio.sleep(0.05)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return [await spin.aio(0.01), await spin.aio(0.02)]

    assert asyncio.run(main()) == [0.01, 0.02]


def test_many_cancelled_awaits_leave_the_channel_usable() -> None:
    async def main() -> int:
        tasks = [asyncio.ensure_future(spin.aio(0.002)) for _ in range(1500)]
        await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return await echo.aio(42)

    assert asyncio.run(main()) == 42
    assert spin(0.0) == 0.0  # every late reply was dropped: the next sync call is in step


def test_an_await_past_its_timeout_raises_call_timeout() -> None:
    async def main() -> None:
        await spin_with_timeout.aio(30)

    started = time.monotonic()
    with pytest.raises(CallTimeout):
        asyncio.run(main())
    assert time.monotonic() - started < 10
    assert spin_with_timeout(0.0) > 0  # replaced after the kill: it answers with its pid


def test_a_compartment_serves_one_event_loop_after_another() -> None:
    async def main(value: int) -> int:
        return await echo.aio(value)

    assert [asyncio.run(main(value)) for value in range(3)] == [0, 1, 2]


def test_awaits_and_threads_call_one_compartment_at_once() -> None:
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for value in range(300):
                assert echo(value) == value
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()

    async def main() -> list[int]:
        results = []
        for start in range(0, 300, 50):
            results += await asyncio.gather(*(echo.aio(v) for v in range(start, start + 50)))
        return results

    assert asyncio.run(main()) == list(range(300))
    for thread in threads:
        thread.join(60)
    assert errors == []


def test_two_event_loops_in_two_threads_share_one_compartment() -> None:
    results: dict[int, list[int]] = {}

    def run_loop(offset: int) -> None:
        async def main() -> list[int]:
            return await asyncio.gather(*(echo.aio(offset + v) for v in range(200)))

        results[offset] = asyncio.run(main())

    threads = [threading.Thread(target=run_loop, args=(offset,)) for offset in (0, 1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {0: list(range(200)), 1000: list(range(1000, 1200))}


def test_class_methods_are_awaitable_through_control() -> None:
    async def main() -> list[int]:
        with control(Counter()) as counter:
            return [await counter.aio.add(2), await counter.aio.add(3)]

    assert asyncio.run(main()) == [2, 5]


@compartment(rules=[SystemIO.nothing()], restart="on-crash")
def crash_or_echo(value: int) -> int:
    if value < 0:
        os._exit(3)
    return value


def test_awaits_after_a_crash_and_restart_are_answered() -> None:
    """The restarted child's socket may reuse the dead one's fd number: the loop must
    watch the new one, not a stale registration."""

    async def main() -> list[object]:
        assert await crash_or_echo.aio(1) == 1
        doomed = [asyncio.ensure_future(crash_or_echo.aio(v)) for v in (-1, 2)]
        outcomes = await asyncio.gather(*doomed, return_exceptions=True)
        after = await asyncio.wait_for(
            asyncio.gather(*(crash_or_echo.aio(v) for v in range(50))), timeout=30
        )
        return [*outcomes, after]

    crashed, behind, after = asyncio.run(main())
    assert isinstance(crashed, CompartmentCrashed)
    assert isinstance(behind, CompartmentCrashed)
    assert after == list(range(50))


def test_closing_a_compartment_fails_its_pending_awaits() -> None:
    spin(0.0)

    async def main() -> BaseException | None:
        pending = asyncio.ensure_future(spin.aio(2.0))
        await asyncio.sleep(0.2)
        await asyncio.get_running_loop().run_in_executor(None, control(spin).close)
        try:
            await asyncio.wait_for(pending, timeout=20)
        except BaseException as exc:
            return exc
        return None

    outcome = asyncio.run(main())
    assert isinstance(outcome, (CompartmentCrashed, ConnectionError)), outcome
