"""Waiting for the parent's output relay: what compartments printed, as the test sees it."""

from __future__ import annotations

import time

import pytest

from compartments._parent import _output


def relayed(
    capfd: pytest.CaptureFixture[str], until: str, timeout: float = 10.0
) -> tuple[str, str]:
    """The (stdout, stderr) captured until ``until`` shows in either, or ``timeout``."""
    out = err = ""
    deadline = time.monotonic() + timeout
    while until not in out + err and time.monotonic() < deadline:
        _output.relay().flush(1.0)
        o, e = capfd.readouterr()
        out, err = out + o, err + e
        time.sleep(0.01)
    return out, err
