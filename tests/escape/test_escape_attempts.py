"""A compromised compartment tries to get out; every attempt must fail, and it keeps serving.

Three compartments sealed for realistic jobs run the attacks of ``escape_compartments``
with real syscalls: a network-only web server (a listener bound in setup), a file-only
database (one file opened in setup) and a pure-compute parser. Each step reports the
errno it got; 0 would be an escape. See docs/threat-model.md.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from escape_compartments import (
    ATTACKS,
    Bystander,
    Database,
    FilterLoader,
    Parser,
    WebServer,
)

from compartments.errors import CompartmentCrashed

KINDS = ("web", "db", "parser")

#: Steps whose allowed answer is not EPERM, and why.
NOT_EPERM = {
    # sendto with an address on a connected/listening socket: the kernel refuses it
    # (web compartments may sendto; the channel block allows sendto everywhere).
    "sendto(": {errno.EPERM, errno.EISCONN, errno.EPIPE, errno.ENOTCONN},
    # dup3 into the channel block is the runtime's own way to place peers: allowed, and
    # harmless now that fcntl/ioctl there take a command allowlist (see device_ioctls).
    "dup3(": {0},
    # clone3 answers ENOSYS so glibc falls back to the checkable clone.
    "clone3(": {errno.EPERM, errno.ENOSYS},
}

#: Networking.allow_running_tcp_servers() grants fcntl and ioctl for any fd and command
#: (extrasafe's semantics). A compromised network compartment can therefore arm SIGIO
#: with F_SETOWN/F_SETSIG (the kernel then sends SIGKILL to any same-uid process, the
#: parent included) and issue socket ioctls (SIOCSIF* with root's CAP_NET_ADMIN).


@pytest.fixture(scope="module")
def bystander() -> Iterator[Any]:
    with Bystander() as sibling:
        yield sibling


@pytest.fixture(scope="module")
def web() -> Iterator[Any]:
    with WebServer() as server:
        yield server


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "store.bin"
    path.write_bytes(b"initial contents")
    return path


@pytest.fixture(scope="module")
def compartments(web: Any, db_path: Path) -> Iterator[dict[str, Any]]:
    with Database(str(db_path)) as db, Parser() as parser:
        yield {"web": web, "db": db, "parser": parser}


@pytest.fixture
def ctx(web: Any, bystander: Any, tmp_path: Path, db_path: Path) -> dict[str, Any]:
    victim = tmp_path / "victim"
    victim.write_bytes(b"must survive")
    return {
        "parent": os.getpid(),
        "pgid": os.getpgid(0),
        "sibling": bystander.ping(),
        "tmp": str(tmp_path),
        "victim": str(victim),
        "port": web.port(),
    }


def _allowed(step: str) -> set[int]:
    for prefix, errnos in NOT_EPERM.items():
        if step.startswith(prefix):
            return errnos
    return {errno.EPERM}


def _check(outcome: dict[str, int]) -> None:
    wrong = {
        step: errno.errorcode.get(err, err) if err else "SUCCEEDED"
        for step, err in outcome.items()
        if err not in _allowed(step)
    }
    assert not wrong, f"steps that did not fail as expected: {wrong}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_fails_and_the_compartment_keeps_answering(
    request: pytest.FixtureRequest,
    compartments: dict[str, Any],
    ctx: dict[str, Any],
    bystander: Any,
    kind: str,
    attack: str,
) -> None:
    subject = compartments[kind]
    pid = subject.ping()
    ctx["own"] = subject.fds_at_seal()
    outcome = subject.attempt(attack, ctx)
    assert outcome, "the attack ran no step"
    assert subject.ping() == pid, "the compartment stopped answering after the attempt"
    assert bystander.ping() == ctx["sibling"], "the sibling was hurt"
    _check(outcome)


# -- fds: a compartment holds its stdio, its channel and what its setup opened ---------


def test_each_compartment_holds_only_its_own_fds_when_sealed(
    compartments: dict[str, Any],
) -> None:
    assert compartments["parser"].fds_at_seal() == [0, 1, 2, 64]
    for kind in ("web", "db"):
        fds = compartments[kind].fds_at_seal()
        extra = [fd for fd in fds if fd not in (0, 1, 2, 64)]
        assert fds[:3] == [0, 1, 2] and 64 in fds and len(extra) == 1, (kind, fds)


@pytest.mark.parametrize("kind", KINDS)
def test_writes_to_fds_it_does_not_own_all_fail(compartments: dict[str, Any], kind: str) -> None:
    subject = compartments[kind]
    outcome = subject.write_stray_fds()
    odd = {k: v for k, v in outcome.items() if not k.isupper()}
    assert not odd, f"fds that answered other than EBADF/EPERM: {odd}"
    assert sum(outcome.values()) == 1021 - (len(subject.fds_at_seal()) - 3)
    if kind == "web":  # write is granted: only EBADF proves nothing is there
        assert set(outcome) == {"EBADF"}
    subject.ping()


# -- the jobs still work under the same filters -------------------------------------------


def test_web_compartment_still_serves_its_listener(compartments: dict[str, Any]) -> None:
    web = compartments["web"]
    with socket.create_connection(("127.0.0.1", web.port()), timeout=5) as client:
        client.sendall(b"get /")
        assert web.serve_one() == b"get /"
        assert client.recv(100).endswith(b"GET /")


def test_database_compartment_still_reads_and_writes_its_file(
    compartments: dict[str, Any], db_path: Path
) -> None:
    db = compartments["db"]
    db.put(b"written by db")
    assert db.get(13) == b"written by db"
    assert db_path.read_bytes().startswith(b"written by db")


def test_parser_compartment_still_parses(compartments: dict[str, Any]) -> None:
    assert compartments["parser"].parse(b'{"a": [1, 2]}') == {"a": [1, 2]}


# -- a filter may be stacked, never widened -------------------------------------------------


def test_a_compartment_allowed_to_load_filters_can_only_narrow() -> None:
    with FilterLoader() as loader:
        pid = loader.ping()
        before = _seccomp_filters(pid)
        outcome = loader.load_allow_all()
        after = _seccomp_filters(pid)
        assert loader.ping() == pid
    assert outcome["seccomp(allow-all)"] == 0  # loading is allowed here...
    assert outcome["prctl(PR_SET_SECCOMP, allow-all)"] == 0
    assert after == before + 2  # ...and the kernel stacked both filters
    for step in ("socket before", "socket after", "open after", "kill(parent) after"):
        assert outcome[step] == errno.EPERM, step  # ...yet nothing denied became allowed


def _seccomp_filters(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Seccomp_filters:"):
            return int(line.split()[1])
    raise AssertionError("no Seccomp_filters line")


# -- a foreign syscall ABI is no way around the filter --------------------------------------


def test_x32_syscall_numbers_kill_rather_than_bypass(compartments: dict[str, Any]) -> None:
    with Parser() as parser, pytest.raises(CompartmentCrashed, match="SIGSYS"):
        parser.attempt_x32()


# -- signals by proxy: SIGIO armed on the channel --------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        "web",
        "db",
        "parser",
    ],
)
def test_sigio_cannot_be_armed_to_kill_another_process(kind: str, tmp_path: Path) -> None:
    """F_SETOWN/F_SETSIG(SIGKILL)/O_ASYNC on the channel, then the parent's next call
    makes the kernel deliver the signal. A `sleep` stands in for the parent."""
    (tmp_path / "db").write_bytes(b"x")
    make = {"web": WebServer, "db": lambda: Database(str(tmp_path / "db")), "parser": Parser}
    victim = subprocess.Popen(["sleep", "30"])
    try:
        with make[kind]() as subject:
            result: list[Any] = []
            armed = threading.Thread(
                target=lambda: result.append(subject.arm_sigio_and_wait(victim.pid, 2.0))
            )
            armed.start()
            time.sleep(0.3)  # the compartment is polling its channel now
            subject.ping()  # the request that would fire the signal
            armed.join(10)
            time.sleep(0.1)
            assert victim.poll() is None, "the victim was killed through SIGIO"
            assert result[0]["F_SETOWN"] == errno.EPERM
            assert result[0]["F_SETSIG"] == errno.EPERM
    finally:
        victim.kill()
        victim.wait()
