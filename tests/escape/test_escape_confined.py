"""The escape suite, extended to Landlock path grants and Isolate namespaces.

A compartment that may read one directory (Landlock) and one that lives in its own
namespaces (Isolate) each try to reach what they were not given, with real syscalls.
Every step must fail; each reports its errno, and 0 would be an escape.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compartments import Isolate, compartment
from compartments.rulesets import SystemIO

#: Fixed, so the parent and the zygote (which imports this module again) agree on it.
GRANTED = Path(f"/tmp/compartments-escape-landlock-{os.getuid()}")
GRANTED.mkdir(exist_ok=True)
SECRET = Path(f"/tmp/compartments-escape-secret-{os.getuid()}")


def _errno_of(action: Any) -> int:
    try:
        result = action()
    except OSError as exc:
        return exc.errno or -1
    if isinstance(result, int) and result >= 3:  # an fd we must not keep
        os.close(result)
    return 0


@compartment(rules=[SystemIO.nothing().allow_read_path(GRANTED)])
class PathReader:
    """May read files beneath GRANTED (Landlock) and nothing else."""

    def read_granted(self) -> bytes:
        with open(GRANTED / "allowed.txt", "rb") as handle:
            return handle.read()

    def attempt(self) -> dict[str, int]:
        inside = str(GRANTED / "allowed.txt")
        return {
            "open a file outside the grant": _errno_of(lambda: os.open(str(SECRET), os.O_RDONLY)),
            "open /etc/passwd": _errno_of(lambda: os.open("/etc/passwd", os.O_RDONLY)),
            "escape with ..": _errno_of(
                lambda: os.open(f"{GRANTED}/../../etc/passwd", os.O_RDONLY)
            ),
            "escape through /proc/self/root": _errno_of(
                lambda: os.open("/proc/self/root/etc/passwd", os.O_RDONLY)
            ),
            "open the granted file for writing": _errno_of(lambda: os.open(inside, os.O_WRONLY)),
            "truncate the granted file": _errno_of(lambda: os.truncate(inside, 0)),
            "create a file in the grant": _errno_of(
                lambda: os.open(f"{GRANTED}/new", os.O_WRONLY | os.O_CREAT, 0o600)
            ),
            "symlink out of the grant": _errno_of(lambda: os.symlink("/etc", f"{GRANTED}/etc")),
            "hard-link a secret in": _errno_of(lambda: os.link(str(SECRET), f"{GRANTED}/s")),
            "rename the granted file": _errno_of(lambda: os.rename(inside, f"{GRANTED}/moved")),
            "make a directory": _errno_of(lambda: os.mkdir(f"{GRANTED}/d")),
            "unlink the granted file": _errno_of(lambda: os.unlink(inside)),
        }


@compartment(
    rules=[SystemIO.nothing().allow_open_readonly().allow_read().allow_metadata()],
    isolate=Isolate(tmpfs_size="1M", network=False),
)
class Isolated:
    """May open any path read-only: only the namespaces keep the host out of reach."""

    def attempt(self, parent: int) -> dict[str, int]:
        return {
            "read the host's /tmp secret": _errno_of(lambda: os.open(str(SECRET), os.O_RDONLY)),
            "read /etc/shadow": _errno_of(lambda: os.open("/etc/shadow", os.O_RDONLY)),
            "read the parent's environ": _errno_of(
                lambda: os.open(f"/proc/{parent}/environ", os.O_RDONLY)
            ),
            "signal the parent": _errno_of(lambda: os.kill(parent, 0)),
            "open a socket": _errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
        }


@pytest.fixture(scope="module")
def planted() -> Iterator[None]:
    (GRANTED / "allowed.txt").write_bytes(b"granted")
    SECRET.write_text("the parent's secret")
    yield
    SECRET.unlink()


def _escapes(outcome: dict[str, int]) -> list[str]:
    return [step for step, err in outcome.items() if err == 0]


def test_landlock_compartment_reads_its_grant(planted: None) -> None:
    with PathReader() as reader:
        assert reader.read_granted() == b"granted"


def test_landlock_compartment_reaches_nothing_beyond_its_grant(planted: None) -> None:
    with PathReader() as reader:
        outcome = reader.attempt()
        assert _escapes(outcome) == [], outcome
        assert outcome["open /etc/passwd"] == errno.EACCES  # Landlock's answer, not seccomp's
        assert reader.read_granted() == b"granted"  # still serving, file untouched


def test_isolated_compartment_reaches_nothing_of_the_host(planted: None) -> None:
    with Isolated() as isolated:
        outcome = isolated.attempt(os.getpid())
        assert _escapes(outcome) == [], outcome
        assert outcome["read the host's /tmp secret"] == errno.ENOENT  # not there at all
        assert outcome["read the parent's environ"] == errno.ENOENT  # its own pid namespace
