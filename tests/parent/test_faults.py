"""Faults: compartments that die mid-call, parents that die, and long runs that must leak
nothing. Long versions are marked ``soak`` and run only with COMPARTMENTS_SOAK=1
(``make soak``)."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import compartments._parent._supervisor as supervisor
from compartments import RestartPolicy, compartment, control
from compartments._policy._seccomp import syscall_number
from compartments.errors import CompartmentCrashed
from compartments.rulesets import SystemIO

SOAK = [
    pytest.mark.soak,
    pytest.mark.skipif(
        not os.environ.get("COMPARTMENTS_SOAK"), reason="soak run: COMPARTMENTS_SOAK=1"
    ),
]
X32_GETPID = 0x40000000 | syscall_number("getpid")
_libc = ctypes.CDLL(None, use_errno=True)


@compartment(rules=[SystemIO.nothing()])
class Victim:
    """Dies in the ways a compromised or buggy compartment can."""

    def hang(self) -> None:
        threading.Event().wait()

    def sigkill_me_while_hanging(self) -> None:
        threading.Event().wait()

    def segfault(self) -> None:
        ctypes.string_at(0)

    def x32_syscall(self) -> None:
        _libc.syscall(ctypes.c_long(X32_GETPID))  # the filter kills the process: SIGSYS

    def exit_now(self) -> None:
        os._exit(7)

    def ping(self, value: Any = None) -> Any:
        return os.getpid() if value is None else value


@compartment(rules=[SystemIO.nothing()], restart=RestartPolicy(max_restarts=2, backoff=0.05))
class Phoenix:
    def die(self) -> None:
        os._exit(3)

    def ping(self) -> int:
        return os.getpid()


@compartment(rules=[SystemIO.nothing()])
class Counter:
    def ping(self) -> int:
        return os.getpid()

    def echo(self, value: Any) -> Any:
        return value


def _in_thread(func: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``func``; its exception (if any) lands in the list, then its end time."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            func()
        except BaseException as exc:
            outcome.append(exc)
        finally:
            outcome.append(time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


# -- dying mid-call ------------------------------------------------------------------------

FAULTS = {
    "SIGKILL": ("sigkill_me_while_hanging", "SIGKILL"),
    "SIGSEGV": ("segfault", "SIGSEGV"),
    "SIGSYS (x32 syscall)": ("x32_syscall", "SIGSYS"),
    "os._exit(7)": ("exit_now", "status 7"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_mid_call_fails_every_in_flight_call_promptly(fault: str) -> None:
    method, named = FAULTS[fault]
    with Victim() as victim:
        pid = victim.ping()
        fault_at = time.monotonic()
        faulting = _in_thread(lambda: getattr(victim, method)())
        queued = [_in_thread(victim.ping) for _ in range(3)]  # in flight behind it
        if fault == "SIGKILL":
            time.sleep(0.2)  # the call is blocked in the child now
            fault_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
        calls = [faulting, *queued]
        for thread, _ in calls:
            thread.join(5)
        outcomes = [outcome for _, outcome in calls]
        assert all(len(o) == 2 and isinstance(o[0], CompartmentCrashed) for o in outcomes), outcomes
        latency = max(o[1] for o in outcomes) - fault_at
        print(f"\n{fault}: all 4 in-flight calls failed {latency * 1000:.1f} ms after the fault")
        assert latency < 1.0, f"in-flight calls took {latency:.3f}s to fail"
        assert named in str(faulting[1][0])
        assert _gone(pid)


def test_restart_policy_is_followed_with_backoff() -> None:
    with Phoenix() as phoenix:
        pids = [phoenix.ping()]
        for _ in range(2):
            with pytest.raises(CompartmentCrashed, match="status 3"):
                phoenix.die()
            started = time.monotonic()
            pids.append(phoenix.ping())  # a new child
            assert time.monotonic() - started >= 0.05  # after the backoff
        assert len(set(pids)) == 3 and control(phoenix).restarts == 2
        with pytest.raises(CompartmentCrashed):
            phoenix.die()
        with pytest.raises(CompartmentCrashed):  # the limit is reached: no third restart
            phoenix.ping()


def test_without_restart_every_later_call_fails() -> None:
    with Victim() as victim:
        with pytest.raises(CompartmentCrashed):
            victim.exit_now()
        for _ in range(3):
            with pytest.raises(CompartmentCrashed):
                victim.ping()


# -- the parent dies ---------------------------------------------------------------------

PARENT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from compartments import compartment
    from compartments.rulesets import SystemIO
    import compartments._parent._supervisor as supervisor

    @compartment(rules=[SystemIO.nothing()])
    class Worker:
        def ping(self):
            return os.getpid()

    if __name__ == "__main__":
        workers = [Worker() for _ in range(3)]
        pids = [w.ping() for w in workers]
        print(json.dumps({"zygote": supervisor._zygote.process.pid, "compartments": pids}))
        sys.stdout.flush()
        time.sleep(60)
    """
)


def test_when_the_parent_is_killed_everything_exits_within_a_second(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, parent.stderr.read() if parent.stderr else ""
        started = json.loads(line)
        pids = [started["zygote"], *started["compartments"]]
        assert all(not _gone(pid) for pid in pids)
        killed_at = time.monotonic()
        parent.kill()
        parent.wait()
        while not all(_gone(pid) for pid in pids) and time.monotonic() - killed_at < 5:
            time.sleep(0.005)
        elapsed = time.monotonic() - killed_at
        print(
            f"\nzygote and 3 compartments gone {elapsed * 1000:.0f} ms after the parent's SIGKILL"
        )
        assert all(_gone(pid) for pid in pids), {pid: _state(pid) for pid in pids}
        assert elapsed < 1.0, f"took {elapsed:.3f}s"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# -- nothing leaks ------------------------------------------------------------------------


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its (new) parent has yet to reap."""
    return _state(pid) in ("gone", "Z", "X")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as handle:
            found += [int(child) for child in handle.read().split()]
    return found


def _census() -> dict[str, Any]:
    zygote = supervisor._zygote
    assert zygote is not None
    module_zygotes = _children(zygote.process.pid)  # compartments are their children
    children = [child for pid in module_zygotes for child in _children(pid)]
    return {
        "parent fds": len(os.listdir("/proc/self/fd")),
        "parent threads": len(os.listdir("/proc/self/task")),
        "parent children": sorted(_children(os.getpid())),
        "module zygotes": sorted(module_zygotes),
        "zygote children": len(children),
        "zombies": sum(_state(child) == "Z" for child in [*module_zygotes, *children]),
    }


def _cycle(times: int) -> float:
    started = time.monotonic()
    for _ in range(times):
        with Counter() as counter:
            counter.ping()
    return time.monotonic() - started


@pytest.mark.parametrize("cycles", [1000, pytest.param(10_000, marks=SOAK)])
def test_spawn_close_cycles_leave_no_fd_process_or_zombie(cycles: int) -> None:
    _cycle(3)  # the zygote and lazy imports are in place from here on
    baseline = _census()
    elapsed = _cycle(cycles)
    after = _census()
    print(f"\n{cycles} spawn/close cycles in {elapsed:.2f}s; census {after}")
    assert after == baseline


# -- many threads, many calls -------------------------------------------------------------


@pytest.mark.parametrize(("threads", "calls"), [(8, 500), pytest.param(8, 10_000, marks=SOAK)])
def test_threads_lose_no_reply_and_misroute_none(threads: int, calls: int) -> None:
    misrouted: list[Any] = []
    answered = [0] * threads
    with Counter() as counter:

        def hammer(thread_no: int) -> None:
            for i in range(calls):
                payload = [thread_no, i, "x" * (i % 64)]
                answer = counter.echo(payload)
                if answer != payload:
                    misrouted.append((payload, answer))
                answered[thread_no] += 1

        started = time.monotonic()
        workers = [_in_thread(lambda n=n: hammer(n)) for n in range(threads)]
        for thread, _ in workers:
            thread.join(600)
        elapsed = time.monotonic() - started
    print(f"\n{threads}x{calls} calls in {elapsed:.2f}s ({threads * calls / elapsed:.0f}/s)")
    assert all(len(outcome) == 1 for _, outcome in workers)  # an end time, no error
    assert misrouted == []
    assert answered == [calls] * threads


class _ReapsOnce:
    """A zygote stand-in: the first ``wait`` is slow and collects the status, later ones
    find the pid already reaped, as the real zygote does."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.calls = 0

    def reap(self, pid: int) -> tuple[int, int] | None:
        self.calls += 1
        if self.calls > 1:
            raise ChildProcessError(f"pid {pid} is not a compartment of this zygote")
        time.sleep(0.2)  # the other caller arrives meanwhile
        _, status = os.waitpid(pid, 0)
        return (-1, os.WTERMSIG(status))


def test_two_callers_reaping_at_once_both_see_how_it_died() -> None:
    """The reader and a sender fail together: the loser used to find the pid reaped and
    report SIGKILL for a compartment that died of SIGSEGV."""
    from compartments._parent._supervisor import ChildProcess

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.kill(os.getpid(), signal.SIGSEGV)
        os._exit(1)
    child = ChildProcess("dies", pid, _ReapsOnce(pid))  # type: ignore[arg-type]
    seen: list[tuple[int, int]] = []
    threads = [threading.Thread(target=lambda: seen.append(child.reap(1.0))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == [(-1, signal.SIGSEGV)] * 2
