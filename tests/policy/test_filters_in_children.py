"""extrasafe's own behaviours, checked with real syscalls in forked children."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from childproc import run_in_child

from compartments import Arg, SafetyContext, SeccompRule
from compartments.rulesets import ForkAndExec, Networking, SystemIO, Threads


def test_default_deny_blocks_open(tmp_path: Path) -> None:
    existing = tmp_path / "exists"
    existing.write_text("x")

    def body() -> None:
        SafetyContext().enable(SystemIO.nothing()).apply_to_current_thread()
        open(existing)

    assert run_in_child(body) == "EPERM"


def test_default_deny_blocks_create(tmp_path: Path) -> None:
    target = tmp_path / "new"

    def body() -> None:
        SafetyContext().enable(SystemIO.nothing()).apply_to_current_thread()
        open(target, "w")

    assert run_in_child(body) == "EPERM"
    assert not target.exists()


def test_default_deny_blocks_write_to_an_open_fd() -> None:
    r, w = os.pipe()

    def body() -> None:
        SafetyContext().enable(SystemIO.nothing()).apply_to_current_thread()
        os.write(w, b"x")

    assert run_in_child(body) == "EPERM"
    os.close(r)
    os.close(w)


def test_unfiltered_child_can_open_as_a_control(tmp_path: Path) -> None:
    target = tmp_path / "new"
    assert run_in_child(lambda: open(target, "w").close()) == "ok"
    assert target.exists()


def test_filter_is_inherited_by_threads_started_later(tmp_path: Path) -> None:
    existing = tmp_path / "exists"
    existing.write_text("x")

    def body() -> None:
        SafetyContext().enable(Threads.nothing().allow_create()).apply_to_current_thread()
        outcome: list[BaseException] = []

        def worker() -> None:
            try:
                open(existing)
            except OSError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        raise outcome[0]

    assert run_in_child(body) == "EPERM"


def _exec_shell_creating(target: Path, policy: SystemIO) -> None:
    ctx = (
        SafetyContext()
        .enable(policy)
        .enable(ForkAndExec.everything())
        .enable(Networking.nothing())
    )
    for loader_needs in ("arch_prctl", "access", "set_tid_address", "prlimit64", "getuid",
                         "geteuid", "getgid", "getegid", "getppid", "dup2", "fcntl"):
        ctx.enable(loader_needs)
    ctx.apply_to_current_thread()
    os.execv("/bin/sh", ["sh", "-c", f": > {target}"])


SHELL_NEEDS = SystemIO.nothing().allow_read().allow_write().allow_metadata()


def test_filter_is_inherited_across_exec(tmp_path: Path) -> None:
    target = tmp_path / "created-by-sh"
    outcome = run_in_child(
        lambda: _exec_shell_creating(target, SHELL_NEEDS.allow_open_readonly())
    )
    assert outcome != "ok"
    assert not target.exists()


def test_exec_control_creates_the_file_when_open_is_allowed(tmp_path: Path) -> None:
    target = tmp_path / "created-by-sh"
    outcome = run_in_child(
        lambda: _exec_shell_creating(target, SHELL_NEEDS.allow_open().yes_really())
    )
    assert outcome == "ok"
    assert target.exists()


def test_filter_is_inherited_across_fork(tmp_path: Path) -> None:
    existing = tmp_path / "exists"
    existing.write_text("x")

    def body() -> None:
        SafetyContext().enable(ForkAndExec.everything()).apply_to_current_thread()
        pid = os.fork()
        if pid == 0:
            try:
                open(existing)
                os._exit(0)
            except PermissionError:
                os._exit(7)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 7

    assert run_in_child(body) == "ok"


def _thread_opens_after(apply: str, path: Path) -> None:
    go, done = threading.Event(), threading.Event()
    result: list[object] = []

    def worker() -> None:
        go.wait()
        try:
            open(path).close()
            result.append("opened")
        except OSError as exc:
            result.append(exc.errno)
        done.set()

    threading.Thread(target=worker).start()
    ctx = SafetyContext().enable(Threads.nothing().allow_create())
    getattr(ctx, apply)()
    go.set()
    done.wait()
    if result != ["opened"]:
        raise PermissionError(result[0], "worker thread was denied")


def test_current_thread_filter_leaves_other_threads_alone(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    assert run_in_child(lambda: _thread_opens_after("apply_to_current_thread", path)) == "ok"


def test_all_threads_filter_reaches_existing_threads(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    outcome = run_in_child(lambda: _thread_opens_after("apply_to_all_threads", path))
    assert outcome == "EPERM"


def _write_to_each(fds: list[int], ctx: SafetyContext) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    ctx.apply_to_current_thread()
    for fd in fds:
        os.write(fd, b"x")


def test_conditional_rules_are_ored_across_rulesets() -> None:
    def ctx() -> SafetyContext:
        return (
            SafetyContext()
            .enable(SystemIO.nothing().allow_stdout())
            .enable(SystemIO.nothing().allow_stderr())
        )

    assert run_in_child(lambda: _write_to_each([1, 2], ctx())) == "ok"
    r, w = os.pipe()
    assert run_in_child(lambda: _write_to_each([w], ctx())) == "EPERM"
    os.close(r)
    os.close(w)


def test_socket_bound_before_the_filter_keeps_serving() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def body() -> None:
        SafetyContext().enable(
            Networking.nothing().allow_running_tcp_servers()
        ).apply_to_current_thread()
        conn, _ = listener.accept()
        conn.sendall(conn.recv(16).upper())
        conn.close()

    pid = os.fork()
    if pid == 0:
        from childproc import _ERRNO_BASE

        try:
            body()
            os._exit(0)
        except OSError as exc:
            os._exit(_ERRNO_BASE + (exc.errno or 0))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"ping")
        assert client.recv(16) == b"PING"
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    listener.close()


def test_new_bind_fails_under_running_servers_only() -> None:
    def body() -> None:
        SafetyContext().enable(
            Networking.nothing().allow_running_tcp_servers()
        ).apply_to_current_thread()
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    assert run_in_child(body) == "EPERM"


def _make_socket_under(ruleset: Networking, family: int, kind: int) -> None:
    SafetyContext().enable(ruleset).apply_to_current_thread()
    socket.socket(family, kind).close()


TCP_CLIENTS = Networking.nothing().allow_start_tcp_clients()
UDP_SERVERS = Networking.nothing().allow_start_udp_servers().yes_really()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_start_tcp_clients_allows_tcp_sockets(family: int) -> None:
    outcome = run_in_child(lambda: _make_socket_under(TCP_CLIENTS, family, socket.SOCK_STREAM))
    assert outcome == "ok"


def test_start_tcp_clients_refuses_udp_sockets() -> None:
    outcome = run_in_child(
        lambda: _make_socket_under(TCP_CLIENTS, socket.AF_INET, socket.SOCK_DGRAM)
    )
    assert outcome == "EPERM"


def test_start_udp_servers_allows_udp_sockets() -> None:
    outcome = run_in_child(
        lambda: _make_socket_under(UDP_SERVERS, socket.AF_INET6, socket.SOCK_DGRAM)
    )
    assert outcome == "ok"


def test_start_udp_servers_refuses_tcp_sockets() -> None:
    outcome = run_in_child(
        lambda: _make_socket_under(UDP_SERVERS, socket.AF_INET, socket.SOCK_STREAM)
    )
    assert outcome == "EPERM"


def test_start_tcp_clients_connects_to_a_local_server() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def body() -> None:
        SafetyContext().enable(TCP_CLIENTS).apply_to_current_thread()
        socket.create_connection(("127.0.0.1", port)).close()

    assert run_in_child(body) == "ok"
    listener.close()


READ_ONLY = SystemIO.nothing().allow_open_readonly()


def _open_under_readonly(path: Path, flags: int) -> None:
    SafetyContext().enable(READ_ONLY).apply_to_current_thread()
    os.open(path, flags)


def test_open_readonly_allows_reading(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    assert run_in_child(lambda: _open_under_readonly(path, os.O_RDONLY)) == "ok"


@pytest.mark.parametrize(
    "flags",
    [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_APPEND, os.O_RDONLY | os.O_CREAT],
    ids=["write", "read-write", "append", "create"],
)
def test_open_readonly_rejects_write_intent(tmp_path: Path, flags: int) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    assert run_in_child(lambda: _open_under_readonly(path, flags)) == "EPERM"


def _read_write_on(allowed: int, used: int, op: str) -> None:
    ctx = SafetyContext().enable(
        SystemIO.nothing().allow_file_read(allowed).allow_file_write(allowed)
    )
    ctx.apply_to_current_thread()
    if op == "read":
        os.read(used, 1)
    elif op == "write":
        os.write(used, b"y")
    else:
        os.lseek(used, 0, os.SEEK_SET)


@pytest.mark.parametrize("op", ["read", "write", "lseek"])
def test_fd_scoped_rules_allow_the_granted_fd(tmp_path: Path, op: str) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    fd = os.open(path, os.O_RDWR)
    assert run_in_child(lambda: _read_write_on(fd, fd, op)) == "ok"
    os.close(fd)


@pytest.mark.parametrize("op", ["read", "write", "lseek"])
def test_fd_scoped_rules_deny_other_fds(tmp_path: Path, op: str) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    fd, other = os.open(path, os.O_RDWR), os.open(path, os.O_RDWR)
    assert run_in_child(lambda: _read_write_on(fd, other, op)) == "EPERM"
    os.close(fd)
    os.close(other)


def _lseek_with_rule(path: Path, bits: int, offset: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    rule = SeccompRule("lseek").and_condition(Arg(1, bits=bits) == 5)

    class OnlyOffsetFive:
        name = "OnlyOffsetFive"

        def simple_rules(self) -> list[str]:
            return []

        def conditional_rules(self) -> dict[str, list[SeccompRule]]:
            return {"lseek": [rule]}

    SafetyContext().enable(OnlyOffsetFive()).apply_to_current_thread()
    os.lseek(fd, offset, os.SEEK_SET)


HIGH_BITS_PLUS_FIVE = (1 << 32) + 5


def test_64_bit_compare_sees_the_high_half(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    assert run_in_child(lambda: _lseek_with_rule(path, 64, 5)) == "ok"
    assert run_in_child(lambda: _lseek_with_rule(path, 64, HIGH_BITS_PLUS_FIVE)) == "EPERM"


def test_32_bit_compare_ignores_the_high_half(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    assert run_in_child(lambda: _lseek_with_rule(path, 32, HIGH_BITS_PLUS_FIVE)) == "ok"
    assert run_in_child(lambda: _lseek_with_rule(path, 32, 6)) == "EPERM"


def test_custom_errno_is_returned_for_denied_calls(tmp_path: Path) -> None:
    def body() -> None:
        SafetyContext().enable(SystemIO.nothing()).with_errno(errno.EMLINK).apply_to_current_thread()
        open(tmp_path / "x", "w")

    assert run_in_child(body) == "EMLINK"


def test_second_filter_only_narrows(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")

    def body() -> None:
        SafetyContext().enable(READ_ONLY).apply_to_current_thread()
        SafetyContext().enable(SystemIO.everything()).apply_to_current_thread()
        open(path).close()  # still allowed by both
        open(path, "a")  # allowed by the second, not the first

    assert run_in_child(body) == "EPERM"


def test_second_filter_can_take_away_what_the_first_allowed(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")

    def body() -> None:
        SafetyContext().enable(READ_ONLY).apply_to_current_thread()
        SafetyContext().enable(SystemIO.nothing()).apply_to_current_thread()
        open(path)

    assert run_in_child(body) == "EPERM"


def test_sleep_is_denied_without_allow_sleep() -> None:
    def body() -> None:
        SafetyContext().enable(SystemIO.nothing()).apply_to_current_thread()
        time.sleep(0.01)

    assert run_in_child(body) == "EPERM"


def test_sleep_works_with_allow_sleep() -> None:
    def body() -> None:
        ctx = SafetyContext().enable(Threads.nothing().allow_sleep().yes_really())
        ctx.apply_to_current_thread()
        time.sleep(0.01)

    assert run_in_child(body) == "ok"


def test_x32_syscall_numbers_kill_the_process() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    x32_getpid = 0x40000000 | 39

    def body() -> None:
        SafetyContext().enable(SystemIO.nothing()).apply_to_current_thread()
        libc.syscall(x32_getpid)

    assert run_in_child(body) == "SIGSYS"


def test_sealed_process_has_no_new_privs_and_filter_mode() -> None:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        SafetyContext().enable(SystemIO.nothing()).apply_to_current_thread()
        os.close(ready_w)  # close is in the base set: the parent sees EOF
        threading.Event().wait()
        os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b""
    status = Path(f"/proc/{pid}/status").read_text()
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert "NoNewPrivs:\t1" in status
    assert "Seccomp:\t2" in status
