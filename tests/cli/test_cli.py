"""``python -m compartments``: inspect, rulesets and learn, run as a user runs them."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from compartments import rulesets

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _cli(*args: str, cwd: Path = HERE, **streams: Any) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=f"{HERE}:{REPO}")
    streams = streams or {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.run(
        [sys.executable, "-m", "compartments", *args],
        text=True, timeout=90, env=env, cwd=cwd, **streams,
    )  # fmt: skip


def _rows(text: str, syscall: str) -> list[str]:
    return [line for line in text.splitlines() if line.split()[:1] == [syscall]]


def _json(*args: str) -> Any:
    result = _cli(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- inspect: Landlock --------------------------------------------------------------------


def test_inspect_lists_landlock_paths_with_their_rights() -> None:
    result = _cli("inspect", "cli_targets:reads_hostname")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("/etc/hostname"))
    assert row.split()[1:] == ["read_file,", "read_dir", "SystemIO"]


def test_inspect_lists_landlock_ports_with_their_rights() -> None:
    result = _cli("inspect", "cli_targets:connects")
    assert result.returncode == 0, result.stderr
    assert "Landlock TCP ports" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("8080 "))
    assert row.split() == ["8080", "connect_tcp", "Networking"]


def test_inspect_says_when_landlock_is_not_used() -> None:
    result = _cli("inspect", "cli_targets:locks")
    assert "Landlock: not used" in result.stdout


# -- inspect: decoded conditions -----------------------------------------------------------


def test_inspect_decodes_an_fcntl_command() -> None:
    result = _cli("inspect", "cli_targets:locks")
    assert result.returncode == 0, result.stderr
    row = next(line for line in _rows(result.stdout, "fcntl") if line.endswith("Locking"))
    assert row.split()[1:] == ["fcntl(fd,", "F_SETLK)", "Locking"]


def test_inspect_decodes_the_mmap_type_of_the_base_set() -> None:
    rows = _rows(_cli("inspect", "cli_targets:locks").stdout, "mmap")
    assert any("flags & MAP_TYPE == MAP_PRIVATE" in row for row in rows), rows


def test_inspect_decodes_socket_family_and_type() -> None:
    rows = _rows(_cli("inspect", "cli_targets:connects").stdout, "socket")
    assert any("socket(AF_INET, type & ~(SOCK_NONBLOCK|SOCK_CLOEXEC) == SOCK_STREAM, "
               "IPPROTO_TCP)" in row for row in rows), rows  # fmt: skip


def test_inspect_shows_an_fd_block_as_a_range() -> None:
    rows = _rows(_cli("inspect", "cli_targets:locks").stdout, "recvmsg")
    assert rows and "recvmsg(fd in 64..127)" in rows[0]


def test_inspect_escapes_control_characters_in_ruleset_names() -> None:
    result = _cli("inspect", "cli_targets:escapes")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "Evil\\x1b]0;pwned\\x07" in result.stdout


# -- inspect --json -----------------------------------------------------------------------


def test_inspect_json_gives_each_syscall_its_conditions_and_ruleset() -> None:
    data = _json("inspect", "cli_targets:locks", "--json")
    mine = [row for row in data["syscalls"] if row["ruleset"] == "Locking"]
    assert mine == [{
        "syscall": "fcntl", "ruleset": "Locking", "allowed_when": "fcntl(fd, F_SETLK)",
        "errno": None,
        "conditions": [{"arg": 1, "name": "cmd", "op": "&==", "mask": 0xFFFFFFFF,
                        "value": 6, "text": "F_SETLK"}],
    }]  # fmt: skip
    assert data["rulesets"] == ["Locking"] and data["otherwise"] == "EPERM"


def test_inspect_json_gives_landlock_paths_ports_and_scope() -> None:
    paths = _json("inspect", "cli_targets:reads_hostname", "--json")["landlock"]
    assert {"path": "/etc/hostname", "rights": ["read_file", "read_dir"],
            "ruleset": "SystemIO", "missing_ok": False} in paths["paths"]  # fmt: skip
    ports = _json("inspect", "cli_targets:connects", "--json")["landlock"]
    assert ports["ports"] == [{"port": 8080, "rights": ["connect_tcp"], "ruleset": "Networking"}]
    assert ports["scope"] == []


# -- inspect: callable rules= ---------------------------------------------------------------


def test_inspect_resolves_a_callable_rules_from_the_setup_it_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("x")
    result = _cli("inspect", "cli_targets:KeepsFile", str(data))
    assert result.returncode == 0, result.stderr
    granted = [row.split()[1] for row in _rows(result.stdout, "read") if row.endswith("SystemIO")]
    assert len(granted) == 1 and re.fullmatch(r"read\(\d+\)", granted[0]), granted


def test_inspect_runs_the_setup_of_a_callable_rules_in_another_process(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.write_text("x")
    process = subprocess.Popen(
        [sys.executable, "-m", "compartments", "inspect", "cli_targets:KeepsFile", str(data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=HERE,
        env=dict(os.environ, PYTHONPATH=f"{HERE}:{REPO}"),
    )  # fmt: skip
    _, stderr = process.communicate(timeout=90)
    assert process.returncode == 0, stderr
    assert int((tmp_path / "data.setup-pid").read_text()) != process.pid


def test_inspect_of_a_callable_rules_without_its_arguments_says_what_to_give() -> None:
    line = _one_error_line(_cli("inspect", "cli_targets:KeepsFile"))
    assert "computes its rules= after setup" in line
    assert "missing 1 required positional argument: 'path'" in line
    assert "give the class's constructor arguments after the target" in line


@pytest.mark.parametrize(
    ("target", "args"),
    [
        ("examples.ipc_db_server.webserver:WebServer", []),
        ("examples.ipc_db_server.database:Database", ["{tmp}"]),
        ("examples.ipc_db_server.client:WriteClient", ["127.0.0.1", "8080"]),
        ("examples.ipc_db_server.client:ReadClient", ["127.0.0.1", "8080"]),
    ],
)
def test_inspect_resolves_every_compartment_of_the_example(
    target: str, args: list[str], tmp_path: Path
) -> None:
    result = _cli("inspect", target, *(a.format(tmp=tmp_path) for a in args), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"compartment `{target.rpartition(':')[2]}`")


# -- rulesets -------------------------------------------------------------------------------


def _builtin_methods() -> list[str]:
    found = []
    for cls in (rulesets.SystemIO, rulesets.Networking, rulesets.Pipes, rulesets.Time,
                rulesets.Threads, rulesets.ForkAndExec):  # fmt: skip
        for name, _ in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("allow_"):
                found.append(f"{cls.__name__}.{name}(")
    return found


def test_rulesets_lists_every_builtin_method() -> None:
    result = _cli("rulesets")
    assert result.returncode == 0, result.stderr
    headers = [line for line in result.stdout.splitlines() if line and not line[0].isspace()]
    for method in _builtin_methods():
        assert any(line.startswith(method) for line in headers), method
    assert any(line.startswith("BasicCapabilities") for line in headers)


def test_rulesets_shows_the_conditions_a_method_adds() -> None:
    result = _cli("rulesets", "SystemIO.allow_file_read")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "SystemIO.allow_file_read(file)"
    assert "read(file)" in result.stdout and "lseek(file)" in result.stdout


def test_rulesets_shows_the_landlock_rights_a_path_method_adds() -> None:
    result = _cli("rulesets", "SystemIO.allow_read_path")
    assert "Landlock  <path>: read_file, read_dir" in result.stdout


def test_rulesets_marks_a_risky_method_with_yes_really() -> None:
    result = _cli("rulesets", "Networking.allow_start_tcp_servers")
    assert result.stdout.splitlines()[0] == "Networking.allow_start_tcp_servers().yes_really()"


def test_rulesets_json_lists_each_method_with_its_syscalls() -> None:
    entries = _json("rulesets", "Time", "--json")
    assert [entry["call"] for entry in entries] == ["Time.allow_gettime()"]
    assert {"syscall": "clock_gettime", "allowed_when": "always", "conditions": []} in (
        entries[0]["syscalls"]
    )


# -- learn ----------------------------------------------------------------------------------


def test_learn_prints_the_policy_when_the_function_raises(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("abc")
    result = _cli("learn", "cli_targets:opens_then_fails", str(path))
    assert result.returncode == 1
    assert "raised ValueError: failed after reading" in result.stdout
    assert "rules = [" in result.stdout and "allow_open_readonly()" in result.stdout
    assert "Traceback" not in result.stderr


def test_learn_with_nothing_to_add_says_so() -> None:
    result = _cli("learn", "cli_targets:computes", "3")
    assert result.returncode == 0, result.stderr
    assert "returned 6" in result.stdout
    assert "no syscall beyond the base set" in result.stdout
    assert "rules = [" not in result.stdout and "import" not in result.stdout


def _data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.write_text("hello\n")
    return path


def test_learn_runs_a_module_with_every_compartment_learning(tmp_path: Path) -> None:
    result = _cli("learn", "-m", "cli_program", str(_data_file(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "first line: hello\n"
    assert "# learned policy for compartment `first_line`:" in result.stderr
    assert ".allow_open_readonly()" in result.stderr


def test_learn_runs_a_script_with_its_arguments(tmp_path: Path) -> None:
    result = _cli("learn", str(HERE / "cli_program.py"), str(_data_file(tmp_path)), "3")
    assert result.returncode == 3, result.stderr
    assert result.stdout == "first line: hello\n"
    assert ".allow_open_readonly()" in result.stderr


# -- bad targets, broken pipes ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "learn"])
def test_a_module_that_does_not_exist_is_one_line(command: str) -> None:
    line = _one_error_line(_cli(command, "nosuchmodule:f"))
    assert "cannot import 'nosuchmodule'" in line


@pytest.mark.parametrize("command", ["inspect", "learn"])
def test_a_name_the_module_lacks_is_one_line(command: str) -> None:
    line = _one_error_line(_cli(command, "cli_targets:nosuch"))
    assert "'cli_targets' has no attribute 'nosuch'" in line


def test_a_module_to_run_that_does_not_exist_is_one_line() -> None:
    line = _one_error_line(_cli("learn", "-m", "nosuchmodule"))
    assert "cannot run 'nosuchmodule'" in line


def test_an_unknown_ruleset_is_one_line() -> None:
    line = _one_error_line(_cli("rulesets", "NoSuchRuleSet"))
    assert "NoSuchRuleSet" in line


@pytest.mark.parametrize("command", [["rulesets"], ["inspect", "cli_targets:locks"]])
def test_a_broken_pipe_is_one_line(command: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head -1` does once it has its line
    try:
        result = _cli(*command, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert _one_error_line(result).endswith("broken pipe)")
