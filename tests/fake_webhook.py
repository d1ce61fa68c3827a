"""A webhook receiver on loopback that verifies signatures and stores each lead once by its
Idempotency-Key, as a well-behaved receiver does, and can misbehave on purpose."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from leads.azurite import free_port
from leads.destinations.webhook import verify

FAULTS = ("500", "503", "429", "timeout", "drop", "lost")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # bursts of deliveries connect at once


class FakeWebhook:
    """``faults``: a list of fault names to play, one per request, before behaving; or
    ``fail_ratio`` to draw one of FAULTS at random for that share of requests.
    ``lost`` stores the lead and then drops the connection: the sender never hears it worked."""

    def __init__(self, secret: str = "s3cret", fail_ratio: float = 0.0, timeout_after: float = 2.0, seed: int = 7,
                 latency: float = 0.0):  # fmt: skip
        self.secret = secret
        self.latency = latency  # seconds each request takes (benchmarks)
        self.fail_ratio = fail_ratio
        self.timeout_after = timeout_after
        self.faults: list[str] = []
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.leads: dict[str, dict] = {}  # Idempotency-Key → the lead, stored once
        self.confirmed = Counter()  # Idempotency-Key → 2xx answers that reached the sender
        self.requests = 0
        self.bad_signatures = 0
        self.port = free_port()
        self.server = _Server(("127.0.0.1", self.port), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> FakeWebhook:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next_fault(self) -> str | None:
        with self.lock:
            self.requests += 1
            if self.faults:
                return self.faults.pop(0)
            if self.fail_ratio and self.random.random() < self.fail_ratio:
                return self.random.choice(FAULTS)
        return None

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if fake.latency:
                    time.sleep(fake.latency)
                fault = fake._next_fault()
                if fault == "drop":
                    return self._drop()
                if fault == "timeout":
                    time.sleep(fake.timeout_after)
                    return self._drop()
                if fault == "429":
                    return self._answer(429, {"error": "slow down"}, {"Retry-After": "1"})
                if fault and fault.isdigit():
                    return self._answer(int(fault), {"error": f"status {fault} on purpose"})
                if not verify(fake.secret, self.headers.get("X-Leads-Timestamp", ""), body,
                              self.headers.get("X-Leads-Signature", "")):  # fmt: skip
                    with fake.lock:
                        fake.bad_signatures += 1
                    return self._answer(401, {"error": "bad signature"})
                key = self.headers.get("Idempotency-Key", "")
                with fake.lock:
                    fake.leads.setdefault(key, json.loads(body))
                if fault == "lost":
                    return self._drop()
                if self._answer(200, {"stored": key}, {"X-Request-Id": f"wh-{key}"}):
                    with fake.lock:
                        fake.confirmed[key] += 1

            def _answer(self, status: int, body: dict, headers: dict | None = None) -> bool:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                    return True
                except OSError:
                    return False

            def _drop(self):
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass

        return Handler
