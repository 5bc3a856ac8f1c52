"""`harvester demo` with nothing set up: embedded PostgreSQL, bundled publisher, exit 0.

The child gets no DATABASE_URL, so it must start its own PostgreSQL in
HARVESTER_DATA_DIR (a fresh temporary directory), and reuse it on the next run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DATABASE_VARIABLES, clean_env, run_harvester, wait_for

BOOKABLE = re.compile(r"^bookable now: (\d+)$", re.MULTILINE)
CHECKOUT = re.compile(r"^https://checkout\.[^/]+/v1/(scheduled-sessions|slots)/\S+$")


def stop_leftover_server(data_dir: Path) -> None:
    """SIGQUIT (immediate shutdown) a postmaster a failed demo left running in `data_dir`."""
    pid_file = data_dir / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)
        wait_for(lambda: not pid_file.exists(), 30, 0.2)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh, short path for the embedded server (unix socket paths are length-limited)."""
    root = Path(tempfile.mkdtemp(prefix="hv-demo-"))
    try:
        yield root / "pgdata"
    finally:
        stop_leftover_server(root / "pgdata")
        shutil.rmtree(root, ignore_errors=True)


def run_demo(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`harvester demo --items 600` with no database URL and the data directory set."""
    env = clean_env({"HARVESTER_DATA_DIR": str(data_dir)})
    assert not set(DATABASE_VARIABLES) & env.keys()
    return run_harvester(None, "demo", "--items", "600", env=env, timeout=300)


def check_output(result: subprocess.CompletedProcess[str], data_dir: Path) -> int:
    """Exit 0, a positive `bookable now: N` and checkout URLs; returns N."""
    assert result.returncode == 0, result.stderr
    found = BOOKABLE.search(result.stdout)
    assert found, result.stdout
    bookable = int(found.group(1))
    assert bookable > 0
    section = result.stdout[found.end() :].strip("\n").split("\n\n")[0]
    rows = section.splitlines()  # the soonest few, each ending in its checkout URL
    assert 0 < len(rows) <= bookable, result.stdout
    for row in rows:
        assert CHECKOUT.match(row.split()[-1]), row
    assert str(data_dir) in result.stdout + result.stderr  # it says where the data lives
    assert not (data_dir / "postmaster.pid").exists()  # and stops its server on exit
    return bookable


def test_demo_runs_on_a_fresh_embedded_postgres_and_again_on_the_same_one(
    data_dir: Path,
) -> None:
    assert not data_dir.exists()
    first = run_demo(data_dir)
    check_output(first, data_dir)
    created = (data_dir / "PG_VERSION").stat()  # written once, by initdb

    second = run_demo(data_dir)
    check_output(second, data_dir)
    reused = (data_dir / "PG_VERSION").stat()
    assert (reused.st_ino, reused.st_mtime_ns) == (created.st_ino, created.st_mtime_ns)
