"""One compartment instance from the parent's side: its current child, restarts, calls,
brokered peer channels, and closing (what it was told is ``_definition``)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from .._child import _stdio
from .._wire import _frames, _largebytes
from .._wire._frames import Fd, PeerRef, RemoteTraceback
from .._wire._settling import SettlingConnection
from .._wire._sockets import stream_socketpair
from ..errors import CallTimeout, CompartmentClosed, CompartmentCrashed
from . import _output, _remote_log
from ._definition import GRACE_PERIOD, Definition
from ._learn import BANNER, LearnedPolicy, learn_policy
from ._supervisor import START_TIMEOUT, ChildProcess, before_stopping, new_connection, zygote_for
from ._violations import ViolationLog, log

__all__ = ["Remote", "Supervised", "close_all", "send_call"]

T = TypeVar("T")

# -- one running compartment ---------------------------------------------------------


class Supervised:
    """A compartment instance: its current child process, restarts, and closing."""

    def __init__(self, definition: Definition, args: Sequence[Any], kwargs: dict[str, Any]):
        self.definition = definition
        self.name = definition.name
        self._args = list(args)
        self._kwargs = dict(kwargs)
        self._lock = threading.RLock()
        self._child: ChildProcess | None = None
        self._connection: SettlingConnection | None = None
        self._closed = False
        self._forked_away = False
        self.restarts = 0
        self.generation = 0
        self.violations = ViolationLog(self.name, learn=definition.learn)
        self.remote_log = _remote_log.RemoteLog(self.name)
        if definition.learn:
            log.warning(BANNER.format(name=self.name))
        _check_arguments(definition, "__init__", self._args, self._kwargs)
        _all_supervised.add(self)

    # -- lifecycle ---------------------------------------------------------------------

    def connection(self) -> SettlingConnection:
        conn = self._connection  # the common case needs no lock: a live child
        if conn is not None and conn.failure is None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                if self._forked_away:
                    raise CompartmentClosed(
                        f"compartment `{self.name}` belongs to the process this one was "
                        "forked from; a forked process starts compartments of its own"
                    )
                raise CompartmentClosed(f"compartment `{self.name}` is closed")
            conn = self._connection
            if conn is not None and conn.failure is None:
                return conn
            if conn is not None:
                self._restart_or_raise(conn.failure)
            self._start()
            assert self._connection is not None
            return self._connection

    def _restart_or_raise(self, failure: BaseException | None) -> None:
        policy = self.definition.restart
        if self.restarts >= policy.max_restarts:
            if failure is None:
                raise CompartmentCrashed(self.name, "it is no longer running")
            raise failure.with_traceback(None)  # raised to every later caller: keep it short
        time.sleep(policy.delay(self.restarts))
        self.restarts += 1

    def _start(self) -> None:
        """Fork a child from its module's zygote, then send it its arguments on its own
        channel: the zygote, which every later compartment is forked from, never sees them."""
        definition = self.definition
        module = definition.target.__module__
        zygote = zygote_for(module, definition.max_message)
        args, kwargs, brokered = _broker_peers(self.name, self._args, self._kwargs)
        parent_end, child_end = stream_socketpair()  # urgent data inline on both ends
        output = _output.outputs(self.name)
        spec = {
            "name": self.name,
            "module": module,
            "qualname": definition.target.__qualname__,
            "channel": Fd(child_end),
            "stdout": Fd(output.stdout_w),
            "stderr": Fd(output.stderr_w),
            "line_buffered": _output.parent_stdout_is_a_terminal(),
            "log_level": _remote_log.level_for(self.name),
            "max_message": definition.max_message,
            "timeout": definition.timeout,
            "rules": definition.rules_as_data(),
            "listener": definition.report_violations,
            "unsealed_for_benchmarks": definition.unsealed_for_benchmarks,
            "isolate": None if definition.isolate is None else definition.isolate.to_data(),
        }
        try:
            pid = zygote.spawn(spec)
        except BaseException:
            for sock in (*brokered, parent_end):
                sock.close()
            output.retire()
            raise
        finally:
            child_end.close()
            output.close_write_ends()
        child = ChildProcess(self.name, pid, zygote, output)
        connection = new_connection(
            parent_end, self.name, definition.max_message,
            _stdio_dispatcher(self.name, output,
                              self.remote_log.dispatcher(self.violations.on_notification)),
        )  # fmt: skip
        connection.explain_failure = child.explain
        self.violations.attach(connection)
        try:
            send_call(
                definition, "__init__", args, kwargs,
                lambda params: connection.call("$start", params, timeout=START_TIMEOUT),
            )  # fmt: skip
        except BaseException:
            connection.close()
            child.reap(GRACE_PERIOD)
            raise
        finally:
            for sock in brokered:
                sock.close()
        self._child, self._connection = child, connection
        self.generation += 1

    def forget_inherited(self) -> None:
        """In a forked copy of the parent: this compartment is the parent's, not ours."""
        self._lock = threading.RLock()
        self._closed = True
        self._forked_away = True
        conn, self._connection, self._child = self._connection, None, None
        if conn is not None:
            conn.close()  # our copies of the fds only: the parent's line stays up

    def learned_policy(self) -> LearnedPolicy:
        return learn_policy(self.violations.observed)

    def close(self, grace: float = GRACE_PERIOD) -> None:
        """Stop the child: EOF, then SIGKILL if it has not exited within ``grace``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            child, conn = self._child, self._connection
            self._child = self._connection = None
        try:
            self._stop(child, conn, grace)
        finally:
            if self.definition.learn and self.violations.observed:
                print(f"# learned policy for compartment `{self.name}`:", file=sys.stderr)
                print(self.learned_policy().code, file=sys.stderr)

    def _stop(
        self, child: ChildProcess | None, conn: SettlingConnection | None, grace: float
    ) -> None:
        if conn is not None:
            conn.channel.shutdown()
        if child is not None:
            child.reap(grace)
        self.violations.retire_listener()
        if conn is not None:
            conn.close()
        self.remote_log.close()
        _all_supervised.discard(self)

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def is_running(self) -> bool:
        conn = self._connection
        return not self._closed and conn is not None and conn.failure is None

    # -- calling -------------------------------------------------------------------------

    def call(
        self, method: str, args: Sequence[Any], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        conn = self._connection  # the common case needs no lock: a live child
        if conn is None or conn.failure is not None or self._closed:
            conn = self.connection()
        if timeout is None:
            timeout = self.definition.timeout
        if _needs_preparing(args) or (kwargs and _needs_preparing(kwargs.values())):
            return self.send(
                conn, method, args, kwargs, timeout,
                lambda params: conn.call(method, params, timeout=timeout),
            )  # fmt: skip
        try:  # nothing to broker or offload: the call's frame is the arguments as they are
            return conn.call(method, [args, kwargs], timeout=timeout)
        except CallTimeout:
            self._kill_stuck(conn, method, timeout)
            raise
        except (TypeError, OverflowError) as exc:
            _explain_unsendable(self.definition, method, args, kwargs, exc)
            raise

    def send(
        self,
        conn: SettlingConnection,
        method: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        timeout: float | None,
        send: Callable[[list[Any]], T],
    ) -> T:
        """``send([args, kwargs])`` on ``conn``, with compartment arguments brokered into
        direct lines first; a call that cannot be sent in time kills the stuck child."""
        args, kwargs, brokered = _broker_peers(self.name, args, kwargs, timeout)
        try:
            return send_call(self.definition, method, args, kwargs, send)
        except CallTimeout:
            self._kill_stuck(conn, method, timeout)
            raise
        finally:
            for sock in brokered:
                sock.close()

    def _kill_stuck(self, conn: SettlingConnection, method: str, timeout: float | None) -> None:
        """A sequential compartment that missed a deadline blocks every later call."""
        child = self._child
        if child is not None and self._connection is conn:
            what = "the call" if method == "__call__" else f"call `{method}`"
            child.kill(f"{what} timed out after {timeout:g}s")
            conn.fail(ConnectionResetError("killed after a timeout"))


def send_call(
    definition: Definition,
    method: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    send: Callable[[list[Any]], T],
) -> T:
    """``send([args, kwargs])`` with large bytes offloaded; a TypeError for an argument
    that cannot cross names it (a TypeError the compartment raised passes unchanged)."""
    args, kwargs, offloaded = _largebytes.offload(args, kwargs)
    try:
        return send([args, kwargs])
    except (TypeError, OverflowError) as exc:
        _explain_unsendable(definition, method, args, kwargs, exc)
        raise
    finally:
        _largebytes.close_all(offloaded)  # sent (or not): the receiver has its own copy


#: Argument types that never need brokering or offloading before a call is sent.
_PLAIN_TYPES = frozenset({int, float, str, bool, type(None), list, dict, tuple})


def _needs_preparing(values: Iterable[Any]) -> bool:
    """Whether a top-level argument is a compartment (to broker a line for) or bytes large
    enough to travel after the frame: the only values the slow path changes."""
    for value in values:
        kind = type(value)
        if kind in _PLAIN_TYPES:
            continue
        if kind is bytes:
            if len(value) >= _largebytes.TRAILING_MIN:
                return True
        elif isinstance(value, Remote):
            return True
    return False


def _explain_unsendable(
    definition: Definition,
    method: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    exc: BaseException,
) -> None:
    """For a TypeError/OverflowError of ours (the frame could not be built, not one the
    compartment raised), raise the TypeError naming the argument that cannot cross."""
    if not isinstance(exc.__cause__, RemoteTraceback):
        _check_arguments(definition, method, args, kwargs)


def _check_arguments(
    definition: Definition, method: str, args: Sequence[Any], kwargs: dict[str, Any]
) -> None:
    """Raise a TypeError naming the argument that cannot cross, if there is one."""
    names = definition.parameter_names(method)
    values = [*args, *kwargs.values()]
    labels = [*names[: len(args)], *kwargs]
    peers_ok = [v if not isinstance(v, Remote) else None for v in values]
    shown = "__init__" if method == "__init__" else method
    label = definition.name if method == "__call__" else f"{definition.name}.{shown}"
    _frames.encode_request(0, label, peers_ok, names=labels)


def _broker_peers(
    receiver: str, args: Sequence[Any], kwargs: dict[str, Any], timeout: float | None = None
) -> tuple[list[Any], dict[str, Any], list[socket.socket]]:
    """Replace each compartment argument by a fresh direct channel to it.

    Asking the target to take its end is bounded by the call's ``timeout`` (or the start
    timeout), and a target that does not answer in time is killed like any stuck one.
    """
    if not args and not kwargs:
        return [], kwargs, []
    if not any(isinstance(v, Remote) for v in (*args, *kwargs.values())):
        return list(args), kwargs, []
    brokered: list[socket.socket] = []

    def direct_line(value: Any) -> Any:
        if not isinstance(value, Remote):
            return value
        target = value._supervised_instance()
        ours, theirs = stream_socketpair()  # urgent data inline: they cannot set it
        brokered.append(ours)
        limit = START_TIMEOUT if timeout is None else min(timeout, START_TIMEOUT)
        conn = target.connection()
        with theirs:
            try:
                conn.call("$attach", [Fd(theirs), receiver], timeout=limit)
            except CallTimeout:
                target._kill_stuck(conn, "$attach", limit)
                raise
        return PeerRef(Fd(ours), target.name)

    try:
        return (
            [direct_line(v) for v in args],
            {k: direct_line(v) for k, v in kwargs.items()},
            brokered,
        )
    except BaseException:
        for sock in brokered:  # the lines already brokered for this call are not used
            sock.close()
        raise


_all_supervised: weakref.WeakSet[Supervised] = weakref.WeakSet()


def _forget_in_child() -> None:
    """A forked copy of the parent closes its copies of the parent's channels, unused:
    sharing a channel would interleave two processes' frames."""
    for supervised in list(_all_supervised):
        supervised.forget_inherited()
    _all_supervised.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def close_all() -> None:
    for supervised in list(_all_supervised):
        supervised.close()


# At exit, every compartment closes before the supervisor kills what is left.
before_stopping(close_all)


class Remote:
    """Anything that stands for a compartment and can be handed to another one."""

    def _supervised_instance(self) -> Supervised:
        raise NotImplementedError


def _stdio_dispatcher(
    name: str, output: _output.Outputs, other: Callable[[str, list[Any]], None]
) -> Callable[[str, list[Any]], None]:
    """``$out`` (a sealed compartment's print without a write grant) into its relay."""

    def on_notification(method: str, params: list[Any]) -> None:
        if method == _stdio.METHOD:
            output.inject(*_stdio.receive(params, name))
        else:
            other(method, params)

    return on_notification
