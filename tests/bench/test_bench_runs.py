"""``make bench`` and ``make profile`` still run, end to end, in their smoke modes.

They are not run by the suite otherwise, and a change to the proxies once broke
``make profile`` unnoticed. Nothing here is timed: the figures are the benchmarks' to
judge, on a quiet machine (``bench/``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=240
    )


@pytest.mark.timeout(300)
def test_the_benchmark_reports_every_target_with_its_verdict(tmp_path: Path) -> None:
    from bench.__main__ import TARGETS

    out = tmp_path / "results.json"
    done = _run("bench", "--quick", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    keys = json.loads(out.read_text())["keys"]
    assert set(TARGETS) <= set(keys)
    for key in TARGETS:
        assert keys[key]["met"] in (True, False), (key, keys[key])
        assert key in done.stdout


@pytest.mark.timeout(300)
def test_the_profile_prints_every_section() -> None:
    done = _run("bench.profile", "--quick")
    assert done.returncode == 0, done.stderr[-3000:]
    for heading in ("no-op round trip", "1 MiB of bytes", "64 MiB one way", "64 KiB echo",
                    "calls in flight", "cProfile of"):  # fmt: skip
        assert heading in done.stdout, heading


def test_the_profile_names_an_unknown_section() -> None:
    done = _run("bench.profile", "--quick", "nosuch")
    assert done.returncode == 2
    assert "nosuch" in done.stdout and "inflight" in done.stdout
