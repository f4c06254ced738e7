"""The child's answers to the parent: quick calls read together leave in one send, in
order; a reply never waits behind a slow or unknown call, nor goes with another's fds."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from compartments._child import _server
from compartments._child._server import Server
from compartments._wire._channel import Channel, socketpair
from compartments._wire._decoder import FrameDecoder
from compartments._wire._frames import Fd, Response, encode_request


class _Sends:
    """The primary channel's sends, counted (each is one frame or one batch of them)."""

    def __init__(self, channel: Channel) -> None:
        self.count = 0
        self._send = channel.send

        def counted(*args: Any, **kwargs: Any) -> None:
            self.count += 1
            self._send(*args, **kwargs)

        channel.send = counted  # type: ignore[method-assign]


def _handler(method: str, params: list[Any], channel: Channel) -> Any:
    if method == "nap":
        time.sleep(params[0])
    if method == "fd":
        return Fd(os.open(os.devnull, os.O_RDONLY))
    return method


@pytest.fixture
def line(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Channel, Channel, Server]]:
    """A server on one end of a socketpair, the test on the other. "Quick" is widened to
    50 ms: a loaded machine stretches a 1 us ``ping`` past the real 100 us now and then,
    and which calls count as quick, not that figure, is what these tests check (a
    ``nap`` of 0.2 s is slow under either)."""
    monkeypatch.setattr(_server, "QUICK_HANDLER", 0.05)
    parent, child = socketpair()
    yield parent, child, Server(child, _handler, max_message=1 << 20)
    parent.close()
    child.close()


def _write(parent: Channel, methods: list[str], params: list[Any] | None = None) -> None:
    frames = b"".join(
        bytes(encode_request(msgid, method, params or [])[0])
        for msgid, method in enumerate(methods, 1)
    )
    parent.send(frames)


def _replies(parent: Channel, count: int) -> list[Response]:
    decoder = FrameDecoder(name="child")
    replies: list[Any] = []
    while len(replies) < count:
        assert parent.receive_into(decoder)
        replies += list(decoder)
    for reply in replies:
        if isinstance(reply.result, Fd):
            reply.result.close()
    return replies


def _serve_once(child: Channel, server: Server) -> None:
    assert server._serve_one_read(child, nonblocking=False)


def _learn(parent: Channel, child: Channel, server: Server, *methods: str) -> None:
    """Run each method once alone, so the server knows how long it takes."""
    for method in methods:
        _write(parent, [method], [0.2] if method == "nap" else None)
        _serve_once(child, server)
        _replies(parent, 1)


def test_replies_to_quick_calls_read_together_leave_in_one_send(
    line: tuple[Channel, Channel, Server],
) -> None:
    parent, child, server = line
    _learn(parent, child, server, "ping")
    sends = _Sends(child)
    _write(parent, ["ping"] * 20)
    _serve_once(child, server)
    assert sends.count == 1
    assert [reply.msgid for reply in _replies(parent, 20)] == list(range(1, 21))


def test_a_batch_holds_at_most_batch_replies(line: tuple[Channel, Channel, Server]) -> None:
    parent, child, server = line
    _learn(parent, child, server, "ping")
    sends = _Sends(child)
    _write(parent, ["ping"] * (2 * _server.BATCH_REPLIES))
    _serve_once(child, server)
    assert sends.count == 2
    assert len(_replies(parent, 2 * _server.BATCH_REPLIES)) == 2 * _server.BATCH_REPLIES


@pytest.mark.timeout(30)
def test_a_reply_is_sent_before_a_slow_call_runs(line: tuple[Channel, Channel, Server]) -> None:
    parent, child, server = line
    _learn(parent, child, server, "ping", "nap")
    sends = _Sends(child)
    _write(parent, ["ping", "nap"], [0.2])
    _serve_once(child, server)
    assert sends.count == 2


@pytest.mark.timeout(30)
def test_a_reply_is_sent_before_a_call_never_seen_runs(
    line: tuple[Channel, Channel, Server],
) -> None:
    parent, child, server = line
    _learn(parent, child, server, "ping")
    sends = _Sends(child)
    _write(parent, ["ping", "fresh"])
    _serve_once(child, server)
    assert sends.count == 2


def test_a_reply_with_fds_goes_alone_after_the_held_ones(
    line: tuple[Channel, Channel, Server],
) -> None:
    parent, child, server = line
    _learn(parent, child, server, "ping", "fd")
    sends = _Sends(child)
    _write(parent, ["ping", "ping", "fd", "ping"])
    _serve_once(child, server)
    assert sends.count == 3  # the two pings, the fd alone, the last ping
    replies = _replies(parent, 4)
    assert [reply.msgid for reply in replies] == [1, 2, 3, 4]
