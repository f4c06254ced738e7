"""Sealed worker pools: Pool (an Executor), @compartment(workers=N), and submit()."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from pathlib import Path

import pytest

from compartments import Pool, compartment
from compartments.errors import CompartmentCrashed
from compartments.rulesets import SystemIO, Threads

SLEEP = Threads.nothing().allow_sleep().yes_really()


def square(x: int) -> int:
    return x * x


def whose_pid(_: object = None) -> int:
    return os.getpid()


def fail_on(x: int) -> int:
    if x == 3:
        raise ValueError(f"three is right out ({x})")
    return x


def crash_on(x: int) -> int:
    if x == 2:
        os._exit(7)
    return x


def read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@compartment(rules=[SystemIO.nothing(), SLEEP], workers=2)
def spread(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@compartment(rules=[SystemIO.nothing()], workers=2)
def spread_crash(x: int) -> int:
    if x < 0:
        os._exit(3)
    return x


@compartment(rules=[SystemIO.nothing()])
def echo(value: object) -> object:
    return value


@compartment(rules=[SystemIO.nothing(), SLEEP])
def slow_echo(value: object) -> object:
    time.sleep(0.3)
    return value


def test_pool_is_a_concurrent_futures_executor() -> None:
    with Pool(workers=1) as pool:
        assert isinstance(pool, concurrent.futures.Executor)
        assert pool.submit(square, 9).result() == 81


def test_pool_map_results_match_the_serial_order() -> None:
    with Pool(rules=[SystemIO.nothing()], workers=2) as pool:
        assert list(pool.map(square, range(50))) == [x * x for x in range(50)]


def test_pool_workers_are_separate_sealed_processes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    with Pool(rules=[SystemIO.nothing()], workers=2) as pool:
        assert pool.submit(whose_pid).result() != os.getpid()
        assert len(set(pool.pids)) == 2
        with pytest.raises(PermissionError):
            pool.submit(read_file, str(path)).result()


def test_pool_rules_chosen_at_run_time_are_applied(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"readable")
    with Pool(rules=[SystemIO.nothing().allow_open_readonly().allow_read()], workers=1) as pool:
        assert pool.submit(read_file, str(path)).result() == b"readable"


def test_pool_propagates_an_exception_from_a_worker() -> None:
    with Pool(workers=2) as pool:
        futures = [pool.submit(fail_on, x) for x in range(5)]
        with pytest.raises(ValueError, match="three is right out"):
            futures[3].result()
        assert [f.result() for i, f in enumerate(futures) if i != 3] == [0, 1, 2, 4]


def test_pool_replaces_a_crashed_worker_and_only_its_call_fails() -> None:
    with Pool(workers=2) as pool:
        before = set(pool.submit(whose_pid).result() for _ in range(1)) | set(pool.pids)
        futures = [pool.submit(crash_on, x) for x in range(6)]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except CompartmentCrashed as crashed:
                outcomes.append(type(crashed).__name__)
        assert outcomes == [0, 1, "CompartmentCrashed", 3, 4, 5]
        assert list(pool.map(square, range(4))) == [0, 1, 4, 9]
        assert set(pool.pids) != before


def test_pool_refuses_a_function_it_cannot_find_by_name() -> None:
    with Pool(workers=1) as pool, pytest.raises(TypeError, match="module-level"):
        pool.submit(lambda: 1)


def test_pool_submit_after_shutdown_raises() -> None:
    pool = Pool(workers=1)
    pool.submit(square, 2).result()
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(square, 2)


def test_pool_shutdown_stops_its_workers() -> None:
    pool = Pool(workers=2)
    pool.submit(square, 2).result()
    pids = pool.pids
    pool.shutdown()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


_left_behind: list[str] = []


def plant_or_find(marker: str) -> list[str]:
    """A compromised worker leaves state behind; a later task looks for it."""
    found = list(_left_behind)
    _left_behind.append(marker)
    return found


def test_pool_worker_reused_by_default_sees_what_an_earlier_task_left() -> None:
    with Pool(rules=[SystemIO.nothing()], workers=1) as pool:
        assert pool.submit(plant_or_find, "first caller's data").result() == []
        assert pool.submit(plant_or_find, "second").result() == ["first caller's data"]


def test_pool_with_max_tasks_per_child_1_gives_each_task_a_fresh_worker() -> None:
    with Pool(rules=[SystemIO.nothing()], workers=1, max_tasks_per_child=1) as pool:
        first = pool.submit(whose_pid).result()
        assert pool.submit(plant_or_find, "first caller's data").result() == []
        assert pool.submit(plant_or_find, "second").result() == []
        assert pool.submit(whose_pid).result() != first


def test_pool_max_tasks_per_child_replaces_a_worker_after_that_many_tasks() -> None:
    with Pool(rules=[SystemIO.nothing()], workers=1, max_tasks_per_child=2) as pool:
        pids = [pool.submit(whose_pid).result() for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1"])
def test_pool_rejects_a_bad_max_tasks_per_child(bad: object) -> None:
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        Pool(rules=[SystemIO.nothing()], max_tasks_per_child=bad)  # type: ignore[arg-type]


def test_pool_rejects_a_non_positive_worker_count() -> None:
    with pytest.raises(ValueError, match="positive"):
        Pool(workers=0)


def _two_calls_at_once(seconds: float) -> tuple[float, set[int]]:
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(spread(seconds))) for _ in range(2)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started, set(results)


def test_function_with_workers_runs_calls_in_parallel() -> None:
    try:
        _two_calls_at_once(0)  # both workers started: spawning is not what is measured
        elapsed, pids = _two_calls_at_once(0.5)
        assert elapsed < 0.9  # one after the other would take at least 1.0 s
        assert len(pids) == 2
    finally:
        spread.close()


def test_crashed_worker_of_a_function_fails_only_its_call() -> None:
    with pytest.raises(CompartmentCrashed):
        spread_crash(-1)
    assert [spread_crash(x) for x in range(4)] == [0, 1, 2, 3]
    spread_crash.close()


def test_submit_keeps_many_calls_in_flight_and_each_gets_its_reply() -> None:
    futures = [echo.submit(i) for i in range(200)]
    assert [f.result() for f in futures] == list(range(200))


def test_submit_result_timeout_only_stops_waiting() -> None:
    future = slow_echo.submit("late")
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.05)
    assert future.result(timeout=5) == "late"


@compartment(rules=[SystemIO.nothing(), SLEEP], timeout=0.3)
def doze_briefly(seconds: float) -> None:
    time.sleep(seconds)


@compartment(rules=[SystemIO.nothing(), SLEEP])
def doze(seconds: float, payload: bytes = b"") -> int:
    time.sleep(seconds)
    return len(payload)


def test_submit_honours_the_compartment_timeout() -> None:
    future = doze_briefly.submit(30)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        future.result()
    assert time.monotonic() - started < 5


def test_a_call_to_a_compartment_that_stops_reading_times_out_while_sending() -> None:
    busy = doze.submit(30)  # the child sleeps and reads nothing more
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        doze.with_timeout(0.5)(0, b"x" * (2 << 20))  # far more than a socket buffer holds
    assert time.monotonic() - started < 5
    with pytest.raises(CompartmentCrashed):  # the stuck child was killed, not waited for
        busy.result(timeout=5)


@compartment(rules=[SystemIO.nothing()])
def never_answers() -> None:
    threading.Event().wait()


@pytest.mark.timeout(30)
def test_result_timeout_holds_while_another_thread_waits_on_the_same_future() -> None:
    future = never_answers.submit()
    holder = threading.Thread(target=lambda: future.exception(), daemon=True)
    holder.start()
    time.sleep(0.2)  # the holder is reading the channel for this Future now
    try:
        started = time.monotonic()
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(timeout=0.5)
        assert time.monotonic() - started < 3.0
    finally:
        never_answers.close()
        holder.join(10)
