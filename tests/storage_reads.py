"""Counting what the app reads from Azure Tables, per table, at the SDK's HTTP transport.

Tests use it to show that routine work reads what is open, not history: the count of rows a
command reads from the lead store must not grow with the leads stored. Instrumentation only: the
requests still go to Azurite as they would.
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit


class TableReads:
    def __init__(self) -> None:
        self.rows: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()

    def of(self, table: str) -> int:
        """Rows read from ``table``."""
        return self.rows[table]

    @property
    def total(self) -> int:
        return sum(self.rows.values())


@contextmanager
def counting_table_reads():
    from azure.core.pipeline.transport import RequestsTransport

    reads = TableReads()
    original = RequestsTransport.send

    def send(transport, request, **kwargs):
        response = original(transport, request, **kwargs)
        path = unquote(urlsplit(request.url).path).rstrip("/").rsplit("/", 1)[-1]
        table = path.split("(", 1)[0]
        if request.method == "GET" and response.status_code == 200 and table != "Tables":
            body = response.internal_response.json()
            rows = len(body["value"]) if "value" in body else 1
            with reads._lock:
                reads.rows[table] += rows
                reads.requests[table] += 1
        return response

    RequestsTransport.send = send
    try:
        yield reads
    finally:
        RequestsTransport.send = original
