"""The C allocator's settings for a process of many threads (glibc only).

glibc's malloc gives threads their own arenas, up to 8 per core, and memory freed into
one arena is not reused by another. In the harvester a page's item strings are made in
its feed's fetch thread and freed by its writer, across dozens of feeds in flight, so
each arena keeps its own free memory: the ecosystem benchmark's peak RSS was 293 MB with
the default arenas and 234 MB with 2, at the same catch-up time (bench/README.md).
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

ARENAS = 2
M_ARENA_MAX = -8  # glibc's <malloc.h>


def limit_arenas(environ: Mapping[str, str] | None = None) -> bool:
    """Cap glibc's malloc arenas at ARENAS, unless MALLOC_ARENA_MAX says otherwise (glibc
    read it at start). True when the cap was set; before threads start, it holds for all."""
    environ = os.environ if environ is None else environ
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_ARENA_MAX" in environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_ARENA_MAX, ARENAS))
    except (OSError, AttributeError):  # no mallopt in this C library
        return False
