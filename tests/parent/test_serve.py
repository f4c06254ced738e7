"""``compartments.serve()``: a sealed compartment answers other processes on a unix socket."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from serve_client import Client, wait_for
from serve_targets import Calc, Phoenix, parse, split_in_workers

import compartments

SUPPORT = Path(__file__).resolve().parents[1] / "support"


@pytest.fixture
def calc() -> Iterator[Any]:
    with Calc() as proxy:
        yield proxy


@pytest.fixture
def served(calc: Any, tmp_path: Path) -> Iterator[compartments.Served]:
    with compartments.serve(calc, tmp_path / "calc.sock") as server:
        yield server


@pytest.mark.timeout(60)
def test_a_client_without_compartments_gets_results_from_plain_positional_params(
    served: compartments.Served,
) -> None:
    script = SUPPORT / "serve_client.py"
    out = subprocess.run(
        [sys.executable, "-I", str(script), served.path, '["add", [1, 2]]', '["echo", ["hi"]]'],
        capture_output=True, text=True, timeout=30, check=True,
        env={"PYTHONPATH": os.path.dirname(msgpack.__path__[0])},
    )  # fmt: skip
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"result": 3},
        {"result": "hi"},
    ]


def test_the_wire_answer_is_the_msgpack_rpc_response(served: compartments.Served) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(served.path)
        sock.sendall(msgpack.packb([0, 7, "add", [1, 2]]))
        assert msgpack.unpackb(sock.recv(100)) == [1, 7, None, 3]


def test_keyword_arguments_ride_in_a_fifth_element(served: compartments.Served) -> None:
    with Client(served.path) as client:
        assert client.request("add", [1], {"b": 41}) == (None, 42)


def test_an_error_reply_carries_type_and_message_only(served: compartments.Served) -> None:
    with Client(served.path) as client:
        error, result = client.request("fail", ["bad input"])
    assert result is None
    assert error == {"type": "ValueError", "message": "bad input"}


def test_tracebacks_reach_a_client_only_when_opted_in(calc: Any, tmp_path: Path) -> None:
    server = compartments.serve(calc, tmp_path / "tb.sock", tracebacks=True)
    with server, Client(server.path) as client:
        error, _ = client.request("fail", ["bad input"])
    assert error["type"] == "ValueError"
    assert "serve_targets.py" in error["traceback"]


def test_control_methods_are_refused_on_a_served_line(served: compartments.Served) -> None:
    with Client(served.path) as client:
        for method in ("$start", "$attach"):
            error, _ = client.request(method, [])
            assert error["type"] == "PermissionError", error
        assert client.call("add", 2, 2) == 4  # the line stays up


def test_private_methods_are_refused_on_a_served_line(served: compartments.Served) -> None:
    with Client(served.path) as client:
        error, _ = client.request("__init__", [])
    assert error["type"] == "AttributeError"


def test_a_notification_runs_and_gets_no_answer(served: compartments.Served) -> None:
    with Client(served.path) as client:
        client.send([2, "fail", ["nobody hears this"]])
        client.send([2, "add", [1, 2]])
        assert client.call("add", 5, 5) == 10  # the first answer is the request's


def test_a_function_compartment_answers_its_own_name(tmp_path: Path) -> None:
    server = compartments.serve(parse, tmp_path / "parse.sock")
    with server, Client(server.path) as client:
        assert client.call("parse", "a,b") == ["a", "b"]
        assert client.call("__call__", "c") == ["c"]
    parse.close()


def test_bytes_come_back_as_msgpack_bin(served: compartments.Served) -> None:
    with Client(served.path) as client:
        assert client.call("big", 200_000) == b"x" * 200_000  # no trailing-bytes extension


def test_a_result_larger_than_max_message_is_an_error(calc: Any, tmp_path: Path) -> None:
    server = compartments.serve(calc, tmp_path / "small.sock", max_message=4096)
    with server, Client(server.path) as client:
        error, _ = client.request("big", [10_000])
        assert error["type"] == "ValueError" and "at most 4096" in error["message"]
        assert client.call("add", 1, 1) == 2


def test_the_socket_file_has_mode_0600_by_default(served: compartments.Served) -> None:
    assert stat.S_IMODE(os.stat(served.path).st_mode) == 0o600


def test_the_socket_file_takes_the_mode_asked_for(calc: Any, tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        with compartments.serve(calc, tmp_path / "group.sock", mode=0o660) as server:
            assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o660
    finally:
        os.umask(old)


def test_close_ends_every_line_and_removes_the_socket_file(calc: Any, tmp_path: Path) -> None:
    server = compartments.serve(calc, tmp_path / "closing.sock")
    client = Client(server.path)
    assert client.call("add", 1, 1) == 2
    server.close()
    assert client.ended()
    client.close()
    assert not os.path.exists(server.path)
    assert calc.add(1, 2) == 3  # the compartment itself goes on


def test_a_stale_socket_file_is_replaced(calc: Any, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    with compartments.serve(calc, path) as server, Client(server.path) as client:
        assert client.call("add", 1, 2) == 3


def test_a_path_in_use_is_an_error_naming_it(served: compartments.Served, calc: Any) -> None:
    with pytest.raises(FileExistsError, match="listening"):
        compartments.serve(calc, served.path)
    regular = Path(served.path).with_name("regular")
    regular.write_text("")
    with pytest.raises(FileExistsError, match="not a socket"):
        compartments.serve(calc, regular)


def test_serve_refuses_a_compartment_with_several_children(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers="):
        compartments.serve(split_in_workers, tmp_path / "w.sock")


def test_max_clients_bounds_the_lines(calc: Any, tmp_path: Path) -> None:
    with compartments.serve(calc, tmp_path / "two.sock", max_clients=2) as server:
        first, second = Client(server.path), Client(server.path)
        assert first.call("add", 1, 0) == 1 and second.call("add", 2, 0) == 2
        third = Client(server.path)
        assert third.ended()  # accepted and closed at once
        assert server.refused == 1
        first.close()
        assert wait_for(lambda: server.clients == 1)
        with Client(server.path) as fourth:
            assert fourth.call("add", 4, 0) == 4  # the freed line is reused
        for client in (second, third):
            client.close()


def _connect_as(uid: int, path: str) -> bytes:
    """Connect from a forked child running as ``uid``; what it read back."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(path)
                try:
                    sock.sendall(msgpack.packb([0, 1, "add", [1, 2]]))
                    answer = sock.recv(100)
                except (BrokenPipeError, ConnectionResetError):
                    answer = b""
                os.write(write, b"ok:" + (answer or b"EOF"))
        except BaseException as exc:
            os.write(write, f"error:{exc}".encode())
        os._exit(0)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pipe:
            return pipe.read()
    finally:
        os.waitpid(pid, 0)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other uids may reach (pytest's tmp_path is root's own)."""
    path = Path(tempfile.mkdtemp(prefix="serve-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.getuid() != 0, reason="connecting as another uid needs root")
def test_a_client_of_another_uid_is_refused(calc: Any, open_dir: Path) -> None:
    with compartments.serve(calc, open_dir / "uid.sock", mode=0o666) as server:
        assert _connect_as(65534, server.path) == b"ok:EOF"
        assert server.refused == 1 and server.served == 0


@pytest.mark.skipif(os.getuid() != 0, reason="connecting as another uid needs root")
def test_allow_uids_admits_another_uid(calc: Any, open_dir: Path) -> None:
    with compartments.serve(calc, open_dir / "u.sock", mode=0o666, allow_uids=[65534]) as server:
        assert _connect_as(65534, server.path) == b"ok:" + msgpack.packb([1, 1, None, 3])


@pytest.mark.skipif(os.getuid() != 0, reason="connecting as another uid needs root")
def test_allow_gids_admits_a_group(calc: Any, open_dir: Path) -> None:
    with compartments.serve(calc, open_dir / "g.sock", mode=0o666, allow_gids=[65534]) as server:
        assert _connect_as(65534, server.path) == b"ok:" + msgpack.packb([1, 1, None, 3])


def test_allow_uids_without_our_own_refuses_us(calc: Any, tmp_path: Path) -> None:
    other = 65534 if os.getuid() != 65534 else 65533
    with compartments.serve(calc, tmp_path / "not-me.sock", allow_uids=[other]) as server:
        with Client(server.path) as client:
            assert client.ended()
        assert server.refused == 1


def test_serving_adds_no_syscall_to_the_policy(served: compartments.Served, calc: Any) -> None:
    """Clients come and go, call, fail and break their lines: the sealed compartment
    is never denied a syscall (the runtime's channel rules cover a served line)."""
    for _ in range(5):
        with Client(served.path) as client:
            assert client.call("add", 1, 2) == 3
            client.request("fail", ["x"])
        with Client(served.path) as client:
            client.sock.sendall(b"\xc1")  # never valid msgpack: the line is dropped
            assert client.ended()
    assert wait_for(lambda: served.clients == 0)
    assert calc.add(0, 0) == 0
    assert compartments.control(calc).violations == []


def test_a_compartment_restarted_after_a_crash_serves_new_clients(tmp_path: Path) -> None:
    with Calc() as proxy, compartments.serve(proxy, tmp_path / "crash.sock") as server:
        client = Client(server.path)
        assert client.call("add", 1, 1) == 2
        os.kill(compartments.control(proxy).pid, 9)
        assert client.ended()  # the line died with its compartment
        client.close()
        with pytest.raises(compartments.errors.CompartmentCrashed):
            proxy.add(1, 1)
    with Phoenix() as proxy, compartments.serve(proxy, tmp_path / "r.sock") as server:
        os.kill(compartments.control(proxy).pid, 9)
        assert wait_for(lambda: server.clients == 0)
        with Client(server.path) as client:
            assert client.call("add", 2, 2) == 4


def test_serving_stops_once_its_compartment_is_closed(tmp_path: Path) -> None:
    proxy = Calc()
    server = compartments.serve(proxy, tmp_path / "owner-closed.sock")
    compartments.control(proxy).close()
    with Client(server.path) as client:
        assert client.ended()
    assert wait_for(lambda: not os.path.exists(server.path))  # it stopped listening
    server.close()


def test_a_clients_traceback_goes_to_the_parents_logging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="compartments.remote.Calc")  # before it starts
    with Calc() as proxy, compartments.serve(proxy, tmp_path / "log.sock") as server:
        with Client(server.path) as client:
            assert client.request("fail", ["bad input"])[0]["message"] == "bad input"
        proxy.add(1, 1)  # the parent reads the record with its next reply
    records = [r for r in caplog.records if r.name.startswith("compartments.remote.Calc")]
    assert any(
        "`fail` from served client" in r.getMessage()
        and "serve_targets.py" in (r.exc_text or "")
        and "ValueError: bad input" in (r.exc_text or "")
        for r in records
    ), [(r.getMessage(), r.exc_text) for r in records]


@pytest.mark.timeout(60)
def test_clients_one_after_another_each_get_the_one_line(calc: Any, tmp_path: Path) -> None:
    """With ``max_clients=1``, a client that arrives while the serving thread hands a
    line over finds the previous client's line freed, not counted against it."""
    with compartments.serve(calc, tmp_path / "one.sock", max_clients=1) as server:
        for i in range(300):
            with Client(server.path) as client:
                assert client.call("add", i, 0) == i, f"client {i} was refused"
        assert server.refused == 0


def test_a_forked_copy_of_the_parent_leaves_the_serving_alone(
    served: compartments.Served,
) -> None:
    """A prefork server's child that exits (running the atexit hook) neither removes
    the socket file nor ends a line: it only drops its copies."""
    from compartments._parent import _serve

    with Client(served.path) as before:
        assert before.call("add", 1, 1) == 2
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            _serve._close_all()
            os._exit(0)
        os.waitpid(pid, 0)
        assert before.call("add", 2, 2) == 4
    assert os.path.exists(served.path)
    with Client(served.path) as after:
        assert after.call("add", 3, 3) == 6


def test_a_result_holding_an_fd_is_a_type_error_for_a_client(
    served: compartments.Served, calc: Any
) -> None:
    with Client(served.path) as client:
        error, _ = client.request("stdin", [])
        assert error["type"] == "TypeError" and "never an Fd" in error["message"]
        assert client.call("add", 1, 1) == 2
    with calc.stdin() as fd:  # the parent's own line carries it
        assert fd.fileno() >= 0
