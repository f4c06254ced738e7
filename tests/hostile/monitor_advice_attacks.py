"""Compartments that hit their filter the way real code does, and a compartment that
follows the advice the parent gave for it, then tries to do more than the job needed."""

from __future__ import annotations

import ctypes
import os
import re
import socket
import struct
import threading
from typing import Any

from compartments import compartment, rulesets
from compartments._policy._seccomp import syscall_number
from compartments.rulesets import SystemIO

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
NR = {name: syscall_number(name) for name in ("clone3", "clone", "openat2")}
AT_FDCWD = -100
SIGCHLD = 17
CLONE_NEWUSER = 0x10000000
_CODE = re.compile(r"^(\w+)\.(allow_\w+)\(\)(\.yes_really\(\))?$")


def raw(name: str, *args: int) -> int:
    """syscall(name, args...): the result, or -errno."""
    ctypes.set_errno(0)
    result = int(_libc.syscall(ctypes.c_long(NR[name]), *(ctypes.c_long(a) for a in args)))
    return -ctypes.get_errno() if result < 0 else result


def _openat2(path: bytes, flags: int) -> int:
    how = struct.pack("=QQQ", flags, 0o600 if flags & os.O_CREAT else 0, 0)
    how_buffer = ctypes.create_string_buffer(how, len(how))
    path_buffer = ctypes.create_string_buffer(path)
    return raw("openat2", AT_FDCWD, ctypes.addressof(path_buffer),
               ctypes.addressof(how_buffer), len(how))  # fmt: skip


# -- real code hitting the filter ------------------------------------------------------


@compartment(rules=[SystemIO.nothing()])
def start_a_thread() -> str:
    try:
        threading.Thread(target=lambda: None).start()
    except RuntimeError as exc:
        return str(exc)
    return "started"


@compartment(rules=[SystemIO.nothing()])
def read_a_file(path: str) -> None:
    with open(path, "rb"):
        pass


@compartment(rules=[SystemIO.nothing()])
def read_a_file_with_openat2(path: str) -> int:
    return _openat2(path.encode(), os.O_RDONLY | os.O_CLOEXEC)


@compartment(rules=[SystemIO.nothing()])
def probe_nscd() -> None:
    """What glibc does first when it resolves a name: socket(AF_UNIX) to reach nscd."""
    flags = socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    socket.socket(socket.AF_UNIX, flags).close()


# -- following the advice -----------------------------------------------------------------


def build(advice: list[str]) -> list[Any]:
    """The rules a user writes from a suggestion: builtin grants by code, or raw names."""
    built: list[Any] = [SystemIO.nothing()]
    for code in advice:
        match = _CODE.match(code)
        if match is None:
            built.append(code)  # a raw syscall name, as the advice said to enable it
            continue
        cls, method, confirm = match.groups()
        granted = getattr(getattr(rulesets, cls).nothing(), method)()
        built.append(granted.yes_really() if confirm else granted)
    return built


@compartment(rules=lambda self: build(self.advice))
class FollowsAdvice:
    """Sealed with exactly what the advice said, then tries for more than the job."""

    def __init__(self, advice: list[str]) -> None:
        self.advice = advice

    def clone3_into_a_new_user_namespace(self) -> int:
        args = struct.pack("=QQQQQQQQ", CLONE_NEWUSER, 0, 0, 0, SIGCHLD, 0, 0, 0)
        buffer = ctypes.create_string_buffer(args, len(args))
        result = raw("clone3", ctypes.addressof(buffer), len(args))
        if result == 0:  # the new child, in its own user namespace
            os._exit(0)
        return result

    def fork_plainly(self) -> int:
        """The child's pid (> 0) if clone made a plain new process."""
        result = raw("clone", SIGCHLD, 0, 0, 0, 0)
        if result == 0:
            os._exit(0)
        return result

    def clone_into_a_new_user_namespace(self) -> int:
        result = raw("clone", CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
        if result == 0:
            os._exit(0)
        return result

    def open_for_writing(self, path: str) -> int:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            return -(exc.errno or 1)
        return 0

    def openat2_for_writing(self, path: str) -> int:
        fd = _openat2(path.encode(), os.O_WRONLY | os.O_CREAT)
        return fd if fd < 0 else 0

    def serve_on_a_unix_socket(self) -> int:
        try:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(b"\0compartments-advice-test")
            server.listen()
        except OSError as exc:
            return -(exc.errno or 1)
        server.close()
        return 0


_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]  # fmt: skip
_PROT_READ_WRITE, _MAP_SHARED = 0x3, 0x1


@compartment(rules=lambda self: [SystemIO.nothing().allow_file_read(self.file), *self.extra])
class MapsAFileShared:
    """Holds a file opened r+b, granted read only, and tries to map it shared."""

    def __init__(self, path: str, shared_grant: bool = False) -> None:
        self.file = open(path, "r+b")
        grant = SystemIO.nothing().allow_shared_mapping(self.file)
        self.extra = [grant] if shared_grant else []

    def fd(self) -> int:
        return self.file.fileno()

    def map_shared(self) -> int:
        """0 if the shared writable mapping was made, else the errno."""
        address = _libc.mmap(None, 4096, _PROT_READ_WRITE, _MAP_SHARED, self.file.fileno(), 0)
        if address in (None, ctypes.c_void_p(-1).value):
            return ctypes.get_errno()
        return 0


@compartment(rules=[SystemIO.nothing()])
def acts_on_itself(what: str) -> None:
    """Ordinary calls that reach the kernel with a pid (its own) or an fd to move."""
    import resource

    calls = {
        "getrlimit": lambda: resource.getrlimit(resource.RLIMIT_NOFILE),  # prlimit64(0, ..)
        "nice": lambda: os.nice(0),  # getpriority/setpriority
        "sched_getscheduler": lambda: os.sched_getscheduler(0),
        "dup2": lambda: os.dup2(1, 5),  # dup2: the runtime allows dup3 into its block only
    }
    calls[what]()
