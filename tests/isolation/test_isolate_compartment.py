"""``@compartment(isolate=Isolate(...))``: a long-lived compartment in its own namespaces.

The compartment process the zygote forked stays outside as a shim; the served code runs
as pid 2 of a new PID namespace (pid 1 only reaps), on a tmpfs root.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compartments import Isolate, compartment, control
from compartments.errors import CallTimeout, CompartmentCrashed
from compartments.rulesets import SystemIO, Threads

SLEEP = Threads.nothing().allow_sleep().yes_really()
#: Host directory bound (read-only) at /run/outside for the unix-socket test; the same
#: path in the parent and in the zygote, which both import this module.
SOCKET_DIR = os.path.join(
    tempfile.gettempdir(), f"compartments-test-isolated-sockets-{os.getuid()}"
)
os.makedirs(SOCKET_DIR, mode=0o700, exist_ok=True)


def _errno_of(action: Any) -> object:
    try:
        action()
    except OSError as exc:
        return exc.errno
    return "ok"


def _fill_tmp() -> None:
    with open("/tmp/big", "wb") as big:
        big.write(b"x" * (2 << 20))


def _connect_tcp(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=2).close()


@compartment(
    rules=[SystemIO.nothing(), SLEEP, "kill", "getpid"],
    isolate=Isolate(tmpfs_size="1M", proc=True, hostname="inside"),
)
class Inside:
    """Looks around in ``__init__`` (before the seal), then serves."""

    def __init__(self, host_path: str, port: int) -> None:
        with open("/proc/self/uid_map") as uid_map, open("/proc/self/status") as status:
            self.uid_map = uid_map.read().split()
            caps = [line.split()[1] for line in status if line.startswith("CapBnd")]
        self.seen = {
            "uid": os.getuid(),
            "gid": os.getgid(),
            "pid": os.getpid(),
            "uid_map": self.uid_map,
            "hostname": socket.gethostname(),
            "proc": sorted(p for p in os.listdir("/proc") if p.isdigit()),
            "host_path_visible": os.path.exists(host_path),
            # Never bound (only the interpreter's prefixes are), wherever the checkout is.
            "tests_dir_visible": os.path.exists(os.path.dirname(os.path.abspath(__file__))),
            "root": sorted(os.listdir("/")),
            "fill": _errno_of(_fill_tmp),
            "interfaces": [list(pair) for pair in socket.if_nameindex()],
            "tcp": _errno_of(lambda: _connect_tcp(port)),
            "cap_bounding_before_seal": caps,
        }

    def facts(self) -> dict[str, Any]:
        return self.seen

    def echo(self, value: Any) -> Any:
        return value

    def open_file(self, path: str) -> str:
        with open(path) as handle:
            return handle.read()

    def process_id(self) -> int:
        return os.getpid()

    def capabilities(self) -> str:
        libc = ctypes.CDLL(None, use_errno=True)
        data = (ctypes.c_uint32 * 6)()
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        libc.capget(header, data)
        return " ".join(str(word) for word in data)

    def segfault(self) -> None:
        ctypes.string_at(0)

    def kill_myself(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def exit_now(self, code: int) -> None:
        os._exit(code)

    def hang(self) -> None:
        threading.Event().wait()


@compartment(
    rules=[SystemIO.nothing(), "socket", "connect", "sendto"],
    isolate=Isolate(binds={SOCKET_DIR: "/run/outside"}),
)
def say_hello(socket_name: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(f"/run/outside/{socket_name}")
        client.sendall(b"hello from inside")
    return "sent"


_interfaces: list[Any] = []


def _list_interfaces() -> None:
    _interfaces.extend(name for _, name in socket.if_nameindex())


@compartment(rules=[SystemIO.nothing()], setup=_list_interfaces, isolate=Isolate(network=True))
def shares_the_network() -> list[Any]:
    return _interfaces


def _setup_fills_tmp() -> None:
    _fill_tmp()


@compartment(rules=[SystemIO.nothing()], setup=_setup_fills_tmp, isolate=Isolate(tmpfs_size="1M"))
def never_started() -> None:
    """Its setup hits ENOSPC: the error is the caller's."""


@compartment(rules=[SystemIO.nothing(), SLEEP], isolate=Isolate(tmpfs_size="1M"), timeout=0.5)
def too_slow(seconds: float) -> None:
    time.sleep(seconds)


# --- helpers ------------------------------------------------------------------------




@pytest.fixture
def inside(listener: int) -> Iterator[Any]:
    with (
        tempfile.NamedTemporaryFile(dir="/tmp", prefix="compartments-visible-") as host_file,
        Inside(host_file.name, listener) as proxy,
    ):
        yield proxy


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in text.split()]


def gone_or_reaped(pid: int) -> bool:
    """True once ``pid`` no longer exists, not even as a zombie (waits a little: pid 2
    is reaped by the kernel while pid 1 exits, just after the channel's EOF)."""
    deadline = time.monotonic() + 3
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def mount_points() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("compartments-isolate-")}


# --- the environment ------------------------------------------------------------------


def test_uid_0_inside_maps_to_our_uid(inside: Any) -> None:
    seen = inside.facts()
    assert (seen["uid"], seen["gid"]) == (0, 0)
    assert seen["uid_map"] == ["0", str(os.getuid()), "1"]


def test_served_code_is_pid_2_of_its_own_pid_namespace(inside: Any) -> None:
    seen = inside.facts()
    assert seen["pid"] == inside.process_id() == 2
    assert seen["proc"] == ["1", "2"]
    shim = control(inside).pid  # the parent supervises the shim
    assert shim != 2 and shim is not None
    assert seen["hostname"] == "inside" != socket.gethostname()


def test_parent_tmp_is_invisible_and_the_root_is_a_tmpfs(inside: Any) -> None:
    seen = inside.facts()
    assert seen["host_path_visible"] is False
    assert seen["tests_dir_visible"] is False
    # Only what the compartment imports from is bound in: /home appears only when the
    # project (or its venv) lives there, as it does for an ordinary user's clone.
    imports_from_home = any(p.startswith("/home/") for p in sys.path)
    assert "tmp" in seen["root"] and ("home" not in seen["root"] or imports_from_home)


def test_tmpfs_size_limit_gives_enospc(inside: Any) -> None:
    assert inside.facts()["fill"] == errno.ENOSPC


def test_no_network_but_a_loopback(inside: Any) -> None:
    seen = inside.facts()
    assert seen["interfaces"] == [[1, "lo"]]
    assert seen["tcp"] == errno.ENETUNREACH


def test_network_true_keeps_the_host_network() -> None:
    try:
        assert shares_the_network() == [name for _, name in socket.if_nameindex()]
    finally:
        shares_the_network.close()


def test_capabilities_are_dropped_before_serving(inside: Any) -> None:
    assert inside.capabilities() == "0 0 0 0 0 0"


def test_rpc_works_normally(inside: Any) -> None:
    value = {"list": [1, 2, 3], "bytes": b"\x00" * 1000, "text": "é"}
    assert inside.echo(value) == value
    assert [inside.echo(n) for n in range(50)] == list(range(50))


@pytest.mark.parametrize("size", [3 << 20, 8 << 20], ids=["3mib", "8mib"])
def test_large_payloads_cross(inside: Any, size: int) -> None:
    big = os.urandom(size)
    assert inside.echo(big) == big


def test_seccomp_policy_still_applies_inside(inside: Any) -> None:
    with pytest.raises(PermissionError):
        inside.open_file("/proc/self/status")
    assert inside.echo("still answering") == "still answering"


def test_bind_mounted_unix_socket_reaches_a_parent_server() -> None:
    name = f"{uuid.uuid4().hex}.sock"
    path = os.path.join(SOCKET_DIR, name)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(path)
            server.listen()
            assert say_hello(name) == "sent"
            connection, _ = server.accept()
            with connection:
                assert connection.recv(100) == b"hello from inside"
    finally:
        say_hello.close()
        os.unlink(path)


def test_setup_error_inside_reaches_the_caller() -> None:
    try:
        with pytest.raises(OSError, match="No space left"):
            never_started()
    finally:
        never_started.close()


# --- crashes, kills, closing --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "expected"),
    [("segfault", "SIGSEGV"), ("kill_myself", "SIGKILL")],
)
def test_a_crash_inside_names_the_signal(listener: int, method: str, expected: str) -> None:
    with (
        Inside("/nonexistent", listener) as proxy,
        pytest.raises(CompartmentCrashed, match=expected),
    ):
        getattr(proxy, method)()


def test_exit_status_passes_through(inside: Any) -> None:
    with pytest.raises(CompartmentCrashed, match="status 9"):
        inside.exit_now(9)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_signal_to_the_reported_pid_kills_the_whole_compartment(inside: Any, sig: int) -> None:
    shim = control(inside).pid
    init = children(shim)
    worker = children(init[0])
    errors: list[BaseException] = []

    def call() -> None:
        try:
            inside.hang()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.2)
    os.kill(shim, sig)
    thread.join(5)
    assert isinstance(errors[0], CompartmentCrashed)
    assert signal.Signals(sig).name in str(errors[0])
    assert gone_or_reaped(shim) and gone_or_reaped(worker[0])
    assert _not_running(init[0])


def _started_too_slow() -> tuple[int, int, int]:
    """Start `too_slow`; its shim, namespace init and served process."""
    too_slow(0)
    shim = too_slow.pid
    assert shim is not None
    (init,) = children(shim)
    (worker,) = children(init)
    return shim, init, worker


def test_timeout_kills_the_isolated_compartment() -> None:
    try:
        shim, init, worker = _started_too_slow()
        with pytest.raises(CallTimeout):
            too_slow(10)
        with pytest.raises(CompartmentCrashed, match=r"SIGKILL.*timed out"):
            too_slow(0)
        assert gone_or_reaped(shim) and gone_or_reaped(worker)
        assert _not_running(init)
    finally:
        too_slow.close()


def _not_running(pid: int) -> bool:
    """Gone, or a zombie waiting for a reaper we do not control (see the README)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_close_leaves_no_process_no_zombie_and_no_mount_point(listener: int) -> None:
    before = mount_points()
    proxy = Inside("/nonexistent", listener)
    shim = control(proxy).pid
    assert shim is not None
    (init,) = children(shim)
    (worker,) = children(init)
    assert mount_points() - before == set() or _vanish(mount_points() - before)
    control(proxy).close()
    for pid in (shim, init, worker):
        assert gone_or_reaped(pid), pid
    assert _vanish(mount_points() - before)


def _vanish(paths: set[str]) -> bool:
    """Mount points of concurrent Isolate runs elsewhere may come and go: wait."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if not paths & mount_points():
            return True
        time.sleep(0.05)
    return False


def test_compartment_args_must_be_an_isolate() -> None:
    with pytest.raises(TypeError, match="Isolate"):
        compartment(isolate="yes")(_fill_tmp)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="timeout"):
        compartment(isolate=Isolate(timeout=1))(_fill_tmp)


def test_data_round_trip() -> None:
    original = Isolate(tmpfs_size="2M", binds={SOCKET_DIR: "/x"}, writable_binds=[SOCKET_DIR],
                       network=True, proc=True, hostname="h", devices=False)
    again = Isolate.from_data(original.to_data())
    assert again.to_data() == original.to_data()
    with pytest.raises(TypeError):
        Isolate.from_data({**original.to_data(), "network": "yes"})


def test_a_killed_isolated_compartment_leaves_no_zombie_behind() -> None:
    """Its namespace init is orphaned to the zygote (a subreaper), which reaps it."""
    from compartments._parent import _supervisor

    try:
        shim, init, worker = _started_too_slow()
        os.kill(shim, signal.SIGKILL)
        assert _not_running(worker)  # PDEATHSIG takes the namespace down a moment later
        with pytest.raises(CompartmentCrashed, match="SIGKILL"):
            too_slow(0)
        assert _not_running(init)
        _supervisor.get_zygote(1 << 20).connection.call("ping", [], timeout=5)
        assert gone_or_reaped(init)
    finally:
        too_slow.close()
