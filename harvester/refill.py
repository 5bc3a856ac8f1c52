"""Rows held from before a revision that added derived columns, derived again in place."""

from __future__ import annotations

import logging
import time

import orjson
from sqlalchemy import Engine

from harvester import records, sql
from harvester.fastpath import run

logger = logging.getLogger(__name__)
BATCH = 2_000  # rows per transaction: a worker writing one of them waits at most one batch
PROGRESS_SECONDS = 10.0


ACTIVITY = sql.FACT_COLUMNS.index("activity")


def derive(item_type: str, data: str) -> records.Values:
    """A held row's facts from its stored data, as REFILL_FACTS takes them: activity (a
    list) as JSON text."""
    facts = records.facts_of(item_type, records.load_json(data))
    activity = facts[ACTIVITY]
    return (*facts[:ACTIVITY], activity and orjson.dumps(activity).decode(), *facts[ACTIVITY + 1 :])


def refill_facts(engine: Engine, batch: int = BATCH) -> int:
    """Give every child and parent without filter facts (written before revision 0009)
    its facts, from its stored data, a batch per transaction; returns how many."""
    done, started, told = 0, time.monotonic(), time.monotonic()
    while True:
        with engine.begin() as conn:
            held = run(conn, sql.UNREFILLED, {"limit": batch}).fetchall()
            if not held:
                break
            rows = [(source, kind, rpde_id, *derive(item_type, data))
                    for source, kind, rpde_id, item_type, data in held]  # fmt: skip
            names = ("sources", "kinds", "ids", *sql.FACT_COLUMNS)
            params = {n: list(v) for n, v in zip(names, zip(*rows, strict=True), strict=True)}
            run(conn, sql.REFILL_FACTS, params)
        done += len(held)
        if time.monotonic() - told >= PROGRESS_SECONDS:
            told = time.monotonic()
            logger.info("deriving filter facts for rows held from before: %d so far", done,
                        extra={"event": "facts_refilling", "rows": done})  # fmt: skip
    if done:
        seconds = round(time.monotonic() - started, 1)
        fields = {"event": "facts_refilled", "rows": done, "seconds": seconds}
        logger.info("filter facts derived for %d rows held from before, in %.1f s", done,
                    seconds, extra=fields)  # fmt: skip
    return done
