"""A compartment's stdout and stderr are flushed as each call ends, not only at exit.

Flushed as the call ends, a call's output shows call by call: text sent over the
channel (``_stdio``, a policy without a write grant) reaches the parent before the
reply, and a write the policy denies (a stream replaced by the user, say) is reported
before that call returns, not at exit under whatever ran then. A stream whose
flush was refused is not flushed again (its buffer keeps what was refused, and every
later flush would be refused again, once per call): what it buffers later is written
only when the buffer fills, by the print that fills it.
"""

from __future__ import annotations

import sys
from typing import Any

from ._stdio import ChannelStream

__all__ = ["flush"]

_refused: list[Any] = []  # the stream objects themselves, kept alive so ids stay theirs
_refused_ids: set[int] = set()


def flush() -> None:
    """Flush sys.stdout and sys.stderr, but not one whose flush was refused before."""
    out, err = sys.stdout, sys.stderr
    if type(out) is ChannelStream and type(err) is ChannelStream and not (
        out._pending or err._pending
    ):
        return  # the usual case, once per call: nothing to flush, nothing to call
    for stream in (out, err):
        if stream is None or id(stream) in _refused_ids:
            continue
        try:
            stream.flush()
        except OSError:  # denied by the policy (reported), or the pipe is gone
            _refused.append(stream)
            _refused_ids.add(id(stream))
        except Exception:  # closed or replaced by something without flush()
            pass
