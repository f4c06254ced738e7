"""The zygote: a clean interpreter that imports once and forks compartments on demand.

It is started with a scrubbed environment and holds nothing of the parent's but the
module search path, so a compartment forked from it inherits none of the parent's
memory, secrets or fds. Children are reaped only when the parent asks, so a pid stays
valid (a zombie at worst) until the parent has read its exit status.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import runpy
import signal
import socket
import sys
from types import ModuleType
from typing import Any

MAIN_ALIAS = "__mp_main__"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

#: Compartments whose exit status the parent has not collected yet: never reaped behind
#: its back, since the zombie keeps the pid (and the parent's pidfd) meaning that process.
_spawned: set[int] = set()

_main_path: str | None = None


def _prctl(option: int, value: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def import_target_module(module: str) -> ModuleType:
    """The module a target lives in; the parent's ``__main__`` is re-run as a module."""
    if module in ("__main__", MAIN_ALIAS):
        loaded = sys.modules.get(MAIN_ALIAS)
        if loaded is None:
            if _main_path is None:
                raise ImportError("the parent's __main__ has no file to import from")
            namespace = runpy.run_path(_main_path, run_name=MAIN_ALIAS)
            loaded = ModuleType(MAIN_ALIAS)
            loaded.__dict__.update(namespace)
            sys.modules[MAIN_ALIAS] = loaded
        return loaded
    return importlib.import_module(module)


def _spawn(params: list[Any], _channel: object) -> int:
    from . import _child

    (spec,) = params
    if not isinstance(spec, dict):
        raise TypeError("spawn takes one spec mapping")
    import_target_module(str(spec["module"]))  # before fork: later forks reuse it
    zygote_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _child.run(spec, zygote_pid)  # never returns
    _child.close_spec_fds(spec)
    _spawned.add(pid)
    return pid


def _wait(params: list[Any], _channel: object) -> list[int] | None:
    """[exit code, signal number] once the child has exited, else None."""
    (pid,) = params
    done, status = os.waitpid(int(pid), os.WNOHANG)
    if not done:
        return None
    _spawned.discard(done)
    if os.WIFSIGNALED(status):
        return [-1, os.WTERMSIG(status)]
    return [os.WEXITSTATUS(status), 0]


def _ping(_params: list[Any], _channel: object) -> int:
    return os.getpid()


_HANDLERS = {"spawn": _spawn, "wait": _wait, "ping": _ping}


def _reap_orphans() -> None:
    """Reap descendants orphaned to us (an isolated compartment's namespace init)."""
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


def main() -> None:
    global _main_path
    control_fd = int(sys.argv[1])
    config = json.loads(sys.argv[2])
    _main_path = config.get("main_path")
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphaned descendants come to us, not to init
    if os.getppid() != config["parent_pid"]:
        os._exit(1)  # the parent died before we could arm PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle

    import encodings.idna  # noqa: F401 - sockets look it up lazily; sealed, that open fails

    from . import _child  # noqa: F401 - import everything compartments need, once
    from ._channel import Channel
    from ._server import Server

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=control_fd)
    Server(Channel(sock, name="zygote"), _handle, max_message=config["max_message"]).serve_forever()
    os._exit(0)


if __name__ == "__main__":
    main()
