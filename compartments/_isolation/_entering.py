"""Entering an Isolate for good (``@compartment(isolate=...)``): the calling process
becomes the shim that waits outside, and returns from ``enter`` as pid 2 inside.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
from typing import NoReturn

from ._processes import close_fds_except, die_with_parent, reap_until
from ._results import SETUP_FAILED

# ``Isolate.enter`` is for a process that must *keep running* isolated, e.g. a
# compartment's RPC server, rather than return one value.  CLONE_NEWPID only applies to
# children, so three processes take part, as in ``run``:
#
# * the **shim** is the process that called ``enter``: whoever supervises it (by pid or
#   pidfd) keeps supervising it.  It unshares, maps ids, forks ``init``, closes every fd
#   and waits; then it exits the way the isolated process did, dying of the same signal
#   if it was killed.  Any fatal signal sent to the shim (SIGKILL on a timeout) kills
#   init through PDEATHSIG, and init's death kills everything in the namespace.
# * **init** (pid 1) only reaps, and reports the isolated process's wait status to the
#   shim through a pipe (pid 1 cannot die of a signal it sends itself).
# * the **isolated process** (pid 2), forked from init, builds the root, pivots into it
#   and returns from ``enter``: the caller's code continues there with its fds intact
#   (``keep_fds``), still holding every capability of the new user namespace.  Being
#   pid 2 keeps the usual signal rules (pid 1 ignores its own SIGKILL, abort()...).

__all__ = ["entered_init", "exit_like", "shim"]


def exit_like(status: int) -> NoReturn:
    """End this process the way the process with wait status ``status`` ended."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL/SIGSTOP have no handler
            signal.signal(signum, signal.SIG_DFL)
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # a signal whose default action is not to terminate
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else SETUP_FAILED)


def shim(init: int, status_r: int, status_w: int) -> NoReturn:
    """The entering process, outside the PID namespace: wait, then end like pid 2."""
    try:
        os.close(status_w)
        close_fds_except({status_r})
        with contextlib.suppress(OSError, ValueError):
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # mirroring SIGSEGV dumps nothing
        _, init_status = os.waitpid(init, 0)
        os.set_blocking(status_r, False)
        try:
            report = os.read(status_r, _STATUS_SIZE)
        except BlockingIOError:
            report = b""
        status = struct.unpack("<i", report)[0] if len(report) == _STATUS_SIZE else init_status
    except BaseException:
        os._exit(SETUP_FAILED)
    exit_like(status)


_STATUS_SIZE = 4


def entered_init(status_r: int, status_w: int) -> None:
    """pid 1: fork the isolated process (which returns) and reap until it ends."""
    try:
        os.close(status_r)
        die_with_parent(None)  # the shim is outside our PID namespace: getppid() == 0
        poller = select.poll()
        poller.register(status_w, select.POLLOUT)
        if any(event & select.POLLERR for _, event in poller.poll(0)):
            os._exit(SETUP_FAILED)  # the shim died before PDEATHSIG was armed
        worker = os.fork()
    except BaseException:
        os._exit(SETUP_FAILED)
    if worker == 0:
        os.close(status_w)
        return
    try:
        close_fds_except({status_w})
        status = reap_until(worker)
        _send_status(status_w, status)
    except BaseException:
        os._exit(SETUP_FAILED)
    os._exit(0)


def _send_status(fd: int, status: int) -> None:
    os.write(fd, struct.pack("<i", status))
