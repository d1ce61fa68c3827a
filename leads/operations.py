"""What operators do with deliveries: see their state, replay failures, and the sweep that
re-queues deliveries whose message was lost.

Each reads the index (``leads/index.py``): the open deliveries, the failed ones, per-day counters
and the held-back tally, never the history of every lead ever stored. Deliveries held back by
``LEADS_BACKFILL_DAYS`` are history until replayed: only ``replay --skipped`` reads their index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .deliveries import FINAL, Delivery
from .index import Entry, generation
from .queue import delivery_queue
from .routing import held_for_backfill
from .settings import Settings, get_settings
from .store import LeadStore

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger(__name__)

# A pending delivery this old, or a retry this overdue, has lost its message.
STALE = timedelta(minutes=2)
# How long one sweep spends indexing a store written before the index, before it sweeps.
BUILD_SECONDS = 60.0


def sweep(settings: Settings | None = None, now: datetime | None = None) -> int:
    """Queue again every open delivery that nothing will wake: pending or retrying long past
    due (the process died between storing and queueing, or the message was lost), or claimed by
    a worker whose claim ran out. Returns how many were queued. Extra messages are harmless.

    Reads the open deliveries' index only; an entry pointing at a finished or missing delivery
    is dropped. While a store from before the index is being indexed, each sweep first indexes
    for up to ``BUILD_SECONDS``."""
    settings = settings or get_settings()
    now = now or datetime.now(UTC)
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    if not store.index.built():
        progress = store.index.build(store.leads, seconds=BUILD_SECONDS)
        log.warning("indexing leads stored before the index: %d leads, %d open or failed deliveries so far%s",
                    progress["Leads"], progress["Deliveries"], ", done" if progress["Done"] else "")  # fmt: skip
    queue = delivery_queue(settings)
    count = 0
    for entry in store.index.open():
        delivery = _current(store, entry)
        if delivery is None or delivery.state in FINAL:
            store.index.drop(entry)
        elif _stuck(delivery, now):
            queue.send(delivery.lead_id, delivery.destination)
            count += 1
    if count:
        log.warning("sweep queued %d stuck deliveries again", count)
    from .alerts import after_sweep

    after_sweep(store, settings, now, count)  # due alerts, silences, the poison queue (leads/alerts.py)
    return count


def _current(store: LeadStore, entry: Entry) -> Delivery | None:
    """The delivery an index entry points at, if it is still the round the entry was made for."""
    delivery = store.deliveries.get(entry.lead_id, entry.destination)
    return delivery if delivery is not None and generation(delivery) == entry.generation else None


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
    ``skipped`` only those held ones. Without a lead, reads the failed index, or with ``skipped``
    the held one, a page at a time."""
    settings = settings or get_settings()
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    if lead_id:
        candidates = store.deliveries.for_lead(lead_id)
    else:
        candidates = _held(store, destination) if skipped else _failed(store, destination)
    replayed = []
    now = datetime.now(UTC)
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


def _failed(store: LeadStore, destination: str | None = None) -> Iterator[Delivery]:
    """The failed deliveries, from their index. A held one found there was indexed by a version
    before the held index: it moves there, so it is read here this once."""
    for entry in list(store.index.replayable()):
        if destination and entry.destination != destination:
            continue
        delivery = _current(store, entry)
        if delivery is not None and held_for_backfill(delivery):
            store.index.carry_forward(entry, delivery)
        elif delivery is None or delivery.state != "failed":
            store.index.drop(entry)
        else:
            yield delivery


def _held(store: LeadStore, destination: str | None = None) -> Iterator[Delivery]:
    """The held deliveries, from their index, a page at a time (each replayed leaves it)."""
    for _ in _failed(store):  # first, any an earlier version indexed among the failed ones
        pass
    for entry in store.index.held():
        if destination and entry.destination != destination:
            continue
        delivery = _current(store, entry)
        if delivery is None or not held_for_backfill(delivery):
            store.index.drop(entry)
        else:
            yield delivery


@dataclass
class Status:
    days: int = 7
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    open: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    held_back: dict[str, int] = field(default_factory=dict)
    oldest_pending: Delivery | None = None
    recent_failures: list[Delivery] = field(default_factory=list)
    recent_rejections: list[dict[str, Any]] = field(default_factory=list)
    index_built: bool = True
    watch: dict[str, Any] = field(default_factory=dict)  # arrivals, poll health, poison queue: leads/silence.py

    def to_dict(self) -> dict[str, Any]:
        oldest = self.oldest_pending
        return {
            **self.watch,
            "days": self.days,
            "counts": self.counts,
            "open": self.open,
            "failed": self.failed,
            "heldBack": self.held_back,
            "oldestPending": {"leadId": oldest.lead_id, **oldest.to_dict()} if oldest else None,
            "recentFailures": [{"leadId": d.lead_id, **d.to_dict()} for d in self.recent_failures],
            "recentRejections": self.recent_rejections,
            "indexBuilt": self.index_built,
        }


def status(settings: Settings | None = None, failures: int = 10, days: int = 7, rejections: int = 5) -> Status:
    """What changed over the last ``days`` days (day counters: delivered, failed, skipped per
    destination, rejected records), what is open or failed now (the indexes), how many are held
    back (the tally), the oldest open delivery, the latest failures and rejections."""
    settings = settings or get_settings()
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    from .silence import status_report

    report = Status(days=days, counts=store.index.counters.window(days), index_built=store.index.built(),
                    watch=status_report(store, settings, datetime.now(UTC)))  # fmt: skip
    open_entries = list(store.index.open())
    for entry in open_entries:
        report.open[entry.destination] = report.open.get(entry.destination, 0) + 1
    never = datetime.max.replace(tzinfo=UTC)
    for entry in sorted(open_entries, key=lambda e: e.at or never):
        report.oldest_pending = _current(store, entry)
        if report.oldest_pending and report.oldest_pending.state not in FINAL:
            break
        report.oldest_pending = None
    failed = sorted(_failed(store), key=lambda d: d.updated_at or never, reverse=True)
    for delivery in failed:
        report.failed[delivery.destination] = report.failed.get(delivery.destination, 0) + 1
    report.recent_failures = failed[:failures]
    report.held_back = store.index.held_back()
    report.open, report.failed = dict(sorted(report.open.items())), dict(sorted(report.failed.items()))
    for entry in store.index.rejected(rejections):
        rejected = store.rejected(entry.lead_id)
        if rejected:
            report.recent_rejections.append({key: rejected[key] for key in ("leadId", "receivedAt", "error")})
    return report


def reindex(settings: Settings | None = None, again: bool = False) -> dict[str, Any] | None:
    """Index every lead and delivery of a store written before the index, and write the identity
    and email rows (``leads/identities.py``) of every lead and rejected record stored before those
    existed (each once; ``again`` reads the whole store once more). Returns what each build
    indexed (``index``, ``identities``: None for one complete already), None if both were."""
    store = LeadStore.from_settings(settings or get_settings())
    store.ensure_tables()
    done = {"index": None if store.index.built() and not again else store.index.build(store.leads, again=again),
            "identities": None if store.identities.built() and not again else store.identities.build(again=again)}
    return done if any(done.values()) else None
