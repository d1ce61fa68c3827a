"""Forcing an interleaving at the storage SDK's HTTP transport, against Azurite.

``at_request(matches, action)`` runs ``action`` (another command: a sweep, ``status``, a replay)
just before the first request for which ``matches(Call)`` is true is sent, as if it ran on another
instance at that moment; ``refusing(matches)`` answers every matching request with a connection
error, as an outage of that service would. Both sit below the app's code, so the same test runs
against any version of it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    body: bytes

    @property
    def path(self) -> str:
        return unquote(urlsplit(self.url).path)

    @property
    def table(self) -> str:
        """The table a table request names (``Leads``, ``LeadsIndex``, ...), else ''."""
        last = self.path.rstrip("/").rsplit("/", 1)[-1]
        return last.split("(", 1)[0] if "devstoreaccount1" in self.path else ""

    def to_table(self, name: str) -> bool:
        """Whether the request is to the table ``name``, or a transaction on it."""
        if self.table == name:
            return True
        # A transaction's operations name their table in their request lines: "POST .../Leads HTTP/1.1".
        return self.path.endswith("/$batch") and re.search(rf"/{re.escape(name)}[ (?]".encode(), self.body) is not None

    @property
    def is_queue(self) -> bool:
        return "/messages" in self.path

    @property
    def writes(self) -> bool:
        return self.method not in ("GET", "HEAD")


def _call(request) -> Call:
    body = getattr(request, "content", None) or getattr(request, "data", None) or getattr(request, "body", None)
    if isinstance(body, str):
        body = body.encode()
    return Call(request.method, request.url, body if isinstance(body, bytes) else b"")


@contextmanager
def _patched(before: Callable[[Call], None]) -> Iterator[None]:
    from azure.core.pipeline.transport import RequestsTransport

    original = RequestsTransport.send
    inside = threading.local()

    def send(transport, request, **kwargs):
        if not getattr(inside, "busy", False):
            inside.busy = True
            try:
                before(_call(request))
            finally:
                inside.busy = False
        return original(transport, request, **kwargs)

    RequestsTransport.send = send
    try:
        yield
    finally:
        RequestsTransport.send = original


@contextmanager
def at_request(matches: Callable[[Call], bool], action: Callable[[], object]) -> Iterator[list]:
    """Run ``action`` once, before the first request ``matches``; what it returned is appended
    to the list yielded (empty if no request matched)."""
    ran: list = []

    def before(call: Call) -> None:
        if not ran and matches(call):
            ran.append(None)
            ran[0] = action()

    with _patched(before):
        yield ran


@contextmanager
def refusing(matches: Callable[[Call], bool]) -> Iterator[list[Call]]:
    """Answer every request that ``matches`` with a connection error; the calls refused are
    appended to the list yielded."""
    from azure.core.exceptions import ServiceRequestError

    refused: list[Call] = []

    def before(call: Call) -> None:
        if matches(call):
            refused.append(call)
            raise ServiceRequestError(f"refused by the test: {call.method} {call.path}")

    with _patched(before):
        yield refused


@contextmanager
def watching() -> Iterator[list[Call]]:
    """Every storage request sent while inside, in order."""
    calls: list[Call] = []
    with _patched(calls.append):
        yield calls
