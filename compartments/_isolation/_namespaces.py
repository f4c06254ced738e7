"""The kernel side of Isolate: namespaces, id maps and the new root, through ctypes.

:mod:`._isolate` decides which processes fork when and what travels back to the
caller; this module holds the Linux calls those processes make, none of which Python
wraps: ``unshare`` of the namespaces, the uid/gid maps, ``mount`` and
``mount_setattr`` to build a root on a size-limited tmpfs from read-only (or
writable) binds, and ``pivot_root`` into it.  It knows nothing of processes, pipes
or results, so either side can be read on its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import re
import shutil
import stat
import sys
from dataclasses import dataclass

from ..errors import UnsupportedError

__all__ = [
    "Bind",
    "Plan",
    "build_root",
    "pivot_into",
    "pivot_root_number",
    "remove_mount_point",
    "runtime_binds",
    "set_parent_death_signal",
    "tmpfs_size_option",
    "undo_mount_point",
    "unshare_namespaces",
    "write_id_maps",
]


# --- kernel constants ---------------------------------------------------------------

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000

_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2

_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_NR_MOUNT_SETATTR = 442  # unified number

_PR_SET_PDEATHSIG = 1
_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4

_NR_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}

_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


# --- what the root is made of -------------------------------------------------------


@dataclass(frozen=True)
class Bind:
    """Make host path ``src`` visible at ``dst`` inside (same path by default)."""

    src: str
    dst: str = ""
    writable: bool = False

    @property
    def target(self) -> str:
        return self.dst or self.src


def runtime_binds() -> list[str]:
    """Host paths the interpreter needs for lazy imports and shared libraries."""
    candidates = ["/usr", "/bin", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache",
                  sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix]
    chosen: list[str] = []
    for path in candidates:
        if not os.path.lexists(path) or path in chosen:
            continue
        covered = any(path.startswith(parent.rstrip("/") + "/") for parent in chosen
                      if not os.path.islink(parent))
        if not covered:
            chosen.append(path)
    return chosen


def tmpfs_size_option(size: int | str) -> str:
    """``size`` as tmpfs's ``size=`` mount option; ValueError when it is not one."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"tmpfs_size must be positive, got {size}")
        return str(size)
    if not re.fullmatch(r"[1-9][0-9]*[kKmMgG]?", size):
        raise ValueError(f"tmpfs_size {size!r} is not like 4096, '512k', '16M' or '1G'")
    return size


@dataclass(frozen=True)
class Plan:
    """Everything about the isolated environment, decided on the caller's side."""

    root: str
    tmpfs_size: str
    runtime: tuple[str, ...]
    binds: tuple[Bind, ...]
    devices: bool
    proc: bool
    hostname: str
    network: bool
    pass_fds: tuple[int, ...]
    capture: bool
    pivot_root_nr: int


def pivot_root_number() -> int:
    """pivot_root's syscall number on this machine (glibc does not wrap it)."""
    number = _NR_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise UnsupportedError(f"Isolate does not know pivot_root on {platform.machine()}")
    return number


# --- libc ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


def _check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _encode(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def _mount(src: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    result = _libc.mount(_encode(src), _encode(target), _encode(fstype), flags, _encode(data))
    _check(result, f"mount {src or fstype} on {target}")


def _prctl(option: int, arg: int = 0) -> int:
    return int(_libc.prctl(option, arg, 0, 0, 0))


class _MountAttr(ctypes.Structure):
    _fields_ = (("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64))


# --- the process: namespaces, ids, parent death -------------------------------------


def set_parent_death_signal(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent ends."""
    _prctl(_PR_SET_PDEATHSIG, signum)


def unshare_namespaces(network: bool) -> None:
    """Enter new user, mount, PID, IPC, UTS (and network) namespaces; OSError if not."""
    flags = (_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS
             | (0 if network else _CLONE_NEWNET))
    _check(_libc.unshare(flags), "unshare")


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def write_id_maps(uid: int, gid: int) -> None:
    """Map 0 inside to ``uid``/``gid`` outside (setgroups denied).

    A non-dumpable process's /proc/self files belong to the host's root, so an
    unprivileged caller could not write its own maps: be dumpable just for the writes.
    """
    dumpable = _prctl(_PR_GET_DUMPABLE)
    if dumpable != 1:
        _prctl(_PR_SET_DUMPABLE, 1)
    try:
        _write_file("/proc/self/setgroups", "deny")
        _write_file("/proc/self/uid_map", f"0 {uid} 1")
        _write_file("/proc/self/gid_map", f"0 {gid} 1")
    finally:
        if dumpable != 1:
            _prctl(_PR_SET_DUMPABLE, 0)


# --- the new root -------------------------------------------------------------------


def build_root(plan: Plan) -> None:
    """Mount the tmpfs on ``plan.root`` and fill it: binds, devices, /proc and /tmp."""
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount("tmpfs", plan.root, "tmpfs", _MS_NOSUID | _MS_NODEV,
           f"size={plan.tmpfs_size},mode=0755")
    for path in plan.runtime:
        if os.path.islink(path):
            _mirror_symlink(plan.root, path)
        else:
            _bind(plan.root, Bind(path, path))
    for bind in plan.binds:
        _bind(plan.root, bind)
    if plan.devices:
        for device in _DEVICES:
            if os.path.exists(device):
                _bind(plan.root, Bind(device, device, writable=True))
    if plan.proc:
        target = _inside(plan.root, "/proc")
        os.makedirs(target, exist_ok=True)
        _mount("proc", target, "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    tmp = _inside(plan.root, "/tmp")
    os.makedirs(tmp, exist_ok=True)
    os.chmod(tmp, 0o1777)


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _mirror_symlink(root: str, path: str) -> None:
    link = _inside(root, path)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.lexists(link):
        os.symlink(os.readlink(path), link)


def _bind(root: str, bind: Bind) -> None:
    target = _inside(root, bind.target)
    if os.path.isdir(bind.src):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    _mount(bind.src, target, None, _MS_BIND | _MS_REC)
    if not bind.writable:
        _make_read_only(bind.src, target)


def _make_read_only(src: str, target: str) -> None:
    """Recursive read-only (mount_setattr); plain remount on kernels before 5.12."""
    attr = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, 0, 0)
    ctypes.set_errno(0)
    result = _libc.syscall(ctypes.c_long(_NR_MOUNT_SETATTR), ctypes.c_long(_AT_FDCWD),
                           ctypes.c_char_p(os.fsencode(target)), ctypes.c_long(_AT_RECURSIVE),
                           ctypes.c_void_p(ctypes.addressof(attr)),
                           ctypes.c_long(ctypes.sizeof(attr)))
    if result == 0:
        return
    if ctypes.get_errno() != errno.ENOSYS:
        _check(-1, f"mount_setattr read-only on {target}")
    # Flags the source mount has are locked in a user namespace: keep them.
    locked = os.statvfs(src).f_flag & (os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC
                                       | os.ST_NOATIME | os.ST_NODIRATIME | os.ST_RELATIME)
    _mount(None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | locked)


def pivot_into(root: str, pivot_root_nr: int) -> None:
    """Make ``root`` this mount namespace's /, detaching the old root entirely."""
    os.chdir(root)
    ctypes.set_errno(0)
    result = _libc.syscall(ctypes.c_long(pivot_root_nr), ctypes.c_char_p(b"."),
                           ctypes.c_char_p(b"."))
    _check(result, "pivot_root")
    _check(_libc.umount2(b".", _MNT_DETACH), "detach old root")
    os.chdir("/")


# --- the mount point: a host temporary directory ------------------------------------


def undo_mount_point(root: str, parent_fd: int) -> None:
    """Remove the host directory the tmpfs was mounted on, from inside."""
    with contextlib.suppress(OSError):  # still mounted: setup failed before pivot_root
        _check(_libc.umount2(os.fsencode(root), _MNT_DETACH), "umount")
    with contextlib.suppress(OSError):
        os.rmdir(os.path.basename(root), dir_fd=parent_fd)


def remove_mount_point(root: str) -> None:
    """The tmpfs lived in the dead namespace: only an empty directory is left."""
    try:
        os.rmdir(root)
    except OSError:
        if os.path.isdir(root) and not stat.S_ISLNK(os.lstat(root).st_mode):
            shutil.rmtree(root, ignore_errors=True)
