"""Without libseccomp: ``import compartments`` works, and everything that needs the
library says which one is missing and how to install it.

The library is made unloadable for real, in a subprocess: a ``sitecustomize`` makes
``ctypes.util.find_library("seccomp")`` (what pyseccomp uses to find it) find nothing,
or a file that does not exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SITECUSTOMIZE = """\
import ctypes.util
_find = ctypes.util.find_library
ctypes.util.find_library = lambda name: {found!r} if name == "seccomp" else _find(name)
"""


def _run(tmp_path: Path, *args: str, found: str | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE.format(found=found))
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}:{REPO}")
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, env=env,
        cwd=tmp_path,
    )  # fmt: skip


def _code(source: str) -> str:
    return textwrap.dedent(source)


def test_import_compartments_works_without_libseccomp(tmp_path: Path) -> None:
    result = _run(tmp_path, "-c", "import compartments, compartments.rulesets; print('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_the_simulation_really_hides_libseccomp(tmp_path: Path) -> None:
    result = _run(tmp_path, "-c", "import pyseccomp")
    assert "Unable to find libseccomp" in result.stderr


def test_check_says_libseccomp_is_missing_and_how_to_install_it(tmp_path: Path) -> None:
    result = _run(tmp_path, "-m", "compartments", "check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = next(line for line in result.stdout.splitlines() if "libseccomp" in line)
    assert line.startswith("NO")
    assert "libseccomp.so.2" in line and "apt install libseccomp2" in line
    assert "dnf install libseccomp" in line


def test_calling_a_compartment_raises_unsupported_error_naming_the_library(
    tmp_path: Path,
) -> None:
    (tmp_path / "uses_one.py").write_text(_code("""
        from compartments import compartment

        @compartment
        def double(x):
            return 2 * x
    """))
    result = _run(tmp_path, "-c", _code("""
        import uses_one
        from compartments.errors import UnsupportedError
        try:
            uses_one.double(2)
        except UnsupportedError as exc:
            print(isinstance(exc, OSError), exc)
    """))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("True ")
    assert "libseccomp.so.2 could not be loaded" in result.stdout
    assert "apt install libseccomp2" in result.stdout


def test_building_a_ruleset_raises_unsupported_error_naming_the_library(
    tmp_path: Path,
) -> None:
    result = _run(tmp_path, "-c", _code("""
        from compartments.errors import UnsupportedError
        from compartments.rulesets import SystemIO
        try:
            SystemIO.nothing().allow_stdout()
        except UnsupportedError as exc:
            print(exc)
    """))
    assert result.returncode == 0, result.stderr
    assert "libseccomp.so.2 could not be loaded" in result.stdout


def test_a_libseccomp_that_cannot_be_loaded_is_reported_by_check(tmp_path: Path) -> None:
    result = _run(tmp_path, "-m", "compartments", "check", found="/nonexistent/libseccomp.so.2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert any(line.startswith("NO") and "libseccomp.so.2" in line
               for line in result.stdout.splitlines())  # fmt: skip


def test_decorating_with_static_rules_works_without_libseccomp(tmp_path: Path) -> None:
    (tmp_path / "named_rules.py").write_text(_code("""
        from compartments import compartment

        @compartment(rules=["read", "write"])
        def double(x):
            return 2 * x
    """))
    result = _run(tmp_path, "-c", _code("""
        import named_rules
        from compartments.errors import UnsupportedError
        try:
            named_rules.double(2)
        except UnsupportedError as exc:
            print(exc)
    """))
    assert result.returncode == 0, result.stderr
    assert "libseccomp.so.2 could not be loaded" in result.stdout
