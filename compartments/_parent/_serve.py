"""``compartments.serve()``: a sealed compartment answers other processes on a unix socket.

The parent listens and checks each client's credentials (``SO_PEERCRED``), then hands the
accepted socket to the compartment with ``$attach``, as it hands out direct lines between
compartments. From then on the client and the compartment talk directly, in plain
msgpack-RPC (``docs/wire.md``); the parent relays nothing. What a client's line may do is
decided in the compartment (``_external``): less than the parent's line, never more, and
the compartment's policy is the same as unserved.

The parent keeps two fds per client and polls them for hang-ups only, never reading: a
copy of the socket, so that it can end the line (on ``close()``, or once the compartment
dropped it), and the read end of a pipe whose write end the compartment's line holds,
which hangs up when the compartment closes the line or exits.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from .._text import printable
from .._wire._fd import Fd
from ..errors import CompartmentClosed, CompartmentCrashed, CompartmentsError
from ._socket_file import inode_of, listen
from ._supervised import Remote, Supervised

__all__ = ["ATTACH_TIMEOUT", "DEFAULT_MAX_CLIENTS", "MAX_CLIENTS_LIMIT", "Served", "serve"]

#: Clients served at once by default; more are accepted and closed at once.
DEFAULT_MAX_CLIENTS = 16
#: A compartment holds at most 64 channels (its parent's among them), peers included.
MAX_CLIENTS_LIMIT = 48
#: The largest frame a client may send, and the largest answer it gets, by default.
DEFAULT_CLIENT_MAX_MESSAGE = 1 << 20
#: How long a client may leave an answer unread before its line is dropped, by default.
DEFAULT_DRAIN_TIMEOUT = 10.0
#: How long the parent waits for the compartment to take a client's line.
ATTACH_TIMEOUT = 10.0
#: How long a client waits, at ``max_clients``, for the line of one that left to close.
_ROOM_WAIT = 0.1
#: Connections taken from the listen queue per wake-up, so hang-ups are seen in between.
_ACCEPT_BATCH = 64
#: The most of its time the serving thread spends handing clients over: ``$attach`` runs
#: on the parent's own line and under its GIL, so a client that connects and hangs up in a
#: loop would otherwise slow the parent's calls by as much as it likes. After a hand-over
#: that took t seconds, the next client is accepted t * (1 / share - 1) seconds later,
#: or :data:`_HAND_OVER_PAUSE_MAX` if that is less.
_HAND_OVER_SHARE = 0.2
#: The longest such pause: a hand-over that waited behind a long call of the parent's
#: says nothing of the clients, and must not lock them out four times as long.
_HAND_OVER_PAUSE_MAX = 0.1
_UCRED = struct.Struct("3i")  # pid, uid, gid
_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL

log = logging.getLogger("compartments")


class _Line:
    """The parent's side of one client: a copy of its socket, and the pipe end that
    hangs up when the compartment's line is closed."""

    __slots__ = ("sock", "watch")

    def __init__(self, sock: socket.socket, watch: int) -> None:
        self.sock: socket.socket | None = sock
        self.watch = watch

    def client_left(self) -> None:
        """The client hung up: our copy goes, the line counts until the compartment
        has closed it too (it holds a channel slot until then)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def end(self, shut_down: bool = True) -> None:
        if self.sock is not None:
            if shut_down:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)  # the client sees its line end
            self.client_left()
        os.close(self.watch)


class Served:
    """A compartment listening on a unix socket; ``close()`` (or ``with``) stops it.

    ``clients`` is how many lines are open now (a line counts until the compartment has
    closed it, so ``max_clients`` bounds the channel slots it holds), ``served`` how many
    clients were handed one in all, ``refused`` how many were turned away (credentials,
    ``max_clients``).
    """

    def __init__(
        self,
        supervised: Supervised,
        path: str,
        *,
        mode: int,
        uids: frozenset[int],
        gids: frozenset[int],
        max_clients: int,
        options: dict[str, Any],
    ) -> None:
        self.path = path
        self.name = supervised.name
        self._supervised = supervised
        self._uids, self._gids = uids, gids
        self._max_clients = max_clients
        self._options = options
        self._lines: dict[int, _Line] = {}  # by the fd of the pipe end we watch
        self._lock = threading.Lock()
        self._closed = False
        self.served = 0
        self.refused = 0
        self._warned_at = float("-inf")
        self._unwarned = 0
        self._next_accept = 0.0  # monotonic time before which no client is accepted
        self._listener, self._inode = listen(path, mode, max_clients)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(
            target=self._run, name=f"compartments-serve-{self.name}", daemon=True
        )
        _all_served.add(self)
        self._thread.start()

    @property
    def clients(self) -> int:
        return len(self._lines)

    # -- the serving thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closed:
                self._wait_once()
        except Exception:  # never silently: the socket stops answering
            log.exception("serving compartment `%s` on %s failed", self.name, self.path)
        finally:
            self._teardown()

    def _wait_once(self) -> None:
        """Wait for a client, a hang-up, or ``close()``; handle what came."""
        poller, by_sock = self._line_poller()
        poller.register(self._wake_r, select.POLLIN)
        pause = self._next_accept - time.monotonic()
        if pause <= 0:
            poller.register(self._listener.fileno(), select.POLLIN)
        ready = poller.poll(max(1, round(pause * 1000)) if pause > 0 else None)
        if any(fd == self._wake_r for fd, _ in ready):
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 64)  # a stray byte must not wake us for ever
            return
        self._hangups(ready, by_sock)  # first: their fd numbers are free only after
        if any(fd == self._listener.fileno() for fd, _ in ready):
            self._accept_some()

    def _line_poller(self) -> tuple[select.poll, dict[int, _Line]]:
        """A poll of every line's two fds for hang-ups only (poll reports them unasked)."""
        poller = select.poll()
        by_sock: dict[int, _Line] = {}
        for watch, line in self._lines.items():
            poller.register(watch, 0)
            if line.sock is not None:
                by_sock[line.sock.fileno()] = line
                poller.register(line.sock.fileno(), 0)
        return poller, by_sock

    def _hangups(self, ready: list[tuple[int, int]], by_sock: dict[int, _Line]) -> None:
        """End the lines the compartment closed; forget the sockets of clients that left."""
        for fd, events in ready:
            if fd in self._lines and events & _HANGUP:
                self._end_line(fd)  # the compartment closed the line (or exited)
        for fd, events in ready:
            left = by_sock.get(fd)
            if left is not None and events & _HANGUP and left.watch in self._lines:
                left.client_left()

    def _make_room(self) -> bool:
        """At ``max_clients``: take the hang-ups that came while a line was being handed
        over, and give a client that left :data:`_ROOM_WAIT` seconds for the compartment
        to close its line. False if every line is still in use."""
        deadline = time.monotonic() + _ROOM_WAIT
        wait = 0.0
        while True:
            poller, by_sock = self._line_poller()
            self._hangups(poller.poll(int(wait * 1000)), by_sock)
            if len(self._lines) < self._max_clients:
                return True
            wait = min(deadline - time.monotonic(), 0.01)
            if wait <= 0 or all(line.sock is not None for line in self._lines.values()):
                return False

    def _accept_some(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            if time.monotonic() < self._next_accept:
                return
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: this client waits, we go on
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._warn(f"cannot accept a client: {exc}")
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        try:
            pid, uid, gid = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            if uid not in self._uids and gid not in self._gids:
                self._refuse(sock, f"uid {uid} (gid {gid}, pid {pid}) is not allowed")
                return
            if len(self._lines) >= self._max_clients and not self._make_room():
                self._refuse(sock, f"{self._max_clients} clients are served already")
                return
            self._attach(sock, f"client pid {pid} uid {uid}")
        except BaseException:
            sock.close()
            raise

    def _refuse(self, sock: socket.socket, why: str) -> None:
        self.refused += 1
        log.debug("serving `%s`: refused a client: %s", self.name, why)
        sock.close()

    def _attach(self, sock: socket.socket, name: str) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)  # the compartment cannot
        watch, held = os.pipe2(os.O_CLOEXEC)
        started = time.monotonic()
        try:
            self._hand_over(sock, name, held)
        except (CompartmentsError, OSError, ValueError, TypeError, RuntimeError) as exc:
            sock.close()
            os.close(watch)
            if isinstance(exc, CompartmentClosed):  # closed by its owner: nothing to serve
                log.warning("serving `%s` on %s stops: %s", self.name, self.path, exc)
                self._closed = True
            else:
                self._warn(f"could not hand a line to {name}: {exc}")
            return
        finally:
            os.close(held)
            took = time.monotonic() - started
            pause = min(took * (1 / _HAND_OVER_SHARE - 1), _HAND_OVER_PAUSE_MAX)
            self._next_accept = time.monotonic() + pause
        with self._lock:
            self._lines[watch] = _Line(sock, watch)
        self.served += 1

    def _warn(self, text: str) -> None:
        """A warning, at most one a second (clients arrive as fast as they like), with
        the count of those held back."""
        now = time.monotonic()
        if now - self._warned_at < 1.0:
            self._unwarned += 1
            return
        held_back = f" ({self._unwarned} more like it held back)" if self._unwarned else ""
        log.warning("serving `%s`: %s%s", self.name, printable(text), held_back)
        self._warned_at, self._unwarned = now, 0

    def _hand_over(self, sock: socket.socket, name: str, held: int) -> None:
        """``$attach`` the client's socket; a compartment found dead on the way is
        restarted (as its restart policy allows) and asked once more."""
        params = [Fd(sock), name, {**self._options, "sentinel": Fd(held)}]
        conn = self._supervised.connection()
        try:
            conn.call("$attach", params, timeout=ATTACH_TIMEOUT)
        except (CompartmentCrashed, ConnectionError):
            if conn.failure is None:
                raise
            self._supervised.connection().call("$attach", params, timeout=ATTACH_TIMEOUT)

    def _end_line(self, watch: int) -> None:
        with self._lock:
            line = self._lines.pop(watch, None)
        if line is not None:
            line.end()

    def _teardown(self) -> None:
        with self._lock:
            lines, self._lines = list(self._lines.values()), {}
        for line in lines:
            line.end()
        self._stop_listening()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _stop_listening(self) -> None:
        with contextlib.suppress(OSError):
            if inode_of(self.path) == self._inode:  # still ours, not a successor's
                os.unlink(self.path)
        self._listener.close()

    # -- the caller's side ----------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening, end every client's line, remove the socket file; idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        _all_served.discard(self)

    def _forget_inherited(self) -> None:
        """In a forked copy of the parent: drop our copies, end nothing."""
        self._closed = True
        for line in list(self._lines.values()):
            line.end(shut_down=False)
        self._lines = {}
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.clients} clients"
        return f"<Served {self.name!r} on {self.path!r}, {state}>"


def serve(
    proxy: object,
    path: str | os.PathLike[str],
    *,
    mode: int = 0o600,
    allow_uids: Iterable[int] | None = None,
    allow_gids: Iterable[int] | None = None,
    max_clients: int = DEFAULT_MAX_CLIENTS,
    max_message: int = DEFAULT_CLIENT_MAX_MESSAGE,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    tracebacks: bool = False,
) -> Served:
    """Serve a compartment (a class proxy or a ``@compartment`` function) on a unix
    socket at ``path``, in plain msgpack-RPC (``docs/wire.md``), to other processes.

    The socket file gets ``mode`` (0600: the parent's user only). A client is served if
    its uid is in ``allow_uids`` (default: the parent's own uid only) or its gid in
    ``allow_gids``; at most ``max_clients`` at once. Each gets its own direct line to
    the compartment, which stays sealed exactly as before. A client's frames may be
    ``max_message`` bytes; one that leaves an answer unread for ``drain_timeout``
    seconds loses its line. Error replies carry the type and message; the traceback
    goes to the parent's logging, or also to the client with ``tracebacks=True``.
    """
    if not isinstance(proxy, Remote):
        raise TypeError(f"serve() takes a compartment proxy or function, got {type(proxy)!r}")
    supervised = proxy._supervised_instance()
    definition = supervised.definition
    if definition.fresh or definition.workers > 1:
        raise ValueError(
            f"compartment `{supervised.name}` runs in several children (fresh= or "
            "workers=); serve() needs one long-lived child"
        )
    if type(max_clients) is not int or not 1 <= max_clients <= MAX_CLIENTS_LIMIT:
        raise ValueError(f"max_clients must be an int in 1..{MAX_CLIENTS_LIMIT}")
    if type(max_message) is not int or max_message < 64:
        raise ValueError("max_message must be an int of at least 64 bytes")
    if not drain_timeout > 0:
        raise ValueError("drain_timeout must be positive")
    if type(mode) is not int or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be permission bits (0..0o777), got {mode!r}")
    uids = frozenset([os.getuid()] if allow_uids is None else _ids(allow_uids, "allow_uids"))
    gids = frozenset(() if allow_gids is None else _ids(allow_gids, "allow_gids"))
    options = {
        "max_message": min(max_message, definition.max_message),
        "drain_timeout": float(drain_timeout),
        "tracebacks": bool(tracebacks),
    }
    supervised.connection()  # started now: a setup error is the caller's, not a client's
    return Served(
        supervised, os.fspath(path), mode=mode, uids=uids, gids=gids,
        max_clients=max_clients, options=options,
    )  # fmt: skip


def _ids(values: Iterable[int], what: str) -> list[int]:
    ids = list(values)
    if not all(type(value) is int and value >= 0 for value in ids):
        raise TypeError(f"{what} must be non-negative ints, got {ids!r}")
    return ids


_all_served: weakref.WeakSet[Served] = weakref.WeakSet()


def _forget_in_child() -> None:
    for served in list(_all_served):
        served._forget_inherited()
    _all_served.clear()


os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _close_all() -> None:
    """At exit, before the compartments stop: clients see their lines end, and no
    socket file is left behind."""
    for served in list(_all_served):
        served.close(timeout=1.0)
