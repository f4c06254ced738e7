"""What a builtin RuleSet's constructor means: ``ForkAndExec()`` is extrasafe's
ForkAndExec (fork, exec and wait); the builders' bare constructors, which would grant
nothing without a word, are refused by name.

The ForkAndExec compartments really fork and exec a program and wait for it, sealed.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from compartments import compartment
from compartments.rulesets import ForkAndExec, Networking, Pipes, SystemIO, Threads, Time

#: What a dynamically linked program needs to load under the compartment's filter (which
#: the exec keeps): the loader opens, reads and maps libc, and sets up its thread.
LOADER = [
    SystemIO.nothing().allow_open_readonly().allow_read().allow_metadata().allow_close(),
    "arch_prctl", "access", "set_tid_address", "prlimit64",
]  # fmt: skip
PIPES = Pipes.nothing().allow_pipe()  # subprocess's exec-error pipe


@compartment(rules=[ForkAndExec(), PIPES, *LOADER])
def run_true() -> int:
    return subprocess.run(["/bin/true"]).returncode


@compartment(rules=[ForkAndExec(), *LOADER])
def spawn_and_wait(program: str) -> int:
    pid = os.posix_spawn(program, [program], {})
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.timeout(60)
def test_fork_and_exec_lets_a_sealed_child_run_a_program_and_get_its_status() -> None:
    try:
        assert run_true() == 0
    finally:
        run_true.close()


@pytest.mark.timeout(60)
def test_fork_and_exec_lets_a_sealed_child_posix_spawn_and_waitpid() -> None:
    try:
        assert spawn_and_wait("/bin/false") == 1
    finally:
        spawn_and_wait.close()


def test_fork_and_exec_constructor_is_everything() -> None:
    assert ForkAndExec() == ForkAndExec.everything()
    assert ForkAndExec() == ForkAndExec.nothing().allow_fork().allow_exec()


@pytest.mark.parametrize("builder", [SystemIO, Networking, Pipes, Threads, Time])
def test_a_builder_rulesets_bare_constructor_names_nothing_and_everything(
    builder: type,
) -> None:
    with pytest.raises(TypeError) as refused:
        builder()
    message = str(refused.value)
    assert f"{builder.__name__}.nothing()" in message
    assert f"{builder.__name__}.everything()" in message


def test_systemio_bare_constructor_offers_everything() -> None:
    with pytest.raises(TypeError, match=r"SystemIO\.everything\(\) for all of it"):
        SystemIO()


@pytest.mark.parametrize("builder", [SystemIO, Networking, Pipes, Threads, Time, ForkAndExec])
def test_nothing_still_builds_an_empty_ruleset(builder: type) -> None:
    empty = builder.nothing()  # type: ignore[attr-defined]
    assert (list(empty.simple_rules()), dict(empty.conditional_rules())) == ([], {})
