"""Sealed compartments run real Python (issue 13): lazy imports, codecs, package data.

Each workload runs in a real sealed child (``SystemIO.nothing()``, no preload, no extra
rule), from a fresh fork of its module zygote, and is checked again unsandboxed, in this
process, so that a failure is the seal's and not the workload's. The controls check what
must stay out of reach: every file outside the interpreter's import roots (including the
app's own directory), and every write.
"""

from __future__ import annotations

import base64
import importlib
import importlib.metadata
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable, Iterator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import pytest
import sealed_workloads as w
from PIL import Image

from compartments.errors import PolicyViolation

pytestmark = pytest.mark.timeout(60)

APP_DIR = Path(w.__file__).resolve().parent
ROOTS = sorted({sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")})


def sealed(workload: Any, *args: Any) -> Any:
    """One call in a fresh sealed child, closed after, so no call sees another's imports."""
    try:
        return workload(*args)
    finally:
        workload.close()


def unsandboxed(workload: Any, *args: Any) -> Any:
    """The same function, called in this process."""
    return workload.__wrapped__(*args)


# -- the inputs, made here in the parent -----------------------------------------------

CP437_NAME = "café.txt"  # é is 0x82 in cp437: no UTF-8 sequence starts with that byte


def zip_with_a_cp437_name() -> bytes:
    """zipfile writes non-ASCII names as UTF-8, so the cp437 name is patched in."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("caf_.txt", b"menu of the day")
        archive.writestr("plain.txt", b"plain")
    data = buffer.getvalue()
    assert data.count(b"caf_.txt") == 2  # the local header and the central directory
    return data.replace(b"caf_.txt", CP437_NAME.encode("cp437"))


ATTACHMENT = b"\x00binary\xff attachment"
MESSAGE = (
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: quarterly report\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee attached\r\n"
    b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes(ATTACHMENT) + b"--b1--\r\n"
)


def png() -> bytes:
    image = Image.new("RGB", (3, 2), (10, 20, 30))
    image.putpixel((1, 0), (200, 100, 50))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _needs_only_libc(path: str) -> bool:
    """What ldd lists beyond the libraries every interpreter has loaded already."""
    if shutil.which("ldd") is None:
        return True
    listed = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=30).stdout
    loaded = ("linux-vdso", "libc.so", "libm.so", "libpthread.so", "libdl.so", "ld-linux")
    libraries = [line.split()[0] for line in listed.splitlines() if "=>" in line or "/" in line]
    return all(os.path.basename(library).startswith(loaded) for library in libraries)


def c_extension_candidates() -> list[str]:
    """Candidates that are a shared object under a root here, needing only libc and libm."""
    found = []
    for name in w.C_EXTENSION_USES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if (
            origin is not None
            and origin.endswith(tuple(EXTENSION_SUFFIXES))
            and any(origin.startswith(root + os.sep) for root in ROOTS)
            and _needs_only_libc(origin)
        ):
            found.append(name)
    return found


def resource_text() -> str:
    spec = importlib.util.find_spec(w.RESOURCE_PACKAGE)
    assert spec is not None and spec.origin is not None
    return (Path(spec.origin).parent / w.RESOURCE_NAME).read_text(encoding="utf-8")


# -- what each workload must give, sealed or not ---------------------------------------


def check_zip(result: dict[str, Any]) -> None:
    assert result["members"] == {CP437_NAME: b"menu of the day", "plain.txt": b"plain"}


def check_email(result: dict[str, Any]) -> None:
    assert (result["subject"], result["payload"]) == ("quarterly report", ATTACHMENT)


def check_cp1252(result: dict[str, Any]) -> None:
    assert result["text"] == "é"


def check_png(result: dict[str, Any]) -> None:
    assert (result["format"], result["size"], result["pixel"]) == ("PNG", [3, 2], [200, 100, 50])


def check_template(result: dict[str, Any]) -> None:
    assert result["text"] == "xyz"


def check_version(version: str) -> None:
    assert version == importlib.metadata.version("jinja2")


def check_entry_points(groups: dict[str, list[str]]) -> None:
    assert "pytest" in groups.get("console_scripts", [])  # pytest's own dist-info
    assert "timeout" in groups.get("pytest11", [])  # pytest-timeout's plugin


WORKLOADS: dict[str, tuple[Any, Callable[[], tuple[Any, ...]], Callable[[Any], None]]] = {
    "zip": (w.zip_members, lambda: (zip_with_a_cp437_name(),), check_zip),
    "email": (w.parse_email, lambda: (MESSAGE,), check_email),
    "cp1252": (w.decode_cp1252, lambda: (b"\xe9",), check_cp1252),
    "png": (w.decode_png, lambda: (png(),), check_png),
    "jinja2": (w.render_template, lambda: ("yz",), check_template),
    "entry_points": (w.entry_point_groups, tuple, check_entry_points),
    "version": (w.distribution_version, lambda: ("jinja2",), check_version),
}


#: The module each workload imports lazily: the zygote must not have imported it.
LAZY = {
    "zip": "encodings.cp437",
    "email": "email.parser",
    "cp1252": "encodings.cp1252",
    "png": "PIL.PngImagePlugin",
    "jinja2": "encodings.unicode_escape",
}


def sealed_result(case: str) -> None:
    """The case's result from a sealed child, checked, with its lazy module (if it has one)
    still unloaded when the call began."""
    workload, inputs, check = WORKLOADS[case]
    result = sealed(workload, *inputs())
    if case in LAZY:
        flag = next(key for key in result if key.endswith("_was_loaded"))
        assert result[flag] is False, f"{LAZY[case]} was loaded already: this cannot fail"
    check(result)


@pytest.mark.parametrize("case", sorted(WORKLOADS))
def test_each_workload_works_unsandboxed(case: str) -> None:
    workload, inputs, check = WORKLOADS[case]
    check(unsandboxed(workload, *inputs()))


def test_the_c_extension_uses_give_their_values_unsandboxed() -> None:
    for name, (use, expected) in w.C_EXTENSION_USES.items():
        if importlib.util.find_spec(name) is not None:
            assert use(importlib.import_module(name)) == expected, name


def test_package_data_is_readable_unsandboxed() -> None:
    assert unsandboxed(w.read_package_data) == resource_text()
    assert unsandboxed(w.read_data_beside_package_file) == resource_text()


def test_create_connection_works_unsandboxed(listener: int) -> None:
    assert unsandboxed(w.connect_to, listener) is True


# -- sealed: real Python works ---------------------------------------------------------


def test_the_lazily_imported_modules_are_not_loaded_before_the_seal() -> None:
    """Else the sealed tests could not fail: they would not import after the seal."""
    assert sealed(w.loaded_modules, sorted(LAZY.values())) == []
    candidates = c_extension_candidates()
    if candidates:
        assert sealed(w.loaded_modules, candidates) != candidates


def test_a_zip_member_with_a_cp437_name_is_listed_and_read() -> None:
    sealed_result("zip")


def test_a_multipart_email_is_parsed() -> None:
    sealed_result("email")


def test_cp1252_decodes_with_its_lazily_imported_codec() -> None:
    sealed_result("cp1252")


def test_a_c_extension_is_imported_lazily_and_used() -> None:
    candidates = c_extension_candidates()
    if not candidates:
        pytest.skip(f"none of {sorted(w.C_EXTENSION_USES)} is a shared object under {ROOTS}")
    result = sealed(w.use_a_lazy_c_extension, candidates)
    if result is None:
        pytest.skip(f"the zygote had imported every candidate already: {candidates}")
    name, path, value = result
    spec = importlib.util.find_spec(name)
    assert spec is not None and path == spec.origin  # the shared object itself, loaded
    assert value == w.C_EXTENSION_USES[name][1]


def test_package_data_is_read_through_importlib_resources() -> None:
    assert sealed(w.read_package_data) == resource_text()


def test_package_data_is_read_relative_to_the_package_file() -> None:
    assert sealed(w.read_data_beside_package_file) == resource_text()


def test_entry_points_list_the_installed_plugins() -> None:
    sealed_result("entry_points")


def test_a_distribution_version_is_read_from_its_metadata() -> None:
    sealed_result("version")


def test_pillow_decodes_a_png_with_its_lazily_loaded_plugin() -> None:
    sealed_result("png")


def test_jinja2_renders_a_template_with_a_string_literal() -> None:
    sealed_result("jinja2")


def test_create_connection_to_a_local_port_works_with_tcp_client_rules(listener: int) -> None:
    assert sealed(w.connect_to, listener) is True


# -- controls: outside the roots stays out of reach ------------------------------------

SECRET = "do-not-leak-4f1c"


def denied(path: str | Path, workload: Any, *args: Any) -> PolicyViolation:
    """The call is a PolicyViolation naming ``path``, and nothing secret comes back."""
    with pytest.raises(PolicyViolation) as info:
        sealed(workload, *args)
    assert str(path) in str(info.value), info.value
    assert SECRET not in str(info.value) and SECRET not in str(info.value.__cause__)
    return info.value


@pytest.fixture
def beside_module() -> Iterator[Path]:
    """A file in the target module's own directory, as a .env or a database would be."""
    path = APP_DIR / f"_secret_beside_module_{os.getpid()}.txt"
    path.write_text(SECRET)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def test_etc_hostname_stays_unreadable() -> None:
    denied("/etc/hostname", w.read_file, "/etc/hostname")


def test_a_file_in_the_tests_tmp_dir_stays_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    denied(path, w.read_file, str(path))


def test_a_file_beside_the_target_module_stays_unreadable(beside_module: Path) -> None:
    assert unsandboxed(w.read_file, str(beside_module)) == SECRET.encode()
    denied(beside_module, w.read_file, str(beside_module))


def test_the_target_modules_directory_cannot_be_listed(beside_module: Path) -> None:
    assert beside_module.name in unsandboxed(w.list_directory, str(APP_DIR))
    denied(APP_DIR, w.list_directory, str(APP_DIR))


def test_etc_passwd_cannot_be_stated() -> None:
    assert unsandboxed(w.stat_size, "/etc/passwd") > 0
    denied("/etc/passwd", w.stat_size, "/etc/passwd")


@pytest.mark.parametrize("root", ["stdlib", "purelib"])
def test_nothing_can_be_written_under_an_import_root(root: str) -> None:
    directory = os.path.dirname(os.__file__) if root == "stdlib" else sysconfig.get_path(root)
    path = Path(directory) / f"_compartments_write_probe_{os.getpid()}.txt"
    try:
        denied(path, w.write_file, str(path), SECRET.encode())
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture
def module_beside() -> Iterator[str]:
    """A module in the app's own directory that nothing imported before the seal."""
    name = f"_sealed_lazy_beside_{os.getpid()}"
    path = APP_DIR / f"{name}.py"
    path.write_text("VALUE = 42\n")
    importlib.invalidate_caches()
    try:
        yield name
    finally:
        sys.modules.pop(name, None)
        Path(importlib.util.cache_from_source(str(path))).unlink(missing_ok=True)
        path.unlink(missing_ok=True)


def test_a_lazy_import_from_the_apps_directory_is_an_import_error_naming_it(
    module_beside: str,
) -> None:
    assert unsandboxed(w.import_by_name, module_beside).startswith(str(APP_DIR))
    with pytest.raises(ImportError) as info:
        sealed(w.import_by_name, module_beside)
    assert module_beside in str(info.value)
