"""The zygotes: clean interpreters that import once and fork compartments on demand.

The **base zygote** is started with a scrubbed environment, stdin on /dev/null and its
own output pipes, and holds nothing of the parent's but the module search path. It
imports only ``compartments`` itself, and it forks nothing but **module zygotes**: one
per target module, each of which imports its module and then forks that module's
compartments. So a compartment inherits the module it runs and nothing of any other.

What compartments of one module share, because each is a fork of the same module
zygote: whatever that module (and what it imports) did at import time, including
module-level state and caches, and the spawn requests of their earlier siblings (names,
rules, isolate settings: configuration the parent chose, never arguments). They share
nothing they *received*: constructor arguments and calls travel on each compartment's
own channel, after the fork, so no zygote ever decodes them. All Pool workers are
compartments of ``compartments._parent._pool``: they share only that, and import the modules
they were told to preload after the fork, each for itself.

The zygotes follow the parent *process*, not the thread that happened to start them
(``PR_SET_PDEATHSIG`` fires when that thread exits): each watches a pidfd of the parent
and its control socket, and exits when either says the parent is gone. Module zygotes
and compartments also die with their own zygote (PDEATHSIG on a single-threaded one).
Children are reaped only when the parent asks, so a pid stays valid (a zombie at worst)
until the parent has read its exit status.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import sys
from typing import Any, NoReturn

from .._policy import _roots
from .._wire._channel import Channel
from .._wire._fd import Fd
from . import _run, _sealed_imports, _sealing, _target
from ._server import Server
from ._target import IMPORT_TIME_CALL, ImportTimeCall, import_target_module, module_key

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

#: Compartments whose exit status the parent has not collected yet: never reaped behind
#: its back, since the zombie keeps the pid (and the parent's pidfd) meaning that process.
_spawned: set[int] = set()

#: The module this process forks compartments of; None in the base zygote.
_module: str | None = None
#: Readable once the parent process has exited (a pidfd); inherited by module zygotes.
_parent_watch = -1
_max_message = 0


def _prctl(option: int, value: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _flush_stdio() -> None:
    """Nothing buffered may be written twice, by us and by a child that inherits it."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _adopt_stdio(stdout: Fd, stderr: Fd) -> None:
    """Our own output pipes on fds 1 and 2 (stdin is already /dev/null)."""
    for fd, target in ((stdout, 1), (stderr, 2)):
        os.dup2(fd.fileno(), target)
        fd.close()


def _spawn(params: list[Any], _channel: object) -> int:
    (spec,) = params
    if not isinstance(spec, dict):
        raise TypeError("spawn takes one spec mapping")
    module = str(spec["module"])
    if _module is None or module_key(module) != _module:
        raise ValueError(f"this zygote forks compartments of `{_module}`, not of `{module}`")
    try:
        loaded = import_target_module(module)  # before fork: later forks reuse it
    except ImportTimeCall:
        raise RuntimeError(IMPORT_TIME_CALL) from None
    # Read the sources tracebacks show once here, not in every child's spawn path.
    _run.warm_sources(loaded)
    _flush_stdio()
    zygote_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _run.run(spec, zygote_pid)  # never returns
    _run.close_spec_fds(spec)
    _spawned.add(pid)
    return pid


def _fork_module(params: list[Any], channel: Any) -> int:
    """Fork the zygote of one target module; it serves on the control socket sent."""
    module, control, stdout, stderr = params
    if _module is not None:
        raise PermissionError("only the base zygote forks module zygotes")
    if not isinstance(module, str) or not all(isinstance(fd, Fd) for fd in params[1:]):
        raise TypeError("fork_module takes a module name, a control Fd and two output Fds")
    _flush_stdio()
    base_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _run_module_zygote(module_key(module), control, stdout, stderr, base_pid, channel)
    for fd in (control, stdout, stderr):
        fd.close()
    return pid


def _run_module_zygote(
    module: str, control: Fd, stdout: Fd, stderr: Fd, base_pid: int, base_channel: Any
) -> NoReturn:
    global _module
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the base zygote is single-threaded
        if os.getppid() != base_pid:
            os._exit(1)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)  # not inherited across fork: ask again
        _adopt_stdio(stdout, stderr)
        base_channel.close()  # our copy of the base's control socket: never ours to use
        _module = module
        _spawned.clear()  # the base's children are not ours
        _close_fds_except({0, 1, 2, control.fileno(), _parent_watch})
        _serve(socket.socket(fileno=control.detach()), "zygote " + module)
    except BaseException:
        os._exit(70)
    os._exit(0)


def _close_fds_except(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            with contextlib.suppress(OSError):  # the listing's own fd, already gone
                os.close(int(name))


def _wait(params: list[Any], _channel: object) -> list[int] | None:
    """[exit code, signal number] once the child has exited, else None."""
    (pid,) = params
    if int(pid) not in _spawned:
        raise ChildProcessError(f"pid {int(pid)} is not a compartment of this zygote")
    done, status = os.waitpid(int(pid), os.WNOHANG)
    if not done:
        return None
    _spawned.discard(done)
    if os.WIFSIGNALED(status):
        return [-1, os.WTERMSIG(status)]
    return [os.WEXITSTATUS(status), 0]


def _ping(_params: list[Any], _channel: object) -> int:
    return os.getpid()


_HANDLERS = {"spawn": _spawn, "fork_module": _fork_module, "wait": _wait, "ping": _ping}


def _reap_orphans() -> None:
    """Reap descendants orphaned to us (an isolated compartment's namespace init) and,
    in the base zygote, module zygotes that have exited."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as listing:
            children = [int(pid) for pid in listing.read().split()]
    except OSError:
        return
    for pid in children:
        if pid not in _spawned:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _handle(method: str, params: list[Any], channel: object) -> Any:
    _reap_orphans()  # between requests: no spawn is half-recorded here
    handler = _HANDLERS.get(method)
    if handler is None:
        raise AttributeError(f"the zygote has no method `{method}`")
    return handler(params, channel)


class _ZygoteServer(Server):
    def serve_while_parent_lives(self, watch: int) -> None:
        """Serve until the control socket closes or ``watch`` (a pidfd) says the parent
        process has exited, whichever comes first."""
        poller = select.poll()
        poller.register(self.primary.fileno(), select.POLLIN)
        poller.register(watch, select.POLLIN)
        while True:
            ready = [fd for fd, _ in poller.poll()]
            if watch in ready or not self._serve_one_read(self.primary, nonblocking=True):
                return


def _serve(sock: socket.socket, name: str) -> None:
    """Answer the parent until it closes the control socket or exits."""
    server = _ZygoteServer(Channel(sock, name=name), _handle, max_message=_max_message)
    server.serve_while_parent_lives(_parent_watch)


def main() -> None:
    global _parent_watch, _max_message
    control_fd = int(sys.argv[1])
    config = json.loads(sys.argv[2])
    _target.set_main_path(config.get("main_path"))
    _max_message = int(config["max_message"])
    # A pidfd, not PDEATHSIG: that fires when the parent *thread* that forked us exits.
    _parent_watch = os.pidfd_open(int(config["parent_pid"]))
    if os.getppid() != config["parent_pid"]:
        os._exit(1)  # the parent died before we could watch it (the pidfd may be another's)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphaned descendants come to us, not to init
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle

    import encodings.idna  # noqa: F401 - sockets look it up lazily: spare the broker

    served, reason = config.get("imports", (False, "not told"))
    _sealed_imports.configure(bool(served), str(reason))
    _roots.warm()
    # Warm what every seal builds (the base and runtime RuleSets, syscall numbers), so
    # that a fresh fork does not build it again on its spawn path.
    _sealing.sealing_context([], os.getpid())._build(tsync=True)

    _serve(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=control_fd), "zygote")
    os._exit(0)


if __name__ == "__main__":
    main()
