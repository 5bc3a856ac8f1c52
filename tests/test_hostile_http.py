"""Hostile publishers against real `harvester run --once` processes: memory and time stay bounded.

A gzip bomb (a few hundred bytes, or half a megabyte, decoding to half a gigabyte) fails its
own feed with a clear error while the other feeds are harvested, and the harvester's own
peak RSS (`os.wait4` on the child) stays small. A publisher that trickles its answer a
byte at a time fails its feed at the request deadline instead of holding the run forever.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    FAST_SETTINGS,
    HarvesterProcess,
    feed_rows,
    harvester_argv,
    held_items,
    write_config,
)
from sqlalchemy import Engine

from harvester.sample import FEED_NAMES, Fault, SamplePublisher

BOMB_BYTES = 512 * 1024 * 1024  # decoded: zeros
# The harvester's own peak RSS, bomb or not. A run of these small feeds peaks near 75 MB;
# decoding with httpx's own decoders took about 190 MB (one gzip layer: 64 KB read at a time
# inflates to 64 MB before the cap is looked at) and 1.1 GB (stacked).
MAX_RSS = 160 * 1024 * 1024
# A bombed answer is an invalid page, retried once: two attempts keep the run short.
SETTINGS = {**FAST_SETTINGS, "request_timeout_seconds": 1, "retry_attempts": 2}
RUN_SECONDS = 60.0  # a run still going after this is killed: a hang, the test fails

# `python -c LAUNCHER OUT ARGV...`: runs ARGV as its own child and writes that child's
# ru_maxrss (KiB, from wait4) to OUT. On Linux a child's ru_maxrss also counts the memory of
# the process it was forked from (exec folds the old address space's high-water mark into
# it), so the harvester is forked from this small process, never from the large pytest one.
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


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """One gzip member of BOMB_BYTES zeros, about 520 KB (built in steps: small memory)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    step = b"\0" * (1 << 20)
    parts = [packer.compress(step) for _ in range(BOMB_BYTES // len(step))]
    return b"".join([*parts, packer.flush()])


@pytest.fixture
def publisher() -> Iterator[SamplePublisher]:
    """A small publisher: 400 items over four feeds, pages of 50, last pages not cached."""
    with SamplePublisher(items=400, page_size=50, last_page_max_age=0) as started:
        yield started


@dataclass(frozen=True)
class Finished:
    """A `harvester` child's end: exit code, output, wall time, and its own peak RSS."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss: int  # bytes


def run_measured(db_url: str, config: Path, timeout: float = RUN_SECONDS) -> Finished:
    """Run `harvester run --once` to its end; its own peak RSS from wait4 (see LAUNCHER)."""
    argv, env = harvester_argv(db_url, ["run", "--once", "--config", str(config)], None, "flag")
    rss_file = config.with_name("max_rss")
    started = time.monotonic()
    with HarvesterProcess([sys.executable, "-c", LAUNCHER, str(rss_file), *argv], env) as child:
        try:
            returncode = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()  # the harvester dies with its launcher
            _, stderr = child.output()
            pytest.fail(f"harvester run --once still running after {timeout:.0f} s:\n{stderr}")
        stdout, stderr = child.output()
    seconds = time.monotonic() - started
    max_rss = int(rss_file.read_text(encoding="utf-8")) * 1024  # KiB on Linux
    return Finished(returncode, stdout, stderr, seconds, max_rss)


def assert_other_feeds_complete(engine: Engine, publisher: SamplePublisher, failed: str) -> None:
    """Every feed but `failed` holds exactly the publisher's items and is caught up."""
    rows = feed_rows(engine)
    for feed in FEED_NAMES:
        if feed == failed:
            continue
        url = publisher.feed_url(feed)
        assert held_items(engine, url) == publisher.held(feed), feed
        assert rows[url].state == "caught_up" and rows[url].last_error is None, feed


# --- gzip bombs ---------------------------------------------------------------------------


BOMBS = {
    # stacked: a bomb of a bomb, under 1 KB on the wire; refused on its header
    "gzip-gzip": ("gzip, gzip", lambda bomb: gzip.compress(bomb, 9), "stacked"),
    # one gzip layer: decoded, and refused once past the 8 MiB cap
    "gzip": ("gzip", lambda bomb: bomb, "byte cap once decoded"),
}


@pytest.mark.parametrize(("encoding", "wrap", "message"), BOMBS.values(), ids=BOMBS.keys())
def test_a_gzip_bomb_fails_its_feed_in_bounded_memory(
    encoding: str, wrap: Any, message: str, gzip_bomb: bytes, publisher: SamplePublisher,
    db_url: str, engine: Engine, tmp_path: Path,
) -> None:  # fmt: skip
    body = wrap(gzip_bomb)
    assert len(body) < 1024 * 1024
    headers = {"Content-Encoding": encoding}
    publisher.inject("slots", Fault(headers=headers, body=body, times=10))
    config = write_config(tmp_path / "harvester.toml", publisher.to_config_toml(), SETTINGS)
    run = run_measured(db_url, config)
    print(f"{encoding!r} bomb: harvester peak RSS {run.max_rss / 2**20:.1f} MB")
    url = publisher.feed_url("slots")
    assert run.returncode == 1, run.stderr
    assert f"FAILED sample {url}" in run.stderr
    assert run.max_rss < MAX_RSS, f"peak RSS {run.max_rss / 2**20:.0f} MB"
    row = feed_rows(engine)[url]
    assert row.state == "error"
    assert url in row.last_error and message in row.last_error
    assert "\n" not in row.last_error
    assert held_items(engine, url) == {}
    assert_other_feeds_complete(engine, publisher, failed="slots")


# --- a trickling publisher ------------------------------------------------------------------

TRICKLE_SECONDS = 0.3  # between two bytes, well within the 1 s read timeout
TRICKLE_DEADLINE = 1.5  # request_deadline_seconds for these runs


class TricklingPublisher:
    """One feed, `/feed`, that answers a byte every 0.3 s, for as long as the client listens.

    `head=False`: the status line and headers at once, then the body trickled;
    `head=True`: the status line and headers themselves trickled.
    """

    def __init__(self, head: bool) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                status = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                answer = status + b"Content-Length: 1000000\r\n\r\n" + b" " * 1_000_000
                if not head:
                    self.wfile.write(answer[: answer.index(b"\r\n\r\n") + 4])
                    answer = answer[answer.index(b"\r\n\r\n") + 4 :]
                for index in range(len(answer)):
                    try:
                        self.wfile.write(answer[index : index + 1])
                        self.wfile.flush()
                    except OSError:  # the harvester gave up: so does the publisher
                        return
                    time.sleep(TRICKLE_SECONDS)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/feed"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> TricklingPublisher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("head", [False, True], ids=["trickled-body", "trickled-headers"])
def test_a_trickling_feed_fails_at_the_deadline_and_the_run_ends(
    head: bool, publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with TricklingPublisher(head) as trickling:
        sources = publisher.to_config_toml() + "\n".join(
            ["", "[[sources]]", 'name = "trickle"', f'feeds = ["{trickling.url}"]', ""]
        )
        settings = {**SETTINGS, "request_deadline_seconds": TRICKLE_DEADLINE}
        config = write_config(tmp_path / "harvester.toml", sources, settings)
        run = run_measured(db_url, config)
    # Two attempts of 1.5 s and a back-off under a second, beside the start-up.
    assert run.seconds < 20, run.seconds
    assert run.returncode == 1, run.stderr
    assert f"FAILED trickle {trickling.url}" in run.stderr
    row = feed_rows(engine)[trickling.url]
    assert row.state == "backing_off"
    assert row.last_error == f"{trickling.url}: no complete answer within 1.5 s"
    assert_other_feeds_complete(engine, publisher, failed="")
