"""The raw baseline: the least a correct RPDE harvester must do, written plainly.

For each feed in turn: fetch a page (httpx), parse it (orjson), and in one transaction
COPY its items into a staging table, upsert them into ``items`` (a row is replaced only
by one whose ``modified`` is not older), apply its tombstones, and move the feed's
cursor. No derived data: no bookability, no parents, no checkout URLs. The loop stops
at RPDE's last page (no items, and ``next`` equal to the URL just fetched).

``python bench/baseline.py --database-url URL FEED_URL...`` prints one JSON line:
``{"items": ..., "pages": ..., "seconds": ..., "feeds": {FEED_URL: {"pages": ...,
"items": ..., "seconds": ...}, ...}}``, each feed's figures its own (feeds run one after
the other).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    feed text NOT NULL, kind text NOT NULL, id text NOT NULL,
    modified numeric NOT NULL, data jsonb NOT NULL,
    PRIMARY KEY (feed, kind, id)
);
CREATE TABLE IF NOT EXISTS cursors (feed text PRIMARY KEY, next_url text NOT NULL);
"""

STAGING = """
CREATE TEMPORARY TABLE staging (
    kind text, id text, modified numeric, deleted boolean, data jsonb
) ON COMMIT DELETE ROWS
"""

UPSERT = """
INSERT INTO items AS i (feed, kind, id, modified, data)
SELECT %(feed)s, s.kind, s.id, s.modified, s.data FROM staging AS s WHERE NOT s.deleted
ON CONFLICT (feed, kind, id) DO UPDATE SET modified = EXCLUDED.modified, data = EXCLUDED.data
WHERE i.modified <= EXCLUDED.modified
"""

# Tombstones by arrays: a join on the unanalysed staging table may plan a full scan.
DELETE = """
DELETE FROM items AS i
USING unnest(%(kinds)s::text[], %(ids)s::text[], %(modified)s::numeric[]) AS t(kind, id, modified)
WHERE i.feed = %(feed)s AND i.kind = t.kind AND i.id = t.id AND i.modified <= t.modified
"""

CURSOR = """
INSERT INTO cursors (feed, next_url) VALUES (%(feed)s, %(next)s)
ON CONFLICT (feed) DO UPDATE SET next_url = EXCLUDED.next_url
"""

Row = tuple[str, str, int, bool, str | None]


def to_rows(items: list[dict[str, Any]]) -> list[Row]:
    """(kind, id, modified, deleted, data as JSON) per item; the later of duplicates wins."""
    latest: dict[tuple[str, str], Row] = {}
    for item in items:
        key = (item["kind"], str(item["id"]))
        deleted = item["state"] == "deleted"
        data = None if deleted else orjson.dumps(item["data"]).decode()
        latest.pop(key, None)
        latest[key] = (key[0], key[1], int(item["modified"]), deleted, data)
    return list(latest.values())


def write_page(conn: psycopg.Connection, feed: str, rows: list[Row], next_url: str) -> None:
    """One transaction: COPY, upsert, tombstones, cursor."""
    with conn.transaction(), conn.cursor() as cursor:
        if rows:
            with cursor.copy("COPY staging (kind, id, modified, deleted, data) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(UPSERT, {"feed": feed})
            tombstones = [row for row in rows if row[3]]
            if tombstones:
                cursor.execute(
                    DELETE,
                    {
                        "feed": feed,
                        "kinds": [row[0] for row in tombstones],
                        "ids": [row[1] for row in tombstones],
                        "modified": [row[2] for row in tombstones],
                    },
                )
        cursor.execute(CURSOR, {"feed": feed, "next": next_url})


def harvest_feed(client: httpx.Client, conn: psycopg.Connection, feed: str) -> tuple[int, int]:
    """Follow ``next`` from the first page to the last; (items, pages)."""
    url, items, pages = feed, 0, 0
    while True:
        response = client.get(url)
        response.raise_for_status()
        page = orjson.loads(response.content)
        rows = to_rows(page["items"])
        write_page(conn, feed, rows, page["next"])
        items += len(rows)
        pages += 1
        if not page["items"] and page["next"] == url:
            return items, pages
        url = page["next"]


def run(database_url: str, feeds: Sequence[str]) -> dict[str, Any]:
    """Harvest every feed sequentially; the totals, the wall time and each feed's figures."""
    started = time.perf_counter()
    per_feed: dict[str, dict[str, float]] = {}
    with psycopg.connect(database_url) as conn, httpx.Client(timeout=60) as client:
        conn.execute(SCHEMA)
        conn.execute(STAGING)
        conn.commit()
        for feed in feeds:
            feed_started = time.perf_counter()
            feed_items, feed_pages = harvest_feed(client, conn, feed)
            seconds = time.perf_counter() - feed_started
            per_feed[feed] = {"pages": feed_pages, "items": feed_items, "seconds": seconds}
    return {
        "items": sum(int(figures["items"]) for figures in per_feed.values()),
        "pages": sum(int(figures["pages"]) for figures in per_feed.values()),
        "seconds": time.perf_counter() - started,
        "feeds": per_feed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the baseline and print its result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="libpq URL of an empty database")
    parser.add_argument("feeds", nargs="+", help="first-page URLs, harvested in this order")
    args = parser.parse_args(argv)
    result = run(args.database_url, args.feeds)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
