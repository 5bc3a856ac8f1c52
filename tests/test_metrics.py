"""The /metrics a Prometheus user expects: no `_created`, the standard collectors, build
info, readable per-feed labels, and a port bound to localhost unless told otherwise."""

from __future__ import annotations

import platform
import socket
import uuid
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import NamedTuple

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import harvester
from harvester import metrics
from harvester.errors import ConfigError


class FakeRow(NamedTuple):
    """What record_page reads of a stored row."""

    type: str | None


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    """A metrics server on a free port of the default host."""
    started = metrics.serve_metrics(port=0)
    yield started
    started.shutdown()
    started.server_close()


@pytest.fixture
def source() -> str:
    """A source name no other test uses: the registry is the process's."""
    return f"test-{uuid.uuid4().hex[:8]}"


def scrape(server: ThreadingHTTPServer) -> tuple[str, list[Sample]]:
    """/metrics over HTTP: the body and every sample in it."""
    port = server.server_address[1]
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = [s for family in text_string_to_metric_families(body) for s in family.samples]
    return body, samples


def of_source(samples: list[Sample], name: str, source: str) -> list[Sample]:
    """The samples of one metric for one source."""
    return [s for s in samples if s.name == name and s.labels.get("source") == source]


def harvest(source: str) -> tuple[str, str]:
    """Two feeds' pages, one feed failed before any page; their URLs."""
    sessions = "https://example.org/feeds/scheduled-sessions"
    gone = "https://example.org/feeds/facility-uses/"
    rows = [FakeRow("ScheduledSession"), FakeRow("ScheduledSession"), FakeRow("Event")]
    metrics.record_page(source, sessions, rows, 1, caught_up=False)
    metrics.record_page(source, sessions, [FakeRow(None)], 0, caught_up=True)  # tombstones
    metrics.record_error(source, gone, "gone")
    return sessions, gone


def test_no_created_series_and_the_standard_collectors(
    server: ThreadingHTTPServer, source: str
) -> None:
    harvest(source)
    body, samples = scrape(server)
    assert "harvester_pages_total" in body
    assert not [line for line in body.splitlines() if "_created" in line]
    names = {s.name for s in samples}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "python_info",
            "python_gc_collections_total"} <= names  # fmt: skip
    build = [s for s in samples if s.name == "harvester_build_info"]
    assert [(s.labels, s.value) for s in build] == [
        ({"version": harvester.__version__, "python": platform.python_version()}, 1.0)
    ]


def test_counters_are_labelled_source_and_kind_gauges_also_url(
    server: ThreadingHTTPServer, source: str
) -> None:
    sessions, gone = harvest(source)
    _, samples = scrape(server)
    kind = {"source": source, "kind": "ScheduledSession"}
    assert [(s.labels, s.value) for s in of_source(samples, "harvester_pages_total", source)] == [
        (kind, 2.0)
    ]
    assert [(s.labels, s.value) for s in of_source(samples, "harvester_items_total", source)] == [
        (kind, 4.0)  # the tombstone's page counts under the kind last seen
    ]
    rejected = of_source(samples, "harvester_items_rejected_total", source)
    assert [(s.labels, s.value) for s in rejected] == [(kind, 1.0)]
    errors = of_source(samples, "harvester_feed_errors_total", source)
    assert [(s.labels, s.value) for s in errors] == [
        ({"source": source, "kind": "facility-uses", "state": "gone"}, 1.0)  # no page yet
    ]
    states = {
        (s.labels["kind"], s.labels["url"], s.labels["state"]): s.value
        for s in of_source(samples, "harvester_feed_state", source)
    }
    assert len(states) == 2 * len(metrics.FEED_STATES)
    assert states[("ScheduledSession", sessions, "caught_up")] == 1.0
    assert states[("ScheduledSession", sessions, "harvesting")] == 0.0
    assert states[("facility-uses", gone, "gone")] == 1.0
    lag = of_source(samples, "harvester_feed_lag_seconds", source)
    assert [s.labels for s in lag] == [{**kind, "url": sessions}]
    assert 0 <= lag[0].value < 30


def test_a_feed_whose_kind_becomes_known_leaves_no_stale_state(
    server: ThreadingHTTPServer, source: str
) -> None:
    url = "https://example.org/sellers"
    metrics.record_error(source, url, "error")
    metrics.record_page(source, url, [FakeRow("Organization")], 0, caught_up=True)
    _, samples = scrape(server)
    kinds = {s.labels["kind"] for s in of_source(samples, "harvester_feed_state", source)}
    assert kinds == {"Organization"}


def test_the_default_host_is_localhost(server: ThreadingHTTPServer) -> None:
    assert server.socket.getsockname()[0] == "127.0.0.1"


def test_a_port_in_use_is_a_one_line_config_error(server: ThreadingHTTPServer) -> None:
    port = server.server_address[1]
    with pytest.raises(ConfigError) as raised:
        metrics.serve_metrics("127.0.0.1", port)
    assert str(raised.value) == f"metrics port {port} on 127.0.0.1 is in use"


def test_a_port_held_by_another_program_is_in_use_too() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ConfigError, match=f"metrics port {port} on 127.0.0.1 is in use"):
            metrics.serve_metrics(port=port)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://example.org/feeds/scheduled-sessions", "scheduled-sessions"),
        ("https://example.org/feeds/slots/", "slots"),  # a trailing slash
        ("https://example.org/rpde?feed=sessions", "rpde"),  # the query is no segment
        ("https://example.org/", "example.org"),  # no path: the host
    ],
)
def test_the_kind_of_a_feed_not_yet_seen_is_its_urls_last_segment(url: str, kind: str) -> None:
    assert metrics.url_kind(url) == kind
