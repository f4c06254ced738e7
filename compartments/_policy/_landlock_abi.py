"""Landlock's kernel interface: the access rights and the ABI that introduced each, the
structs and raw syscalls, the running kernel's ABI version, and path and port rules
added to a kernel ruleset.

Below ``_landlock`` (the policy: rules, negotiation, applying), which re-exports the
rights and ``Scope`` under their usual names.
"""

from __future__ import annotations

import ctypes
import enum
import errno as errno_codes
import os
import stat
from dataclasses import dataclass
from functools import lru_cache

from .. import _privileges
from ..errors import LandlockError

__all__ = [
    "ACCESS_FS_EXECUTE",
    "ACCESS_FS_IOCTL_DEV",
    "ACCESS_FS_MAKE_BLOCK",
    "ACCESS_FS_MAKE_CHAR",
    "ACCESS_FS_MAKE_DIR",
    "ACCESS_FS_MAKE_FIFO",
    "ACCESS_FS_MAKE_REG",
    "ACCESS_FS_MAKE_SOCK",
    "ACCESS_FS_MAKE_SYM",
    "ACCESS_FS_READ_DIR",
    "ACCESS_FS_READ_FILE",
    "ACCESS_FS_REFER",
    "ACCESS_FS_REMOVE_DIR",
    "ACCESS_FS_REMOVE_FILE",
    "ACCESS_FS_TRUNCATE",
    "ACCESS_FS_WRITE_FILE",
    "ACCESS_NET_BIND_TCP",
    "ACCESS_NET_CONNECT_TCP",
    "CREATE_RULESET_VERSION",
    "FILE_ONLY_RIGHTS",
    "FS_RIGHT_ABI",
    "NET_RIGHT_ABI",
    "NR_ADD_RULE",
    "NR_CREATE_RULESET",
    "NR_RESTRICT_SELF",
    "PR_SET_NO_NEW_PRIVS",
    "RULE_NET_PORT",
    "RULE_PATH_BENEATH",
    "SCOPE_ABI",
    "NetPortAttr",
    "PathBeneathAttr",
    "PathRule",
    "PortRule",
    "RulesetAttr",
    "Scope",
    "abi_version",
    "add_path_rule",
    "add_port_rule",
    "create_ruleset",
    "libc",
    "names",
    "set_no_new_privs",
    "syscall",
]

# --- kernel constants (include/uapi/linux/landlock.h) -------------------------------

ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5

ACCESS_NET_BIND_TCP = 1 << 0  # ABI 4
ACCESS_NET_CONNECT_TCP = 1 << 1  # ABI 4


class Scope(enum.IntFlag):
    """IPC the domain may not reach outside itself (ABI 6)."""

    NONE = 0
    ABSTRACT_UNIX_SOCKET = 1 << 0
    SIGNAL = 1 << 1
    ALL = ABSTRACT_UNIX_SOCKET | SIGNAL


CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2
# Unified syscall numbers: identical on every architecture but alpha.
NR_CREATE_RULESET = 444
NR_ADD_RULE = 445
NR_RESTRICT_SELF = 446
PR_SET_NO_NEW_PRIVS = 38

# Which ABI introduced each right: negotiation and error messages read this table.
FS_RIGHT_ABI: dict[int, tuple[str, int]] = {
    ACCESS_FS_EXECUTE: ("execute", 1),
    ACCESS_FS_WRITE_FILE: ("write_file", 1),
    ACCESS_FS_READ_FILE: ("read_file", 1),
    ACCESS_FS_READ_DIR: ("read_dir", 1),
    ACCESS_FS_REMOVE_DIR: ("remove_dir", 1),
    ACCESS_FS_REMOVE_FILE: ("remove_file", 1),
    ACCESS_FS_MAKE_CHAR: ("make_char", 1),
    ACCESS_FS_MAKE_DIR: ("make_dir", 1),
    ACCESS_FS_MAKE_REG: ("make_reg", 1),
    ACCESS_FS_MAKE_SOCK: ("make_sock", 1),
    ACCESS_FS_MAKE_FIFO: ("make_fifo", 1),
    ACCESS_FS_MAKE_BLOCK: ("make_block", 1),
    ACCESS_FS_MAKE_SYM: ("make_sym", 1),
    ACCESS_FS_REFER: ("refer", 2),
    ACCESS_FS_TRUNCATE: ("truncate", 3),
    ACCESS_FS_IOCTL_DEV: ("ioctl_dev", 5),
}
NET_RIGHT_ABI: dict[int, tuple[str, int]] = {
    ACCESS_NET_BIND_TCP: ("bind_tcp", 4),
    ACCESS_NET_CONNECT_TCP: ("connect_tcp", 4),
}
SCOPE_ABI: dict[int, tuple[str, int]] = {
    Scope.ABSTRACT_UNIX_SOCKET: ("scope_abstract_unix_socket", 6),
    Scope.SIGNAL: ("scope_signal", 6),
}
# The only rights the kernel accepts on a rule for a non-directory.
FILE_ONLY_RIGHTS = (
    ACCESS_FS_EXECUTE
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_READ_FILE
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_IOCTL_DEV
)


# --- libc ---------------------------------------------------------------------------

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.restype = ctypes.c_int
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


class RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class NetPortAttr(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


def syscall(number: int, *args: int) -> int:
    """Call a raw syscall (every argument passed as a long); return result or -errno."""
    ctypes.set_errno(0)
    result = int(libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args)))
    return -ctypes.get_errno() if result == -1 else result


def set_no_new_privs() -> None:
    """Promise the kernel no execve will gain privileges (required to self-restrict)."""
    try:
        _privileges.set_no_new_privs()
    except OSError as exc:
        raise LandlockError(exc.errno, str(exc)) from None


@lru_cache(maxsize=1)
def abi_version() -> int:
    """The running kernel's Landlock ABI, 0 when Landlock is absent or disabled."""
    result = syscall(NR_CREATE_RULESET, 0, 0, CREATE_RULESET_VERSION)
    return max(result, 0)


# --- rules, as the kernel takes them -----------------------------------------------


@dataclass(frozen=True)
class PathRule:
    """Grant ``access`` (ACCESS_FS_* bits) beneath ``path``, on behalf of ``ruleset``."""

    path: str
    access: int
    ruleset: str
    missing_ok: bool = False


@dataclass(frozen=True)
class PortRule:
    """Grant ``access`` (TCP_BIND / TCP_CONNECT) on TCP ``port``, for ``ruleset``."""

    port: int
    access: int
    ruleset: str


def names(mask: int, table: dict[int, tuple[str, int]]) -> list[str]:
    return [name for bit, (name, _abi) in table.items() if mask & bit]


def create_ruleset(abi: int, handled_fs: int, handled_net: int, scoped: int) -> int:
    attr = RulesetAttr(handled_fs, handled_net, scoped)
    # Older kernels know a shorter struct; pass only what they understand.
    size = 8 if abi < 4 else 16 if abi < 6 else ctypes.sizeof(attr)
    result = syscall(NR_CREATE_RULESET, ctypes.addressof(attr),
                      size, 0)
    if result < 0:
        raise LandlockError(
            -result,
            f"landlock_create_ruleset (fs={names(handled_fs, FS_RIGHT_ABI)}, "
            f"net={names(handled_net, NET_RIGHT_ABI)}, "
            f"scoped={names(scoped, SCOPE_ABI)}) failed: {os.strerror(-result)}",
        )
    return result


def add_path_rule(ruleset_fd: int, rule: PathRule, access: int) -> None:
    try:
        path_fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        if rule.missing_ok:
            return
        raise LandlockError(
            errno_codes.ENOENT,
            f"path granted by RuleSet `{rule.ruleset}` does not exist", rule.path,
        ) from exc
    except OSError as exc:
        raise LandlockError(exc.errno, f"cannot open path granted by RuleSet "
                                       f"`{rule.ruleset}`: {exc.strerror}", rule.path) from exc
    try:
        if not stat.S_ISDIR(os.fstat(path_fd).st_mode):
            if not access & FILE_ONLY_RIGHTS:
                raise LandlockError(
                    errno_codes.ENOTDIR,
                    f"RuleSet `{rule.ruleset}` grants directory rights "
                    f"{names(access, FS_RIGHT_ABI)} on a non-directory", rule.path,
                )
            access &= FILE_ONLY_RIGHTS
        attr = PathBeneathAttr(access, path_fd)
        result = syscall(NR_ADD_RULE, ruleset_fd, RULE_PATH_BENEATH,
                          ctypes.addressof(attr), 0)
        if result < 0:
            raise LandlockError(
                -result,
                f"landlock_add_rule {names(access, FS_RIGHT_ABI)} for RuleSet "
                f"`{rule.ruleset}` failed: {os.strerror(-result)}", rule.path,
            )
    finally:
        os.close(path_fd)


def add_port_rule(ruleset_fd: int, rule: PortRule, access: int) -> None:
    attr = NetPortAttr(access, rule.port)
    result = syscall(NR_ADD_RULE, ruleset_fd, RULE_NET_PORT,
                      ctypes.addressof(attr), 0)
    if result < 0:
        raise LandlockError(
            -result,
            f"landlock_add_rule {names(access, NET_RIGHT_ABI)} on TCP port {rule.port} "
            f"for RuleSet `{rule.ruleset}` failed: {os.strerror(-result)}",
        )
