"""Violation reports decode paths for an unprivileged parent, and what makes that
possible (compartments stay dumpable) gives siblings no way into each other's memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import monitor_sibling_attacks as attacks
import pytest

from compartments import control
from compartments._policy import _landlock

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534


def _unprivileged_command() -> tuple[list[str], dict[str, object]]:
    """How to run the probe as an ordinary user: ourselves if we are one, else nobody
    with the system Python (the venv's lives under /root, which nobody may read)."""
    if os.geteuid() != 0:
        return [sys.executable], {}
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"no {SYSTEM_PYTHON} to run as an unprivileged user")
    site = [p for p in sys.path if p.endswith("site-packages") and "/root" not in p]
    if not site:
        pytest.skip("the venv's site-packages is not readable by an unprivileged user")
    return [SYSTEM_PYTHON], {"user": NOBODY, "group": NOBODY, "extra_groups": [],
                             "pythonpath": site}  # fmt: skip


@pytest.mark.timeout(90)
def test_an_unprivileged_parent_sees_the_path_of_a_denied_open() -> None:
    if _landlock.abi_version() == 0:
        pytest.skip("without Landlock, compartments stay non-dumpable: paths show as ?")
    command, how = _unprivileged_command()
    paths = [str(HERE), str(REPO), *how.pop("pythonpath", [])]  # type: ignore[misc]
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join(paths)}  # fmt: skip
    result = subprocess.run(
        [*command, "-m", "monitor_nonroot_probe"], capture_output=True, text=True,
        timeout=60, env=env, cwd="/", **how,  # type: ignore[call-overload]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["uid"] != 0
    assert report["path"] == "/etc/hostname", report
    assert '"/etc/hostname"' in report["decoded"]
    assert report["core"] == [0, 0]


@pytest.fixture
def keeper() -> Iterator[tuple[int, int]]:
    with attacks.Keeper() as kept:
        pid = control(kept).pid
        assert pid is not None
        yield pid, kept.address()


@pytest.fixture
def snoop() -> Iterator[attacks.Snoop]:
    with attacks.Snoop() as snooping:
        yield snooping


@pytest.mark.timeout(60)
def test_a_sibling_cannot_read_proc_pid_mem(keeper: tuple[int, int], snoop: attacks.Snoop) -> None:
    pid, address = keeper
    got = snoop.proc_mem(pid, address)
    assert got in ("EACCES", "EPERM"), got


@pytest.mark.timeout(60)
def test_a_sibling_cannot_process_vm_readv(keeper: tuple[int, int], snoop: attacks.Snoop) -> None:
    pid, address = keeper
    got = snoop.process_vm_readv(pid, address)
    assert got in ("EACCES", "EPERM"), got


@pytest.mark.timeout(60)
@pytest.mark.parametrize("request_", [attacks.PTRACE_ATTACH, attacks.PTRACE_SEIZE])
def test_a_sibling_cannot_ptrace(
    keeper: tuple[int, int], snoop: attacks.Snoop, request_: int
) -> None:
    pid, _ = keeper
    got = snoop.ptrace(pid, request_)
    assert got in ("EACCES", "EPERM"), got


@pytest.mark.timeout(60)
def test_the_parent_can_read_a_compartments_memory(keeper: tuple[int, int]) -> None:
    """What the violation monitor relies on (as root here; as any same-uid parent when
    the compartment is dumpable)."""
    pid, address = keeper
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
        assert os.pread(memory.fileno(), len(attacks.SECRET), address) == attacks.SECRET


@pytest.mark.timeout(60)
def test_a_compartment_may_not_write_a_core_file() -> None:
    with attacks.Keeper() as kept:
        assert kept.core_limit() == [0, 0]

