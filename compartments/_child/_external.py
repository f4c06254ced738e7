"""Inside a served compartment: the line of one external client (see ``_serve``).

A client of ``compartments.serve()`` speaks plain msgpack-RPC (``docs/wire.md``) on a
socket the parent accepted and handed over with ``$attach``. Its line may do no more
than the parent's and less than a peer's:

- a request's params are the positional arguments (``[0, id, "add", [1, 2]]``); keyword
  arguments ride in a fifth element (``[0, id, "f", [1], {"k": 2}]``), an extension;
- a notification (``[2, method, params]``) is run and not answered;
- no fds (SCM_RIGHTS) and no extension type of ours (fds, PeerRefs, memfds, trailing
  bytes): the first one drops the line, its fds closed unread;
- answers are plain msgpack (bytes as bin, never trailing bytes or fds), and an error
  carries its type and message only; the traceback, which names host paths, goes to
  the parent's logging (``compartments.remote.<name>``) unless the server opted in.

The parent keeps a copy of the socket and the read end of a pipe whose write end this
line holds: closing the line closes the pipe, and the parent then shuts the socket down,
so the client sees the end of its line even though the parent's copy keeps it open.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NoReturn

import msgpack

from .._wire import _frames
from .._wire._channel import Channel
from .._wire._decoder import FrameDecoder
from .._wire._fd import Fd
from .._wire._frames import NOTIFICATION, REQUEST, FrameBytes, Message, Notification, Request
from .._wire._remote_errors import a_type

__all__ = ["NOTIFIED", "ExternalChannel", "ExternalDecoder", "ExternalEncoder", "LineOptions"]

#: The msgid a notification is served under: it gets no answer.
NOTIFIED = -1
#: The most keyword arguments one request may name.
_MAX_KWARGS = 256

log = logging.getLogger("compartments.served")


class LineOptions:
    """What the parent's ``$attach`` says about a served client's line, checked."""

    __slots__ = ("drain_timeout", "max_message", "sentinel", "tracebacks")

    def __init__(self, data: object, ceiling: int) -> None:
        if type(data) is not dict:
            raise TypeError(f"$attach options must be a map, got {a_type(data)}")
        sentinel, max_message = data.get("sentinel"), data.get("max_message")
        tracebacks, drain = data.get("tracebacks"), data.get("drain_timeout")
        if not isinstance(sentinel, Fd):
            raise TypeError("$attach options need a `sentinel` Fd")
        if type(max_message) is not int or max_message < 64:
            raise TypeError("$attach options need an int `max_message` of at least 64")
        if type(tracebacks) is not bool or not isinstance(drain, (int, float)) or drain <= 0:
            raise TypeError("$attach options need a bool `tracebacks`, a `drain_timeout` > 0")
        self.sentinel = sentinel
        self.max_message = min(max_message, ceiling)
        self.tracebacks = tracebacks
        self.drain_timeout = float(drain)


class ExternalChannel(Channel):
    """A client's line: closing it also closes the pipe end the parent watches."""

    sentinel: Fd | None = None

    def close(self) -> None:
        super().close()
        sentinel, self.sentinel = self.sentinel, None
        if sentinel is not None:
            sentinel.close()


class ExternalDecoder(FrameDecoder):
    """A hostile client's frames, turned into the ``[args, kwargs]`` requests the
    compartment serves; anything outside plain msgpack-RPC breaks the line."""

    def __init__(self, *, max_message: int, name: str, function: str | None) -> None:
        super().__init__(max_message=max_message, name=name)
        self._function = function  # a function compartment answers its own name too

    def _accept_fds(self, size: int, fds: Sequence[int]) -> None:
        for fd in fds:
            Fd._adopt(fd).close()  # unread, never lingering
        raise self._fail(f"{len(fds)} fd(s) (SCM_RIGHTS); a served client may send none")

    def _decode_ext(self, code: int, payload: bytes) -> NoReturn:
        raise self._fail(
            f"extension type {code}; a served client may send no extension types but "
            "the timestamp (-1)"
        )

    def _as_message(self, obj: Any) -> Message:
        if type(obj) is list and len(obj) == 5 and obj[0] == REQUEST and type(obj[0]) is int:
            kwargs = obj.pop()
            if (
                type(kwargs) is not dict
                or len(kwargs) > _MAX_KWARGS
                or not all(type(key) is str for key in kwargs)
            ):
                raise self._fail(
                    f"the keyword arguments (5th element) must be a map of at most "
                    f"{_MAX_KWARGS} str keys, got {a_type(kwargs)}"
                )
        else:
            kwargs = {}
        message = super()._as_message(obj)
        if type(message) is Request:
            msgid, method, params = message.msgid, message.method, message.params
        elif type(message) is Notification and obj[0] == NOTIFICATION:
            msgid, method, params = NOTIFIED, message.method, message.params
        else:
            raise self._fail("a response; a served client may only send requests")
        if method == self._function:
            method = "__call__"
        request: Message = Request(msgid, method, [params, kwargs])
        return request


class ExternalEncoder:
    """Answers a client can read with any msgpack library: no extension types, no fds,
    an error as ``{"type", "message"}`` (and ``"traceback"`` only if opted in)."""

    def __init__(self, name: str, options: LineOptions) -> None:
        self._name = name
        self._max_message = options.max_message
        self._tracebacks = options.tracebacks
        self._packer = _packer  # one for every line: the server answers one at a time

    def __call__(
        self, msgid: int, exc: Exception | None, result: Any, method: str
    ) -> tuple[FrameBytes, list[int]]:
        if msgid == NOTIFIED:
            if exc is not None:
                self._log(method, exc, "notification")
            return b"", []
        if exc is None:
            data: bytes = self._packer.pack([_frames.RESPONSE, msgid, None, result])
            if len(data) > self._max_message:
                raise ValueError(
                    f"the result of `{method}` is {len(data)} bytes encoded; a served "
                    f"client gets at most {self._max_message}"
                )
            return data, []
        full = _frames.encode_error(exc)
        error = {"type": full["type"], "message": full["message"]}
        if self._tracebacks:
            error["traceback"] = full["traceback"]
        else:
            self._log(method, exc, "call")
        data = self._packer.pack([_frames.RESPONSE, msgid, error, None])
        if len(data) > self._max_message:  # a huge message: keep its type and a start
            error["message"] = error["message"][: self._max_message // 8]
            error.pop("traceback", None)
            data = self._packer.pack([_frames.RESPONSE, msgid, error, None])
        return data, []

    def _log(self, method: str, exc: Exception, what: str) -> None:
        log.info("%s `%s` from served client %s raised", what, method, self._name, exc_info=exc)


def _refuse(value: object) -> NoReturn:
    raise TypeError(
        f"{a_type(value)} cannot be sent to a served client: plain msgpack values only "
        "(None, bool, int, float, str, bytes, list, tuple, dict), never an Fd"
    )


_packer = msgpack.Packer(use_bin_type=True, datetime=False, default=_refuse)
