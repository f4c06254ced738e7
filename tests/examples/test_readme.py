"""The README's Python snippets work as written.

Each fenced ``python`` block is a complete program, written into a temporary directory as
a module and run with this interpreter in a subprocess; it must exit 0. An HTML comment
on the last line before the fence changes that: ``<!-- fragment -->`` (only compiled) or
``<!-- raises: compartments.errors.PolicyViolation -->`` (run, and it must end with that
exception, as the README shows). Use :func:`python_blocks` to get the snippets for other
checks (type-checking them, say).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARK = re.compile(r"^<!--\s*(fragment|raises:\s*([\w.]+))\s*-->$")


@dataclass(frozen=True)
class Snippet:
    """One fenced block: where it starts, its source, and how it is checked."""

    line: int  # 1-based line of the opening fence
    source: str
    fragment: bool = False
    raises: str | None = None  # the exception it ends with, fully qualified

    @property
    def module_name(self) -> str:
        return f"readme_line_{self.line}"


def python_blocks(text: str, language: str = "python") -> list[Snippet]:
    """Every fenced block of ``language`` in a Markdown text, in order.

    The last non-blank line before a fence may mark the block: ``<!-- fragment -->`` or
    ``<!-- raises: module.Exception -->``. An unclosed fence is an error, not a silently
    dropped block.
    """
    lines = text.splitlines()
    snippets: list[Snippet] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        start = index
        end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == "```"), None)
        if end is None:
            raise ValueError(f"unclosed code fence at line {start + 1}")
        if opening.group(1) == language:
            before = [line.strip() for line in lines[:start] if line.strip()]
            mark = _MARK.match(before[-1]) if before else None
            source = "\n".join(lines[start + 1 : end]) + "\n"
            snippets.append(Snippet(
                start + 1, source,
                fragment=mark is not None and mark.group(1) == "fragment",
                raises=mark.group(2) if mark else None,
            ))  # fmt: skip
        index = end + 1
    return snippets


def _readme_blocks() -> list[Snippet]:
    return python_blocks(README.read_text())


def _run_as_module(snippet: Snippet, directory: Path) -> subprocess.CompletedProcess[str]:
    (directory / f"{snippet.module_name}.py").write_text(snippet.source)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, f"{snippet.module_name}.py"], capture_output=True, text=True,
        timeout=120, env=env, cwd=directory,
    )  # fmt: skip


def test_python_blocks_marks_fragments_and_keeps_sources() -> None:
    text = (
        "x\n```python\nprint(1)\n```\n\n<!-- fragment -->\n\n```python\nf(\n```\n"
        "```sh\nls\n```\n"
    )
    assert python_blocks(text) == [Snippet(2, "print(1)\n"), Snippet(8, "f(\n", fragment=True)]


def test_python_blocks_reads_the_exception_a_block_raises() -> None:
    text = "<!-- raises: builtins.KeyError -->\n```python\n{}[1]\n```\n"
    assert python_blocks(text) == [Snippet(2, "{}[1]\n", raises="builtins.KeyError")]


def test_python_blocks_refuses_an_unclosed_fence() -> None:
    with pytest.raises(ValueError, match="line 2"):
        python_blocks("x\n```python\nprint(1)\n")


def test_the_readme_has_runnable_python_snippets() -> None:
    assert [s for s in _readme_blocks() if not s.fragment]


@pytest.mark.parametrize(
    "snippet",
    [s for s in _readme_blocks() if not s.fragment],
    ids=lambda s: f"line{s.line}",
)
@pytest.mark.timeout(150)
def test_readme_program_runs(snippet: Snippet, tmp_path: Path) -> None:
    result = _run_as_module(snippet, tmp_path)
    shown = f"README.md line {snippet.line}:\n{snippet.source}\nstderr:\n{result.stderr}"
    if snippet.raises is None:
        assert result.returncode == 0, shown
        return
    assert result.returncode == 1, shown
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{snippet.raises}: "), shown


@pytest.mark.parametrize(
    "snippet",
    [s for s in _readme_blocks() if s.fragment],
    ids=lambda s: f"line{s.line}",
)
def test_readme_fragment_compiles(snippet: Snippet) -> None:
    compile(snippet.source, f"README.md:{snippet.line}", "exec")


def _write_programs(directory: Path) -> list[Path]:
    paths = []
    for snippet in _readme_blocks():
        if not snippet.fragment:
            path = directory / f"{snippet.module_name}.py"
            path.write_text(snippet.source)
            paths.append(path)
    return paths


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "checker",
    [
        ["-m", "mypy", "--check-untyped-defs", "--no-error-summary"],
        ["-m", "pyright"],
    ],
    ids=["mypy", "pyright"],
)
def test_readme_programs_type_check(checker: list[str], tmp_path: Path) -> None:
    """The README's programs as a user's type checker sees them (untyped defs included)."""
    module = checker[1]
    if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode:
        pytest.skip(f"{module} is not installed (make install adds it)")
    paths = _write_programs(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO), MYPYPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, *checker, *map(str, paths)], capture_output=True, text=True,
        timeout=280, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
