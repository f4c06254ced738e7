"""The compartment runtime, end to end in real processes."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from compartments import Fd, RestartPolicy, compartment, control
from compartments.errors import (
    CallTimeout,
    CompartmentClosed,
    CompartmentCrashed,
    ProtocolError,
    RemoteError,
)
from compartments.rulesets import Networking, SystemIO, Threads

SLEEP = Threads.nothing().allow_sleep().yes_really()


@compartment(rules=[SystemIO.nothing()])
def describe(data: bytes) -> dict[str, Any]:
    return {"length": len(data), "pid": os.getpid(), "upper": data.upper()}


@compartment(rules=[SystemIO.nothing()])
def describe_value(value: Any) -> list[Any]:
    return [type(value).__name__, value]


@compartment(rules=[SystemIO.nothing()], fresh=True)
def fresh_pid() -> int:
    return os.getpid()


@compartment(rules=[SystemIO.nothing()])
def open_a_file(path: str) -> str:
    with open(path) as handle:
        return handle.read()


@compartment(rules=[SystemIO.nothing()])
def raise_value_error(message: str) -> None:
    raise ValueError(message)


class Custom(Exception):
    pass


@compartment(rules=[SystemIO.nothing()])
def raise_custom() -> None:
    raise Custom("custom trouble")


@compartment(rules=[SystemIO.nothing()])
def return_a_set() -> object:
    return {1, 2}


@compartment(rules=[SystemIO.nothing()])
def environment() -> dict[str, str]:
    return dict(os.environ)


PR_GET_PDEATHSIG, PR_GET_DUMPABLE = 2, 3


@compartment(rules=["prctl"])
def hardening() -> dict[str, int]:
    libc = ctypes.CDLL(None)
    signum = ctypes.c_int()
    libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(signum), 0, 0, 0)
    return {"dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), "pdeathsig": signum.value}


@compartment(rules=[SystemIO.nothing().allow_open_readonly().allow_metadata()])
def open_fds() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc/self/fd"))


_setup_file: Any = None


def _open_setup_file() -> None:
    global _setup_file
    _setup_file = open(__file__, "rb")


@compartment(rules=[SystemIO.nothing().allow_read()], setup=_open_setup_file)
def first_line_of_this_file() -> bytes:
    return _setup_file.readline()


@compartment(rules=[SystemIO.nothing().allow_read().allow_metadata()])
class Reader:
    def __init__(self, path: str) -> None:
        self.handle = open(path, "rb")

    def read(self) -> bytes:
        self.handle.seek(0)
        return self.handle.read()

    def read_other(self, path: str) -> bytes:
        with open(path, "rb") as other:
            return other.read()


@compartment(rules=[SystemIO.nothing()])
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def add(self, amount: int = 1) -> int:
        self.value += amount
        return self.value

    def echo(self, value: Any) -> Any:
        return value

    def process_id(self) -> int:
        return os.getpid()


@compartment(rules=[SystemIO.nothing()])
class Front:
    """Holds a direct line to a Counter, given at construction or later."""

    def __init__(self, counter: Any = None) -> None:
        self.counter = counter

    def use(self, counter: Any) -> None:
        self.counter = counter

    def relay(self, times: int) -> int:
        total = 0
        for _ in range(times):
            total = self.counter.add(1)
        return total

    def relay_bytes(self, size: int) -> list[Any]:
        sent = bytes(range(256)) * (size // 256)
        echoed = self.counter.echo(sent)  # large both ways, sealed on both ends
        return [type(echoed).__name__, echoed == sent, len(echoed)]


@compartment(rules=[SystemIO.nothing(), SLEEP])
class Fragile:
    def hang(self) -> None:
        threading.Event().wait()

    def nap(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def segfault(self) -> None:
        ctypes.string_at(0)

    def exit_now(self, code: int) -> None:
        os._exit(code)

    def garbage(self) -> None:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=64)
        raw.send(b"\xc1\xc1\xc1 not msgpack")
        raw.detach()
        threading.Event().wait()

    def reply_to_unknown_msgid(self) -> None:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=64)
        raw.send(bytes([0x94, 0x01, 0xCE, 0x7F, 0xFF, 0xFF, 0xFF, 0xC0, 0xC0]))
        raw.detach()
        threading.Event().wait()

    def process_id(self) -> int:
        return os.getpid()


@compartment(rules=[SystemIO.nothing(), SLEEP], restart="on-crash")
class Phoenix:
    def process_id(self) -> int:
        return os.getpid()

    def die(self) -> None:
        os._exit(3)


@compartment(rules=[SystemIO.nothing()], restart=RestartPolicy(max_restarts=1, backoff=0))
class Mortal:
    def process_id(self) -> int:
        return os.getpid()

    def die(self) -> None:
        os._exit(4)


@compartment(rules=[SystemIO.nothing().allow_read()])
def read_passed_fd(fd: Fd) -> bytes:
    with fd.open("rb") as handle:
        return handle.read()


@compartment(rules=[SystemIO.nothing().allow_open_readonly()])
def broker_open(path: str) -> Fd:
    return Fd(os.open(path, os.O_RDONLY))


# -- calling ------------------------------------------------------------------------


def test_function_compartment_runs_in_another_process() -> None:
    result = describe(b"abc")
    assert result["length"] == 3 and result["upper"] == b"ABC"
    assert result["pid"] != os.getpid()


def test_function_compartment_reuses_its_child() -> None:
    assert describe(b"a")["pid"] == describe(b"b")["pid"] == describe.pid


def test_close_stops_the_child_and_the_next_call_starts_another() -> None:
    first = describe(b"a")["pid"]
    describe.close()
    assert describe(b"a")["pid"] != first


def test_fresh_gives_every_call_its_own_child() -> None:
    assert len({fresh_pid() for _ in range(3)}) == 3


def test_sealed_compartment_cannot_open_but_keeps_answering(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("secret")
    with pytest.raises(PermissionError):
        open_a_file(str(path))
    assert open_a_file.pid is not None
    assert describe(b"still answering")["length"] == 15


def test_class_init_opens_a_file_that_sealed_methods_read(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"opened before the seal")
    with Reader(str(path)) as reader:
        assert reader.read() == b"opened before the seal"
        with pytest.raises(PermissionError):
            reader.read_other(str(path))


def test_setup_hook_runs_before_the_seal() -> None:
    assert first_line_of_this_file().startswith(b'"""The compartment runtime')


def test_init_error_is_raised_at_instantiation(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Reader(str(tmp_path / "missing"))


def test_class_instances_keep_their_own_state() -> None:
    with Counter(10) as a, Counter(100) as b:
        assert (a.add(), b.add(5), a.add()) == (11, 105, 12)
        assert a.process_id() != b.process_id() == control(b).pid


def test_unknown_method_is_an_attribute_error_at_the_call_site() -> None:
    with Counter() as counter, pytest.raises(AttributeError, match="no public method `nope`"):
        counter.nope()


# -- errors cross as data ---------------------------------------------------------------


def test_builtin_exception_comes_back_as_the_same_type() -> None:
    with pytest.raises(ValueError, match="bad input") as info:
        raise_value_error("bad input")
    assert type(info.value) is ValueError


def test_remote_traceback_is_the_cause_and_has_source_lines() -> None:
    with pytest.raises(ValueError) as info:
        raise_value_error("x")
    remote = str(info.value.__cause__)
    assert "raise_value_error" in remote
    assert "raise ValueError(message)" in remote  # source read without the filesystem


def test_custom_exception_becomes_remote_error() -> None:
    with pytest.raises(RemoteError) as info:
        raise_custom()
    assert info.value.remote_type.endswith("Custom")
    assert info.value.message == "custom trouble"
    assert "raise Custom" in info.value.remote_traceback


def test_unsupported_argument_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match=r"argument `data`.*set"):
        describe({1, 2})  # type: ignore[arg-type]


def test_unsupported_keyword_argument_is_named() -> None:
    with Counter() as counter, pytest.raises(TypeError, match="argument `amount`"):
        counter.add(amount=object())


def test_unsupported_constructor_argument_is_named() -> None:
    with pytest.raises(TypeError, match="argument `start`"):
        Counter(object())


def test_unsupported_return_value_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="result"):
        return_a_set()


# -- what a compartment inherits ---------------------------------------------------------


def test_environment_is_scrubbed_to_an_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    environment.close()
    import compartments._parent._supervisor as supervisor

    monkeypatch.setenv("COMPARTMENTS_TEST_SECRET", "hunter2")
    monkeypatch.setattr(supervisor, "_zygote", None)  # a zygote started after the secret
    seen = environment()
    environment.close()
    supervisor._stop_everything()
    assert "COMPARTMENTS_TEST_SECRET" not in seen
    assert set(seen) <= supervisor.ENV_ALLOWLIST | {k for k in seen if k.startswith("LC_")}


def test_compartment_is_dumpable_only_inside_its_own_landlock_domain_and_dies_with_its_parent(
) -> None:
    """Dumpable lets a same-uid parent decode violation reports; the private Landlock
    domain keeps siblings from ptrace (tests/hostile/test_monitor_nonroot.py)."""
    from compartments._policy._landlock import abi_version

    in_domain = abi_version() > 0
    assert hardening() == {"dumpable": int(in_domain), "pdeathsig": signal.SIGKILL}


def test_compartment_runs_with_no_new_privs_and_a_filter() -> None:
    describe(b"")
    status = Path(f"/proc/{describe.pid}/status").read_text()
    assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status


def test_compartment_holds_no_capabilities_after_the_seal() -> None:
    describe(b"")
    status = Path(f"/proc/{describe.pid}/status").read_text()
    assert "CapEff:\t0000000000000000" in status
    assert "CapPrm:\t0000000000000000" in status


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="only root (CAP_SETPCAP) can empty the bounding set; under no_new_privs an "
    "ordinary user's full bounding set grants nothing",
)
def test_compartment_of_root_has_an_empty_capability_bounding_set() -> None:
    describe(b"")
    status = Path(f"/proc/{describe.pid}/status").read_text()
    assert "CapBnd:\t0000000000000000" in status


def test_compartment_holds_only_stdio_and_its_channel() -> None:
    leaked = open(__file__)
    try:
        fds = open_fds()
    finally:
        leaked.close()
    listing_fd = [fd for fd in fds if fd not in (0, 1, 2, 64)]
    assert fds[:3] == [0, 1, 2] and 64 in fds
    assert len(listing_fd) == 1  # the directory being listed


# -- fd passing ----------------------------------------------------------------------


def test_fd_passed_to_a_compartment_is_readable_there(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"handed over")
    with open(path, "rb") as handle:
        assert read_passed_fd(Fd(handle)) == b"handed over"


def test_broker_compartment_returns_an_fd(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"brokered")
    fd = broker_open(str(path))
    assert isinstance(fd, Fd)
    with fd.open("rb") as handle:
        assert handle.read() == b"brokered"


# -- compartments talking directly ------------------------------------------------------


def test_proxy_given_at_construction_carries_calls_without_the_parent() -> None:
    with Counter() as counter, Front(counter) as front:
        parent_line = counter._supervised_instance().connection()
        before = parent_line.calls_started
        assert front.relay(50) == 50
        assert parent_line.calls_started == before
        assert counter.add(0) == 50  # the same instance was reached


def test_proxy_given_as_a_call_argument_carries_calls_directly() -> None:
    with Counter(7) as counter, Front() as front:
        front.use(counter)
        parent_line = counter._supervised_instance().connection()
        before = parent_line.calls_started
        assert front.relay(3) == 10
        assert parent_line.calls_started == before


def test_large_bytes_cross_a_direct_line_both_ways() -> None:
    with Counter() as counter, Front(counter) as front:
        assert front.relay_bytes(1 << 20) == ["bytes", True, 1 << 20]
        assert control(front).violations == [] and control(counter).violations == []


# -- hostile children and crashes -------------------------------------------------------


def _call_in_thread(func: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            func()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def _wait_for_blocked_call() -> None:
    time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_child_killed_mid_call_fails_the_call_promptly(sig: int) -> None:
    with Fragile() as fragile:
        pid = fragile.process_id()
        thread, errors = _call_in_thread(fragile.hang)
        _wait_for_blocked_call()
        killed_at = time.monotonic()
        os.kill(pid, sig)
        thread.join(5)
        assert time.monotonic() - killed_at < 1.0
        assert isinstance(errors[0], CompartmentCrashed)
        assert signal.Signals(sig).name in str(errors[0])


def test_segfault_mid_call_names_the_signal() -> None:
    with Fragile() as fragile, pytest.raises(CompartmentCrashed, match="SIGSEGV"):
        fragile.segfault()


def test_os_exit_mid_call_gives_the_exit_status() -> None:
    with Fragile() as fragile, pytest.raises(CompartmentCrashed, match="status 9"):
        fragile.exit_now(9)


def test_all_in_flight_calls_fail_when_the_child_dies() -> None:
    with Fragile() as fragile:
        pid = fragile.process_id()
        calls = [_call_in_thread(fragile.hang) for _ in range(4)]
        _wait_for_blocked_call()
        os.kill(pid, signal.SIGKILL)
        for thread, errors in calls:
            thread.join(5)
            assert not thread.is_alive()
            assert isinstance(errors[0], CompartmentCrashed)


def test_garbage_from_a_child_is_a_protocol_error_and_closes_it() -> None:
    with Fragile() as fragile:
        pid = fragile.process_id()
        with pytest.raises(ProtocolError):
            fragile.garbage()
        time.sleep(0.1)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert describe(b"still fine")["length"] == 10


def test_reply_to_a_msgid_never_sent_is_a_protocol_error() -> None:
    with Fragile() as fragile, pytest.raises(ProtocolError, match="never sent"):
        fragile.reply_to_unknown_msgid()


def test_calls_after_a_crash_without_restart_keep_failing() -> None:
    with Fragile() as fragile:
        with pytest.raises(CompartmentCrashed):
            fragile.exit_now(1)
        with pytest.raises(CompartmentCrashed):
            fragile.process_id()


def test_timeout_raises_call_timeout() -> None:
    with Fragile() as fragile:
        started = time.monotonic()
        with pytest.raises(CallTimeout, match="`hang`"):
            control(fragile).with_timeout(0.3).hang()
        assert time.monotonic() - started < 2


def test_timed_out_compartment_is_killed() -> None:
    with Fragile() as fragile:
        pid = fragile.process_id()
        with pytest.raises(TimeoutError):
            control(fragile).with_timeout(0.2).hang()
        time.sleep(0.2)
        with pytest.raises(CompartmentCrashed, match="timed out"):
            fragile.process_id()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_restart_on_crash_serves_the_next_call_from_a_new_child() -> None:
    with Phoenix() as phoenix:
        first = phoenix.process_id()
        with pytest.raises(CompartmentCrashed):
            phoenix.die()
        assert phoenix.process_id() != first
        assert control(phoenix).restarts == 1


def test_restart_stops_after_the_retry_limit() -> None:
    with Mortal() as mortal:
        for _ in range(2):  # the first child, then its one permitted replacement
            with pytest.raises(CompartmentCrashed):
                mortal.die()
        with pytest.raises(CompartmentCrashed):
            mortal.process_id()
        assert control(mortal).restarts == 1


def test_call_after_close_raises_compartment_closed() -> None:
    counter = Counter()
    control(counter).close()
    with pytest.raises(CompartmentClosed):
        counter.add()


def test_close_leaves_no_child_and_no_zombie() -> None:
    counter = Counter()
    pid = counter.process_id()
    control(counter).close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_close_releases_the_parents_fds() -> None:
    control(Counter()).close()  # the zygote is running from here on
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with Counter() as counter:
            counter.add()
    assert len(os.listdir("/proc/self/fd")) == before


# -- concurrency ---------------------------------------------------------------------


def test_threads_pipeline_calls_and_every_reply_reaches_its_caller() -> None:
    misrouted: list[tuple[int, int, Any]] = []
    answered = [0] * 8

    with Counter() as counter:

        def hammer(thread_no: int) -> None:
            for i in range(2000):
                answer = counter.echo([thread_no, i])
                if answer != [thread_no, i]:
                    misrouted.append((thread_no, i, answer))
                answered[thread_no] += 1

        calls = [_call_in_thread(lambda n=n: hammer(n)) for n in range(8)]
        for thread, _ in calls:
            thread.join(60)
    assert [errors for _, errors in calls] == [[]] * 8
    assert misrouted == []
    assert answered == [2000] * 8


def test_async_calls_do_not_block_the_event_loop() -> None:
    async def main() -> tuple[list[float], float]:
        with Fragile() as fragile:
            ticks: list[float] = []

            async def nap() -> float:
                await control(fragile).aio.nap(0.3)
                return time.monotonic()

            async def ticker() -> None:
                for _ in range(5):
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.02)

            # The nap is scheduled first: were it blocking, no tick could come before it ends.
            napped_at, _ = await asyncio.gather(nap(), ticker())
            return ticks, napped_at

    ticks, napped_at = asyncio.run(main())
    assert len(ticks) == 5 and ticks[-1] < napped_at


def test_cancelled_async_call_does_not_corrupt_the_channel() -> None:
    async def main() -> list[Any]:
        with Fragile() as fragile:
            slow = asyncio.ensure_future(control(fragile).aio.nap(0.3))
            await asyncio.sleep(0.05)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            return [await control(fragile).aio.nap(0.01), await control(fragile).aio.nap(0.02)]

    assert asyncio.run(main()) == [0.01, 0.02]


def test_function_compartment_is_awaitable() -> None:
    result = asyncio.run(describe.aio(b"xyz"))
    assert result["length"] == 3


# -- scripts ---------------------------------------------------------------------------


SCRIPT = textwrap.dedent(
    """
    import os
    from compartments import compartment
    from compartments.rulesets import SystemIO

    @compartment(rules=[SystemIO.nothing()])
    def square(x):
        return x * x, os.getpid()

    if __name__ == "__main__":
        value, pid = square(12)
        print(value, pid != os.getpid())
    """
)


def test_compartment_defined_in_a_main_script_works(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["144", "True"]


def test_local_function_is_refused_with_a_reason() -> None:
    def local() -> None:
        pass

    with pytest.raises(TypeError, match="module-level"):
        compartment(local)



@compartment(rules=[SystemIO.nothing(), Networking.nothing().allow_start_tcp_clients()
                    .allow_running_tcp_clients()])
def connect_by_name_lookup_free(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=None):
        return True


def test_create_connection_works_after_the_seal_without_lazy_imports() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert connect_by_name_lookup_free(server.getsockname()[1]) is True


@compartment(rules=[SystemIO.nothing()])
def tuple_keys_of(value: dict[Any, Any]) -> list[Any]:
    return [list(key) if isinstance(key, tuple) else key for key in value]


def test_a_dict_with_tuple_keys_crosses_to_a_compartment_as_itself() -> None:
    value = {(1, "a"): [1], ("nested", (2, 3)): None}
    assert tuple_keys_of(value) == [[1, "a"], ["nested", [2, 3]]]


def test_a_dict_with_tuple_keys_returned_is_a_type_error_naming_the_key() -> None:
    value = {(1, "a"): [1]}
    expected = r"at `result\[1\]`, a dict key of type tuple \(\(1, 'a'\)\)"
    with pytest.raises(TypeError, match=expected):
        describe_value(value)
    assert describe_value({"a": 1}) == ["dict", {"a": 1}]  # the compartment lives on
