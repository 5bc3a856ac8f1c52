"""Shared helpers for tests that run real processes: `harvester` and the sample publisher.

Import them in a test module with `from helpers import ...` (pytest puts `tests/` on the
import path). What is here:

- Environment and command line: `clean_env`, `harvester_command`, `libpq_url`.
- `harvester` subprocesses: `run_harvester` (runs to completion, output captured) and
  `start_harvester` (a `HarvesterProcess` in the background, output in temporary files
  so a chatty child never blocks on a full pipe). A started process is a context
  manager that SIGKILLs it on exit, and every process still alive is killed when the
  test session ends, whatever happened.
- The sample publisher: in the test process (`SamplePublisher` is a context manager
  already), or as `python -m harvester.sample` in a child process (`PublisherProcess`,
  whose `twin` is an unstarted in-process `SamplePublisher` with the same seed, size and
  clock, so it computes `held()` and the config for the child's feeds).
- Config files: `write_config` (the publisher's TOML plus a `[harvester]` settings table).
- Reading the database back: `held_items`, `held_by_feed`, `item_counts`, `feed_rows`,
  `committed_pages`, and comparing with the publisher: `diff_held`,
  `assert_holds_exactly`, `last_page_url`.
- Changing the publisher: `update_item`, `delete_item`, `Changes`.
- Output: `written_counts` (the run summary line), `parse_status` (`harvester status`).
- `wait_for`: poll a condition with a deadline.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from sqlalchemy import Engine, make_url, text

from harvester.sample import FEED_NAMES, SamplePublisher

# [harvester] settings that make faults, back-offs and lease take-overs last seconds.
FAST_SETTINGS: dict[str, Any] = {
    "min_poll_seconds": 1,
    "overload_retry_seconds": [2, 3],
    "retry_attempts": 3,
    "retry_max_seconds": 10,
    "lease_seconds": 3,
}

Key = tuple[str, str]  # (RPDE kind, str(RPDE id)): how SamplePublisher.held() keys items
Held = dict[Key, Any]  # key -> data

# Variables that would point a child at another database or change its settings.
DATABASE_VARIABLES = ("DATABASE_URL", "TEST_DATABASE_URL")
SETTINGS_PREFIX = "HARVESTER_"
RUN_TIMEOUT = 180.0  # seconds a `run_harvester` child may take before it is killed
READY_TIMEOUT = 30.0  # seconds a publisher child may take to print READY

_LIVE: set[subprocess.Popen[bytes]] = set()  # children to kill if a test forgets


# --- environment and command line ------------------------------------------------------


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without database URLs or HARVESTER_* settings, plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in DATABASE_VARIABLES and not name.startswith(SETTINGS_PREFIX)
    }
    env.update(extra or {})
    return env


def harvester_command() -> list[str]:
    """The installed `harvester` console script beside this Python, else `python -m harvester`."""
    script = Path(sys.executable).with_name("harvester")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "harvester"]


def libpq_url(url: str) -> str:
    """The libpq form (`postgresql://…`) of a database URL in either form."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form (`postgresql+psycopg://…`) of a database URL in either form."""
    parsed = make_url(url).set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def harvester_argv(
    db_url: str | None, args: Sequence[str], env: Mapping[str, str] | None, via: str
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a `harvester` child.

    `db_url` goes in `--database-url` (via="flag", put after the subcommand's own
    arguments, where argparse takes it) or in DATABASE_URL (via="env"); None gives
    neither, so the child falls back to its embedded PostgreSQL.
    """
    if via not in ("flag", "env"):
        raise ValueError(f"via must be 'flag' or 'env', not {via!r}")
    argv = [*harvester_command(), *args]
    child_env = clean_env(env)
    if db_url is not None and via == "flag":
        argv += ["--database-url", db_url]
    elif db_url is not None:
        child_env["DATABASE_URL"] = db_url
    return argv, child_env


# --- harvester subprocesses ------------------------------------------------------------


def run_harvester(
    db_url: str | None,
    *args: str,
    env: Mapping[str, str] | None = None,
    via: str = "flag",
    timeout: float = RUN_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run `harvester ARGS` to completion against `db_url`; stdout and stderr as text.

    `env` adds variables to a clean environment (see `clean_env`). A child still running
    after `timeout` seconds is killed and subprocess.TimeoutExpired is raised.
    """
    argv, child_env = harvester_argv(db_url, args, env, via)
    return subprocess.run(
        argv, env=child_env, capture_output=True, text=True, timeout=timeout, check=False
    )


class HarvesterProcess:
    """A `harvester` child running in the background; stdout/stderr go to temporary files."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.argv = list(argv)
        # The output files live as long as the child, not a block: closed by close().
        self.stdout_file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.stderr_file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.popen = subprocess.Popen(
            self.argv, env=dict(env), stdout=self.stdout_file, stderr=self.stderr_file
        )
        _LIVE.add(self.popen)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal), else None."""
        return self.popen.returncode

    def poll(self) -> int | None:
        """The exit status if the child has ended, else None."""
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to end; its exit status."""
        code = self.popen.wait(timeout)
        _LIVE.discard(self.popen)
        return code

    def send_signal(self, signum: int) -> None:
        """Send a signal (SIGTERM asks for a clean stop, SIGKILL is a crash)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def kill(self) -> int:
        """SIGKILL: a crash at whatever moment the child is in; returns the exit status."""
        self.send_signal(signal.SIGKILL)
        return self.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; SIGKILL if it has not ended within `timeout` seconds."""
        self.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) written so far."""
        return read_file(self.stdout_file), read_file(self.stderr_file)

    def close(self) -> None:
        """Kill the child if it is still running and drop its output files."""
        if self.popen.poll() is None:
            self.kill()
        _LIVE.discard(self.popen)
        self.stdout_file.close()
        self.stderr_file.close()

    def __del__(self) -> None:
        """A forgotten process is killed and its files closed (no ResourceWarning)."""
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> HarvesterProcess:
        """The process itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Never leave the child behind: SIGKILL it if it still runs; drop its output."""
        self.close()


def start_harvester(
    db_url: str | None,
    *args: str,
    env: Mapping[str, str] | None = None,
    via: str = "flag",
) -> HarvesterProcess:
    """Start `harvester ARGS` in the background against `db_url` (see `harvester_argv`).

    Use it as a context manager (`with start_harvester(...) as proc:`; read `.output()`
    inside the block, the files are dropped on exit) or call `.close()` in a `finally`;
    leftovers are killed at the end of the session.
    """
    argv, child_env = harvester_argv(db_url, args, env, via)
    return HarvesterProcess(argv, child_env)


def read_file(handle: IO[bytes]) -> str:
    """Everything written to a temporary output file, as text."""
    handle.flush()
    handle.seek(0)
    return handle.read().decode("utf-8", errors="replace")


def kill_leftovers() -> None:
    """SIGKILL every child started here that is still running."""
    for popen in list(_LIVE):
        if popen.poll() is None:
            with contextlib.suppress(OSError):
                popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=10)
        _LIVE.discard(popen)


atexit.register(kill_leftovers)


# --- the sample publisher in a child process --------------------------------------------


class PublisherProcess:
    """`python -m harvester.sample` in a child process, for tests that crash or restart it.

    The child's feeds are a pure function of (items, seed, now), so `twin`, an unstarted
    SamplePublisher with the same arguments and the child's port, knows its URLs, its
    config and what it holds (`twin.held(feed)`), as long as nobody changes the child.
    """

    def __init__(
        self,
        *,
        items: int = 2_000,
        page_size: int = 500,
        seed: int = 1,
        now: datetime | None = None,
        last_page_max_age: int = 8,
        port: int = 0,
    ) -> None:
        self.items = items
        self.page_size = page_size
        self.seed = seed
        self.now = now if now is not None else datetime.now(UTC)
        self.last_page_max_age = last_page_max_age
        self.port = port
        self.popen: subprocess.Popen[bytes] | None = None
        self.stderr_file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115

    def argv(self) -> list[str]:
        """The child's command line."""
        return [
            sys.executable, "-m", "harvester.sample",
            "--items", str(self.items), "--page-size", str(self.page_size),
            "--seed", str(self.seed), "--now", self.now.isoformat(),
            "--last-page-max-age", str(self.last_page_max_age), "--port", str(self.port),
        ]  # fmt: skip

    def start(self) -> PublisherProcess:
        """Start the child and wait for its READY line (again on the same port after a stop)."""
        self.popen = subprocess.Popen(
            self.argv(), env=clean_env(), stdout=subprocess.PIPE, stderr=self.stderr_file
        )
        _LIVE.add(self.popen)
        base_url = wait_for_ready(self.popen, READY_TIMEOUT)
        self.port = int(base_url.rsplit(":", 1)[1])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the child (SIGKILL if it lingers) and reap it."""
        popen, self.popen = self.popen, None
        if popen is None:
            return
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout)
        if popen.stdout is not None:
            popen.stdout.close()
        _LIVE.discard(popen)

    def kill(self) -> None:
        """SIGKILL the child: the publisher vanishes mid-answer."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
        self.stop()

    @property
    def twin(self) -> SamplePublisher:
        """An unstarted in-process publisher serving, in theory, the same feeds."""
        return SamplePublisher(
            items=self.items, page_size=self.page_size, seed=self.seed, now=self.now,
            port=self.port, last_page_max_age=self.last_page_max_age,
        )  # fmt: skip

    def stderr(self) -> str:
        """What the child wrote to stderr."""
        return read_file(self.stderr_file)

    def close(self) -> None:
        """Stop the child and drop its stderr file."""
        self.stop()
        self.stderr_file.close()

    def __del__(self) -> None:
        """A forgotten publisher is stopped and its file closed (no ResourceWarning)."""
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> PublisherProcess:
        """Start it."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop it, whatever happened."""
        self.close()


def wait_for_ready(popen: subprocess.Popen[bytes], timeout: float) -> str:
    """The base URL from the child's `READY <base_url>` line; kills it on failure."""
    assert popen.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and popen.poll() is None:
        readable, _, _ = select.select([popen.stdout], [], [], 0.2)
        if readable:
            line = popen.stdout.readline()
            if line.startswith(b"READY "):
                return line.decode().split()[1]
    popen.kill()
    popen.wait(10)
    raise RuntimeError(f"sample publisher did not get ready: exit {popen.returncode}, {line!r}")


# --- config files ----------------------------------------------------------------------


def write_config(path: Path, sources_toml: str, settings: Mapping[str, Any] | None = None) -> Path:
    """Write a harvester config: `sources_toml` (e.g. publisher.to_config_toml()) plus a
    `[harvester]` table of `settings` (numbers, strings, booleans or lists of them)."""
    lines = [sources_toml.rstrip("\n")]
    if settings:
        lines += ["", "[harvester]"]
        lines += [f"{name} = {toml_value(value)}" for name, value in settings.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def toml_value(value: Any) -> str:
    """A TOML literal for a setting's value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


# --- reading the database back -----------------------------------------------------------


def held_items(engine: Engine, url: str, source: str | None = None) -> Held:
    """{(kind, rpde_id): data} held for the feed whose first-page URL is `url`."""
    query = (
        "SELECT i.kind, i.rpde_id, i.data FROM harvester.items AS i"
        " JOIN harvester.feeds AS f ON f.id = i.feed_id"
        " WHERE f.url = :url AND (CAST(:source AS text) IS NULL OR f.source = :source)"
    )
    with engine.connect() as conn:
        rows = conn.execute(text(query), {"url": url, "source": source}).all()
    return {(kind, rpde_id): data for kind, rpde_id, data in rows}


def held_by_feed(
    engine: Engine, publisher: SamplePublisher, feeds: Iterable[str] = FEED_NAMES
) -> dict[str, Held]:
    """`held_items` of each of the publisher's feeds, by feed name."""
    return {feed: held_items(engine, publisher.feed_url(feed)) for feed in feeds}


def item_counts(engine: Engine) -> dict[str, int]:
    """Rows of harvester.items per feed URL (feeds with none are absent)."""
    query = (
        "SELECT f.url, count(*) FROM harvester.items AS i"
        " JOIN harvester.feeds AS f ON f.id = i.feed_id GROUP BY f.url"
    )
    with engine.connect() as conn:
        return {url: int(count) for url, count in conn.execute(text(query)).all()}


def total_items(engine: Engine) -> int:
    """All rows of harvester.items, whichever feed they belong to."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM harvester.items")).scalar_one())


def feed_rows(engine: Engine) -> dict[str, Any]:
    """Every harvester.feeds row, by feed URL."""
    with engine.connect() as conn:
        return {row.url: row for row in conn.execute(text("SELECT * FROM harvester.feeds")).all()}


def committed_pages(engine: Engine) -> int:
    """Pages committed so far over all feeds (0 before the harvester registered any)."""
    with engine.connect() as conn:
        total = conn.execute(text("SELECT sum(pages) FROM harvester.feeds")).scalar_one()
    return int(total or 0)


# --- comparing with the publisher ----------------------------------------------------------


def canonical(data: Any) -> str:
    """JSON with sorted keys: tells 1 from 1.0 and true from 1, unlike == on dicts."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def diff_held(expected: Held, actual: Held, limit: int = 5) -> str:
    """'' when both hold the same keys with the same JSON; else a short description."""
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    differ = sorted(
        key
        for key in expected.keys() & actual.keys()
        if canonical(expected[key]) != canonical(actual[key])
    )
    parts = [
        f"{label} {len(keys)}: {keys[:limit]}"
        for label, keys in (("missing", missing), ("unexpected", extra), ("different", differ))
        if keys
    ]
    return "; ".join(parts)


def assert_holds_exactly(
    engine: Engine, publisher: SamplePublisher, feeds: Iterable[str] = FEED_NAMES
) -> None:
    """Each feed's held items equal publisher.held(feed): same keys, same JSON, same count."""
    counts = item_counts(engine)
    for feed in feeds:
        url = publisher.feed_url(feed)
        expected = publisher.held(feed)
        problems = diff_held(expected, held_items(engine, url))
        assert not problems, f"{feed}: {problems}"
        assert counts.get(url, 0) == len(expected), feed


def last_page_url(publisher: SamplePublisher, feed: str) -> str:
    """The URL of the feed's current last page: `next` after its last item (tombstones count)."""
    last = None
    for last in publisher.items(feed):  # noqa: B007 - only the last item is wanted
        pass
    return publisher.feed_url(feed) if last is None else publisher.next_url_after(feed, last)


# --- changing the publisher --------------------------------------------------------------


@dataclass
class Changes:
    """What a test changed on a publisher, by feed: the keys it touched."""

    updated: dict[str, set[Key]] = field(default_factory=dict)
    deleted: dict[str, set[Key]] = field(default_factory=dict)

    def note(self, kind: str, feed: str, key: Key) -> None:
        """Record an update ('updated') or a deletion ('deleted') of `key` in `feed`."""
        other = self.deleted if kind == "updated" else self.updated
        mine = self.updated if kind == "updated" else self.deleted
        other.get(feed, set()).discard(key)
        mine.setdefault(feed, set()).add(key)

    def keys(self, feed: str) -> set[Key]:
        """Every key of `feed` this test changed."""
        return self.updated.get(feed, set()) | self.deleted.get(feed, set())


def update_item(
    publisher: SamplePublisher,
    feed: str,
    item_id: str,
    changes: Changes | None = None,
    **fields: Any,
) -> Key:
    """Publish a new version of an item with `fields` set (default: a new description)."""
    data = publisher.get(feed, item_id)
    if data is None:
        raise KeyError(f"{feed}: {item_id} is not held by the publisher")
    fields = fields or {"description": f"changed at {time.monotonic_ns()}"}
    publisher.upsert(feed, item_id, {**data, **fields})
    key = key_of(publisher, feed, item_id)
    if changes is not None:
        changes.note("updated", feed, key)
    return key


def delete_item(
    publisher: SamplePublisher, feed: str, item_id: str, changes: Changes | None = None
) -> Key:
    """Publish a tombstone for an item; its key."""
    key = key_of(publisher, feed, item_id)
    publisher.delete(feed, item_id)
    if changes is not None:
        changes.note("deleted", feed, key)
    return key


def key_of(publisher: SamplePublisher, feed: str, item_id: str) -> Key:
    """(kind, id) of an item as the feed publishes it now."""
    with publisher.lock:
        found = publisher.state_of(feed).current(item_id)
    if found is None:
        raise KeyError(f"{feed}: no item with id {item_id!r}")
    return found[0], str(item_id)


# --- output ------------------------------------------------------------------------------


def written_counts(stdout: str) -> tuple[int, int]:
    """(pages, items) from the run summary `harvester: N pages, M items written`."""
    for line in stdout.splitlines():
        words = line.split()
        if line.startswith("harvester: ") and line.endswith(" items written"):
            return int(words[1]), int(words[3])
    raise AssertionError(f"no summary line in {stdout!r}")


@dataclass(frozen=True)
class Status:
    """`harvester status` read back: each feed's line (as fields) and last error, by URL."""

    lines: dict[str, list[str]]
    errors: dict[str, str]


def parse_status(stdout: str) -> Status:
    """Split `harvester status` feed lines into fields and their LAST ERROR column, by URL."""
    lines: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) >= 9 and fields[7].startswith("http"):
            lines[fields[7]] = fields[:8]
            error = " ".join(fields[8:])
            if error != "-":
                errors[fields[7]] = error
    return Status(lines, errors)


# --- waiting -----------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
