"""A compartment's stdout and stderr are flushed as each call ends, not only at exit.

A ``print`` without a stdout grant fails only when its buffer is written. Written at
exit, the denial was reported long after the call that printed, when the compartment
closed (pytest filed it under a later test); flushed as the call ends, it is reported
before that call returns, and output that is allowed shows call by call. A stream whose
flush was refused is not flushed again (its buffer keeps what was refused, and every
later flush would be refused again, once per call): what it buffers later is written
only when the buffer fills, by the print that fills it.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["flush"]

_refused: list[Any] = []  # the stream objects themselves: identity, never reused


def flush() -> None:
    """Flush sys.stdout and sys.stderr, but not one whose flush was refused before."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None or any(stream is refused for refused in _refused):
            continue
        try:
            stream.flush()
        except OSError:  # denied by the policy (reported), or the pipe is gone
            _refused.append(stream)
        except Exception:  # closed or replaced by something without flush()
            pass
