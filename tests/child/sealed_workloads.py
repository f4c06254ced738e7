"""Real Python in sealed compartments, written the way a new user writes it.

Libraries are imported at the top, as usual; each compartment is sealed with
``SystemIO.nothing()`` (or TCP clients only) and no preload. What each workload needs after
the seal (a lazily imported module, a codec, package data, a dist-info scan) lives under
the interpreter's import roots. Workloads that depend on a lazy import report whether that
module was already loaded before the call, so a test can tell a real lazy import from one
the zygote happened to do.
"""

from __future__ import annotations

import email
import importlib
import importlib.metadata
import importlib.resources
import io
import os
import socket
import sys
import zipfile
from collections.abc import Callable
from types import ModuleType
from typing import Any

import hypothesis.vendor
import jinja2
from PIL import Image

from compartments import compartment
from compartments.rulesets import Networking, SystemIO

#: Package data read through importlib.resources: hypothesis (a declared test dependency,
#: so present wherever the suite runs) reads this list of TLDs the same way.
RESOURCE_PACKAGE, RESOURCE_NAME = "hypothesis.vendor", "tlds-alpha-by-domain.txt"


def _loaded(module: str) -> bool:
    return module in sys.modules


@compartment(rules=[SystemIO.nothing()])
def loaded_modules(names: list[str]) -> list[str]:
    """Which of ``names`` a fresh compartment of this module has loaded before any call."""
    return [name for name in names if _loaded(name)]


@compartment(rules=[SystemIO.nothing()])
def zip_members(data: bytes) -> dict[str, Any]:
    """Member names (a cp437 one among them: that codec is imported lazily) and content."""
    codec_loaded = _loaded("encodings.cp437")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {
            "codec_was_loaded": codec_loaded,
            "members": {name: archive.read(name) for name in archive.namelist()},
        }


@compartment(rules=[SystemIO.nothing()])
def parse_email(data: bytes) -> dict[str, Any]:
    """A multipart message: ``email.parser`` and friends are imported on first use."""
    parser_loaded = _loaded("email.parser")
    message = email.message_from_bytes(data)
    parts = [part for part in message.walk() if not part.is_multipart()]
    return {
        "parser_was_loaded": parser_loaded,
        "subject": message["Subject"],
        "payload": parts[-1].get_payload(decode=True),
    }


@compartment(rules=[SystemIO.nothing()])
def decode_cp1252(data: bytes) -> dict[str, Any]:
    """A codec the interpreter imports only when it is first named."""
    codec_loaded = _loaded("encodings.cp1252")
    return {"codec_was_loaded": codec_loaded, "text": data.decode("cp1252")}


def _anonymous_map(module: ModuleType) -> bytes:
    with module.mmap(-1, 16) as mapped:
        mapped.write(b"42")
        return bytes(mapped[:2])


#: C extensions that are a shared object in lib-dynload on common builds and need no
#: library beyond libc and libm, each with a use and the value it gives.
C_EXTENSION_USES: dict[str, tuple[Callable[[ModuleType], object], object]] = {
    "mmap": (_anonymous_map, b"42"),
    "_zoneinfo": (lambda m: m.ZoneInfo.__name__, "ZoneInfo"),
    "_queue": (lambda m: (q := m.SimpleQueue(), q.put(42), q.get())[-1], 42),
    "_contextvars": (lambda m: (v := m.ContextVar("v"), v.set(42), v.get())[-1], 42),
    "_bisect": (lambda m: m.bisect_left([1, 2, 3], 2), 1),
    "_heapq": (lambda m: (h := [3, 1, 2], m.heapify(h), h[0])[-1], 1),
    "_csv": (lambda m: next(m.reader(["4,2"])), ["4", "2"]),
    "array": (lambda m: m.array("i", [42]).tolist(), [42]),
    "cmath": (lambda m: m.sqrt(-4), 2j),
    "_statistics": (lambda m: m._normal_dist_inv_cdf(0.5, 42.0, 1.0), 42.0),
}


@compartment(rules=[SystemIO.nothing()])
def use_a_lazy_c_extension(candidates: list[str]) -> list[Any] | None:
    """Import the first candidate not loaded yet, and use it; None if all are loaded."""
    for name in candidates:
        if not _loaded(name):
            module = importlib.import_module(name)
            use, _ = C_EXTENSION_USES[name]
            return [name, module.__file__, use(module)]
    return None


@compartment(rules=[SystemIO.nothing()])
def read_package_data() -> str:
    """Package data through importlib.resources, as hypothesis reads its TLD list."""
    return importlib.resources.files(RESOURCE_PACKAGE).joinpath(RESOURCE_NAME).read_text()


@compartment(rules=[SystemIO.nothing()])
def read_data_beside_package_file() -> str:
    """The older way to package data: a path relative to the package's ``__file__``."""
    directory = os.path.dirname(hypothesis.vendor.__file__ or "")
    with open(os.path.join(directory, RESOURCE_NAME), encoding="utf-8") as handle:
        return handle.read()


@compartment(rules=[SystemIO.nothing()])
def entry_point_groups() -> dict[str, list[str]]:
    """The dist-info scan behind plugins: entry point names, by group."""
    groups = importlib.metadata.entry_points()
    return {group: sorted(groups.select(group=group).names) for group in groups.groups}


@compartment(rules=[SystemIO.nothing()])
def distribution_version(name: str) -> str:
    return importlib.metadata.version(name)


@compartment(rules=[SystemIO.nothing()])
def decode_png(data: bytes) -> dict[str, Any]:
    """Pillow imports its format plugins on the first ``Image.open``."""
    plugin_loaded = _loaded("PIL.PngImagePlugin")
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return {
            "plugin_was_loaded": plugin_loaded,
            "format": image.format,
            "size": list(image.size),
            "pixel": list(image.getpixel((1, 0))),
        }


@compartment(rules=[SystemIO.nothing()])
def render_template(name: str) -> dict[str, Any]:
    """A string literal in a template: Jinja2's lexer decodes it with unicode_escape."""
    codec_loaded = _loaded("encodings.unicode_escape")
    environment = jinja2.Environment(loader=jinja2.DictLoader({"t": '{{ "x" ~ name }}'}))
    return {
        "codec_was_loaded": codec_loaded,
        "text": environment.get_template("t").render(name=name),
    }


@compartment(rules=[SystemIO.nothing(), Networking.nothing().allow_start_tcp_clients()
                    .allow_running_tcp_clients()])  # fmt: skip
def connect_to(port: int) -> bool:
    """``create_connection`` encodes the host with the idna codec before it connects."""
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        return True


# -- controls: what stays out of reach ------------------------------------------------


@compartment(rules=[SystemIO.nothing()])
def read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


@compartment(rules=[SystemIO.nothing()])
def list_directory(path: str) -> list[str]:
    return os.listdir(path)


@compartment(rules=[SystemIO.nothing()])
def stat_size(path: str) -> int:
    return os.stat(path).st_size


@compartment(rules=[SystemIO.nothing()])
def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


@compartment(rules=[SystemIO.nothing()])
def import_by_name(name: str) -> str:
    """A lazy import of ``name`` wherever sys.path finds it; returns its ``__file__``."""
    return str(importlib.import_module(name).__file__)

