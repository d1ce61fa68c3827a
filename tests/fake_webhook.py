"""A webhook receiver on loopback that verifies signatures and stores each lead once by its
Idempotency-Key, as a well-behaved receiver does, and can misbehave on purpose."""

from __future__ import annotations

import json
import random
from collections import Counter

from leads.destinations.webhook import verify

from .loopback import DRIP, LOST, LoopbackHandler, LoopbackServer

FAULTS = ("500", "503", "429", "timeout", "drop", "lost")


class _Handler(LoopbackHandler):
    def do_POST(self):
        fake: FakeWebhook = self.fake
        body = self.read_body()
        fault = fake._next_fault()
        if fake.latency:
            import time

            time.sleep(fake.latency)
        if fault == "timeout":  # held past the client's patience, then dropped
            self.play("hang")
            return self.drop()
        if self.play(fault):
            return None
        if fault == "429":
            return self.answer(429, {"error": "slow down"}, {"Retry-After": fake.retry_after})
        if fault and fault.isdigit():
            return self.answer(int(fault), {"error": f"status {fault} on purpose"}, fake.fault_headers)
        if not verify(
            fake.secret, self.headers.get("X-Leads-Timestamp", ""), body, self.headers.get("X-Leads-Signature", "")
        ):
            with fake.lock:
                fake.bad_signatures += 1
            return self.answer(401, {"error": "bad signature"})
        key = self.headers.get("Idempotency-Key", "")
        with fake.lock:
            fake.leads.setdefault(key, json.loads(body))
            fake.received[key] += 1
        if self.answer(200, {"stored": key}, {"X-Request-Id": f"wh-{key}"}):
            with fake.lock:
                fake.confirmed[key] += 1


class FakeWebhook(LoopbackServer):
    """``faults``: a list of fault names to play, one per request, before behaving; or
    ``fail_ratio`` to draw one of FAULTS at random for that share of requests.
    ``lost`` stores the lead and then drops the connection: the sender never hears it worked;
    ``drip`` stores it and answers one byte a second."""

    name = "fake-webhook"
    handler = _Handler

    def __init__(
        self,
        secret: str = "s3cret",
        fail_ratio: float = 0.0,
        timeout_after: float = 2.0,
        seed: int = 7,
        latency: float = 0.0,
        faults: tuple[str, ...] = FAULTS,
        drip_interval: float = 1.0,
    ) -> None:
        super().__init__(hang_seconds=timeout_after, drip_interval=drip_interval)
        self.secret = secret
        self.latency = latency  # seconds each request takes (benchmarks)
        self.fail_ratio = fail_ratio
        self.fault_kinds = faults  # what fail_ratio draws from
        self.faults: list[str] = []
        self.retry_after = "1"  # what a 429 says
        self.fault_headers: dict[str, str] = {}  # headers of a 5xx fault (e.g. Retry-After)
        self.random = random.Random(seed)
        self.leads: dict[str, dict] = {}  # Idempotency-Key → the lead, stored once
        self.received = Counter()  # Idempotency-Key → signed requests that reached the receiver
        self.confirmed = Counter()  # Idempotency-Key → 2xx answers that reached the sender whole
        self.requests = 0
        self.bad_signatures = 0

    @property
    def url(self) -> str:
        return f"{self.base_url}/hook"

    def settings(self) -> dict[str, str]:
        """The app settings that point the webhook destination here."""
        return {"WEBHOOK_URL": self.url, "WEBHOOK_SECRET": self.secret}

    def _next_fault(self) -> str | None:
        with self.lock:
            self.requests += 1
            if self.faults:
                return self.faults.pop(0)
            if self.fail_ratio and self.random.random() < self.fail_ratio:
                return self.random.choice(self.fault_kinds)
        return None


__all__ = ["DRIP", "FAULTS", "LOST", "FakeWebhook"]
