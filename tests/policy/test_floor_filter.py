"""The floor filter every SafetyContext loads, and the base set's mmap rules, as policy.

The floor is checked in forked children with real syscalls, through each apply path a
plain SafetyContext user has (compartments are covered by tests/hostile).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import termios
from collections.abc import Callable, Iterator, Mapping, Sequence

import pytest
from childproc import run_in_child

from compartments import Arg, SafetyContext, SeccompRule
from compartments.errors import RuleConflictError
from compartments.rulesets import SystemIO

APPLY: dict[str, Callable[[SafetyContext], object]] = {
    "current thread": SafetyContext.apply_to_current_thread,
    "all threads": SafetyContext.apply_to_all_threads,
    "listener": SafetyContext.apply_with_listener,
}


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    yield master, slave
    os.close(master)
    os.close(slave)


@pytest.mark.parametrize("path", sorted(APPLY))
def test_every_apply_path_refuses_tiocsti_under_everything(
    pty: tuple[int, int], path: str
) -> None:
    """SystemIO.everything() allows any ioctl; the floor still refuses TIOCSTI."""
    master, slave = pty

    def body() -> None:
        APPLY[path](SafetyContext().enable(SystemIO.everything()))
        fcntl.ioctl(slave, termios.TIOCSTI, b"!")

    assert run_in_child(body) == "EPERM"
    with pytest.raises(BlockingIOError):
        os.read(master, 64)


def _controlling_tty(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[5])  # tty_nr


def test_a_terminal_cannot_be_stolen_from_another_session(pty: tuple[int, int]) -> None:
    """TIOCSCTTY with arg 1 (and CAP_SYS_ADMIN, which root keeps here) steals a terminal."""
    _, slave = pty
    owner = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, sys, termios; fcntl.ioctl({slave}, "
         "termios.TIOCSCTTY, 0); print(flush=True); sys.stdin.read()"],
        pass_fds=[slave], start_new_session=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert owner.stdout is not None and owner.stdout.readline() == b"\n"
        held = _controlling_tty(owner.pid)

        def body() -> None:
            os.setsid()
            SafetyContext().enable(SystemIO.everything()).apply_to_current_thread()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 1)

        assert run_in_child(body) == "EPERM"
        assert held != 0 and _controlling_tty(owner.pid) == held
    finally:
        owner.kill()
        owner.wait()


def test_a_new_session_may_still_take_a_free_terminal() -> None:
    """Control: login_tty()/pty.fork() issue TIOCSCTTY with arg 0 on a fresh pty."""

    def body() -> None:
        _master, slave = os.openpty()
        os.setsid()
        SafetyContext().enable(SystemIO.everything()).apply_to_current_thread()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        assert os.tcgetpgrp(slave) == os.getpid()

    assert run_in_child(body) == "ok"


@pytest.mark.parametrize("flag", ["O_APPEND", "O_DIRECT", "O_ASYNC", "O_NOATIME"])
def test_raw_fcntl_cannot_set_a_shared_description_flag(flag: str) -> None:
    read_end, write_end = os.pipe()
    try:
        before = fcntl.fcntl(write_end, fcntl.F_GETFL)

        def body() -> None:
            SafetyContext().enable(SystemIO.nothing()).enable("fcntl").apply_to_current_thread()
            fcntl.fcntl(write_end, fcntl.F_SETFL, before | getattr(os, flag))

        assert run_in_child(body) == "EPERM"
        assert fcntl.fcntl(write_end, fcntl.F_GETFL) == before
    finally:
        os.close(read_end)
        os.close(write_end)


def test_raw_fcntl_still_toggles_o_nonblock_and_dups() -> None:
    read_end, write_end = os.pipe()
    try:

        def body() -> None:
            SafetyContext().enable(SystemIO.nothing()).enable("fcntl").apply_to_current_thread()
            flags = fcntl.fcntl(write_end, fcntl.F_GETFL)  # O_WRONLY: passed back, ignored
            fcntl.fcntl(write_end, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            assert not os.get_blocking(write_end)
            fcntl.fcntl(write_end, fcntl.F_SETFL, flags)
            duplicate = fcntl.fcntl(write_end, fcntl.F_DUPFD_CLOEXEC, 0)  # the lowest free fd
            assert duplicate >= 0 and duplicate != write_end

        assert run_in_child(body) == "ok"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_describe_shows_what_the_floor_always_refuses() -> None:
    text = SafetyContext().enable(SystemIO.nothing().allow_ioctl()).describe()
    floor = [line for line in text.splitlines() if line.startswith("(always EPERM")]
    assert len(floor) == 3
    assert "TIOCSTI" in floor[0] and "TIOCLINUX" in floor[0]
    assert "F_SETOWN" in floor[1]
    assert "O_DIRECT" in floor[2]


# -- mmap ---------------------------------------------------------------------------------


def test_base_set_maps_anonymous_and_private_only() -> None:
    table = SafetyContext().enable(SystemIO.nothing()).allowed_syscalls()
    assert table["mmap"] == [
        ("arg3 & 0x20 == 0x20", "BasicCapabilities"),
        ("arg3 & 0xf == 0x2", "BasicCapabilities"),
    ]


def test_raw_mmap_is_refused_by_name() -> None:
    with pytest.raises(RuleConflictError, match=r"`mmap`.*allow_shared_mapping\(fd\)"):
        SafetyContext().enable("mmap")


class _Custom:
    def __init__(self, rules: Sequence[SeccompRule]) -> None:
        self.name = "Custom"
        self.rules = rules

    def simple_rules(self) -> Sequence[str]:
        return ()

    def conditional_rules(self) -> Mapping[str, Sequence[SeccompRule]]:
        return {"mmap": self.rules}


def test_unconditional_mmap_rule_is_refused_like_raw_mmap() -> None:
    with pytest.raises(RuleConflictError, match="RuleSet `Custom` allows `mmap`"):
        SafetyContext().enable(_Custom([SeccompRule("mmap")]))


def test_a_conditional_mmap_rule_is_or_ed_with_the_base_set() -> None:
    rule = SeccompRule("mmap").and_condition(Arg(4, bits=32) == 7)
    table = SafetyContext().enable(_Custom([rule])).allowed_syscalls()
    assert ("arg4 & 0xffffffff == 0x7", "Custom") in table["mmap"]


def test_allow_shared_mapping_names_one_fd() -> None:
    table = SafetyContext().enable(SystemIO.nothing().allow_shared_mapping(9)).allowed_syscalls()
    assert ("arg4 & 0xffffffff == 0x9", "SystemIO") in table["mmap"]
    with pytest.raises(ValueError, match="allow_shared_mapping"):
        SystemIO.nothing().allow_shared_mapping(-1)
