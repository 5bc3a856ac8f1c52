"""A server of fixed documents by path over real sockets (data catalogs, dataset sites),
counting requests and the most in flight at once."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from harvester.sample.httpserver import BackgroundServer, SampleHTTPServer


@dataclass(frozen=True)
class Route:
    """What the server answers for one path."""

    body: bytes
    status: int = 200
    content_type: str = "application/ld+json"
    delay: float = 0.0


class CatalogServer(BackgroundServer):
    """Serves fixed documents by path; counts requests, and the most at once."""

    host = "127.0.0.1"
    thread_name = "catalog-server"

    def __init__(self) -> None:
        self.port = 0
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()

    def make_server(self) -> SampleHTTPServer:
        """The HTTP server, answering from `routes` (404 for any other path)."""
        return SampleHTTPServer((self.host, self.port), handler_for(self))

    def url(self, path: str) -> str:
        """The absolute URL of a path."""
        return self.base_url + path

    def json(self, path: str, value: Any, status: int = 200, delay: float = 0.0) -> str:
        """Serve a JSON-LD document; its URL."""
        self.routes[path] = Route(json.dumps(value).encode(), status, delay=delay)
        return self.url(path)

    def raw(self, path: str, body: bytes, content_type: str, status: int = 200) -> str:
        """Serve bytes as they are; their URL."""
        self.routes[path] = Route(body, status, content_type)
        return self.url(path)

    def html(self, path: str, *scripts: Any) -> str:
        """Serve an HTML page with a JSON-LD script for each value (a str is sent raw)."""
        return self.raw(path, html_page(*scripts).encode(), "text/html; charset=utf-8")

    def answer(self, path: str) -> Route:
        """The route for a path, counted (and timed, for `most_in_flight`)."""
        with self.lock:
            self.hits[path] += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        route = self.routes.get(path, Route(b"not found", 404, "text/plain"))
        time.sleep(route.delay)
        with self.lock:
            self.in_flight -= 1
        return route


def handler_for(server: CatalogServer) -> type[BaseHTTPRequestHandler]:
    """A request handler answering from the server's routes."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            """Answer with the route's status, type and body."""
            route = server.answer(self.path)
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    return Handler


def html_page(*scripts: Any) -> str:
    """An HTML page with one JSON-LD script per value (a str is the script's text as is)."""
    elements = "".join(
        '<script type="application/ld+json">'
        f"{script if isinstance(script, str) else json.dumps(script, indent=1)}</script>"
        for script in scripts
    )
    return (
        "<!DOCTYPE html><html><head><title>Open Data</title>"
        '<meta charset="utf-8"><script>var x = "<p>";</script>'
        f"{elements}</head><body><h1>Open data &amp; more</h1></body></html>"
    )
