"""One exception tree, rooted in :class:`CompartmentsError`.

Each class also subclasses the builtin that a generic handler would reach for, so
``except PermissionError`` or ``except TimeoutError`` keeps working.
"""

from __future__ import annotations

from ._text import printable, printable_lines

__all__ = [
    "BootstrapError",
    "CallTimeout",
    "CompartmentClosed",
    "CompartmentCrashed",
    "CompartmentsError",
    "LandlockError",
    "NoRulesEnabledError",
    "PolicyViolation",
    "ProtocolError",
    "RemoteError",
    "RuleConflictError",
    "UnknownSyscallError",
    "UnsupportedError",
]


class CompartmentsError(Exception):
    """Base of every error this library raises on purpose."""


class RuleConflictError(CompartmentsError, ValueError):
    """A simple rule would silently override a conditional one for the same syscall."""

    def __init__(
        self, syscall: str, conditional_from: str, simple_from: str, message: str = ""
    ) -> None:
        self.syscall = syscall
        self.conditional_from = conditional_from
        self.simple_from = simple_from
        super().__init__(
            message
            or f"A conditional rule on syscall `{syscall}` from RuleSet `{conditional_from}` "
            f"would be overridden by a simple rule from RuleSet `{simple_from}`."
        )


class NoRulesEnabledError(CompartmentsError, ValueError):
    """A SafetyContext was applied before any RuleSet was enabled."""

    def __init__(self) -> None:
        super().__init__(
            "No rules were enabled: enable at least one RuleSet "
            "(SystemIO.nothing() seals to the base set: pure computation, no I/O)."
        )


class UnknownSyscallError(CompartmentsError, ValueError):
    """A RuleSet names a syscall this architecture does not have."""

    def __init__(self, syscall: str, ruleset: str | None = None) -> None:
        self.syscall = syscall
        self.ruleset = ruleset
        where = f" (from RuleSet `{ruleset}`)" if ruleset else ""
        super().__init__(f"Unknown syscall `{syscall}` on this architecture{where}")


class UnsupportedError(CompartmentsError, OSError):
    """The running kernel or libseccomp lacks a feature the policy needs."""


class LandlockError(CompartmentsError, OSError):
    """Landlock refused a ruleset, a rule or restrict_self."""


class PolicyViolation(CompartmentsError, PermissionError):
    """A sealed compartment made a syscall its policy does not allow."""

    def __init__(
        self,
        syscall: str,
        args: tuple[int, ...] | list[int] = (),
        compartment: str = "",
        suggestion: str = "",
        decoded: str = "",
    ) -> None:
        self.syscall = syscall
        self.compartment = compartment
        self.suggestion = suggestion
        self.decoded = decoded
        # `decoded` quotes what the compartment passed (a path from its memory).
        call = printable(decoded) if decoded else f"syscall `{printable(syscall)}`"
        text = f"compartment `{printable(compartment)}` was denied {call}" + (
            f"; {printable(suggestion)}" if suggestion else ""
        )
        PermissionError.__init__(self, 1, text)
        # `.args` names the syscall's arguments here, as the violation report promises.
        self.args = tuple(args)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (self.syscall, self.args, self.compartment, self.suggestion, self.decoded),
        )


class ProtocolError(CompartmentsError, ConnectionError):
    """A compartment sent a frame that is malformed, oversized or out of protocol.

    The compartment is closed; the parent carries on. The message may quote what it
    sent, so it is kept escaped.
    """

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


class CompartmentCrashed(CompartmentsError, ChildProcessError):
    """The compartment's process died while calls were in flight or being made."""

    def __init__(self, compartment: str, reason: str) -> None:
        self.compartment = compartment
        self.reason = printable(reason)
        super().__init__(f"compartment `{printable(compartment)}` crashed: {self.reason}")


class BootstrapError(CompartmentsError, RuntimeError):
    """A compartment was started while its own module was being imported to fork it:
    a script that calls compartments outside its ``if __name__ == "__main__":`` guard."""


class CompartmentClosed(CompartmentsError, RuntimeError):
    """A call was made on a compartment after it was closed."""


def _describe_call(compartment: str, method: str) -> str:
    """A call as errors name it: a function compartment's own ``__call__`` is the call
    of the compartment itself (``call to compartment `parse```), a method is named."""
    if method == "__call__":
        return f"call to compartment `{compartment}`"
    return f"call `{method}` to compartment `{compartment}`"


class CallTimeout(CompartmentsError, TimeoutError):
    """A call did not get its reply within its timeout."""

    def __init__(self, compartment: str, method: str, timeout: float) -> None:
        self.compartment = compartment
        self.method = method
        self.timeout = timeout
        super().__init__(f"{_describe_call(compartment, method)} got no reply within {timeout:g}s")


class RemoteError(CompartmentsError):
    """An exception raised inside a compartment that is not rebuilt as itself: a
    non-builtin type, or a builtin whose values did not pass the checks.

    Its texts come from the compartment, so they are kept escaped (one line each; the
    traceback keeps its newlines).
    """

    def __init__(self, remote_type: str, message: str, remote_traceback: str = "") -> None:
        self.remote_type = printable(remote_type)
        self.message = printable(message)
        self.remote_traceback = printable_lines(remote_traceback)
        super().__init__(f"{self.remote_type}: {self.message}")
