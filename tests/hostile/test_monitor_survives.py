"""The violation monitor answers every denied syscall of every compartment, whatever one
compartment puts in its arguments, and a flood costs the parent a bounded amount."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import monitor_attacks as attacks
import pytest

from compartments._parent import _monitor
from compartments.errors import PolicyViolation

#: How long a violation in a healthy compartment may take to come back as PolicyViolation.
PROMPT = 5.0


def assert_violations_still_reported(tmp_path: Path) -> None:
    """A compartment started after the attack still gets its PolicyViolation, promptly."""
    started = time.monotonic()
    try:
        with pytest.raises(PolicyViolation) as info:
            attacks.victim_open(str(tmp_path / "after"))
    finally:
        attacks.victim_open.close()
    assert info.value.syscall == "openat"
    assert time.monotonic() - started < PROMPT


@pytest.fixture(autouse=True)
def _close_attackers() -> object:
    yield
    for name in dir(attacks):
        target = getattr(attacks, name)
        if hasattr(target, "close") and hasattr(target, "violations"):
            target.close()


@pytest.mark.timeout(30)
def test_openat_path_pointer_at_the_top_of_the_address_space(tmp_path: Path) -> None:
    assert attacks.open_at_pointer((1 << 64) - 1) == errno.EPERM
    assert attacks.open_at_pointer.violations[-1].path is None
    assert_violations_still_reported(tmp_path)


@pytest.mark.timeout(30)
def test_stat_path_pointer_above_the_largest_file_offset(tmp_path: Path) -> None:
    assert attacks.stat_at_pointer(attacks.ADDRESS_ABOVE_OFF_T) == errno.EPERM
    assert_violations_still_reported(tmp_path)


@pytest.mark.timeout(30)
def test_execve_path_pointer_at_the_first_address_past_the_largest_offset(tmp_path: Path) -> None:
    assert attacks.exec_at_pointer(1 << 63) == errno.EPERM
    assert_violations_still_reported(tmp_path)


@pytest.mark.timeout(30)
def test_connect_sockaddr_pointer_above_the_largest_file_offset(tmp_path: Path) -> None:
    assert attacks.connect_to_pointer(attacks.ADDRESS_ABOVE_OFF_T, 16) == errno.EPERM
    assert_violations_still_reported(tmp_path)


@pytest.mark.timeout(30)
def test_connect_sockaddr_length_of_two_to_the_63(tmp_path: Path) -> None:
    assert attacks.connect_with_huge_length() == errno.EPERM
    assert "127.0.0.1:80" in attacks.connect_with_huge_length.violations[-1].decoded
    assert_violations_still_reported(tmp_path)


@pytest.mark.timeout(30)
def test_path_pointer_into_an_unmapped_page(tmp_path: Path) -> None:
    assert attacks.open_unmapped_path() == errno.EPERM
    assert attacks.open_unmapped_path.violations[-1].path is None
    assert_violations_still_reported(tmp_path)


@pytest.mark.timeout(30)
def test_path_that_runs_into_the_end_of_its_mapping(tmp_path: Path) -> None:
    assert attacks.open_path_without_end() == errno.EPERM
    path = attacks.open_path_without_end.violations[-1].path
    assert path is None or set(path) == {"A"}
    assert_violations_still_reported(tmp_path)


@pytest.mark.timeout(60)
def test_path_buffer_unmapped_by_a_racing_thread(tmp_path: Path) -> None:
    assert attacks.open_while_a_thread_unmaps(200) == [errno.EPERM]
    assert_violations_still_reported(tmp_path)


@pytest.mark.timeout(30)
def test_a_base_exception_in_one_report_does_not_stop_the_monitor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kill the monitor thread outright: the next violation still raises promptly."""

    class Killed(BaseException):
        pass

    original = _monitor.describe_violation
    kills: list[int] = []

    def die_once(*args: object, **kwargs: object) -> _monitor.Violation:
        if not kills:
            kills.append(1)
            raise Killed()
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_monitor, "describe_violation", die_once)
    first = _monitor.monitor()._thread
    assert attacks.open_at_pointer(0) == errno.EPERM  # answered, though its report died
    assert kills == [1]
    assert_violations_still_reported(tmp_path)
    assert _monitor.monitor()._thread is not first


@pytest.mark.timeout(30)
def test_an_exception_while_recording_costs_only_that_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = _monitor.describe_violation
    calls: list[int] = []

    def fail_once(*args: object, **kwargs: object) -> _monitor.Violation:
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("pretend")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_monitor, "describe_violation", fail_once)
    first = _monitor.monitor()._thread
    assert attacks.open_at_pointer(0) == errno.EPERM
    assert attacks.open_at_pointer.violations[-1].decoded == "openat(?)"
    assert_violations_still_reported(tmp_path)
    assert _monitor.monitor()._thread is first


def _thread_cpu(thread: threading.Thread | None) -> float:
    assert thread is not None and thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


@pytest.mark.timeout(120)
def test_a_flood_of_denials_costs_the_parent_bounded_cpu_and_spares_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cap is FLOOD_BURST reports, then FLOOD_RATE a second; a smaller burst here
    keeps the flood short (each report costs ~0.2-0.4 ms under pytest's log capture)."""
    monkeypatch.setattr(_monitor, "FLOOD_BURST", 256)
    count = 100_000
    assert_violations_still_reported(tmp_path)  # the monitor runs, and is warm
    monitor_thread = _monitor.monitor()._thread
    before = _thread_cpu(monitor_thread)
    result: dict[str, int] = {}
    flood = threading.Thread(target=lambda: result.update(attacks.flood_denials(count)))
    flood.start()
    victims = 0
    while flood.is_alive():  # another compartment's violations stay prompt meanwhile
        assert_violations_still_reported(tmp_path)
        victims += 1
    flood.join()
    spent = _thread_cpu(monitor_thread) - before
    assert sum(result.values()) == count
    assert set(result) <= {str(errno.EPERM), str(errno.ENOSYS)}  # never opened
    per_denial = spent / count
    assert per_denial < 5e-6, f"{per_denial * 1e6:.1f} us of parent CPU per denial"
    floods = [r for r in caplog.records if "floods denied syscalls" in r.getMessage()]
    assert len(floods) == 1 and "flood_denials" in floods[0].getMessage()
    assert victims >= 1


@pytest.mark.timeout(30)
def test_a_monitor_that_died_without_restarting_itself_is_restarted_by_the_next_compartment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Killed(BaseException):
        pass

    def die(*args: object, **kwargs: object) -> _monitor.Violation:
        raise Killed()

    assert_violations_still_reported(tmp_path)  # the monitor runs
    monitor = _monitor.monitor()
    with monkeypatch.context() as patch:
        patch.setattr(_monitor, "describe_violation", die)
        patch.setattr(_monitor.ViolationMonitor, "_restart", lambda self: None, raising=False)
        assert attacks.open_at_pointer(0) == errno.EPERM  # still answered as it died
        dead = monitor._thread
        assert dead is not None
        dead.join(5)
        assert not dead.is_alive()
    assert_violations_still_reported(tmp_path)  # registering its listener restarts it
    assert monitor._thread is not dead and monitor._thread is not None


@pytest.mark.timeout(120)
def test_a_flood_budget_is_shared_by_every_process_of_one_compartment(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fresh=True, restarts and a Pool's fresh workers are new processes of one compartment;
    a budget per process let each bring a new burst of reports."""
    monkeypatch.setattr(_monitor, "FLOOD_BURST", 64)
    started = time.monotonic()
    for _ in range(4):
        assert attacks.fresh_flood(500) == 500
    elapsed = time.monotonic() - started
    reports = [r for r in caplog.records if "fresh_flood" in r.getMessage()
               and "was denied" in r.getMessage()]  # fmt: skip
    assert len(reports) <= 64 + _monitor.FLOOD_RATE * elapsed + 8, len(reports)
