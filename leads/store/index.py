"""The index beside the lead store, so that routine work reads what is open, never history. Every
entry follows the protocol of ``leads/store/derived.py``.

- ``<prefix>Index``, in :data:`SHARDS` partitions (``s0`` ... ``s3``, by lead id, so that one lead's
  entries share a partition): ``o|<lead>|<destination>|<round>`` for each open delivery (the
  sweep, ``status``), ``f|...`` for each failed one (``replay``, ``status``),
  ``r|<inverted time>|<lead>`` for each rejected record;
- ``<prefix>Held``, the same shards: ``h|...`` for each delivery held back by the backfill limit
  (history until replayed: only ``replay --skipped`` reads it), and in each shard the row
  ``tally``, which counts them per destination in the same transactions (``derived.Tally``), for
  ``status``'s ``heldBack``;
- ``<prefix>Timeline``: every lead and rejected record, newest first (``<inverted time>|<lead>``, one
  partition), for ``list``.

A delivery's round (:func:`generation_of`: its ``retry_from``, renewed by each replay) keeps one
round's entries apart from the next, so removing an old round's entry never removes a newer one.

Stores written before the index are indexed once by :meth:`LeadIndex.build` (``python -m leads
reindex``, or the maintenance timer), which reads the lead store once, in bounded steps.
"""

from __future__ import annotations

import heapq
import logging
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any

from leads.core.storage import checkpoint_of, mark_done, read_store_once, upsert_batched
from leads.store.derived import Tally, entry_stale, target_missing_long_enough, written_at
from leads.store.rows import FINAL, LEAD_ROW, REJECTED_ROW, Delivery, delivery_from_entity, is_delivery_row
from leads.store.rows import OPEN as OPEN_STATES

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)

SHARDS = 4
REJECTED, OPEN, FAILED, HELD = "r|", "o|", "f|", "h|"
TIMELINE = "leads"  # the timeline's one partition
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INVERT = 10**18
_META = ("meta", "reindex")


@dataclass(frozen=True)
class Entry:
    """One index entry, as read."""

    row_key: str
    partition: str
    lead_id: str
    destination: str = ""
    generation: str = ""
    at: datetime | None = None  # when it was written (derived.written_at)
    rejected: bool = False
    etag: str | None = None

    @property
    def kind(self) -> str:
        return self.row_key[:2]


def shard_of(lead_id: str) -> str:
    return f"s{zlib.crc32(lead_id.encode()) % SHARDS}"


def shards() -> list[str]:
    return [f"s{number}" for number in range(SHARDS)]


def micros(moment: datetime) -> int:
    """Microseconds since 1970 (naive datetimes are UTC), exact, for keys and comparisons."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def time_key(moment: datetime) -> str:
    """The inverted-time part of a RowKey: newer sorts first."""
    return f"{_INVERT - micros(moment):018d}"


def generation_of(delivery: Delivery) -> str:
    """Tells one round of a delivery (stored, or replayed) from the next."""
    moment = delivery.retry_from or delivery.created_at
    return str(micros(moment)) if moment else "0"


def kind_of(delivery: Delivery) -> str | None:
    """The index a delivery in its present state belongs in, if any."""
    if delivery.state in OPEN_STATES:
        return OPEN
    if delivery.held:
        return HELD
    return FAILED if delivery.state == "failed" else None


def stale(entry: Entry, delivery: Delivery | None, now: datetime) -> bool:
    """Whether a delivery's entry is proven stale by the delivery's row as read now (None:
    missing): the protocol's rule (``derived.entry_stale``) over rounds and states."""
    if delivery is None:
        return target_missing_long_enough(entry.at, now)
    return entry_stale(
        entry.at,
        now,
        target_exists=True,
        entry_round=int(entry.generation or 0),
        target_round=int(generation_of(delivery)),
        target_final=delivery.state in FINAL,
        target_agrees=kind_of(delivery) == entry.kind,
    )


def delivery_row_key(kind: str, delivery: Delivery) -> str:
    return f"{kind}{delivery.lead_id}|{delivery.destination}|{generation_of(delivery)}"


def delivery_entry(kind: str, delivery: Delivery) -> dict[str, Any]:
    return {
        "PartitionKey": shard_of(delivery.lead_id),
        "RowKey": delivery_row_key(kind, delivery),
        "LeadId": delivery.lead_id,
        "Destination": delivery.destination,
        "At": delivery.updated_at or delivery.created_at or datetime.now(UTC),
    }


def timeline_entry(lead_id: str, received_at: datetime, rejected: bool = False) -> dict[str, Any]:
    return {
        "PartitionKey": TIMELINE,
        "RowKey": cursor_of(lead_id, received_at),
        "LeadId": lead_id,
        "Rejected": rejected,
    }


def rejected_entry(lead_id: str, received_at: datetime) -> dict[str, Any]:
    return {
        "PartitionKey": shard_of(lead_id),
        "RowKey": f"{REJECTED}{time_key(received_at)}|{lead_id}",
        "LeadId": lead_id,
    }


def cursor_of(lead_id: str, received_at: datetime) -> str:
    """The key (and ``list``'s cursor) of the timeline entry of a lead received at ``received_at``."""
    return f"{time_key(received_at)}|{lead_id}"


def entry_of(entity: Mapping[str, Any]) -> Entry:
    row_key: str = entity["RowKey"]
    return Entry(
        row_key=row_key,
        partition=entity["PartitionKey"],
        lead_id=entity["LeadId"],
        destination=entity.get("Destination") or "",
        generation=row_key.rsplit("|", 1)[-1] if row_key[:2] in (OPEN, FAILED, HELD) else "",
        at=written_at(entity),
        rejected=bool(entity.get("Rejected")),
        etag=getattr(entity, "metadata", {}).get("etag"),
    )


class LeadIndex:
    """The index tables: entries written before and removed after the lead store's writes (by
    ``LeadStore`` and ``DeliveryBook``), read by the sweep, ``replay``, ``status`` and ``list``."""

    def __init__(self, table: TableClient, timeline: TableClient, held: TableClient) -> None:
        self.table = table
        self.timeline = timeline
        self.held_table = held
        self.held_tally = Tally(held)

    @property
    def tables(self) -> tuple[TableClient, ...]:
        return self.table, self.timeline, self.held_table

    # --- writing ------------------------------------------------------------------------------

    def before_add(self, deliveries: Iterable[Delivery]) -> None:
        """The entries of the deliveries leads about to be stored owe: the open ones in one
        transaction per shard (one lead's are all in its shard), the held ones with their tally."""
        held, others = [], []
        for delivery in deliveries:
            if kind := kind_of(delivery):
                (held if kind == HELD else others).append(delivery_entry(kind, delivery))
        upsert_batched(self.table, others)
        self._hold(held)

    def _hold(self, entries: list[dict[str, Any]]) -> None:
        """Create held entries, counted in their shards' tallies (a transaction holds 100
        operations: 99 entries and the tally)."""
        by_shard: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            by_shard.setdefault(entry["PartitionKey"], []).append(entry)
        for shard, held in by_shard.items():
            for start in range(0, len(held), 99):
                self.held_tally.create(shard, held[start : start + 99])

    def add_to_timeline(self, lead_id: str, received_at: datetime, rejected: bool = False) -> None:
        self.timeline.upsert_entity(timeline_entry(lead_id, received_at, rejected))

    def take_back(
        self, lead_id: str, received_at: datetime, deliveries: Iterable[Delivery], stored_received_at: datetime | None
    ) -> None:
        """Remove what :meth:`before_add` and :meth:`add_to_timeline` wrote for a lead that turned
        out to be stored already: its deliveries' entries (of this attempt's own round, so no
        one else's), and its time entry unless the stored lead has the same time (a marketplace
        row read twice). What a failure leaves is stale, and removed by whoever proves it."""
        from azure.core.exceptions import AzureError

        try:
            for delivery in deliveries:
                if kind := kind_of(delivery):
                    self._remove(kind, delivery)
            if stored_received_at is None or micros(stored_received_at) != micros(received_at):
                self.timeline.delete_entity(TIMELINE, cursor_of(lead_id, received_at))
        except AzureError as exc:
            log.info("index entries of duplicate %s left for verify (%s)", lead_id, type(exc).__name__)

    def before_reject(self, lead_id: str, received_at: datetime) -> None:
        """The entries of a rejected record about to be stored."""
        self.add_to_timeline(lead_id, received_at, rejected=True)
        self.table.upsert_entity(rejected_entry(lead_id, received_at))

    def before_change(self, old: Delivery, new: Delivery) -> None:
        """Before a delivery's conditional write: the entry of the index it moves into."""
        kind = kind_of(new)
        if kind and (kind, generation_of(new)) != (kind_of(old), generation_of(old)):
            self.ensure(new)

    def after_change(self, old: Delivery, new: Delivery) -> None:
        """After a delivery's conditional write succeeded: remove the entry it moved out of.
        Never raises: what is left is stale, and removed by whoever proves it."""
        from azure.core.exceptions import AzureError

        kind = kind_of(old)
        if not kind or (kind, generation_of(old)) == (kind_of(new), generation_of(new)):
            return
        try:
            self._remove(kind, old)
        except AzureError as exc:
            log.info("index entry of %s/%s left for the sweep (%s)", old.lead_id, old.destination, type(exc).__name__)

    def ensure(self, delivery: Delivery) -> None:
        """Write the entry ``delivery``'s state calls for (held ones counted once)."""
        kind = kind_of(delivery)
        if kind == HELD:
            entry = delivery_entry(kind, delivery)
            self.held_tally.create(entry["PartitionKey"], [entry])
        elif kind:
            self.table.upsert_entity(delivery_entry(kind, delivery))

    def drop(self, entry: Entry) -> bool:
        """Remove an entry proven stale, unless it was written again since read; whether it was."""
        from leads.core.storage import delete_row

        if entry.kind == HELD:
            return self.held_tally.delete(entry.partition, entry.row_key, entry.destination, entry.etag)
        table = self.timeline if entry.partition == TIMELINE else self.table
        return delete_row(table, entry.partition, entry.row_key, entry.etag)

    def _remove(self, kind: str, delivery: Delivery) -> None:
        partition, row_key = shard_of(delivery.lead_id), delivery_row_key(kind, delivery)
        if kind == HELD:
            self.held_tally.delete(partition, row_key, delivery.destination)
        else:
            self.table.delete_entity(partition, row_key)

    # --- reading ------------------------------------------------------------------------------

    def open(self) -> Iterator[Entry]:
        """Every open delivery's entry (and any stale one not yet removed)."""
        return self._kind(OPEN)

    def failed(self) -> Iterator[Entry]:
        """Every failed delivery's entry (and any stale one not yet removed)."""
        return self._kind(FAILED)

    def held(self, page: int = 100) -> Iterator[Entry]:
        """Every held delivery's entry (and any stale one), read lazily, ``page`` at a time."""
        return self._kind(HELD, self.held_table, page)

    def held_back(self) -> tuple[dict[str, int], bool]:
        """How many deliveries are held back, per destination, and whether that is counted to the
        end (False while the held index of a store from before the tally is being counted)."""
        return self.held_tally.counts(shards())

    def count_held(self, seconds: float | None = None) -> bool:
        """Count the held entries of a store from before the tally (the maintenance timer, and
        ``reindex``), a page at a time; True once every shard is counted."""
        import time

        started = time.monotonic()
        for shard in shards():
            while not self.held_tally.recount_step(shard, HELD, past(HELD)):
                if seconds is not None and time.monotonic() - started > seconds:
                    return False
        return True

    def _kind(self, prefix: str, table: TableClient | None = None, page: int | None = None) -> Iterator[Entry]:
        for shard in shards():
            yield from entries_between(table or self.table, shard, prefix, past(prefix), page)

    def entry(self, kind: str, delivery: Delivery) -> Entry | None:
        """The entry ``delivery`` has in index ``kind``, if any (one point read)."""
        from azure.core.exceptions import ResourceNotFoundError

        table = self.held_table if kind == HELD else self.table
        try:
            return entry_of(table.get_entity(shard_of(delivery.lead_id), delivery_row_key(kind, delivery)))
        except ResourceNotFoundError:
            return None

    def newest(
        self, since: datetime | None = None, until: datetime | None = None, after: str | None = None, page: int = 50
    ) -> Iterator[Entry]:
        """Leads and rejected records received in [since, until), newest first, after the cursor
        ``after`` (see :func:`cursor_of`); read lazily, a page at a time."""
        low = f"{_INVERT - micros(until) + 1:018d}" if until else ""
        if after:
            low = max(low, after)
        high = f"{_INVERT - micros(since) + 1:018d}" if since else "~"
        return entries_between(self.timeline, TIMELINE, low, high, page + 1)

    def rejected(self, count: int) -> list[Entry]:
        """The latest ``count`` rejected records' entries, newest first."""
        ranges = [entries_between(self.table, shard, REJECTED, past(REJECTED), count) for shard in shards()]
        return list(islice(heapq.merge(*ranges, key=lambda entry: entry.row_key), count))

    # --- indexing a store written before the index ----------------------------------------------

    def built(self) -> bool:
        """Whether every lead stored before the index existed has been indexed."""
        return bool(checkpoint_of(self.table, _META).get("Done"))

    def mark_built(self) -> None:
        """A new store: nothing was stored before the index, and no held entry before the tally."""
        mark_done(self.table, _META)
        self.held_tally.start(shards())

    def build(
        self, leads: TableClient, seconds: float | None = None, again: bool = False, page: int = 1000
    ) -> dict[str, Any]:
        """Index every row of the lead store ``leads`` (see ``storage.read_store_once``)."""
        return read_store_once(
            leads, self.table, _META, self._index_page, ("Leads", "Deliveries"), seconds, again, page
        )

    def _index_page(self, entities: list[Mapping[str, Any]]) -> dict[str, int]:
        counts = {"Leads": 0, "Deliveries": 0}
        pending: dict[str, list[dict[str, Any]]] = {"timeline": [], "index": [], "held": []}
        for entity in entities:
            entries = entries_for(entity)
            if entries:
                counts["Deliveries" if is_delivery_row(entity["RowKey"]) else "Leads"] += 1
            for table, entry in entries:
                pending[table].append(entry)
        upsert_batched(self.timeline, pending["timeline"])
        upsert_batched(self.table, pending["index"])
        self._hold(pending["held"])  # with their tally: counted once, whatever exists
        return counts


def entries_for(entity: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The entries, as (``"timeline"``, ``"index"`` or ``"held"``, entry), that a row of the lead
    store calls for: none for a finished delivery, or a row of another kind."""
    row_key: str = entity["RowKey"]
    lead_id: str = entity["PartitionKey"]
    if row_key == LEAD_ROW and entity.get("ReceivedAt"):
        return [("timeline", timeline_entry(lead_id, entity["ReceivedAt"]))]
    if row_key == REJECTED_ROW and entity.get("ReceivedAt"):
        return [
            ("timeline", timeline_entry(lead_id, entity["ReceivedAt"], rejected=True)),
            ("index", rejected_entry(lead_id, entity["ReceivedAt"])),
        ]
    if is_delivery_row(row_key) and entity.get("State"):
        delivery = delivery_from_entity(entity)
        kind = kind_of(delivery)
        return [("held" if kind == HELD else "index", delivery_entry(kind, delivery))] if kind else []
    return []


def entries_between(
    table: TableClient, partition: str, low: str, high: str, page: int | None = None
) -> Iterator[Entry]:
    """The entries of one partition with keys strictly between ``low`` and ``high``, in order."""
    from azure.core.exceptions import ResourceNotFoundError

    query = "PartitionKey eq @partition and RowKey gt @low and RowKey lt @high"
    entities = table.query_entities(
        query, parameters={"partition": partition, "low": low, "high": high}, results_per_page=page
    )
    try:
        for entity in entities:
            yield entry_of(entity)
    except ResourceNotFoundError:
        return  # no table yet: nothing stored yet


def past(prefix: str) -> str:
    """The first key past every key that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
