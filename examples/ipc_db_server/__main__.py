"""``python -m examples.ipc_db_server [--serve [--port N] [--data-dir DIR] [--access-log]
[--read-socket PATH] | --show-policy]``."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from types import FrameType

from .board import HOST, Board, data_directory, run_demo, show_policies

PROG = "python -m examples.ipc_db_server"


def serve(
    port: int, data_dir: str | None, access_log: bool = False, read_socket: str | None = None
) -> int:
    """Keep the board up until SIGINT or SIGTERM, then shut every compartment down; its
    read API is served to other processes on ``read_socket`` (default: in the data dir).

    The access log (one line per request) is off unless asked for: under load it would
    be thousands of lines a second. A port that cannot be bound is one line, exit 1."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    with data_directory(data_dir) as directory:
        socket_path = read_socket or os.path.join(directory, "board.sock")
        try:
            board = Board(directory, port=port, access_log=access_log, read_socket=socket_path)
        except FileExistsError as exc:  # the read API's socket path, not the port
            print(f"{PROG}: cannot serve the read API on {socket_path}: {exc.strerror}",
                  file=sys.stderr, flush=True)  # fmt: skip
            return 1
        except OSError as exc:
            print(f"{PROG}: {_cannot_serve(port, exc)}", file=sys.stderr, flush=True)
            return 1
        with board:
            kept = "kept" if data_dir is not None else "deleted at exit"
            print(f"data in {directory} ({kept})", flush=True)
            print(f"serving on {board.url}", flush=True)
            print(f"read API (msgpack-RPC: count(), latest(n)) on {socket_path}", flush=True)
            stop.wait()
            print("shutting down", flush=True)
    print("stopped", flush=True)
    return 0


def _cannot_serve(port: int, exc: OSError) -> str:
    where = f"{HOST}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot serve on {where}: the port is in use (choose another with --port)"
    if exc.errno == errno.EACCES:
        return f"cannot serve on {where}: permission denied (ports below 1024 need root)"
    return f"cannot serve on {where}: {exc.strerror or exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A message board made of sealed compartments.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--serve", action="store_true", help="keep the board up until Ctrl-C")
    mode.add_argument(
        "--show-policy", action="store_true", help="print every compartment's allowed syscalls"
    )
    parser.add_argument("--port", type=int, default=8080, help="--serve: port (0: any free one)")
    parser.add_argument("--data-dir", help="keep the database here (default: a temporary dir)")
    parser.add_argument(
        "--access-log", action="store_true", help="--serve: print one line per request"
    )
    parser.add_argument(
        "--read-socket", help="--serve: the read API's unix socket (default: DATA_DIR/board.sock)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0 to 65535")
    if args.serve:
        return serve(args.port, args.data_dir, args.access_log, args.read_socket)
    if args.show_policy:
        return show_policies(sys.stdout)
    return run_demo(sys.stdout, args.data_dir)


if __name__ == "__main__":
    sys.exit(main())
