"""What every fake service in ``tests/`` is built on: a real HTTP(S) server on 127.0.0.1.

:class:`LoopbackServer` runs a threading server (TLS from a trustme CA when asked, the handshake in
the request's own thread so a slow client never blocks the accept loop) and :class:`LoopbackHandler`
gives each fake the same ways of answering and of misbehaving, defined here once:

- one dispatch: every method a fake lists in ``methods`` goes to its :meth:`LoopbackHandler.serve`
  (which routes by path), any other is answered 501;
- :meth:`LoopbackHandler.answer` (JSON, text or bytes, with headers), :meth:`LoopbackHandler.drop`
  (close the connection without a word);
- ``drip``: the answer goes out one byte every ``drip_interval`` seconds (a service that answers
  slowly but never stops, which a per-read timeout never cuts);
- ``lost``: the fake does the work, then drops the connection: the answer is lost, as when a
  service committed and the network failed;
- ``hang``: the fake waits ``hang_seconds`` before answering (a client that gave up earlier sees a
  timeout).

A fake chooses which of its requests misbehave (each keeps its own fault queue or random mode) and
plays them through :meth:`LoopbackHandler.play`.
"""

from __future__ import annotations

import json
import socket
import ssl
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# The fault behaviours every fake has (each fake may add its own, e.g. "429").
DRIP, LOST, HANG, DROP = "drip", "lost", "hang", "drop"


class LoopbackHTTPServer(ThreadingHTTPServer):
    """The threading server under every fake (a fake with several endpoints runs several)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64  # bursts of deliveries connect at once

    def __init__(self, handler, fake: LoopbackServer, context: ssl.SSLContext | None) -> None:
        self.fake = fake
        self.context = context
        super().__init__(("127.0.0.1", 0), handler)

    def finish_request(self, request, client_address) -> None:
        if self.context is None:
            return super().finish_request(request, client_address)
        # TLS in the request's own thread, so a slow handshake never blocks the accept loop.
        request.settimeout(30)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:  # quiet: clients leave on purpose
        pass


class LoopbackServer:
    """A fake service's server. Subclasses set ``handler`` (a :class:`LoopbackHandler` subclass)
    and ``name``; ``tls=True`` serves HTTPS with a certificate from ``ca`` (whose PEM is in
    :attr:`ca_file`, for ``REQUESTS_CA_BUNDLE``)."""

    name = "fake"
    handler: type[BaseHTTPRequestHandler]

    def __init__(self, *, tls: bool = False, ca=None, drip_interval: float = 1.0, hang_seconds: float = 3.0) -> None:
        self.lock = threading.Lock()
        self.drip_interval = drip_interval  # seconds between two bytes of a "drip" answer
        self.hang_seconds = hang_seconds  # how long a "hang" holds its answer
        self.dripped = 0  # answers sent as a drip (that the client may have left before the end of)
        context = None
        self.ca = self.ca_file = None
        if tls:
            import trustme

            self.ca = ca or trustme.CA()
            self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.name}-")
            self.ca_file = str(Path(self._tmp.name) / "ca.pem")
            self.ca.cert_pem.write_to_path(self.ca_file)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self.server = LoopbackHTTPServer(self.handler, self, context)
        self.scheme = "https" if tls else "http"
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def start(self):
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread = None
        self.server.server_close()
        if self.ca_file:
            self._tmp.cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LoopbackHandler(BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 handler with the shared answers and faults."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one answer, one segment: no 40 ms delayed-ACK stalls
    server: LoopbackHTTPServer
    # The fault this request plays in :meth:`answer` ("drip", "lost"), set by :meth:`play`.
    pending_fault: str | None = None
    # The HTTP methods :meth:`serve` answers; the others get 501, as from a server without them.
    methods: tuple[str, ...] = ("GET", "POST")

    def serve(self, method: str) -> None:
        """Answer one request of ``method`` (one of :attr:`methods`): the fake's routes."""
        raise NotImplementedError

    def _dispatch(self) -> None:
        if self.command not in self.methods:
            self.read_body()
            self.answer(501, {"error": f"{self.command} is not served here"})
            return
        self.serve(self.command)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch

    @property
    def fake(self) -> Any:
        return self.server.fake

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def play(self, fault: str | None) -> bool:
        """Act on a fault before the work: True when the request is over (dropped). ``hang``
        waits first; ``drip`` and ``lost`` are kept for the answer, after the work is done."""
        self.pending_fault = None
        if fault == DROP:
            self.drop()
            return True
        if fault == HANG:
            time.sleep(self.fake.hang_seconds)
        if fault in (DRIP, LOST):
            self.pending_fault = fault
        return False

    def answer(
        self, status: int, body: Any = None, headers: dict[str, str] | None = None, content_type: str | None = None
    ) -> bool:
        """Send a whole answer: ``body`` as JSON (dict, list), text or bytes. True when it went
        out; False when the client had left, or a ``lost`` fault dropped it."""
        if self.pending_fault == LOST:
            self.drop()
            return False
        if isinstance(body, bytes):
            data, kind = body, "application/octet-stream"
        elif isinstance(body, str):
            data, kind = body.encode(), "text/plain; charset=utf-8"
        else:
            data, kind = json.dumps(body if body is not None else {}).encode(), "application/json; charset=utf-8"
        lines = [f"{self.protocol_version} {status} {self.responses.get(status, ('',))[0]}"]
        lines += [f"Content-Type: {content_type or kind}", f"Content-Length: {len(data)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data
        try:
            if self.pending_fault == DRIP:
                with self.fake.lock:
                    self.fake.dripped += 1
                for index in range(len(raw)):
                    self.wfile.write(raw[index : index + 1])
                    self.wfile.flush()
                    time.sleep(self.fake.drip_interval)
            else:
                self.wfile.write(raw)
                self.wfile.flush()
            return True
        except OSError:  # the client left (it timed out)
            self.close_connection = True
            return False

    def drop(self) -> None:
        """Close the connection without answering."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def send_in_turn(destination, leads: list, burst_of: int = 90) -> tuple[float, float, int]:
    """Send ``leads`` one after another through ``destination`` as the worker would (a lead held
    back by the CRM's limit is sent again after its ``retry_after``), for the fakes' benchmarks.
    Returns (seconds, leads per second over the first ``burst_of``, sends held back)."""
    from leads.destinations.base import Route, TransientError

    held_back, burst = 0, None
    start = time.perf_counter()
    for n, lead in enumerate(leads):
        if n == min(len(leads), burst_of):
            burst = n / (time.perf_counter() - start)
        while True:
            try:
                destination.send(lead, Route())
                break
            except TransientError as error:
                held_back += 1
                time.sleep(error.retry_after or 1.0)
    elapsed = time.perf_counter() - start
    return elapsed, burst or len(leads) / elapsed, held_back


def trust(monkeypatch, ca_file: str) -> None:
    """For one test, requests (and every SDK on it) trusts the CA in ``ca_file`` and reaches
    loopback directly, whatever proxy the machine sets."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_file)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# Each HTTP destination's settings with every URL at one loopback server: for tests that play one
# misbehaviour on every destination alike (tests/test_deadlines.py, tests/test_retry_after.py).
# Every registered destination is here or in OWN_FAKE (tests/test_registry.py holds them to the registry).
DESTINATION_SETTINGS = {
    "webhook": lambda url: {"WEBHOOK_URL": url + "/hook", "WEBHOOK_SECRET": "s"},
    # A new app registration each time: no token is cached from another test's fake.
    "dynamics": lambda url: {
        "DYNAMICS_URL": url,
        "DYNAMICS_TENANT_ID": str(uuid.uuid4()),
        "DYNAMICS_CLIENT_ID": str(uuid.uuid4()),
        "DYNAMICS_CLIENT_SECRET": "secret",
        "DYNAMICS_AUTHORITY": url,
    },
    "salesforce": lambda url: {"SALESFORCE_URL": url, "SALESFORCE_CLIENT_ID": "id", "SALESFORCE_CLIENT_SECRET": "s"},
    "salesforce-w2l": lambda url: {"SALESFORCE_OID": "00D000000000001", "SALESFORCE_WEB_TO_LEAD_URL": url + "/w2l"},
    "marketo": lambda url: {"MARKETO_URL": url, "MARKETO_CLIENT_ID": "id", "MARKETO_CLIENT_SECRET": "s"},
    "hubspot": lambda url: {"HUBSPOT_TOKEN": "pat-na1-x", "HUBSPOT_URL": url},
    # The default channel: routing gives every lead it, so the send posts to the loopback URL.
    "teams": lambda url: {"TEAMS_WEBHOOK_URL": url + "/teams"},
    "slack": lambda url: {"SLACK_WEBHOOK_URL": url + "/slack"},
}
# The destinations a bare loopback server cannot stand in for, with the tests that play the same
# misbehaviours on their own fake.
OWN_FAKE = {
    "email": "ACS signs each request and answers an operation to poll: tests/fake_acs.py plays the drip "
    "(test_deadlines.test_email_through_acs_ends_a_dripping_send_and_retries_it) and the 429 with Retry-After "
    "(test_retry_after.test_email_waits_as_acs_says)",
}


def send_error(destination, lead, route=None):
    """What ``destination`` makes of the error its send against a fake raises (its ``classify``);
    AssertionError if the send succeeds."""
    from leads.destinations.base import Route

    try:
        destination.send(lead, route or Route())
    except Exception as exc:  # noqa: BLE001 - whatever it raised is what classify sees
        return destination.classify(exc)
    raise AssertionError("the send succeeded")
