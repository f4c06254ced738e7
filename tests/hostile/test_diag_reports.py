"""What the parent says about a compartment names the right thing at the right time: a
function's timeout names the function, a denial is logged before the call that hit it
returns, a name resolution's nscd probe is never advised a server grant, and a module's
top-level print is not written again by every child."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import diag_attacks as attacks
import pytest

from compartments._parent import _output
from compartments.errors import CallTimeout, CompartmentCrashed, PolicyViolation


@pytest.fixture(autouse=True)
def _close_all() -> Iterator[None]:
    yield
    for target in (attacks.spin, attacks.spin_named, attacks.resolve, attacks.prints,
                   attacks.prints_then_fails, attacks.quiet):  # fmt: skip
        target.close()


def _denials(caplog: pytest.LogCaptureFixture, what: str = "") -> list[str]:
    return [m for r in caplog.records if "was denied" in (m := r.getMessage()) and what in m]


# -- timeouts ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_function_compartments_timeout_names_the_function() -> None:
    with pytest.raises(CallTimeout) as info:
        attacks.spin()
    assert "__call__" not in str(info.value)
    assert "`spin`" in str(info.value)


@pytest.mark.timeout(60)
def test_a_named_function_compartments_timeout_names_it() -> None:
    with pytest.raises(CallTimeout) as info:
        attacks.spin_named()
    assert str(info.value) == "call to compartment `named_spinner` got no reply within 0.5s"


@pytest.mark.timeout(60)
def test_the_kill_after_a_function_timeout_does_not_name_call() -> None:
    with pytest.raises(CallTimeout):
        attacks.spin()
    with pytest.raises(CompartmentCrashed) as info:  # no restart policy: the next call
        attacks.spin()
    assert "__call__" not in str(info.value)


# -- when a denial is logged ---------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_print_without_a_grant_is_relayed_before_its_call_returns_and_denies_nothing(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.WARNING, "compartments")
    assert attacks.prints("hello") == "hello"
    assert _denials(caplog, "write(") == []
    _output.relay().flush(2.0)
    assert "[prints] hello" in capfd.readouterr().out


@pytest.mark.timeout(60)
def test_closing_a_compartment_that_printed_logs_no_denial(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "compartments")
    attacks.prints("hello")
    attacks.prints("again")
    attacks.prints.close()
    assert _denials(caplog, "write(") == []


@pytest.mark.timeout(60)
def test_a_call_that_printed_then_failed_names_what_failed() -> None:
    with pytest.raises(PolicyViolation) as info:
        attacks.prints_then_fails("/etc/hostname")
    assert info.value.syscall in ("open", "openat")


@pytest.mark.timeout(60)
def test_output_printed_during_setup_is_written_before_the_seal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "compartments")
    with attacks.PrintsInSetup() as setup:
        assert setup.answer() == 42
    assert _denials(caplog) == []


@pytest.mark.timeout(60)
def test_a_module_level_print_is_not_written_again_by_each_child(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "compartments")
    for _ in range(2):
        assert attacks.quiet() == 1
        attacks.quiet.close()
    assert _denials(caplog) == []


# -- resolving a name ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_resolving_localhost_never_advises_a_server_grant(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "compartments")
    assert attacks.resolve("localhost") == ["127.0.0.1"]
    for violation in attacks.resolve.violations:
        assert not any("servers" in code for code in violation.allowed_by), violation
        assert "allowed by" not in violation.suggestion, violation
