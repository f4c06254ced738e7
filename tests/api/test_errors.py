"""Errors where users look for them: importable from ``compartments``, raised at the
decorator where the mistake is written, and one short message that says what to do.

Scripts run as a user runs them: a real ``python`` subprocess on a small file.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import compartments
from compartments import (
    LandlockError,
    RuleConflictError,
    SeccompRule,
    UnknownSyscallError,
    compartment,
    errors,
)
from compartments.rulesets import SystemIO

REPO = Path(__file__).resolve().parents[2]

#: A short message: a few frames of the caller's traceback and the message itself, never
#: a remote traceback chained onto a local one.
SHORT_STDERR_LINES = 30


def _run(
    tmp_path: Path, *args: str, script: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    if script is not None:
        (tmp_path / "script.py").write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, *args], input=stdin, capture_output=True, text=True, timeout=90,
        env=env, cwd=tmp_path,
    )  # fmt: skip


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


def _is_short(result: subprocess.CompletedProcess[str]) -> bool:
    return (
        len(result.stderr.splitlines()) <= SHORT_STDERR_LINES
        and "RemoteTraceback" not in result.stderr
    )


# -- every exception from compartments ----------------------------------------------------


def _exception_classes(module: Any) -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and inspect.isclass(value)
        and issubclass(value, BaseException) and value.__module__ == errors.__name__
    }  # fmt: skip


def test_every_public_exception_is_exported_by_compartments() -> None:
    exported = {name: getattr(compartments, name) for name in compartments.__all__}
    assert _exception_classes(errors).items() <= exported.items()


def test_errors_all_lists_every_exception_class() -> None:
    assert set(errors.__all__) == set(_exception_classes(errors))


# -- static rules= are checked at decoration ---------------------------------------------


def _decorate(rules: Any) -> Any:
    def target() -> None:
        pass

    target.__qualname__ = "target"  # module-level, as far as the decorator can tell
    return compartment(rules=rules)(target)


def test_an_unknown_syscall_in_rules_raises_unknown_syscall_error_at_decoration() -> None:
    with pytest.raises(UnknownSyscallError, match="no_such_syscall"):
        _decorate([SystemIO.nothing(), "no_such_syscall"])


def test_an_unknown_syscall_in_a_custom_ruleset_names_the_ruleset_at_decoration() -> None:
    class Custom:
        name = "Custom"

        def simple_rules(self) -> list[str]:
            return ["openat", "not_a_syscall"]

        def conditional_rules(self) -> dict[str, list[SeccompRule]]:
            return {}

    with pytest.raises(UnknownSyscallError, match="RuleSet `Custom`"):
        _decorate([Custom()])


def test_a_conflicting_rule_raises_rule_conflict_error_at_decoration() -> None:
    with pytest.raises(RuleConflictError, match="`write`"):
        _decorate([SystemIO.nothing().allow_stdout(), "write"])


def test_a_path_granted_twice_raises_landlock_error_at_decoration(tmp_path: Path) -> None:
    twice = [
        SystemIO.nothing().allow_read_path(tmp_path),
        SystemIO.nothing().allow_list_dir(tmp_path),
    ]
    with pytest.raises(LandlockError, match="granted by two"):
        _decorate(twice)


def test_a_wrong_type_in_rules_raises_type_error_at_decoration() -> None:
    with pytest.raises(TypeError, match="got int"):
        _decorate([SystemIO.nothing(), 42])


def test_a_ruleset_class_in_rules_raises_type_error_at_decoration() -> None:
    with pytest.raises(TypeError, match=r"\.nothing\(\)"):
        _decorate([SystemIO])


def test_rules_that_are_not_a_list_raise_type_error_at_decoration() -> None:
    with pytest.raises(TypeError, match="rules= takes a list"):
        _decorate(SystemIO.nothing())


def test_rules_that_are_a_ruleset_class_raise_type_error_at_decoration() -> None:
    with pytest.raises(TypeError, match="got the class SystemIO"):
        _decorate(SystemIO)


def test_a_pool_with_an_unknown_syscall_raises_unknown_syscall_error_when_made() -> None:
    with pytest.raises(UnknownSyscallError, match="no_such_syscall"):
        compartments.Pool(rules=["no_such_syscall"], workers=1)


def test_callable_rules_are_not_evaluated_at_decoration() -> None:
    def policy() -> list[Any]:
        raise AssertionError("evaluated in the parent")

    assert _decorate(policy)._definition.rules is policy


# -- targets the child cannot find --------------------------------------------------------


def test_a_lambda_is_refused_at_decoration() -> None:
    module_level_lambda = eval("lambda: None", {"__name__": __name__})  # qualname <lambda>
    with pytest.raises(TypeError, match=r"module-level function or class, got '<lambda>'"):
        compartment(module_level_lambda)


def test_a_lambda_in_a_script_is_refused_at_decoration(tmp_path: Path) -> None:
    result = _run(tmp_path, "script.py", script="""
        from compartments import compartment

        double = compartment(lambda x: 2 * x)

        if __name__ == "__main__":
            print(double(2))
    """)
    assert result.returncode == 1
    assert _last_line(result) == (
        "TypeError: @compartment needs a module-level function or class, got '<lambda>': "
        "the child finds it by module and name"
    )


def test_a_function_under_the_main_guard_is_refused_at_decoration(tmp_path: Path) -> None:
    result = _run(tmp_path, "script.py", script="""
        from compartments import compartment

        if __name__ == "__main__":
            @compartment
            def double(x):
                return 2 * x

            print(double(2))
    """)
    assert result.returncode == 1
    assert _last_line(result).startswith(
        "TypeError: @compartment needs a module-level function or class, got 'double': "
        'it is defined under `if __name__ == "__main__":`'
    )
    assert "define it above the guard" in _last_line(result)


def test_a_class_under_the_main_guard_is_refused_at_decoration(tmp_path: Path) -> None:
    result = _run(tmp_path, "script.py", script="""
        from compartments import compartment

        if "__main__" == __name__:
            @compartment
            class Counter:
                def get(self):
                    return 1

            print(Counter().get())
    """)
    assert result.returncode == 1
    assert "got 'Counter': it is defined under `if __name__" in _last_line(result)


def test_a_function_above_the_main_guard_runs(tmp_path: Path) -> None:
    result = _run(tmp_path, "script.py", script="""
        from compartments import compartment

        @compartment
        def double(x):
            return 2 * x

        if __name__ == "__main__":
            print(double(2))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "4\n"


def test_a_compartment_defined_by_python_c_is_refused_with_what_to_do(tmp_path: Path) -> None:
    source = "from compartments import compartment\n@compartment\ndef f(): pass\nf()\n"
    result = _run(tmp_path, "-c", source)
    assert result.returncode == 1
    assert "got 'f': it is defined in a __main__ with no file" in _last_line(result)
    assert "put it in a module file and import it from there" in _last_line(result)
    assert _is_short(result), result.stderr


def test_a_compartment_defined_in_the_repl_is_refused_with_what_to_do(tmp_path: Path) -> None:
    session = "from compartments import compartment\n@compartment\ndef f(): pass\n\n"
    result = _run(tmp_path, "-i", stdin=session)
    assert "got 'f': it is defined in a __main__ with no file" in result.stderr
    assert _is_short(result), result.stderr


# -- compartments called while their module is imported -----------------------------------


def test_a_script_calling_a_compartment_at_import_time_gets_one_short_message(
    tmp_path: Path,
) -> None:
    result = _run(tmp_path, "script.py", script="""
        from compartments import compartment

        @compartment
        def double(x):
            return 2 * x

        print(double(2))
    """)
    assert result.returncode == 1
    assert "compartments.errors.BootstrapError: compartment `double` was started while the " \
        f"script {tmp_path / 'script.py'} was being imported by its zygote" in result.stderr
    assert 'if __name__ == "__main__":' in result.stderr
    assert _is_short(result), result.stderr


def test_a_module_calling_its_compartment_at_import_time_gets_bootstrap_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "eager.py").write_text(textwrap.dedent("""
        from compartments import compartment

        @compartment
        def double(x):
            return 2 * x

        ANSWER = double(2)
    """))
    source = (
        "from compartments import BootstrapError\n"
        "try:\n    import eager\nexcept BootstrapError as exc:\n    print(exc)\n"
    )
    result = _run(tmp_path, "-c", source)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "compartment `double` was started while module `eager` was being imported"
    )
