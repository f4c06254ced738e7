"""The answering side of channels, shared by the zygote and every compartment.

Requests are served one at a time, in arrival order, across any number of channels. A
channel whose peer breaks the protocol is dropped; the primary channel (the parent's)
closing ends the loop.

The parent always reads its replies, so answers to it are sent blocking. A peer (another
compartment on a direct line) may never read, so an answer to a peer is sent without
blocking: what does not fit waits in that line's outbox, the line's next requests wait
unread until it has drained (flow control), and a line whose outbox has not drained
within its deadline is dropped. A peer also gets at most :data:`PEER_TURN` answers in a
row before the others (the parent last) get theirs. One peer can then never park the
server, and the parent and the other peers keep being served. Before each answer to a
peer, a request the parent has waiting is served first, so busy peers (or clients of a
served compartment, see ``_external``) never queue the parent behind them.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _wire
from ._channel import Channel, frame_parts
from ._decoder import FrameDecoder
from ._wire import FrameBytes, Request
from .errors import ProtocolError

__all__ = ["PEER_DRAIN_TIMEOUT", "PEER_TURN", "Server"]

# (method, params, channel it came on) -> result
Handler = Callable[[str, list[Any], Channel], Any]
# (msgid, the exception raised or None, result, method) -> the answer's frame and fds
Encoder = Callable[[int, Exception | None, Any, str], tuple[FrameBytes, list[int]]]

#: How long a peer may leave an answer unread before its line is dropped, by default.
PEER_DRAIN_TIMEOUT = 30.0
#: Requests answered on one peer line before the other lines get a turn.
PEER_TURN = 16
_POLLIN, _POLLOUT, _POLLHUP = select.POLLIN, select.POLLOUT, select.POLLHUP


class _Outbox:
    """The unsent rest of one answer to a peer."""

    __slots__ = ("deadline", "fds", "keepalive", "parts")

    def __init__(
        self, parts: list[memoryview], fds: Sequence[int], keepalive: object, deadline: float
    ) -> None:
        self.parts = parts
        self.fds = fds
        self.keepalive = keepalive  # the result: it owns the fds until they are sent
        self.deadline = deadline


class Server:
    def __init__(self, primary: Channel, handler: Handler, *, max_message: int) -> None:
        self.primary = primary
        self._handler = handler
        self._max_message = max_message
        self._decoders: dict[Channel, FrameDecoder] = {
            primary: FrameDecoder(max_message=max_message, name="parent", from_parent=True)
        }
        self._drain_timeouts: dict[Channel, float] = {}
        self._outboxes: dict[Channel, _Outbox] = {}
        self._backlog: set[Channel] = set()  # peer lines that used up their turn
        self._encoders: dict[Channel, Encoder] = {}  # lines not answered the parent's way
        self._parent_poll = select.poll()
        self._parent_poll.register(primary.fileno(), _POLLIN)
        self._parent_gone = False

    def add_channel(
        self,
        channel: Channel,
        name: str,
        *,
        drain_timeout: float = PEER_DRAIN_TIMEOUT,
        decoder: FrameDecoder | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        """Serve a peer too: it may leave an answer unread for ``drain_timeout`` seconds.
        A served client's line brings its own ``decoder`` and ``encoder`` (``_external``)."""
        if decoder is None:
            decoder = FrameDecoder(max_message=self._max_message, name=name)
        self._decoders[channel] = decoder
        self._drain_timeouts[channel] = drain_timeout
        if encoder is not None:
            self._encoders[channel] = encoder

    def serve_forever(self) -> None:
        """Return when the primary channel closes."""
        primary = self.primary
        while True:
            if len(self._decoders) == 1:  # the parent alone: a plain blocking receive
                if not self._serve_one_read(primary, nonblocking=False):
                    return
                continue
            for channel, events in self._wait_for_any():
                if self._parent_gone:
                    return
                if channel not in self._decoders:
                    continue  # dropped while serving another one
                if channel in self._outboxes:
                    if not self._flush(channel):
                        self._drop(channel)
                elif channel in self._backlog:
                    if not self._serve_backlog(channel):
                        self._drop(channel)
                elif events:
                    if channel in self._encoders and not events & _POLLHUP:
                        self._parent_first()  # a client's read may be a large one; a
                        # hung-up line goes first, though: it frees a slot for `$attach`
                    if not self._serve_one_read(channel, nonblocking=True):
                        if channel is primary:
                            return
                        self._drop(channel)

    def _wait_for_any(self) -> list[tuple[Channel, int]]:
        """Lines ready to read and lines with an outbox that has room; with no events,
        lines whose outbox missed its deadline and lines with requests still to answer.
        Peers come first: one that hung up frees its slot before the parent's next
        request (often a new line: `$attach`) needs one."""
        poller = select.poll()
        by_fd: dict[int, Channel] = {}
        first_deadline: float | None = None
        for channel in self._decoders:
            if channel in self._backlog:
                continue  # read no more of it until what it sent is answered
            fd = channel.fileno()
            by_fd[fd] = channel
            outbox = self._outboxes.get(channel)
            if outbox is None:
                poller.register(fd, _POLLIN)
            else:
                poller.register(fd, _POLLOUT)
                if first_deadline is None or outbox.deadline < first_deadline:
                    first_deadline = outbox.deadline
        wait = None if first_deadline is None else max(first_deadline - time.monotonic(), 0.0)
        if self._backlog:
            wait = 0.0
        ready = [(by_fd[fd], events) for fd, events in poller.poll(_milliseconds(wait))]
        ready += [(channel, 0) for channel in self._backlog]
        if first_deadline is not None:
            now = time.monotonic()
            seen = {channel for channel, _ in ready}
            ready += [
                (channel, 0)
                for channel, outbox in self._outboxes.items()
                if outbox.deadline <= now and channel not in seen
            ]
        ready.sort(key=lambda item: item[0] is self.primary)
        return ready

    def _serve_one_read(self, channel: Channel, *, nonblocking: bool) -> bool:
        decoder = self._decoders[channel]
        try:
            if not channel.receive_into(decoder, nonblocking):
                return False
            self._serve_decoded(channel, decoder)
        except (ProtocolError, ConnectionError):
            return False
        return True

    def _serve_decoded(self, channel: Channel, decoder: FrameDecoder) -> None:
        """Answer the requests decoded so far, in order, until an answer cannot go out
        whole (the rest wait in the decoder until the line's outbox drains) or, on a
        peer line, until the line has had its turn (the rest wait for the next one)."""
        if channel is self.primary:
            while (message := decoder.next_message()) is not None:
                if type(message) is Request:
                    self._answer(channel, message)
            return
        outboxes = self._outboxes
        for _ in range(PEER_TURN):
            if channel in outboxes or (message := decoder.next_message()) is None:
                return
            if type(message) is Request:
                self._parent_first()
                self._answer(channel, message)
        if channel not in outboxes:
            self._backlog.add(channel)

    def _serve_backlog(self, channel: Channel) -> bool:
        self._backlog.discard(channel)
        try:
            self._serve_decoded(channel, self._decoders[channel])
        except (ProtocolError, ConnectionError):
            return False
        return True

    def _parent_first(self) -> None:
        """Serve what the parent has sent, if anything, before a peer's next answer."""
        if self._parent_gone or not self._parent_poll.poll(0):
            return
        if not self._serve_one_read(self.primary, nonblocking=True):
            self._parent_gone = True  # serve_forever returns at its next step

    def _answer(self, channel: Channel, request: Request) -> None:
        result: Any = None
        encoder = self._encoders.get(channel) if self._encoders else None
        try:
            result = self._handler(request.method, request.params, channel)
            if encoder is None:
                data, fds = _wire.encode_response(
                    request.msgid, None, result, method=request.method
                )
            else:
                data, fds = encoder(request.msgid, None, result, request.method)
        except Exception as exc:  # the caller gets it as data; SystemExit ends the process
            if encoder is None:
                data, fds = _wire.encode_response(request.msgid, _wire.encode_error(exc), None)
            else:
                data, fds = encoder(request.msgid, exc, None, request.method)
        if channel is self.primary:
            channel.send(data, fds)
            return
        if not data:
            return  # a notification: no answer
        parts, unsent_fds = channel.send_nowait(frame_parts(data), fds)
        if parts:
            deadline = time.monotonic() + self._drain_timeouts[channel]
            self._outboxes[channel] = _Outbox(parts, unsent_fds, result, deadline)

    def _flush(self, channel: Channel) -> bool:
        """Send more of a peer's outbox; False when the line is to be dropped (its
        deadline passed, or it broke). Once drained, its waiting requests are served."""
        outbox = self._outboxes[channel]
        try:
            outbox.parts, outbox.fds = channel.send_nowait(outbox.parts, outbox.fds)
            if outbox.parts:
                return time.monotonic() < outbox.deadline
            del self._outboxes[channel]
            self._serve_decoded(channel, self._decoders[channel])
        except (ProtocolError, ConnectionError):
            return False
        return True

    def _drop(self, channel: Channel) -> None:
        self._outboxes.pop(channel, None)
        self._backlog.discard(channel)
        self._drain_timeouts.pop(channel, None)
        self._encoders.pop(channel, None)
        self._decoders.pop(channel).close()
        channel.close()  # frees its slot in the channel block


def _milliseconds(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000) + 1
