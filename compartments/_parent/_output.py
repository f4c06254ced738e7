"""What compartments and zygotes print, relayed to the parent's own stdout and stderr.

No compartment holds the parent's stdio file descriptions: a shared capture file could be
read or rewritten through fd 1 (``mmap``, ``pread``), ``F_SETFL`` on a shared stderr
changes how the parent's own writes behave, and a shared terminal takes TIOCSTI. Each
process gets its own stdout and stderr pipes instead; the parent keeps the read ends and
one relay thread drains them all (``poll``, non-blocking reads) and writes each complete
line to the parent's ``sys.stdout`` / ``sys.stderr`` as ``[name] line``, every control
character escaped.

Bounded in every direction, since the writer may be hostile: a line longer than
:data:`LINE_CAP` bytes is cut (saying how much); a compartment that prints more than
:data:`BYTES_PER_SECOND` or :data:`LINES_PER_SECOND` has the excess dropped, counted and
reported once the flood has stopped for a second, while its pipes are read (and
dropped) at most every :data:`DROP_INTERVAL`; what waits to be written is capped. Only
the relay thread writes to the parent's streams, so a slow terminal never blocks a caller.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from collections import deque
from typing import TextIO

from .._child._stdio import BYTES_PER_SECOND
from .._text import printable

__all__ = [
    "BYTES_PER_SECOND",
    "LINES_PER_SECOND",
    "LINE_CAP",
    "Outputs",
    "outputs",
    "parent_stdout_is_a_terminal",
    "relay",
]

#: The longest line relayed whole, in bytes; the rest of it is counted, not shown.
LINE_CAP = 4096
#: What one compartment may print per second (stdout and stderr together): bytes (the
#: budget its ``$out`` stream keeps too), and lines, since each relayed line costs the
#: parent a little work of its own.
LINES_PER_SECOND = 2000
#: While over its budget, a compartment's pipes are drained (and dropped) this seldom.
DROP_INTERVAL = 0.02
#: A flood is over once nothing was dropped for this long; then it is reported.
QUIET_AFTER_FLOOD = 1.0
#: What one read takes, and what one drain takes from a pipe before serving the others.
_READ_SIZE = 64 * 1024
_DRAIN_LIMIT = 4 * _READ_SIZE
#: Escaped text waiting for the relay thread to write it, at most.
MAX_PENDING_CHARS = 4 << 20


class _Source:
    """One process's output: its name, its budget, and what was dropped."""

    def __init__(self, name: str) -> None:
        self.prefix = f"[{printable(name, 200)}] "
        self.window_start = time.monotonic()
        self.window_bytes = 0
        self.window_lines = 0
        self.paused_until = 0.0
        self.dropped_bytes = 0
        self.dropped_lines = 0
        self.last_drop = 0.0
        self.open_streams = 2

    def budget(self, now: float) -> int:
        """Bytes this source may still have relayed in the current second."""
        if now - self.window_start >= 1.0:
            self.window_start, self.window_bytes, self.window_lines = now, 0, 0
        return max(BYTES_PER_SECOND - self.window_bytes, 0)

    def drop(self, data: memoryview, now: float) -> None:
        self.dropped_bytes += len(data)
        self.dropped_lines += bytes(data).count(b"\n")
        self.last_drop = now
        self.paused_until = now + DROP_INTERVAL

    def drop_report(self) -> str | None:
        if not self.dropped_bytes:
            return None
        report = (
            f"{self.prefix}[output over its budget of {BYTES_PER_SECOND} bytes and "
            f"{LINES_PER_SECOND} lines a second: dropped {self.dropped_bytes} bytes, "
            f"{self.dropped_lines} lines]\n"
        )
        self.dropped_bytes = self.dropped_lines = 0
        return report


class _Stream:
    """One pipe's read end and the line being assembled from it."""

    def __init__(self, fd: int, source: _Source, to_stderr: bool) -> None:
        self.fd = fd
        self.source = source
        self.to_stderr = to_stderr
        self.line = bytearray()
        self.cut = 0  # bytes of the current line beyond LINE_CAP
        self.skipping = False  # a flood dropped the start of the current line


class Outputs:
    """The two pipes of one process: write ends to hand over, read ends the relay owns."""

    def __init__(self, relay: _Relay, name: str) -> None:
        self._relay = relay
        out_r, self.stdout_w = os.pipe2(os.O_CLOEXEC)
        err_r, self.stderr_w = os.pipe2(os.O_CLOEXEC)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        source = _Source(name)
        self._streams = (_Stream(out_r, source, False), _Stream(err_r, source, True))
        # What a compartment sends on its channel instead (see ``_stdio``): no fd.
        self._injected = (_Stream(-1, source, False), _Stream(-1, source, True))
        relay.register(self._streams)

    def inject(self, to_stderr: bool, data: bytes, dropped: int = 0) -> None:
        """Relay ``data`` as if read from the process's stdout or stderr pipe, within the
        same budget; ``dropped`` bytes were dropped on the way and are reported too."""
        self._relay.inject(self._injected[to_stderr], data, dropped)

    def close_write_ends(self) -> None:
        """Once the child holds them, the parent's copies would only keep EOF away."""
        for attr in ("stdout_w", "stderr_w"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def retire(self) -> None:
        """The process is gone: relay what is left in the pipes, then close them."""
        self.close_write_ends()
        self._relay.retire(self._streams, self._injected)


class _Relay:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._sources: set[_Source] = set()
        self._pending: deque[tuple[bool, str]] = deque()
        self._pending_chars = 0
        self._overflow_lines = 0
        self._written = threading.Condition(threading.Lock())
        self._queued_seq = 0
        self._written_seq = 0
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._buffer = bytearray(_READ_SIZE)

    # -- called by the parent's threads --------------------------------------------------

    def register(self, streams: tuple[_Stream, ...]) -> None:
        with self._lock:
            for stream in streams:
                self._streams[stream.fd] = stream
            self._sources.add(streams[0].source)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="compartments-output", daemon=True
                )
                self._thread.start()
        self._wake()

    def retire(self, streams: tuple[_Stream, ...], injected: tuple[_Stream, ...] = ()) -> None:
        """Drain (bounded) and close now, in the caller's thread: only the relay thread
        writes, but only this one closes, so an fd number is never read after reuse."""
        with self._lock:
            now = time.monotonic()
            for stream in injected:  # a last line without its newline
                if (stream.line or stream.cut) and not stream.skipping:
                    self._emit(stream)
                stream.line.clear()
            for stream in streams:
                if stream.fd >= 0 and self._streams.get(stream.fd) is stream:
                    self._drain(stream, now, final=True)
        self._wake()

    def inject(self, stream: _Stream, data: bytes, dropped: int) -> None:
        with self._lock:
            now = time.monotonic()
            source = stream.source
            if dropped:
                source.dropped_bytes += dropped
                source.last_drop = now
            if data:
                self._take(stream, memoryview(data), now)
        self._wake()

    def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until what was read so far has been written."""
        with self._lock:
            target = self._queued_seq
        deadline = time.monotonic() + timeout
        with self._written:
            while self._written_seq < target and self._thread is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._written.wait(remaining)

    # -- the relay thread ------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    def _run(self) -> None:
        while True:
            try:
                self._relay_once()
            except Exception:  # never let one bad write or read stop the relay
                time.sleep(0.01)

    def _relay_once(self) -> None:
        now = time.monotonic()
        with self._lock:
            watched = [s.fd for s in self._streams.values() if s.source.paused_until <= now]
            timeout = self._next_deadline(now)
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for fd in watched:
            poller.register(fd, select.POLLIN)
        events = poller.poll(None if timeout is None else max(timeout, 0.0) * 1000)
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        with self._lock:
            now = time.monotonic()
            for fd, _ in events:
                stream = self._streams.get(fd)
                if stream is not None and stream.source.paused_until <= now:
                    self._drain(stream, now, final=False)
            for source in self._sources:
                if source.dropped_bytes and now - source.last_drop >= QUIET_AFTER_FLOOD:
                    self._queue(True, source.drop_report())
            batch = list(self._pending)
            self._pending.clear()
            self._pending_chars = 0
            overflow, self._overflow_lines = self._overflow_lines, 0
            seq = self._queued_seq
        if overflow:
            batch.append((True, f"[compartments] {overflow} lines of output dropped\n"))
        self._write(batch)
        with self._written:
            self._written_seq = seq
            self._written.notify_all()

    def _next_deadline(self, now: float) -> float | None:
        """Seconds until a paused source may be read again or a flood report is due."""
        deadlines = [s.paused_until for s in self._sources if s.paused_until > now]
        deadlines += [s.last_drop + QUIET_AFTER_FLOOD for s in self._sources if s.dropped_bytes]
        return min(deadlines) - now if deadlines else None

    @staticmethod
    def _write(batch: list[tuple[bool, str]]) -> None:
        for to_stderr in (False, True):
            text = "".join(line for err, line in batch if err is to_stderr)
            target: TextIO | None = sys.stderr if to_stderr else sys.stdout
            if text and target is not None:
                with contextlib.suppress(Exception):
                    target.write(text)
                    target.flush()

    # -- under the lock ----------------------------------------------------------------------

    def _drain(self, stream: _Stream, now: float, *, final: bool) -> None:
        """Read what is there (up to a bound); at EOF, or when ``final``, close the pipe."""
        view = memoryview(self._buffer)
        eof = False
        taken = 0
        while taken < _DRAIN_LIMIT:
            try:
                size = os.readv(stream.fd, [self._buffer])
            except BlockingIOError:
                break
            except OSError:
                size = 0
            if size == 0:
                eof = True
                break
            taken += size
            self._take(stream, view[:size], now)
        if eof or final:
            self._finish(stream)

    def _take(self, stream: _Stream, data: memoryview, now: float) -> None:
        """Relay the complete lines in ``data`` that fit the budget; drop the rest."""
        source = stream.source
        raw = bytes(data[: source.budget(now)])
        start = 0
        while (end := raw.find(b"\n", start)) >= 0:
            if source.window_lines >= LINES_PER_SECOND:
                break
            self._add(stream, raw[start:end])
            self._end_line(stream)
            start = end + 1
        else:
            self._add(stream, raw[start:])
            start = len(raw)
        source.window_bytes += start
        if start < len(data):  # over budget: drop the rest, and the line it belongs to
            source.drop(data[start:], now)
            source.dropped_bytes += len(stream.line) + stream.cut
            stream.line.clear()
            stream.cut = 0
            stream.skipping = True

    def _end_line(self, stream: _Stream) -> None:
        source = stream.source
        if stream.skipping:  # the rest of a line whose start a flood dropped
            source.dropped_bytes += len(stream.line) + stream.cut
            source.dropped_lines += 1
            stream.skipping = False
        else:
            self._emit(stream)
            source.window_lines += 1
        stream.line.clear()
        stream.cut = 0

    @staticmethod
    def _add(stream: _Stream, part: bytes) -> None:
        room = LINE_CAP - len(stream.line)
        stream.line += part[:room]
        stream.cut += max(len(part) - room, 0)

    def _emit(self, stream: _Stream) -> None:
        text = printable(stream.line.decode("utf-8", "backslashreplace"))
        if stream.cut:
            text += f" [... {stream.cut} more bytes cut]"
        self._queue(stream.to_stderr, f"{stream.source.prefix}{text}\n")

    def _finish(self, stream: _Stream) -> None:
        if (stream.line or stream.cut) and not stream.skipping:
            self._emit(stream)
        stream.line.clear()
        if self._streams.get(stream.fd) is stream:
            del self._streams[stream.fd]
        with contextlib.suppress(OSError):
            os.close(stream.fd)
        stream.fd = -1
        source = stream.source
        source.open_streams -= 1
        if source.open_streams <= 0:
            self._sources.discard(source)
            self._queue(True, source.drop_report())

    def _queue(self, to_stderr: bool, line: str | None) -> None:
        if line is None:
            return
        if self._pending_chars + len(line) > MAX_PENDING_CHARS:
            self._overflow_lines += 1
            return
        self._pending.append((to_stderr, line))
        self._pending_chars += len(line)
        self._queued_seq += 1


_relay: _Relay | None = None
_relay_lock = threading.Lock()


def relay() -> _Relay:
    """The parent's one output relay (its thread starts with the first pipe)."""
    global _relay
    with _relay_lock:
        if _relay is None:
            _relay = _Relay()
        return _relay


def parent_stdout_is_a_terminal() -> bool:
    """Whether a compartment's stdout should be line-buffered, as it would be here."""
    try:
        return sys.stdout is not None and sys.stdout.isatty()
    except (OSError, ValueError):
        return False


def _forget_in_child() -> None:
    """A forked copy of the parent has no relay thread: it starts its own if it needs one."""
    global _relay, _relay_lock
    _relay, _relay_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def outputs(name: str) -> Outputs:
    """Fresh stdout and stderr pipes for the process called ``name``."""
    return Outputs(relay(), name)
