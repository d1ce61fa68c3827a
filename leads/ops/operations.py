"""What operators do with deliveries, and the timers that keep them moving: see their state
(``status``, which only reads), replay failures, the sweep that re-queues deliveries whose message
was lost, and the maintenance that proves and mends what is derived from the store.

Each reads the index (``leads/store/index.py``): the open deliveries, the failed ones, the day counters
and the held-back tally, never the history of every lead ever stored. Deliveries held back by
``LEADS_BACKFILL_DAYS`` are history until replayed: only ``replay --skipped`` reads their index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from leads.core.settings import Settings, get_settings
from leads.delivery.queue import delivery_queue
from leads.store.index import Entry, generation_of, stale
from leads.store.lead_store import LeadStore
from leads.store.rows import FINAL, Delivery

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger(__name__)

# A pending delivery this old, or a retry this overdue, has lost its message.
STALE = timedelta(minutes=2)
# How long one maintenance run spends indexing a store written before the index, and counting a
# held index written before its tally, before it verifies.
BUILD_SECONDS = 60.0
# Held entries each maintenance run checks, round and round: an entry left by a take-in that
# died before its lead was stored, and never retried, leaves the held tally within a few runs.
HELD_PAGE = 1000


def sweep(settings: Settings | None = None, now: datetime | None = None) -> int:
    """Queue again every open delivery that nothing will wake: pending or retrying long past
    due (the process died between storing and queueing, or the message was lost), or claimed by
    a worker whose claim ran out. Returns how many were queued. Extra messages are harmless.

    Reads the open deliveries' index only, and removes the entries it proves stale (``derived``):
    one whose delivery is not written yet, or in an earlier round, is a write in flight and stays."""
    settings = settings or get_settings()
    now = now or datetime.now(UTC)
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    queue = delivery_queue(settings)
    count = 0
    for entry in store.index.open():
        delivery = store.deliveries.get(entry.lead_id, entry.destination)
        if stale(entry, delivery, now):
            store.index.drop(entry)
        elif _of_round(entry, delivery) and _stuck(delivery, now):
            queue.send(delivery.lead_id, delivery.destination)
            count += 1
    if count:
        log.warning("sweep queued %d stuck deliveries again", count)
    _after_sweep(store, settings, now, count)
    return count


def _after_sweep(store: LeadStore, settings: Settings, now: datetime, requeued: int) -> None:
    """What each sweep tells the operators: the alert groups due (one mail per destination), the
    silences not alarmed yet (leads/intake/silence.py), the messages in the poison queue; and that it ran
    (``SweepDone``: the Azure Monitor rule on a dead app counts these)."""
    from leads.core.telemetry import event
    from leads.delivery.alerts import flush_alerts
    from leads.delivery.queue import poison_messages
    from leads.intake.silence import watch

    sent = flush_alerts(store, settings, now)
    alarmed = watch(store, settings, now)
    poisoned = poison_messages(settings)
    if poisoned:
        event("PoisonMessages", queue=f"{settings.delivery_queue}-poison", count=poisoned)
    event("SweepDone", requeued=requeued, alertsSent=sent, silencesAlarmed=alarmed, poisonMessages=poisoned)


def _of_round(entry: Entry, delivery: Delivery | None) -> bool:
    """Whether ``delivery`` is in the round the entry was made for."""
    return delivery is not None and generation_of(delivery) == entry.generation


def _stuck(delivery: Delivery, now: datetime) -> bool:
    if delivery.state == "pending":
        return (delivery.updated_at or now) < now - STALE
    if delivery.state == "retrying":
        return (delivery.next_attempt_at or now) < now - STALE
    if delivery.state == "sending":
        return (delivery.claimed_until or now) < now
    return False


def replay(
    lead_id: str | None = None,
    destination: str | None = None,
    settings: Settings | None = None,
    skipped: bool = False,
    now: datetime | None = None,
) -> list[Delivery]:
    """Deliver failed deliveries again (never a delivered one), with a fresh retry window; a
    lead's own (``lead_id``) also when held as older than ``LEADS_BACKFILL_DAYS``, and with
    ``skipped`` only those held ones. Without a lead, reads the failed index, or with ``skipped``
    the held one, a page at a time."""
    settings = settings or get_settings()
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    now = now or datetime.now(UTC)
    if lead_id:
        candidates: Iterator[Delivery] = iter(store.deliveries.for_lead(lead_id))
    else:
        entries = store.index.held() if skipped else list(store.index.failed())
        candidates = _indexed(store, entries, destination, now)
    replayed = []
    for delivery in candidates:
        wanted = delivery.held if skipped else delivery.state == "failed" or (lead_id is not None and delivery.held)
        if not wanted or (destination and delivery.destination != destination):
            continue
        again = store.deliveries.change(
            delivery, state="pending", retry_from=now, next_attempt_at=None, claimed_until=None
        )
        if again:
            delivery_queue(settings).send(again.lead_id, again.destination)
            replayed.append(again)
    return replayed


def _indexed(store: LeadStore, entries, destination: str | None, now: datetime) -> Iterator[Delivery]:
    """The deliveries ``entries`` point at, in their entries' round; an entry proven stale is
    removed (replay writes what it reads: these are the deliveries it changes)."""
    for entry in entries:
        if destination and entry.destination != destination:
            continue
        delivery = store.deliveries.get(entry.lead_id, entry.destination)
        if stale(entry, delivery, now):
            store.index.drop(entry)
        elif _of_round(entry, delivery):
            yield delivery


@dataclass
class Status:
    days: int = 7
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    open: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    held_back: dict[str, int] = field(default_factory=dict)
    held_back_counted: bool = True
    oldest_pending: Delivery | None = None
    recent_failures: list[Delivery] = field(default_factory=list)
    recent_rejections: list[dict[str, Any]] = field(default_factory=list)
    index_built: bool = True
    verified: dict[str, Any] | None = None
    watch: dict[str, Any] = field(default_factory=dict)  # arrivals, poll health, poison queue: leads/intake/silence.py

    def to_dict(self) -> dict[str, Any]:
        oldest = self.oldest_pending
        return {
            **self.watch,
            "days": self.days,
            "counts": self.counts,
            "open": self.open,
            "failed": self.failed,
            "heldBack": self.held_back,
            "heldBackCounted": self.held_back_counted,
            "oldestPending": {"leadId": oldest.lead_id, **oldest.to_dict()} if oldest else None,
            "recentFailures": [{"leadId": d.lead_id, **d.to_dict()} for d in self.recent_failures],
            "recentRejections": self.recent_rejections,
            "indexBuilt": self.index_built,
            "verified": self.verified,
        }


def status(
    settings: Settings | None = None,
    failures: int = 10,
    days: int = 7,
    rejections: int = 5,
    now: datetime | None = None,
) -> Status:
    """How the deliveries of the last ``days`` days' leads stand (day counters: delivered, failed,
    skipped per destination, rejected records), what is open or failed now (the indexes), how many
    are held back (the tally), the oldest open delivery, the latest failures and rejections, and
    what the last ``verify`` found. Reads only: what it finds stale, it leaves to the sweep,
    ``replay`` and ``verify``."""
    from leads.store.verify import last_run

    settings = settings or get_settings()
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    now = now or datetime.now(UTC)
    from leads.intake.silence import status_report

    report = Status(
        days=days,
        counts=store.counters.window(days, now),
        index_built=store.index.built(),
        watch=status_report(store, settings, now),
    )
    open_entries = list(store.index.open())
    for entry in open_entries:
        report.open[entry.destination] = report.open.get(entry.destination, 0) + 1
    never = datetime.max.replace(tzinfo=UTC)
    for entry in sorted(open_entries, key=lambda e: e.at or never):
        delivery = store.deliveries.get(entry.lead_id, entry.destination)
        if _of_round(entry, delivery) and delivery.state not in FINAL:
            report.oldest_pending = delivery
            break
    failed = []
    for entry in store.index.failed():
        delivery = store.deliveries.get(entry.lead_id, entry.destination)
        if _of_round(entry, delivery) and delivery.state == "failed":
            failed.append(delivery)
    failed.sort(key=lambda d: d.updated_at or never, reverse=True)
    for delivery in failed:
        report.failed[delivery.destination] = report.failed.get(delivery.destination, 0) + 1
    report.recent_failures = failed[:failures]
    report.held_back, report.held_back_counted = store.index.held_back()
    report.open, report.failed = dict(sorted(report.open.items())), dict(sorted(report.failed.items()))
    for entry in store.index.rejected(rejections):
        rejected = store.rejected(entry.lead_id)
        if rejected:
            report.recent_rejections.append({key: rejected[key] for key in ("leadId", "receivedAt", "error")})
    report.verified = last_run(store)
    return report


def maintain(settings: Settings | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The maintenance timer: index a store written before the index and count a held index
    written before its tally (each for up to ``BUILD_SECONDS`` a run, resuming where it stopped),
    then verify the last ``LEADS_VERIFY_DAYS`` days and repair what differs (``leads/store/verify.py``),
    so that whatever a crash or a race left, ``status`` comes back to the truth within a run."""
    from leads.store.verify import verify

    settings = settings or get_settings()
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    done: dict[str, Any] = {}
    if not store.index.built():
        progress = store.index.build(store.leads, seconds=BUILD_SECONDS)
        log.warning(
            "indexing leads stored before the index: %d leads, %d open or failed deliveries so far%s",
            progress["Leads"],
            progress["Deliveries"],
            ", done" if progress["Done"] else "",
        )
        done["index"] = progress
    if not store.index.held_back()[1]:
        counted = store.index.count_held(seconds=BUILD_SECONDS)
        log.warning(
            "counting the held-back deliveries of a store from before their tally%s",
            ": done" if counted else "; goes on at the next run",
        )
        done["heldCounted"] = counted
    done["verify"] = verify(
        settings, since_days=settings.verify_days, repair=True, now=now, held_page=HELD_PAGE
    ).to_dict()
    return done


def reindex(settings: Settings | None = None, again: bool = False) -> dict[str, Any] | None:
    """Index every lead and delivery of a store written before the index (and count its held
    entries), and write the identity and email rows (``leads/store/identities.py``) of every lead and
    rejected record stored before those existed (each once; ``again`` reads the whole store once
    more). Returns what each build indexed (``index``, ``identities``: None for one complete
    already), None if both were."""
    store = LeadStore.from_settings(settings or get_settings())
    store.ensure_tables()
    done = {
        "index": None if store.index.built() and not again else store.index.build(store.leads, again=again),
        "identities": None if store.identities.built() and not again else store.identities.build(again=again),
    }
    store.index.count_held()
    return done if any(done.values()) else None
