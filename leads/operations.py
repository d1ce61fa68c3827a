"""What operators do with deliveries: see their state, replay failures, and the sweep that
re-queues deliveries whose message was lost."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .deliveries import OPEN, Delivery
from .queue import delivery_queue
from .settings import Settings, get_settings
from .store import LeadStore

log = logging.getLogger(__name__)

# A pending delivery this old, or a retry this overdue, has lost its message.
STALE = timedelta(minutes=2)


def sweep(settings: Settings | None = None, now: datetime | None = None) -> int:
    """Queue again every open delivery that nothing will wake: pending or retrying long past
    due (the process died between storing and queueing, or the message was lost), or claimed by
    a worker whose claim ran out. Returns how many were queued. Extra messages are harmless."""
    settings = settings or get_settings()
    now = now or datetime.now(timezone.utc)
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    queue = delivery_queue(settings)
    count = 0
    for delivery in store.deliveries.all(frozenset({"pending", "retrying", "sending"})):
        if _stuck(delivery, now):
            queue.send(delivery.lead_id, delivery.destination)
            count += 1
    if count:
        log.warning("sweep queued %d stuck deliveries again", count)
    from .alerts import flush_alerts

    flush_alerts(store, settings, now)  # the failures of each closed window, one mail per destination
    return count


def _stuck(delivery: Delivery, now: datetime) -> bool:
    if delivery.state == "pending":
        return (delivery.updated_at or now) < now - STALE
    if delivery.state == "retrying":
        return (delivery.next_attempt_at or now) < now - STALE
    return (delivery.claimed_until or now) < now


def replay(lead_id: str | None = None, destination: str | None = None,
           settings: Settings | None = None, skipped: bool = False) -> list[Delivery]:  # fmt: skip
    """Deliver failed deliveries again (never a delivered one), with a fresh retry window; a
    lead's own (``lead_id``) also when held as older than ``LEADS_BACKFILL_DAYS``, and with
    ``skipped`` only those held ones."""
    from .routing import held_for_backfill

    settings = settings or get_settings()
    store = LeadStore.from_settings(settings)
    candidates = store.deliveries.for_lead(lead_id) if lead_id else \
        store.deliveries.all(frozenset({"skipped" if skipped else "failed"}))  # fmt: skip
    replayed = []
    now = datetime.now(timezone.utc)
    for delivery in candidates:
        wanted = held_for_backfill(delivery) if skipped else \
            delivery.state == "failed" or (lead_id is not None and held_for_backfill(delivery))  # fmt: skip
        if not wanted or (destination and delivery.destination != destination):
            continue
        again = store.deliveries.change(delivery, state="pending", retry_from=now, next_attempt_at=None,
                                        claimed_until=None)  # fmt: skip
        if again:
            delivery_queue(settings).send(again.lead_id, again.destination)
            replayed.append(again)
    return replayed


@dataclass
class Status:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    oldest_pending: Delivery | None = None
    recent_failures: list[Delivery] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        oldest = self.oldest_pending
        return {
            "counts": self.counts,
            "oldestPending": {"leadId": oldest.lead_id, **oldest.to_dict()} if oldest else None,
            "recentFailures": [{"leadId": d.lead_id, **d.to_dict()} for d in self.recent_failures],
        }


def status(settings: Settings | None = None, failures: int = 10) -> Status:
    """Counts per destination and state, the oldest open delivery, the latest failures."""
    store = LeadStore.from_settings(settings or get_settings())
    counts: dict[str, Counter] = {}
    from azure.core.exceptions import ResourceNotFoundError

    try:
        deliveries = list(store.deliveries.all())
    except ResourceNotFoundError:
        deliveries = []
    for delivery in deliveries:
        counts.setdefault(delivery.destination, Counter())[delivery.state] += 1
    never = datetime.max.replace(tzinfo=timezone.utc)
    open_ = [d for d in deliveries if d.state in OPEN]
    failed = [d for d in deliveries if d.state == "failed"]
    return Status(
        counts={name: dict(sorted(counter.items())) for name, counter in sorted(counts.items())},
        oldest_pending=min(open_, key=lambda d: d.created_at or never, default=None),
        recent_failures=sorted(failed, key=lambda d: d.updated_at or never, reverse=True)[:failures],
    )
