"""`harvester checkout` as a real child process, over real HTTP, on a real harvest.

One harvest per module: the sample publisher (300 items) is harvested by
`harvester run --once` into a database of the module's own; the sample checkout server
answers the sessions. Each test takes opportunities of its own from the bookable ones,
so the refusals it causes do not reach the others.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import TEMPLATE, _scratch_database
from helpers import harvester_argv, libpq_url, update_item, write_config
from sqlalchemy import Engine, text

from harvester import database
from harvester.sample import SamplePublisher
from harvester.sample.checkout import SampleCheckout

SOURCE = "sample"
API_KEY = "sample-checkout-key"
BROKER = {"type": "Organization", "name": "CLI Test Broker", "url": "https://broker.example/"}
CONTEXT = ["https://openactive.io/", "https://imin.co/"]
BASE_SETTINGS: dict[str, Any] = {"min_poll_seconds": 1, "checkout_retry_seconds": 10}
CHILD_TIMEOUT = 60.0
# Opportunities taken for tests start this far ahead at least: none leaves bookable_now
# while the module runs.
MARGIN = "2 hours"
# Distinctive customer details: a leak into any output or row cannot be missed.
TOKEN = secrets.token_hex(6)
CUSTOMER: dict[str, Any] = {
    "type": "Person",
    "email": f"ada-{TOKEN}@example.com",
    "telephone": "0" + "".join(secrets.choice("0123456789") for _ in range(10)),
    "givenName": f"Ada{TOKEN[:4]}Zoë",
    "address": {"type": "PostalAddress", "postalCode": f"ZZ{secrets.randbelow(90) + 10} 9QQ"},
}
CUSTOMER_TEXTS = (
    CUSTOMER["email"], quote(CUSTOMER["email"]), TOKEN, CUSTOMER["telephone"],
    CUSTOMER["givenName"], CUSTOMER["address"]["postalCode"],
)  # fmt: skip


class TimedCheckout(SampleCheckout):
    """The sample checkout server, also noting when each request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []

    def respond(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Any:
        """Note the arrival, then answer as the sample does."""
        self.arrivals.append(time.monotonic())
        return super().respond(method, target, headers, raw)

    def reset(self) -> None:
        """No requests, failures or refusals left from another test."""
        with self.lock:
            self.failures.clear()
            self.refused.clear()
        self.requests.clear()
        self.arrivals.clear()

    def gaps(self) -> list[float]:
        """Seconds between consecutive requests."""
        return [later - earlier for earlier, later in itertools.pairwise(self.arrivals)]


@dataclass(frozen=True)
class Row:
    """A bookable opportunity as bookable_now shows it."""

    id: str
    kind: str
    identifier: str
    published_identifier: Any  # data -> 'identifier', as the feed wrote it
    checkout_url: str


@dataclass
class World:
    """The harvested module database, the two sample servers and every child's output."""

    publisher: SamplePublisher
    sample: TimedCheckout
    db_url: str
    engine: Engine
    directory: Path
    rows: list[Row]
    outputs: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    def take(self, count: int = 1, where: Callable[[Row], bool] = lambda row: True) -> list[Row]:
        """Bookable opportunities (matching `where`) that no other test uses."""
        rows = [row for row in self.rows if row.id not in self.used and where(row)][:count]
        assert len(rows) == count, "the harvest holds too few bookable opportunities"
        self.used.update(row.id for row in rows)
        return rows

    def config(self, route: str, *, api_key: str = API_KEY, **settings: Any) -> Path:
        """A config file for the publisher's feeds, checked out by `route`."""
        toml = self.publisher.to_config_toml(
            source_name=SOURCE, checkout_base_url=self.sample.base_url
        )
        toml = toml.replace("feeds = [", f'checkout_route = "{route}"\nfeeds = [', 1)
        tables = []
        if route == "authenticated":
            tables += ["[sources.broker]", f'name = "{BROKER["name"]}"', f'url = "{BROKER["url"]}"']
        tables += ["[sources.headers]", f'X-API-KEY = "{api_key}"']
        name = f"{route}-{secrets.token_hex(4)}.toml"
        body = toml + "\n".join(tables) + "\n"
        return write_config(self.directory / name, body, {**BASE_SETTINGS, **settings})

    def run(
        self, *args: str, config: Path | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`harvester ARGS [--config CONFIG]` on the module database; output kept."""
        extra = ["--config", str(config)] if config is not None else []
        argv, env = harvester_argv(self.db_url, [*args, *extra], None, "flag")
        result = subprocess.run(
            argv, env=env, input=stdin, capture_output=True, text=True,
            timeout=CHILD_TIMEOUT, check=False,
        )  # fmt: skip
        self.outputs.append(result.stdout + result.stderr)
        return result

    def checkout(
        self, *args: str, config: Path, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`harvester checkout ARGS`."""
        return self.run("checkout", *args, config=config, stdin=stdin)

    def scalar(self, query: str, **params: Any) -> Any:
        """One value from the module database."""
        with self.engine.connect() as conn:
            return conn.execute(text(query), params).scalar()

    def bookable_ids(self) -> set[str]:
        """Every @id in bookable_now."""
        with self.engine.connect() as conn:
            return set(conn.execute(text("SELECT id FROM bookable_now")).scalars())

    def status_of(self, opportunity_id: str) -> tuple[bool, str | None]:
        """(bookable, reason) from opportunity_status."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT bookable, reason FROM opportunity_status WHERE id = :id"),
                {"id": opportunity_id},
            ).one()
        return bool(row.bookable), row.reason


@pytest.fixture(scope="module")
def world(
    pg_server: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """A harvested database of the module's own, and both sample servers running."""
    directory = tmp_path_factory.mktemp("checkout-cli")
    with (
        SamplePublisher(items=300) as publisher,
        TimedCheckout() as sample,
        _scratch_database(pg_server, "harvester_checkout_cli", TEMPLATE) as db_url,
    ):
        engine = database.make_engine(db_url)
        try:
            world = World(publisher, sample, db_url, engine, directory, rows=[])
            harvest = world.run("run", "--once", config=world.config("guest"))
            assert harvest.returncode == 0, harvest.stderr
            with engine.connect() as conn:
                found = conn.execute(text(
                    "SELECT id, kind, identifier, data -> 'identifier', checkout_url"
                    " FROM bookable_now"
                    f" WHERE start_date > now() + interval '{MARGIN}'"
                    f" AND (bookable_until IS NULL OR bookable_until > now() + interval '{MARGIN}')"
                    " ORDER BY start_date, id"
                )).all()  # fmt: skip
            world.rows = [Row(*row) for row in found]
            assert len(world.rows) >= 20, f"only {len(world.rows)} bookable opportunities"
            yield world
        finally:
            engine.dispose()


@pytest.fixture(autouse=True)
def fresh_sample(world: World) -> Iterator[TimedCheckout]:
    """The checkout server as new for each test, and left so."""
    world.sample.reset()
    yield world.sample
    world.sample.reset()


def session_body(row: Row) -> dict[str, Any]:
    """The standalone route's body for `row` (contract, "Checkout sessions")."""
    item = {"type": "OrderItem", "orderedItem": {"type": row.kind, "id": row.id}}
    order = {"type": "OrderQuote", "orderedItem": [item]}
    return {"@context": CONTEXT, "type": "imin:CheckoutSession", "imin:initialOrder": order}


def authenticated_body(row: Row, customer: Mapping[str, Any]) -> dict[str, Any]:
    """The authenticated route's body: identifier as published, broker and customer."""
    body = session_body(row)
    order = body["imin:initialOrder"]
    order["orderedItem"][0]["orderedItem"]["identifier"] = row.published_identifier
    order["broker"] = BROKER
    order["customer"] = dict(customer)
    return body


def not_bookable(reason: str) -> str:
    """The CLI's error line for an opportunity not bookable for `reason`."""
    return f"harvester: not bookable: {reason}"


def last_line(stderr: str) -> str:
    """The last line a child wrote to stderr (the error, after any log lines)."""
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else ""


def target_re(sample: SampleCheckout, prefix: str) -> re.Pattern[str]:
    """A session URL from the sample server: `{base}/{prefix}/{hex}`."""
    return re.compile(re.escape(f"{sample.base_url}/{prefix}/") + r"[0-9a-f]{32}")


def child_of(world: World, opportunity_id: str) -> tuple[str, str]:
    """(feed name, RPDE id) of the child item with this @id."""
    with world.engine.connect() as conn:
        url, rpde_id = conn.execute(text(
            "SELECT f.url, i.rpde_id FROM harvester.items AS i"
            " JOIN harvester.feeds AS f ON f.id = i.feed_id"
            " WHERE i.role = 'child' AND i.item_id = :id"
        ), {"id": opportunity_id}).one()  # fmt: skip
    return url.rsplit("/", 1)[-1], rpde_id


def held_parent_of(world: World, opportunity_id: str) -> tuple[str, str] | None:
    """(feed name, RPDE id) of the held parent item the child is joined to, if any."""
    with world.engine.connect() as conn:
        row = conn.execute(text(
            "SELECT f.url, p.rpde_id FROM harvester.items AS c"
            " JOIN harvester.items AS p ON p.source = c.source AND p.kind = c.parent_kind"
            "  AND p.rpde_id = c.parent_rpde_id"
            " JOIN harvester.feeds AS f ON f.id = p.feed_id"
            " WHERE c.role = 'child' AND c.item_id = :id"
        ), {"id": opportunity_id}).one_or_none()  # fmt: skip
    return None if row is None else (row[0].rsplit("/", 1)[-1], row[1])


def bookable_at_instants(world: World, opportunity_id: str) -> list[bool]:
    """Whether bookable_at holds the opportunity, at instants from now to its start."""
    query = """
    SELECT EXISTS (SELECT 1 FROM bookable_at(t.at) AS b WHERE b.id = :id)
    FROM harvester.items AS c
    CROSS JOIN LATERAL (VALUES (now()), (now() + interval '1 minute'),
        (now() + (c.start_date - now()) / 2), (c.start_date - interval '1 second'),
        (GREATEST(lower(c.bookable), now()) + interval '1 second')) AS t(at)
    WHERE c.role = 'child' AND c.item_id = :id AND t.at < c.start_date
      AND (upper(c.bookable) IS NULL OR t.at < upper(c.bookable))
    """
    with world.engine.connect() as conn:
        found = conn.execute(text(query), {"id": opportunity_id}).scalars()
        return [bool(value) for value in found]


# --- the three routes ---------------------------------------------------------------------


def test_guest_route_prints_the_rows_checkout_url_and_sends_nothing(world: World) -> None:
    (row,) = world.take()
    result = world.checkout(row.id, config=world.config("guest"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == row.checkout_url + "\n"
    assert row.checkout_url.startswith(world.sample.base_url + "/")
    assert len(world.sample.requests) == 0

    as_json = world.checkout(row.id, "--json", config=world.config("guest"))
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {"url": row.checkout_url, "route": "guest"}
    assert len(world.sample.requests) == 0


def test_standalone_route_prints_the_session_target(world: World) -> None:
    (row,) = world.take()
    config = world.config("standalone")
    plain = world.checkout(row.id, config=config)
    assert plain.returncode == 0, plain.stderr
    assert target_re(world.sample, "opendata").fullmatch(plain.stdout.strip()), plain.stdout

    as_json = world.checkout(row.id, "--json", config=config)
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert set(answer) == {"url", "route"} and answer["route"] == "standalone"
    assert target_re(world.sample, "opendata").fullmatch(answer["url"])
    assert answer["url"] != plain.stdout.strip()  # a new session each time

    requests = world.sample.requests.snapshot()
    assert len(requests) == 2
    for request in requests:
        assert (request.method, request.path) == ("POST", "/checkout-sessions")
        assert request.headers["x-api-key"] == API_KEY
        assert request.headers["content-type"].startswith("application/json")
        assert request.body == session_body(row)


def test_authenticated_route_passes_identifier_broker_and_customer_through(
    world: World, tmp_path: Path
) -> None:
    (row,) = world.take()
    config = world.config("authenticated")
    customer_file = tmp_path / "customer.json"
    customer_file.write_text(json.dumps(CUSTOMER, ensure_ascii=False), encoding="utf-8")

    from_file = world.checkout(row.id, "--customer", str(customer_file), config=config)
    assert from_file.returncode == 0, from_file.stderr
    assert target_re(world.sample, "checkout").fullmatch(from_file.stdout.strip())

    from_stdin = world.checkout(
        row.id, "--customer", "-", "--json", config=config, stdin=json.dumps(CUSTOMER)
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    answer = json.loads(from_stdin.stdout)
    assert answer["route"] == "authenticated"
    assert target_re(world.sample, "checkout").fullmatch(answer["url"])

    requests = world.sample.requests.snapshot()
    assert len(requests) == 2
    for request in requests:
        assert (request.method, request.path) == ("POST", "/api/checkout-sessions/")
        assert request.body == authenticated_body(row, CUSTOMER)
        # Unchanged: the same JSON, types included (1 is not 1.0, "x" is not x).
        ordered = request.body["imin:initialOrder"]
        assert json.dumps(ordered["customer"], sort_keys=True) == json.dumps(
            CUSTOMER, sort_keys=True
        )
        assert ordered["orderedItem"][0]["orderedItem"]["identifier"] == row.published_identifier


def test_by_source_and_identifier(world: World) -> None:
    (row,) = world.take()
    assert row.identifier != row.id
    config = world.config("standalone")
    result = world.checkout(row.identifier, "--source", SOURCE, "--json", config=config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["route"] == "standalone"
    (request,) = world.sample.requests.snapshot()
    assert request.body == session_body(row)

    # Without the source, the identifier is taken for an @id: none is held.
    alone = world.checkout(row.identifier, config=config)
    assert alone.returncode == 1
    assert "no such opportunity" in last_line(alone.stderr)
    assert len(world.sample.requests) == 1


# --- nothing is sent for what is not bookable -----------------------------------------------


def test_not_bookable_fails_with_its_reason_and_sends_nothing(world: World) -> None:
    with world.engine.connect() as conn:
        opportunity_id, reason = conn.execute(text(
            "SELECT id, reason FROM opportunity_status WHERE NOT bookable"
            " AND reason = 'booking window not open yet' ORDER BY id LIMIT 1"
        )).one()  # fmt: skip
    assert opportunity_id not in world.bookable_ids()
    customer = json.dumps(CUSTOMER)
    for route in ("standalone", "authenticated"):
        result = world.checkout(
            opportunity_id, "--customer", "-", config=world.config(route), stdin=customer
        )
        assert result.returncode == 1
        assert result.stdout == ""
        assert last_line(result.stderr) == not_bookable(reason)
    assert len(world.sample.requests) == 0


def test_unknown_id_fails_and_sends_nothing(world: World) -> None:
    unknown = "https://sample-firehose.example/scheduled-sessions/no-such-session"
    result = world.checkout(unknown, config=world.config("standalone"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert last_line(result.stderr).startswith("harvester: not bookable: ")
    assert "no such opportunity" in last_line(result.stderr)
    assert len(world.sample.requests) == 0


# --- refusals -------------------------------------------------------------------------------


def test_a_refusal_takes_the_opportunity_out_until_it_is_updated(world: World) -> None:
    # One comes back by its own update, the other by its parent's.
    (by_parent,) = world.take(where=lambda row: held_parent_of(world, row.id) is not None)
    parent = held_parent_of(world, by_parent.id)
    (by_child,) = world.take(where=lambda row: held_parent_of(world, row.id) != parent)
    config = world.config("standalone")
    for row in (by_child, by_parent):
        assert all(bookable_at_instants(world, row.id))
        world.sample.refuse(row.id)
        result = world.checkout(row.id, config=config)
        assert result.returncode == 1
        assert result.stdout == ""
        assert last_line(result.stderr).startswith("harvester: not bookable: refused by checkout")
    assert len(world.sample.requests) == 2

    bookable = world.bookable_ids()
    for row in (by_child, by_parent):
        assert row.id not in bookable
        assert world.status_of(row.id) == (False, "refused by checkout")
        instants = bookable_at_instants(world, row.id)
        assert instants and not any(instants)
        again = world.checkout(row.id, config=config)
        assert again.returncode == 1
        assert last_line(again.stderr) == not_bookable("refused by checkout")
    assert len(world.sample.requests) == 2  # the second calls sent nothing

    # The publisher updates one child and the other's parent; a harvest brings both back.
    update_item(world.publisher, *child_of(world, by_child.id))
    assert parent is not None
    update_item(world.publisher, *parent)
    harvest = world.run("run", "--once", config=world.config("guest"))
    assert harvest.returncode == 0, harvest.stderr
    bookable = world.bookable_ids()
    for row in (by_child, by_parent):
        assert row.id in bookable
        assert world.status_of(row.id) == (True, None)
        assert all(bookable_at_instants(world, row.id))
        world.sample.sell(row.id)
        result = world.checkout(row.id, config=config)
        assert result.returncode == 0, result.stderr
        assert target_re(world.sample, "opendata").fullmatch(result.stdout.strip())
    assert len(world.sample.requests) == 4


# --- passing failures: bounded retries ---------------------------------------------------------


def test_503_twice_then_a_session(world: World) -> None:
    (row,) = world.take()
    world.sample.fail_next(503, times=2)
    result = world.checkout(row.id, config=world.config("standalone"))
    assert result.returncode == 0, result.stderr
    assert target_re(world.sample, "opendata").fullmatch(result.stdout.strip())
    assert len(world.sample.requests) == 3
    assert all(request.body == session_body(row) for request in world.sample.requests)


def test_429_waits_its_retry_after(world: World) -> None:
    (row,) = world.take()
    world.sample.fail_next(429, headers={"Retry-After": "1"})
    result = world.checkout(row.id, config=world.config("standalone"))
    assert result.returncode == 0, result.stderr
    assert target_re(world.sample, "opendata").fullmatch(result.stdout.strip())
    assert len(world.sample.requests) == 2
    (gap,) = world.sample.gaps()
    assert gap >= 1.0


def test_500_past_the_attempts_is_a_clear_failure(world: World) -> None:
    (row,) = world.take()
    world.sample.fail_next(500, times=10)
    result = world.checkout(row.id, config=world.config("standalone", checkout_attempts=2))
    assert result.returncode == 1
    assert result.stdout == ""
    error = last_line(result.stderr)
    assert error.startswith("harvester: checkout failed: ")
    assert "HTTP 500" in error and "/checkout-sessions" in error
    assert len(world.sample.requests) == 2
    # A failure is no refusal: the opportunity stays bookable.
    assert row.id in world.bookable_ids()


def test_a_timeout_is_retried(world: World) -> None:
    (row,) = world.take()
    # A 201 with no target, had it been waited for: only a timeout and a retry succeed.
    world.sample.fail_next(201, delay=3.0)
    config = world.config("standalone", request_timeout_seconds=1, request_deadline_seconds=5)
    started = time.monotonic()
    result = world.checkout(row.id, config=config)
    assert result.returncode == 0, result.stderr
    assert target_re(world.sample, "opendata").fullmatch(result.stdout.strip())
    assert len(world.sample.requests) == 2
    (gap,) = world.sample.gaps()
    assert 1.0 <= gap < 3.0  # given up after the 1 s timeout, not after the 3 s answer
    assert time.monotonic() - started < 30


def test_a_wrong_api_key_is_a_failure_without_the_key(world: World) -> None:
    (row,) = world.take()
    wrong = f"wrong-key-{secrets.token_hex(8)}"
    result = world.checkout(row.id, config=world.config("standalone", api_key=wrong))
    assert result.returncode == 1
    assert result.stdout == ""
    error = last_line(result.stderr)
    assert error.startswith("harvester: checkout failed: ")
    assert "401" in error
    assert wrong not in result.stderr
    (request,) = world.sample.requests.snapshot()
    assert request.headers["x-api-key"] == wrong
    assert row.id in world.bookable_ids()  # not a refusal


# --- customer details never leak ---------------------------------------------------------------


def database_text(world: World) -> str:
    """Every row of every table in schemas harvester and public, as text; and pg_dump's
    dump of the database when its major version is the server's."""
    parts: list[str] = []
    with world.engine.connect() as conn:
        tables = conn.execute(text(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema IN ('harvester', 'public') AND table_type = 'BASE TABLE'"
        )).all()  # fmt: skip
        assert {"items", "feeds", "sources"} <= {name for _, name in tables}
        for schema, name in tables:
            rows = conn.execute(text(f'SELECT t::text FROM "{schema}"."{name}" AS t')).scalars()
            parts += rows
        server_major = int(conn.execute(text("SHOW server_version_num")).scalar_one()) // 10000
    assert len(parts) >= 300  # the harvested items, at least
    pg_dump = shutil.which("pg_dump")
    if pg_dump:
        version = subprocess.run([pg_dump, "--version"], capture_output=True, text=True)
        match = re.search(r"(\d+)\.\d+", version.stdout)
        if match and int(match.group(1)) == server_major:
            dump = subprocess.run(
                [pg_dump, "--no-owner", "-d", libpq_url(world.db_url)],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            assert "harvester.items" in dump.stdout
            parts.append(dump.stdout)
    return "\n".join(parts)


def assert_no_customer_text(where: str, content: str) -> None:
    """None of the customer's values is in `content`."""
    leaked = [value for value in CUSTOMER_TEXTS if value in content]
    assert not leaked, f"customer details {leaked} in {where}"


def test_customer_details_never_leak(world: World, tmp_path: Path) -> None:
    success, refused, failing = world.take(3)
    customer_file = tmp_path / "customer.json"
    customer_file.write_text(json.dumps(CUSTOMER, ensure_ascii=False), encoding="utf-8")
    config = world.config("authenticated")
    debug = ("--log-level", "DEBUG")
    results = []

    results.append(world.checkout(success.id, "--customer", str(customer_file), *debug,
                                  config=config))  # fmt: skip
    results.append(world.checkout(success.id, "--customer", "-", "--json", *debug,
                                  "--log-format", "json", config=config,
                                  stdin=json.dumps(CUSTOMER)))  # fmt: skip
    assert [result.returncode for result in results] == [0, 0], results

    world.sample.refuse(refused.id)
    results.append(world.checkout(refused.id, "--customer", str(customer_file), *debug,
                                  config=config))  # fmt: skip
    assert "refused by checkout" in last_line(results[-1].stderr)
    results.append(world.checkout(refused.id, "--customer", str(customer_file), *debug,
                                  config=config))  # fmt: skip
    assert last_line(results[-1].stderr) == not_bookable("refused by checkout")

    world.sample.fail_next(500, times=10)
    results.append(world.checkout(failing.id, "--customer", "-", *debug,
                                  config=world.config("authenticated", checkout_attempts=2),
                                  stdin=json.dumps(CUSTOMER)))  # fmt: skip
    assert last_line(results[-1].stderr).startswith("harvester: checkout failed: ")
    assert [result.returncode for result in results] == [0, 0, 1, 1, 1]

    # The details did go out, to the checkout server and nowhere else.
    requests = world.sample.requests.snapshot()
    assert len(requests) == 5  # 2 sessions, 1 refusal, 2 failed attempts
    assert all(request.body["imin:initialOrder"]["customer"] == CUSTOMER for request in requests)
    assert any("DEBUG" in result.stderr for result in results)  # the debug logs were on

    status = world.run("status", "--log-level", "DEBUG")
    assert status.returncode == 0, status.stderr
    assert "refused by checkout" in status.stdout

    for index, output in enumerate(world.outputs):  # every child of the module so far
        assert_no_customer_text(f"the output of harvester child #{index}", output)
    assert_no_customer_text("the database", database_text(world))
