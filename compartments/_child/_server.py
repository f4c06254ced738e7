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

Answers to the parent to requests read together go out together: a reply is held back
for the next one's only while that next request is already decoded and its method ran
quickly (under :data:`QUICK_HANDLER`) the last time it ran, so a held reply waits behind
calls that were quick (a slow one, or one never seen, is not waited for); and up to
:data:`BATCH_REPLIES` replies or :data:`BATCH_BYTES` bytes. A reply carrying fds or
trailing bytes goes out alone (fds travel with the first bytes of their own frame),
after the ones held before it. Order is kept: replies leave in the order their requests
arrived.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from .._wire import _frames
from .._wire._channel import Channel, frame_parts
from .._wire._decoder import FrameDecoder
from .._wire._frames import FrameBytes, Request
from ..errors import ProtocolError

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
#: A method that last ran in less than this many seconds may have the replies before it
#: held back, to go out in one send with its own.
QUICK_HANDLER = 100e-6
#: At most this many replies, and this many bytes of them, go out in one send.
BATCH_REPLIES = 64
BATCH_BYTES = 256 << 10
#: Methods remembered as quick (the parent names them; the set stays bounded).
_MAX_QUICK_METHODS = 1024


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
        self._quick: set[str] = set()  # methods whose last run took under QUICK_HANDLER
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
            self._answer_parent(channel, decoder)
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

    def _answer_parent(self, channel: Channel, decoder: FrameDecoder) -> None:
        """Answer the parent's decoded requests in order, blocking, batching the replies
        of quick calls read together into one send (see the module's docstring)."""
        quick = self._quick
        held: list[bytes] = []
        held_size = 0
        message = decoder.next_message()
        try:
            while message is not None:
                if type(message) is not Request:
                    message = decoder.next_message()
                    continue
                if not held and not decoder.has_ready:  # alone: nothing to hold or to learn
                    self._answer(channel, message)
                    message = decoder.next_message()
                    continue
                method = message.method
                started = perf_counter()
                result, data, fds = self._reply(channel, message)
                if perf_counter() - started < QUICK_HANDLER:
                    if len(quick) < _MAX_QUICK_METHODS:
                        quick.add(method)
                else:
                    quick.discard(method)
                message = decoder.next_message()
                while message is not None and type(message) is not Request:
                    message = decoder.next_message()
                if fds or type(data) is not bytes:
                    if held:
                        batch, held, held_size = held, [], 0
                        channel.send(b"".join(batch))
                    channel.send(data, fds)
                    del result  # it owned the fds until they were sent
                    continue
                held.append(data)
                held_size += len(data)
                if (
                    message is None
                    or message.method not in quick
                    or len(held) >= BATCH_REPLIES
                    or held_size >= BATCH_BYTES
                ):
                    batch, held, held_size = held, [], 0
                    channel.send(batch[0] if len(batch) == 1 else b"".join(batch))
        finally:  # a later frame that broke the protocol: what was answered still goes
            if held:
                channel.send(b"".join(held))

    def _parent_first(self) -> None:
        """Serve what the parent has sent, if anything, before a peer's next answer."""
        if self._parent_gone or not self._parent_poll.poll(0):
            return
        if not self._serve_one_read(self.primary, nonblocking=True):
            self._parent_gone = True  # serve_forever returns at its next step

    def _reply(
        self, channel: Channel, request: Request
    ) -> tuple[Any, _frames.FrameBytes, list[int]]:
        """The result (which owns any fds until they are sent) and the encoded reply (empty
        for a served client's notification)."""
        result: Any = None
        encoder = self._encoders.get(channel) if self._encoders else None
        try:
            result = self._handler(request.method, request.params, channel)
            if encoder is None:
                data, fds = _frames.encode_response(
                    request.msgid, None, result, method=request.method
                )
            else:
                data, fds = encoder(request.msgid, None, result, request.method)
        except Exception as exc:  # the caller gets it as data; SystemExit ends the process
            if encoder is None:
                data, fds = _frames.encode_response(request.msgid, _frames.encode_error(exc), None)
            else:
                data, fds = encoder(request.msgid, exc, None, request.method)
        return result, data, fds

    def _answer(self, channel: Channel, request: Request) -> None:
        result, data, fds = self._reply(channel, request)
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
