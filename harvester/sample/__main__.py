"""``python -m harvester.sample``: run the sample publisher in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from types import FrameType

from harvester.sample.dataset import DEFAULT_MIX, MIXES
from harvester.sample.server import SamplePublisher


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m harvester.sample",
        description="Serve generated imin-Firehose-like RPDE feeds until SIGTERM/SIGINT.",
    )
    parser.add_argument("--items", type=int, default=2_000, help="total items (default 2000)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    parser.add_argument("--page-size", type=int, default=500, help="default 500")
    parser.add_argument("--seed", type=int, default=1, help="default 1")
    parser.add_argument(
        "--mix",
        choices=tuple(MIXES),
        default=DEFAULT_MIX,
        help="how the items split over the feeds: balanced (~3:45:2:50 series, sessions, "
        "facility uses, slots; the default) or firehose (~4:80:1:15, like imin's Firehose)",
    )
    parser.add_argument("--page-max-age", type=int, default=3600, help="default 3600 s")
    parser.add_argument("--last-page-max-age", type=int, default=8, help="default 8 s")
    parser.add_argument(
        "--now",
        type=parse_now,
        default=None,
        help="ISO 8601 instant with a timezone to generate around (default: now); "
        "the same --now/--seed/--items give the same feeds, e.g. across restarts",
    )
    return parser.parse_args(argv)


def parse_now(text: str) -> datetime:
    """An aware ISO 8601 instant."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("--now needs a timezone, e.g. 2025-06-01T12:00:00Z")
    return moment


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A timed wait keeps the main thread responsive to signals on every platform.
    while not stopping.wait(0.5):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until told to stop; exit status 0."""
    args = parse_args(argv)
    publisher = SamplePublisher(
        items=args.items,
        now=args.now,
        seed=args.seed,
        page_size=args.page_size,
        host=args.host,
        port=args.port,
        page_max_age=args.page_max_age,
        last_page_max_age=args.last_page_max_age,
        mix=args.mix,
    )
    with publisher:
        print(f"READY {publisher.base_url}", flush=True)
        wait_for_signal()
    return 0


if __name__ == "__main__":
    sys.exit(main())
