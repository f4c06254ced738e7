"""Landlock through raw syscalls, with ABI negotiation.

Why Landlock next to seccomp: a seccomp filter sees syscall numbers and register
values, never the path behind a pointer, so it can say "openat is allowed" but not
"only under /srv/data".  Landlock is the kernel's path- and port-aware layer.  The two
stack, and both must agree for an operation to succeed:

* seccomp decides whether the *syscall* may run at all (``openat``, ``mkdirat``,
  ``unlinkat``, ``connect``, ``bind``, ``kill`` ...).  A path rule is useless when the
  filter denies ``openat``: the RuleSet granting a path must also allow the syscalls.
* Landlock then decides whether that syscall may touch *this path* (or this TCP
  port, or a process / abstract socket outside the sandbox).

Semantics, as in extrasafe: once a policy holds any path rule, every filesystem
access right the running kernel knows is *handled*, so whatever is not granted
beneath a listed path is denied (``EACCES``).  Port rules likewise handle both TCP
bind and TCP connect.  Rights a rule needs but the kernel lacks raise
:class:`UnsupportedError`, or with ``best_effort=True`` are dropped with a warning
(the kernel then simply does not police them).

Landlock restricts the calling *thread* and what it spawns afterwards, so apply the
policy before any thread starts.  Opened file descriptors keep working: only new
path lookups are checked (truncate and device ioctl are the exceptions, checked on
the fd's opening).
"""

from __future__ import annotations

import ctypes
import enum
import errno as errno_codes
import logging
import os
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache

from .. import _privileges
from ..errors import LandlockError, UnsupportedError

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
    "CREATE_DIR",
    "CREATE_IN_DIR",
    "DNS_FILES",
    "LIST_DIR",
    "READ_FILE",
    "READ_PATH",
    "REMOVE_DIR",
    "REMOVE_FILE",
    "SSL_FILES",
    "TCP_BIND",
    "TCP_CONNECT",
    "WRITE_FILE",
    "Enforcement",
    "LandlockPolicy",
    "PathRule",
    "PortRule",
    "Scope",
    "abi_version",
    "enter_private_domain",
    "right_names",
    "set_no_new_privs",
]

logger = logging.getLogger("compartments")

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


_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2
# Unified syscall numbers: identical on every architecture but alpha.
_NR_CREATE_RULESET = 444
_NR_ADD_RULE = 445
_NR_RESTRICT_SELF = 446
_PR_SET_NO_NEW_PRIVS = 38

# Which ABI introduced each right: negotiation and error messages read this table.
_FS_RIGHT_ABI: dict[int, tuple[str, int]] = {
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
_NET_RIGHT_ABI: dict[int, tuple[str, int]] = {
    ACCESS_NET_BIND_TCP: ("bind_tcp", 4),
    ACCESS_NET_CONNECT_TCP: ("connect_tcp", 4),
}
_SCOPE_ABI: dict[int, tuple[str, int]] = {
    Scope.ABSTRACT_UNIX_SOCKET: ("scope_abstract_unix_socket", 6),
    Scope.SIGNAL: ("scope_signal", 6),
}
# The only rights the kernel accepts on a rule for a non-directory.
_FILE_ONLY_RIGHTS = (
    ACCESS_FS_EXECUTE
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_READ_FILE
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_IOCTL_DEV
)

# --- groups with extrasafe's meaning ---------------------------------------------

READ_FILE = ACCESS_FS_READ_FILE
"""Read regular files (no listing)."""
LIST_DIR = ACCESS_FS_READ_DIR
"""List directory entries."""
READ_PATH = ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
"""Read files and list directories beneath a path (``allow_read_path``)."""
WRITE_FILE = ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE
"""Write (and, from ABI 3, truncate) files beneath a path (``allow_write_file``)."""
CREATE_IN_DIR = ACCESS_FS_MAKE_REG
"""Create regular files in a directory; writing them also needs WRITE_FILE."""
CREATE_DIR = ACCESS_FS_MAKE_DIR
REMOVE_FILE = ACCESS_FS_REMOVE_FILE
REMOVE_DIR = ACCESS_FS_REMOVE_DIR
TCP_BIND = ACCESS_NET_BIND_TCP
TCP_CONNECT = ACCESS_NET_CONNECT_TCP

SSL_FILES = ("/etc/ssl/certs", "/etc/ca-certificates", "/etc/localtime")
"""What TLS clients read (extrasafe's ``allow_ssl_files``); grant with READ_PATH."""
DNS_FILES = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
)
"""What the resolver reads (extrasafe's ``allow_dns_files``); grant with READ_FILE."""


# --- libc ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPortAttr(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


def _syscall(number: int, *args: int) -> int:
    """Call a raw syscall (every argument passed as a long); return result or -errno."""
    ctypes.set_errno(0)
    result = int(_libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args)))
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
    result = _syscall(_NR_CREATE_RULESET, 0, 0, _CREATE_RULESET_VERSION)
    return max(result, 0)


# --- rules --------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Enforcement:
    """What the kernel was actually told: handy for logs, ``inspect`` and tests."""

    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    dropped: tuple[str, ...] = field(default=())


def _names(mask: int, table: dict[int, tuple[str, int]]) -> list[str]:
    return [name for bit, (name, _abi) in table.items() if mask & bit]


def right_names(rule: PathRule | PortRule | Scope) -> list[str]:
    """The rights a rule grants (or a scope denies), by their kernel names."""
    if isinstance(rule, Scope):
        return [name.removeprefix("scope_") for name in _names(int(rule), _SCOPE_ABI)]
    return _names(rule.access, _FS_RIGHT_ABI if isinstance(rule, PathRule) else _NET_RIGHT_ABI)


def _supported(table: dict[int, tuple[str, int]], abi: int) -> int:
    return sum(bit for bit, (_name, needed) in table.items() if needed <= abi)


class LandlockPolicy:
    """Path, port and scope rules gathered from RuleSets, applied in one go.

    A path granted by two different RuleSets is a configuration error (as in
    extrasafe): it usually means two RuleSets disagree about who owns it.  Rules of
    one RuleSet on the same path are merged.  Port rules merge across RuleSets: two
    RuleSets wanting to reach port 443 do not conflict.
    """

    def __init__(self, scoped: bool | Scope = False) -> None:
        self._paths: dict[str, PathRule] = {}
        self._ports: dict[int, PortRule] = {}
        self._scope = Scope.ALL if scoped is True else Scope(int(scoped))

    # -- gathering --

    def add(self, rule: PathRule | PortRule) -> None:
        """Add a rule produced by a RuleSet."""
        if isinstance(rule, PathRule):
            self.add_path(rule.path, rule.access, rule.ruleset, missing_ok=rule.missing_ok)
        else:
            self.add_port(rule.port, rule.access, rule.ruleset)

    def extend(self, rules: Iterable[PathRule | PortRule]) -> None:
        for rule in rules:
            self.add(rule)

    def add_path(self, path: str | os.PathLike[str], access: int, ruleset: str = "",
                 *, missing_ok: bool = False) -> None:
        """Grant ``access`` beneath ``path``; raise on a path another RuleSet grants."""
        text = os.fspath(path)
        unknown = access & ~sum(_FS_RIGHT_ABI)
        if access <= 0 or unknown:
            raise ValueError(f"invalid filesystem access {access:#x} for path {text!r}")
        key = os.path.realpath(text)
        previous = self._paths.get(key)
        if previous is None:
            self._paths[key] = PathRule(text, access, ruleset, missing_ok)
            return
        if previous.ruleset != ruleset:
            same = "" if previous.path == text else f" (as {previous.path!r})"
            raise LandlockError(
                f"path {text!r}{same} is granted by two RuleSets, `{previous.ruleset}` and "
                f"`{ruleset}`: grant it from one RuleSet only"
            )
        self._paths[key] = replace(previous, access=previous.access | access,
                                   missing_ok=previous.missing_ok and missing_ok)

    def add_port(self, port: int, access: int, ruleset: str = "") -> None:
        """Grant TCP bind and/or connect on ``port``."""
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"TCP port {port} out of range")
        if access <= 0 or access & ~(TCP_BIND | TCP_CONNECT):
            raise ValueError(f"invalid network access {access:#x} for port {port}")
        previous = self._ports.get(port)
        merged = access | (previous.access if previous else 0)
        self._ports[port] = PortRule(port, merged, previous.ruleset if previous else ruleset)

    def add_scope(self, scope: Scope) -> None:
        """Cut IPC (abstract unix sockets, signals) to outside the domain (ABI 6)."""
        self._scope |= scope

    @property
    def path_rules(self) -> tuple[PathRule, ...]:
        return tuple(self._paths.values())

    @property
    def port_rules(self) -> tuple[PortRule, ...]:
        return tuple(self._ports.values())

    @property
    def rules(self) -> tuple[PathRule | PortRule, ...]:
        return (*self._paths.values(), *self._ports.values())

    def __bool__(self) -> bool:
        return bool(self._paths or self._ports or self._scope)

    # -- applying --

    def apply(self, *, best_effort: bool = False,
              scoped: bool | Scope = False) -> Enforcement | None:
        """Restrict the calling thread for good; None when there was nothing to apply.

        Sets no_new_privs first.  Every kernel refusal is a LandlockError naming the
        path or port involved.
        """
        scope = self._scope | (Scope.ALL if scoped is True else Scope(int(scoped)))
        if not (self._paths or self._ports or scope):
            return None
        abi = abi_version()
        needed_fs = 0
        for rule in self._paths.values():
            needed_fs |= rule.access
        needed_net = 0
        for port_rule in self._ports.values():
            needed_net |= port_rule.access
        dropped = _check_support(abi, needed_fs, needed_net, int(scope), best_effort)
        if abi == 0:
            return Enforcement(0, 0, 0, 0, tuple(dropped))
        handled_fs = _supported(_FS_RIGHT_ABI, abi) if needed_fs else 0
        handled_net = _supported(_NET_RIGHT_ABI, abi) if needed_net else 0
        handled_scope = int(scope) & _supported(_SCOPE_ABI, abi)
        if not (handled_fs or handled_net or handled_scope):
            return Enforcement(abi, 0, 0, 0, tuple(dropped))
        if threading.active_count() > 1:
            logger.warning("Landlock restricts only the calling thread; %d Python threads "
                           "are running and stay unrestricted", threading.active_count())
        ruleset_fd = _create_ruleset(abi, handled_fs, handled_net, handled_scope)
        try:
            for rule in self._paths.values():
                if rule.access & handled_fs:
                    _add_path_rule(ruleset_fd, rule, rule.access & handled_fs)
            for port_rule in self._ports.values():
                access = port_rule.access & handled_net
                if access:
                    _add_port_rule(ruleset_fd, port_rule, access)
            set_no_new_privs()
            result = _syscall(_NR_RESTRICT_SELF, ruleset_fd, 0)
            if result < 0:
                raise LandlockError(-result, f"landlock_restrict_self failed: "
                                             f"{os.strerror(-result)}")
        finally:
            os.close(ruleset_fd)
        return Enforcement(abi, handled_fs, handled_net, handled_scope, tuple(dropped))


def _check_support(abi: int, needed_fs: int, needed_net: int, scope: int,
                   best_effort: bool) -> list[str]:
    """Name every needed right the kernel lacks; raise unless best effort."""
    missing = [
        (name, needed)
        for mask, table in ((needed_fs, _FS_RIGHT_ABI), (needed_net, _NET_RIGHT_ABI),
                            (scope, _SCOPE_ABI))
        for bit, (name, needed) in table.items()
        if mask & bit and needed > abi
    ]
    for name, needed in missing:
        if not best_effort:
            running = f"Landlock ABI {abi}" if abi else "no Landlock"
            raise UnsupportedError(
                f"Landlock right `{name}` needs ABI {needed}, but the running kernel has "
                f"{running}; pass best_effort=True to run without it"
            )
        logger.warning("Landlock right `%s` needs ABI %d; running kernel has ABI %d: "
                       "not enforced", name, needed, abi)
    return [name for name, _needed in missing]


def _create_ruleset(abi: int, handled_fs: int, handled_net: int, scoped: int) -> int:
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    # Older kernels know a shorter struct; pass only what they understand.
    size = 8 if abi < 4 else 16 if abi < 6 else ctypes.sizeof(attr)
    result = _syscall(_NR_CREATE_RULESET, ctypes.addressof(attr),
                      size, 0)
    if result < 0:
        raise LandlockError(
            -result,
            f"landlock_create_ruleset (fs={_names(handled_fs, _FS_RIGHT_ABI)}, "
            f"net={_names(handled_net, _NET_RIGHT_ABI)}, "
            f"scoped={_names(scoped, _SCOPE_ABI)}) failed: {os.strerror(-result)}",
        )
    return result


def _add_path_rule(ruleset_fd: int, rule: PathRule, access: int) -> None:
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
            if not access & _FILE_ONLY_RIGHTS:
                raise LandlockError(
                    errno_codes.ENOTDIR,
                    f"RuleSet `{rule.ruleset}` grants directory rights "
                    f"{_names(access, _FS_RIGHT_ABI)} on a non-directory", rule.path,
                )
            access &= _FILE_ONLY_RIGHTS
        attr = _PathBeneathAttr(access, path_fd)
        result = _syscall(_NR_ADD_RULE, ruleset_fd, _RULE_PATH_BENEATH,
                          ctypes.addressof(attr), 0)
        if result < 0:
            raise LandlockError(
                -result,
                f"landlock_add_rule {_names(access, _FS_RIGHT_ABI)} for RuleSet "
                f"`{rule.ruleset}` failed: {os.strerror(-result)}", rule.path,
            )
    finally:
        os.close(path_fd)


def _add_port_rule(ruleset_fd: int, rule: PortRule, access: int) -> None:
    attr = _NetPortAttr(access, rule.port)
    result = _syscall(_NR_ADD_RULE, ruleset_fd, _RULE_NET_PORT,
                      ctypes.addressof(attr), 0)
    if result < 0:
        raise LandlockError(
            -result,
            f"landlock_add_rule {_names(access, _NET_RIGHT_ABI)} on TCP port {rule.port} "
            f"for RuleSet `{rule.ruleset}` failed: {os.strerror(-result)}",
        )


def enter_private_domain(*, mounts_needed: bool = False) -> bool:
    """Put the calling process into a Landlock domain of its own, one that takes away
    nothing the process needs; True if it now is in one.

    A process in a domain may ptrace (and so read ``/proc/<pid>/mem`` of, or
    ``process_vm_readv``) only processes in the same or a nested domain (since ABI 1).
    With every compartment in its own domain, siblings, the zygote and the parent are out
    of its reach, while the parent (in no domain) may still read a compartment's memory.
    The domain handles:

    - ABI 6+: only the signal scope: no signals to processes outside the domain;
    - ABI 1-5: only ``MAKE_BLOCK``, with no rule: no block device nodes (which need
      CAP_MKNOD anyway). But any filesystem right also forbids mount(2), so when
      ``mounts_needed`` (an Isolate sets up its root later) no domain is entered.

    Must run while single-threaded and after no_new_privs: a domain binds only the
    calling thread and its later children.
    """
    abi = abi_version()
    if abi >= 6:
        handled_fs, scope = 0, int(Scope.SIGNAL)
    elif abi >= 1 and not mounts_needed:
        handled_fs, scope = ACCESS_FS_MAKE_BLOCK, 0
    else:
        return False
    set_no_new_privs()
    ruleset_fd = _create_ruleset(abi, handled_fs, 0, scope)
    try:
        return _syscall(_NR_RESTRICT_SELF, ruleset_fd, 0) == 0
    finally:
        os.close(ruleset_fd)
