"""The import roots: what they are, how a plain SafetyContext keeps a working interpreter,
and how Landlock policies, learn mode and a missing listener treat reads under them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import granted_pkg
import pytest
from childproc import run_in_child

from compartments import Isolate, SafetyContext, compartment
from compartments._policy import _roots
from compartments.rulesets import SystemIO

STDLIB = os.path.dirname(os.__file__)


@compartment(rules=[SystemIO.nothing()], learn=True)
def learn_a_lazy_import() -> str:
    import colorsys

    return colorsys.__name__


@compartment(rules=[SystemIO.nothing()], report_violations=False)
def lazy_import_without_listener() -> str:
    import wave

    return wave.__name__


@compartment(rules=[SystemIO.nothing().allow_read_path("/etc/hostname")])
def lazy_import_under_landlock() -> str:
    import colorsys  # noqa: F401
    import netrc

    return netrc.__name__


@compartment(rules=[SystemIO.nothing().allow_read_path("/etc/hostname")])
def read_beside_the_grant(path: str) -> str:
    with open(path) as f:
        return f.read()


@compartment(rules=[SystemIO.nothing()])
def read_a_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@compartment(rules=[SystemIO.nothing()])
def write_under_the_stdlib(path: str) -> None:
    with open(path, "w") as f:
        f.write("x")


GRANTED = os.path.dirname(granted_pkg.__file__)


@compartment(rules=[SystemIO.nothing().allow_read_path(GRANTED)])
def lazy_import_from_a_granted_path() -> str:
    from granted_pkg import late

    return str(late.VALUE)


@compartment(rules=[SystemIO.nothing()])
def lazy_import_from_the_app_directory() -> str:
    from granted_pkg import late

    return str(late.VALUE)


@compartment(rules=[SystemIO.nothing()], isolate=Isolate())
def lazy_import_in_an_isolate() -> str:
    import colorsys  # noqa: F401
    import netrc  # noqa: F401

    return "imported"


# -- what the roots are -------------------------------------------------------------------


def test_the_stdlib_and_site_packages_are_roots() -> None:
    import pytest as installed

    assert _roots.under_roots(STDLIB)
    assert _roots.under_roots(os.path.dirname(installed.__file__))


def test_the_test_directory_and_tmp_are_not_roots(tmp_path: Path) -> None:
    assert not _roots.under_roots(os.path.dirname(__file__))
    assert not _roots.under_roots(str(tmp_path))
    assert not _roots.under_roots("/etc")


def test_module_for_names_the_module_a_bytecode_file_belongs_to() -> None:
    path = f"{STDLIB}/encodings/__pycache__/cp437.cpython-311.pyc"
    assert _roots.module_for(path) == "encodings.cp437"


def test_module_for_names_a_package_by_its_init() -> None:
    assert _roots.module_for(f"{STDLIB}/email/__init__.py") == "email"


def test_module_for_a_data_file_is_none() -> None:
    assert _roots.module_for(f"{STDLIB}/lib2to3/Grammar.txt") is None


# -- a plain SafetyContext ----------------------------------------------------------------


# A fresh interpreter each: the codec registry caches every lookup, so a forked copy of
# this process would inherit idna from whichever test looked it up first.
CONNECT_SEALED = """
import socket, sys
from compartments import SafetyContext
from compartments.rulesets import Networking
assert "encodings.idna" not in sys.modules
ctx = SafetyContext() if sys.argv[2] == "default" else SafetyContext().preload(codecs="none")
ctx.enable(Networking.nothing().allow_start_tcp_clients().allow_running_tcp_clients())
ctx.apply_to_current_thread()
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
except LookupError as exc:
    print("LookupError:", exc)
    raise SystemExit(3)
print("connected")
"""


def _connect_sealed(port: int, codecs: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CONNECT_SEALED, str(port), codecs],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.timeout(60)
def test_plain_safety_context_connects_by_name_after_apply(listener: int) -> None:
    result = _connect_sealed(listener, "default")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "connected"


@pytest.mark.timeout(60)
def test_plain_safety_context_without_codecs_cannot_look_up_idna(listener: int) -> None:
    result = _connect_sealed(listener, "none")
    assert result.returncode == 3, result.stderr
    assert "idna" in result.stdout


@pytest.mark.timeout(30)
def test_preload_imports_the_named_modules_before_the_filter() -> None:
    def body() -> None:
        sys.modules.pop("colorsys", None)
        SafetyContext().preload("colorsys", codecs="none").enable(
            SystemIO.nothing()
        ).apply_to_current_thread()
        assert "colorsys" in sys.modules

    assert run_in_child(body) == "ok"


@pytest.mark.parametrize("bad", ["", "os path", "../etc", 3])
def test_preload_refuses_a_bad_module_name(bad: object) -> None:
    with pytest.raises(ValueError, match="dotted module names"):
        SafetyContext().preload(bad)  # type: ignore[arg-type]


def test_preload_refuses_an_unknown_codecs_choice() -> None:
    with pytest.raises(ValueError, match="codecs="):
        SafetyContext().preload(codecs="some")  # type: ignore[arg-type]


# -- compartments -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_learn_mode_never_suggests_a_grant_for_a_lazy_import() -> None:
    assert learn_a_lazy_import() == "colorsys"
    code = learn_a_lazy_import.learned_policy().code
    assert "allow_open" not in code
    assert "colorsys" not in code
    learn_a_lazy_import.close()


@pytest.mark.timeout(60)
def test_lazy_import_without_listener_names_the_module_and_why() -> None:
    with pytest.raises(ModuleNotFoundError, match="lazy import of `wave`") as info:
        lazy_import_without_listener()
    assert "no violation listener" in str(info.value)


@pytest.mark.timeout(60)
def test_landlock_path_policy_keeps_the_import_roots_readable() -> None:
    assert lazy_import_under_landlock() == "netrc"


@pytest.mark.timeout(60)
def test_landlock_path_policy_still_refuses_files_outside_grant_and_roots(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    with pytest.raises(PermissionError):
        read_beside_the_grant(str(secret))


@pytest.mark.timeout(60)
def test_a_write_under_the_stdlib_suggests_no_rule_set() -> None:
    from compartments.errors import PolicyViolation

    with pytest.raises(PolicyViolation) as info:
        write_under_the_stdlib(f"{STDLIB}/compartments-must-not-write-here.py")
    assert "a write under the import roots" in info.value.suggestion
    assert "allow_" not in info.value.suggestion
    assert not os.path.exists(f"{STDLIB}/compartments-must-not-write-here.py")


def test_check_says_whether_the_import_roots_are_served() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "compartments", "check"], capture_output=True, text=True,
        timeout=60,
    ).stdout  # fmt: skip
    line = next(line for line in out.splitlines() if "import roots served" in line)
    assert line.startswith("yes")


@pytest.mark.timeout(60)
def test_a_path_the_policy_grants_stays_importable_after_the_seal() -> None:
    assert lazy_import_from_a_granted_path() == "late"


@pytest.mark.timeout(60)
def test_a_lazy_import_from_the_app_directory_names_the_module_and_the_fix() -> None:
    with pytest.raises(ModuleNotFoundError, match=r"lazy import of `granted_pkg\.late`") as info:
        lazy_import_from_the_app_directory()
    assert "import it before the seal" in str(info.value)


@pytest.mark.timeout(60)
def test_an_isolate_imports_lazily_from_the_roots_too() -> None:
    assert lazy_import_in_an_isolate() == "imported"


@pytest.fixture
def private_file_under_site_packages() -> Iterator[str]:
    import sysconfig

    path = os.path.join(sysconfig.get_paths()["purelib"], f"_compartments_private_{os.getpid()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"not for others")
        os.close(fd)
        yield path
    finally:
        os.unlink(path)


@pytest.mark.timeout(60)
def test_a_file_under_a_root_that_others_may_not_read_is_not_served(
    private_file_under_site_packages: str,
) -> None:
    from compartments.errors import PolicyViolation

    with pytest.raises(PolicyViolation) as info:
        read_a_file(private_file_under_site_packages)
    assert private_file_under_site_packages in str(info.value)


@pytest.mark.timeout(60)
def test_the_base_interpreters_unused_site_packages_is_not_a_root() -> None:
    from compartments.errors import PolicyViolation

    if not _roots._excluded():
        pytest.skip("the base interpreter has no site-packages inside its stdlib here")
    inner = os.path.join(_roots._excluded()[0], "compartments-probe")
    assert _roots.root_of(inner) is None
    with pytest.raises(PolicyViolation):
        read_a_file(inner)


PRELOAD_WHEN_NOT_SERVED = """
import sys
from compartments._child import _sealed_imports
assert "encodings.cp1252" not in sys.modules
_sealed_imports.configure(served=sys.argv[1] == "served", reason="a kernel before 5.14")
print("encodings.cp1252" in sys.modules, "encodings.mac_roman" in sys.modules)
"""


@pytest.mark.parametrize(("served", "preloaded"), [("served", "False False"),
                                                   ("not", "True True")])  # fmt: skip
def test_a_zygote_preloads_every_codec_only_where_nothing_is_served(
    served: str, preloaded: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PRELOAD_WHEN_NOT_SERVED, served],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == preloaded
