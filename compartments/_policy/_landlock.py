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

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ..errors import LandlockError, UnsupportedError
from ._landlock_abi import (
    ACCESS_FS_MAKE_BLOCK,
    ACCESS_FS_MAKE_DIR,
    ACCESS_FS_MAKE_REG,
    ACCESS_FS_READ_DIR,
    ACCESS_FS_READ_FILE,
    ACCESS_FS_REMOVE_DIR,
    ACCESS_FS_REMOVE_FILE,
    ACCESS_FS_TRUNCATE,
    ACCESS_FS_WRITE_FILE,
    ACCESS_NET_BIND_TCP,
    ACCESS_NET_CONNECT_TCP,
    FS_RIGHT_ABI,
    NET_RIGHT_ABI,
    NR_RESTRICT_SELF,
    SCOPE_ABI,
    PathRule,
    PortRule,
    Scope,
    abi_version,
    add_path_rule,
    add_port_rule,
    create_ruleset,
    names,
    set_no_new_privs,
    syscall,
)

__all__ = [
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


# --- the policy -------------------------------------------------------------------


@dataclass(frozen=True)
class Enforcement:
    """What the kernel was actually told: handy for logs, ``inspect`` and tests."""

    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    dropped: tuple[str, ...] = field(default=())


def right_names(rule: PathRule | PortRule | Scope) -> list[str]:
    """The rights a rule grants (or a scope denies), by their kernel names."""
    if isinstance(rule, Scope):
        return [name.removeprefix("scope_") for name in names(int(rule), SCOPE_ABI)]
    return names(rule.access, FS_RIGHT_ABI if isinstance(rule, PathRule) else NET_RIGHT_ABI)


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
        unknown = access & ~sum(FS_RIGHT_ABI)
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
        handled_fs = _supported(FS_RIGHT_ABI, abi) if needed_fs else 0
        handled_net = _supported(NET_RIGHT_ABI, abi) if needed_net else 0
        handled_scope = int(scope) & _supported(SCOPE_ABI, abi)
        if not (handled_fs or handled_net or handled_scope):
            return Enforcement(abi, 0, 0, 0, tuple(dropped))
        if threading.active_count() > 1:
            logger.warning("Landlock restricts only the calling thread; %d Python threads "
                           "are running and stay unrestricted", threading.active_count())
        ruleset_fd = create_ruleset(abi, handled_fs, handled_net, handled_scope)
        try:
            for rule in self._paths.values():
                if rule.access & handled_fs:
                    add_path_rule(ruleset_fd, rule, rule.access & handled_fs)
            for port_rule in self._ports.values():
                access = port_rule.access & handled_net
                if access:
                    add_port_rule(ruleset_fd, port_rule, access)
            set_no_new_privs()
            result = syscall(NR_RESTRICT_SELF, ruleset_fd, 0)
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
        for mask, table in ((needed_fs, FS_RIGHT_ABI), (needed_net, NET_RIGHT_ABI),
                            (scope, SCOPE_ABI))
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
    ruleset_fd = create_ruleset(abi, handled_fs, 0, scope)
    try:
        return syscall(NR_RESTRICT_SELF, ruleset_fd, 0) == 0
    finally:
        os.close(ruleset_fd)
