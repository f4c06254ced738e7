"""``python -m examples.ipc_db_server [--serve [--port N] [--data-dir DIR] | --show-policy]``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .board import Board, data_directory, run_demo, show_policies


def serve(port: int, data_dir: str | None) -> int:
    """Keep the board up until SIGINT or SIGTERM, then shut every compartment down."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    with data_directory(data_dir) as directory, Board(
        directory, port=port, access_log=True
    ) as board:
        kept = "kept" if data_dir is not None else "deleted at exit"
        print(f"data in {directory} ({kept})", flush=True)
        print(f"serving on {board.url}", flush=True)
        stop.wait()
        print("shutting down", flush=True)
    print("stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.ipc_db_server",
        description="A message board made of sealed compartments.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--serve", action="store_true", help="keep the board up until Ctrl-C")
    mode.add_argument(
        "--show-policy", action="store_true", help="print every compartment's allowed syscalls"
    )
    parser.add_argument("--port", type=int, default=8080, help="--serve: port (0: any free one)")
    parser.add_argument("--data-dir", help="keep the database here (default: a temporary dir)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0 to 65535")
    if args.serve:
        return serve(args.port, args.data_dir)
    if args.show_policy:
        return show_policies(sys.stdout)
    return run_demo(sys.stdout, args.data_dir)


if __name__ == "__main__":
    sys.exit(main())
