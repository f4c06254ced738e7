"""The hostile suite: attacks on the parent from inside sealed compartments.

Each attack module keeps its compartments beside its tests, in a top-level module (no
package), so the zygote imports it by name from ``sys.path``. Every test here also
checks that the parent survived it with bounded threads and memory: an attack that
leaks a thread or grows the parent's heap fails even when its own assertions pass.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

#: What one attack may leave behind in the parent once its compartments are closed.
MAX_EXTRA_THREADS = 4
MAX_RSS_GROWTH = 256 << 20


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGESIZE")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


_baseline: dict[str, int] = {}


@pytest.fixture(autouse=True)
def parent_stays_bounded() -> Iterator[None]:
    """The parent's thread count and RSS stay bounded across the whole hostile suite."""
    if not _baseline:
        _baseline.update(threads=_threads(), rss=_rss())
    yield
    deadline = time.monotonic() + 5.0
    while _threads() > _baseline["threads"] + MAX_EXTRA_THREADS and time.monotonic() < deadline:
        time.sleep(0.05)  # a compartment's helper threads wind down as it closes
    threads = _threads()
    assert threads <= _baseline["threads"] + MAX_EXTRA_THREADS, (
        f"the parent has {threads} threads, {_baseline['threads']} before the hostile suite: "
        f"{sorted(t.name for t in threading.enumerate())}"
    )
    grown = _rss() - _baseline["rss"]
    assert grown <= MAX_RSS_GROWTH, f"the parent's RSS grew by {grown >> 20} MiB"
