"""The floor: a second, always-loaded filter that refuses what no RuleSet may grant.

The main filter is an allowlist: rules for one syscall are OR-ed, and libseccomp 2.5
cannot say "any ioctl command but TIOCSTI" (no ``!=`` under a mask, one comparison per
argument in a rule). So ``SystemIO.allow_ioctl()``, ``SystemIO.everything()`` or a raw
``"ioctl"``/``"fcntl"`` would allow every command. The floor is a separate filter with
the opposite shape: default ALLOW, EPERM for the calls listed here. The kernel runs every
stacked filter and takes the strictest answer (ERRNO beats USER_NOTIF and ALLOW), so
these calls fail whatever the main filter allows, and they fail in the kernel, without a
notification to the parent.

Commands and the F_SETFL flags are compared on their low 32 bits: the kernel truncates
ioctl's and fcntl's ``cmd`` (``unsigned int``), so ``TIOCSTI | 1 << 32`` is TIOCSTI.

What it refuses, and why:

- Terminal injection and takeover, on any tty the process holds (a passed pty, a stdio
  that is a terminal): TIOCSTI (push input, as if typed: ``dev.tty.legacy_tiocsti`` is 1
  on many kernels and root passes its CAP_SYS_ADMIN check anyway), TIOCLINUX (console
  selection paste, the other way to type), the VT keymap writes KDSKBENT, KDSKBSENT and
  KDSETKEYCODE (rebind a key to a string: typed on the next key press), TIOCCONS
  (redirect the console's output to this tty), TIOCSCTTY with arg 1 (with CAP_SYS_ADMIN,
  steal a terminal from the parent's session; arg 0, which login_tty() and pty.fork()
  use on a new pty, stays allowed: it cannot take a terminal that is already some
  session's), TIOCSPGRP (make another process group foreground:
  the parent's next terminal read stops it with SIGTTIN), TIOCVHANGUP (hang up the
  parent's terminal: SIGHUP to its session) and TIOCSETD (switch the line discipline:
  the parent's terminal stops working, and uncommon disciplines are kernel attack
  surface). Not listed: TIOCNOTTY (only a session leader's drops the terminal for
  others, and compartments are not session leaders), termios and window-size changes
  (they reconfigure, they cannot type).
- Aiming signals at another process: F_SETOWN, F_SETOWN_EX, FIOSETOWN and SIOCSPGRP name
  the process that SIGIO/SIGURG (and dnotify and lease breaks) go to, F_SETSIG makes that
  signal SIGKILL, and FIOASYNC sets O_ASYNC as F_SETFL would. Together they let the
  kernel kill any process of the same uid on the next I/O.
- F_SETLEASE: a lease on a file the parent opens makes the parent's open() block for
  ``lease-break-time`` (45 s).
- F_SETFL setting O_APPEND, O_ASYNC, O_DIRECT or O_NOATIME (one rule per bit: the flags
  are a bit set, and any one of them is enough). A passed fd shares its file description
  with the parent, so these change the parent's own file: O_DIRECT makes its unaligned
  writes fail, O_APPEND sends its pwrite()s to the end. F_SETFL may still toggle
  O_NONBLOCK (the runtime needs it); clearing a flag cannot be told apart from leaving
  it, so that stays possible.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import termios
from collections.abc import Sequence
from typing import Any

from . import _seccomp
from ._seccomp import Comparison, CompiledRule

__all__ = [
    "FLOOR_ERRNO",
    "FLOOR_FCNTL",
    "FLOOR_IOCTL",
    "FLOOR_SETFL_FLAGS",
    "SETFL_REFUSED",
    "build",
    "describe",
    "rules",
]

FLOOR_ERRNO = errno.EPERM
_LOW_32 = 0xFFFFFFFF


def _tty(name: str, generic: int) -> int:
    """A tty ioctl number from termios (right on every architecture), else asm-generic's."""
    return int(getattr(termios, name, generic))


#: ioctl commands refused on every fd, by name (the values of this architecture).
FLOOR_IOCTL: dict[str, int] = {
    "TIOCSTI": _tty("TIOCSTI", 0x5412),
    "TIOCLINUX": _tty("TIOCLINUX", 0x541C),
    "TIOCCONS": _tty("TIOCCONS", 0x541D),
    "TIOCSPGRP": _tty("TIOCSPGRP", 0x5410),
    "TIOCVHANGUP": _tty("TIOCVHANGUP", 0x5437),
    "TIOCSETD": _tty("TIOCSETD", 0x5423),
    "KDSKBENT": 0x4B47,
    "KDSKBSENT": 0x4B49,
    "KDSETKEYCODE": 0x4B4D,
    "FIOASYNC": _tty("FIOASYNC", 0x5452),
    "FIOSETOWN": 0x8901,
    "SIOCSPGRP": 0x8902,
}

#: TIOCSCTTY is refused only with arg 1, the "steal" form (the kernel reads it as an int).
TIOCSCTTY = _tty("TIOCSCTTY", 0x540E)
_STEAL = 1

#: fcntl commands refused on every fd.
FLOOR_FCNTL: dict[str, int] = {
    "F_SETOWN": fcntl.F_SETOWN,
    "F_SETOWN_EX": 15,
    "F_SETSIG": getattr(fcntl, "F_SETSIG", 10),
    "F_SETLEASE": getattr(fcntl, "F_SETLEASE", 1024),
}

#: F_SETFL may not set these (each alone is refused).
FLOOR_SETFL_FLAGS: dict[str, int] = {
    "O_APPEND": os.O_APPEND,
    "O_ASYNC": os.O_ASYNC,
    "O_DIRECT": os.O_DIRECT,
    "O_NOATIME": os.O_NOATIME,
}

SETFL_REFUSED = sum(FLOOR_SETFL_FLAGS.values())
_F_SETFL = fcntl.F_SETFL


def _low32(index: int, value: int) -> Comparison:
    return Comparison(index, _seccomp.OPERATORS["&=="], _LOW_32, value & _LOW_32)


def _bit(index: int, bit: int) -> Comparison:
    return Comparison(index, _seccomp.OPERATORS["&=="], bit, bit)


def rules() -> tuple[CompiledRule, ...]:
    """The floor's rules: each one an EPERM for one command (or one F_SETFL flag)."""
    refuse = _seccomp.errno_action(FLOOR_ERRNO)
    found = [CompiledRule("ioctl", refuse, (_low32(1, cmd),)) for cmd in FLOOR_IOCTL.values()]
    found.append(CompiledRule("ioctl", refuse, (_low32(1, TIOCSCTTY), _low32(2, _STEAL))))
    found += [CompiledRule("fcntl", refuse, (_low32(1, cmd),)) for cmd in FLOOR_FCNTL.values()]
    found += [
        CompiledRule("fcntl", refuse, (_low32(1, _F_SETFL), _bit(2, flag)))
        for flag in FLOOR_SETFL_FLAGS.values()
    ]
    return tuple(found)


@functools.cache
def build(*, tsync: bool) -> Any:
    """The floor as a libseccomp filter, ready to load before the main filter.

    Built once per process (libseccomp takes ~0.4 ms to add its rules), and at import
    (below), so the zygote holds both variants and a compartment forked from it only
    loads one.
    """
    return _seccomp.build_filter(rules(), default_action=_seccomp.ALLOW, tsync=tsync)


def describe() -> Sequence[str]:
    """One line per refused group, for SafetyContext.describe()."""
    return (
        f"ioctl {', '.join(FLOOR_IOCTL)}, TIOCSCTTY with arg 1 (steal)",
        f"fcntl {', '.join(FLOOR_FCNTL)}",
        f"fcntl F_SETFL setting {', '.join(FLOOR_SETFL_FLAGS)}",
    )


if _seccomp.available():  # else the first filter built says what is missing
    build(tsync=False)
    build(tsync=True)
