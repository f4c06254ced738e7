"""A compartment holding a secret, and a sibling that tries to read it through the
kernel's debugging interfaces: /proc/<pid>/mem, process_vm_readv and ptrace.

Compartments stay dumpable (so a parent of the same uid can decode violation reports);
what keeps siblings out is the Landlock domain each one enters after the fork. The
attacker is given open, read and the raw syscalls by name, so that only that domain
(and not the seccomp filter) stands between it and the secret.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource

from compartments import compartment
from compartments._policy._seccomp import syscall_number
from compartments.rulesets import SystemIO

SECRET = b"the-sibling-secret-0123456789abcdef"
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
NR = {name: syscall_number(name) for name in ("process_vm_readv", "ptrace")}
PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_PEEKDATA = 16, 0x4206, 2


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("length", ctypes.c_size_t))


@compartment(rules=[SystemIO.nothing()])
class Keeper:
    """Holds SECRET at a fixed address for its whole life."""

    def __init__(self) -> None:
        self.buffer = ctypes.create_string_buffer(SECRET, len(SECRET))
        self.core = list(resource.getrlimit(resource.RLIMIT_CORE))

    def address(self) -> int:
        return ctypes.addressof(self.buffer)

    def core_limit(self) -> list[int]:
        return self.core


def _raw(name: str, *args: int) -> tuple[int, int]:
    ctypes.set_errno(0)
    result = int(_libc.syscall(ctypes.c_long(NR[name]), *(ctypes.c_long(a) for a in args)))
    return result, (ctypes.get_errno() if result < 0 else 0)


@compartment(rules=[SystemIO.nothing().allow_open().yes_really(), SystemIO.nothing().allow_read(),
                    SystemIO.nothing().allow_close(), "process_vm_readv", "ptrace"])  # fmt: skip
class Snoop:
    """Tries every way to read a sibling's memory; each step returns what it read (or
    the errno it got, as a string)."""

    def proc_mem(self, pid: int, address: int) -> str | bytes:
        try:
            fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, "?")
        try:
            return os.pread(fd, len(SECRET), address)
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, "?")
        finally:
            os.close(fd)

    def process_vm_readv(self, pid: int, address: int) -> str | bytes:
        local = ctypes.create_string_buffer(len(SECRET))
        here = _IoVec(ctypes.addressof(local), len(SECRET))
        there = _IoVec(address, len(SECRET))
        result, error = _raw("process_vm_readv", pid, ctypes.addressof(here), 1,
                             ctypes.addressof(there), 1, 0)  # fmt: skip
        return local.raw[:result] if result > 0 else errno.errorcode.get(error, "?")

    def ptrace(self, pid: int, request: int) -> str:
        result, error = _raw("ptrace", request, pid, 0, 0)
        return "attached" if result == 0 else errno.errorcode.get(error, "?")
