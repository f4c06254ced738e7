"""Class 10 of issue 12: the zygotes follow the parent process, not a thread of it.

``PR_SET_PDEATHSIG`` fires when the *thread* that forked the zygote exits, so starting
the first compartment from a short-lived thread used to SIGKILL the zygote and every
compartment as soon as that thread ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zygote_attacks
from zygote_attacks import Worker, whoami
from zygote_support import own_zygote

import compartments._parent._supervisor as supervisor
from compartments import Pool, control
from compartments.rulesets import SystemIO

T = TypeVar("T")
_HERE = Path(__file__).parent
_ROOT = _HERE.parent.parent
#: Long enough for a PDEATHSIG sent when the starting thread exits to have landed.
SETTLE = 0.3


@pytest.fixture(autouse=True)
def fresh_zygote() -> Iterator[None]:
    with own_zygote():
        yield


def _in_a_thread_that_exits(work: Callable[[], T]) -> T:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    time.sleep(SETTLE)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@pytest.mark.timeout(60)
def test_a_compartment_started_from_an_exiting_thread_keeps_answering() -> None:
    worker, pid = _in_a_thread_that_exits(lambda: (w := Worker(), w.ping()))
    with worker:
        assert worker.ping() == pid


@pytest.mark.timeout(60)
def test_a_pool_started_from_an_exiting_thread_keeps_its_workers() -> None:
    pool = Pool(rules=[SystemIO.nothing()], workers=2)
    try:
        first = _in_a_thread_that_exits(
            lambda: pool.submit(zygote_attacks.worker_pid).result(timeout=30)
        )
        pids = list(pool.pids)
        assert first in pids
        later = {pool.submit(zygote_attacks.worker_pid).result(timeout=30) for _ in range(6)}
        assert later <= set(pids) and pool.pids == pids  # no worker had to be replaced
    finally:
        pool.shutdown()


@pytest.mark.timeout(60)
def test_compartments_started_from_two_exiting_threads_both_keep_answering() -> None:
    first = _in_a_thread_that_exits(whoami)  # a function compartment starts on first call
    worker, pid = _in_a_thread_that_exits(lambda: (w := Worker(), w.ping()))
    try:
        assert whoami() == first
        assert worker.ping() == pid
    finally:
        control(worker).close()
        whoami.close()


PARENT_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    import compartments._parent._supervisor as supervisor
    from zygote_attacks import Worker, whoami

    box = {}
    thread = threading.Thread(target=lambda: box.update(workers=[Worker(), Worker()]))
    thread.start()
    thread.join()
    time.sleep(0.3)
    pids = [worker.ping() for worker in box["workers"]] + [whoami()]
    zygote = supervisor._zygote
    zygotes = [zygote.process.pid] + [z.pid for z in zygote.module_zygotes.values()]
    print(json.dumps({"zygotes": zygotes, "compartments": pids}), flush=True)
    time.sleep(60)
    """
)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.timeout(60)
def test_killing_the_parent_still_takes_its_zygotes_and_compartments_down(
    tmp_path: Path,
) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT), str(_HERE)])}
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=_ROOT,
    )  # fmt: skip
    try:
        assert parent.stdout is not None and parent.stderr is not None
        line = parent.stdout.readline()
        assert line, parent.stderr.read()
        started = json.loads(line)
        pids = [*started["zygotes"], *started["compartments"]]
        assert len(started["zygotes"]) == 2 and not any(_gone(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 2.0
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [pid for pid in pids if not _gone(pid)] == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.timeout(60)
def test_a_killed_module_zygote_is_replaced_on_the_next_start() -> None:
    with Worker() as worker:
        worker.ping()
    zygote = supervisor._zygote
    assert zygote is not None
    (module_zygote,) = zygote.module_zygotes.values()
    os.kill(module_zygote.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while module_zygote.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    with Worker() as worker:
        assert worker.ping()
    assert zygote.module_zygotes["zygote_attacks"].pid != module_zygote.pid
