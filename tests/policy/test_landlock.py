"""Landlock behaviours, each checked with real syscalls in a forked child.

The pytest process itself is never restricted: ``in_child`` forks, the child applies
the policy, does the work and reports through a pipe, then ``os._exit``s.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  (create_connection imports it lazily: not under Landlock)
import json
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from compartments._policy import _landlock
from compartments._policy._landlock import (
    CREATE_DIR,
    CREATE_IN_DIR,
    LIST_DIR,
    READ_FILE,
    READ_PATH,
    REMOVE_DIR,
    REMOVE_FILE,
    TCP_BIND,
    TCP_CONNECT,
    WRITE_FILE,
    LandlockPolicy,
    PathRule,
    PortRule,
    Scope,
)
from compartments._policy._landlock_abi import ACCESS_FS_READ_FILE, ACCESS_FS_WRITE_FILE
from compartments.errors import LandlockError, UnsupportedError

pytestmark = pytest.mark.skipif(_landlock.abi_version() < 6, reason="needs Landlock ABI 6")

Result = dict[str, object]


def in_child(work: Callable[[], object]) -> Result:
    """Run ``work`` in a forked child; return {"value": ...} or {"error": name, ...}."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_end)
            try:
                report: Result = {"value": work()}
            except BaseException as exc:
                report = {"error": type(exc).__name__, "errno": getattr(exc, "errno", None),
                          "message": str(exc)}
            os.write(write_end, json.dumps(report, default=repr).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    assert data, "child died without reporting"
    result: Result = json.loads(data)
    return result


def sandboxed(policy: LandlockPolicy, action: Callable[[], object], **apply: object) -> Result:
    """Apply ``policy`` in a child, then run ``action`` there."""

    def work() -> object:
        policy.apply(**apply)  # type: ignore[arg-type]
        return action()

    return in_child(work)


def denied(result: Result) -> bool:
    return result.get("error") == "PermissionError"


def policy_with(path: Path, access: int, ruleset: str = "SystemIO") -> LandlockPolicy:
    policy = LandlockPolicy()
    policy.add_path(path, access, ruleset)
    return policy


# --- reading ---------------------------------------------------------------------


def test_reading_a_file_under_the_granted_path_works(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    result = sandboxed(policy_with(granted, READ_PATH), (granted / "file").read_text)
    assert result == {"value": "content"}


def test_reading_a_file_outside_the_granted_path_is_denied(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    assert denied(sandboxed(policy_with(granted, READ_PATH), (other / "file").read_text))


def test_writing_under_a_read_only_grant_is_denied(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    result = sandboxed(policy_with(granted, READ_PATH),
                       lambda: (granted / "file").write_text("x"))
    assert denied(result)


# --- writing, creating, removing -------------------------------------------------


def test_writing_a_file_under_the_granted_path_works(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    result = sandboxed(policy_with(granted, WRITE_FILE),
                       lambda: (granted / "file").write_text("new"))
    assert result == {"value": 3}
    assert (granted / "file").read_text() == "new"


def test_writing_a_file_outside_the_granted_path_is_denied(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    result = sandboxed(policy_with(granted, WRITE_FILE),
                       lambda: (other / "file").write_text("new"))
    assert denied(result)
    assert (other / "file").read_text() == "content"


def test_create_in_dir_allows_creating_files_there(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    result = sandboxed(policy_with(granted, CREATE_IN_DIR | WRITE_FILE),
                       lambda: (granted / "new").write_text("hi"))
    assert result == {"value": 2}
    assert (granted / "new").read_text() == "hi"


def test_creating_a_file_without_create_in_dir_is_denied(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    result = sandboxed(policy_with(granted, WRITE_FILE),
                       lambda: (granted / "new").write_text("hi"))
    assert denied(result)
    assert not (granted / "new").exists()


def test_list_dir_allows_listing_but_not_reading(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    policy = policy_with(granted, LIST_DIR)
    assert sandboxed(policy, lambda: os.listdir(granted)) == {"value": ["file"]}
    assert denied(sandboxed(policy, (granted / "file").read_text))


def test_listing_a_directory_outside_the_grant_is_denied(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    assert denied(sandboxed(policy_with(granted, LIST_DIR), lambda: os.listdir(other)))


def test_create_dir_allows_mkdir_only_there(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    policy = policy_with(granted, CREATE_DIR)
    assert sandboxed(policy, lambda: os.mkdir(granted / "sub")) == {"value": None}
    assert denied(sandboxed(policy, lambda: os.mkdir(other / "sub")))
    assert (granted / "sub").is_dir()
    assert not (other / "sub").exists()


def test_remove_dir_allows_rmdir_only_there(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    (granted / "sub").mkdir()
    (other / "sub").mkdir()
    policy = policy_with(granted, REMOVE_DIR)
    assert sandboxed(policy, lambda: os.rmdir(granted / "sub")) == {"value": None}
    assert denied(sandboxed(policy, lambda: os.rmdir(other / "sub")))
    assert (other / "sub").is_dir()


def test_remove_file_allows_unlink_only_there(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    policy = policy_with(granted, REMOVE_FILE)
    assert sandboxed(policy, lambda: os.unlink(granted / "file")) == {"value": None}
    assert denied(sandboxed(policy, lambda: os.unlink(other / "file")))
    assert (other / "file").exists()


def test_truncate_is_denied_without_the_truncate_right(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    target = granted / "file"
    policy = policy_with(granted, ACCESS_FS_READ_FILE | ACCESS_FS_WRITE_FILE)
    assert denied(sandboxed(policy, lambda: os.truncate(target, 0)))
    assert denied(sandboxed(policy, lambda: os.close(os.open(target, os.O_RDWR | os.O_TRUNC))))
    assert sandboxed(policy, lambda: os.close(os.open(target, os.O_RDWR))) == {"value": None}
    assert target.read_text() == "content"


def test_write_file_group_includes_truncate(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    target = granted / "file"
    assert sandboxed(policy_with(granted, WRITE_FILE), lambda: os.truncate(target, 0)) == {
        "value": None
    }
    assert target.read_text() == ""


# --- combining rules -------------------------------------------------------------


def test_several_rules_of_one_ruleset_merge(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    policy = LandlockPolicy()
    policy.add_path(granted, LIST_DIR, "SystemIO")
    policy.add_path(granted, READ_FILE, "SystemIO")
    result = sandboxed(policy, lambda: [os.listdir(granted), (granted / "file").read_text()])
    assert result == {"value": [["file"], "content"]}


def test_rules_from_two_rulesets_on_different_paths_combine(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    policy = LandlockPolicy()
    policy.extend([PathRule(str(granted), READ_FILE, "Reader"),
                   PathRule(str(other), WRITE_FILE, "Writer")])
    result = sandboxed(policy, lambda: [(granted / "file").read_text(),
                                        (other / "file").write_text("w")])
    assert result == {"value": ["content", 1]}
    assert denied(sandboxed(policy, (other / "file").read_text))


def test_same_path_from_two_rulesets_is_an_error(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    policy = policy_with(granted, READ_FILE, "Reader")
    with pytest.raises(LandlockError) as caught:
        policy.add_path(granted, WRITE_FILE, "Writer")
    message = str(caught.value)
    assert str(granted) in message
    assert "`Reader`" in message
    assert "`Writer`" in message


def test_same_path_through_a_symlink_is_detected(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    alias = granted.parent / "alias"
    alias.symlink_to(granted)
    policy = policy_with(granted, READ_FILE, "Reader")
    with pytest.raises(LandlockError, match="two RuleSets"):
        policy.add_path(alias, READ_FILE, "Other")


def test_missing_path_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = sandboxed(policy_with(missing, READ_FILE), lambda: "applied")
    assert result["error"] == "LandlockError"
    assert str(missing) in str(result["message"])
    assert "SystemIO" in str(result["message"])


def test_missing_path_with_missing_ok_is_skipped(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    policy = policy_with(granted, READ_PATH)
    policy.add_path(granted.parent / "nope", READ_FILE, "SystemIO", missing_ok=True)
    assert sandboxed(policy, (granted / "file").read_text) == {"value": "content"}


def test_directory_rights_on_a_file_are_refused(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    result = sandboxed(policy_with(granted / "file", CREATE_DIR), lambda: "applied")
    assert result["error"] == "LandlockError"
    assert "non-directory" in str(result["message"])


def test_read_path_on_a_single_file_grants_that_file(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    result = sandboxed(policy_with(granted / "file", READ_PATH), (granted / "file").read_text)
    assert result == {"value": "content"}


def test_invalid_access_bits_are_rejected_early(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid filesystem access"):
        LandlockPolicy().add_path(tmp_path, 1 << 40, "SystemIO")


def test_an_empty_policy_applies_nothing() -> None:
    assert in_child(lambda: LandlockPolicy().apply()) == {"value": None}


# --- TCP ports -------------------------------------------------------------------




def connect_to(port: int) -> Callable[[], object]:
    def connect() -> object:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return "connected"

    return connect


def test_tcp_connect_to_the_granted_port_works(listeners: tuple[int, int]) -> None:
    granted, _ = listeners
    policy = LandlockPolicy()
    policy.add(PortRule(granted, TCP_CONNECT, "Networking"))
    assert sandboxed(policy, connect_to(granted)) == {"value": "connected"}


def test_tcp_connect_to_another_port_is_denied(listeners: tuple[int, int]) -> None:
    granted, other = listeners
    policy = LandlockPolicy()
    policy.add(PortRule(granted, TCP_CONNECT, "Networking"))
    assert denied(sandboxed(policy, connect_to(other)))


def free_ports(count: int) -> list[int]:
    probes = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    ports = [probe.getsockname()[1] for probe in probes]
    for probe in probes:
        probe.close()
    return ports


def bind_to(port: int) -> Callable[[], object]:
    def bind() -> object:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            return "bound"

    return bind


def test_tcp_bind_to_the_granted_port_works() -> None:
    (port,) = free_ports(1)
    policy = LandlockPolicy()
    policy.add_port(port, TCP_BIND, "Networking")
    assert sandboxed(policy, bind_to(port)) == {"value": "bound"}


def test_tcp_bind_to_another_port_is_denied() -> None:
    granted, other = free_ports(2)
    policy = LandlockPolicy()
    policy.add_port(granted, TCP_BIND, "Networking")
    assert denied(sandboxed(policy, bind_to(other)))


def test_a_connect_grant_does_not_allow_bind() -> None:
    (port,) = free_ports(1)
    policy = LandlockPolicy()
    policy.add_port(port, TCP_CONNECT, "Networking")
    assert denied(sandboxed(policy, bind_to(port)))


def test_path_rules_alone_leave_tcp_alone(dirs: tuple[Path, Path],
                                          listeners: tuple[int, int]) -> None:
    granted, _ = dirs
    port, _ = listeners
    assert sandboxed(policy_with(granted, READ_FILE), connect_to(port)) == {"value": "connected"}


# --- ABI negotiation -------------------------------------------------------------


def test_unsupported_right_raises_by_default(dirs: tuple[Path, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    granted, _ = dirs
    monkeypatch.setattr(_landlock, "abi_version", lambda: 1)
    result = sandboxed(policy_with(granted, WRITE_FILE), lambda: "applied")
    assert result["error"] == "UnsupportedError"
    message = str(result["message"])
    assert "truncate" in message
    assert "ABI 3" in message
    assert "ABI 1" in message


def test_unsupported_error_is_an_oserror() -> None:
    assert issubclass(UnsupportedError, OSError)


def test_best_effort_warns_and_degrades(dirs: tuple[Path, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    granted, other = dirs
    monkeypatch.setattr(_landlock, "abi_version", lambda: 1)
    policy = policy_with(granted, READ_FILE | WRITE_FILE)

    def work() -> object:
        messages: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("compartments").addHandler(handler)
        enforcement = policy.apply(best_effort=True)
        assert enforcement is not None
        os.truncate(granted / "file", 0)  # not enforced below ABI 3
        try:
            (other / "file").read_text()
        except PermissionError:
            return [messages, enforcement.dropped, "other denied"]
        return [messages, enforcement.dropped, "other readable"]

    result = in_child(work)
    value = result["value"]
    assert isinstance(value, list)
    messages, dropped, other_access = value
    assert dropped == ["truncate"]
    assert any("truncate" in message and "ABI 1" in message for message in messages)
    assert other_access == "other denied"


def test_best_effort_without_landlock_applies_nothing(dirs: tuple[Path, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    granted, other = dirs
    monkeypatch.setattr(_landlock, "abi_version", lambda: 0)
    policy = policy_with(granted, READ_FILE)
    result = sandboxed(policy, (other / "file").read_text, best_effort=True)
    assert result == {"value": "content"}


def test_port_rules_need_abi_4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_landlock, "abi_version", lambda: 3)
    policy = LandlockPolicy()
    policy.add_port(443, TCP_CONNECT, "Networking")
    result = sandboxed(policy, lambda: "applied")
    assert result["error"] == "UnsupportedError"
    assert "connect_tcp" in str(result["message"])


# --- scoping ---------------------------------------------------------------------




def kill(pid: int) -> Callable[[], object]:
    return lambda: os.kill(pid, signal.SIGTERM)


def test_scoped_signals_cannot_reach_outside_the_domain(
    sibling: subprocess.Popen[bytes],
) -> None:
    policy = LandlockPolicy()
    policy.add_scope(Scope.SIGNAL)
    assert denied(sandboxed(policy, kill(sibling.pid)))
    assert sibling.poll() is None


def test_unscoped_sandbox_can_signal_outside(
    sibling: subprocess.Popen[bytes], dirs: tuple[Path, Path]
) -> None:
    granted, _ = dirs
    assert sandboxed(policy_with(granted, READ_FILE), kill(sibling.pid)) == {"value": None}
    assert sibling.wait(timeout=5) == -signal.SIGTERM


def test_scoped_true_on_apply_cuts_signals(sibling: subprocess.Popen[bytes]) -> None:
    assert denied(sandboxed(LandlockPolicy(), kill(sibling.pid), scoped=True))


@pytest.fixture
def abstract_server() -> Iterator[str]:
    name = f"\0compartments-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    server.listen()
    try:
        yield name
    finally:
        server.close()


def connect_abstract(name: str) -> Callable[[], object]:
    def connect() -> object:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(name)
            return "connected"

    return connect


def test_scoped_abstract_unix_connect_is_denied(abstract_server: str) -> None:
    policy = LandlockPolicy(scoped=Scope.ABSTRACT_UNIX_SOCKET)
    assert denied(sandboxed(policy, connect_abstract(abstract_server)))


def test_unscoped_abstract_unix_connect_works(abstract_server: str,
                                              dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    result = sandboxed(policy_with(granted, READ_FILE), connect_abstract(abstract_server))
    assert result == {"value": "connected"}


def test_scoping_needs_abi_6(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_landlock, "abi_version", lambda: 5)
    result = sandboxed(LandlockPolicy(scoped=True), lambda: "applied")
    assert result["error"] == "UnsupportedError"
    assert "scope_" in str(result["message"])
