"""Reads under the import roots, served by the parent to its sealed compartments.

A sealed compartment may not open files, yet CPython reads files long after startup:
modules imported inside functions, codecs, package data, dist-info. The violation
monitor answers those requests itself, as Chromium's syscall broker and OpenSSH's
monitor do, and trusts nothing the compartment sends:

- It reads the path from the task's memory **once**, resolves it against the task's
  cwd or dirfd as the kernel shows them in ``/proc``, normalizes it, and acts only on
  that string: the task rewriting its buffer afterwards changes nothing.
- Only a path lexically under an import root (``_roots``) is served, and the parent
  opens **its own copy** with ``openat2(root, rest, RESOLVE_BENEATH |
  RESOLVE_NO_MAGICLINKS)``: no ``..``, symlink or magic link leads outside that root.
  Opens are read-only, of regular files and directories only; the copy is installed in
  the task's import block (fds 128-191, ``rulesets.runtime``) with
  ``SECCOMP_IOCTL_NOTIF_ADDFD``, which answers the syscall in the same step. The filter
  allows reading there and nowhere else. ADDFD waits for the task to run, so it is done
  on the compartment's own installer thread (``_installer``), never the monitor's.
- ``stat``/``lstat``/``newfstatat``, ``readlink``, ``access`` are emulated: the parent
  stats its copy and writes the result where the task asked, as the kernel would have.
  So is glibc's ``fstat``, ``newfstatat(fd, "", AT_EMPTY_PATH)``, on an import-block fd:
  the filter cannot grant it, since it cannot tell an empty path from ``/etc/shadow``.
  The directories above the roots may be stat-ed (not listed or opened): realpath() and
  Path.resolve() lstat every component.

A compartment in mount namespaces of its own (``Isolate``) is served absolute paths
only: the parent's copy of a root is what an Isolate binds there (or what it could read
anyway), while its cwd and dirfds name mounts the parent does not see.

Anything else, writes under the roots included, is not served: it stays a denied
syscall, reported as a violation naming the path. Nothing here is a CONTINUE: the
kernel never re-reads a path the task could have changed.

Where the kernel or the parent's rights fall short (no ADDFD send, before Linux 5.14; a
compartment whose memory the parent cannot read), requests are not served, imports fail
with an error naming the module, and :func:`mode` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import platform
import stat
import struct
from collections.abc import Callable

from .._policy import _roots, _seccomp
from ..rulesets.runtime import IMPORT_FD_BASE, IMPORT_FD_LIMIT
from . import _installer
from ._broker_requests import (
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    W_OK,
    Request,
    parse,
    signed32,
)
from ._memory import TaskMemory

__all__ = ["Request", "mode", "parse", "serve"]

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}


# -- serving ---------------------------------------------------------------------------


class _Unavailable(Exception):
    """This kernel or these rights cannot serve: the request becomes a plain denial."""


_unavailable: dict[str, str] = {}


def serve(
    listener: int, notification: _seccomp.Notification, request: Request, memory: TaskMemory,
    owner: object | None = None,
) -> bool:  # fmt: skip
    """Answer a servable request; False if it could not be served (a denial, then).

    ``owner`` (the monitor's object for this listener): install opened fds on that
    compartment's own installer thread (``_installer``), not this one.
    """
    if _unavailable:
        return False
    try:
        if request.kind == "open":
            return _serve_open(listener, notification, request, owner)
        return _serve_metadata(listener, notification, request, memory)
    except _Unavailable as exc:
        _unavailable.setdefault("reason", str(exc))
        return False


def _answer(listener: int, notification: _seccomp.Notification, error: int = 0,
            value: int = 0) -> bool:  # fmt: skip
    _seccomp.respond(listener, notification.id, error=error, value=value)
    return True


def _serve_open(listener: int, notification: _seccomp.Notification, request: Request,
                owner: object | None) -> bool:  # fmt: skip
    flags = request.args[-1]
    wanted = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    wanted |= flags & (os.O_DIRECTORY | os.O_NOFOLLOW)
    if request.directory:
        wanted |= os.O_DIRECTORY
    try:
        fd = _open_beneath(request, wanted)
    except OSError as exc:
        return _refused(listener, notification, exc)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or not mode & stat.S_IROTH:
            # A device or fifo under a root is not what imports read; a file others may
            # not read is not the environment's to share (a root parent could open it).
            os.close(fd)
            return False
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    job = _installer.Job(notification.id, notification.pid, fd, bool(flags & os.O_CLOEXEC))
    if owner is None:
        try:
            _install(listener, job)
        finally:
            os.close(fd)
    else:
        _installer.submit(owner, listener, job, _install)  # now owns fd
    return True


def _install(listener: int, job: _installer.Job) -> None:
    """Put the parent's copy in the task's import block, answering its open with it
    (ADDFD waits until the task has run: on the compartment's installer thread)."""
    slot = _free_slot(job.pid)
    if slot is None:
        _installer.deny(listener, job.notification_id, errno.EMFILE)
        return
    try:
        _seccomp.add_fd(listener, job.notification_id, job.fd, at=slot, cloexec=job.cloexec)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTTY, errno.EOPNOTSUPP):
            _unavailable.setdefault("reason", f"SECCOMP_IOCTL_NOTIF_ADDFD: {exc.strerror}")
        _installer.deny(listener, job.notification_id, errno.EPERM)  # or the task died


def _refused(listener: int, notification: _seccomp.Notification, exc: OSError) -> bool:
    """A failed open or stat under a root is answered with its errno (ENOENT is how
    every import probes), except an escape from the root: that stays a denial."""
    if exc.errno in (errno.EXDEV, None):
        return False
    return _answer(listener, notification, exc.errno)


def _serve_metadata(listener: int, notification: _seccomp.Notification, request: Request,
                    memory: TaskMemory) -> bool:  # fmt: skip
    follow = request.kind in ("stat", "access")
    try:
        if request.kind == "fstat":  # what the task's own fd in its import block is
            try:
                result = os.stat(f"/proc/{notification.pid}/fd/{request.args[1]}")
            except FileNotFoundError:
                return _answer(listener, notification, errno.EBADF)
            link = None
        elif request.root is None:  # a directory above the roots: a fixed, known path
            result = os.stat(request.path, follow_symlinks=follow)
            link = os.readlink(request.path) if stat.S_ISLNK(result.st_mode) else None
        else:
            fd = _open_beneath(request, os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
            try:
                result = os.fstat(fd)
                link = _readlink_fd(fd) if stat.S_ISLNK(result.st_mode) else None
            finally:
                os.close(fd)
    except OSError as exc:
        return _refused(listener, notification, exc)
    if request.directory and not stat.S_ISDIR(result.st_mode):
        return _answer(listener, notification, errno.ENOTDIR)
    if request.kind == "access":
        if request.args[0] & os.X_OK and not result.st_mode & 0o111:
            return _answer(listener, notification, errno.EACCES)
        return _answer(listener, notification, errno.EACCES if request.args[0] & W_OK else 0)
    if request.kind == "readlink":
        buffer, size = request.args[0], signed32(request.args[1])  # the kernel's int bufsiz
        if link is None or size <= 0:
            return _answer(listener, notification, errno.EINVAL)
        data = os.fsencode(link)[: min(size, 4096)]
        if not memory.write(buffer, data):
            return _answer(listener, notification, errno.EFAULT)
        return _answer(listener, notification, value=len(data))
    if not memory.write(request.args[0], _pack_stat(result)):
        return _answer(listener, notification, errno.EFAULT)
    return _answer(listener, notification)


# -- the parent's own copy ---------------------------------------------------------------


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]  # fmt: skip


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _open_beneath(request: Request, flags: int) -> int:
    """openat2(root, rest, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS): never outside the root."""
    assert request.root is not None
    number = _SYS_OPENAT2.get(platform.machine())
    if number is None:
        raise _Unavailable(f"openat2 on {platform.machine()}")
    rest = request.path[len(request.root) + 1 :] or "."  # root_of() checked the prefix
    how = _OpenHow(flags, 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    fd = _libc().syscall(number, _root_fd(request.root), os.fsencode(rest), ctypes.byref(how),
                         ctypes.sizeof(how))  # fmt: skip
    if fd < 0:
        code = ctypes.get_errno()
        if code == errno.ENOSYS:
            raise _Unavailable("openat2 (Linux 5.6)")
        raise OSError(code, os.strerror(code), request.path)
    return int(fd)


_root_fds: dict[str, int] = {}


def _root_fd(root: str) -> int:
    """An O_PATH fd of the root, opened once: only the monitor thread asks."""
    fd = _root_fds.get(root)
    if fd is None:
        fd = _root_fds[root] = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return fd


def _forget_in_child() -> None:
    """A forked copy serves nothing: it drops its copies of the root fds."""
    for fd in _root_fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _root_fds.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _readlink_fd(fd: int) -> str:
    buffer = ctypes.create_string_buffer(4096)
    size = _libc().readlinkat(fd, b"", buffer, len(buffer))
    if size < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return os.fsdecode(buffer.raw[:size])


def _free_slot(pid: int) -> int | None:
    """The lowest free number of the task's import block (only the broker fills it)."""
    try:
        used = {int(name) for name in os.listdir(f"/proc/{pid}/fd") if name.isdigit()}
    except OSError:
        return None
    return next((n for n in range(IMPORT_FD_BASE, IMPORT_FD_LIMIT) if n not in used), None)


# struct stat on x86_64: dev, ino, nlink (u64), mode, uid, gid (u32), pad, rdev, size,
# blksize, blocks, then (sec, nsec) for atime, mtime, ctime, and 3 reserved longs.
_STAT_X86_64 = struct.Struct("=QQQIIIiQqqq6q24x")


def _pack_stat(result: os.stat_result) -> bytes:
    if platform.machine() != "x86_64":
        raise _Unavailable(f"stat emulation on {platform.machine()}")
    times: list[int] = []
    for ns in (result.st_atime_ns, result.st_mtime_ns, result.st_ctime_ns):
        times += divmod(ns, 1_000_000_000)
    return _STAT_X86_64.pack(
        result.st_dev, result.st_ino, result.st_nlink, result.st_mode, result.st_uid,
        result.st_gid, 0, result.st_rdev, result.st_size, result.st_blksize,
        result.st_blocks, *times,
    )  # fmt: skip


# -- what this machine supports -----------------------------------------------------------


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        numbers = platform.release().split("-", 1)[0].split(".")
        return (int(numbers[0]), int(numbers[1])) >= (major, minor)
    except (ValueError, IndexError):
        return False


def mode(can_read_memory: Callable[[], bool] | None = None) -> tuple[bool, str]:
    """Whether sealed compartments here get the import roots served, and why (not).

    When not, compartments preload the stdlib codecs before the seal and any other
    lazy import fails with an error naming the module.
    """
    if platform.machine() != "x86_64":
        return False, f"the broker emulates stat only on x86_64, not {platform.machine()}"
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as actions:
            if "user_notif" not in actions.read().split():
                return False, "the kernel has no seccomp user notification"
    except OSError:
        return False, "the kernel reports no seccomp actions"
    if not _kernel_at_least(5, 14):
        return False, f"Linux {platform.release()} has no SECCOMP_ADDFD_FLAG_SEND (5.14)"
    if _unavailable:
        return False, _unavailable["reason"]
    if can_read_memory is not None and not can_read_memory():
        return False, "the parent cannot read its compartments' memory"
    roots = ", ".join(_roots.import_roots())
    return True, f"served by the parent (user notification + ADDFD): {roots}"
