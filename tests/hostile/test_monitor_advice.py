"""Advice never widens the sandbox: what a violation report or learn mode suggests is no
more than the narrowest builtin that covers the call, and never a raw syscall that a
builtin covers with conditions. Followed in a sealed child, it cannot do more than the job.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import monitor_advice_attacks as attacks
import pytest

from compartments import control
from compartments._parent._advice import builtin_grants, grants_allowing, suggest
from compartments._parent._report import Violation
from compartments._policy import _seccomp
from compartments._policy._rules import SeccompRule
from compartments.errors import PolicyViolation

_RAW = re.compile(r'rules=\[\.\.\., "(\w+)"\]')


def advice_of(violation: Violation) -> list[list[str]]:
    """Each alternative the report offers, as the rules a user would add."""
    if violation.allowed_by:
        return [[code] for code in violation.allowed_by]
    raw = _RAW.search(violation.suggestion)
    return [[raw.group(1)]] if raw else [[]]


@pytest.fixture(autouse=True)
def _close_all() -> Iterator[None]:
    yield
    for target in (attacks.start_a_thread, attacks.read_a_file, attacks.read_a_file_with_openat2,
                   attacks.probe_nscd):  # fmt: skip
        target.close()


@pytest.mark.timeout(60)
def test_advice_for_starting_a_thread_cannot_clone3_into_a_new_user_namespace() -> None:
    assert "can't start new thread" in attacks.start_a_thread()
    violation = next(v for v in attacks.start_a_thread.violations if v.syscall == "clone3")
    for advice in advice_of(violation):
        with attacks.FollowsAdvice(advice) as followed:
            assert followed.clone3_into_a_new_user_namespace() < 0, advice
            assert followed.clone_into_a_new_user_namespace() == -errno.EPERM, advice


@pytest.mark.timeout(60)
def test_advice_for_a_read_only_open_cannot_open_for_writing(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.write_text("x")
    with pytest.raises(PolicyViolation):
        attacks.read_a_file(str(target))
    for advice in advice_of(attacks.read_a_file.violations[-1]):
        with attacks.FollowsAdvice(advice) as followed:
            assert followed.open_for_writing(str(tmp_path / "written")) < 0, advice
    assert not (tmp_path / "written").exists()


@pytest.mark.timeout(60)
def test_advice_for_a_read_only_openat2_cannot_openat2_for_writing(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.write_text("x")
    assert attacks.read_a_file_with_openat2(str(target)) == -errno.EPERM
    violation = attacks.read_a_file_with_openat2.violations[-1]
    assert violation.syscall == "openat2"
    for advice in advice_of(violation):
        with attacks.FollowsAdvice(advice) as followed:
            assert followed.openat2_for_writing(str(tmp_path / "written")) < 0, advice
    assert not (tmp_path / "written").exists()


@pytest.mark.timeout(60)
def test_advice_for_an_nscd_client_probe_cannot_serve_on_a_unix_socket() -> None:
    with pytest.raises(PolicyViolation) as info:
        attacks.probe_nscd()
    assert "allowed by" not in info.value.suggestion
    for advice in advice_of(attacks.probe_nscd.violations[-1]):
        with attacks.FollowsAdvice(advice) as followed:
            assert followed.serve_on_a_unix_socket() < 0, advice


# -- every builtin conditional rule ------------------------------------------------------


def _conditional_rules() -> list[tuple[str, SeccompRule]]:
    found = {}
    for grant in builtin_grants():
        for rule in grant.conditional:
            found.setdefault((rule.syscall, rule.conditions, rule.errno), (grant.code, rule))
    return list(found.values())


RULES = _conditional_rules()
IDS = [f"{code}:{rule.syscall}:{rule.describe()}" for code, rule in RULES]


def _satisfying(rule: SeccompRule) -> list[int]:
    args = [0] * 6
    for condition in rule.conditions:
        c = condition.comparison
        ops = _seccomp.OPERATORS
        args[c.index] = {
            ops["=="]: c.datum_a, ops["<="]: c.datum_a, ops[">="]: c.datum_a,
            ops["!="]: c.datum_a ^ 1, ops["<"]: c.datum_a - 1, ops[">"]: c.datum_a + 1,
            ops["&=="]: c.datum_b,
        }[c.op]  # fmt: skip
    return args


def _breaking(rule: SeccompRule) -> list[int]:
    args = _satisfying(rule)
    c = rule.conditions[0].comparison
    ops = _seccomp.OPERATORS
    if c.op == ops["&=="]:
        args[c.index] = c.datum_b ^ (c.datum_a & -c.datum_a)  # flip the mask's lowest bit
    elif c.op in (ops["=="], ops["<="], ops["<"]):
        args[c.index] = c.datum_a + 1
    elif c.op in (ops[">="], ops[">"]):
        args[c.index] = c.datum_a - 1
    else:
        args[c.index] = c.datum_a
    return args


def test_every_builtin_conditional_rule_is_covered_by_the_test() -> None:
    syscalls = {rule.syscall for _, rule in RULES}
    assert {"clone", "clone3", "openat", "openat2", "socket", "fcntl", "ioctl"} <= syscalls
    assert any(rule.errno is not None for _, rule in RULES)


@pytest.mark.parametrize(("code", "rule"), RULES, ids=IDS)
def test_a_call_a_conditional_rule_covers_is_advised_a_builtin_that_covers_it(
    code: str, rule: SeccompRule
) -> None:
    args = _satisfying(rule)
    text, _ = suggest(rule.syscall, args, None)
    covering = {g.code for g in builtin_grants() if g.covers(rule.syscall, args)}
    assert code in covering
    assert any(c in text for c in covering), text
    assert f'"{rule.syscall}"' not in text  # never the raw syscall


@pytest.mark.parametrize(("code", "rule"), RULES, ids=IDS)
def test_no_advised_grant_allows_a_conditionally_covered_syscall_outright(
    code: str, rule: SeccompRule
) -> None:
    advised = grants_allowing(rule.syscall, _satisfying(rule))
    assert advised
    assert all(rule.syscall not in g.simple for g in advised), [g.code for g in advised]


@pytest.mark.parametrize(
    ("code", "rule"),
    [(code, rule) for code, rule in RULES if rule.conditions],
    ids=[i for i, (_, rule) in zip(IDS, RULES, strict=True) if rule.conditions],
)
def test_a_call_breaking_a_builtin_condition_gets_no_raw_advice(
    code: str, rule: SeccompRule
) -> None:
    text, _ = suggest(rule.syscall, _breaking(rule), None)
    assert f'"{rule.syscall}"' not in text
    assert "enable it by name" not in text


def test_clone3_is_advised_the_thread_grant_that_answers_it_enosys() -> None:
    text, codes = suggest("clone3", [0] * 6, None)
    assert codes == ("Threads.allow_create()",)
    assert "ENOSYS" in text


def test_the_nscd_probe_is_never_advised_a_server_grant() -> None:
    flags = 1 | os.O_CLOEXEC | os.O_NONBLOCK  # SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK
    _, codes = suggest("socket", [1, flags, 0, 0, 0, 0], None)
    assert not any("servers" in c for c in codes)


@pytest.mark.timeout(60)
def test_advice_for_a_shared_file_mapping_names_that_fd_never_raw_mmap(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.write_bytes(b"x" * 4096)
    with attacks.MapsAFileShared(str(target)) as mapper:
        assert mapper.map_shared() == errno.EPERM
        violation = next(v for v in control(mapper).violations if v.syscall == "mmap")
        fd = mapper.fd()
    assert f"allow_shared_mapping({fd})" in violation.suggestion
    assert _RAW.search(violation.suggestion) is None
    assert violation.allowed_by == ()
    with attacks.MapsAFileShared(str(target), shared_grant=True) as followed:
        assert followed.map_shared() == 0  # the advice, followed, grants that fd and no more


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["getrlimit", "nice", "sched_getscheduler", "dup2"])
def test_advice_never_names_a_syscall_that_reaches_other_processes(what: str) -> None:
    """Followed, raw prlimit64 let a compartment set the parent's CPU limit and kill it."""
    try:
        with pytest.raises(PolicyViolation) as info:
            attacks.acts_on_itself(what)
        violation = attacks.acts_on_itself.violations[-1]
    finally:
        attacks.acts_on_itself.close()
    assert _RAW.search(info.value.suggestion) is None, info.value.suggestion
    assert violation.allowed_by == (), violation.suggestion
    assert "act on other processes" in violation.suggestion


@pytest.mark.timeout(60)
def test_allow_fork_makes_processes_but_never_a_new_user_namespace() -> None:
    """clone was unconditional under allow_fork, and advised for clone(CLONE_NEWUSER)."""
    with attacks.FollowsAdvice(["ForkAndExec.allow_fork()"]) as forker:
        assert forker.fork_plainly() > 0
        assert forker.clone_into_a_new_user_namespace() == -errno.EPERM
        assert forker.clone3_into_a_new_user_namespace() < 0


def test_a_denied_clone_into_a_user_namespace_is_not_advised_allow_fork() -> None:
    text, codes = suggest("clone", [attacks.CLONE_NEWUSER | attacks.SIGCHLD, 0, 0, 0, 0, 0], None)
    assert codes == () and "conditions this call does not meet" in text
    assert _RAW.search(text) is None
