"""Landlock-backed RuleSet methods through SafetyContext, with real syscalls.

Each test seals a forked child (never the pytest process) and reads the outcome from its
exit status: "ok", or the errno name. EACCES is Landlock refusing a path or port; EPERM
would be the seccomp filter refusing the syscall itself.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from childproc import run_in_child

from compartments import SafetyContext
from compartments._policy import _landlock
from compartments._policy._landlock import PathRule, Scope
from compartments.errors import LandlockError, RuleConflictError, UnsupportedError
from compartments.rulesets import Networking, SystemIO

pytestmark = pytest.mark.skipif(_landlock.abi_version() < 6, reason="needs Landlock ABI 6")

# Denied syscalls answer this instead of EPERM, so Landlock's EPERM (signals) stands out.
FILTER_ERRNO = errno.EDOM


class Uploads(SystemIO):
    """A second path-granting RuleSet with its own name."""

    name = "Uploads"


def sealed(action: Callable[[], object], *rulesets: object, **landlock: object) -> str:
    """Enable ``rulesets``, apply in a child, run ``action`` there; return the outcome."""

    def body() -> None:
        context = SafetyContext().with_errno(FILTER_ERRNO)
        for ruleset in rulesets:
            context.enable(ruleset)  # type: ignore[arg-type]
        context.with_landlock(**landlock).apply_to_current_thread()  # type: ignore[arg-type]
        action()

    return run_in_child(body)


def expect(condition: bool) -> None:
    """An assert that survives ``python -O`` inside the child."""
    if not condition:
        raise AssertionError


# --- reading ---------------------------------------------------------------------


def test_read_path_allows_reading_beneath_it(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    read = lambda: expect((granted / "file").read_text() == "content")  # noqa: E731
    assert sealed(read, SystemIO.nothing().allow_read_path(granted)) == "ok"


def test_read_path_denies_reading_elsewhere(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    ruleset = SystemIO.nothing().allow_read_path(granted)
    assert sealed((other / "file").read_text, ruleset) == "EACCES"


def test_read_path_denies_writing_beneath_it(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_read_path(granted)
    assert sealed(lambda: open(granted / "file", "r+"), ruleset) == "EACCES"


def test_read_path_allows_listing_beneath_it(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_read_path(granted)
    assert sealed(lambda: expect(os.listdir(granted) == ["file"]), ruleset) == "ok"


# --- writing and truncating --------------------------------------------------------


def test_write_file_allows_writing_beneath_it(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_write_file(granted)
    assert sealed(lambda: (granted / "file").write_text("new"), ruleset) == "ok"
    assert (granted / "file").read_text() == "new"


def test_write_file_denies_writing_elsewhere(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    ruleset = SystemIO.nothing().allow_write_file(granted)
    assert sealed(lambda: (other / "file").write_text("new"), ruleset) == "EACCES"
    assert (other / "file").read_text() == "content"


def test_write_file_does_not_allow_reading(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_write_file(granted)
    assert sealed((granted / "file").read_text, ruleset) == "EACCES"


def test_write_file_does_not_allow_creating(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_write_file(granted)
    assert sealed(lambda: (granted / "new").write_text("x"), ruleset) == "EACCES"
    assert not (granted / "new").exists()


def test_write_file_allows_truncate(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_write_file(granted)
    assert sealed(lambda: os.truncate(granted / "file", 0), ruleset) == "ok"
    assert (granted / "file").read_text() == ""


def test_truncate_is_denied_without_the_write_right(dirs: tuple[Path, Path]) -> None:
    readable, writable = dirs
    ruleset = SystemIO.nothing().allow_read_path(readable).allow_write_file(writable)
    assert sealed(lambda: os.truncate(readable / "file", 0), ruleset) == "EACCES"
    assert (readable / "file").read_text() == "content"


# --- creating and removing ---------------------------------------------------------


def test_create_in_dir_allows_creating_and_filling_a_file(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_create_in_dir(granted)
    assert sealed(lambda: (granted / "new").write_text("hi"), ruleset) == "ok"
    assert (granted / "new").read_text() == "hi"


def test_create_in_dir_denies_creating_elsewhere(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    ruleset = SystemIO.nothing().allow_create_in_dir(granted)
    assert sealed(lambda: (other / "new").write_text("hi"), ruleset) == "EACCES"
    assert not (other / "new").exists()


def test_list_dir_allows_listing(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_list_dir(granted)
    assert sealed(lambda: expect(os.listdir(granted) == ["file"]), ruleset) == "ok"


def test_list_dir_does_not_allow_reading(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_list_dir(granted)
    assert sealed((granted / "file").read_text, ruleset) == "EACCES"


def test_list_dir_denies_listing_elsewhere(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    ruleset = SystemIO.nothing().allow_list_dir(granted)
    assert sealed(lambda: os.listdir(other), ruleset) == "EACCES"


def test_create_dir_allows_mkdir_beneath_it(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_create_dir(granted)
    assert sealed(lambda: os.mkdir(granted / "sub"), ruleset) == "ok"
    assert (granted / "sub").is_dir()


def test_create_dir_denies_mkdir_elsewhere(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    ruleset = SystemIO.nothing().allow_create_dir(granted)
    assert sealed(lambda: os.mkdir(other / "sub"), ruleset) == "EACCES"
    assert not (other / "sub").exists()


def test_remove_dir_allows_rmdir_beneath_it(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    (granted / "sub").mkdir()
    ruleset = SystemIO.nothing().allow_remove_dir(granted)
    assert sealed(lambda: os.rmdir(granted / "sub"), ruleset) == "ok"
    assert not (granted / "sub").exists()


def test_remove_dir_denies_rmdir_elsewhere(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    (other / "sub").mkdir()
    ruleset = SystemIO.nothing().allow_remove_dir(granted)
    assert sealed(lambda: os.rmdir(other / "sub"), ruleset) == "EACCES"
    assert (other / "sub").is_dir()


def test_remove_file_allows_unlink_beneath_it(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_remove_file(granted)
    assert sealed(lambda: os.unlink(granted / "file"), ruleset) == "ok"
    assert not (granted / "file").exists()


def test_remove_file_denies_unlink_elsewhere(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    ruleset = SystemIO.nothing().allow_remove_file(granted)
    assert sealed(lambda: os.unlink(other / "file"), ruleset) == "EACCES"
    assert (other / "file").exists()


def test_remove_file_does_not_allow_rmdir(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    (granted / "sub").mkdir()
    ruleset = SystemIO.nothing().allow_remove_file(granted)
    parent = os.open(granted, os.O_RDONLY | os.O_DIRECTORY)
    try:  # rmdir(dir_fd=) is unlinkat(AT_REMOVEDIR), which the filter lets through
        assert sealed(lambda: os.rmdir("sub", dir_fd=parent), ruleset) == "EACCES"
    finally:
        os.close(parent)
    assert (granted / "sub").is_dir()


# --- the well-known files ----------------------------------------------------------


def test_dns_files_allow_reading_etc_hosts() -> None:
    if not os.path.exists("/etc/hosts"):
        pytest.skip("no /etc/hosts")
    assert sealed(Path("/etc/hosts").read_bytes, SystemIO.nothing().allow_dns_files()) == "ok"


def test_dns_files_deny_reading_other_etc_files() -> None:
    ruleset = SystemIO.nothing().allow_dns_files()
    assert sealed(Path("/etc/passwd").read_bytes, ruleset) == "EACCES"


def test_ssl_files_allow_reading_the_ca_bundle() -> None:
    bundle = Path("/usr/lib/ssl/cert.pem")  # a symlink into /etc/ssl/certs on Debian
    if not bundle.exists():
        pytest.skip("no Debian-style CA bundle")
    assert sealed(bundle.read_bytes, SystemIO.nothing().allow_ssl_files()) == "ok"


# --- combining grants --------------------------------------------------------------


def test_several_grants_in_one_ruleset_combine(dirs: tuple[Path, Path]) -> None:
    readable, writable = dirs
    ruleset = SystemIO.nothing().allow_read_path(readable).allow_write_file(writable)

    def read_and_write() -> None:
        expect((readable / "file").read_text() == "content")
        (writable / "file").write_text("written")

    assert sealed(read_and_write, ruleset) == "ok"
    assert (writable / "file").read_text() == "written"


def test_two_grants_on_one_path_in_one_ruleset_merge(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_list_dir(granted).allow_remove_file(granted)
    assert sealed(lambda: os.unlink(granted / os.listdir(granted)[0]), ruleset) == "ok"


def test_grants_from_two_rulesets_combine(dirs: tuple[Path, Path]) -> None:
    readable, writable = dirs
    reader = SystemIO.nothing().allow_read_path(readable)
    writer = Uploads.nothing().allow_write_file(writable)

    def read_and_write() -> None:
        expect((readable / "file").read_text() == "content")
        (writable / "file").write_text("written")

    assert sealed(read_and_write, reader, writer) == "ok"


def test_same_path_in_two_rulesets_is_refused_naming_both(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    context = SafetyContext().enable(SystemIO.nothing().allow_read_path(granted))
    with pytest.raises(LandlockError) as caught:
        context.enable(Uploads.nothing().allow_write_file(granted))
    message = str(caught.value)
    assert str(granted) in message
    assert "`SystemIO`" in message
    assert "`Uploads`" in message


def test_same_path_in_two_enabled_systemio_is_refused(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    context = SafetyContext().enable(SystemIO.nothing().allow_read_path(granted))
    with pytest.raises(LandlockError, match="chain both grants on one SystemIO"):
        context.enable(SystemIO.nothing().allow_list_dir(granted))


def test_same_path_through_a_symlink_is_refused(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    alias = granted.parent / "alias"
    alias.symlink_to(granted)
    context = SafetyContext().enable(SystemIO.nothing().allow_read_path(granted))
    with pytest.raises(LandlockError, match="two RuleSets"):
        context.enable(Uploads.nothing().allow_read_path(alias))


def test_refused_duplicate_path_leaves_the_context_unchanged(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    context = SafetyContext().enable(SystemIO.nothing().allow_read_path(granted))
    with pytest.raises(LandlockError):
        context.enable(Uploads.nothing().allow_write_file(other).allow_read_path(granted))
    assert context.enabled == ("SystemIO",)
    assert "truncate" not in context.allowed_syscalls()


# --- missing paths -----------------------------------------------------------------


def test_missing_path_fails_at_apply_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    context = SafetyContext().enable(SystemIO.nothing().allow_read_path(missing))

    def body() -> None:
        try:
            context.apply_to_current_thread()
        except LandlockError as exc:
            expect(str(missing) in str(exc) and "SystemIO" in str(exc))
            raise

    assert run_in_child(body) == "ENOENT"


def test_missing_ok_skips_a_missing_path(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = (
        SystemIO.nothing()
        .allow_read_path(granted.parent / "nope", missing_ok=True)
        .allow_read_path(granted)
    )
    assert sealed((granted / "file").read_text, ruleset) == "ok"


def test_a_relative_path_is_made_absolute_when_granted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (rule,) = SystemIO.nothing().allow_read_path("data").landlock_rules()
    assert isinstance(rule, PathRule)
    assert rule.path == str(tmp_path / "data")


def test_a_bytes_path_is_refused() -> None:
    with pytest.raises(ValueError, match=r"SystemIO\.allow_read_path"):
        SystemIO.nothing().allow_read_path(b"/etc")  # type: ignore[arg-type]


# --- conflicts with argument-checked grants ----------------------------------------


def test_open_readonly_and_a_path_grant_conflict_on_openat(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    ruleset = SystemIO.nothing().allow_open_readonly().allow_read_path(granted)
    with pytest.raises(RuleConflictError) as caught:
        SafetyContext().enable(ruleset)
    assert caught.value.syscall in ("open", "openat")
    assert "allow_open_readonly()" in str(caught.value)


def test_conflict_across_rulesets_names_both(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    context = SafetyContext().enable(SystemIO.nothing().allow_open_readonly())
    with pytest.raises(RuleConflictError) as caught:
        context.enable(Uploads.nothing().allow_read_path(granted))
    message = str(caught.value)
    assert "`SystemIO`" in message
    assert "`Uploads` grants Landlock paths" in message


def test_stdout_and_a_write_grant_conflict_on_write(dirs: tuple[Path, Path]) -> None:
    granted, _ = dirs
    context = SafetyContext().enable(SystemIO.nothing().allow_write_file(granted))
    with pytest.raises(RuleConflictError, match=r"allow_stdout\(\)") as caught:
        context.enable(Uploads.nothing().allow_stdout())
    assert caught.value.syscall == "write"


# --- TCP ports ---------------------------------------------------------------------




def connect_to(port: int) -> Callable[[], None]:
    def connect() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.connect(("127.0.0.1", port))

    return connect


def bind_to(port: int) -> Callable[[], None]:
    def bind() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", port))

    return bind


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
    return port


def test_tcp_connect_port_allows_the_granted_port(listeners: tuple[int, int]) -> None:
    granted, _ = listeners
    ruleset = Networking.nothing().allow_tcp_connect_port(granted)
    assert sealed(connect_to(granted), ruleset) == "ok"


def test_tcp_connect_port_denies_another_port(listeners: tuple[int, int]) -> None:
    granted, other = listeners
    ruleset = Networking.nothing().allow_tcp_connect_port(granted)
    assert sealed(connect_to(other), ruleset) == "EACCES"


def test_tcp_bind_port_allows_the_granted_port() -> None:
    port = free_port()
    assert sealed(bind_to(port), Networking.nothing().allow_tcp_bind_port(port)) == "ok"


def test_tcp_bind_port_denies_another_port() -> None:
    granted, other = free_port(), free_port()
    ruleset = Networking.nothing().allow_tcp_bind_port(granted)
    assert sealed(bind_to(other), ruleset) == "EACCES"


def test_tcp_connect_port_does_not_allow_binding_it() -> None:
    port = free_port()
    ruleset = Networking.nothing().allow_tcp_connect_port(port).allow_start_tcp_servers()
    assert sealed(bind_to(port), ruleset.yes_really()) == "EACCES"


@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_port_out_of_range_is_refused_naming_it(port: int) -> None:
    with pytest.raises(ValueError, match=f"got {port}"):
        Networking.nothing().allow_tcp_connect_port(port)


def test_a_bool_port_is_refused() -> None:
    with pytest.raises(TypeError, match="allow_tcp_bind_port"):
        Networking.nothing().allow_tcp_bind_port(True)


# --- best effort -------------------------------------------------------------------


def test_a_right_the_kernel_lacks_fails_by_default(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    granted, _ = dirs
    monkeypatch.setattr(_landlock, "abi_version", lambda: 1)
    context = SafetyContext().enable(SystemIO.nothing().allow_write_file(granted))

    def body() -> None:
        try:
            context.apply_to_current_thread()
        except UnsupportedError as exc:
            expect("truncate" in str(exc) and "best_effort" in str(exc))
            return
        raise AssertionError("applied without truncate support")

    assert run_in_child(body) == "ok"


def test_best_effort_leaves_a_missing_right_unenforced(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    readable, writable = dirs
    monkeypatch.setattr(_landlock, "abi_version", lambda: 1)
    ruleset = SystemIO.nothing().allow_read_path(readable).allow_write_file(writable)
    truncate = lambda: os.truncate(readable / "file", 0)  # noqa: E731
    assert sealed(truncate, ruleset, best_effort=True) == "ok"


def test_best_effort_still_enforces_supported_rights(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    granted, other = dirs
    monkeypatch.setattr(_landlock, "abi_version", lambda: 1)
    ruleset = SystemIO.nothing().allow_write_file(granted).allow_read_path(granted)
    assert sealed((other / "file").read_text, ruleset, best_effort=True) == "EACCES"


def test_with_landlock_rejects_a_non_bool_best_effort() -> None:
    with pytest.raises(TypeError, match="best_effort"):
        SafetyContext().with_landlock(best_effort="yes")  # type: ignore[arg-type]


# --- scoping -----------------------------------------------------------------------




def test_scoped_context_cannot_signal_outside(sibling: subprocess.Popen[bytes]) -> None:
    assert sealed(lambda: os.kill(sibling.pid, 0), "kill", scoped=True) == "EPERM"


def test_unscoped_context_can_signal_outside(sibling: subprocess.Popen[bytes]) -> None:
    assert sealed(lambda: os.kill(sibling.pid, 0), "kill") == "ok"


@pytest.fixture
def abstract_connect() -> Iterator[Callable[[], None]]:
    """A listening abstract unix socket in the parent; yields a connect action."""
    name = f"\0compartments-rulesets-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(name)
        server.listen()

        def connect() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(name)

        yield connect


UNIX_CLIENT = Networking.nothing().allow_start_unix_servers().yes_really()


def test_scoped_context_cannot_reach_outside_abstract_sockets(
    abstract_connect: Callable[[], None],
) -> None:
    ruleset = UNIX_CLIENT.allow_connect().yes_really()
    assert sealed(abstract_connect, ruleset, scoped=True) == "EPERM"


def test_signal_scope_alone_leaves_abstract_sockets_reachable(
    abstract_connect: Callable[[], None],
) -> None:
    ruleset = UNIX_CLIENT.allow_connect().yes_really()
    assert sealed(abstract_connect, ruleset, scoped=Scope.SIGNAL) == "ok"


# --- threads -----------------------------------------------------------------------


def with_a_thread_running(body: Callable[[], None]) -> Callable[[], None]:
    """Run ``body`` while another Python thread is alive."""

    def wrapped() -> None:
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait)
        worker.start()
        try:
            body()
        finally:
            stop.set()

    return wrapped


def test_all_threads_refuses_landlock_while_threads_run(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    context = SafetyContext().enable(SystemIO.nothing().allow_read_path(granted))

    def body() -> None:
        try:
            context.apply_to_all_threads()
        except LandlockError as exc:
            expect("apply_to_current_thread" in str(exc))
            (other / "file").read_text()  # nothing was applied
            return
        raise AssertionError("applied with another thread running")

    assert run_in_child(with_a_thread_running(body)) == "ok"


def test_current_thread_applies_landlock_while_threads_run(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    context = SafetyContext().enable(SystemIO.nothing().allow_read_path(granted))

    def body() -> None:
        context.apply_to_current_thread()
        (other / "file").read_text()

    assert run_in_child(with_a_thread_running(body)) == "EACCES"


def test_all_threads_applies_landlock_in_a_single_thread(dirs: tuple[Path, Path]) -> None:
    granted, other = dirs
    context = SafetyContext().enable(SystemIO.nothing().allow_read_path(granted))

    def body() -> None:
        context.apply_to_all_threads()
        (other / "file").read_text()

    assert run_in_child(body) == "EACCES"
