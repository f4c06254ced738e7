"""Parent-side process management: the zygote, and one handle per compartment process.

A compartment is the zygote's child, so its exit status comes from the zygote; its
pidfd (from the parent) tells when it died and lets us kill it without pid-reuse races.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ._channel import Channel
from ._connection import Connection
from .errors import CompartmentCrashed, ProtocolError

__all__ = ["ChildProcess", "Zygote", "get_zygote", "scrubbed_environment"]

#: Environment variables a compartment may see; everything else (tokens, keys) stays out.
ENV_ALLOWLIST = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR"})
START_TIMEOUT = 30.0
_BOOT = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[2])['path']; "
    "from compartments._zygote import main; main()"
)


def scrubbed_environment() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if key in ENV_ALLOWLIST or key.startswith("LC_")
    }


def _main_path() -> str | None:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return os.path.abspath(path) if isinstance(path, str) and os.path.exists(path) else None


class Zygote:
    """The clean pre-imported process every compartment is forked from."""

    def __init__(self, max_message: int) -> None:
        parent_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        config = {
            "path": [p for p in sys.path if isinstance(p, str)],
            "main_path": _main_path(),
            "parent_pid": os.getpid(),
            "max_message": max_message,
        }
        with zygote_end:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, str(zygote_end.fileno()), json.dumps(config)],
                pass_fds=[zygote_end.fileno()],
                env=scrubbed_environment(),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        self.connection = Connection(
            Channel(parent_end, name="zygote"), name="zygote", max_message=max_message
        )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None and self.connection.failure is None

    def spawn(self, spec: dict[str, Any]) -> int:
        return int(self.connection.call("spawn", [spec], timeout=START_TIMEOUT))

    def reap(self, pid: int) -> tuple[int, int] | None:
        """(exit code, signal) of an exited child, or None if it still runs."""
        status = self.connection.call("wait", [pid], timeout=START_TIMEOUT)
        return None if status is None else (int(status[0]), int(status[1]))

    def close(self) -> None:
        self.connection.close()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def get_zygote(max_message: int) -> Zygote:
    global _zygote
    with _zygote_lock:
        if _zygote is None or not _zygote.alive:
            _zygote = Zygote(max_message)
        return _zygote


def describe_exit(code: int, signum: int) -> str:
    if signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"killed by {name}"
    return f"exited with status {code}"


class ChildProcess:
    """One compartment process, from the parent's side."""

    def __init__(self, name: str, pid: int, zygote: Zygote) -> None:
        self.name = name
        self.pid = pid
        self._zygote = zygote
        self._pidfd = os.pidfd_open(pid)
        self._status: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self.killed_because = ""
        _live_children.add(self)

    def exited_within(self, seconds: float) -> bool:
        if self._pidfd < 0:
            return True
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(max(seconds, 0) * 1000))

    def kill(self, because: str = "") -> None:
        with self._lock:
            if self._pidfd >= 0 and self._status is None:
                self.killed_because = self.killed_because or because
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def reap(self, grace: float) -> tuple[int, int]:
        """Wait up to ``grace`` for a voluntary exit, then kill; always collects the zombie."""
        if self._status is not None:
            return self._status
        if not self.exited_within(grace):
            self.kill()
            self.exited_within(5.0)
        status = None
        try:
            status = self._zygote.reap(self.pid)
        except Exception:
            status = None
        with self._lock:
            self._status = status or (-1, signal.SIGKILL)
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1
        _live_children.discard(self)
        return self._status

    def explain(self, cause: BaseException) -> BaseException:
        """What callers see when the channel fails: the protocol error or how it died."""
        if isinstance(cause, ProtocolError):
            self.kill("it broke the protocol")
            self.reap(0)
            return ProtocolError(f"compartment `{self.name}`: {cause}")
        if isinstance(cause, CompartmentCrashed):
            self.reap(1.0)
            return cause
        code, signum = self.reap(1.0)
        reason = describe_exit(code, signum)
        if self.killed_because:
            reason += f" ({self.killed_because})"
        return CompartmentCrashed(self.name, reason)


_live_children: weakref.WeakSet[ChildProcess] = weakref.WeakSet()


def new_connection(
    child_end: socket.socket,
    name: str,
    max_message: int,
    on_notification: Callable[[str, list[Any]], None],
) -> Connection:
    return Connection(
        Channel(child_end, name=name),
        name=name,
        max_message=max_message,
        on_notification=on_notification,
    )


@atexit.register
def _stop_everything() -> None:
    from . import _supervised

    _supervised.close_all()
    for child in list(_live_children):
        child.kill("the parent is exiting")
        child.reap(0)
    global _zygote
    if _zygote is not None:
        _zygote.close()
        _zygote = None
