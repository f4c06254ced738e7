"""What a notification asks the broker for: a read-only open, stat or access under the
import roots, parsed from the syscall's arguments and the stopped task's memory.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from .._policy import _roots
from ..rulesets.runtime import IMPORT_FD_BASE, IMPORT_FD_LIMIT
from ._memory import TaskMemory

__all__ = [
    "RESOLVE_BENEATH",
    "RESOLVE_NO_MAGICLINKS",
    "SERVED_OPEN_FLAGS",
    "W_OK",
    "Request",
    "parse",
    "signed32",
]


_AT_FDCWD = -100


_AT_SYMLINK_NOFOLLOW = 0x100


_AT_EMPTY_PATH = 0x1000


_AT_NO_AUTOMOUNT = 0x800


_FSTATAT_FLAGS = _AT_SYMLINK_NOFOLLOW | _AT_NO_AUTOMOUNT | _AT_EMPTY_PATH


RESOLVE_NO_MAGICLINKS = 0x02


RESOLVE_BENEATH = 0x08


W_OK = os.W_OK


#: Open flags a served open may carry: read-only, and nothing that writes or creates.
_O_LARGEFILE = 0o100000


SERVED_OPEN_FLAGS = (
    os.O_CLOEXEC | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | _O_LARGEFILE
)


# syscall -> (dirfd argument or None, path argument, what it is)
_CALLS: dict[str, tuple[int | None, int, str]] = {
    "open": (None, 0, "open"), "openat": (0, 1, "open"),
    "stat": (None, 0, "stat"), "lstat": (None, 0, "lstat"), "newfstatat": (0, 1, "stat"),
    "readlink": (None, 0, "readlink"), "readlinkat": (0, 1, "readlink"),
    "access": (None, 0, "access"), "faccessat": (0, 1, "access"),
    "faccessat2": (0, 1, "access"),
}  # fmt: skip


@dataclass(frozen=True)
class Request:
    """What a notification asks, decoded once from the task's memory."""

    kind: str  # open, stat, lstat, readlink, access, fstat (of an import-block fd)
    path: str  # absolute, normalized: the only path ever acted on ("" for fstat)
    root: str | None  # the import root it lies under, if any
    args: tuple[int, ...]  # fstat: (buffer, fd)
    directory: bool = False  # spelled with a trailing slash: only a directory will do

    @property
    def servable(self) -> bool:
        if self.kind == "fstat":
            return True
        if self.root is None:
            return self.kind != "open" and self.path in _roots.root_ancestors() and (
                self.kind != "access" or not self.args[-1] & W_OK
            )
        if self.kind == "open":
            flags = self.args[-1]
            return flags & os.O_ACCMODE == os.O_RDONLY and not flags & ~SERVED_OPEN_FLAGS
        return True


def signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def parse(syscall: str, args: tuple[int, ...], pid: int, memory: TaskMemory) -> Request | None:
    """The request, if ``syscall`` names a path the broker might serve; else None."""
    call = _CALLS.get(syscall)
    if call is None:
        return None
    dirfd_index, path_index, kind = call
    raw = memory.path(args[path_index])
    if raw is None:
        return None
    if syscall == "newfstatat":
        if args[3] & ~_FSTATAT_FLAGS:
            return None
        if not raw:
            return _fstat_request(args)
    if not raw:
        return None
    if kind == "stat" and dirfd_index is not None and args[3] & _AT_SYMLINK_NOFOLLOW:
        kind = "lstat"
    path = os.fsdecode(raw)
    if not path.startswith("/"):
        if not _same_mount_namespace(pid):
            return None  # an Isolate's cwd and fds name its own mounts, not ours
        base = _base_directory(pid, None if dirfd_index is None else signed32(args[dirfd_index]))
        if base is None:
            return None
        path = os.path.join(base, path)
    path = os.path.normpath(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    directory = raw.endswith(b"/")
    return Request(kind, path, _roots.root_of(path), _call_args(syscall, kind, args), directory)


def _fstat_request(args: tuple[int, ...]) -> Request | None:
    """newfstatat(fd, "", AT_EMPTY_PATH), glibc's fstat(): served for the import block
    only. The filter cannot grant it itself: it cannot see that the path is empty, and
    with a path the kernel resolves it (an absolute one anywhere, whatever the fd)."""
    fd = signed32(args[0])
    if not args[3] & _AT_EMPTY_PATH or not IMPORT_FD_BASE <= fd < IMPORT_FD_LIMIT:
        return None
    return Request("fstat", "", None, (args[2], fd))


def _call_args(syscall: str, kind: str, args: tuple[int, ...]) -> tuple[int, ...]:
    """The arguments after the path: (buffer[, size]) or (flags) or (mode)."""
    index = 1 if syscall in ("open", "stat", "lstat", "readlink", "access") else 2
    if kind == "readlink":
        return (args[index], args[index + 1])
    return (args[index],)


def _base_directory(pid: int, dirfd: int | None) -> str | None:
    link = f"/proc/{pid}/cwd" if dirfd in (None, _AT_FDCWD) else f"/proc/{pid}/fd/{dirfd}"
    if dirfd is not None and dirfd != _AT_FDCWD and dirfd < 0:
        return None
    try:
        base = os.readlink(link)
    except (OSError, ValueError):
        return None
    # The kernel's view of the directory; "socket:[1]", "/x (deleted)" and the like
    # are not directories to resolve against.
    if not base.startswith("/") or base.endswith(" (deleted)"):
        return None
    return base


def _same_mount_namespace(pid: int) -> bool:
    """Relative paths mean the same to the task as to us (an Isolate has mounts of its own)."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino == _own_mount_namespace()
    except OSError:
        return False


@functools.cache
def _own_mount_namespace() -> int:
    return os.stat("/proc/self/ns/mnt").st_ino
