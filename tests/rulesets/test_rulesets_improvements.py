"""Where our builtin RuleSets go beyond extrasafe's, each checked with real syscalls."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from childproc import run_in_child

from compartments import SafetyContext
from compartments.rulesets import Networking, SystemIO, Threads
from compartments.rulesets.threads import CLONE_THREAD

libc = ctypes.CDLL(None, use_errno=True)
SYS_OPENAT2 = 437
SYS_CLONE = 56
SYS_CLONE3 = 435
CLONE_NEWUSER = 0x10000000


def _raw_syscall(number: int, *args: int) -> None:
    if libc.syscall(number, *args) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _seal(ruleset: object) -> None:
    SafetyContext().enable(ruleset).apply_to_current_thread()  # type: ignore[arg-type]


READ_ONLY = SystemIO.nothing().allow_open_readonly()


def test_open_readonly_rejects_truncate(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("precious")

    def body() -> None:
        _seal(READ_ONLY)
        os.open(path, os.O_RDONLY | os.O_TRUNC)

    assert run_in_child(body) == "EPERM"
    assert path.read_text() == "precious"


def test_open_readonly_rejects_o_tmpfile(tmp_path: Path) -> None:
    def body() -> None:
        _seal(READ_ONLY)
        os.open(tmp_path, os.O_TMPFILE | os.O_RDONLY)

    assert run_in_child(body) == "EPERM"


def test_open_readonly_still_opens_directories(tmp_path: Path) -> None:
    def body() -> None:
        _seal(READ_ONLY)
        os.close(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))

    assert run_in_child(body) == "ok"


def test_open_readonly_answers_openat2_with_enosys(tmp_path: Path) -> None:
    def body() -> None:
        _seal(READ_ONLY)
        how = (ctypes.c_uint64 * 3)(os.O_RDONLY, 0, 0)
        _raw_syscall(SYS_OPENAT2, -100, str(tmp_path).encode(), ctypes.addressof(how), 24)

    assert run_in_child(body) == "ENOSYS"


EVERY_SOCKET_GRANT = (
    Networking.nothing()
    .allow_start_tcp_clients()
    .allow_start_tcp_servers().yes_really()
    .allow_start_udp_servers().yes_really()
    .allow_start_unix_servers().yes_really()
)
AF_ALG = 38


@pytest.mark.parametrize(
    ("family", "kind"),
    [
        (socket.AF_NETLINK, socket.SOCK_RAW),
        (socket.AF_NETLINK, socket.SOCK_DGRAM),
        (socket.AF_PACKET, socket.SOCK_RAW),
        (AF_ALG, socket.SOCK_SEQPACKET),
        (socket.AF_INET, socket.SOCK_RAW),
        (socket.AF_INET6, socket.SOCK_RAW),
        (socket.AF_UNIX, socket.SOCK_SEQPACKET),
    ],
    ids=["netlink-raw", "netlink-dgram", "packet", "alg", "raw-v4", "raw-v6", "unix-seqpacket"],
)
def test_no_builtin_grants_dangerous_socket_families(family: int, kind: int) -> None:
    def body() -> None:
        _seal(EVERY_SOCKET_GRANT)
        socket.socket(family, kind)

    assert run_in_child(body) == "EPERM"


def test_socket_domain_is_compared_exactly_not_masked() -> None:
    # extrasafe's mask for AF_INET (2) also matched AF_ALG (38 = 0b100110).
    def body() -> None:
        _seal(Networking.nothing().allow_start_tcp_clients())
        socket.socket(AF_ALG, socket.SOCK_STREAM)

    assert run_in_child(body) == "EPERM"


def test_socket_type_flags_are_ignored_by_the_type_check() -> None:
    def body() -> None:
        _seal(Networking.nothing().allow_start_tcp_clients())
        socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK).close()

    assert run_in_child(body) == "ok"


def test_unix_servers_may_make_socketpairs() -> None:
    def body() -> None:
        _seal(Networking.nothing().allow_start_unix_servers().yes_really())
        a, b = socket.socketpair()
        a.close()
        b.close()

    assert run_in_child(body) == "ok"


def test_running_clients_may_shut_down_and_close() -> None:
    a, b = socket.socketpair()

    def body() -> None:
        _seal(Networking.nothing().allow_running_tcp_clients())
        a.shutdown(socket.SHUT_RDWR)
        a.close()

    assert run_in_child(body) == "ok"
    b.close()


THREADS = Threads.nothing().allow_create()


def test_threaded_program_runs_under_allow_create() -> None:
    def body() -> None:
        _seal(THREADS)
        results: list[int] = []
        threads = [threading.Thread(target=results.append, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == list(range(8))

    assert run_in_child(body) == "ok"


def test_fork_is_denied_under_allow_create() -> None:
    def body() -> None:
        _seal(THREADS)
        if os.fork() == 0:
            os._exit(0)

    assert run_in_child(body) == "EPERM"


def test_clone3_answers_enosys_under_allow_create() -> None:
    def body() -> None:
        _seal(THREADS)
        _raw_syscall(SYS_CLONE3, 0, 0)

    assert run_in_child(body) == "ENOSYS"


def test_clone_with_a_new_namespace_flag_is_denied_even_with_clone_thread() -> None:
    # Without the filter the kernel would say EINVAL; EPERM proves the filter said no.
    def body() -> None:
        _seal(THREADS)
        _raw_syscall(SYS_CLONE, CLONE_THREAD | CLONE_NEWUSER, 0, 0, 0, 0)

    assert run_in_child(body) == "EPERM"


def test_clone_with_a_new_namespace_flag_control_without_filter() -> None:
    assert run_in_child(
        lambda: _raw_syscall(SYS_CLONE, CLONE_THREAD | CLONE_NEWUSER, 0, 0, 0, 0)
    ) == "EINVAL"


SEALED_INTERPRETER = textwrap.dedent(
    """
    import gc, sys
    import pyseccomp
    from compartments import SafetyContext
    from compartments.rulesets import SystemIO

    # A tripwire underneath: any syscall that takes a path kills the process.
    tripwire = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in ("open", "openat", "openat2", "stat", "lstat", "newfstatat", "statx",
                 "access", "faccessat", "faccessat2", "readlink", "readlinkat",
                 "getdents64", "execve", "unlink", "mkdir"):
        tripwire.add_rule(pyseccomp.KILL_PROCESS, name)
    tripwire.load()
    # No codecs preloaded at apply: that would open their files, under the tripwire.
    ctx = SafetyContext().preload(codecs="none")
    ctx.enable(SystemIO.nothing().allow_stdout()).apply_to_all_threads()

    blob = b""
    for _ in range(64):
        blob += b"x" * (1 << 20)          # grows by realloc: mremap
    table = {i: str(i) * 10 for i in range(100_000)}

    class Boom(Exception):
        pass

    def deep(n):
        if n == 0:
            raise Boom("bottom")
        return deep(n - 1)

    for _ in range(100):
        try:
            deep(50)
        except Boom as exc:
            caught = exc
    cycle = []
    cycle.append(cycle)
    del cycle
    collected = gc.collect()
    print(len(blob), len(table), type(caught).__name__, collected >= 1, flush=True)
    """
)


def test_sealed_cpython_computes_and_exits_cleanly_without_touching_a_path() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SEALED_INTERPRETER],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(64 << 20), "100000", "Boom", "True"]


def test_sealed_cpython_exit_status_survives_sys_exit() -> None:
    code = SEALED_INTERPRETER + "\nsys.exit(3)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 3, result.stderr



def test_a_sealed_process_may_pin_itself() -> None:
    def body() -> None:
        _seal(SystemIO.nothing())
        os.sched_setaffinity(0, os.sched_getaffinity(0))

    assert run_in_child(body) == "ok"


def test_a_sealed_process_may_not_pin_another_process() -> None:
    parent = os.getpid()

    def body() -> None:
        _seal(SystemIO.nothing())
        os.sched_setaffinity(parent, os.sched_getaffinity(parent))

    assert run_in_child(body) == "EPERM"
