"""Parents and the children joined to them: the refs table, its cache, and re-joins."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from harvester import records, sql
from harvester.fastpath import run
from harvester.records import Row, Values

PARENT_CACHE_ENTRIES = 150_000  # resolved refs a worker keeps, all sources (~0.3 KB each)


class ParentCache:
    """Resolved parent refs per source, reused while the source's parents_version stands.

    Every change to a source's refs draws a new version (triggers on parent_refs, from a
    sequence: a rolled-back change's number never returns). A page of children reads the
    version under its shared source lock, while no parent change can commit, so what was
    resolved under the same version is still true.
    """

    def __init__(self, limit: int = PARENT_CACHE_ENTRIES) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.sources: dict[str, tuple[int, dict[str, Values | None]]] = {}

    def entries(self, source: str, version: int) -> dict[str, Values | None]:
        """The refs resolved under this version (a new, empty map for a new version)."""
        with self.lock:
            if sum(len(entries) for _, entries in self.sources.values()) > self.limit:
                self.sources.clear()  # memory stays bounded; what is needed is resolved again
            held = self.sources.get(source)
            if held is None or held[0] != version:
                held = (version, {})
                self.sources[source] = held
            return held[1]


def resolve_parents(
    conn: Connection, source: str, children: Sequence[Row], parents: ParentCache
) -> dict[str, Values | None]:
    """The published parent each child's ref names (None: none held), through the cache."""
    version = run(conn, sql.PARENTS_VERSION, {"source": source}).fetchone()[0]  # type: ignore[index]
    known = parents.entries(source, version)
    missing = {row.parent_ref for row in children if row.parent_ref not in known}
    missing.discard(None)
    if missing:
        found = run(conn, sql.RESOLVE_REFS, {"source": source, "refs": sorted(missing)})
        # Kinds repeat: one string each, not one per cached ref.
        resolved = {row[0]: (sys.intern(row[1]), *row[2:]) for row in found}
        for ref in missing:
            known[ref] = resolved.get(ref)
    return known


def refresh_parents(
    conn: Connection, source: str, keys: set[tuple[str, str]], new_parents: Sequence[Row] = ()
) -> None:
    """Replace the refs of these parents by those of `new_parents`; re-join affected children."""
    if not keys:
        return
    params = {"source": source, "kinds": [k for k, _ in keys], "ids": [i for _, i in keys]}
    dropped = [ref for (ref,) in run(conn, sql.DROP_PARENT_REFS, params)]
    added = add_parent_refs(conn, source, new_parents)
    refs = sorted(set(dropped) | set(added))
    if refs:
        rejoin_children(conn, source, refs)


def rejoin_children(conn: Connection, source: str, refs: list[str]) -> int:
    """Join again the children naming these refs; write back those whose join changed.

    Returns how many were rewritten.
    """
    params = {"source": source, "refs": refs}
    children = run(conn, sql.CHILDREN_OF_REFS, params).fetchall()
    if not children:
        return 0
    resolved = {row[0]: row[1:] for row in run(conn, sql.RESOLVE_REFS, params)}
    changed = []
    for child in children:
        start, offset, *facts = child[2:13]  # as CHILDREN_OF_REFS reads them
        start = records.on_own_clock(start, offset)
        joined = records.join(start, facts[0], facts[1], facts[2], tuple(facts[3:9]),
                              resolved.get(facts[1]))  # fmt: skip
        if joined != tuple(child[13:19]):
            changed.append((child[0], child[1], *joined))
    if changed:
        names = ("kinds", "ids", "parent_kinds", "parent_ids", "froms", "untils", "reasons",
                 "sellers")  # fmt: skip
        transposed = zip(*changed, strict=True)
        columns = {name: list(values) for name, values in zip(names, transposed, strict=True)}
        run(conn, sql.REJOIN_CHILDREN, {"source": source, **columns})
    return len(changed)


def add_parent_refs(conn: Connection, source: str, parents: Sequence[Row]) -> list[str]:
    """One ref per id a parent answers to, with a copy of its offer and seller; returns the
    ref ids."""
    entries = [
        (ref, row.kind, row.rpde_id, ref == row.item_id, *row[records.OFFER], row.seller_ref)
        for row in parents for ref in (row.refs or [])
    ]  # fmt: skip
    if not entries:
        return []
    columns = list(zip(*entries, strict=True))
    names = ("refs", "kinds", "ids", "selves", "problems", "from_m", "from_u", "thru_m", "thru_u",
             "sellers")  # fmt: skip
    params = {name: list(values) for name, values in zip(names, columns, strict=True)}
    params["source"] = source
    run(conn, sql.ADD_PARENT_REFS, params)
    return [entry[0] for entry in entries]


def deletes_a_parent(conn: Connection, source: str, rows: Sequence[Row]) -> bool:
    """The page holds a tombstone of an item held as a parent.

    A tombstone carries no data, and kinds are ambiguous (Legend's SessionSeries feed
    says `ScheduledSession.SessionSeries`), so what it deletes is looked up.
    """
    tombstones = [row for row in rows if records.is_tombstone(row)]
    if not tombstones:
        return False
    params = {
        "source": source, "kinds": [row.kind for row in tombstones],
        "ids": [row.rpde_id for row in tombstones],
    }  # fmt: skip
    return bool(run(conn, sql.HOLDS_PARENT, params).fetchone()[0])  # type: ignore[index]


def deleted_parents(deleted: Sequence[Any]) -> set[tuple[str, str]]:
    return {(kind, rpde_id) for role, kind, rpde_id in deleted if role == "parent"}
