"""A worst-case memory figure: the harvester's own peak RSS with pages just under the cap.

``python bench/memory.py [--database-url URL] [--pages N]``

A small RPDE publisher runs in a thread of this process, serving four feeds of
ScheduledSession-like items (data of about 1 KB each) in pages just under the default
``max_page_bytes`` (8 MiB decoded). ``harvester run --once`` (the real CLI, its own
process, default settings: 4 workers) harvests it into a fresh database; its peak RSS is
its own ``ru_maxrss`` from ``wait4`` on its pid. Beside it, measured in the same run:

- a bare Python that imports the harvester and sleeps (the floor);
- the same items in small pages (500 items, about 0.5 MB);
- the big pages again, sent gzip-encoded;
- every feed a gzip bomb (one gzip layer, 512 MiB of zeros): decoded up to the cap, refused.

The figures are printed, not asserted. The server: ``--database-url``, else
TEST_DATABASE_URL or DATABASE_URL, else an embedded PostgreSQL (pgserver).
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

# The bench's own helpers: this script runs from bench/, which is then on sys.path.
from run import log, scratch_database, server_url

from harvester.config import Settings

CAP = Settings().max_page_bytes
FEEDS = ("sessions-a", "sessions-b", "sessions-c", "sessions-d")
HOST = "https://memory-bench.example"
ITEM_BYTES = 1_000  # the data dict of one item, serialised, about
SMALL_PAGE_ITEMS = 500
BOMB_BYTES = 512 * 1024 * 1024
MARGIN = 16 * 1024  # a big page stays this far under the cap
LICENSE = "https://creativecommons.org/licenses/by/4.0/"

# `python -c LAUNCHER OUT ARGV...`: runs ARGV as its own child and writes that child's
# ru_maxrss (KiB, from wait4) to OUT. On Linux a child's ru_maxrss also counts the memory of
# the process it was forked from (exec folds the old address space's high-water mark into
# it): forked from this process, which holds every page served, it would read ~250 MB
# whatever it did. So the measured process is forked from this small launcher instead.
LAUNCHER = """
import ctypes, os, signal, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the launcher
    os.execvp(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as file:
    file.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


# --- the items and pages ----------------------------------------------------------------


def session_data(feed: str, index: int) -> dict[str, Any]:
    """A ScheduledSession much like a real publisher's, padded to about ITEM_BYTES."""
    start = datetime(2030, 1, 1, 9, tzinfo=UTC) + timedelta(hours=index % 5000)
    data: dict[str, Any] = {
        "@context": ["https://openactive.io/", "https://imin.co/"],
        "@type": "ScheduledSession",
        "@id": f"{HOST}/{feed}/{index}",
        "identifier": index,
        "startDate": start.isoformat(),
        "endDate": (start + timedelta(hours=1)).isoformat(),
        "duration": "PT1H",
        "eventStatus": "https://schema.org/EventScheduled",
        "maximumAttendeeCapacity": 20,
        "remainingAttendeeCapacity": index % 21,
        "superEvent": f"{HOST}/session-series/{index // 40}",
        "offers": [{
            "@type": "Offer", "identifier": "adult", "name": "Adult", "price": 6.5,
            "priceCurrency": "GBP", "url": f"https://booking.example/{feed}/{index}",
        }],
        "location": {
            "@type": "Place", "name": "Riverside Leisure Centre",
            "address": {"@type": "PostalAddress", "streetAddress": "1 Mill Lane",
                        "addressLocality": "Bristol", "postalCode": "BS1 4QA"},
            "geo": {"@type": "GeoCoordinates", "latitude": 51.451, "longitude": -2.593},
        },
    }  # fmt: skip
    filler = ITEM_BYTES - len(orjson.dumps(data)) - len(',"description":""')
    words = f"Session {index} of {feed}: bring water and a towel. "
    data["description"] = (words * (filler // len(words) + 1))[: max(0, filler)]
    return data


def item(feed: str, index: int) -> dict[str, Any]:
    """One RPDE item of `feed`."""
    return {"state": "updated", "kind": "ScheduledSession", "id": f"{feed}-{index}",
            "modified": index + 1, "data": session_data(feed, index)}  # fmt: skip


def page_body(items: list[dict[str, Any]], next_url: str) -> bytes:
    """An RPDE page."""
    return orjson.dumps({"next": next_url, "items": items, "license": LICENSE})


def items_per_big_page(feed: str) -> int:
    """How many items make a page just under the cap (MARGIN below it)."""
    sample = len(page_body([item(feed, 0)] * 100, "x" * 200)) / 100
    return int((CAP - MARGIN) / sample)


@dataclass(frozen=True)
class Feeds:
    """Every page body by path, the total of items, and the largest page."""

    pages: dict[str, bytes]
    items: int
    largest: int


def build_feeds(base: str, pages: int, per_page: int | None) -> Feeds:
    """Per feed, the items of `pages` pages just under the cap, `per_page` a page (or as
    many as fit under the cap), then RPDE's last page."""
    bodies: dict[str, bytes] = {}
    total = 0
    for feed in FEEDS:
        fit = items_per_big_page(feed)
        count = per_page or fit
        starts = range(0, pages * fit, count)
        for number, start in enumerate(starts):
            indexes = range(start, min(start + count, pages * fit))
            path = f"/feeds/{feed}" + (f"?page={number}" if number else "")
            next_url = f"{base}/feeds/{feed}?page={number + 1}"
            body = page_body([item(feed, i) for i in indexes], next_url)
            while len(body) > CAP - MARGIN // 2:  # the estimate was generous: trim
                indexes = indexes[:-10]
                body = page_body([item(feed, i) for i in indexes], next_url)
            bodies[path] = body
            total += len(indexes)
        last = f"/feeds/{feed}?page={len(starts)}"
        bodies[last] = page_body([], base + last)  # RPDE's last page: `next` is itself
    return Feeds(bodies, total, max(len(body) for body in bodies.values()))


def build_bomb() -> bytes:
    """One gzip member of BOMB_BYTES zeros (about 520 KB), built in steps."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    step = b"\0" * (1 << 20)
    return b"".join([*(packer.compress(step) for _ in range(BOMB_BYTES // len(step))),
                     packer.flush()])  # fmt: skip


# --- the publisher ---------------------------------------------------------------------------


class QuietServer(ThreadingHTTPServer):
    """A threaded HTTP server for which a client hanging up (a refused bomb) is no error."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about connections the client cut; loud about anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Publisher:
    """Serves the current `pages` (raw, or gzip-encoded when asked) on 127.0.0.1."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[dict[str, str], bytes]] = {}
        publisher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers, body = publisher.pages.get(self.path, ({}, b""))
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, pages: dict[str, bytes], encoding: str | None = None) -> None:
        """Serve these pages from now on, gzip-encoded if `encoding` is "gzip"."""
        if encoding == "gzip":
            self.pages = {path: ({"Content-Encoding": "gzip"}, gzip.compress(body, 6))
                          for path, body in pages.items()}  # fmt: skip
        else:
            self.pages = {path: ({}, body) for path, body in pages.items()}

    def serve_bombs(self, bomb: bytes) -> None:
        """Every feed's first page a gzip bomb."""
        headers = {"Content-Encoding": "gzip"}
        self.pages = {f"/feeds/{feed}": (headers, bomb) for feed in FEEDS}


# --- runs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One child process: what it was, its exit status, wall time, and its own peak RSS."""

    label: str
    returncode: int
    seconds: float
    max_rss: int  # bytes
    note: str = ""


def measure(label: str, command: list[str], note: str = "") -> Run:
    """Run `command` to its end; its own peak RSS from wait4 in a small launcher."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch, tempfile.TemporaryFile() as err:
        out = Path(scratch) / "max_rss"
        launcher = [sys.executable, "-c", LAUNCHER, str(out), *command]
        code = subprocess.run(launcher, stdout=subprocess.DEVNULL, stderr=err, check=False)
        max_rss = int(out.read_text(encoding="utf-8")) * 1024  # KiB on Linux
        err.seek(0)
        tail = err.read().decode("utf-8", "replace").strip().splitlines()[-1:]
    if code.returncode not in (0, 1):
        log(f"{label}: exit {code.returncode}: {tail}")
    return Run(label, code.returncode, time.monotonic() - started, max_rss, note)


def harvester_command() -> list[str]:
    """The `harvester` script beside this Python, else `python -m harvester`."""
    script = Path(sys.executable).with_name("harvester")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "harvester"]


def harvest(
    server: str, workdir: Path, publisher: Publisher, label: str, note: str, settings: str = ""
) -> Run:
    """`harvester run --once` (default settings) on a fresh database, measured."""
    urls = ", ".join(f'"{publisher.base_url}/feeds/{feed}"' for feed in FEEDS)
    config = workdir / "harvester.toml"
    config.write_text(f'[[sources]]\nname = "bench"\nfeeds = [{urls}]\n{settings}',
                      encoding="utf-8")  # fmt: skip
    with scratch_database(server, f"bench_memory_{os.getpid()}") as url:
        command = [*harvester_command(), "run", "--once", "--config", str(config),
                   "--database-url", url, "--log-level", "WARNING"]  # fmt: skip
        return measure(label, command, note)


def bare_python() -> Run:
    """The floor: a Python that imports everything a harvest imports, then sleeps."""
    code = "import harvester.cli, harvester.pipeline, harvester.pages, time; time.sleep(0.5)"
    return measure("bare python + imports", [sys.executable, "-c", code], "no harvest")


# --- databases ---------------------------------------------------------------------------------


# --- the report --------------------------------------------------------------------------------


def print_report(runs: list[Run], feeds: Feeds, pages: int) -> None:
    """One line per run: peak RSS, wall time, exit status."""
    print(f"publisher: {len(FEEDS)} feeds x {pages} pages, largest {feeds.largest / 2**20:.2f} MiB "
          f"(cap {CAP / 2**20:.0f} MiB), {feeds.items} items of ~{ITEM_BYTES} B data")  # fmt: skip
    print(f"{'run':<34} {'peak RSS':>10} {'wall':>8} {'exit':>5}  note")
    for run in runs:
        print(f"{run.label:<34} {run.max_rss / 2**20:>7.1f} MB {run.seconds:>7.1f}s "
              f"{run.returncode:>5}  {run.note}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Build the pages, run each case, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: TEST_DATABASE_URL, else DATABASE_URL")
    parser.add_argument("--pages", type=int, default=3, help="big pages per feed (default 3)")
    args = parser.parse_args(argv)
    publisher = Publisher()
    log("building pages")
    big = build_feeds(publisher.base_url, args.pages, None)
    small = build_feeds(publisher.base_url, args.pages, SMALL_PAGE_ITEMS)
    bomb = build_bomb()
    runs: list[Run] = []
    with server_url(args.database_url) as server, tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        log("bare python")
        runs.append(bare_python())
        cases = [
            ("small pages (500 items)", small.pages, None, f"{len(small.pages)} pages"),
            ("pages just under the cap", big.pages, None, f"{len(big.pages)} pages"),
            ("the same, gzip-encoded", big.pages, "gzip", f"{len(big.pages)} pages, gzip"),
        ]
        for label, pages, encoding, note in cases:
            publisher.serve(pages, encoding)
            log(label)
            runs.append(harvest(server, work, publisher, label, note))
        publisher.serve_bombs(bomb)
        log("gzip bombs")
        # Two attempts a feed: each attempt is another bomb, and the peak the same.
        note = f"{len(bomb) // 1024} KB -> 512 MiB each, refused"
        retries = "[harvester]\nretry_attempts = 2\n"
        runs.append(harvest(server, work, publisher, "every feed a gzip bomb", note, retries))
    print_report(runs, big, args.pages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
