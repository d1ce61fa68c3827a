"""The send rates that destinations allow, shared by every instance of the app.

A :class:`RateLimiter` keeps sliding windows of sends per destination, one per limit, in one row of
the checkpoints table (``rate``/``<destination>``) changed with ETags (``storage.change_row``), so
that instances on several machines keep to one limit between them: the mail service's caps a
minute and an hour (lead mails and alert mails take slots alike), a CRM's quota. A
:class:`CallLimiter` paces one process's calls to an API that counts calls a window and at once
(Marketo's, HubSpot's), in memory.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leads.store.lead_store import LeadStore


class RateLimiter:
    """Sliding windows of sends per destination, one for each of its limits (``limit`` sends in
    ``period`` seconds, and ``more`` such pairs: ACS's minute and hour), shared by every instance
    through one row written with ETags. ``acquire`` takes a slot in every window, or says how many
    seconds until each has one.

    A window counts its sends in buckets of a sixtieth of its period, so the row stays a few hundred
    bytes whatever the limit (an hour of exact send times at a raised ACS quota would not fit a table
    property). The oldest bucket counts whole while any of it is inside the window: the limiter may
    wait up to a bucket longer than exact counting would, never send more. A row of an earlier
    version holds the exact times (``Sends``): they are counted into the buckets at its first write."""

    BUCKETS = 60

    def __init__(self, store: LeadStore, name: str, limit: int, period: float, *more: tuple[int, float]) -> None:
        self.table = store.checkpoints
        self.key = ("rate", name)
        self.limits = ((limit, period), *more)

    def acquire(self, now: datetime) -> float | None:
        import json

        from leads.core.storage import RowKeptChanging, change_row

        stamp, wait = now.timestamp(), None

        def taken(entity: Mapping[str, object] | None) -> dict[str, str] | None:
            nonlocal wait
            windows = json.loads(str(entity.get("Windows") or "{}")) if entity else {}
            earlier = json.loads(str(entity.get("Sends") or "[]")) if entity and not windows else []
            kept, waits = {}, []
            for limit, period in self.limits:
                width = period / self.BUCKETS
                current, oldest = int(stamp // width), int((stamp - period) // width)
                buckets = {int(b): n for b, n in windows.get(f"{period:g}", {}).items()}
                for sent in earlier:  # a row of an earlier version: its exact send times
                    buckets[int(sent // width)] = buckets.get(int(sent // width), 0) + 1
                buckets = {b: n for b, n in sorted(buckets.items()) if oldest <= b <= current}
                excess = sum(buckets.values()) - limit + 1
                if excess > 0:  # the slot frees as the oldest buckets holding the excess leave
                    for bucket, count in buckets.items():
                        excess -= count
                        if excess <= 0:
                            waits.append((bucket + 1) * width + period - stamp)
                            break
                buckets[current] = buckets.get(current, 0) + 1
                kept[f"{period:g}"] = buckets
            if waits:
                wait = max(1.0, *waits)
                return None
            return {"Windows": json.dumps(kept, separators=(",", ":")), **({"Sends": "[]"} if earlier else {})}

        try:
            change_row(self.table, *self.key, taken, tries=20)
        except RowKeptChanging:
            return 1.0
        return wait


class CallLimiter:
    """At most ``calls`` API calls in any ``period`` seconds and ``concurrent`` calls at once, for
    every thread of this process. ``slot()`` waits for room up to ``max_wait`` seconds (pacing the
    calls), then gives up with a :class:`TransientError` whose ``retry_after`` says when room frees.

    A call counts from when it starts until ``period`` after it ended: the service stamps it at
    some moment in between, so the window here never frees before the service's does."""

    def __init__(
        self, calls: int, period: float, concurrent: int = 10, max_wait: float = 10.0, service: str = "the service"
    ) -> None:
        self.calls, self.period, self.max_wait, self.service = calls, period, max_wait, service
        self.concurrent = concurrent
        self._stamps: dict[int, float] = {}  # call → when it ended (inf while running)
        self._tickets = itertools.count()
        self._lock = threading.Lock()
        self._running = threading.BoundedSemaphore(concurrent)
        self.waited = 0.0  # seconds spent pacing, for benchmarks

    @contextmanager
    def slot(self):
        from leads.destinations.base import TransientError

        deadline = time.monotonic() + self.max_wait
        while True:
            with self._lock:
                now = time.monotonic()
                for ticket in [t for t, ended in self._stamps.items() if ended <= now - self.period]:
                    del self._stamps[ticket]
                if len(self._stamps) < self.calls:
                    ticket = next(self._tickets)
                    self._stamps[ticket] = math.inf
                    break
                ended = [stamp for stamp in self._stamps.values() if stamp != math.inf]
                wait = min(ended) + self.period - now if ended else 0.05
            if now + wait > deadline:
                said = f"held back by this app: {self.service} allows {self.calls} calls per {self.period:g} s"
                raise TransientError(said, retry_after=max(wait, 1.0))
            time.sleep(wait)
            self.waited += wait
        try:
            if not self._running.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TransientError(
                    f"held back by this app: {self.service} allows {self.concurrent} calls at once", retry_after=5
                )
            try:
                yield
            finally:
                self._running.release()
        finally:
            with self._lock:
                self._stamps[ticket] = time.monotonic()
