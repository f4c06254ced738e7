"""SystemIO: files and fds, with extrasafe's method names."""

from __future__ import annotations

import errno
import os
from typing import Any

from .._policy import _landlock
from .._policy._landlock import PathRule
from .._policy._rules import Arg, SeccompRule
from ._builder import BuilderRuleSet, YesReally, fd_number

__all__ = ["SystemIO"]

READ = ("read", "readv", "preadv", "preadv2", "pread64", "lseek")
WRITE = ("write", "writev", "pwritev", "pwritev2", "pwrite64", "fsync", "fdatasync", "lseek")
OPEN = ("open", "openat", "openat2")
META = ("stat", "fstat", "newfstatat", "lstat", "statx", "getdents", "getdents64", "getcwd")
CLOSE = ("close", "close_range")
UNLINK = ("unlink", "unlinkat")
IOCTL = ("ioctl", "fcntl")

# What the Landlock-backed methods grant seccomp-wise. openat (and openat2, whose
# RESOLVE_* flags only narrow) run for every path: Landlock, not the filter, checks it.
# stat by path is granted too (CPython's open() fstats, pathlib stats); Landlock does
# not police metadata reads, so a sealed process can learn which paths exist.
PATH_OPEN = ("open", "openat", "openat2", *META, *CLOSE)
PATH_READ = (*PATH_OPEN, *READ)
PATH_WRITE = (*PATH_OPEN, *WRITE, "ftruncate", "truncate")
PATH_CREATE = (*PATH_WRITE, "creat")
MKDIR = ("mkdir", "mkdirat")
RMDIR = ("rmdir", "unlinkat")

# Beyond extrasafe's list: Debian's hashed certs link into /usr/share/ca-certificates,
# and Fedora keeps its bundle under /etc/pki. Landlock checks the symlink's target.
SSL_PATHS = (
    *_landlock.SSL_FILES,
    "/usr/share/ca-certificates",
    "/etc/pki/tls",
    "/etc/pki/ca-trust",
)

# The kernel's O_TMPFILE is __O_TMPFILE | O_DIRECTORY; masking O_DIRECTORY would refuse
# plain directory opens (os.listdir), so only the __O_TMPFILE bit is checked.
_O_TMPFILE_BIT = 0o20000000
WRITE_INTENT = (
    os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_TRUNC | _O_TMPFILE_BIT
)
_AT_EMPTY_PATH = 0x1000
# Syscalls whose first argument is the fd they act on (fstat is newfstatat(fd, "",
# AT_EMPTY_PATH) in glibc >= 2.33, and statx is checked the same way).
_FD_READ = ("read", "readv", "preadv", "preadv2", "pread64", "lseek", "fstat")
_FD_WRITE = ("write", "writev", "pwritev", "pwritev2", "pwrite64", "fsync", "fdatasync", "lseek")


def _on_fd(syscalls: tuple[str, ...], fd: int) -> list[SeccompRule]:
    return [SeccompRule(name).and_condition(Arg(0, bits=32) == fd) for name in syscalls]


def _stat_fd(fd: int) -> list[SeccompRule]:
    return [
        SeccompRule("newfstatat")
        .and_condition(Arg(0, bits=32) == fd)
        .and_condition(Arg(3) & _AT_EMPTY_PATH == _AT_EMPTY_PATH),
        SeccompRule("statx")
        .and_condition(Arg(0, bits=32) == fd)
        .and_condition(Arg(2) & _AT_EMPTY_PATH == _AT_EMPTY_PATH),
    ]


class SystemIO(BuilderRuleSet):
    """File and fd I/O. ``nothing()`` plus the ``allow_*`` methods you need."""

    name = "SystemIO"

    @classmethod
    def everything(cls) -> SystemIO:
        """Every file syscall, opening any path included."""
        return cls.nothing()._with(simple=READ + WRITE + OPEN + META + CLOSE + UNLINK + IOCTL)

    def allow_read(self) -> SystemIO:
        """Read and seek on any fd already open."""
        return self._with(simple=READ)

    def allow_write(self) -> SystemIO:
        """Write, seek and sync on any fd already open."""
        return self._with(simple=WRITE)

    def allow_metadata(self) -> SystemIO:
        """stat family, directory listing and getcwd (paths included)."""
        return self._with(simple=META)

    def allow_unlink(self) -> SystemIO:
        return self._with(simple=UNLINK)

    def allow_close(self) -> SystemIO:
        return self._with(simple=CLOSE)

    def allow_ioctl(self) -> SystemIO:
        """ioctl and fcntl on any fd, with any command but those the floor refuses.

        Every sealed process also carries a small floor filter (``compartments._policy._floor``)
        that answers EPERM, whatever any RuleSet allows, to the terminal-injection and
        terminal-takeover ioctls (TIOCSTI, TIOCLINUX, TIOCCONS, TIOCSETD, TIOCSPGRP,
        TIOCVHANGUP, TIOCSCTTY's steal form, keymap changes), to the ways of aiming
        signals at another process (F_SETOWN, F_SETOWN_EX, F_SETSIG, FIOSETOWN,
        SIOCSPGRP, FIOASYNC), to F_SETLEASE, and to F_SETFL setting anything but
        O_NONBLOCK: a passed fd shares its file description with the parent, so
        O_APPEND, O_DIRECT, O_ASYNC or O_NOATIME set here would change the parent's own
        file.
        """
        return self._with(simple=IOCTL)

    def allow_open(self) -> YesReally[SystemIO]:
        """Open any path with any flags: risky, so it must be confirmed."""
        return YesReally(self._with(simple=OPEN), "SystemIO.allow_open()")

    def allow_open_readonly(self) -> SystemIO:
        """Open for reading only: no write, append, create, truncate or O_TMPFILE.

        openat2 hides its flags behind a pointer, so it answers ENOSYS and libc falls back
        to openat, whose flags can be checked.
        """
        return self._with(
            conditional=[
                SeccompRule("open").and_condition(Arg(1) & WRITE_INTENT == 0),
                SeccompRule("openat").and_condition(Arg(2) & WRITE_INTENT == 0),
                SeccompRule("openat2").returning_errno(errno.ENOSYS),
            ]
        )

    def allow_stdin(self) -> SystemIO:
        return self._with(conditional=_on_fd(("read",), 0))

    def allow_stdout(self) -> SystemIO:
        return self._with(conditional=_on_fd(("write",), 1))

    def allow_stderr(self) -> SystemIO:
        return self._with(conditional=_on_fd(("write",), 2))

    def allow_file_read(self, file: Any) -> SystemIO:
        """Read, seek and fstat on this one fd."""
        fd = fd_number(file, "SystemIO.allow_file_read")
        return self._with(conditional=_on_fd(_FD_READ, fd) + _stat_fd(fd))

    def allow_file_write(self, file: Any) -> SystemIO:
        """Write, seek and sync on this one fd."""
        fd = fd_number(file, "SystemIO.allow_file_write")
        return self._with(conditional=_on_fd(_FD_WRITE, fd))

    def allow_shared_mapping(self, file: Any) -> SystemIO:
        """mmap with MAP_SHARED on this one fd (SQLite's WAL index, its ``-shm`` file).

        The base set maps files MAP_PRIVATE only, because a shared mapping of an fd
        opened for writing writes the file, and mprotect (which cannot be checked) can
        make a read-only shared mapping writable later. So this grant is write access to
        that fd's file whenever the fd was opened for writing, whatever ``write``
        grants say: give it only on an fd the compartment may write anyway (as
        SQLite's ``-shm`` is, with pwrite64). It needs no ``yes_really()`` because it
        names one fd and adds no power over that fd beyond writing it; it is named
        loudly instead. The grant is on the fd *number* (mmap's fd argument, arg4, low
        32 bits, as the kernel reads it): whatever file later holds that number is
        covered too, as with every fd-scoped grant.
        """
        fd = fd_number(file, "SystemIO.allow_shared_mapping")
        return self._with(conditional=[SeccompRule("mmap").and_condition(Arg(4, bits=32) == fd)])

    # -- Landlock-backed path grants ------------------------------------------------
    #
    # Each one adds a Landlock rule *and* the syscalls it needs. openat becomes
    # unconditional, so these cannot be combined with allow_open_readonly() (or any
    # other argument check on the same syscall): enabling both raises RuleConflictError.
    # Once any path is granted, everything not granted beneath a listed path is denied
    # (EACCES) on kernels with Landlock; see SafetyContext.with_landlock().

    def _path(
        self, path: str | os.PathLike[str], access: int, missing_ok: bool, method: str
    ) -> PathRule:
        """A Landlock grant for ``path``, made absolute now so later chdirs change nothing."""
        text = os.fspath(path)
        if not isinstance(text, str) or not text:
            raise ValueError(f"{self.name}.{method}: expected a non-empty str path, got {path!r}")
        return PathRule(os.path.abspath(text), access, self.name, missing_ok)

    def allow_read_path(
        self, path: str | os.PathLike[str], *, missing_ok: bool = False
    ) -> SystemIO:
        """Read files and list directories beneath ``path`` (or read that one file)."""
        rule = self._path(path, _landlock.READ_PATH, missing_ok, "allow_read_path")
        return self._with(simple=PATH_READ, landlock=[rule])

    def allow_write_file(
        self, path: str | os.PathLike[str], *, missing_ok: bool = False
    ) -> SystemIO:
        """Write and truncate existing files beneath ``path`` (no create, no read).

        Truncation is a separate Landlock right from ABI 3; older kernels need
        ``best_effort`` and then leave truncate(2) unpoliced.
        """
        rule = self._path(path, _landlock.WRITE_FILE, missing_ok, "allow_write_file")
        return self._with(simple=PATH_WRITE, landlock=[rule])

    def allow_create_in_dir(
        self, path: str | os.PathLike[str], *, missing_ok: bool = False
    ) -> SystemIO:
        """Create regular files beneath ``path`` and write them.

        Creating a file you cannot fill is rarely useful, so this also grants the write
        right (Landlock) and the write syscalls: as Landlock rights hold for the whole
        tree, existing files beneath ``path`` become writable too.
        """
        access = _landlock.CREATE_IN_DIR | _landlock.WRITE_FILE
        rule = self._path(path, access, missing_ok, "allow_create_in_dir")
        return self._with(simple=PATH_CREATE, landlock=[rule])

    def allow_list_dir(self, path: str | os.PathLike[str], *, missing_ok: bool = False) -> SystemIO:
        """List directories beneath ``path``; their files stay unreadable."""
        rule = self._path(path, _landlock.LIST_DIR, missing_ok, "allow_list_dir")
        return self._with(simple=PATH_OPEN, landlock=[rule])

    def allow_create_dir(
        self, path: str | os.PathLike[str], *, missing_ok: bool = False
    ) -> SystemIO:
        """mkdir beneath ``path``."""
        rule = self._path(path, _landlock.CREATE_DIR, missing_ok, "allow_create_dir")
        return self._with(simple=MKDIR, landlock=[rule])

    def allow_remove_file(
        self, path: str | os.PathLike[str], *, missing_ok: bool = False
    ) -> SystemIO:
        """unlink files beneath ``path``."""
        rule = self._path(path, _landlock.REMOVE_FILE, missing_ok, "allow_remove_file")
        return self._with(simple=UNLINK, landlock=[rule])

    def allow_remove_dir(
        self, path: str | os.PathLike[str], *, missing_ok: bool = False
    ) -> SystemIO:
        """rmdir (empty) directories beneath ``path``, not ``path`` itself."""
        rule = self._path(path, _landlock.REMOVE_DIR, missing_ok, "allow_remove_dir")
        return self._with(simple=RMDIR, landlock=[rule])

    def allow_ssl_files(self) -> SystemIO:
        """Read the CA certificates and localtime a TLS client loads; absent ones skipped."""
        rules = [self._path(p, _landlock.READ_PATH, True, "allow_ssl_files") for p in SSL_PATHS]
        return self._with(simple=PATH_READ, landlock=rules)

    def allow_dns_files(self) -> SystemIO:
        """Read the resolver's files (resolv.conf, hosts, ...); absent ones skipped.

        glibc >= 2.34 has the files and dns NSS modules built in; other modules
        (mdns, resolve, ...) are shared objects to load before sealing.
        """
        rules = [
            self._path(p, _landlock.READ_FILE, True, "allow_dns_files") for p in _landlock.DNS_FILES
        ]
        return self._with(simple=PATH_READ, landlock=rules)
