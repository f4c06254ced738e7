"""The processes of one isolated run, in order: the outer process that unshares, the
namespace's init that builds the root and reaps, and the worker that calls the function.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import NoReturn

import msgpack

from .._privileges import drop_capabilities, set_no_new_privs
from ._namespaces import (
    Plan,
    build_root,
    pivot_into,
    set_parent_death_signal,
    unshare_namespaces,
    write_id_maps,
)
from ._results import SETUP_FAILED, STATUS, VALUE, send, send_error

__all__ = ["close_fds_except", "die_with_parent", "outer", "reap_until"]


def die_with_parent(parent: int | None) -> None:
    """SIGKILL us when our parent goes; ``parent=None`` where getppid() cannot tell."""
    set_parent_death_signal(signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(SETUP_FAILED)


def close_fds_except(keep: Iterable[int]) -> None:
    # Never call closerange(n, n): CPython turns it into close_range(n, UINT_MAX).
    start = 0
    for fd in sorted(set(keep)):
        if fd > start:
            os.closerange(start, fd)
        start = max(start, fd + 1)
    os.closerange(start, max(os.sysconf("SC_OPEN_MAX"), start + 1))


def outer(plan: Plan, caller: int, control: int, stdout: int, stderr: int,
           call: Callable[[], object]) -> NoReturn:
    """First child: unshare, map ids, fork init and pass on its fate."""
    stage = "setup"
    try:
        die_with_parent(caller)
        if plan.capture:
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
        close_fds_except({0, 1, 2, control, *plan.pass_fds})
        uid, gid = os.getuid(), os.getgid()
        stage = "unshare"
        unshare_namespaces(plan.network)
        stage = "uid/gid map"
        write_id_maps(uid, gid)
        stage = "fork init"
        init = os.fork()
        if init == 0:
            _init(plan, control, call)
        _, status = os.waitpid(init, 0)
        if status != 0:  # init died before reporting the worker's status
            send(control, STATUS, struct.pack("<i", status))
    except BaseException as exc:
        send_error(control, exc, stage)
        os._exit(SETUP_FAILED)
    os._exit(0)


def _init(plan: Plan, control: int, call: Callable[[], object]) -> NoReturn:
    """pid 1 of the new namespace: build the root, start the worker, reap."""
    stage = "mount"
    try:
        die_with_parent(None)  # the parent lives outside our PID namespace: getppid() == 0
        build_root(plan)
        stage = "pivot_root"
        pivot_into(plan.root, plan.pivot_root_nr)
        stage = "sethostname"
        socket.sethostname(plan.hostname)
        stage = "fork worker"
        worker = os.fork()
        if worker == 0:
            _worker(control, call)
        status = reap_until(worker)
        send(control, STATUS, struct.pack("<i", status))
    except BaseException as exc:
        send_error(control, exc, stage)
        os._exit(SETUP_FAILED)
    os._exit(0)


def reap_until(worker: int) -> int:
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == worker:
            return status


def _worker(control: int, call: Callable[[], object]) -> NoReturn:
    """pid 2: shed privileges, run the callable, send its value."""
    try:
        drop_capabilities()
        set_no_new_privs()
    except BaseException as exc:
        send_error(control, exc, "drop privileges")
        os._exit(SETUP_FAILED)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True,
                                  errors="backslashreplace")
    if faulthandler.is_enabled():  # it may point at an fd we closed
        faulthandler.enable(sys.stderr)
    code = 0
    try:
        payload = msgpack.packb(call(), use_bin_type=True)
        send(control, VALUE, payload)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    os._exit(code)
