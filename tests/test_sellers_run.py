"""A real `harvester run` with a bookable sellers feed and an attribution feed, served
over HTTP beside the sample publisher: a seller tombstoned mid-run takes its
opportunities out of bookable_now at once; attribution comes from the datasets feed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from helpers import FAST_SETTINGS, sqlalchemy_url, start_harvester, wait_for, write_config
from sqlalchemy import Engine, create_engine, text

from harvester.sample import SamplePublisher
from harvester.sample.shapes import HOST, ORGANIZERS

SELLERS = [f"{HOST}/organizations/{number}" for number in range(len(ORGANIZERS))]
DATASET = {
    "@type": "Dataset", "@id": "https://data.sample.example/", "identifier": "sample-data",
    "name": "Sample Data", "publisher": {"@type": "Organization", "name": "Sample Leisure"},
    "license": "https://creativecommons.org/licenses/by-sa/4.0/",
}  # fmt: skip


class SellersServer:
    """An RPDE sellers feed (afterChangeNumber) and a JSON-LD datasets list, mutable."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.changes = 0  # the RPDE change number of the newest item
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def publish(self, seller: str, state: str = "updated") -> None:
        """A new version of the seller's item: `updated`, or its tombstone."""
        with self.lock:
            self.changes += 1
            self.items = [item for item in self.items if item["id"] != seller]
            item: dict[str, Any] = {"state": state, "kind": "Organization", "id": seller,
                                    "modified": self.changes}  # fmt: skip
            if state == "updated":
                item["data"] = {"@type": "Organization", "@id": seller}
            self.items.append(item)

    def page(self, after: int) -> dict[str, Any]:
        """The RPDE page after change number `after`."""
        with self.lock:
            items = [item for item in self.items if item["modified"] > after][:2]
        last = items[-1]["modified"] if items else after
        return {"items": items, "next": f"{self.base}/sellers?afterChangeNumber={last}",
                "license": "https://creativecommons.org/licenses/by/4.0/"}  # fmt: skip

    def handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path == "/datasets":
                    body = orjson.dumps({"@type": "DataCatalog", "dataset": [DATASET]})
                else:
                    after = int(parse_qs(parts.query).get("afterChangeNumber", ["0"])[0])
                    body = orjson.dumps(outer.page(after))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> SellersServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sellers() -> Iterator[SellersServer]:
    with SellersServer() as server:
        yield server


def bookable_by_seller(engine: Engine) -> dict[str, int]:
    """How many opportunities each parent seller has in bookable_now."""
    query = """
        SELECT COALESCE(parent_data -> 'organizer' ->> '@id', parent_data -> 'organizer' ->> 'id',
                        parent_data -> 'provider' ->> '@id', parent_data -> 'provider' ->> 'id')
               AS seller, count(*) AS n
        FROM bookable_now GROUP BY 1
    """
    with engine.connect() as conn:
        return {row.seller: row.n for row in conn.execute(text(query))}


def test_a_seller_tombstoned_mid_run_takes_its_opportunities_out(
    db_url: str, sellers: SellersServer, tmp_path: Path
) -> None:
    for seller in SELLERS:
        sellers.publish(seller)
    engine = create_engine(sqlalchemy_url(db_url))
    with SamplePublisher(items=400) as publisher:
        toml = publisher.to_config_toml().replace(
            "feeds = [",
            f'bookable_sellers_feed = "{sellers.base}/sellers"\n'
            f'attribution_feed = "{sellers.base}/datasets"\nfeeds = [',
        )
        config = write_config(tmp_path / "h.toml", toml, FAST_SETTINGS)
        with start_harvester(db_url, "run", "--config", str(config)) as proc:
            assert wait_for(lambda: set(bookable_by_seller(engine)) == set(SELLERS), 60), (
                proc.output()
            )
            before = bookable_by_seller(engine)
            gone = SELLERS[0]
            sellers.publish(gone, state="deleted")
            assert wait_for(lambda: gone not in bookable_by_seller(engine), 30), proc.output()
            after = bookable_by_seller(engine)
            # Only the removed seller's opportunities went; the others are all still there.
            assert after == {seller: n for seller, n in before.items() if seller != gone}
            with engine.connect() as conn:
                reasons = conn.execute(text(
                    "SELECT DISTINCT reason FROM opportunity_status WHERE reason LIKE 'seller%'"
                )).scalars().all()  # fmt: skip
                attributed = conn.execute(text(
                    "SELECT DISTINCT attribution_name, attribution_url, license FROM bookable_now"
                )).all()  # fmt: skip
            assert reasons == [f"seller not bookable: {gone}"]
            # The sample data names no dataSource: the page's licence, no dataset.
            assert attributed == [(None, None, "https://creativecommons.org/licenses/by/4.0/")]
            sellers.publish(gone)
            assert wait_for(lambda: bookable_by_seller(engine) == before, 30), proc.output()
            with engine.connect() as conn:
                held = conn.execute(
                    text("SELECT identifier, publisher_name FROM harvester.datasets")
                )
                assert held.all() == [("sample-data", "Sample Leisure")]
            assert proc.stop() == 0
    engine.dispose()
