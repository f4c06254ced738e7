"""The answering side of channels, shared by the zygote and every compartment.

Requests are served one at a time, in arrival order, across any number of channels. A
channel whose peer breaks the protocol is dropped; the primary channel (the parent's)
closing ends the loop.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

from . import _wire
from ._channel import Channel
from ._decoder import FrameDecoder
from ._wire import Request
from .errors import ProtocolError

__all__ = ["Server"]

# (method, params, channel it came on) -> result
Handler = Callable[[str, list[Any], Channel], Any]


class Server:
    def __init__(self, primary: Channel, handler: Handler, *, max_message: int) -> None:
        self.primary = primary
        self._handler = handler
        self._max_message = max_message
        self._decoders: dict[Channel, FrameDecoder] = {
            primary: FrameDecoder(max_message=max_message, name="parent", from_parent=True)
        }

    def add_channel(self, channel: Channel, name: str) -> None:
        self._decoders[channel] = FrameDecoder(max_message=self._max_message, name=name)

    def serve_forever(self) -> None:
        """Return when the primary channel closes."""
        primary = [self.primary]
        while True:
            ready = primary if len(self._decoders) == 1 else self._wait_for_any()
            for channel in ready:
                if not self._serve_one_read(channel):
                    if channel is self.primary:
                        return
                    self._drop(channel)

    def _wait_for_any(self) -> list[Channel]:
        poller = select.poll()
        by_fd = {channel.fileno(): channel for channel in self._decoders}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        return [by_fd[fd] for fd, _ in poller.poll()]

    def _serve_one_read(self, channel: Channel) -> bool:
        decoder = self._decoders[channel]
        try:
            if not channel.receive_into(decoder):
                return False
            while (message := decoder.next_message()) is not None:
                if type(message) is Request:
                    self._answer(channel, message)
        except (ProtocolError, ConnectionError):
            return False
        return True

    def _answer(self, channel: Channel, request: Request) -> None:
        try:
            result = self._handler(request.method, request.params, channel)
            data, fds = _wire.encode_response(request.msgid, None, result, method=request.method)
        except Exception as exc:  # the caller gets it as data; SystemExit ends the process
            data, fds = _wire.encode_response(request.msgid, _wire.encode_error(exc), None)
        channel.send(data, fds)

    def _drop(self, channel: Channel) -> None:
        self._decoders.pop(channel).close()
        channel.close()
