"""A denied syscall's arguments as text, as strace shows them: flags and socket kinds by
name, and paths and addresses read from the stopped task, quoted and escaped.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence

from .._text import printable
from ._memory import TaskMemory as _Memory

__all__ = ["PATH_ARG", "decode", "open_flags", "signed", "socket_kind"]

_O_FLAGS = [
    (os.O_WRONLY, "O_WRONLY"), (os.O_RDWR, "O_RDWR"), (os.O_CREAT, "O_CREAT"),
    (os.O_EXCL, "O_EXCL"), (os.O_NOCTTY, "O_NOCTTY"), (os.O_TRUNC, "O_TRUNC"),
    (os.O_APPEND, "O_APPEND"), (os.O_NONBLOCK, "O_NONBLOCK"), (os.O_DSYNC, "O_DSYNC"),
    (os.O_DIRECTORY, "O_DIRECTORY"), (os.O_NOFOLLOW, "O_NOFOLLOW"),
    (os.O_CLOEXEC, "O_CLOEXEC"), (os.O_SYNC & ~os.O_DSYNC, "O_SYNC"),
    (0o20000000, "__O_TMPFILE"), (os.O_PATH, "O_PATH"),
]  # fmt: skip
_CLONE_FLAGS = [
    (0x100, "CLONE_VM"), (0x200, "CLONE_FS"), (0x400, "CLONE_FILES"),
    (0x800, "CLONE_SIGHAND"), (0x4000, "CLONE_VFORK"), (0x8000, "CLONE_PARENT"),
    (0x10000, "CLONE_THREAD"), (0x20000, "CLONE_NEWNS"), (0x80000, "CLONE_SETTLS"),
    (0x02000000, "CLONE_NEWCGROUP"), (0x04000000, "CLONE_NEWUTS"),
    (0x08000000, "CLONE_NEWIPC"), (0x10000000, "CLONE_NEWUSER"),
    (0x20000000, "CLONE_NEWPID"), (0x40000000, "CLONE_NEWNET"), (0x80, "CLONE_NEWTIME"),
]  # fmt: skip
_FAMILIES = {
    v: k for k, v in sorted(vars(socket).items()) if k.startswith("AF_") and isinstance(v, int)
}
# Aliases share a number; name each family the way its users do.
_FAMILIES.update({socket.AF_UNIX: "AF_UNIX", socket.AF_NETLINK: "AF_NETLINK"})
_TYPES: dict[int, str] = {
    socket.SOCK_STREAM: "SOCK_STREAM", socket.SOCK_DGRAM: "SOCK_DGRAM",
    socket.SOCK_RAW: "SOCK_RAW", socket.SOCK_SEQPACKET: "SOCK_SEQPACKET",
    socket.SOCK_RDM: "SOCK_RDM",
}  # fmt: skip
_AT_FDCWD = 0xFFFFFFFFFFFFFF9C
PATH_ARG = {
    "open": 0, "openat": 1, "openat2": 1, "stat": 0, "lstat": 0, "newfstatat": 1,
    "statx": 1, "access": 0, "faccessat": 1, "faccessat2": 1, "execve": 0, "execveat": 1,
    "unlink": 0, "unlinkat": 1, "mkdir": 0, "mkdirat": 1, "rmdir": 0, "chdir": 0,
    "readlink": 0, "readlinkat": 1, "truncate": 0, "chmod": 0, "chown": 0, "creat": 0,
    "rename": 0, "renameat": 1, "renameat2": 1, "link": 0, "symlink": 0, "mount": 1,
    "chroot": 0, "umount2": 0,
}  # fmt: skip


def _flag_names(value: int, table: Sequence[tuple[int, str]], rest: str = "") -> str:
    names = [name for bit, name in table if bit and value & bit == bit]
    known = functools.reduce(lambda acc, item: acc | item[0], table, 0)
    leftover = value & ~known
    if rest:
        names.insert(0, rest)
    if leftover:
        names.append(hex(leftover))
    return "|".join(names) or "0"


def open_flags(flags: int) -> str:
    access = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}[flags & 3] if flags & 3 != 3 else ""
    return _flag_names(flags & ~3, _O_FLAGS[2:], rest=access)


def socket_kind(domain: int, kind: int) -> str:
    family = _FAMILIES.get(domain & 0xFFFFFFFF, str(domain))
    base = _TYPES.get(kind & 0xF, str(kind & 0xF))
    extras = [n for bit, n in ((socket.SOCK_CLOEXEC, "SOCK_CLOEXEC"),
                               (socket.SOCK_NONBLOCK, "SOCK_NONBLOCK")) if kind & bit]  # fmt: skip
    return f"{family}, {'|'.join([base, *extras])}"


def signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _dirfd(value: int) -> str:
    return "AT_FDCWD" if value == _AT_FDCWD or (value & 0xFFFFFFFF) == 0xFFFFFF9C else str(
        signed(value)
    )


def _sockaddr(memory: _Memory, address: int, length: int) -> str:
    raw = memory.read(address, min(length, 110))
    if raw is None or len(raw) < 2:
        return "?"
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        port = struct.unpack_from("!H", raw, 2)[0]
        return f"{ipaddress.IPv4Address(raw[4:8])}:{port}"
    if family == socket.AF_INET6 and len(raw) >= 24:
        port = struct.unpack_from("!H", raw, 2)[0]
        return f"[{ipaddress.IPv6Address(raw[8:24])}]:{port}"
    if family == socket.AF_UNIX:
        name = raw[2:]
        if name[:1] == b"\0":  # abstract: shown as `@name`, as ss and strace do
            return "@" + _quoted(name[1:].decode(errors="replace"))
        return _quoted(name.split(b"\0", 1)[0].decode(errors="replace"))
    return _FAMILIES.get(family, str(family))


def decode(syscall: str, args: Sequence[int], memory: _Memory | None) -> tuple[str, str | None]:
    """A readable call, e.g. ``openat(AT_FDCWD, "/etc/passwd", O_RDONLY|O_CLOEXEC)``,
    and the path it names, if any."""
    path = None
    index = PATH_ARG.get(syscall)
    if index is not None and memory is not None:
        path = memory.string(args[index])
    quoted = _quoted(path) if path is not None else "?"
    if syscall in ("open", "creat"):
        flags = args[1] if syscall == "open" else os.O_CREAT | os.O_WRONLY | os.O_TRUNC
        return f"{syscall}({quoted}, {open_flags(flags)})", path
    if syscall == "openat":
        return f"openat({_dirfd(args[0])}, {quoted}, {open_flags(args[2])})", path
    if syscall in ("socket", "socketpair"):
        return f"{syscall}({socket_kind(args[0], args[1])}, {signed(args[2])})", None
    if syscall in ("connect", "bind") and memory is not None:
        return f"{syscall}({signed(args[0])}, {_sockaddr(memory, args[1], args[2])})", None
    if syscall == "clone":
        return f"clone({_flag_names(args[0] & ~0xFF, _CLONE_FLAGS)})", None
    if syscall in ("kill", "tgkill", "tkill"):
        return f"{syscall}({', '.join(str(signed(a)) for a in args[:3 if syscall == 'tgkill' else 2])})", None  # noqa: E501
    if index is not None:
        shown = [hex(a) for a in args[:3]]
        shown[index] = quoted
        if index == 1:
            shown[0] = _dirfd(args[0])
        return f"{syscall}({', '.join(shown)})", path
    if syscall in _FD_FIRST:
        return f"{syscall}({signed(args[0])}, ...)", None
    return f"{syscall}({', '.join(hex(a) for a in args[:3])}, ...)", None


def _quoted(text: str) -> str:
    """``text`` from the compartment's memory in double quotes, as strace shows it:
    quotes and backslashes escaped, controls as escapes, so it cannot fake the rest of
    the line nor reach a log or a terminal raw."""
    return '"' + printable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


_FD_FIRST = frozenset({
    "read", "write", "readv", "writev", "pread64", "pwrite64", "lseek", "fstat", "ioctl",
    "fcntl", "close", "sendto", "recvfrom", "sendmsg", "recvmsg", "accept", "accept4",
    "listen", "shutdown", "getsockopt", "setsockopt", "fsync", "fdatasync", "ftruncate",
    "getdents64", "dup", "dup2", "dup3",
})
