"""A small real workload for learn-mode tests: read a file, connect over TCP, sleep."""

from __future__ import annotations

import socket
import time


def workload(path: str, port: int) -> int:
    with open(path, "rb") as handle:
        data = handle.read()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"ping")
    time.sleep(0.01)
    return len(data)
