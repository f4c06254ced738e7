"""Parent-side process management: the zygotes, and one handle per compartment process.

A compartment is its module zygote's child, so its exit status comes from that zygote;
its pidfd (from the parent) tells when it died and lets us kill it without pid-reuse
races. Every zygote and compartment writes to its own pipes, relayed by ``_output``.
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

from .._child._target import IMPORT_TIME_CALL, ImportTimeCall, importing, module_key
from .._policy import _seccomp
from .._policy._checks import import_time_call_message, main_path
from .._wire._channel import Channel
from .._wire._connection import Connection
from .._wire._fd import Fd
from .._wire._settling import SettlingConnection
from ..errors import BootstrapError, CompartmentCrashed, ProtocolError
from . import _broker, _output

__all__ = [
    "ChildProcess",
    "ModuleZygote",
    "Zygote",
    "get_zygote",
    "scrubbed_environment",
    "zygote_for",
]

#: Environment variables a compartment may see; everything else (tokens, keys) stays out.
ENV_ALLOWLIST = frozenset(
    # MSGPACK_PUREPYTHON: the compartments decode with the same msgpack build as the parent.
    {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "MSGPACK_PUREPYTHON"}
)
START_TIMEOUT = 30.0
_BOOT = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[2])['path']; "
    "from compartments._child._zygote import main; main()"
)


def scrubbed_environment() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if key in ENV_ALLOWLIST or key.startswith("LC_")
    }


def _control_connection(
    parent_end: socket.socket, output: _output.Outputs, name: str, max_message: int
) -> Connection:
    """A zygote is running: its output pipes' write ends are its own now, and its control
    socket becomes the parent's connection to it."""
    output.close_write_ends()
    return Connection(Channel(parent_end, name=name), name=name, max_message=max_message)


class Zygote:
    """The base zygote: a clean pre-imported process that forks one zygote per module."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        parent_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        config = {
            "path": [p for p in sys.path if isinstance(p, str)],
            "main_path": main_path(),
            "parent_pid": os.getpid(),
            "max_message": max_message,
            "imports": _broker.mode(),
        }
        self.output = _output.outputs("zygote")
        try:
            with zygote_end:
                self.process = subprocess.Popen(
                    [sys.executable, "-I", "-c", _BOOT, str(zygote_end.fileno()),
                     json.dumps(config)],
                    pass_fds=[zygote_end.fileno()],
                    env=scrubbed_environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=self.output.stdout_w,
                    stderr=self.output.stderr_w,
                    close_fds=True,
                )  # fmt: skip
        except BaseException:
            parent_end.close()
            self.output.retire()
            raise
        self.connection = _control_connection(parent_end, self.output, "zygote", max_message)
        self._modules: dict[str, ModuleZygote] = {}
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None and self.connection.failure is None

    def for_module(self, module: str) -> ModuleZygote:
        """The zygote that forks compartments of ``module``, forked on first use."""
        key = module_key(module)
        with self._lock:
            zygote = self._modules.get(key)
            if zygote is None or not zygote.alive:
                if zygote is not None:
                    zygote.close()
                zygote = self._modules[key] = ModuleZygote(self, key)
            return zygote

    @property
    def module_zygotes(self) -> dict[str, ModuleZygote]:
        return dict(self._modules)

    def close(self) -> None:
        for zygote in self.module_zygotes.values():
            zygote.close()
        self.connection.close()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.output.retire()


class ModuleZygote:
    """The zygote of one target module: it imported that module and nothing else's."""

    def __init__(self, base: Zygote, module: str) -> None:
        self.module = module
        parent_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.output = _output.outputs(f"zygote {module}")
        try:
            with zygote_end:
                fds = [Fd(zygote_end), Fd(self.output.stdout_w), Fd(self.output.stderr_w)]
                self.pid = int(
                    base.connection.call("fork_module", [module, *fds], timeout=START_TIMEOUT)
                )
            # Our base's unreaped child until its next request: the pidfd is that process.
            self._pidfd = os.pidfd_open(self.pid)
        except BaseException:
            parent_end.close()
            self.output.retire()
            raise
        self.connection = _control_connection(
            parent_end, self.output, f"zygote {module}", base.max_message
        )

    @property
    def alive(self) -> bool:
        if self._pidfd < 0 or self.connection.failure is not None:
            return False
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return not poller.poll(0)

    def spawn(self, spec: dict[str, Any]) -> int:
        try:
            return int(self.connection.call("spawn", [spec], timeout=START_TIMEOUT))
        except RuntimeError as exc:
            if type(exc) is not RuntimeError or str(exc) != IMPORT_TIME_CALL:
                raise
        message = import_time_call_message(str(spec["name"]), self.module, main_path())
        raise BootstrapError(message) from None

    def reap(self, pid: int) -> tuple[int, int] | None:
        """(exit code, signal) of an exited child, or None if it still runs."""
        status = self.connection.call("wait", [pid], timeout=START_TIMEOUT)
        return None if status is None else (int(status[0]), int(status[1]))

    def ping(self) -> int:
        return int(self.connection.call("ping", [], timeout=START_TIMEOUT))

    def close(self) -> None:
        """Closing the control socket ends it (the base zygote reaps it)."""
        self.connection.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        self.output.retire()


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def get_zygote(max_message: int) -> Zygote:
    global _zygote
    with _zygote_lock:
        if _zygote is None or not _zygote.alive:
            if _zygote is not None:
                with contextlib.suppress(Exception):
                    _zygote.close()
            _zygote = Zygote(max_message)
        return _zygote


def zygote_for(module: str, max_message: int) -> ModuleZygote:
    """The zygote that forks compartments of ``module``."""
    missing = _seccomp.missing()
    if missing is not None:  # no compartment could be sealed: refuse before forking any
        raise missing
    if importing() is not None:  # a zygote importing its module: it would import it again
        raise ImportTimeCall(IMPORT_TIME_CALL)
    return get_zygote(max_message).for_module(module)


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

    def __init__(
        self, name: str, pid: int, zygote: ModuleZygote, output: _output.Outputs | None = None
    ) -> None:
        self.name = name
        self.pid = pid
        self._zygote = zygote
        self._output = output
        self._pidfd = os.pidfd_open(pid)
        self._status: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._reap_lock = threading.Lock()
        self.killed_because = ""
        _live_children.add(self)

    def forget(self) -> None:
        """In a forked copy of the parent: this process is not ours to kill or reap."""
        self._lock = threading.Lock()
        self._reap_lock = threading.Lock()
        if self._pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = -1
        self._status = self._status or (-1, 0)

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
        """Wait up to ``grace`` for a voluntary exit, then kill; always collects the zombie.

        One reaper at a time: two callers failing at once (the reader and a sender) would
        both ask the zygote, and the loser, finding the pid reaped, took it for SIGKILL."""
        with self._reap_lock:
            return self._reap(grace)

    def _reap(self, grace: float) -> tuple[int, int]:
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
            output, self._output = self._output, None
        if output is not None:
            output.retire()  # gone: what it printed is relayed, its pipes closed
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


def _forget_in_child() -> None:
    """A forked copy of the parent must not kill, reap or talk to the parent's zygotes and
    compartments (its exit would run ``_stop_everything`` on them): it drops its copies
    of their handles, and what it starts later is its own."""
    global _zygote, _zygote_lock
    _zygote, _zygote_lock = None, threading.Lock()
    for child in list(_live_children):
        child.forget()
    _live_children.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def new_connection(
    child_end: socket.socket,
    name: str,
    max_message: int,
    on_notification: Callable[[str, list[Any]], None],
) -> SettlingConnection:
    return SettlingConnection(
        Channel(child_end, name=name),
        name=name,
        max_message=max_message,
        on_notification=on_notification,
    )


#: Run first when everything stops: ``_supervised`` closes its compartments here (it
#: imports this module, so it hands the step in rather than being imported).
_before_stopping: list[Callable[[], None]] = []


def before_stopping(step: Callable[[], None]) -> None:
    """Run ``step`` at exit before the remaining children are killed."""
    _before_stopping.append(step)


@atexit.register
def _stop_everything() -> None:
    for step in _before_stopping:
        step()
    for child in list(_live_children):
        child.kill("the parent is exiting")
        child.reap(0)
    global _zygote
    if _zygote is not None:
        _zygote.close()
        _zygote = None
    _output.relay().flush(1.0)  # the last lines reach the parent's streams before exit
