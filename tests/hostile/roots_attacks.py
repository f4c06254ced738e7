"""Attacks on the import-roots broker (``compartments._parent._broker``) from sealed compartments.

Each compartment asks the parent, through its denied syscalls, for something the broker
must not serve: a file or a listing outside the import roots, a writable or special fd,
a write into memory it did not ask for, or more of the parent's time than one request's.
Raw syscalls via ctypes, so the kernel sees exactly the arguments written here; results
are errnos (0: the step succeeded) and the bytes read, if any.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
import time

from compartments import Fd, compartment
from compartments._policy._roots import import_roots
from compartments._policy._seccomp import syscall_number
from compartments.rulesets import SystemIO, Threads

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]  # fmt: skip
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

NR = {name: syscall_number(name) for name in (
    "open", "openat", "read", "close", "stat", "lstat", "newfstatat", "readlink",
    "readlinkat", "access", "faccessat", "faccessat2", "getdents64", "dup3", "exit_group",
)}  # fmt: skip
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
PAGE = mmap.PAGESIZE
O_TMPFILE = 0o20000000 | os.O_DIRECTORY
O_PATH = 0o10000000
STAT_SIZE = 144
#: The stdlib root (the deepest root holding ``os.py``) and a file in it to ask for.
STDLIB = os.path.dirname(os.__file__)
STDLIB_FILE = os.__file__
ROOTS = import_roots()


def raw(name: str, *args: int | bytes) -> int:
    """syscall(name, args...): the result if >= 0, else minus the errno."""
    ctypes.set_errno(0)
    values = [ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF) if isinstance(a, int) else a for a in args]
    result = int(_libc.syscall(ctypes.c_long(NR[name]), *values))
    return result if result >= 0 else -ctypes.get_errno()


def _read_all(fd: int) -> bytes:
    buffer = ctypes.create_string_buffer(65536)
    size = raw("read", fd, ctypes.addressof(buffer), len(buffer))
    return buffer.raw[: max(size, 0)]


def _open_and_read(dirfd: int, path: bytes | int, flags: int) -> tuple[int, bytes]:
    """openat then read: (minus the errno, b"") or (the fd number, what read returned)."""
    fd = raw("openat", dirfd, path, flags)
    if fd < 0:
        return fd, b""
    try:
        return fd, _read_all(fd)
    finally:
        raw("close", fd)


def _page() -> int:
    address = _libc.mmap(None, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)  # fmt: skip
    return int(address)


# -- paths outside the roots -------------------------------------------------------------


@compartment(rules=[SystemIO.nothing()])
def open_path(path: bytes, flags: int = os.O_RDONLY) -> tuple[int, bytes]:
    """openat(AT_FDCWD, path, flags) and read what came back."""
    return _open_and_read(AT_FDCWD, path, flags)


@compartment(rules=[SystemIO.nothing()])
def open_beside_a_root_dir(root_dir: bytes, path: bytes) -> tuple[int, int, bytes]:
    """Open a directory under the roots (the broker serves it), then open ``path``
    relative to that fd: (the dir fd, the open's result, what it read)."""
    dirfd = raw("openat", AT_FDCWD, root_dir, os.O_RDONLY | os.O_DIRECTORY)
    if dirfd < 0:
        return dirfd, dirfd, b""
    try:
        return (dirfd, *_open_and_read(dirfd, path, os.O_RDONLY))
    finally:
        raw("close", dirfd)


@compartment(rules=[SystemIO.nothing()])
def open_relative_to(dirfd: int, path: bytes) -> tuple[int, bytes]:
    """openat(dirfd, path) with a dirfd the compartment picks (a channel, a hole)."""
    return _open_and_read(dirfd, path, os.O_RDONLY)


@compartment(rules=[SystemIO.nothing()])
def open_relative_to_a_dup(path: bytes) -> tuple[int, bytes]:
    """dup3 a served directory fd into the channel block, then open relative to that."""
    dirfd = raw("openat", AT_FDCWD, STDLIB.encode(), os.O_RDONLY | os.O_DIRECTORY)
    if dirfd < 0:
        return dirfd, b""
    copy = raw("dup3", dirfd, 127, 0)
    raw("close", dirfd)
    if copy < 0:
        return copy, b""
    try:
        return _open_and_read(copy, path, os.O_RDONLY)
    finally:
        raw("close", copy)


@compartment(rules=[SystemIO.nothing()])
def stat_path(path: bytes, nofollow: bool = False) -> tuple[int, bytes]:
    """newfstatat(AT_FDCWD, path): (0 or minus the errno, the stat buffer)."""
    buffer = ctypes.create_string_buffer(STAT_SIZE)
    flags = AT_SYMLINK_NOFOLLOW if nofollow else 0
    result = raw("newfstatat", AT_FDCWD, path, ctypes.addressof(buffer), flags)
    return result, buffer.raw


@compartment(rules=[SystemIO.nothing()])
def legacy_calls(path: bytes) -> dict[str, int]:
    """The old path syscalls (stat, lstat, access, readlink, open) on ``path``."""
    buffer = ctypes.create_string_buffer(4096)
    found = {
        "stat": raw("stat", path, ctypes.addressof(buffer)),
        "lstat": raw("lstat", path, ctypes.addressof(buffer)),
        "access": raw("access", path, os.R_OK),
        "faccessat2": raw("faccessat2", AT_FDCWD, path, os.R_OK, 0),
        "readlink": raw("readlink", path, ctypes.addressof(buffer), len(buffer)),
    }
    fd = raw("open", path, os.O_RDONLY)
    found["open"] = fd
    if fd >= 0:
        raw("close", fd)
    return found


@compartment(rules=[SystemIO.nothing()])
def list_directory(path: bytes) -> tuple[int, int]:
    """Open ``path`` as a directory and getdents64 it: (open result, bytes listed)."""
    fd = raw("openat", AT_FDCWD, path, os.O_RDONLY | os.O_DIRECTORY)
    if fd < 0:
        return fd, 0
    try:
        buffer = ctypes.create_string_buffer(65536)
        return fd, raw("getdents64", fd, ctypes.addressof(buffer), len(buffer))
    finally:
        raw("close", fd)


@compartment(rules=[SystemIO.nothing()])
def open_at_page_end(path: bytes, terminated: bool) -> tuple[int, bytes]:
    """A path whose last byte is the last byte of a mapping, the next page unmapped:
    with its NUL there (``terminated``) or with none (the string runs into the hole)."""
    pages = _page()
    _libc.munmap(pages + PAGE, PAGE)
    text = path + b"\0" if terminated else path
    start = pages + PAGE - len(text)
    ctypes.memmove(start, text, len(text))
    try:
        return _open_and_read(AT_FDCWD, start, os.O_RDONLY)
    finally:
        _libc.munmap(pages, PAGE)


@compartment(rules=[SystemIO.nothing(), Threads.nothing().allow_create()])
def open_while_a_thread_rewrites(allowed: bytes, secret: bytes, rounds: int) -> dict[str, int]:
    """One thread opens a path under the roots while another flips the buffer between
    that path and one outside: what did the opens read? Counts by outcome."""
    size = max(len(allowed), len(secret)) + 1
    buffer = ctypes.create_string_buffer(size)
    stop = threading.Event()
    spellings = (allowed.ljust(size, b"\0"), secret.ljust(size, b"\0"))

    def flip() -> None:
        while not stop.is_set():
            for spelling in spellings:
                ctypes.memmove(buffer, spelling, size)

    counts = {"secret": 0, "allowed": 0, "denied": 0, "other": 0}
    thread = threading.Thread(target=flip)
    thread.start()
    try:
        marker = _marker(secret)
        for _ in range(rounds):
            fd, data = _open_and_read(AT_FDCWD, ctypes.addressof(buffer), os.O_RDONLY)
            if fd < 0:
                counts["denied" if fd == -errno.EPERM else "other"] += 1
            elif marker in data:
                counts["secret"] += 1
            else:
                counts["allowed"] += 1
    finally:
        stop.set()
        thread.join()
    return counts


def _marker(secret: bytes) -> bytes:
    return b"SECRET-" + os.path.basename(secret)


# -- writes and fds that are not read-only files ----------------------------------------------


@compartment(rules=[SystemIO.nothing()])
def open_for_writing(path: bytes) -> dict[str, int]:
    """Every way of asking openat for a writable or new file at ``path``: the results."""
    asks = {
        "O_WRONLY": os.O_WRONLY, "O_RDWR": os.O_RDWR, "O_ACCMODE": os.O_ACCMODE,
        "O_CREAT": os.O_RDONLY | os.O_CREAT, "O_TRUNC": os.O_RDONLY | os.O_TRUNC,
        "O_APPEND": os.O_RDONLY | os.O_APPEND, "O_PATH": O_PATH,
        "O_TMPFILE": O_TMPFILE | os.O_RDWR, "high bits": os.O_RDONLY | (1 << 40),
        "O_DIRECT": os.O_RDONLY | 0o40000, "O_NOATIME": os.O_RDONLY | 0o1000000,
    }  # fmt: skip
    found = {}
    for name, flags in asks.items():
        fd = raw("openat", AT_FDCWD, path, flags, 0o644)
        found[name] = fd
        if fd >= 0:
            raw("close", fd)
    return found


@compartment(rules=[SystemIO.nothing()])
def write_to_a_served_fd(path: bytes) -> tuple[int, int, int]:
    """Open ``path`` (served), then try write, pwrite and ftruncate on the fd."""
    fd = raw("openat", AT_FDCWD, path, os.O_RDONLY)
    if fd < 0:
        return fd, fd, fd
    try:
        return (
            _syscall_by_name("write", fd, b"x", 1),
            _syscall_by_name("pwrite64", fd, b"x", 1, 0),
            _syscall_by_name("ftruncate", fd, 0),
        )
    finally:
        raw("close", fd)


def _syscall_by_name(name: str, *args: int | bytes) -> int:
    NR.setdefault(name, syscall_number(name))
    return raw(name, *args)


# -- the parent's writes into the compartment's memory ----------------------------------------


@compartment(rules=[SystemIO.nothing()])
def stat_into(address: int, path: bytes = STDLIB_FILE.encode()) -> int:
    """newfstatat with the result buffer at ``address`` (unmapped, kernel, huge)."""
    return raw("newfstatat", AT_FDCWD, path, address, 0)


@compartment(rules=[SystemIO.nothing()])
def readlink_with_size(path: bytes, size: int) -> tuple[int, bytes]:
    """readlink(path) into a 16-byte buffer followed by a canary, claiming ``size``
    bytes: the kernel reads bufsiz as an int, so (1 << 32) + 16 means 16 and
    0xFFFFFFFF means -1 (EINVAL)."""
    buffer = ctypes.create_string_buffer(b"\xaa" * 64, 64)
    result = raw("readlink", path, ctypes.addressof(buffer), size)
    return result, buffer.raw


# -- the import block ----------------------------------------------------------------------


@compartment(rules=[SystemIO.nothing()])
def exhaust_the_import_block(count: int) -> tuple[list[int], int]:
    """Keep ``count`` served fds open; then one more: (the fds, the last result)."""
    fds = []
    for _ in range(count):
        fd = raw("openat", AT_FDCWD, STDLIB_FILE.encode(), os.O_RDONLY)
        if fd < 0:
            break
        fds.append(fd)
    last = raw("openat", AT_FDCWD, STDLIB_FILE.encode(), os.O_RDONLY)
    for fd in fds:
        raw("close", fd)
    if last >= 0:
        raw("close", last)
    return fds, last


@compartment(rules=[SystemIO.nothing(), Threads.nothing().allow_create()])
def open_from_many_threads(threads: int, rounds: int) -> dict[str, int]:
    """``threads`` threads open and hold served fds at once, each checking that its fd
    still reads its own file (a slot given twice would show another file's bytes)."""
    files = sorted(n for n in os.listdir(STDLIB) if n.endswith(".py"))[:threads]
    outcomes = {"mine": 0, "replaced": 0, "failed": 0}
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def run(name: str) -> None:
        path = os.path.join(STDLIB, name).encode()
        with open(path, "rb") as handle:
            expected = handle.read(256)
        start.wait()
        for _ in range(rounds):
            fd = raw("openat", AT_FDCWD, path, os.O_RDONLY)
            if fd < 0:
                with lock:
                    outcomes["failed"] += 1
                continue
            buffer = ctypes.create_string_buffer(256)
            size = _libc.pread(fd, buffer, 256, ctypes.c_long(0))
            raw("close", fd)
            with lock:
                outcomes["mine" if buffer.raw[: max(size, 0)] == expected else "replaced"] += 1

    workers = [threading.Thread(target=run, args=(name,)) for name in files]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcomes


# -- the parent's time and resources ------------------------------------------------------------


@compartment(rules=[SystemIO.nothing()])
def served_requests(count: int, kind: str = "stat") -> int:
    """``count`` served requests as fast as the compartment can make them; how many
    succeeded."""
    path = STDLIB_FILE.encode()
    buffer = ctypes.create_string_buffer(STAT_SIZE)
    served = 0
    for _ in range(count):
        if kind == "stat":
            served += raw("newfstatat", AT_FDCWD, path, ctypes.addressof(buffer), 0) == 0
        else:
            fd = raw("openat", AT_FDCWD, path, os.O_RDONLY)
            if fd >= 0:
                served += 1
                raw("close", fd)
    return served


@compartment(rules=[SystemIO.nothing()])
def flood_stats_for(seconds: float) -> int:
    """Loop on os.stat of a stdlib file for ``seconds``: how many were served."""
    deadline = time.monotonic() + seconds
    served = 0
    while time.monotonic() < deadline:
        for _ in range(100):
            os.stat(STDLIB_FILE)
            served += 1
    return served


@compartment(rules=[SystemIO.nothing(), Threads.nothing().allow_create()])
def die_mid_request(threads: int) -> None:
    """Threads loop on served opens while the main thread ends the process."""

    def loop() -> None:
        while True:
            fd = raw("openat", AT_FDCWD, STDLIB_FILE.encode(), os.O_RDONLY)
            if fd >= 0:
                raw("close", fd)

    for _ in range(threads):
        threading.Thread(target=loop, daemon=True).start()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass
    raw("exit_group", 0)


@compartment(rules=[SystemIO.nothing(), Threads.nothing().allow_create()])
def flood_stats_from_threads(threads: int, seconds: float) -> int:
    """``threads`` threads loop on os.stat of a stdlib file for ``seconds``."""
    counts = [0] * threads

    def loop(index: int) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            os.stat(STDLIB_FILE)
            counts[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts)


@compartment(rules=[SystemIO.nothing()])
def victim_reads(path: str) -> bytes:
    """A compartment that hits its filter the ordinary way."""
    with open(path, "rb") as handle:
        return handle.read()


# -- the import block's own grants ---------------------------------------------------------------


def _stat_with_empty_path_flag(dirfd: int, path: bytes, call: str) -> tuple[int, int]:
    buffer = ctypes.create_string_buffer(b"\xff" * 256, 256)
    if call == "statx":
        NR.setdefault("statx", syscall_number("statx"))
        result = raw("statx", dirfd, path, AT_EMPTY_PATH, 0x7FF, ctypes.addressof(buffer))
        size = int.from_bytes(buffer.raw[40:48], "little", signed=True)
    else:
        result = raw("newfstatat", dirfd, path, ctypes.addressof(buffer), AT_EMPTY_PATH)
        size = int.from_bytes(buffer.raw[48:56], "little", signed=True)
    return result, size


@compartment(rules=[SystemIO.nothing()])
def stat_through_the_block(dirfd: int, path: bytes, call: str = "newfstatat") -> tuple[int, int]:
    """newfstatat/statx(dirfd in the block, path, AT_EMPTY_PATH): the filter lets these
    through for fstat's sake, but with a non-empty ``path`` the kernel resolves it, and
    an absolute one ignores the dirfd. (the result, st_size: -1 if nothing was written)"""
    return _stat_with_empty_path_flag(dirfd, path, call)


@compartment(rules=[SystemIO.nothing()])
def stat_through_a_served_dir(path: bytes, call: str = "newfstatat") -> tuple[int, int]:
    """The same, relative to a directory the broker served: (the result, st_size)."""
    dirfd = raw("openat", AT_FDCWD, STDLIB.encode(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _stat_with_empty_path_flag(dirfd, path, call)
    finally:
        raw("close", dirfd)


# -- the compartment's own fds in the import block -------------------------------------------------

F_GETFD = 1


@compartment(rules=[SystemIO.nothing()])
class FdHoarder:
    """Fills every lower fd number, so that fds passed to it land in the import block."""

    def __init__(self) -> None:
        self.kept: dict[int, Fd] = {}

    def fill_the_channel_block(self) -> int:
        """dup3 stdin into every free number of 64-127 (fcntl F_GETFD finds them)."""
        NR.setdefault("fcntl", syscall_number("fcntl"))
        filled = 0
        for number in range(64, 128):
            if raw("fcntl", number, F_GETFD) == -errno.EBADF:
                filled += raw("dup3", 0, number, 0) == number
        return filled

    def take(self, passed: Fd) -> int:
        """Keep a passed fd: the number it landed on."""
        number = passed.fileno()
        self.kept[number] = passed
        return number

    def open_served(self) -> int:
        return raw("openat", AT_FDCWD, STDLIB_FILE.encode(), os.O_RDONLY)

    def read_kept(self, number: int) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = raw("read", number, ctypes.addressof(buffer), len(buffer))
        return buffer.raw[: max(size, 0)]


@compartment(rules=[SystemIO.nothing(), Threads.nothing().allow_create()])
def open_once_from_threads(threads: int) -> dict[int, int]:
    """``threads`` threads each open a stdlib file at the same moment: results by errno
    (0: served)."""
    start = threading.Barrier(threads)
    results: list[int] = []

    def run() -> None:
        start.wait()
        fd = raw("openat", AT_FDCWD, STDLIB_FILE.encode(), os.O_RDONLY)
        results.append(min(fd, 0))
        if fd >= 0:
            raw("close", fd)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    counts: dict[int, int] = {}
    for result in results:
        counts[-result] = counts.get(-result, 0) + 1
    return counts
