"""A Node client calls a served sealed compartment, with ``@msgpack/msgpack`` from npm.

The package is installed once into a cache (``~/.cache/compartments-tests/npm``); the
tests skip, saying why, where ``node`` or ``npm`` is missing or the install fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_targets import Calc

import compartments

README = Path(__file__).resolve().parents[2] / "README.md"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compartments-tests"
PACKAGE = "@msgpack/msgpack@3"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """A node_modules holding @msgpack/msgpack, installed on first use."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed (.ci/run installs nodejs and npm)")
    prefix = CACHE / "npm"
    modules = prefix / "node_modules"
    if not (modules / "@msgpack" / "msgpack" / "package.json").exists():
        prefix.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(
                ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", PACKAGE],
                capture_output=True, text=True, timeout=300, check=True,
            )  # fmt: skip
        except (subprocess.SubprocessError, OSError) as exc:
            output = getattr(exc, "stderr", "") or ""
            pytest.skip(f"npm could not install {PACKAGE}: {exc} {output[-500:]}")
    return modules


@pytest.fixture
def served(tmp_path: Path) -> Iterator[compartments.Served]:
    with Calc() as calc, compartments.serve(calc, tmp_path / "numbers.sock") as server:
        yield server


def run_node(script: str, node_modules: Path, socket_path: str, tmp_path: Path) -> list[str]:
    source = tmp_path / "client.js"
    source.write_text(script)
    env = {**os.environ, "NODE_PATH": str(node_modules), "SOCKET": socket_path}
    done = subprocess.run(
        ["node", str(source)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def readme_node_snippet() -> str:
    section = README.read_text().split("## Serving other processes", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```js\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section has one Node snippet"
    return str(blocks[0])


@pytest.mark.timeout(300)
def test_the_readmes_node_snippet_gets_a_result_and_an_error(
    node_modules: Path, served: compartments.Served, tmp_path: Path
) -> None:
    lines = run_node(readme_node_snippet(), node_modules, served.path, tmp_path)
    assert lines == ["3", "ValueError: invalid literal for int() with base 10: 'x'"]


NODE_CLIENT = """
const net = require("node:net");
const { encode, decodeMultiStream } = require("@msgpack/msgpack");
const sock = net.createConnection(process.env.SOCKET);
const frames = [
  [0, 1, "echo", [new Uint8Array([0, 255, 7])]],
  [0, 2, "add", [1], { b: 41 }],
  [2, "add", [5, 5]],
  [0, 3, "$start", []],
  [0, 4, "echo", [{ nested: [1, "two", null, true, 2.5] }]],
];
for (const frame of frames) sock.write(encode(frame));
(async () => {
  const seen = [];
  for await (const message of decodeMultiStream(sock)) {
    const [, id, error, result] = message;
    seen.push({ id, error, result: result instanceof Uint8Array ? Array.from(result) : result });
    if (seen.length === 4) break;
  }
  console.log(JSON.stringify(seen));
  sock.end();
})();
"""


@pytest.mark.timeout(300)
def test_a_node_client_sends_bytes_keywords_notifications_and_is_refused_control(
    node_modules: Path, served: compartments.Served, tmp_path: Path
) -> None:
    (line,) = run_node(NODE_CLIENT, node_modules, served.path, tmp_path)
    answers: list[dict[str, Any]] = json.loads(line)
    assert answers[0] == {"id": 1, "error": None, "result": [0, 255, 7]}
    assert answers[1] == {"id": 2, "error": None, "result": 42}
    assert answers[2]["id"] == 3 and answers[2]["error"]["type"] == "PermissionError"
    assert answers[3] == {
        "id": 4, "error": None, "result": {"nested": [1, "two", None, True, 2.5]},
    }  # fmt: skip
