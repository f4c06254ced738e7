"""Installing the broker's fds in a compartment, off the violation monitor's thread.

``SECCOMP_IOCTL_NOTIF_ADDFD`` returns only once the target thread has run and installed
the fd. A compartment that keeps its requesting thread off the CPU (pinned beside a
hundred busy threads) made every served open hold the monitor thread, and with it every
other compartment's reports and reads: 80 ms a request, 0.8 s at worst (measured with
128 busy threads). So each compartment gets an installer thread of its own, started on
demand and gone once idle: a stalled install stalls only that compartment's opens.

Each waiting open holds one of the parent's fds (its copy of the file), so a
compartment may have ``MAX_QUEUED`` opens waiting (its import block's size: more could
not all be installed) and all compartments together ``MAX_QUEUED_IN_ALL``; beyond that
an open fails at once with EMFILE, as with a full block. An installer holds a duplicate
of its listener, so the listener it answers on is the one the request came from, even
if the monitor has closed its own copy and the number was reused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_QUEUED", "MAX_QUEUED_IN_ALL", "Job", "deny", "submit"]

MAX_QUEUED = 64
MAX_QUEUED_IN_ALL = 256
IDLE_SECONDS = 0.5

# struct seccomp_notif_resp { __u64 id; __s64 val; __s32 error; __u32 flags; }
_RESPONSE = struct.Struct("=QqiI")
_SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp)


@dataclass(frozen=True)
class Job:
    """One open to install: the parent's copy (``fd``, closed once done) for ``pid``."""

    notification_id: int
    pid: int
    fd: int
    cloexec: bool


#: install(listener, job): ADDFD, or answer the notification with an error.
Install = Callable[[int, Job], None]


def deny(listener: int, notification_id: int, error: int) -> None:
    """Answer a notification with ``error`` (no libseccomp buffers: any thread may)."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(listener, _SECCOMP_IOCTL_NOTIF_SEND,
                    bytearray(_RESPONSE.pack(notification_id, 0, -error, 0)))  # fmt: skip


class _Installer:
    def __init__(self, owner: object, listener: int, install: Install) -> None:
        self.owner = owner  # kept alive, so that its id() stays this installer's key
        self.listener = os.dup(listener)
        self.install = install
        self.jobs: deque[Job] = deque()
        self.current: Job | None = None  # being installed
        self.ready = threading.Condition(_lock)
        self.thread = threading.Thread(target=self._run, name="compartments-installer",
                                       daemon=True)  # fmt: skip

    def _run(self) -> None:
        try:
            while (job := self._next()) is not None:
                self.current = job
                try:
                    self.install(self.listener, job)
                except Exception:  # an install is not worth the compartment's others
                    deny(self.listener, job.notification_id, errno.EPERM)
                finally:
                    self.current = None
                    os.close(job.fd)
                    _done()
        finally:
            os.close(self.listener)

    def _next(self) -> Job | None:
        with _lock:
            if not self.jobs:
                self.ready.wait(IDLE_SECONDS)
            if not self.jobs:
                del _installers[id(self.owner)]
                return None
            return self.jobs.popleft()


_lock = threading.Lock()
_installers: dict[int, _Installer] = {}
_queued = [0]  # jobs submitted and not yet done, in all installers


def _done() -> None:
    with _lock:
        _queued[0] -= 1


def _forget_in_child() -> None:
    """A forked copy of the parent has no installer threads: it closes their listeners
    and files, which would otherwise keep the compartments' listeners open (their
    notifications unanswered) for as long as the fork lives."""
    global _lock
    inherited = list(_installers.values())
    _lock = threading.Lock()
    _installers.clear()
    _queued[0] = 0
    for installer in inherited:
        jobs = [*installer.jobs, *([installer.current] if installer.current else [])]
        for fd in (installer.listener, *(job.fd for job in jobs)):
            with contextlib.suppress(OSError):
                os.close(fd)


os.register_at_fork(after_in_child=_forget_in_child)


def _start(owner: object, listener: int, install: Install) -> _Installer | None:
    """A new installer for ``owner`` (called with ``_lock`` held), or None if the parent
    has no fd or thread left for one."""
    try:
        installer = _Installer(owner, listener, install)
    except OSError:
        return None
    try:
        installer.thread.start()
    except RuntimeError:
        os.close(installer.listener)
        return None
    _installers[id(owner)] = installer
    return installer


def submit(owner: object, listener: int, job: Job, install: Install) -> None:
    """Install ``job`` for the compartment ``owner`` (its listener object) on its own
    thread; takes ownership of ``job.fd``. Answers EMFILE at once if too many wait."""
    refused = 0
    with _lock:
        installer = _installers.get(id(owner))
        if _queued[0] >= MAX_QUEUED_IN_ALL or (
            installer is not None and len(installer.jobs) >= MAX_QUEUED
        ):
            installer, refused = None, errno.EMFILE
        elif installer is None:
            installer = _start(owner, listener, install)
            refused = 0 if installer is not None else errno.EMFILE
        if installer is not None:
            _queued[0] += 1
            installer.jobs.append(job)
            installer.ready.notify()
    if refused:
        deny(listener, job.notification_id, refused)
        os.close(job.fd)
