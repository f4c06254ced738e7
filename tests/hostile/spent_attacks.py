"""A task that sends its own answer early and then ignores the EOF that should end it."""

from __future__ import annotations

import sys

from compartments import compartment
from compartments._wire import _frames
from compartments.rulesets import SystemIO


def answer_then_stay() -> None:
    frame = sys._getframe()
    while frame is not None and "request" not in frame.f_locals:
        frame = frame.f_back
    assert frame is not None
    request, channel = frame.f_locals["request"], frame.f_locals["channel"]
    channel.send(*_frames.encode_response(request.msgid, None, "done", method=request.method))
    while True:  # the parent has its answer; the EOF on the channel is never read
        pass


@compartment(rules=[SystemIO.nothing()], fresh=True, timeout=0.5)
def fresh_answer_then_stay() -> None:
    answer_then_stay()
