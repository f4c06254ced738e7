"""A message board made of sealed compartments: extrasafe's ipc_server_with_database.

Five processes, each sealed by its own seccomp policy before it touches untrusted input:

* :class:`~.database.Database` opens the SQLite file (WAL) and then may only read, write,
  lock and sync the three fds it holds: no open, no socket, no exec.
* :class:`~.webserver.WebServer` binds 127.0.0.1 and then may only accept, receive and
  send on sockets it has, plus call the Database over a direct channel.
* :class:`~.client.WriteClient` / :class:`~.client.ReadClient` may only start TCP clients.

``python -m examples.ipc_db_server`` runs the demo; ``--serve`` keeps the board up
(``--access-log`` prints one line per request); ``--show-policy`` prints every
compartment's allowed syscalls. ``GET /read`` is every message, one per line, escaped as
:mod:`.lines` says; ``GET /`` the newest first.
"""

from .board import Board, run_demo
from .client import ReadClient, WriteClient, http_request
from .database import Database, SQLiteDatabase, database_rules
from .webserver import WEB_SERVER_RULES, BoardWebServer, WebServer

__all__ = [
    "WEB_SERVER_RULES",
    "Board",
    "BoardWebServer",
    "Database",
    "ReadClient",
    "SQLiteDatabase",
    "WebServer",
    "WriteClient",
    "database_rules",
    "http_request",
    "run_demo",
]
