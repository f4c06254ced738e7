"""The board's read API for other processes: a sealed compartment served on a unix socket.

``compartments.serve(reader, path)`` hands each connecting process (of the same uid) its
own direct line to this compartment, in plain msgpack-RPC: any language's msgpack
library is a client. It offers reads only, and holds nothing but a direct line to the
Database: no file, no socket of its own, no syscall beyond the runtime's.
"""

from __future__ import annotations

from typing import Any

from compartments import compartment
from compartments.rulesets import SystemIO

__all__ = ["MAX_LATEST", "READ_ONE_LINER", "BoardReader"]

MAX_LATEST = 100
#: What a second process needs to read the board: Python with msgpack, nothing else.
READ_ONE_LINER = (
    "import msgpack,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
    "s.sendall(msgpack.packb([0,1,'latest',[10]])); print(msgpack.unpackb(s.recv(1<<16))[3])"
)


@compartment(rules=[SystemIO.nothing()], name="BoardReader")
class BoardReader:
    """``count()`` and ``latest(n)`` (newest first, at most :data:`MAX_LATEST`), read
    from the Database over a direct line."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def count(self) -> int:
        return int(self._db.count())

    def latest(self, limit: int = 10) -> list[str]:
        if type(limit) is not int or not 0 <= limit <= MAX_LATEST:
            raise ValueError(f"limit must be an int in 0..{MAX_LATEST}, got {limit!r}")
        return [str(message) for message in self._db.latest(limit)]
