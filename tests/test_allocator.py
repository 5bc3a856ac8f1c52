"""The cap on glibc's malloc arenas (harvester.allocator)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from harvester import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_the_arenas_are_capped_on_glibc() -> None:
    assert allocator.limit_arenas({}) is True


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_an_operators_malloc_arena_max_is_left_as_set() -> None:
    assert allocator.limit_arenas({"MALLOC_ARENA_MAX": "8"}) is False


@pytest.mark.skipif(GLIBC, reason="another C library")
def test_other_c_libraries_are_left_alone() -> None:
    assert allocator.limit_arenas({}) is False


def test_every_command_sets_the_cap_before_its_threads_start() -> None:
    """`check` of a missing config still goes through main, one thread running."""
    code = ("import threading, harvester.allocator as a, harvester.cli as c;"
            "calls = [];"
            "a.limit_arenas = lambda *x: calls.append(threading.active_count()) or True;"
            "c.allocator = a;"
            "c.main(['check', '--config', '/nonexistent.toml']);"
            "print(calls)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.stdout.strip().splitlines()[-1] == "[1]", result.stderr
