"""The Database compartment: SQLite opened before the seal, then only its own fds.

Setup (unrestricted) opens the file, switches it to WAL, creates the table, commits once
so that the ``-wal`` and ``-shm`` files exist and are held open, seeds SQLite's PRNG and
prepares every statement. The seal then grants, for exactly those three fds, what SQLite
really uses (pread64, pwrite64, fdatasync, ftruncate, fstat, fcntl record locks, and a
shared mapping of -shm, the one shared file mapping the seal allows). No
open, no socket, no connect, no exec: a compromised database process can corrupt its own
database, nothing else. Even stdout is closed to it.

Durability: ``synchronous=FULL`` in WAL mode fsyncs the WAL on every commit, so a
``write()`` that returned has survived a crash of any process and a power loss.
(``NORMAL`` in WAL mode would survive the crash of any process, the kernel holding the
written pages, but could lose the last commits on power loss; one fdatasync per message
is cheap for a message board, so we take FULL.)
"""

from __future__ import annotations

import builtins
import fcntl
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from compartments import Arg, RuleSet, SeccompRule, compartment
from compartments.rulesets import SystemIO

__all__ = [
    "DB_FILENAME",
    "MAX_LATEST",
    "MAX_MESSAGE_CHARS",
    "Database",
    "SQLiteDatabase",
    "SQLiteFiles",
    "database_rules",
    "database_rules_for",
]

DB_FILENAME = "board.db"
#: The database refuses longer messages whoever sends them (the web server is untrusted).
MAX_MESSAGE_CHARS = 64 * 1024

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)"
)
_INSERT = "INSERT INTO messages (body) VALUES (?)"
_SELECT = "SELECT body FROM messages ORDER BY id"
_LATEST = "SELECT body FROM messages ORDER BY id DESC LIMIT ?"
_COUNT = "SELECT count(*) FROM messages"
#: The most messages one ``latest()`` call returns, whatever the caller asks.
MAX_LATEST = 1000
_FILES = {"db": "", "wal": "-wal", "shm": "-shm"}


class SQLiteDatabase:
    """The logic, usable in-process; :class:`Database` is this class, sealed."""

    def __init__(self, data_dir: str) -> None:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        self.path = os.path.realpath(os.path.join(data_dir, DB_FILENAME))
        # autocommit mode: every statement is its own transaction unless we BEGIN.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA temp_store=MEMORY")  # sorting never needs a temp file
        self._db.execute(_SCHEMA)
        # A write transaction creates -wal and -shm now and syncs the directory entry of a
        # new WAL (SQLite opens the directory for that: impossible once sealed). It also
        # seeds SQLite's PRNG (WAL salts) from /dev/urandom while open() still works.
        with self._transaction():
            self._db.execute("SELECT randomblob(16)").fetchone()
            self._db.execute("PRAGMA user_version = 1")  # a write, of the header only
        for statement, params in ((_SELECT, ()), (_LATEST, (1,)), (_COUNT, ())):
            self._db.execute(statement, params).fetchall()  # prepared and cached from now on
        #: name ("db", "wal", "shm") -> fd number, found before the seal
        self.files: dict[str, int] = _find_fds(self.path)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def write(self, message: str) -> None:
        """Store one message; returns once it is committed and synced."""
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, got {type(message).__name__}")
        if len(message) > MAX_MESSAGE_CHARS:
            raise ValueError(f"message longer than {MAX_MESSAGE_CHARS} characters")
        with self._transaction():
            self._db.execute(_INSERT, (message,))

    def count(self) -> int:
        return int(self._db.execute(_COUNT).fetchone()[0])

    def latest(self, limit: int) -> builtins.list[str]:
        """The newest ``limit`` messages (at most :data:`MAX_LATEST`), newest first."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"limit must be a non-negative int, got {limit!r}")
        rows = self._db.execute(_LATEST, (min(limit, MAX_LATEST),))
        return [row[0] for row in rows]

    def held_files(self) -> dict[str, int]:
        """The fds the seal grants, by role."""
        return dict(self.files)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate the WAL to zero bytes."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        """Checkpoint, and leave the connection to the process exit.

        sqlite3_close() first stats the database *path* to see whether the file was
        moved, which the seal denies (no path access at all); SQLite then skips its
        close-time checkpoint and WAL deletion anyway. Checkpointing here and letting the
        exit drop the fds and locks leaves the same files, without a denied syscall:
        an empty WAL and the -shm index, both reused by the next open.
        """
        self.checkpoint()

    def list(self) -> builtins.list[str]:
        """Every message, in insertion order."""
        return [row[0] for row in self._db.execute(_SELECT)]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the commit is the durability point."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _find_fds(path: str) -> dict[str, int]:
    """The fds SQLite holds on the database, its WAL and its shared-memory index."""
    wanted = {path + suffix: role for role, suffix in _FILES.items()}
    found: dict[str, int] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own fd
            continue
        role = wanted.get(target)
        if role is not None:
            found[role] = int(name)
    missing = sorted(set(_FILES) - set(found))
    if missing:
        raise RuntimeError(f"SQLite does not hold {', '.join(missing)} open for {path}")
    return found


# -- the policy -------------------------------------------------------------------------


_AT_EMPTY_PATH = 0x1000
#: What SQLite's unix VFS does with an open database, WAL and -shm, found by tracing a
#: workload with auto-checkpoints, a WAL held open by a reader (so -shm grows) and
#: 60 KB messages: positioned reads and writes, data syncs (fsync where fdatasync is
#: missing), ftruncate (checkpoints size the database file, TRUNCATE empties the WAL),
#: fstat (glibc >= 2.33 issues newfstatat(fd, "", AT_EMPTY_PATH)), POSIX record locks.
#: SQLite maps -shm MAP_SHARED (and maps more of it as it grows, after the seal): the base
#: set maps files MAP_PRIVATE only, so -shm gets SystemIO.allow_shared_mapping(), on that
#: one fd, which SQLite writes anyway. No read/write/lseek: SQLite uses pread64/pwrite64.
SQLITE_FD_SYSCALLS = ("pread64", "pwrite64", "fdatasync", "fsync", "ftruncate", "fstat")


@dataclass(frozen=True)
class SQLiteFiles:
    """The syscalls SQLite needs on its already-open files, each bound to those fds.

    fcntl is limited to F_GETLK/F_SETLK (no F_DUPFD: no new fds), newfstatat to the
    fd-only form. Nothing here takes a path.
    """

    fds: tuple[int, ...]
    name: str = "SQLiteFiles"

    def simple_rules(self) -> Sequence[str]:
        return ()

    def conditional_rules(self) -> Mapping[str, Sequence[SeccompRule]]:
        def on(syscall: str, fd: int) -> SeccompRule:
            return SeccompRule(syscall).and_condition(Arg(0, bits=32) == fd)

        table: dict[str, list[SeccompRule]] = {
            syscall: [on(syscall, fd) for fd in self.fds] for syscall in SQLITE_FD_SYSCALLS
        }
        table["newfstatat"] = [
            on("newfstatat", fd).and_condition(Arg(3) & _AT_EMPTY_PATH == _AT_EMPTY_PATH)
            for fd in self.fds
        ]
        table["fcntl"] = [
            on("fcntl", fd).and_condition(Arg(1, bits=32) == command)
            for fd in self.fds
            for command in (fcntl.F_GETLK, fcntl.F_SETLK)
        ]
        return table


def database_rules(db: SQLiteDatabase) -> list[RuleSet]:
    """The Database's seal, built from the fds its setup found (a callable ``rules=``)."""
    return database_rules_for(db.files)


def database_rules_for(files: Mapping[str, int]) -> list[RuleSet]:
    """SystemIO grants only the shared mapping of -shm (no open, no other fd); SQLiteFiles
    the fds SQLite holds."""
    return [
        SystemIO.nothing().allow_shared_mapping(files["shm"]),
        SQLiteFiles(tuple(sorted(files.values()))),
    ]


@compartment(rules=database_rules, name="Database")
class Database(SQLiteDatabase):
    """SQLite in its own process: ``write(msg)``, ``list()``, ``latest(n)``, ``count()``;
    no open, socket or exec."""
