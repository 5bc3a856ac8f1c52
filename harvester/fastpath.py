"""The page path's direct line to psycopg: statements, COPY and the staging table.

SQLAlchemy's compilation and result wrapping cost about 70 us of CPU per statement, and
a page runs six or more: its statements go to psycopg directly, in the same transaction,
and their errors come back as SQLAlchemy's would.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError

from harvester import sql
from harvester.records import Row


def prepare_engine(engine: Engine) -> Engine:
    """Give every new connection its staging table, outside any page transaction."""

    def create_staging(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(sql.STAGING_DDL)
        dbapi_connection.commit()

    event.listen(engine, "connect", create_staging)
    return engine


_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")  # `:name`, not the `::` of a cast


@functools.cache
def psycopg_sql(statement: str) -> str:
    """A statement's `:name` parameters in psycopg's `%(name)s` style (a literal % doubled)."""
    return _PARAMETER.sub(r"%(\1)s", statement.replace("%", "%%"))


def run(
    conn: Connection, statement: str, params: Mapping[str, Any] | None = None
) -> psycopg.Cursor[Any]:
    """Execute on the connection's psycopg connection; errors come as SQLAlchemy's would."""
    raw = conn.connection.driver_connection
    try:
        return raw.execute(psycopg_sql(statement), params)  # type: ignore[union-attr]
    except psycopg.Error as exc:
        raise wrap_error(conn, statement, exc) from exc


def wrap_error(conn: Connection, statement: str, exc: psycopg.Error) -> BaseException:
    """The SQLAlchemy exception for a psycopg one, the connection invalidated if it is lost."""
    lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
    if lost:
        conn.invalidate(exc)  # the pool opens a new one, as for SQLAlchemy's own statements
    return DBAPIError.instance(statement, None, exc, psycopg.Error, hide_parameters=True,
                               connection_invalidated=lost, dialect=conn.dialect)  # fmt: skip


def copy_to_staging(conn: Connection, rows: Sequence[Row]) -> None:
    """COPY staged rows into the connection's temporary table (emptied at commit)."""
    raw = conn.connection.driver_connection
    try:
        with raw.cursor() as cursor, cursor.copy(sql.COPY_STAGING) as copy:  # type: ignore[union-attr]
            copy.set_types(sql.STAGING_TYPES)
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:
        raise wrap_error(conn, sql.COPY_STAGING, exc) from exc
