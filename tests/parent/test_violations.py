"""Violation reports through seccomp user notification, learn mode, and the CLI."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from childproc import run_in_child
from learn_workload import workload

from compartments import SafetyContext, compartment
from compartments._parent._violations import ViolationLog
from compartments.errors import PolicyViolation
from compartments.rulesets import Networking, SystemIO

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@compartment(rules=[SystemIO.nothing()])
def open_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


@compartment(rules=[SystemIO.nothing()])
def open_for_writing(path: str) -> None:
    open(path, "wb").close()


@compartment(rules=[Networking.nothing()])
def make_socket(family: int, kind: int) -> None:
    socket.socket(family, kind).close()


@compartment(rules=[SystemIO.nothing()])
def raise_permission_error_itself() -> None:
    raise PermissionError(errno.EPERM, "the code said no, not the filter")


@compartment(rules=[SystemIO.nothing()])
def swallow_a_denial_then_fail(path: str) -> None:
    with contextlib.suppress(PermissionError):
        open(path)
    raise ValueError("unrelated")


@compartment(rules=[SystemIO.nothing()])
def swallow_a_denial(path: str) -> str:
    try:
        open(path)
    except PermissionError:
        return "swallowed"
    return "opened"


@compartment(learn=True)
def learn_workload(path: str, port: int) -> int:
    return workload(path, port)


@pytest.fixture
def local_server() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def test_denied_open_raises_policy_violation_naming_openat(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    with pytest.raises(PolicyViolation) as info:
        open_file(str(path))
    assert info.value.syscall == "openat"
    assert info.value.compartment == "open_file"
    assert str(path) in str(info.value)


def test_violation_suggests_the_builtin_that_would_allow_it(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    with pytest.raises(PolicyViolation) as info:
        open_file(str(path))
    assert "SystemIO.allow_open_readonly()" in info.value.suggestion


def test_write_open_is_not_suggested_the_read_only_rule(tmp_path: Path) -> None:
    with pytest.raises(PolicyViolation) as info:
        open_for_writing(str(tmp_path / "new"))
    assert "allow_open_readonly" not in info.value.suggestion
    assert "SystemIO.allow_open().yes_really()" in info.value.suggestion


def test_policy_violation_is_a_permission_error_with_the_remote_traceback(
    tmp_path: Path,
) -> None:
    with pytest.raises(PermissionError) as info:
        open_file(str(tmp_path / "f"))
    assert isinstance(info.value, PolicyViolation)
    assert info.value.errno == errno.EPERM
    assert "open_file" in str(info.value.__cause__)


def test_violation_arguments_are_the_raw_syscall_arguments(tmp_path: Path) -> None:
    with pytest.raises(PolicyViolation) as info:
        open_file(str(tmp_path / "f"))
    assert len(info.value.args) == 6
    assert info.value.args[2] & os.O_CLOEXEC


def test_socket_violation_reports_decoded_domain_and_type() -> None:
    with pytest.raises(PolicyViolation) as info:
        make_socket(socket.AF_INET6, socket.SOCK_DGRAM)
    assert info.value.syscall == "socket"
    assert "socket(AF_INET6, SOCK_DGRAM" in str(info.value)
    assert "Networking.allow_start_udp_servers().yes_really()" in info.value.suggestion


def test_netlink_socket_violation_says_no_builtin_allows_it() -> None:
    with pytest.raises(PolicyViolation) as info:
        make_socket(socket.AF_NETLINK, socket.SOCK_RAW)
    assert "AF_NETLINK, SOCK_RAW" in str(info.value)
    assert "never granted" in info.value.suggestion


def test_violation_is_logged_at_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="compartments"), pytest.raises(
        PolicyViolation
    ):
        open_file(str(tmp_path / "logged"))
    assert any(
        r.levelno == logging.WARNING and "logged" in r.getMessage() for r in caplog.records
    )


def test_a_swallowed_denial_is_logged_before_its_call_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The monitor records (and logs) before it answers the syscall: pytest files the
    warning under the test that caused it, not a later one."""
    with caplog.at_level(logging.WARNING, logger="compartments"):
        assert swallow_a_denial(str(tmp_path / "swallowed-path")) == "swallowed"
        logged = [r.getMessage() for r in caplog.records]
    assert any("swallowed-path" in message for message in logged), logged


def test_violations_are_recorded_on_the_compartment(tmp_path: Path) -> None:
    with pytest.raises(PolicyViolation):
        open_file(str(tmp_path / "recorded"))
    last = open_file.violations[-1]
    assert last.syscall == "openat" and last.path == str(tmp_path / "recorded")
    assert last.time > 0


def test_permission_error_raised_by_code_stays_a_permission_error() -> None:
    with pytest.raises(PermissionError) as info:
        raise_permission_error_itself()
    assert not isinstance(info.value, PolicyViolation)


def test_a_swallowed_denial_is_not_blamed_on_a_later_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        swallow_a_denial_then_fail(str(tmp_path / "f"))
    assert swallow_a_denial_then_fail.violations[-1].syscall == "openat"


def test_missing_user_notification_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    import compartments._parent._violations as violations

    violations._fallback_reported = False
    with caplog.at_level(logging.WARNING, logger="compartments"):
        for _ in range(3):
            ViolationLog("c", learn=False).on_notification("$listener", [None, "ENOSYS"])
    assert sum("user notification is unavailable" in r.getMessage() for r in caplog.records) == 1


# -- learn mode --------------------------------------------------------------------------


def _learned(tmp_path: Path, port: int) -> Any:
    path = tmp_path / "data"
    path.write_bytes(b"twelve bytes")
    assert learn_workload(str(path), port) == 12
    policy = learn_workload.learned_policy()
    learn_workload.close()
    return policy, path


def test_learn_mode_runs_the_workload_and_suggests_builtin_rulesets(
    tmp_path: Path, local_server: int
) -> None:
    policy, _ = _learned(tmp_path, local_server)
    assert "Networking.nothing()" in policy.code
    assert ".allow_start_tcp_clients()" in policy.code
    assert ".allow_sleep().yes_really()" in policy.code
    assert "# socket" in policy.code or "socket(AF_INET" in policy.code


def test_learned_policy_applied_for_real_runs_the_workload_without_violation(
    tmp_path: Path, local_server: int
) -> None:
    policy, path = _learned(tmp_path, local_server)

    def body() -> None:
        ctx = SafetyContext()
        for ruleset in policy.rulesets:
            ctx.enable(ruleset)
        ctx.apply_to_all_threads()
        assert workload(str(path), local_server) == 12

    assert run_in_child(body) == "ok"


def test_learned_policy_denies_what_the_workload_did_not_do(
    tmp_path: Path, local_server: int
) -> None:
    policy, _ = _learned(tmp_path, local_server)

    def body() -> None:
        ctx = SafetyContext()
        for ruleset in policy.rulesets:
            ctx.enable(ruleset)
        ctx.apply_to_all_threads()
        os.open(tmp_path / "not-in-the-workload", os.O_WRONLY | os.O_CREAT)

    assert run_in_child(body) == "EPERM"


def test_learned_policy_code_is_python_that_builds_the_rulesets(
    tmp_path: Path, local_server: int
) -> None:
    policy, _ = _learned(tmp_path, local_server)
    namespace: dict[str, Any] = {}
    exec(policy.code, namespace)
    assert namespace["rules"] == list(policy.rulesets)


def test_learn_mode_is_loudly_labelled_unsafe(
    tmp_path: Path, local_server: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="compartments"):
        _learned(tmp_path, local_server)
    assert any("LEARN MODE" in r.getMessage() and "UNSAFE" in r.getMessage()
               for r in caplog.records)  # fmt: skip


# -- the CLI ---------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    # This module (its compartments are inspected) imports childproc from tests/support.
    env = dict(os.environ, PYTHONPATH=f"{HERE}:{REPO / 'tests' / 'support'}:{REPO}")
    return subprocess.run(
        [sys.executable, "-m", "compartments", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=HERE,
    )  # fmt: skip


def test_cli_check_reports_each_feature_and_succeeds_here() -> None:
    result = _cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    for feature in ("seccomp", "TSYNC", "user notification", "Landlock (ABI",
                    "user namespaces", "libseccomp 2."):  # fmt: skip
        assert feature in result.stdout


def test_cli_inspect_prints_syscalls_conditions_and_rulesets() -> None:
    result = _cli("inspect", "test_violations:make_socket")
    assert result.returncode == 0, result.stderr
    assert "CompartmentRuntime" in result.stdout and "BasicCapabilities" in result.stdout
    assert "recvmsg" in result.stdout


def test_cli_inspect_exports_pfc() -> None:
    result = _cli("inspect", "test_violations:make_socket", "--pfc")
    assert "pseudo filter code" in result.stdout


def test_cli_learn_prints_a_policy(local_server: int, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("abc")
    result = _cli("learn", "learn_workload:workload", str(path), str(local_server))
    assert result.returncode == 0, result.stderr
    assert "returned 3" in result.stdout
    assert "rules = [" in result.stdout and "allow_start_tcp_clients" in result.stdout


@pytest.mark.parametrize("level", [[], ["check"], ["inspect"], ["learn"]])
def test_cli_help_is_useful_at_every_level(level: list[str]) -> None:
    result = _cli(*level, "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout and len(result.stdout.splitlines()) > 4
