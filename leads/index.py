"""Indexes beside the lead store, so that routine work reads what is open, never history.

The lead store keeps one partition per lead: a lead's whole story is one read, but nothing orders
leads or finds the open ones without reading every row ever stored. Four tables beside it hold
what the timers and commands need:

- ``<prefix>Index``: what may need someone, in ``SHARDS`` partitions (``s0`` ... ``s3``) chosen by
  lead id, so that one lead's entries share a partition and no partition takes every write:
  ``o|<lead id>|<destination>|<generation>`` for each open delivery (the sweep, ``status``),
  ``f|<lead id>|<destination>|<generation>`` for each failed delivery (``replay``, ``status``),
  ``r|<inverted time>|<lead id>`` for each rejected record;
- ``<prefix>Held``: ``h|<lead id>|<destination>|<generation>`` (same shards) for each delivery
  held back by the backfill limit (``skipped`` as older than ``LEADS_BACKFILL_DAYS``). Those are
  history until someone replays them (the first poll of a table holding years of rows holds every
  one), so only ``replay --skipped`` reads them, a page at a time; ``status`` takes their number
  from a tally (below);
- ``<prefix>Timeline``: every lead and rejected record, newest first (``<inverted time>|<lead
  id>``, one partition), for ``list``;
- ``<prefix>Counts``: per-day counters for ``status`` (one of ``COUNTER_SLOTS`` rows a day picked
  at random per change, so concurrent workers rarely meet on one ETag) of what was delivered,
  failed, skipped and rejected, and in the partition ``held`` (as many slots) the held-back tally
  per destination: +1 for each held entry this app created, -1 for each it deleted, so it follows
  the held index without reading it. Both record changes, they are not a census: a process that
  dies between a change and its count leaves the count one off.

Keeping what grows with history (the timeline, the days, the held deliveries) out of the table
the sweep reads also keeps the sweep's cost flat on Azurite, which answers every query by reading
its whole table.

An entry is written before what it points at, and removed after that moved on. The generation
(the delivery's ``retry_from``, renewed by each replay) keeps one round of a delivery's entries
apart from the next, so removing an old round's entry never removes a newer one's. An entry left
behind by a crash points at something missing, finished or of another generation: whoever reads
it drops it, with its ETag, so an entry written again meanwhile stays. A version before the held
index kept held deliveries' entries under ``f|``: whoever reads one there (``status``, ``replay``,
``replay --skipped``, each of which reads every ``f|`` entry) moves it to the held index
(:meth:`LeadIndex.carry_forward`), once; ``reindex`` writes held entries there too.

Stores written before the index are indexed once by :meth:`LeadIndex.build` (``python -m leads
reindex``, or the first sweeps after the upgrade), which reads the lead store from start to end
once, in bounded steps, and remembers where it stopped.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any

from .deliveries import OPEN as OPEN_STATES
from .deliveries import Delivery, _from_entity
from .routing import held_for_backfill

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)

SHARDS = 4
COUNTER_SLOTS = 16
REJECTED, OPEN, REPLAYABLE, HELD = "r|", "o|", "f|", "h|"
HELD_TALLY = "held"  # the partition of the held-back tally in the counts table
TIMELINE = "leads"  # the timeline's one partition
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INVERT = 10**18
_BATCH = 100  # the most operations one table transaction may hold
_META = ("meta", "reindex")


@dataclass(frozen=True)
class Entry:
    """One index entry, as read."""

    row_key: str
    partition: str
    lead_id: str
    destination: str = ""
    generation: str = ""
    at: datetime | None = None
    rejected: bool = False
    etag: str | None = None


def shard_of(lead_id: str) -> str:
    return f"s{zlib.crc32(lead_id.encode()) % SHARDS}"


def micros(moment: datetime) -> int:
    """Microseconds since 1970 (naive datetimes are UTC), exact, for keys and comparisons."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def time_key(moment: datetime) -> str:
    """The inverted-time part of a RowKey: newer sorts first."""
    return f"{_INVERT - micros(moment):018d}"


def generation(delivery: Delivery) -> str:
    """Tells one round of a delivery (stored, or replayed) from the next."""
    moment = delivery.retry_from or delivery.created_at
    return str(micros(moment)) if moment else "0"


def kind_of(delivery: Delivery) -> str | None:
    """The index a delivery in its present state belongs in, if any."""
    if delivery.state in OPEN_STATES:
        return OPEN
    if held_for_backfill(delivery):
        return HELD
    return REPLAYABLE if delivery.state == "failed" else None


def delivery_row_key(kind: str, delivery: Delivery) -> str:
    return f"{kind}{delivery.lead_id}|{delivery.destination}|{generation(delivery)}"


def _delivery_entry(kind: str, delivery: Delivery) -> dict[str, Any]:
    return {"PartitionKey": shard_of(delivery.lead_id), "RowKey": delivery_row_key(kind, delivery),
            "LeadId": delivery.lead_id, "Destination": delivery.destination,
            "At": delivery.updated_at or delivery.created_at or _now()}  # fmt: skip


def _timeline_entry(lead_id: str, received_at: datetime, rejected: bool = False) -> dict[str, Any]:
    return {"PartitionKey": TIMELINE, "RowKey": f"{time_key(received_at)}|{lead_id}", "LeadId": lead_id,
            "Rejected": rejected}  # fmt: skip


def _rejected_entry(lead_id: str, received_at: datetime) -> dict[str, Any]:
    return {"PartitionKey": shard_of(lead_id), "RowKey": f"{REJECTED}{time_key(received_at)}|{lead_id}",
            "LeadId": lead_id}  # fmt: skip


def _entry(entity: Mapping[str, Any]) -> Entry:
    row_key: str = entity["RowKey"]
    return Entry(
        row_key=row_key,
        partition=entity["PartitionKey"],
        lead_id=entity["LeadId"],
        destination=entity.get("Destination") or "",
        generation=row_key.rsplit("|", 1)[-1] if row_key[:2] in (OPEN, REPLAYABLE, HELD) else "",
        at=entity.get("At"),
        rejected=bool(entity.get("Rejected")),
        etag=getattr(entity, "metadata", {}).get("etag"),
    )


class LeadIndex:
    """The index tables: entries written and dropped beside the lead store's writes, read by the
    sweep, ``replay``, ``status`` and ``list``."""

    def __init__(self, table: TableClient, timeline: TableClient, counts: TableClient, held: TableClient) -> None:
        self.table = table
        self.timeline = timeline
        self.counters = DayCounters(counts)
        self.held_table = held

    @property
    def tables(self) -> tuple[TableClient, ...]:
        return self.table, self.timeline, self.counters.table, self.held_table

    # --- writing beside the lead store ------------------------------------------------------------

    def before_add(self, delivery_rows: Iterable[Mapping[str, Any]]) -> None:
        """Index the deliveries a lead about to be stored owes (their rows). Each entry is an
        upsert of its own, which the SDK retries when an answer is lost (it retries no batch)."""
        held = []
        for delivery in map(_from_entity, delivery_rows):
            if (kind := kind_of(delivery)) == HELD:
                held.append(_delivery_entry(kind, delivery))
            elif kind:
                self.table.upsert_entity(_delivery_entry(kind, delivery))
        self._hold(held)

    def add_to_timeline(self, lead_id: str, received_at: datetime) -> None:
        """The time entry of a lead about to be stored (one that is missing, ``reindex --again``
        writes)."""
        self.timeline.upsert_entity(_timeline_entry(lead_id, received_at))

    def after_add(self, delivery_rows: Iterable[Mapping[str, Any]], at: datetime) -> None:
        """Count the deliveries a newly stored lead owes nothing (skipped from the start)."""
        skipped = [row["Destination"] for row in delivery_rows if row.get("State") == "skipped"]
        if skipped:
            self.counters.add({f"{name}_skipped": 1 for name in skipped}, at)

    def after_duplicate(self, lead_id: str, received_at: datetime, delivery_rows: Iterable[Mapping[str, Any]],
                        stored_received_at: datetime | None) -> None:  # fmt: skip
        """Take back what :meth:`before_add` and :meth:`add_to_timeline` wrote for a lead that
        turned out to be stored already: its deliveries' entries (their generation is this attempt's own), and its time
        entry unless the stored lead has the same time (a marketplace row read twice)."""
        from azure.core.exceptions import AzureError

        owed = [(kind, d) for d in map(_from_entity, delivery_rows) if (kind := kind_of(d))]
        try:
            for kind, delivery in owed:
                self._remove(kind, delivery.destination, shard_of(lead_id), delivery_row_key(kind, delivery))
            if stored_received_at is None or micros(stored_received_at) != micros(received_at):
                _delete(self.timeline, TIMELINE, f"{time_key(received_at)}|{lead_id}")
        except AzureError as exc:  # left over, it is dropped by whoever reads it
            log.info("index entries of duplicate %s left for the sweep (%s)", lead_id, type(exc).__name__)

    def before_reject(self, lead_id: str, received_at: datetime) -> None:
        """Index a rejected record about to be stored."""
        self.timeline.upsert_entity(_timeline_entry(lead_id, received_at, rejected=True))
        self.table.upsert_entity(_rejected_entry(lead_id, received_at))
        self.counters.add({"intake_rejected": 1}, _now())

    def before_change(self, old: Delivery, new: Delivery) -> None:
        """Before a delivery's conditional write: the entry of the index it moves into."""
        kind = kind_of(new)
        if kind == HELD and (kind, generation(new)) != (kind_of(old), generation(old)):
            self._hold([_delivery_entry(kind, new)])
        elif kind and (kind, generation(new)) != (kind_of(old), generation(old)):
            self.table.upsert_entity(_delivery_entry(kind, new))

    def after_change(self, old: Delivery, new: Delivery) -> None:
        """After a delivery's conditional write succeeded: remove the entry it moved out of and
        count a delivery that ended. Never raises: what is left over is dropped later."""
        from azure.core.exceptions import AzureError

        kind = kind_of(old)
        try:
            if kind and (kind, generation(old)) != (kind_of(new), generation(new)):
                self._remove(kind, old.destination, shard_of(old.lead_id), delivery_row_key(kind, old))
        except AzureError as exc:
            log.info("index entry of %s/%s left for the sweep (%s)", old.lead_id, old.destination, type(exc).__name__)
        if new.state != old.state and new.state in ("delivered", "failed", "skipped"):
            self.counters.add({f"{new.destination}_{new.state}": 1}, new.updated_at or _now())

    def drop(self, entry: Entry) -> None:
        """Remove an entry found pointing at nothing it should, unless it was written again."""
        self._remove(entry.row_key[:2], entry.destination, entry.partition, entry.row_key, entry.etag)

    def carry_forward(self, entry: Entry, delivery: Delivery) -> None:
        """Move the entry of a held ``delivery`` that a version before the held index kept among
        the failed ones (``f|``) into the held index. Repeated or raced, it moves it once."""
        self._hold([_delivery_entry(HELD, delivery)])
        self.drop(entry)

    def _hold(self, entries: list[dict[str, Any]]) -> None:
        """Create held entries and add the ones created to the tally. An entry that exists was
        counted when it was created (a retried call, ``reindex --again``, a second carry forward)."""
        from azure.core.exceptions import ResourceExistsError

        added: dict[str, int] = {}
        for entry in entries:
            try:
                self.held_table.create_entity(entry)
            except ResourceExistsError:
                continue
            added[entry["Destination"]] = added.get(entry["Destination"], 0) + 1
        if added:
            self.counters.add_held(added)

    def _remove(self, kind: str, destination: str, partition: str, row_key: str, etag: str | None = None) -> None:
        """Delete an entry (if still as read, with ``etag``); a held one deleted leaves the tally."""
        table = self.held_table if kind == HELD else self.table
        if _delete(table, partition, row_key, etag) and kind == HELD:
            self.counters.add_held({destination: -1})

    # --- reading ------------------------------------------------------------------------------

    def open(self) -> Iterator[Entry]:
        """Every open delivery's entry (and any left over, for the reader to drop)."""
        return self._kind(OPEN)

    def replayable(self) -> Iterator[Entry]:
        """Every failed delivery's entry (and any left over, and held ones an earlier version put
        here: see :meth:`carry_forward`)."""
        return self._kind(REPLAYABLE)

    def held(self, page: int = 100) -> Iterator[Entry]:
        """Every held delivery's entry (and any left over), read lazily, ``page`` at a time."""
        return self._kind(HELD, self.held_table, page)

    def held_back(self) -> dict[str, int]:
        """How many deliveries are held back now, per destination, from the tally."""
        return self.counters.held()

    def _kind(self, prefix: str, table: TableClient | None = None, page: int | None = None) -> Iterator[Entry]:
        for shard in _shards():
            yield from _range(table or self.table, shard, prefix, _after(prefix), page)

    def newest(self, since: datetime | None = None, until: datetime | None = None, after: str | None = None,
               page: int = 50) -> Iterator[Entry]:  # fmt: skip
        """Leads and rejected records received in [since, until), newest first, after the cursor
        ``after`` (see :meth:`cursor`); read lazily, a page at a time."""
        low = f"{_INVERT - micros(until) + 1:018d}" if until else ""
        if after:
            low = max(low, after)
        high = f"{_INVERT - micros(since) + 1:018d}" if since else "~"
        return _range(self.timeline, TIMELINE, low, high, page + 1)

    def rejected(self, count: int) -> list[Entry]:
        """The latest ``count`` rejected records' entries, newest first."""
        shards = [_range(self.table, shard, REJECTED, _after(REJECTED), count) for shard in _shards()]
        return list(islice(heapq.merge(*shards, key=lambda entry: entry.row_key), count))

    @staticmethod
    def cursor(entry: Entry) -> str:
        """Where a page after ``entry`` starts (for ``list --cursor``)."""
        return entry.row_key

    @staticmethod
    def cursor_of(lead_id: str, received_at: datetime) -> str:
        """The cursor of the timeline entry of a lead received at ``received_at``."""
        return f"{time_key(received_at)}|{lead_id}"

    # --- indexing a store written before the index ------------------------------------------------

    def built(self) -> bool:
        """Whether every lead stored before the index existed has been indexed."""
        return bool(checkpoint_of(self.table, _META).get("Done"))

    def mark_built(self) -> None:
        """A new store: nothing was stored before the index."""
        mark_done(self.table, _META)

    def build(self, leads: TableClient, seconds: float | None = None, again: bool = False,
              page: int = 1000) -> dict[str, Any]:  # fmt: skip
        """Index every row of the lead store ``leads`` (see :func:`read_store_once`)."""
        return read_store_once(leads, self.table, _META, self._index_page, ("Leads", "Deliveries"), seconds, again,
                               page)  # fmt: skip

    def _index_page(self, entities: list[Mapping[str, Any]]) -> dict[str, int]:
        counts = {"Leads": 0, "Deliveries": 0}
        pending: dict[str, list[dict[str, Any]]] = {"timeline": [], "index": [], "held": []}
        for entity in entities:
            entries = entries_for(entity)
            if entries:
                counts["Deliveries" if entity["RowKey"].startswith("delivery|") else "Leads"] += 1
            for table, entry in entries:
                pending[table].append(entry)
        upsert_batched(self.timeline, pending["timeline"])
        upsert_batched(self.table, pending["index"])
        self._hold(pending["held"])  # one by one: the tally counts only the entries created
        return counts


def read_store_once(leads: TableClient, checkpoints: TableClient, key: tuple[str, str],
                    index_page: Callable[[list[Mapping[str, Any]]], Mapping[str, int]], counts: Iterable[str],
                    seconds: float | None = None, again: bool = False, page: int = 1000) -> dict[str, Any]:  # fmt: skip
    """Hand every row of the lead store ``leads`` to ``index_page``, a page at a time, from start to
    end once, resuming where the last call stopped, for at most ``seconds`` (None: to the end).
    ``index_page`` writes with upserts and returns what it indexed (``counts`` names them); the
    place and the totals are saved in the row ``key`` of ``checkpoints`` after each page, so a
    build cut short, or two at once, only repeat work. ``again``: from the start once more."""
    meta = {} if again else checkpoint_of(checkpoints, key)
    if meta.get("Done"):
        return meta
    started = time.monotonic()
    last = meta.get("ResumeFrom") or ""
    progress = {name: int(meta.get(name) or 0) for name in counts}
    query = leads.query_entities("PartitionKey ge @resume", parameters={"resume": last}, results_per_page=page)
    for entities in query.by_page():
        entities = list(entities)
        for name, count in index_page(entities).items():
            progress[name] += count
        last = entities[-1]["PartitionKey"] if entities else last
        checkpoints.upsert_entity({"PartitionKey": key[0], "RowKey": key[1], "ResumeFrom": last, **progress})
        if seconds is not None and time.monotonic() - started > seconds:
            return {"ResumeFrom": last, **progress, "Done": False}
    meta = {"ResumeFrom": last, **progress, "Done": True, "DoneAt": _now()}
    checkpoints.upsert_entity({"PartitionKey": key[0], "RowKey": key[1], **meta})
    return meta


def checkpoint_of(table: TableClient, key: tuple[str, str]) -> dict[str, Any]:
    """A build's checkpoint row (see :func:`read_store_once`); empty if it never ran."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return dict(table.get_entity(*key))
    except ResourceNotFoundError:
        return {}


def mark_done(table: TableClient, key: tuple[str, str]) -> None:
    """Record a build as complete (a new store has nothing from before to index)."""
    table.upsert_entity({"PartitionKey": key[0], "RowKey": key[1], "Done": True, "DoneAt": _now()})


def upsert_batched(table: TableClient, entities: Iterable[Mapping[str, Any]]) -> None:
    """Upsert ``entities``, in one transaction per partition and :data:`_BATCH` rows (the last
    of two with one key wins)."""
    partitions: dict[str, dict[str, Mapping[str, Any]]] = {}
    for entity in entities:
        partitions.setdefault(entity["PartitionKey"], {})[entity["RowKey"]] = entity
    for rows in partitions.values():
        unique = list(rows.values())
        for start in range(0, len(unique), _BATCH):
            table.submit_transaction([("upsert", entity) for entity in unique[start:start + _BATCH]])


def entries_for(entity: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The entries, as (``"timeline"``, ``"index"`` or ``"held"``, entry), that a row of the lead
    store calls for: none for a finished delivery, or a row of another kind."""
    row_key: str = entity["RowKey"]
    lead_id: str = entity["PartitionKey"]
    if row_key == "lead" and entity.get("ReceivedAt"):
        return [("timeline", _timeline_entry(lead_id, entity["ReceivedAt"]))]
    if row_key == "rejected" and entity.get("ReceivedAt"):
        return [("timeline", _timeline_entry(lead_id, entity["ReceivedAt"], rejected=True)),
                ("index", _rejected_entry(lead_id, entity["ReceivedAt"]))]  # fmt: skip
    if row_key.startswith("delivery|") and entity.get("State"):
        delivery = _from_entity(entity)
        kind = kind_of(delivery)
        return [("held" if kind == HELD else "index", _delivery_entry(kind, delivery))] if kind else []
    return []


class DayCounters:
    """Per-day counts of changes (``<destination>_<state>``, ``intake_rejected``), kept in
    ``COUNTER_SLOTS`` rows a day and changed with ETags; reading a window reads its rows only.
    Beside them, the held-back tally (``<destination>``), in ``COUNTER_SLOTS`` rows of its own."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    def add(self, counts: Mapping[str, int], at: datetime) -> None:
        """Add ``counts`` to the day of ``at``. Never raises: a count is not worth a delivery."""
        self._add(f"count|{at.astimezone(UTC):%Y-%m-%d}", counts)

    def add_held(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` (negative: taken away) to the held-back tally. Never raises."""
        self._add(HELD_TALLY, counts)

    def held(self) -> dict[str, int]:
        """The held-back tally per destination (those above zero): ``COUNTER_SLOTS`` rows at most."""
        totals: dict[str, int] = {}
        for row in self.table.query_entities("PartitionKey eq @held", parameters={"held": HELD_TALLY}):
            for name, value in row.items():
                if name not in ("PartitionKey", "RowKey") and isinstance(value, int):
                    totals[name] = totals.get(name, 0) + value
        return {name: count for name, count in sorted(totals.items()) if count > 0}

    def _add(self, partition: str, counts: Mapping[str, int]) -> None:
        from azure.core.exceptions import AzureError

        from .storage import RowKeptChanging, change_row

        def added(row: Mapping[str, Any] | None) -> dict[str, int]:
            return {name: int((row or {}).get(name) or 0) + n for name, n in counts.items()}

        # The writers are spread over the slots, so that they seldom meet on one row.
        slot = f"{random.randrange(COUNTER_SLOTS):02d}"
        try:
            change_row(self.table, partition, slot, added, tries=20)
        except RowKeptChanging:
            log.warning("a counter kept changing under this update; %s not counted", ", ".join(counts))
        except AzureError as exc:
            log.warning("counters not updated (%s)", type(exc).__name__)

    def window(self, days: int, now: datetime | None = None) -> dict[str, dict[str, int]]:
        """``{group: {state: count}}`` over the last ``days`` days (today included)."""
        now = (now or _now()).astimezone(UTC)
        low, high = f"count|{now - timedelta(days=days - 1):%Y-%m-%d}", f"count|{now:%Y-%m-%d}"
        totals: dict[str, dict[str, int]] = {}
        query = "PartitionKey ge @low and PartitionKey le @high"
        for row in self.table.query_entities(query, parameters={"low": low, "high": high}):
            for name, value in row.items():
                if name in ("PartitionKey", "RowKey") or "_" not in name or not isinstance(value, int):
                    continue
                group, state = name.rsplit("_", 1)
                totals.setdefault(group, {}).setdefault(state, 0)
                totals[group][state] += value
        return {group: dict(sorted(states.items())) for group, states in sorted(totals.items())}


def _range(table: TableClient, partition: str, low: str, high: str, page: int | None = None) -> Iterator[Entry]:
    """The entries of one partition with keys strictly between ``low`` and ``high``, in order."""
    from azure.core.exceptions import ResourceNotFoundError

    query = "PartitionKey eq @partition and RowKey gt @low and RowKey lt @high"
    entities = table.query_entities(query, parameters={"partition": partition, "low": low, "high": high},
                                    results_per_page=page)  # fmt: skip
    try:
        for entity in entities:
            yield _entry(entity)
    except ResourceNotFoundError:
        return  # no table yet: nothing stored yet


def _delete(table: TableClient, partition: str, row_key: str, etag: str | None = None) -> bool:
    """Delete a row (only if unchanged since read, given its ``etag``); whether this call deleted it."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

    condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
    try:
        table.delete_entity(partition, row_key, **condition)
    except (ResourceModifiedError, ResourceNotFoundError):
        return False
    return True


def _shards() -> list[str]:
    return [f"s{number}" for number in range(SHARDS)]


def _after(prefix: str) -> str:
    """The first key past every key that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _now() -> datetime:
    return datetime.now(UTC)
