"""The one module that touches libseccomp.

pyseccomp 0.1.2 hides a few things we need (bad names give a bare EINVAL, no notify fd,
exports need a real fd), so those are handled here and nowhere else. Without libseccomp
this module still imports (pyseccomp itself does not): its first use raises
UnsupportedError naming the library and how to install it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .._privileges import set_no_new_privs
from ..errors import UnknownSyscallError, UnsupportedError

__all__ = [
    "Comparison",
    "CompiledRule",
    "Filter",
    "available",
    "build_filter",
    "export_bpf",
    "export_pfc",
    "libseccomp_version",
    "load",
    "missing",
    "notify_fd",
    "set_no_new_privs",
    "syscall_exists",
    "syscall_name",
    "syscall_number",
]

# libseccomp's binary-tree layout keeps large filters O(log n) in the number of syscalls,
# but costs more than a linear scan for a handful of them.
BINARY_TREE_THRESHOLD = 16

_libc = ctypes.CDLL(None, use_errno=True)

LIBRARY = "libseccomp.so.2"
INSTALL_HINT = "apt install libseccomp2 (Debian, Ubuntu) or dnf install libseccomp (Fedora)"


class _Missing:
    """Stands in for pyseccomp when libseccomp cannot be loaded.

    ``import compartments`` still works, so ``python -m compartments check`` can say what
    is missing and ``except UnsupportedError`` can catch it; the first use of libseccomp
    (resolving a syscall name, building or loading a filter) raises, naming the library.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self) -> UnsupportedError:
        return UnsupportedError(
            errno.ELIBACC,
            f"{LIBRARY} could not be loaded ({self.reason}): seccomp filters cannot be "
            f"built without it; install it with {INSTALL_HINT}",
        )

    def __getattr__(self, name: str) -> NoReturn:
        raise self.error()


def _load_pyseccomp() -> Any:
    # pyseccomp raises a bare RuntimeError when ctypes.util.find_library("seccomp") finds
    # nothing, and CDLL raises OSError when the library it found cannot be loaded.
    try:
        import pyseccomp
    except (RuntimeError, OSError) as exc:
        return _Missing(str(exc) or type(exc).__name__)
    return pyseccomp


pyseccomp: Any = _load_pyseccomp()
#: A libseccomp filter context (pyseccomp.SyscallFilter).
Filter = Any


def missing() -> UnsupportedError | None:
    """Why libseccomp cannot be used, or None when it can."""
    return pyseccomp.error() if isinstance(pyseccomp, _Missing) else None


def available() -> bool:
    return not isinstance(pyseccomp, _Missing)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One argument comparison, in libseccomp's terms (already normalised to u64)."""

    index: int
    op: int
    datum_a: int
    datum_b: int = 0

    def holds(self, args: Sequence[int]) -> bool:
        """Whether the kernel's comparison is true for these syscall arguments."""
        value = args[self.index] & 0xFFFFFFFFFFFFFFFF
        name = _OPERATOR_NAMES[self.op]
        if name == "&==":
            return value & self.datum_a == self.datum_b
        return bool(_COMPARE[name](value, self.datum_a))


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A syscall with its action and the comparisons that must all hold."""

    syscall: str
    action: int
    comparisons: tuple[Comparison, ...] = ()


@functools.cache
def syscall_number(name: str) -> int:
    """Resolve a syscall name on the native architecture, or raise naming it."""
    if not isinstance(name, str) or not name.isidentifier():
        raise UnknownSyscallError(repr(name))
    number = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
    # -1 means unknown; other negative numbers are pseudo-syscalls of other architectures.
    if number < 0:
        raise UnknownSyscallError(name)
    return number


def syscall_exists(name: str) -> bool:
    try:
        syscall_number(name)
    except UnknownSyscallError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def syscall_name(number: int) -> str:
    """The native name of a syscall number, or ``syscall_<n>`` when libseccomp has none."""
    try:
        return bytes(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, number)).decode()
    except ValueError:
        return f"syscall_{number}"


def build_filter(
    rules: Iterable[CompiledRule],
    *,
    default_action: int,
    tsync: bool,
) -> Filter:
    """Compile rules into a libseccomp filter context (not yet loaded)."""
    rules = list(rules)
    flt = pyseccomp.SyscallFilter(default_action)
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    flt.set_attr(pyseccomp.Attr.CTL_NNP, 1)
    if tsync:
        flt.set_attr(pyseccomp.Attr.CTL_TSYNC, 1)
    if len({rule.syscall for rule in rules}) >= BINARY_TREE_THRESHOLD:
        flt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    for rule in rules:
        args = [pyseccomp.Arg(c.index, c.op, c.datum_a, c.datum_b) for c in rule.comparisons]
        try:
            flt.add_rule(rule.action, syscall_number(rule.syscall), *args)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"libseccomp rejected the rule for `{rule.syscall}` "
                f"({len(args)} comparison(s)): {os.strerror(exc.errno or errno.EINVAL)}",
            ) from None
    return flt


def load(flt: Filter) -> None:
    set_no_new_privs()
    try:
        flt.load()
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise OSError(
                exc.errno, "seccomp TSYNC failed: another thread has a diverging filter"
            ) from None
        raise OSError(exc.errno, f"loading the seccomp filter failed: {exc.strerror}") from None


class _NotifyRecords:
    """libseccomp-allocated request/response buffers, sized for the running kernel."""

    def __init__(self) -> None:
        lib = pyseccomp._libseccomp
        self.request = ctypes.POINTER(pyseccomp._Notif)()
        self.response = ctypes.POINTER(pyseccomp._NotifResp)()
        rc = lib.seccomp_notify_alloc(ctypes.byref(self.request), ctypes.byref(self.response))
        if rc != 0:
            raise UnsupportedError(-rc, f"seccomp_notify_alloc: {os.strerror(-rc)}")


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    pid: int
    syscall: int
    args: tuple[int, ...]


_records = threading.local()

SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1


def _notify_records() -> _NotifyRecords:
    records: _NotifyRecords | None = getattr(_records, "value", None)
    if records is None:
        records = _records.value = _NotifyRecords()
    return records


def receive_notification(listener: int) -> Notification | None:
    """The next pending notification, or None if it vanished (the task died)."""
    records = _notify_records()
    ctypes.memset(records.request, 0, ctypes.sizeof(pyseccomp._Notif))
    if pyseccomp._libseccomp.seccomp_notify_receive(listener, records.request) != 0:
        return None
    raw = records.request.contents
    return Notification(int(raw.id), int(raw.pid), int(raw.data.nr), tuple(raw.data.args))


def respond(
    listener: int, notification_id: int, *, error: int = 0, proceed: bool = False, value: int = 0
) -> bool:
    """Answer a notification: fail it with ``error``, let the kernel run it, or (with
    ``error=0``) return ``value`` as the syscall's result, as if it had run.

    Never raises: the task may have died (ENOENT) or been killed meanwhile, and the
    monitor answers the next notification either way. False when the kernel refused.
    """
    records = _notify_records()
    reply = records.response.contents
    reply.id = notification_id
    reply.val = 0 if proceed or error else value
    reply.error = 0 if proceed else -error
    reply.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE if proceed else 0
    return int(pyseccomp._libseccomp.seccomp_notify_respond(listener, records.response)) == 0


# struct seccomp_notif_addfd { __u64 id; __u32 flags, srcfd, newfd, newfd_flags; }
_ADDFD = struct.Struct("=QIIII")
SECCOMP_IOCTL_NOTIF_ADDFD = 0x40182103  # _IOW('!', 3, struct seccomp_notif_addfd)
SECCOMP_ADDFD_FLAG_SETFD = 1  # Linux 5.9: install at newfd, replacing what is there
SECCOMP_ADDFD_FLAG_SEND = 2  # Linux 5.14: and answer the notification with it, atomically


def add_fd(listener: int, notification_id: int, fd: int, *, at: int, cloexec: bool) -> int:
    """Install a copy of our ``fd`` in the notifying task as number ``at``, and answer
    its syscall with that number, in one step. Raises OSError (ENOENT: the task is
    gone; EINVAL: a kernel before 5.14)."""
    request = bytearray(
        _ADDFD.pack(
            notification_id,
            SECCOMP_ADDFD_FLAG_SETFD | SECCOMP_ADDFD_FLAG_SEND,
            fd,
            at,
            os.O_CLOEXEC if cloexec else 0,
        )
    )
    return int(fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, request, True))


def notification_valid(listener: int, notification_id: int) -> bool:
    """Whether the notifying task is still waiting on this notification.

    Checked after opening ``/proc/<pid>/mem``: if the task died and its pid was reused,
    the id is no longer valid, and what was opened is another process's memory.
    """
    lib = pyseccomp._libseccomp
    return int(lib.seccomp_notify_id_valid(listener, ctypes.c_uint64(notification_id))) == 0


def notify_fd(flt: Filter) -> int:
    """The user-notification listener fd of a loaded filter (not exposed by pyseccomp)."""
    lib = pyseccomp._libseccomp
    if not hasattr(lib, "seccomp_notify_fd"):
        raise UnsupportedError(errno.ENOSYS, "libseccomp has no seccomp_notify_fd")
    fd = int(lib.seccomp_notify_fd(flt._filter))
    if fd < 0:
        raise UnsupportedError(-fd, f"no seccomp notification fd: {os.strerror(-fd)}")
    return fd


def _export(flt: Filter, exporter: str) -> bytes:
    fd = os.memfd_create(f"compartments-{exporter}", os.MFD_CLOEXEC)
    try:
        with os.fdopen(fd, "w+b", closefd=False) as handle:
            getattr(flt, exporter)(handle)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def export_pfc(flt: Filter) -> str:
    return _export(flt, "export_pfc").decode()


def export_bpf(flt: Filter) -> bytes:
    return _export(flt, "export_bpf")


def libseccomp_version() -> tuple[int, int, int]:
    class _Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]

    lib = pyseccomp._libseccomp
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    version = lib.seccomp_version().contents
    return (version.major, version.minor, version.micro)


def errno_action(number: int) -> int:
    return 0x00050000 | (number & 0x0000FFFF)


# libseccomp's ABI (seccomp.h), spelled here so that this module imports without libseccomp.
ALLOW = 0x7FFF0000
NOTIFY = 0x7FC00000
MASKED_EQ = 7
_COMPARE: Mapping[str, Callable[[int, int], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}  # fmt: skip

OPERATORS: Mapping[str, int] = {
    "!=": 1,
    "<": 2,
    "<=": 3,
    "==": 4,
    ">=": 5,
    ">": 6,
    "&==": MASKED_EQ,
}
_OPERATOR_NAMES = {number: name for name, number in OPERATORS.items()}


def unsigned(value: int, bits: int) -> int:
    """Two's complement view, as the kernel presents arguments to the filter."""
    return value & ((1 << bits) - 1)


def describe_comparisons(comparisons: Sequence[Comparison]) -> str:
    by_op = {v: k for k, v in OPERATORS.items()}
    parts = []
    for c in comparisons:
        if c.op == MASKED_EQ:
            parts.append(f"arg{c.index} & {c.datum_a:#x} == {c.datum_b:#x}")
        else:
            parts.append(f"arg{c.index} {by_op[c.op]} {c.datum_a:#x}")
    return " and ".join(parts)
