"""Attacks on the calling side (issue 14): Futures that settle themselves and awaits an
event loop reads for. Whatever the compartment sends, the loop keeps running, every
Future and await settles by its deadline with its own reply, and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import msgpack
import pytest
from calls_attacks import (
    Busy,
    Flooder,
    Hangup,
    Hog,
    crashes_on_multiples_of_seven,
    nap,
    nap_then_measure,
    never_answers,
    takes_a_peer,
)

from compartments import control
from compartments.errors import CallTimeout, CompartmentCrashed, ProtocolError

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


# -- done-callbacks: user code, run by whoever read the reply ------------------------------


@pytest.fixture
def blocking_callback() -> Iterator[Callable[[object], None]]:
    """A done-callback that blocks until the test ends."""
    release = threading.Event()
    yield lambda _: release.wait(30)
    release.set()
    control(nap).close()


@pytest.mark.timeout(60)
def test_a_blocking_done_callback_does_not_hold_up_the_next_futures_reply(
    blocking_callback: Callable[[object], None],
) -> None:
    nap(0)
    first = nap.submit(0.05)
    first.add_done_callback(blocking_callback)
    second = nap.submit(0.1)
    assert second.result(timeout=5) == 0.1


@pytest.mark.timeout(60)
def test_a_blocking_done_callback_does_not_hold_up_the_next_futures_timeout(
    blocking_callback: Callable[[object], None],
) -> None:
    patient = nap.with_timeout(1.0)
    nap(0)
    patient.submit(0.05).add_done_callback(blocking_callback)
    started = time.monotonic()
    late = patient.submit(10)
    assert isinstance(late.exception(timeout=10), CallTimeout)
    assert time.monotonic() - started < 3.0


@pytest.mark.timeout(60)
def test_a_done_callback_may_wait_for_a_later_future_of_the_same_compartment() -> None:
    """The later Future's reply is read while the callback waits (before: it was not, and
    the Future was failed as timed out once the callback gave up)."""
    patient = nap.with_timeout(2.0)
    nap(0)
    seen: list[object] = []
    first = patient.submit(0.05)
    later = patient.submit(0.1)
    first.add_done_callback(lambda _: seen.append(later.result(timeout=5)))
    try:
        assert later.result(timeout=10) == 0.1
        concurrent.futures.wait([first], timeout=10)
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [0.1]
    finally:
        control(nap).close()


# -- a compartment that never answers ---------------------------------------------------------


def _settlers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("compartments-settle-")]


@pytest.mark.timeout(60)
def test_closing_a_compartment_that_never_answers_fails_its_futures_and_ends_its_settler() -> None:
    """No timeout, three Futures outstanding: close() is what frees them."""
    futures = [never_answers.submit(value) for value in range(3)]
    time.sleep(0.2)  # the settler is blocked reading
    assert _settlers()
    control(never_answers).close()
    for future in futures:
        assert isinstance(future.exception(timeout=10), CompartmentCrashed)
    deadline = time.monotonic() + 5
    while _settlers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _settlers()


# -- a compartment that stops reading: sends must not block the loop -------------------------

#: Enough awaits of this size to fill the channel's buffers and the child's own backlog.
FLOOD_AWAITS = 40
FLOOD_ARGUMENT = "x" * 50_000


def _flood_on_a_loop(fn: Any, close_after: float | None = None) -> tuple[set[type], float]:
    """FLOOD_AWAITS awaits of ``fn`` on one loop beside a ticker; with ``close_after``, a
    thread closes the compartment then. The outcomes' types and the longest stall."""

    async def main() -> tuple[list[Any], float]:
        if close_after is not None:
            threading.Timer(close_after, control(fn).close).start()
        return await _longest_stall(
            asyncio.gather(
                *(fn.aio(FLOOD_ARGUMENT) for _ in range(FLOOD_AWAITS)), return_exceptions=True
            )
        )

    try:
        outcomes, stall = asyncio.run(main())
    finally:
        control(fn).close()
    return {type(outcome) for outcome in outcomes}, stall


@pytest.mark.timeout(60)
def test_awaits_to_a_compartment_that_stops_reading_do_not_stall_the_loop() -> None:
    kinds, stall = _flood_on_a_loop(never_answers.with_timeout(2.0))
    assert kinds <= {CallTimeout, CompartmentCrashed}
    assert stall < LOOP_STALL


@pytest.mark.timeout(60)
def test_untimed_awaits_to_a_compartment_that_stops_reading_leave_the_loop_running() -> None:
    """With no timeout, the loop was blocked in send until another thread closed it."""
    kinds, stall = _flood_on_a_loop(never_answers, close_after=1.0)
    assert kinds <= {CompartmentCrashed}
    assert stall < LOOP_STALL


@pytest.mark.timeout(60)
def test_an_await_behind_a_threads_blocked_send_does_not_stall_the_loop() -> None:
    """A thread's large call is stuck mid-frame (the child stopped reading); an await must
    wait for its turn to send without holding up the loop."""
    fn = never_answers.with_timeout(3.0)
    stuck = threading.Thread(target=fn.submit, args=("y" * 4_000_000,), daemon=True)

    async def main() -> tuple[Any, float]:
        fn.submit(0)  # the child takes it and reads no more
        await asyncio.sleep(0.2)
        stuck.start()
        await asyncio.sleep(0.3)  # its frame fills the buffers and waits for room
        return await _longest_stall(fn.aio(1))

    try:
        outcome, stall = asyncio.run(main())
    finally:
        control(never_answers).close()
        stuck.join(10)
    assert isinstance(outcome, (CallTimeout, CompartmentCrashed))
    assert stall < LOOP_STALL


# -- an await whose loop is gone ------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _abandon_a_loop(awaitable: Callable[[], Awaitable[Any]]) -> None:
    """Start an await on a new loop, then close the loop with the await still pending."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(awaitable())  # type: ignore[arg-type]
    loop.run_until_complete(asyncio.sleep(0.05))
    task._log_destroy_pending = False  # type: ignore[attr-defined]
    loop.close()


def _in_a_thread(action: Callable[[], object]) -> None:
    def run() -> None:
        with contextlib.suppress(Exception):
            action()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)


@pytest.mark.timeout(60)
def test_late_replies_for_awaits_on_closed_loops_leave_no_fd_behind() -> None:
    """Another thread reads each reply after its loop closed (before: one fd a loop)."""
    try:
        nap(0)
        before = _open_fds()
        for _ in range(5):
            _abandon_a_loop(lambda: nap.aio(0.2))
            _in_a_thread(lambda: nap(0))  # reads the late reply
        assert _open_fds() <= before
    finally:
        control(nap).close()


@pytest.mark.timeout(60)
def test_a_failure_after_an_awaits_loop_closed_leaves_no_fd_behind() -> None:
    """The await's frame is still being sent when its loop closes; closing the
    compartment then fails the send in its thread, which releases the loop's watch."""
    control(never_answers).close()
    nap(0)  # this module's zygote is up
    before = _open_fds()  # never_answers is not running: its own fds are not counted
    never_answers.submit(0).cancel()  # the child takes it and reads no more
    time.sleep(0.2)
    for _ in range(3):
        _abandon_a_loop(lambda: never_answers.aio("z" * 2_000_000))
    control(never_answers).close()
    deadline = time.monotonic() + 10
    while _open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert _open_fds() <= before
    finally:
        control(nap).close()


# -- what the loop reads: floods and huge announcements ------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.skipif(
    msgpack.Unpacker.__module__.endswith("fallback"),
    reason="msgpack's pure-Python build decodes a receive ~50x slower: one 256 KiB receive "
    "of records then takes about the whole stall budget by itself",
)
def test_a_notification_flood_before_a_reply_leaves_the_loop_running() -> None:
    """30 MiB of log records ahead of the reply: read a receive at a time, between ticks."""
    with Flooder() as flooder:

        async def main() -> tuple[Any, float]:
            await control(flooder).aio.ping()
            return await _longest_stall(control(flooder).aio.log_flood(30))

        outcome, stall = asyncio.run(main())
    assert outcome == 30
    assert stall < LOOP_STALL


@pytest.mark.timeout(60)
def test_a_reply_announcing_60_mib_then_silence_times_out_on_time() -> None:
    with Flooder() as flooder:
        patient = control(control(flooder).with_timeout(1.0))

        async def main() -> tuple[Any, float]:
            await patient.aio.ping()
            started = time.monotonic()
            outcome, stall = await _longest_stall(patient.aio.huge_trailing_header_then_silence())
            return (outcome, time.monotonic() - started), stall

        (outcome, took), stall = asyncio.run(main())
    assert isinstance(outcome, CallTimeout)
    assert took < 3.0
    assert stall < LOOP_STALL


# -- each Future keeps its own timeout --------------------------------------------------------


def _expiry_of(first: Any, second: Any) -> tuple[BaseException | None, float]:
    """Submit ``first`` then ``second`` to never_answers; how and when ``second`` ends."""
    try:
        first.submit(0)
        started = time.monotonic()
        late = second.submit(1)
        error = late.exception(timeout=15)
        return error, time.monotonic() - started
    finally:
        control(never_answers).close()


@pytest.mark.timeout(60)
def test_a_timed_future_behind_an_untimed_one_still_times_out() -> None:
    """Before: the settler waited for the untimed call alone, and this one never ended."""
    error, took = _expiry_of(never_answers, never_answers.with_timeout(1.0))
    assert isinstance(error, CallTimeout)
    assert took < 4.0


@pytest.mark.timeout(60)
def test_a_short_timeout_behind_a_long_one_ends_at_its_own_deadline() -> None:
    error, took = _expiry_of(never_answers.with_timeout(20.0), never_answers.with_timeout(1.0))
    assert isinstance(error, CallTimeout)
    assert took < 4.0


@pytest.mark.timeout(60)
def test_a_futures_call_timeout_names_the_calls_own_timeout() -> None:
    """Before: it named what was left of it when the settler began to wait (0.99...s)."""
    try:
        error = never_answers.with_timeout(1.0).submit(0).exception(timeout=15)
    finally:
        control(never_answers).close()
    assert isinstance(error, CallTimeout)
    assert error.timeout == 1.0
    assert "within 1s" in str(error)


# -- a big child that breaks the protocol, read by the loop ----------------------------------


def _stall_of_hog(method: str, megabytes: int = 2048) -> tuple[Any, float]:
    with Hog() as hog:
        patient = control(control(hog).with_timeout(20.0))

        async def main() -> tuple[Any, float]:
            await patient.aio.ping()
            return await _longest_stall(getattr(patient.aio, method)(megabytes))

        return asyncio.run(main())


@pytest.mark.timeout(90)
def test_a_big_child_answering_a_msgid_never_sent_does_not_stall_the_loop() -> None:
    """The protocol error kills it, and the kernel takes a while to tear 2 GiB down."""
    outcome, stall = _stall_of_hog("fill_then_answer_a_msgid_never_sent")
    assert isinstance(outcome, ProtocolError)
    assert stall < 0.2


@pytest.mark.timeout(90)
def test_a_big_child_sending_an_urgent_byte_does_not_stall_the_loop() -> None:
    outcome, stall = _stall_of_hog("fill_then_send_an_urgent_byte")
    assert isinstance(outcome, ProtocolError)
    assert stall < 0.2


# -- a timeout's kill, seen from the loop ------------------------------------------------------


def _stall_killing_hogs(count: int, megabytes: int) -> tuple[list[Any], float]:
    """``count`` Hogs fill ``megabytes`` each and time out together on one loop."""
    hogs = [Hog() for _ in range(count)]
    try:
        patient = [control(control(hog).with_timeout(8.0)) for hog in hogs]

        async def main() -> tuple[Any, float]:
            await asyncio.gather(*(p.aio.ping() for p in patient))
            return await _longest_stall(
                asyncio.gather(
                    *(p.aio.fill_then_hang(megabytes) for p in patient), return_exceptions=True
                )
            )

        outcomes, stall = asyncio.run(main())
    finally:
        for hog in hogs:
            control(hog).close()
    return list(outcomes), stall


@pytest.mark.timeout(90)
def test_killing_a_big_child_after_an_awaits_timeout_does_not_stall_the_loop() -> None:
    """The kernel takes a while to tear down 2 GiB; the loop must not wait for it (it
    did, 0.36 s for 1 GiB, 0.42 s for 3 GiB: the loop is held for the whole exit)."""
    outcomes, stall = _stall_killing_hogs(1, 2048)
    assert isinstance(outcomes[0], CallTimeout)
    assert stall < 0.2


@pytest.mark.timeout(90)
def test_killing_several_big_children_after_their_timeouts_does_not_stall_the_loop() -> None:
    outcomes, stall = _stall_killing_hogs(3, 768)
    assert all(isinstance(outcome, CallTimeout) for outcome in outcomes)
    assert stall < 0.2


# -- many loops and threads on one crashing compartment -------------------------------------


@pytest.mark.timeout(120)
def test_loops_and_threads_on_a_crashing_compartment_each_get_their_own_replies() -> None:
    """Three event loops and a thread of Futures share a compartment that dies on every
    seventh value and is restarted: each call ends with its own value or a crash, no
    call hangs, and nothing is left open."""
    crashes_on_multiples_of_seven(1)
    before = _open_fds()
    outcomes: list[tuple[int, object]] = []
    lock = threading.Lock()

    def record(value: int, outcome: object) -> None:
        with lock:
            outcomes.append((value, outcome))

    def loop_of_awaits(start: int) -> None:
        async def one(value: int) -> None:
            try:
                record(value, await crashes_on_multiples_of_seven.aio(value))
            except Exception as exc:
                record(value, exc)

        async def main() -> None:
            await asyncio.gather(*(one(value) for value in range(start, start + 40)))

        asyncio.run(main())

    def futures(start: int) -> None:
        submitted = [(v, crashes_on_multiples_of_seven.submit(v)) for v in range(start, start + 40)]
        for value, future in submitted:
            error = future.exception(timeout=60)
            record(value, error if error is not None else future.result())

    workers = [threading.Thread(target=loop_of_awaits, args=(1000 * i,)) for i in (1, 2, 3)]
    workers.append(threading.Thread(target=futures, args=(4000,)))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(90)
    try:
        assert not any(worker.is_alive() for worker in workers)
        assert len(outcomes) == 160
        for value, outcome in outcomes:
            assert outcome == value or isinstance(outcome, CompartmentCrashed), (value, outcome)
        assert any(outcome == value for value, outcome in outcomes)
    finally:
        control(crashes_on_multiples_of_seven).close()
    crashes_on_multiples_of_seven(1)
    try:
        assert _open_fds() <= before + 2
    finally:
        control(crashes_on_multiples_of_seven).close()


# -- an await cancelled at every point -------------------------------------------------------


@pytest.mark.timeout(120)
def test_awaits_cancelled_at_every_point_leave_the_next_await_its_own_reply() -> None:
    """Cancelled while the child starts, before, during and after its 20 ms call: the
    await after each one gets its own value, never a late one."""

    async def main() -> list[tuple[int, object]]:
        seen = []
        for step in range(40):
            if step % 10 == 0:
                control(nap).close()  # the next await is cancelled while the child starts
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(nap.aio(0.02), timeout=step * 0.001)
            seen.append((step, await nap.aio(step / 1000)))
        return seen

    try:
        seen = asyncio.run(main())
    finally:
        control(nap).close()
    assert seen == [(step, step / 1000) for step in range(40)]


@pytest.mark.timeout(60)
def test_cancelling_one_await_while_the_child_starts_leaves_the_others_waiting() -> None:
    """Both awaits wait for the same start; before, cancelling one cancelled the start
    for both, and the other, never cancelled, raised CancelledError."""
    control(nap).close()

    async def main() -> float:
        cancelled = asyncio.ensure_future(nap.aio(0.01))
        other = asyncio.ensure_future(nap.aio(0.02))
        await asyncio.sleep(0.001)  # both wait for the child to start
        cancelled.cancel()
        return await other

    try:
        assert asyncio.run(main()) == 0.02
    finally:
        control(nap).close()


@pytest.mark.timeout(60)
def test_cancelling_an_await_on_one_loop_while_the_child_starts_spares_another_loop() -> None:
    control(nap).close()
    waiting = threading.Event()
    outcome: list[object] = []

    def other_loop() -> None:
        async def main() -> None:
            call = asyncio.ensure_future(nap.aio(0.02))
            await asyncio.sleep(0.001)
            waiting.set()
            try:
                outcome.append(await call)
            except BaseException as exc:
                outcome.append(exc)

        asyncio.run(main())

    async def cancelling() -> None:
        call = asyncio.ensure_future(nap.aio(0.01))
        await asyncio.sleep(0)
        waiting.wait(10)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call

    thread = threading.Thread(target=other_loop)
    thread.start()
    try:
        asyncio.run(cancelling())
        thread.join(30)
        assert outcome == [0.02]
    finally:
        control(nap).close()


# -- a deferred frame keeps its fds ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_awaits_memfd_argument_survives_a_send_finished_by_a_thread() -> None:
    """The child reads nothing for a second, so the channel fills; the await's 5 MiB
    argument travels as a memfd, which the caller closes as soon as the frame is handed
    to the sending thread: the thread must send a descriptor of its own."""
    big = b"y" * (5 << 20)

    async def main() -> list[int]:
        first = asyncio.ensure_future(nap_then_measure.aio(1.0, b""))
        await asyncio.sleep(0.2)  # the child is asleep
        filler = asyncio.ensure_future(nap_then_measure.aio(0.0, "x" * (3 << 20)))
        await asyncio.sleep(0)
        return list(await asyncio.gather(first, filler, nap_then_measure.aio(0.0, big)))

    try:
        nap_then_measure(0.0, b"")
        assert asyncio.run(main()) == [0, 3 << 20, 5 << 20]
    finally:
        control(nap_then_measure).close()


# -- a compartment argument whose compartment is busy -----------------------------------------


def _stall_passing_a_busy_peer(timeout: float | None, give_up: float) -> tuple[Any, float]:
    """Await ``takes_a_peer(busy)`` while ``busy`` is stuck in a call of its own (it will
    not take its end of the line), giving up after ``give_up`` seconds."""
    with Busy() as busy:

        def hang() -> None:
            with contextlib.suppress(Exception):  # ends when busy is closed
                busy.hang()

        stuck = threading.Thread(target=hang)
        try:

            async def main() -> tuple[Any, float]:
                await takes_a_peer.aio(0)
                stuck.start()
                await asyncio.sleep(0.2)  # busy is in its call
                call = takes_a_peer.with_timeout(timeout).aio(busy)
                return await _longest_stall(asyncio.wait_for(call, give_up))

            return asyncio.run(main())
        finally:
            control(busy).close()
            stuck.join(10)
            control(takes_a_peer).close()


@pytest.mark.timeout(60)
def test_an_await_passing_a_busy_compartment_does_not_stall_the_loop() -> None:
    """Brokering its line asks the busy one to take its end, up to the call's timeout:
    the loop waited all of it (2.0 s for a 2 s timeout)."""
    outcome, stall = _stall_passing_a_busy_peer(2.0, give_up=10.0)
    assert isinstance(outcome, CallTimeout)
    assert stall < LOOP_STALL


@pytest.mark.timeout(60)
def test_an_untimed_await_passing_a_busy_compartment_can_be_given_up() -> None:
    """Without a timeout the brokering waits 30 s: wait_for must still end it at 1 s
    (it could not fire while the loop was held)."""
    outcome, stall = _stall_passing_a_busy_peer(None, give_up=1.0)
    assert isinstance(outcome, asyncio.TimeoutError)
    assert stall < LOOP_STALL


@pytest.mark.timeout(60)
def test_an_await_passing_an_idle_compartment_gets_its_line_and_reply() -> None:
    with Busy() as peer:
        try:
            assert asyncio.run(takes_a_peer.aio(peer)) == 1
        finally:
            control(takes_a_peer).close()
