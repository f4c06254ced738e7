"""Calls that do not block the caller: Futures that settle on their own as replies
arrive, and awaits that hold no thread (the event loop watches the channel's fd).

Both ride on the connection's leader/follower reading: whoever reads delivers every reply,
so a Future settles, and an await resumes, whichever thread or loop read it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

from .._wire._reader import Slot
from .._wire._settling import SettlingConnection
from ..errors import CallTimeout, CompartmentClosed
from ._supervised import Remote, Supervised, _broker_peers

__all__ = ["call_async", "submit"]


def _timeout_for(supervised: Supervised, timeout: float | None) -> float | None:
    return supervised.definition.timeout if timeout is None else timeout


def submit(
    supervised: Supervised,
    method: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> concurrent.futures.Future[Any]:
    """Send the call now; the Future is already running (``cancel()`` is False, as for an
    Executor's task that started) and settles when the reply arrives."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()
    timeout = _timeout_for(supervised, timeout)
    try:
        _send_in_background(supervised, method, args, kwargs, timeout, future)
    except (TypeError, ValueError, OverflowError):
        raise  # an argument that cannot cross: the caller's mistake, raised at once
    except Exception as exc:  # the compartment is gone or stuck: the call's outcome
        if not future.done():
            future.set_exception(exc)
    return future


def _send_in_background(
    supervised: Supervised,
    method: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    timeout: float | None,
    future: concurrent.futures.Future[Any],
) -> None:
    conn = supervised.connection()

    def settle(slot: Slot) -> None:
        if slot.error is not None:
            future.set_exception(slot.error)
        else:
            future.set_result(slot.value)

    def stuck() -> None:
        supervised._kill_stuck(conn, method, timeout)

    supervised.send(
        conn, method, args, kwargs, timeout,
        lambda params: conn.start_background_call(
            method, params, settle, timeout=timeout, on_timeout=stuck
        ),
    )  # fmt: skip


class _Watch:
    """One event loop watching one connection's fd while it has calls awaiting there.

    The loop reads only when no thread holds the reader's role; when one does, the loop
    stops watching (the fd would stay readable until that thread reads) and looks again
    once the thread lets go."""

    def __init__(self, conn: SettlingConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop
        # Our own descriptor of the socket: the connection may close its fd (a crash, a
        # close) from any thread, and a new socket may reuse that number; the loop must
        # never be left watching a number that now names something else. The dup also
        # shows the end of stream, so the awaiting calls hear of it.
        try:
            self.fd = os.dup(conn.channel.fileno())
        except OSError:  # closed meanwhile
            closed = CompartmentClosed(f"compartment `{conn.name}` is closed")
            raise conn.failure or closed from None
        self.count = 0
        self.armed = False

    def retain(self) -> None:
        self.count += 1
        if not self.armed:
            self._arm()

    def release(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._disarm()
            if self.conn.watches.get(self.loop) is self:
                del self.conn.watches[self.loop]
            os.close(self.fd)

    def _arm(self) -> None:
        if self.conn.failure is not None:
            return  # every awaiting call has its error already
        with contextlib.suppress(OSError, ValueError):
            self.loop.add_reader(self.fd, self._readable)
            self.armed = True

    def _disarm(self) -> None:
        if self.armed:
            self.armed = False
            with contextlib.suppress(OSError, ValueError):
                self.loop.remove_reader(self.fd)

    def _readable(self) -> None:
        if self.conn.failure is not None:  # every awaiting call has its error: stop
            self._disarm()
            return
        if self.conn.read_if_free():
            return
        self._disarm()
        if not self.conn.when_reader_free(self._rearm_soon):
            self._arm()  # the other reader let go meanwhile

    def _rearm_soon(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing awaits
            self.loop.call_soon_threadsafe(self._rearm)

    def _rearm(self) -> None:
        if self.count and not self.armed:
            self._arm()


_starting: dict[Supervised, concurrent.futures.Future[SettlingConnection]] = {}
_starting_lock = threading.Lock()


def _connection_soon(supervised: Supervised) -> concurrent.futures.Future[SettlingConnection]:
    """The compartment's connection, from one thread that starts the child however many
    awaits ask for it at once. Each gets a Future of its own: cancelling one await
    (which cancels the Future it awaits) must not cancel the start for the others."""
    mine: concurrent.futures.Future[SettlingConnection] = concurrent.futures.Future()

    def copy(started: concurrent.futures.Future[SettlingConnection]) -> None:
        if not mine.set_running_or_notify_cancel():
            return  # its await was cancelled
        error = started.exception()
        if error is None:
            mine.set_result(started.result())
        else:
            mine.set_exception(error)

    with _starting_lock:
        shared = _starting.get(supervised)
        starting = shared is None
        if shared is None:
            shared = _starting[supervised] = concurrent.futures.Future()
    shared.add_done_callback(copy)
    if starting:
        _start_in_thread(supervised, shared)
    return mine


def _start_in_thread(
    supervised: Supervised, future: concurrent.futures.Future[SettlingConnection]
) -> None:
    """Start the child off the loop (a first spawn or a restart blocks)."""

    def start() -> None:
        try:
            conn = supervised.connection()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(conn)
        finally:
            with _starting_lock:
                _starting.pop(supervised, None)

    threading.Thread(target=start, name=f"compartments-start-{supervised.name}").start()


def _watch(conn: SettlingConnection, loop: asyncio.AbstractEventLoop) -> _Watch:
    watch = conn.watches.get(loop)
    if watch is None:
        watch = conn.watches[loop] = _Watch(conn, loop)
    return watch


async def call_async(
    supervised: Supervised,
    method: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> Any:
    """Await a call without a thread. Cancelling stops the wait, never the call
    mid-frame: the compartment finishes it, and its late reply is dropped."""
    loop = asyncio.get_running_loop()
    if supervised.is_running():
        conn = supervised.connection()
    else:  # a first spawn or a restart blocks: not on the loop
        conn = await asyncio.wrap_future(_connection_soon(supervised))
    timeout = _timeout_for(supervised, timeout)
    brokered: list[socket.socket] = []
    if any(isinstance(value, Remote) for value in (*args, *kwargs.values())):
        args, kwargs, brokered = await _broker_off_loop(loop, supervised, args, kwargs, timeout)
    try:
        return await _call_watched(loop, supervised, conn, method, args, kwargs, timeout, brokered)
    finally:
        _close_all(brokered)


Brokered = tuple[list[Any], dict[str, Any], list[socket.socket]]


async def _broker_off_loop(
    loop: asyncio.AbstractEventLoop,
    supervised: Supervised,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> Brokered:
    """Direct lines for the compartment arguments. Each asks that compartment to take
    its end, a call that may start its child and wait up to the timeout (30 s without
    one) for a busy peer: in a thread, never on the loop."""
    done: asyncio.Future[Brokered] = loop.create_future()

    def hand_over(outcome: Brokered | None, error: BaseException | None) -> None:
        if done.cancelled():  # nobody will send them
            _close_all(outcome[2] if outcome is not None else [])
        elif outcome is not None:
            done.set_result(outcome)
        else:
            done.set_exception(error or CompartmentClosed(supervised.name))

    def broker() -> None:
        outcome: Brokered | None = None
        error: BaseException | None = None
        try:
            outcome = _broker_peers(supervised.name, args, kwargs, timeout)
        except BaseException as exc:
            error = exc
        try:
            loop.call_soon_threadsafe(hand_over, outcome, error)
        except RuntimeError:  # the loop is closed
            _close_all(outcome[2] if outcome is not None else [])

    threading.Thread(
        target=broker, daemon=True, name=f"compartments-broker-{supervised.name}"
    ).start()
    return await done


def _close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


async def _call_watched(
    loop: asyncio.AbstractEventLoop,
    supervised: Supervised,
    conn: SettlingConnection,
    method: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    timeout: float | None,
    brokered: list[socket.socket],
) -> Any:
    """Send on the loop (never waiting) and await the reply the loop's watch reads."""
    result: asyncio.Future[Any] = loop.create_future()
    loop_thread = threading.get_ident()
    watch = _watch(conn, loop)

    def deliver(slot: Slot) -> None:
        watch.release()
        if result.done():
            return
        if slot.error is not None:
            result.set_exception(slot.error)
        else:
            result.set_result(slot.value)

    def settle(slot: Slot) -> None:  # in whichever thread read the reply
        if threading.get_ident() == loop_thread:
            deliver(slot)
        else:
            try:
                loop.call_soon_threadsafe(deliver, slot)
            except RuntimeError:  # the loop is closed: nobody awaits, and it watches no more
                watch.release()

    watch.retain()
    try:
        call = supervised.send(
            conn, method, args, kwargs, timeout,
            lambda params: conn.start_watched_call(method, params, settle, timeout=timeout),
        )  # fmt: skip
    except BaseException:
        watch.release()
        raise
    finally:
        _close_all(brokered)  # sent: the compartment has its own ends now
        brokered.clear()

    def expire() -> None:
        if conn.abandon(call):
            watch.release()
            # The kill is at once, but failing the connection waits for the child's exit
            # (a big address space takes a while to tear down) and asks its zygote: in a
            # thread. The await resumes once it is done, so its next call finds the
            # connection failed and starts a new child.
            threading.Thread(
                target=kill_then_report, daemon=True, name=f"compartments-kill-{supervised.name}"
            ).start()

    def kill_then_report() -> None:
        try:
            supervised._kill_stuck(conn, method, timeout)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits
                loop.call_soon_threadsafe(timed_out)

    def timed_out() -> None:
        if not result.done():
            result.set_exception(CallTimeout(supervised.name, method, timeout or 0.0))

    timer = None if timeout is None else loop.call_later(timeout, expire)
    try:
        return await result
    except asyncio.CancelledError:
        if conn.abandon(call):  # its reply will be dropped; deliver() will not run
            watch.release()
        raise
    finally:
        if timer is not None:
            timer.cancel()
