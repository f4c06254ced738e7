"""Compartments whose diagnostics used to mislead: a process signalling itself, a passed
fd opened as a file, a name resolved, a call that times out, output that is denied.

The module prints at import, as a module with a top-level print does: the zygote that
imports it must flush that before it forks, or every child writes it again at exit.
"""

from __future__ import annotations

import os
import signal
import socket
import termios
import threading
import time
from typing import Any

from compartments import Fd, Isolate, compartment
from compartments.rulesets import Networking, SystemIO

print("diag_attacks imported")  # the module-level print under test

_caught: list[int] = []


def _catch(signum: int, _frame: object) -> None:
    _caught.append(signum)


def _errno_of(action: Any) -> int:
    """0 if ``action()`` ran, else the errno it failed with."""
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    except termios.error as exc:
        return int(exc.args[0])
    return 0


# -- signalling itself ---------------------------------------------------------------


@compartment(rules=[SystemIO.nothing()])
def abort() -> None:
    os.abort()


@compartment(rules=[SystemIO.nothing()])
def raise_signal() -> list[int]:
    """raise(): tgkill(getpid(), gettid(), sig)."""
    _caught.clear()
    signal.signal(signal.SIGUSR1, _catch)
    signal.raise_signal(signal.SIGUSR1)
    return list(_caught)


@compartment(rules=[SystemIO.nothing()])
def kill_itself() -> list[int]:
    """kill(getpid(), sig)."""
    _caught.clear()
    signal.signal(signal.SIGUSR2, _catch)
    os.kill(os.getpid(), signal.SIGUSR2)
    return list(_caught)


@compartment(rules=[SystemIO.nothing()], isolate=Isolate())
def kill_itself_in_an_isolate() -> list[int]:
    """kill(getpid(), sig) where getpid() is 2, the pid in its own pid namespace."""
    _caught.clear()
    signal.signal(signal.SIGUSR2, _catch)
    os.kill(os.getpid(), signal.SIGUSR2)
    return [os.getpid(), *_caught]


@compartment(rules=[SystemIO.nothing()])
def signal_its_main_thread_from_the_main_thread() -> list[int]:
    """pthread_kill(): tgkill(getpid(), tid, sig), as threading code signals a thread."""
    _caught.clear()
    signal.signal(signal.SIGUSR1, _catch)
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
    return list(_caught)


@compartment(rules=[SystemIO.nothing()])
def probe_signals_beyond_itself() -> dict[str, int]:
    """Signal 0 (a permission check that sends nothing) to what is not the compartment:
    its parent (the zygote), its process group (pid 0, shared with the parent), the
    group by number, every process (-1), and tgkill naming the parent as the group."""
    import ctypes

    from compartments._policy._seccomp import syscall_number

    libc = ctypes.CDLL(None, use_errno=True)

    def tgkill(tgid: int, tid: int) -> None:
        if libc.syscall(syscall_number("tgkill"), tgid, tid, 0) < 0:
            raise OSError(ctypes.get_errno(), "tgkill")

    parent = os.getppid()
    return {
        "parent": _errno_of(lambda: os.kill(parent, 0)),
        "own group": _errno_of(lambda: os.kill(0, 0)),
        "group by number": _errno_of(lambda: os.kill(-os.getpgrp(), 0)),
        "everyone": _errno_of(lambda: os.kill(-1, 0)),
        "tgkill parent": _errno_of(lambda: tgkill(parent, parent)),
        "tgkill parent's group, own tid": _errno_of(lambda: tgkill(parent, os.getpid())),
    }


@compartment(rules=[SystemIO.nothing()])
def kill_the_parent() -> None:
    os.kill(os.getppid(), 0)


# -- a passed fd, opened as a file -----------------------------------------------------


@compartment(rules=[SystemIO.nothing().allow_read().allow_metadata()])
def read_passed_fd(fd: Fd) -> bytes:
    """The README's broker pattern: the parent opens, the compartment reads."""
    with fd.open("rb") as file:
        return file.read()


@compartment(rules=[SystemIO.nothing().allow_read().allow_metadata()])
def read_passed_fd_as_text(fd: Fd) -> str:
    with fd.open("r") as file:
        return file.read()


@compartment(rules=[SystemIO.nothing()])
def terminal_checks(fd: Fd) -> dict[str, Any]:
    """isatty and tcgetattr (TCGETS) on a passed terminal; tcsetattr (TCSETS) and a
    window-size change (TIOCSWINSZ) on it."""
    with fd:
        number = fd.fileno()
        attributes = termios.tcgetattr(number)
        return {
            "isatty": os.isatty(number),
            "tcgetattr": len(attributes),
            "tcsetattr": _errno_of(
                lambda: termios.tcsetattr(number, termios.TCSANOW, attributes)
            ),
            "setwinsize": _errno_of(lambda: termios.tcsetwinsize(number, (24, 80))),
        }


def _its_fd(broker: ReadsItsFd) -> list[Any]:
    return [SystemIO.nothing().allow_file_read(broker.fd)]


@compartment(rules=_its_fd)
class ReadsItsFd:
    """Given a file by its constructor, granted reads of that one fd only."""

    def __init__(self, fd: Fd) -> None:
        self.fd = fd.detach()

    def read(self) -> bytes:
        with open(self.fd, "rb", closefd=False) as file:
            return file.read()


# -- resolving a name ----------------------------------------------------------------


@compartment(
    rules=[SystemIO.nothing().allow_dns_files(), Networking.nothing().allow_start_tcp_clients()]
)
def resolve(name: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(name, 80, socket.AF_INET)})


# -- timeouts ------------------------------------------------------------------------


@compartment(rules=[SystemIO.nothing()], timeout=0.5)
def spin() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pass


@compartment(rules=[SystemIO.nothing()], timeout=0.5, name="named_spinner")
def spin_named() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pass


# -- output the policy denies --------------------------------------------------------


@compartment(rules=[SystemIO.nothing()])
def prints(text: str) -> str:
    print(text)  # stdout is not granted: the text goes over the channel
    return text


@compartment(rules=[SystemIO.nothing()])
def prints_then_fails(path: str) -> None:
    print("about to open", path)
    open(path, "rb").close()  # denied: this is what the error names


@compartment(rules=[SystemIO.nothing()])
def quiet() -> int:
    return 1


@compartment(rules=[SystemIO.nothing()])
class PrintsInSetup:
    """Prints while unsealed, then serves sealed without a stdout grant."""

    def __init__(self) -> None:
        print("setting up")

    def answer(self) -> int:
        return 42
