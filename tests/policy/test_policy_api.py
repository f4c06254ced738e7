"""The policy API itself: conflicts, validation, inspection. No filter is loaded here."""

from __future__ import annotations

import pytest

from compartments import Arg, RuleSet, SafetyContext, SeccompRule
from compartments._policy import _seccomp
from compartments._policy._seccomp import CompiledRule
from compartments.errors import (
    CompartmentsError,
    NoRulesEnabledError,
    RuleConflictError,
    UnknownSyscallError,
)
from compartments.rulesets import Networking, SystemIO, Threads


class JustWrite:
    name = "JustWrite"

    def simple_rules(self) -> list[str]:
        return ["write"]

    def conditional_rules(self) -> dict[str, list[SeccompRule]]:
        return {}


class ConditionalAndSimpleWrite:
    name = "Mixed"

    def simple_rules(self) -> list[str]:
        return ["write"]

    def conditional_rules(self) -> dict[str, list[SeccompRule]]:
        return {"write": [SeccompRule("write").and_condition(Arg(0) == 1)]}


EXPECTED_CONFLICT = (
    "A conditional rule on syscall `write` from RuleSet `SystemIO` would be overridden "
    "by a simple rule from RuleSet `JustWrite`."
)


def test_custom_ruleset_satisfies_the_protocol() -> None:
    assert isinstance(JustWrite(), RuleSet)


def test_conflict_simple_after_conditional_names_both_rulesets() -> None:
    ctx = SafetyContext().enable(SystemIO.nothing().allow_stdout())
    with pytest.raises(RuleConflictError) as info:
        ctx.enable(JustWrite())
    assert str(info.value) == EXPECTED_CONFLICT


def test_conflict_conditional_after_simple_names_both_rulesets() -> None:
    ctx = SafetyContext().enable(JustWrite())
    with pytest.raises(RuleConflictError) as info:
        ctx.enable(SystemIO.nothing().allow_stdout())
    assert str(info.value) == EXPECTED_CONFLICT


def test_conflict_inside_one_ruleset_is_detected() -> None:
    with pytest.raises(RuleConflictError, match="`write` from RuleSet `Mixed`"):
        SafetyContext().enable(ConditionalAndSimpleWrite())


def test_conflict_between_builtin_methods_of_one_ruleset() -> None:
    with pytest.raises(RuleConflictError, match="`write`"):
        SafetyContext().enable(SystemIO.nothing().allow_stdout().allow_write())


def test_conflict_error_is_a_value_error_and_a_compartments_error() -> None:
    ctx = SafetyContext().enable(JustWrite())
    with pytest.raises(RuleConflictError) as info:
        ctx.enable(SystemIO.nothing().allow_stdout())
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, CompartmentsError)


def test_enable_is_atomic_after_a_conflict() -> None:
    ctx = SafetyContext().enable(JustWrite())
    before = (ctx.describe(), ctx.enabled)
    half_good = SystemIO.nothing().allow_read().allow_stdout()  # read is fine, write clashes
    with pytest.raises(RuleConflictError):
        ctx.enable(half_good)
    assert (ctx.describe(), ctx.enabled) == before
    assert "read " not in ctx.describe()


def test_duplicate_simple_rules_are_accepted() -> None:
    ctx = SafetyContext().enable(SystemIO.nothing().allow_read())
    ctx.enable(SystemIO.nothing().allow_read()).enable("read")
    assert ctx.allowed_syscalls()["read"] == [("", "SystemIO")]


def test_several_conditional_rules_for_one_syscall_are_accepted() -> None:
    ctx = (
        SafetyContext()
        .enable(SystemIO.nothing().allow_stdout())
        .enable(SystemIO.nothing().allow_stderr())
    )
    conditions = [cond for cond, _ in ctx.allowed_syscalls()["write"]]
    assert len(conditions) == 2


def test_bare_syscall_name_works_as_a_ruleset() -> None:
    ctx = SafetyContext().enable("getppid")
    assert ctx.allowed_syscalls()["getppid"] == [("", "getppid")]


def test_unknown_syscall_name_is_named_in_the_error() -> None:
    with pytest.raises(UnknownSyscallError, match="`bogus_call`"):
        SafetyContext().enable("bogus_call")


def test_foreign_architecture_syscall_name_is_rejected() -> None:
    class Legacy:
        name = "Legacy"

        def simple_rules(self) -> list[str]:
            return ["stat64"]

        def conditional_rules(self) -> dict[str, list[SeccompRule]]:
            return {}

    with pytest.raises(UnknownSyscallError, match=r"`stat64` .*RuleSet `Legacy`"):
        SafetyContext().enable(Legacy())


def test_argument_index_outside_zero_to_five_is_rejected() -> None:
    with pytest.raises(ValueError, match="0 to 5, got 6"):
        Arg(6)
    with pytest.raises(ValueError, match="got -1"):
        Arg(-1)


def test_two_comparisons_on_one_argument_are_rejected_with_a_reason() -> None:
    with pytest.raises(ValueError, match="already compares arg0"):
        SeccompRule("write").and_condition(Arg(0) >= 1).and_condition(Arg(0) <= 2)


def test_non_ruleset_passed_to_enable_is_rejected_by_type() -> None:
    with pytest.raises(TypeError, match="got int"):
        SafetyContext().enable(42)  # type: ignore[arg-type]


def test_ruleset_class_instead_of_instance_gets_a_hint() -> None:
    with pytest.raises(TypeError, match=r"\.nothing\(\)"):
        SafetyContext().enable(SystemIO)  # type: ignore[arg-type]


def test_negative_fd_is_rejected_naming_the_method() -> None:
    with pytest.raises(ValueError, match="allow_file_read: fd must not be negative, got -3"):
        SystemIO.nothing().allow_file_read(-3)


def test_risky_method_must_be_confirmed_before_enabling() -> None:
    with pytest.raises(TypeError, match=r"allow_open\(\)\.yes_really\(\)"):
        SafetyContext().enable(SystemIO.nothing().allow_open())  # type: ignore[arg-type]


def test_risky_method_must_be_confirmed_before_chaining() -> None:
    with pytest.raises(AttributeError, match="yes_really"):
        SystemIO.nothing().allow_open().allow_stdout()  # type: ignore[attr-defined]


def test_confirmed_risky_method_grants_open() -> None:
    ctx = SafetyContext().enable(SystemIO.nothing().allow_open().yes_really())
    assert "openat" in ctx.allowed_syscalls()


def test_builder_methods_do_not_mutate_the_original() -> None:
    base = SystemIO.nothing()
    base.allow_read()
    assert base.simple_rules() == []


def test_applying_an_empty_context_raises_no_rules_enabled() -> None:
    with pytest.raises(NoRulesEnabledError, match="No rules were enabled"):
        SafetyContext().export_pfc()


def test_nothing_ruleset_makes_a_context_not_empty() -> None:
    pfc = SafetyContext().enable(SystemIO.nothing()).export_pfc()
    assert "exit_group" in pfc


def test_with_errno_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="1 to 4095"):
        SafetyContext().with_errno(0)


def test_describe_lists_syscall_condition_and_ruleset() -> None:
    text = SafetyContext().enable(SystemIO.nothing().allow_stdout()).describe()
    row = next(line for line in text.splitlines() if line.startswith("write"))
    assert "arg0" in row and "SystemIO" in row
    assert "everything else: EPERM" in text


def test_export_pfc_is_libseccomp_pseudo_filter_code() -> None:
    pfc = SafetyContext().enable(Networking.nothing().allow_start_tcp_clients()).export_pfc()
    assert "pseudo filter code" in pfc
    assert 'filter for syscall "socket"' in pfc
    assert "action KILL_PROCESS" in pfc  # foreign architectures die


def _pfc_of(syscalls: list[str]) -> str:
    rules = [CompiledRule(name, _seccomp.ALLOW) for name in syscalls]
    flt = _seccomp.build_filter(rules, default_action=_seccomp.errno_action(1), tsync=False)
    return _seccomp.export_pfc(flt)


def test_small_filter_keeps_the_linear_layout() -> None:
    assert "if ($syscall >" not in _pfc_of(["read", "write", "close"])


def test_large_filter_uses_the_binary_tree_layout() -> None:
    names = ["read", "write", "close", "fstat", "lseek", "mmap", "mprotect", "munmap", "brk",
             "rt_sigaction", "rt_sigprocmask", "ioctl", "pread64", "pwrite64", "readv",
             "writev", "access", "pipe"]
    assert len(names) >= _seccomp.BINARY_TREE_THRESHOLD
    assert "if ($syscall >" in _pfc_of(names)


def test_threads_answers_clone3_with_enosys_and_checks_clone_flags() -> None:
    table = SafetyContext().enable(Threads.nothing().allow_create()).allowed_syscalls()
    assert table["clone3"] == [("→ ENOSYS", "Threads")]
    assert "arg0 &" in table["clone"][0][0]


def test_errno_rule_and_allow_rule_for_one_syscall_conflict() -> None:
    allow_clone3 = SeccompRule("clone3")

    class AllowClone3:
        name = "AllowClone3"

        def simple_rules(self) -> list[str]:
            return []

        def conditional_rules(self) -> dict[str, list[SeccompRule]]:
            return {"clone3": [allow_clone3.and_condition(Arg(1) == 88)]}

    ctx = SafetyContext().enable(Threads.nothing().allow_create())
    with pytest.raises(RuleConflictError, match=r"`clone3`.*answers ENOSYS"):
        ctx.enable(AllowClone3())


def test_32_bit_ordering_comparisons_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="bits=32"):
        Arg(0, bits=32) < 5  # noqa: B015


def test_negative_values_compare_as_the_kernel_sees_them() -> None:
    cond = Arg(0) == -100  # AT_FDCWD, sign-extended by libc
    assert cond.comparison.datum_a == 0xFFFFFFFFFFFFFF9C


def test_runtime_channel_rules_yield_to_a_user_simple_rule() -> None:
    from compartments.rulesets import Networking
    from compartments.rulesets.runtime import ChannelRuntime

    ctx = SafetyContext().enable(Networking.nothing().allow_running_tcp_servers())
    ctx.enable_yielding(ChannelRuntime())
    assert ctx.allowed_syscalls()["sendto"] == [("", "Networking")]


def test_runtime_channel_rules_confine_channel_io_to_the_fd_block() -> None:
    from compartments.rulesets.runtime import ChannelRuntime

    ctx = SafetyContext().enable(SystemIO.nothing()).enable_yielding(ChannelRuntime())
    [(condition, source)] = ctx.allowed_syscalls()["recvmsg"]
    assert source == "CompartmentRuntime" and "0xffffffc0 == 0x40" in condition


def test_a_user_conditional_rule_on_a_runtime_syscall_is_ored_not_refused() -> None:
    from compartments.rulesets.runtime import ChannelRuntime

    class OwnSocket:
        name = "OwnSocket"

        def simple_rules(self) -> list[str]:
            return []

        def conditional_rules(self) -> dict[str, list[SeccompRule]]:
            return {"sendto": [SeccompRule("sendto").and_condition(Arg(0) == 5)]}

    ctx = SafetyContext().enable(OwnSocket()).enable_yielding(ChannelRuntime())
    assert {source for _, source in ctx.allowed_syscalls()["sendto"]} == {
        "OwnSocket", "CompartmentRuntime"
    }
