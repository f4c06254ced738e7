"""A parent that forks keeps its compartments: the forked copy neither stops them at its
exit nor steals their violation reports, and starts compartments of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))


def _run(script: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([_HERE, *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.timeout(120)
def test_a_forked_copy_that_exits_normally_leaves_the_parents_compartments_running() -> None:
    assert _run("""
        import os, sys
        from fork_attacks import whose_pid
        before = whose_pid()
        child = os.fork()
        if child == 0:
            sys.exit(0)  # a prefork worker finishing normally: atexit runs here
        os.waitpid(child, 0)
        print("same" if whose_pid() == before else "restarted")
    """) == "same"


@pytest.mark.timeout(120)
def test_a_forked_copy_does_not_steal_the_parents_violation_reports() -> None:
    assert _run("""
        import logging, os, time
        logging.getLogger("compartments").setLevel(logging.CRITICAL)
        from compartments.errors import PolicyViolation
        from fork_attacks import denied_open, whose_pid
        try:
            denied_open()
        except PolicyViolation:
            pass  # the parent's monitor is running now
        child = os.fork()
        if child == 0:
            whose_pid()  # the copy starts a compartment, and so its own monitor
            time.sleep(4)
            os._exit(0)
        time.sleep(1.0)
        reported = 0
        for _ in range(30):
            try:
                denied_open()
            except PolicyViolation:
                reported += 1
            except PermissionError:
                pass
        os.kill(child, 9)
        os.waitpid(child, 0)
        print(reported)
    """) == "30"


@pytest.mark.timeout(120)
def test_a_forked_copy_gets_compartments_of_its_own() -> None:
    assert _run("""
        import os
        from fork_attacks import whose_pid
        before = whose_pid()
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            os.write(write, str(whose_pid()).encode())
            os._exit(0)
        os.waitpid(child, 0)
        theirs = int(os.read(read, 64))
        print("own" if theirs != before and whose_pid() == before else "shared")
    """) == "own"
