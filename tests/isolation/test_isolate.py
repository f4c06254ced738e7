"""Isolate behaviours: the pytest process calls Isolate.run, which forks internally."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

from compartments._isolation._isolate import Bind, Isolate, IsolateSetupError

pyseccomp = pytest.importorskip("pyseccomp")


def status_field(name: str) -> str:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    raise LookupError(name)


# --- identity and namespaces -------------------------------------------------------


def test_uid_0_inside_maps_to_our_uid_outside() -> None:
    def identity() -> object:
        with open("/proc/self/uid_map") as uid_map, open("/proc/self/gid_map") as gid_map:
            return [os.getuid(), os.getgid(), uid_map.read().split(), gid_map.read().split()]

    result = Isolate(proc=True).run(identity)
    assert result.value == [0, 0, ["0", str(os.getuid()), "1"], ["0", str(os.getgid()), "1"]]


def test_the_callable_runs_as_pid_2_of_a_new_pid_namespace() -> None:
    assert Isolate().run(os.getpid).value == 2


def test_fresh_proc_shows_only_the_namespace_processes() -> None:
    result = Isolate(proc=True).run(lambda: sorted(p for p in os.listdir("/proc") if p.isdigit()))
    assert result.value == ["1", "2"]


def test_hostname_is_set_inside() -> None:
    assert Isolate(hostname="sandbox").run(socket.gethostname).value == "sandbox"
    assert socket.gethostname() != "sandbox"


# --- filesystem ----------------------------------------------------------------------


def test_parent_tmp_content_is_invisible() -> None:
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="compartments-visible-") as host_file:
        assert os.path.exists(host_file.name)
        assert Isolate().run(os.path.exists, host_file.name).value is False


def test_tmpfs_size_limit_gives_enospc() -> None:
    def fill() -> object:
        try:
            with open("/tmp/big", "wb") as big:
                big.write(b"x" * (2 << 20))
        except OSError as exc:
            return exc.errno
        return "written"

    assert Isolate(tmpfs_size="1M").run(fill).value == errno.ENOSPC


def test_tmpfs_size_accepts_bytes() -> None:
    def fill() -> object:
        try:
            with open("/tmp/big", "wb") as big:
                big.write(b"x" * 200_000)
        except OSError as exc:
            return exc.errno
        return "written"

    assert Isolate(tmpfs_size=100_000).run(fill).value == errno.ENOSPC


def test_binds_are_read_only_by_default(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("host")

    def write() -> object:
        try:
            Path("/data/data").write_text("changed")
        except OSError as exc:
            return exc.errno
        return "written"

    result = Isolate(binds={str(tmp_path): "/data"}).run(write)
    assert result.value == errno.EROFS
    assert (tmp_path / "data").read_text() == "host"


def test_bound_files_are_readable_inside(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("host")
    result = Isolate(binds=[Bind(str(tmp_path), "/data")]).run(Path("/data/data").read_text)
    assert result.value == "host"


def test_writable_binds_accept_writes(tmp_path: Path) -> None:
    result = Isolate(writable_binds=[(str(tmp_path), "/out")]).run(
        Path("/out/result").write_text, "from inside"
    )
    assert result.ok
    assert (tmp_path / "result").read_text() == "from inside"


def test_lazy_imports_work_inside() -> None:
    def import_fresh() -> object:
        sys.modules.pop("colorsys", None)
        import colorsys

        return colorsys.rgb_to_hsv(1.0, 0.0, 0.0)[2]

    assert Isolate().run(import_fresh).value == 1.0


def test_without_runtime_the_root_is_nearly_empty() -> None:
    result = Isolate(runtime=False, devices=False).run(lambda: sorted(os.listdir("/")))
    assert result.value == ["tmp"]


def test_temp_dirs_are_cleaned_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host_tmp = tmp_path / "host-tmp"
    host_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(host_tmp))
    assert Isolate().run(lambda: "done").value == "done"
    assert Isolate().run(lambda: 1 / 0).returncode == 1
    assert Isolate().run(os.abort).returncode < 0
    assert list(host_tmp.iterdir()) == []


def test_bind_under_a_read_only_runtime_path_is_a_setup_error() -> None:
    with pytest.raises(IsolateSetupError, match="mount"):
        Isolate(binds={"/etc/hostname": "/usr/compartments-nope/hostname"}).run(lambda: None)


def test_missing_bind_source_is_refused_early(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Isolate(binds=[str(tmp_path / "nope")])


# --- network -------------------------------------------------------------------------




def connect_errno(port: int) -> object:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return "connected"
    except OSError as exc:
        return exc.errno


def test_new_network_namespace_has_only_a_loopback() -> None:
    assert Isolate().run(socket.if_nameindex).value == [[1, "lo"]]


def test_new_network_namespace_cannot_reach_the_host(listener: int) -> None:
    assert Isolate().run(connect_errno, listener).value == errno.ENETUNREACH


def test_network_true_shares_the_host_network(listener: int) -> None:
    assert Isolate(network=True).run(connect_errno, listener).value == "connected"


def test_bind_mounted_unix_socket_reaches_a_parent_server(tmp_path: Path) -> None:
    path = str(tmp_path / "server.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen()

        def say_hello() -> object:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect("/run/server.sock")
                client.sendall(b"hello")
            return "sent"

        result = Isolate(writable_binds={path: "/run/server.sock"}).run(say_hello)
        assert result.value == "sent"
        connection, _ = server.accept()
        with connection:
            assert connection.recv(16) == b"hello"


# --- privileges ----------------------------------------------------------------------


def test_capabilities_are_dropped() -> None:
    result = Isolate(proc=True).run(
        lambda: [status_field(f) for f in ("CapEff", "CapPrm", "CapBnd", "CapAmb")]
    )
    assert result.value == ["0000000000000000"] * 4


def test_no_new_privs_is_set() -> None:
    assert Isolate(proc=True).run(status_field, "NoNewPrivs").value == "1"


def test_inherited_fds_are_closed_unless_passed(tmp_path: Path) -> None:
    def fd_open(fd: int) -> object:
        try:
            os.fstat(fd)
        except OSError as exc:
            return exc.errno
        return "open"

    with open(tmp_path / "file", "w") as file:
        fd = file.fileno()
        assert Isolate().run(fd_open, fd).value == errno.EBADF
        assert Isolate(pass_fds=[fd]).run(fd_open, fd).value == "open"


def test_a_seccomp_filter_loads_inside() -> None:
    def sealed_socket() -> object:
        seccomp_filter = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        seccomp_filter.add_rule(pyseccomp.ERRNO(errno.EPERM), "socket")
        seccomp_filter.load()
        try:
            socket.socket()
        except PermissionError:
            return "denied"
        return "allowed"

    assert Isolate().run(sealed_socket).value == "denied"


# --- outcomes ------------------------------------------------------------------------


def test_return_value_comes_back() -> None:
    result = Isolate().run(lambda a, b: {"sum": a + b, "raw": b"\x00"}, 2, 3)
    assert result.ok
    assert result.value == {"sum": 5, "raw": b"\x00"}


def test_stdout_comes_back() -> None:
    result = Isolate().run(print, "printed inside")
    assert result.stdout == b"printed inside\n"


def test_an_exception_gives_status_1_and_its_traceback() -> None:
    def fail() -> None:
        raise RuntimeError("broken inside")

    result = Isolate().run(fail)
    assert result.returncode == 1
    assert b"RuntimeError: broken inside" in result.stderr


def test_abort_gives_sigabrt_and_stderr() -> None:
    def abort() -> None:
        sys.stderr.write("about to abort\n")
        os.abort()

    result = Isolate().run(abort)
    assert result.signal == signal.SIGABRT
    assert result.returncode == -signal.SIGABRT
    assert b"about to abort" in result.stderr


def test_sys_exit_code_passes_through() -> None:
    assert Isolate().run(sys.exit, 7).returncode == 7


def test_a_non_msgpack_value_is_an_error() -> None:
    result = Isolate().run(object)
    assert result.returncode == 1
    assert b"TypeError" in result.stderr


def test_timeout_kills_the_isolate() -> None:
    started = time.monotonic()
    result = Isolate(timeout=0.5).run(time.sleep, 30)
    assert result.timed_out
    assert not result.ok
    assert time.monotonic() - started < 10
