"""A msgpack-RPC client for ``compartments.serve()``, with only ``msgpack`` and ``socket``.

It never imports compartments: it is what another Python program would write. Run as a
script it makes the calls given as JSON and prints each answer as a JSON line, e.g.
``python serve_client.py SOCKET '["add", [1, 2]]'`` prints ``{"result": 3}``.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any

import msgpack


class Client:
    """One connection; ``call`` sends ``[0, id, method, params]`` and waits for its answer."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.next_id = 0

    def send(self, message: list[Any]) -> None:
        self.sock.sendall(msgpack.packb(message, use_bin_type=True))

    def receive(self) -> Any:
        """The next message, or None at the end of the line."""
        while True:
            for message in self.unpacker:
                return message
            data = self.sock.recv(65536)
            if not data:
                return None
            self.unpacker.feed(data)

    def request(self, method: str, params: list[Any], kwargs: dict[str, Any] | None = None) -> Any:
        self.next_id += 1
        message: list[Any] = [0, self.next_id, method, params]
        if kwargs is not None:
            message.append(kwargs)
        self.send(message)
        answer = self.receive()
        if answer is None:
            raise ConnectionResetError("the server ended the line")
        kind, msgid, error, result = answer
        assert kind == 1 and msgid == self.next_id, answer
        return error, result

    def call(self, method: str, *params: Any, **kwargs: Any) -> Any:
        error, result = self.request(method, list(params), kwargs or None)
        if error is not None:
            raise RuntimeError(f"{error['type']}: {error['message']}")
        return result

    def ended(self) -> bool:
        """True when the server has ended the line (EOF, or a reset)."""
        try:
            return self.receive() is None
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main(argv: list[str]) -> int:
    assert "compartments" not in sys.modules  # what any other program would have
    with Client(argv[1]) as client:
        for spec in argv[2:]:
            method, params = json.loads(spec)
            error, result = client.request(method, params)
            answer = {"error": error} if error is not None else {"result": result}
            print(json.dumps(answer), flush=True)
    return 0


def wait_for(condition: Any, timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv))
