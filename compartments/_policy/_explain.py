"""Policies in words: syscall conditions decoded with the constants they compare.

``SafetyContext.describe()`` prints raw masks (``arg1 & 0xffffffff == 0x6``); the CLI
prints ``fcntl(fd, F_SETLK)`` instead, where a small table of well-known constants
(fcntl and ioctl commands, open, mmap and clone flags, socket families and types,
signals) knows the argument. Anything it does not know stays a number: the tables are
a reading aid, never a source of truth for the filter.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import signal
import socket
import termios
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._text import printable
from . import _floor
from ._landlock import PathRule, PortRule, right_names
from ._rules import SeccompRule
from ._seccomp import MASKED_EQ, OPERATORS, Comparison

if TYPE_CHECKING:
    from ._context import SafetyContext

__all__ = [
    "ARGUMENTS",
    "condition_data",
    "describe_rule",
    "policy_data",
    "policy_text",
    "rule_text",
    "table",
]

_LOW_32 = 0xFFFFFFFF
_OPERATOR_TEXT = {code: text for text, code in OPERATORS.items()}


def _named(module: object, names: str) -> dict[int, str]:
    """value → name for the names this platform's ``module`` defines (first name wins)."""
    table: dict[int, str] = {}
    for name in names.split():
        value = getattr(module, name, None)
        if isinstance(value, int):
            table.setdefault(int(value), name)
    return table


@dataclass(frozen=True)
class _Kind:
    """How to read one argument: as one of ``values``, or as a set of ``flags`` bits.

    ``fields``: named sub-masks whose value is one of an enumeration, not a bit set
    (``flags & MAP_TYPE == MAP_PRIVATE``).
    """

    values: Mapping[int, str] = field(default_factory=dict)
    flags: Mapping[int, str] = field(default_factory=dict)
    fields: Mapping[int, tuple[str, Mapping[int, str]]] = field(default_factory=dict)

    def value_text(self, value: int) -> str:
        if value in self.values:
            return self.values[value]
        if self.flags:
            return _flags_text(value, self.flags)
        return str(value) if value < 4096 else hex(value)


def _flags_text(value: int, flags: Mapping[int, str]) -> str:
    if value == 0:
        return "0"
    names, rest = [], value
    for bit, name in sorted(flags.items()):
        if bit and value & bit == bit and rest & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(hex(rest))
    return "|".join(names)


_FCNTL = _Kind(values={**_named(fcntl, """F_DUPFD F_GETFD F_SETFD F_GETFL F_SETFL F_GETLK
    F_SETLK F_SETLKW F_SETOWN F_GETOWN F_SETSIG F_GETSIG F_SETLEASE F_GETLEASE F_NOTIFY
    F_DUPFD_CLOEXEC F_SETPIPE_SZ F_GETPIPE_SZ F_ADD_SEALS F_GET_SEALS F_OFD_GETLK
    F_OFD_SETLK F_OFD_SETLKW"""), **{v: k for k, v in _floor.FLOOR_FCNTL.items()}})  # fmt: skip
_IOCTL = _Kind(values={
    **_named(termios, """TCGETS TCSETS TCSETSW TCSETSF TIOCGWINSZ TIOCSWINSZ TIOCGPGRP
        TIOCSPGRP TIOCSTI TIOCSCTTY TIOCNOTTY TIOCCONS TIOCLINUX TIOCVHANGUP TIOCSETD
        TIOCGETD TIOCOUTQ TIOCEXCL TIOCNXCL FIONREAD FIONBIO FIOCLEX FIONCLEX FIOASYNC
        FIOSETOWN FIOGETOWN"""),
    **{value: name for name, value in _floor.FLOOR_IOCTL.items()},
})  # fmt: skip
_OPEN_FLAGS = {
    **_named(os, """O_WRONLY O_RDWR O_CREAT O_EXCL O_NOCTTY O_TRUNC O_APPEND O_NONBLOCK
        O_DSYNC O_ASYNC O_DIRECT O_LARGEFILE O_DIRECTORY O_NOFOLLOW O_NOATIME O_CLOEXEC
        O_PATH"""),
    0x400000: "__O_TMPFILE",  # O_TMPFILE is this bit with O_DIRECTORY
}
_OPEN = _Kind(flags=_OPEN_FLAGS, fields={
    os.O_ACCMODE: ("O_ACCMODE", {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY",
                                 os.O_RDWR: "O_RDWR"}),
})  # fmt: skip
_MAP_TYPES = {**_named(mmap, "MAP_SHARED MAP_PRIVATE"), 0x03: "MAP_SHARED_VALIDATE"}
_MMAP_FLAGS = _Kind(
    flags={
        **_named(mmap, "MAP_ANONYMOUS MAP_DENYWRITE MAP_EXECUTABLE MAP_POPULATE MAP_STACK"),
        0x10: "MAP_FIXED", 0x100000: "MAP_FIXED_NOREPLACE", 0x4000: "MAP_NORESERVE",
        0x100: "MAP_GROWSDOWN", 0x40000: "MAP_HUGETLB",
    },
    fields={0x0F: ("MAP_TYPE", _MAP_TYPES)},
)  # fmt: skip
_PROT = _Kind(flags=_named(mmap, "PROT_READ PROT_WRITE PROT_EXEC"))
# <linux/sched.h>: the same on every architecture (the MAP_* above: asm-generic values).
_CLONE = _Kind(flags={
    0x100: "CLONE_VM", 0x200: "CLONE_FS", 0x400: "CLONE_FILES", 0x800: "CLONE_SIGHAND",
    0x1000: "CLONE_PIDFD", 0x2000: "CLONE_PTRACE", 0x4000: "CLONE_VFORK",
    0x8000: "CLONE_PARENT", 0x10000: "CLONE_THREAD", 0x20000: "CLONE_NEWNS",
    0x40000: "CLONE_SYSVSEM", 0x80000: "CLONE_SETTLS", 0x100000: "CLONE_PARENT_SETTID",
    0x200000: "CLONE_CHILD_CLEARTID", 0x400000: "CLONE_DETACHED", 0x800000: "CLONE_UNTRACED",
    0x1000000: "CLONE_CHILD_SETTID", 0x2000000: "CLONE_NEWCGROUP", 0x4000000: "CLONE_NEWUTS",
    0x8000000: "CLONE_NEWIPC", 0x10000000: "CLONE_NEWUSER", 0x20000000: "CLONE_NEWPID",
    0x40000000: "CLONE_NEWNET", 0x80000000: "CLONE_IO", 0x80: "CLONE_NEWTIME",
})  # fmt: skip
_FAMILY = _Kind(values=_named(socket, """AF_UNSPEC AF_UNIX AF_INET AF_INET6 AF_NETLINK
    AF_PACKET AF_BLUETOOTH AF_CAN AF_ALG AF_VSOCK AF_TIPC AF_RDS AF_QIPCRTR"""))  # fmt: skip
_SOCK_TYPE = _Kind(
    values=_named(socket, "SOCK_STREAM SOCK_DGRAM SOCK_RAW SOCK_RDM SOCK_SEQPACKET"),
    flags=_named(socket, "SOCK_NONBLOCK SOCK_CLOEXEC"),
)
_PROTOCOL = _Kind(values={0: "0", **_named(socket, "IPPROTO_TCP IPPROTO_UDP IPPROTO_ICMP "
                                                   "IPPROTO_ICMPV6 IPPROTO_SCTP")})  # fmt: skip
_SIGNAL = _Kind(values={int(s): s.name for s in signal.Signals})
_AT_FLAGS = _Kind(flags={0x100: "AT_SYMLINK_NOFOLLOW", 0x200: "AT_REMOVEDIR",
                         0x400: "AT_SYMLINK_FOLLOW", 0x800: "AT_NO_AUTOMOUNT",
                         0x1000: "AT_EMPTY_PATH"})  # fmt: skip
_FD = _Kind()
_PLAIN = _Kind()

_FD_BUF_COUNT = (("fd", _FD), ("buf", _PLAIN), ("count", _PLAIN))
_SEND_RECV = (("fd", _FD), ("buf", _PLAIN), ("len", _PLAIN), ("flags", _PLAIN),
              ("addr", _PLAIN), ("addrlen", _PLAIN))  # fmt: skip

#: syscall → its arguments' names and how to read each (others are arg0 ... arg5).
ARGUMENTS: dict[str, tuple[tuple[str, _Kind], ...]] = {
    "fcntl": (("fd", _FD), ("cmd", _FCNTL), ("arg", _PLAIN)),
    "ioctl": (("fd", _FD), ("request", _IOCTL), ("arg", _PLAIN)),
    "open": (("path", _PLAIN), ("flags", _OPEN), ("mode", _PLAIN)),
    "openat": (("dirfd", _FD), ("path", _PLAIN), ("flags", _OPEN), ("mode", _PLAIN)),
    "mmap": (("addr", _PLAIN), ("length", _PLAIN), ("prot", _PROT), ("flags", _MMAP_FLAGS),
             ("fd", _FD), ("offset", _PLAIN)),
    "mprotect": (("addr", _PLAIN), ("length", _PLAIN), ("prot", _PROT)),
    "clone": (("flags", _CLONE), ("stack", _PLAIN), ("parent_tid", _PLAIN),
              ("child_tid", _PLAIN), ("tls", _PLAIN)),
    "unshare": (("flags", _CLONE),),
    "socket": (("family", _FAMILY), ("type", _SOCK_TYPE), ("protocol", _PROTOCOL)),
    "socketpair": (("family", _FAMILY), ("type", _SOCK_TYPE), ("protocol", _PROTOCOL),
                   ("sv", _PLAIN)),
    "kill": (("pid", _PLAIN), ("sig", _SIGNAL)),
    "tgkill": (("tgid", _PLAIN), ("tid", _PLAIN), ("sig", _SIGNAL)),
    "tkill": (("tid", _PLAIN), ("sig", _SIGNAL)),
    "read": _FD_BUF_COUNT, "write": _FD_BUF_COUNT, "readv": _FD_BUF_COUNT,
    "writev": _FD_BUF_COUNT, "getdents64": _FD_BUF_COUNT,
    "pread64": (*_FD_BUF_COUNT, ("offset", _PLAIN)),
    "pwrite64": (*_FD_BUF_COUNT, ("offset", _PLAIN)),
    "preadv": (*_FD_BUF_COUNT, ("offset", _PLAIN)),
    "preadv2": (*_FD_BUF_COUNT, ("offset", _PLAIN), ("flags", _PLAIN)),
    "pwritev": (*_FD_BUF_COUNT, ("offset", _PLAIN)),
    "lseek": (("fd", _FD), ("offset", _PLAIN), ("whence", _PLAIN)),
    "fstat": (("fd", _FD), ("statbuf", _PLAIN)),
    "fsync": (("fd", _FD),), "fdatasync": (("fd", _FD),), "close": (("fd", _FD),),
    "ftruncate": (("fd", _FD), ("length", _PLAIN)),
    "newfstatat": (("dirfd", _FD), ("path", _PLAIN), ("statbuf", _PLAIN), ("flags", _AT_FLAGS)),
    "statx": (("dirfd", _FD), ("path", _PLAIN), ("flags", _AT_FLAGS), ("mask", _PLAIN),
              ("statxbuf", _PLAIN)),
    "dup3": (("oldfd", _FD), ("newfd", _FD), ("flags", _OPEN)),
    "recvfrom": _SEND_RECV, "sendto": _SEND_RECV,
    "recvmsg": (("fd", _FD), ("msg", _PLAIN), ("flags", _PLAIN)),
    "sendmsg": (("fd", _FD), ("msg", _PLAIN), ("flags", _PLAIN)),
    "getsockname": (("fd", _FD), ("addr", _PLAIN), ("addrlen", _PLAIN)),
    "getpeername": (("fd", _FD), ("addr", _PLAIN), ("addrlen", _PLAIN)),
    "getsockopt": (("fd", _FD), ("level", _PLAIN), ("optname", _PLAIN)),
    "setsockopt": (("fd", _FD), ("level", _PLAIN), ("optname", _PLAIN)),
    "shutdown": (("fd", _FD), ("how", _PLAIN)),
    "accept4": (("fd", _FD), ("addr", _PLAIN), ("addrlen", _PLAIN), ("flags", _SOCK_TYPE)),
    "bind": (("fd", _FD), ("addr", _PLAIN), ("addrlen", _PLAIN)),
    "connect": (("fd", _FD), ("addr", _PLAIN), ("addrlen", _PLAIN)),
    "listen": (("fd", _FD), ("backlog", _PLAIN)),
    "sched_setaffinity": (("pid", _PLAIN), ("len", _PLAIN), ("mask", _PLAIN)),
    "epoll_ctl": (("epfd", _FD), ("op", _PLAIN), ("fd", _FD), ("event", _PLAIN)),
}  # fmt: skip


def _arguments(syscall: str) -> tuple[tuple[str, _Kind], ...]:
    return ARGUMENTS.get(syscall, tuple((f"arg{i}", _PLAIN) for i in range(6)))


def _kind_for(syscall: str, index: int, comparisons: Sequence[Comparison]) -> _Kind:
    arguments = _arguments(syscall)
    kind = arguments[index][1] if index < len(arguments) else _PLAIN
    if syscall == "fcntl" and index == 2:  # F_SETFL's argument is a set of open flags
        cmd = next((c for c in comparisons if c.index == 1), None)
        if cmd is not None and _equality(cmd) == fcntl.F_SETFL:
            return _OPEN
    return kind


def _equality(c: Comparison) -> int | None:
    """The value an argument must equal (``==``, or ``==`` on its low 32 bits)."""
    if c.op == OPERATORS["=="]:
        return c.datum_a
    if c.op == MASKED_EQ and c.datum_a == _LOW_32:
        return c.datum_b
    return None


def _aligned_range(mask: int, value: int) -> tuple[int, int] | None:
    """``x & ~(2^k - 1) == v`` on the low 32 bits is the range v .. v + 2^k - 1."""
    low = ~mask & _LOW_32
    if mask & ~_LOW_32 or mask == 0 or low & (low + 1) or value & low:
        return None
    return value, value + low


def _comparison_text(name: str, kind: _Kind, c: Comparison, placeholders: Mapping[int, str]) -> str:
    equal = _equality(c)
    if equal is not None:
        return placeholders.get(equal) or kind.value_text(equal)
    if c.op != MASKED_EQ:
        bound = placeholders.get(c.datum_a) or kind.value_text(c.datum_a)
        return f"{name} {_OPERATOR_TEXT[c.op]} {bound}"
    mask, value = c.datum_a, c.datum_b
    if mask in kind.fields:
        field_name, names = kind.fields[mask]
        return f"{name} & {field_name} == {names.get(value, hex(value))}"
    span = _aligned_range(mask, value)
    if span is not None and not kind.flags:
        return f"{name} in {span[0]}..{span[1]}"
    ignored = ~mask & _LOW_32
    if kind.values and kind.flags and not mask & ~_LOW_32 and ignored:
        # the value is compared with some flag bits left out: SOCK_STREAM, any SOCK_CLOEXEC
        ignored_text = _flags_text(ignored, kind.flags)
        if "0x" not in ignored_text:
            return f"{name} & ~({ignored_text}) == {kind.value_text(value)}"
    mask_text = _flags_text(mask, kind.flags) if kind.flags else hex(mask)
    mask_text = f"({mask_text})" if "|" in mask_text else mask_text
    return f"{name} & {mask_text} == {kind.value_text(value)}"


def describe_rule(
    syscall: str, comparisons: Sequence[Comparison], placeholders: Mapping[int, str] | None = None
) -> str:
    """``fcntl(fd, F_SETLK)``: compared arguments shown by value or as a test, the others
    by name, those after the last compared one left out. ``placeholders`` names stand-in
    values (``rulesets`` builds ``allow_file_read(file)`` with a stand-in fd)."""
    if not comparisons:
        return "always"
    placeholders = placeholders or {}
    arguments = _arguments(syscall)
    by_index = {c.index: c for c in comparisons}
    last = max(by_index)
    parts = []
    for index in range(last + 1):
        name = arguments[index][0] if index < len(arguments) else f"arg{index}"
        c = by_index.get(index)
        if c is None:
            parts.append(name)
        else:
            kind = _kind_for(syscall, index, comparisons)
            parts.append(_comparison_text(name, kind, c, placeholders))
    return f"{syscall}({', '.join(parts)})"


def condition_data(
    syscall: str, comparisons: Sequence[Comparison], placeholders: Mapping[int, str] | None = None
) -> list[dict[str, object]]:
    """The comparisons as JSON-ready data, each with its decoded text."""
    placeholders = placeholders or {}
    arguments = _arguments(syscall)
    found: list[dict[str, object]] = []
    for c in comparisons:
        name = arguments[c.index][0] if c.index < len(arguments) else f"arg{c.index}"
        kind = _kind_for(syscall, c.index, comparisons)
        masked = c.op == MASKED_EQ
        found.append({
            "arg": c.index,
            "name": name,
            "op": _OPERATOR_TEXT[c.op],
            "mask": c.datum_a if masked else None,
            "value": c.datum_b if masked else c.datum_a,
            "text": _comparison_text(name, kind, c, placeholders),
        })  # fmt: skip
    return found


# -- a whole policy ----------------------------------------------------------------------


def policy_data(ctx: SafetyContext, name: str) -> dict[str, Any]:
    """What ``inspect --json`` prints: every grant, with its RuleSet, as plain data."""
    syscalls: list[dict[str, Any]] = []
    for syscall, source in ctx._grants.simple.items():
        syscalls.append({"syscall": syscall, "ruleset": source, "allowed_when": "always",
                         "conditions": [], "errno": None})  # fmt: skip
    for syscall, rules in ctx._grants.conditional.items():
        for source, rule in rules:
            comparisons = [c.comparison for c in rule.conditions]
            syscalls.append({
                "syscall": syscall,
                "ruleset": source,
                "allowed_when": rule_text(syscall, rule),
                "conditions": condition_data(syscall, comparisons),
                "errno": None if rule.errno is None else _errno_name(rule.errno),
            })  # fmt: skip
    syscalls.sort(key=lambda row: (row["syscall"], row["ruleset"]))
    paths, ports = _landlock_rules(ctx)
    return {
        "compartment": name,
        "rulesets": list(ctx.enabled),
        "syscalls": syscalls,
        "otherwise": _errno_name(ctx._errno),
        "floor": {"errno": _errno_name(_floor.FLOOR_ERRNO), "refuses": list(_floor.describe())},
        "landlock": {
            "paths": [{"path": r.path, "rights": right_names(r), "ruleset": r.ruleset,
                       "missing_ok": r.missing_ok} for r in paths],
            "ports": [{"port": r.port, "rights": right_names(r), "ruleset": r.ruleset}
                      for r in ports],
            "scope": right_names(ctx._landlock_scope),
        },
    }  # fmt: skip


def policy_text(ctx: SafetyContext, name: str) -> str:
    """What ``inspect`` prints: the syscall table, then the Landlock grants."""
    data = policy_data(ctx, name)
    enabled = printable(", ".join(data["rulesets"]) or "(none)")
    lines = [f"compartment `{printable(name)}`: RuleSets {enabled}", ""]
    lines += table(
        ("syscall", "allowed when", "RuleSet"),
        [(row["syscall"], row["allowed_when"], row["ruleset"]) for row in data["syscalls"]],
    )
    lines.append(f"(everything else: {data['otherwise']})")
    floor = data["floor"]
    lines += [f"(always {floor['errno']}, whatever is allowed: {what})"
              for what in floor["refuses"]]  # fmt: skip
    lines += ["", *landlock_lines(data["landlock"])]
    return "\n".join(lines)


def landlock_lines(landlock: Mapping[str, Any]) -> list[str]:
    paths, ports, scope = landlock["paths"], landlock["ports"], landlock["scope"]
    if not paths and not ports and not scope:
        return ["Landlock: not used (no path or port grants)"]
    lines = []
    if paths:
        lines.append("Landlock paths: only these are reachable, with these rights (the "
                     "path syscalls above are allowed for any path: Landlock decides)")  # fmt: skip
        lines += table(
            ("path", "rights", "RuleSet"),
            [(r["path"] + (" (if present)" if r["missing_ok"] else ""),
              ", ".join(r["rights"]), r["ruleset"]) for r in paths],
        )  # fmt: skip
    if ports:
        lines.append("Landlock TCP ports: bind and connect only to these")
        rows = [(str(r["port"]), ", ".join(r["rights"]), r["ruleset"]) for r in ports]
        lines += table(("port", "rights", "RuleSet"), rows)
    lines.append(f"Landlock scope: {', '.join(scope) if scope else 'none'}")
    return lines


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns under a dashed header."""
    everything = [header, *(tuple(printable(cell) for cell in row) for row in rows)]
    widths = [max(len(row[i]) for row in everything) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *map(line, everything[1:])]


def rule_text(
    syscall: str, rule: SeccompRule, placeholders: Mapping[int, str] | None = None
) -> str:
    """When ``rule`` allows ``syscall`` (or what it answers instead: ``→ ENOSYS``)."""
    text = describe_rule(syscall, [c.comparison for c in rule.conditions], placeholders)
    if rule.errno is None:
        return text
    answer = f"→ {_errno_name(rule.errno)}"
    return answer if text == "always" else f"{answer} if {text}"


def _landlock_rules(ctx: SafetyContext) -> tuple[list[PathRule], list[PortRule]]:
    rules = ctx._grants.landlock
    return ([r for r in rules if isinstance(r, PathRule)],
            [r for r in rules if isinstance(r, PortRule)])  # fmt: skip


def _errno_name(number: int) -> str:
    return errno.errorcode.get(number, str(number))
