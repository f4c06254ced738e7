"""Compartments that attack the parent's violation monitor from inside their seal.

Each one makes denied syscalls whose arguments the monitor decodes: pointers it cannot
read, paths without an end, sockaddr lengths out of range, floods. The monitor must
answer every one and keep serving every compartment. Everything an attack needs
(ctypes, syscall numbers) is prepared at import, in the zygote, before any seal.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import socket

from compartments import compartment
from compartments._policy._seccomp import syscall_number
from compartments.rulesets import SystemIO, Threads

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)  # fmt: skip
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)

NR = {name: syscall_number(name) for name in (
    "openat", "newfstatat", "connect", "execve", "clone3", "unshare", "ptrace",
    "process_vm_readv",
)}  # fmt: skip
AT_FDCWD = -100
PAGE = mmap.PAGESIZE
ADDRESS_ABOVE_OFF_T = (1 << 63) + 4096  # a valid u64, but no pread offset


def raw(name: str, *args: int | bytes) -> int:
    """syscall(name, args...): 0 on success, else the errno."""
    ctypes.set_errno(0)
    values = [ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF) if isinstance(a, int) else a for a in args]
    result = _libc.syscall(ctypes.c_long(NR[name]), *values)
    return 0 if result >= 0 else ctypes.get_errno()


# -- addresses the monitor cannot read --------------------------------------------------


@compartment(rules=[SystemIO.nothing()])
def open_at_pointer(pointer: int) -> int:
    """openat(AT_FDCWD, pointer, O_RDONLY): the monitor reads the path at ``pointer``."""
    return raw("openat", AT_FDCWD, pointer, os.O_RDONLY)


@compartment(rules=[SystemIO.nothing()])
def stat_at_pointer(pointer: int) -> int:
    buffer = ctypes.create_string_buffer(256)
    return raw("newfstatat", AT_FDCWD, pointer, ctypes.addressof(buffer), 0)


@compartment(rules=[SystemIO.nothing()])
def exec_at_pointer(pointer: int) -> int:
    return raw("execve", pointer, 0, 0)


@compartment(rules=[SystemIO.nothing()])
def connect_to_pointer(pointer: int, length: int) -> int:
    """connect(fd, pointer, length): the monitor reads a sockaddr of ``length`` there."""
    return raw("connect", 0, pointer, length)


@compartment(rules=[SystemIO.nothing()])
def connect_with_huge_length() -> int:
    address = ctypes.create_string_buffer(b"\x02\x00\x00\x50\x7f\x00\x00\x01", 16)
    return raw("connect", 0, ctypes.addressof(address), 1 << 63)


@compartment(rules=[SystemIO.nothing()])
def open_unmapped_path() -> int:
    """A path pointer into a page that was mapped and is gone."""
    page = _libc.mmap(None, PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)  # fmt: skip
    _libc.munmap(page, PAGE)
    return raw("openat", AT_FDCWD, page, os.O_RDONLY)


@compartment(rules=[SystemIO.nothing()])
def open_path_without_end() -> int:
    """A path that fills the last bytes of a mapping, with no NUL before the hole."""
    pages = _libc.mmap(None, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                       mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)  # fmt: skip
    _libc.munmap(pages + PAGE, PAGE)
    ctypes.memset(pages, ord("A"), PAGE)
    return raw("openat", AT_FDCWD, pages + PAGE - 100, os.O_RDONLY)


@compartment(rules=[SystemIO.nothing(), Threads.nothing().allow_create()])
def open_while_a_thread_unmaps(rounds: int) -> list[int]:
    """One thread opens paths in a page another thread keeps unmapping and remapping."""
    import threading

    outcomes: set[int] = set()
    stop = threading.Event()
    page = _libc.mmap(None, PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)  # fmt: skip
    ctypes.memmove(page, b"/etc/hostname\0", 14)

    def churn() -> None:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x10  # MAP_FIXED
        while not stop.is_set():
            _libc.munmap(page, PAGE)
            _libc.mmap(page, PAGE, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
            ctypes.memmove(page, b"/etc/hostname\0", 14)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(rounds):
            outcomes.add(raw("openat", AT_FDCWD, page, os.O_RDONLY))
    finally:
        stop.set()
        thread.join()
    return sorted(outcomes)


# -- floods --------------------------------------------------------------------------------


@compartment(rules=[SystemIO.nothing()])
def flood_denials(count: int) -> dict[str, int]:
    """``count`` denied opens of a real path, as fast as the filter answers them."""
    path = b"/etc/hostname"
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(count):
        outcomes[str(raw("openat", AT_FDCWD, path, os.O_RDONLY))] += 1
    return dict(outcomes)


# -- the victim: a compartment that hits its filter the ordinary way -----------------------


@compartment(rules=[SystemIO.nothing()])
def victim_open(path: str) -> None:
    with open(path, "rb"):
        pass


@compartment(rules=[SystemIO.nothing()])
def victim_socket() -> None:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()



@compartment(rules=[SystemIO.nothing()], fresh=True)
def fresh_flood(count: int) -> int:
    """The same flood from a new process on every call: each one used to get a new budget."""
    path = b"/etc/hostname"
    return sum(raw("openat", AT_FDCWD, path, os.O_RDONLY) != 0 for _ in range(count))
