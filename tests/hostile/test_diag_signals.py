"""A compartment may signal itself, and only itself: ``abort()`` is reported as SIGABRT.

The base set allowed no signal at all, so glibc's abort() saw its tgkill denied twice
and fell back to a faulting instruction: the parent reported "killed by SIGSEGV" after
two denials. The runtime now allows kill, tkill and tgkill aimed at the compartment's
own pid, fixed in the filter when it seals; everything else stays denied.
"""

from __future__ import annotations

import errno
import logging
import signal
from collections.abc import Iterator

import diag_attacks as attacks
import pytest

from compartments.errors import CompartmentCrashed, PolicyViolation

_TARGETS = (attacks.abort, attacks.raise_signal, attacks.kill_itself,
            attacks.kill_itself_in_an_isolate,
            attacks.signal_its_main_thread_from_the_main_thread,
            attacks.probe_signals_beyond_itself, attacks.kill_the_parent)  # fmt: skip


@pytest.fixture(autouse=True)
def _close_all() -> Iterator[None]:
    yield
    for target in _TARGETS:
        target.close()


@pytest.mark.timeout(60)
def test_os_abort_is_reported_as_sigabrt() -> None:
    with pytest.raises(CompartmentCrashed) as info:
        attacks.abort()
    assert "killed by SIGABRT" in str(info.value)


@pytest.mark.timeout(60)
def test_os_abort_logs_no_denied_signal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "compartments")
    with pytest.raises(CompartmentCrashed):
        attacks.abort()
    assert not [r for r in caplog.records if "was denied" in r.getMessage()]


@pytest.mark.timeout(60)
def test_raise_signal_reaches_its_own_handler() -> None:
    assert attacks.raise_signal() == [signal.SIGUSR1]


@pytest.mark.timeout(60)
def test_kill_of_its_own_pid_reaches_its_own_handler() -> None:
    assert attacks.kill_itself() == [signal.SIGUSR2]


@pytest.mark.timeout(60)
def test_kill_of_its_own_pid_in_an_isolate_reaches_its_own_handler() -> None:
    assert attacks.kill_itself_in_an_isolate() == [2, signal.SIGUSR2]


@pytest.mark.timeout(60)
def test_pthread_kill_of_its_own_thread_reaches_its_handler() -> None:
    assert attacks.signal_its_main_thread_from_the_main_thread() == [signal.SIGUSR1]


@pytest.mark.timeout(60)
def test_no_signal_reaches_beyond_the_compartment() -> None:
    assert attacks.probe_signals_beyond_itself() == {
        "parent": errno.EPERM,
        "own group": errno.EPERM,
        "group by number": errno.EPERM,
        "everyone": errno.EPERM,
        "tgkill parent": errno.EPERM,
        "tgkill parent's group, own tid": errno.EPERM,
    }


@pytest.mark.timeout(60)
def test_signalling_another_process_is_advised_no_grant() -> None:
    with pytest.raises(PolicyViolation) as info:
        attacks.kill_the_parent()
    assert info.value.syscall == "kill"
    assert "SelfSignals" in info.value.suggestion
    assert "allowed by" not in info.value.suggestion
    assert "rules=[" not in info.value.suggestion


@pytest.mark.parametrize("pid", [0, -1, -100, True])
def test_self_signals_refuses_a_pid_that_names_a_group(pid: int) -> None:
    from compartments.rulesets.runtime import SelfSignals

    with pytest.raises(ValueError, match="own pid"):
        SelfSignals(pid)
