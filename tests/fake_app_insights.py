"""A fake Application Insights ingestion endpoint on loopback: what the real exporter sends.

Point a connection string at it (``IngestionEndpoint=`` and ``LiveEndpoint=`` its :attr:`url`)
and the real ``azure-monitor-opentelemetry-exporter`` posts its envelopes here over HTTP, as it
would to Azure: ``POST /v2.1/track`` with a JSON array (gzip-compressed or not) answered with the
service's ``{"itemsReceived", "itemsAccepted", "errors"}``. Live metrics' pings and posts are
accepted too (unsubscribed, so they carry no documents) and kept with the rest: every body that
reaches this server is in :attr:`bodies`, decoded, to be searched whole.
"""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeAppInsights:
    def __init__(self) -> None:
        self.bodies: list[str] = []  # every request's path and body, as text
        self.envelopes: list[dict[str, Any]] = []  # the telemetry items posted to /v2.1/track
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def connection_string(self, instrumentation_key: str = "00000000-0000-4000-8000-000000000001") -> str:
        return f"InstrumentationKey={instrumentation_key};IngestionEndpoint={self.url};LiveEndpoint={self.url}"

    def of_type(self, base_type: str) -> list[dict[str, Any]]:
        """The envelopes whose ``data.baseType`` is ``base_type`` (RemoteDependencyData, MessageData...)."""
        with self.lock:
            return [item for item in self.envelopes if item.get("data", {}).get("baseType") == base_type]

    def __enter__(self) -> FakeAppInsights:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "gzip" in (self.headers.get("Content-Encoding") or "").lower():
                    raw = gzip.decompress(raw)
                text = raw.decode("utf-8", errors="replace")
                items: list[dict[str, Any]] = []
                if self.path.rstrip("/").endswith("/track"):
                    parsed = (
                        json.loads(text)
                        if text.strip().startswith("[")
                        else [json.loads(line) for line in text.splitlines() if line.strip()]
                    )
                    items = [item for item in parsed if isinstance(item, dict)]
                with fake.lock:
                    fake.bodies.append(f"{self.command} {self.path}\n{text}")
                    fake.envelopes.extend(items)
                answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        return Handler
