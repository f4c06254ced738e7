"""What every test directory shares: its modules on ``sys.path``, and a few fixtures.

Test files and the workload modules beside them are top-level modules (no packages): the
zygote imports a compartment's module by name, from the ``sys.path`` the parent had when
the zygote started. So ``support/`` (helpers several directories use, ``hostile/`` among
them) and every test directory go on ``sys.path`` here, before any test runs, whichever
file or directory pytest was given.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
for _name in sorted(os.listdir(_HERE), reverse=True):
    _directory = os.path.join(_HERE, _name)
    if os.path.isdir(_directory) and _name[0] not in "._" and _directory not in sys.path:
        sys.path.insert(0, _directory)


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 in the parent; yields its port."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def listeners() -> Iterator[tuple[int, int]]:
    """Two TCP listeners on 127.0.0.1 in the parent; yields their ports."""
    with socket.create_server(("127.0.0.1", 0)) as first, socket.create_server(
        ("127.0.0.1", 0)
    ) as second:
        yield first.getsockname()[1], second.getsockname()[1]


@pytest.fixture
def sibling() -> Iterator[subprocess.Popen[bytes]]:
    """A sleeping process outside any Landlock domain."""
    process = subprocess.Popen(["sleep", "30"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Two sibling directories, each holding ``file`` with known content."""
    granted, other = tmp_path / "granted", tmp_path / "other"
    for directory in (granted, other):
        directory.mkdir()
        (directory / "file").write_text("content")
    return granted, other
