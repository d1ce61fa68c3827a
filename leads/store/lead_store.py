"""The lead store: every lead, normalised and as received, in the app's own Azure Table.

One partition per lead (``PartitionKey`` = lead id): the lead itself is the row ``lead``, and what
happens to it later (deliveries) lives beside it, so one partition query shows a lead's whole
story. A lead is written with an insert that fails if the row exists: that single atomic write is
both the durable store and the duplicate check. The rows' keys and codecs are in ``leads/store/rows.py``;
what is derived from them (index, timeline, identity and email rows, counts) follows
``leads/store/derived.py``.

HTTP leads have one more row per normalised content (``PartitionKey`` = the content digest,
``RowKey`` ``content``): how many leads that content made and the latest of them, changed with an
ETag. The repeat check reads that one row, so it costs the same on the thousandth arrival as on
the first. Stores written before it existed are carried forward on first touch (see
:meth:`LeadStore._carry_forward`). What holds no usable lead (a marketplace row, a refused body)
is kept as the row ``rejected`` of its own partition.

What is written beside a lead before its insert and after it, and what the failure of each means
for the answer (only what the lead cannot do without makes it a 503), is in docs/contract.md
(*When storage fails*).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import islice
from typing import TYPE_CHECKING, Any

from leads.core.model import Lead, Route
from leads.core.normalise import http_lead_id, identifies_person
from leads.core.settings import Settings, get_settings
from leads.core.storage import RowKeptChanging, change_row, table_service
from leads.store.counts import REJECTED as REJECTED_COUNT
from leads.store.counts import DayCounters
from leads.store.deliveries import DeliveryBook, new_delivery
from leads.store.identities import IdentityIndex, addresses_of
from leads.store.index import Entry, LeadIndex, cursor_of
from leads.store.rows import (
    CONTENT_ROW,
    LEAD_ROW,
    REJECTED_ROW,
    Content,
    Delivery,
    content_entity,
    content_from_entity,
    day_of,
    delivery_entity,
    lead_entity,
    lead_from_entity,
    rejected_entity,
    rejected_from_entity,
)

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from azure.data.tables import TableClient, TableServiceClient

log = logging.getLogger(__name__)

# The rows written before a lead that it can be stored without, and what their absence means.
_IDENTITY_ROWS, _TIMELINE_ENTRY = "identity and email rows", "timeline entry"
_REPAIRABLE = {
    _IDENTITY_ROWS: "import does not match it, and forget --email reads every row until python -m leads reindex "
    "has written them",
    _TIMELINE_ENTRY: "list does not show it (show does) until verify --repair (or reindex --again) writes it",
}


@dataclass(frozen=True)
class Listed:
    """A lead, or a rejected record (a dict, as ``rejected`` gives it), with the cursor of the
    page that starts after it."""

    record: Lead | dict[str, Any]
    cursor: str


@dataclass(frozen=True)
class Stored:
    """The outcome of storing a lead: its id (for a repeat, the id of the lead it repeats), and
    whether that lead's personal data was erased (then nothing of this one was kept)."""

    lead_id: str
    duplicate: bool
    erased: bool = False


@dataclass(frozen=True)
class Rejected:
    """Something that came in and holds no usable lead, kept as a rejected record: what an
    operator is told about (its id and reason only, never its content)."""

    record_id: str
    channel: str
    error: str
    received_at: datetime


class LeadStore:
    def __init__(self, service: TableServiceClient, prefix: str = "Leads") -> None:
        self.service = service
        self.leads: TableClient = service.get_table_client(prefix)
        self.checkpoints: TableClient = service.get_table_client(f"{prefix}Checkpoints")
        self.index = LeadIndex(*(service.get_table_client(prefix + name) for name in ("Index", "Timeline", "Held")))
        self.counters = DayCounters(service.get_table_client(f"{prefix}Counts"))
        self.deliveries = DeliveryBook(self.leads, self.index, self.counters)
        self.identities = IdentityIndex(service.get_table_client(f"{prefix}Identities"), self.leads, self.checkpoints)
        self._created = False

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> LeadStore:
        settings = settings or get_settings()
        return _store(settings.storage_connection, settings.table_prefix)

    def ensure_tables(self) -> None:
        """Create the app's tables once per process (a no-op when they exist)."""
        if self._created:
            return
        from azure.core.exceptions import ResourceExistsError

        created = set()
        for table in (self.leads, self.checkpoints, self.identities.table, self.counters.table, *self.index.tables):
            try:
                table.create_table()
                created.add(table.table_name)
            except ResourceExistsError:
                pass
        if {self.leads.table_name, self.index.table.table_name} <= created:
            self.index.mark_built()  # a new store: no lead was stored before its index
        if {self.leads.table_name, self.identities.table.table_name} <= created:
            self.identities.mark_built()  # nor before its identity and email rows
        self._created = True

    def ping(self) -> None:
        """One cheap request that raises if the app's storage cannot be used."""
        from azure.core.exceptions import ResourceNotFoundError

        self.ensure_tables()
        try:
            self.checkpoints.get_entity("health", "probe")
        except ResourceNotFoundError:
            pass

    # --- writing --------------------------------------------------------------------------------

    def add(
        self, lead: Lead, deliveries: Mapping[str, Route] | None = None, beside: Sequence[dict[str, Any]] = ()
    ) -> Stored:
        """Store a lead and the deliveries it owes (and ``beside`` it, other new rows of its
        partition) in one atomic write, unless a lead with its id exists: derived rows, the
        transaction, then settle.

        The derived rows go first (``leads/store/derived.py``): the deliveries' index entries, without
        which the lead is not stored (a delivery whose queue message is lost is found by them
        alone), then the rows it can be stored without (:data:`_REPAIRABLE`), written again once
        it is stored if they failed. Settling counts what it owes nothing (skipped from the start)
        or, for a lead stored already, takes back what this call wrote. Once the lead's write
        committed, nothing raises."""
        self.ensure_tables()
        now = datetime.now(UTC)
        owed = [
            new_delivery(lead.lead_id, name, route, now, lead.received_at) for name, route in (deliveries or {}).items()
        ]
        # The write id tells this call's write from another's when an answer was lost.
        entity = {**lead_entity(lead), "WriteId": uuid.uuid4().hex}
        addresses = addresses_of(entity)
        self.index.before_add(owed)
        if any(delivery.state == "skipped" for delivery in owed):
            self.counters.mark(day_of(lead.received_at))  # counted once stored: an old day is recounted
        missed = self._write_repairable(lead, addresses, _REPAIRABLE)
        existing = self._commit([entity, *beside, *map(delivery_entity, owed)])
        if existing is None:
            return self._settle(lead, addresses, owed, missed)
        self._take_back(lead, addresses, owed, existing)
        return Stored(lead.lead_id, duplicate=True, erased=existing.get("ErasedAt") is not None)

    def add_many(
        self, items: Sequence[tuple[Lead, Mapping[str, Route]]], pool: Executor | None = None
    ) -> list[Stored | Exception]:
        """:meth:`add` for the leads of a poll page or an import window, each stored or not on its
        own (its outcome, or the exception that stopped it, in the order given), with the derived
        rows they share a partition with written together: the open entries in a transaction per
        shard, the identity rows per day, the email rows per bucket, the timeline entries per
        partition. Then each lead's own transaction (in ``pool``, if given), and its settling.

        The protocol is :meth:`add`'s, for many: every entry is written before any lead, and a
        derived row whose batch failed is written again for its lead once it is stored. A lead
        given twice is stored once; the second is its repeat."""
        self.ensure_tables()
        now = datetime.now(UTC)
        firsts: dict[str, int] = {}
        for number, (lead, _) in enumerate(items):
            firsts.setdefault(lead.lead_id, number)
        batch = [
            (
                lead,
                [
                    new_delivery(lead.lead_id, name, route, now, lead.received_at)
                    for name, route in (deliveries or {}).items()
                ],
            )
            for number, (lead, deliveries) in enumerate(items)
            if firsts[lead.lead_id] == number
        ]
        entities = {lead.lead_id: {**lead_entity(lead), "WriteId": uuid.uuid4().hex} for lead, _ in batch}
        addresses = {lead.lead_id: addresses_of(entities[lead.lead_id]) for lead, _ in batch}
        try:
            self.index.before_add([delivery for _, owed in batch for delivery in owed])
            for day in sorted(
                {
                    day_of(lead.received_at)
                    for lead, owed in batch
                    if any(delivery.state == "skipped" for delivery in owed)
                }
            ):
                self.counters.mark(day)
        except Exception as exc:  # nothing of these leads can be stored without their entries
            return [exc for _ in items]
        missed = self._write_repairable_many([(lead, addresses[lead.lead_id]) for lead, _ in batch])

        def store_one(lead: Lead, owed: list[Delivery]) -> Stored:
            existing = self._commit([entities[lead.lead_id], *map(delivery_entity, owed)])
            if existing is None:
                return self._settle(lead, addresses[lead.lead_id], owed, missed)
            self._take_back(lead, addresses[lead.lead_id], owed, existing)
            return Stored(lead.lead_id, duplicate=True, erased=existing.get("ErasedAt") is not None)

        def outcome(lead: Lead, owed: list[Delivery]) -> tuple[str, Stored | Exception]:
            try:
                return lead.lead_id, store_one(lead, owed)
            except Exception as exc:  # the caller tells an outage from a lead that cannot be stored
                return lead.lead_id, exc

        from leads.core.http import carried

        mapped = pool.map(carried(lambda item: outcome(*item)), batch) if pool else (outcome(*item) for item in batch)
        outcomes = dict(mapped)
        results: list[Stored | Exception] = []
        for number, (lead, deliveries) in enumerate(items):
            first = outcomes[lead.lead_id]
            if firsts[lead.lead_id] == number or isinstance(first, Exception):
                results.append(first)
            else:  # the same lead again in one batch: stored (or not) by the first, a repeat of it
                try:
                    results.append(self.add(lead, deliveries))
                except Exception as exc:
                    results.append(exc)
        return results

    def _write_repairable_many(self, leads: list[tuple[Lead, list[str]]]) -> dict[str, str]:
        """The rows :data:`_REPAIRABLE` names of many leads, batched; those whose batch failed
        (written again for each lead once it is stored, by :meth:`_settle`)."""
        from leads.core.storage import upsert_batched
        from leads.store.index import timeline_entry

        return _attempt(
            {
                _IDENTITY_ROWS: lambda: self.identities.record_many(leads),
                _TIMELINE_ENTRY: lambda: upsert_batched(
                    self.index.timeline, [timeline_entry(lead.lead_id, lead.received_at) for lead, _ in leads]
                ),
            }
        )

    def _commit(self, rows: list[dict[str, Any]]) -> Mapping[str, Any] | None:
        """Create ``rows`` (the first the lead's) in one transaction. None when this call created
        them; else the stored lead row that was there (empty if it was another row of the write)."""
        from azure.core.exceptions import ResourceExistsError, ServiceResponseError
        from azure.data.tables import TableTransactionError

        lead = rows[0]
        for attempt in range(3):
            try:
                if len(rows) == 1:
                    self.leads.create_entity(lead)
                else:
                    self.leads.submit_transaction([("create", row) for row in rows])
                return None
            except ResourceExistsError:
                pass
            except TableTransactionError as exc:
                if exc.error_code != "EntityAlreadyExists":
                    raise
            except ServiceResponseError:
                # The write was sent but its answer lost (the SDK does not retry a POST then): again.
                if attempt == 2:
                    raise
                continue
            # The row exists. If this call wrote it (an earlier attempt here, or the SDK's own retry
            # of a POST answered 500/503/504 after it committed), the lead is new after all.
            existing = self._lead_row(lead["PartitionKey"], ["WriteId", "ReceivedAt", "ErasedAt"])
            if existing is not None and existing.get("WriteId") == lead["WriteId"]:
                return None
            return existing if existing is not None else {}
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_repairable(self, lead: Lead, addresses: Sequence[str], names: Iterable[str]) -> dict[str, str]:
        """Write the rows :data:`_REPAIRABLE` names of a lead; those that failed, with the error."""
        writes = {
            _IDENTITY_ROWS: lambda: self.identities.record(lead, addresses),
            _TIMELINE_ENTRY: lambda: self.index.add_to_timeline(lead.lead_id, lead.received_at),
        }
        return _attempt({name: writes[name] for name in names})

    def _settle(
        self, lead: Lead, addresses: Sequence[str], owed: Sequence[Delivery], missed: Mapping[str, str]
    ) -> Stored:
        """The lead is stored: write again what failed before it, count what it owes nothing;
        a failure is logged (the lead's id, never its content), never raised."""
        from azure.core.exceptions import AzureError

        for name, error in self._write_repairable(lead, addresses, missed).items():
            log.warning("lead %s stored without its %s (%s): %s", lead.lead_id, name, error, _REPAIRABLE[name])
            if name == _IDENTITY_ROWS:
                try:
                    self.identities.mark_incomplete()
                except AzureError as exc:
                    log.error(
                        "the email index could not be marked incomplete (%s): run python -m leads reindex "
                        "--again before the next forget --email",
                        type(exc).__name__,
                    )
        skipped = {f"{delivery.destination}_skipped": 1 for delivery in owed if delivery.state == "skipped"}
        self.counters.add(day_of(lead.received_at), skipped)
        return Stored(lead.lead_id, duplicate=False)

    def _take_back(
        self, lead: Lead, addresses: Sequence[str], owed: Sequence[Delivery], existing: Mapping[str, Any]
    ) -> None:
        """Take back what was written before the insert for a lead stored already (the stored
        lead's row ``existing``, empty when another row of the write was there): its index
        entries, and the identity and email rows that are not the stored lead's own."""
        from azure.core.exceptions import AzureError

        stored_at = existing.get("ReceivedAt")
        self.index.take_back(lead.lead_id, lead.received_at, owed, stored_at)
        try:
            self.identities.take_back(lead, addresses, stored_at, erased=existing.get("ErasedAt") is not None)
        except AzureError as exc:  # an erased lead's: forget --email of the address deletes them
            log.warning("rows written for lead %s, stored already, left (%s)", lead.lead_id, type(exc).__name__)

    def _lead_row(self, lead_id: str, select: list[str]) -> Mapping[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.leads.get_entity(lead_id, LEAD_ROW, select=select)
        except ResourceNotFoundError:
            return None

    def _after_stored(self, lead_id: str, what: str, write: Callable[..., object], *args: Any) -> None:
        """``write(*args)``, about a lead once it is stored, which must not turn the answer into a
        failure: one that fails is logged (the lead's id and ``what`` it leaves short), never raised."""
        from azure.core.exceptions import AzureError

        try:
            write(*args)
        except AzureError as exc:
            log.warning("lead %s stored; %s (%s)", lead_id, what, type(exc).__name__)

    def add_http(self, lead: Lead, dedupe_window: timedelta, deliveries: Mapping[str, Route] | None = None) -> Stored:
        """Store an HTTP lead. A lead that names a person (:func:`identifies_person`) arriving
        within ``dedupe_window`` of the latest lead with its content is a repeat of it (counted
        on that lead); after the window it is a new lead with a new id. A lead that names no one
        is always a new lead; its content's row only counts it. A repeat within the window of a
        lead whose personal data was erased is not taken in (``erased``): nothing of it is kept. A
        first arrival is one storage call, a later one five at most, however often the content
        came before; no count refuses a lead."""
        digest = http_lead_id(lead)
        if not identifies_person(lead):
            stored = self.add(lead, deliveries)
            self._after_stored(
                stored.lead_id,
                "not counted on its content (show's count of its content's leads is one short)",
                self._count_content,
                digest,
                stored.lead_id,
                lead.received_at,
            )
            return stored
        # Most content arrives once: write its first lead and its content row together, and look
        # further only if that lead is there already.
        first = content_entity(Content(digest, 1, digest, lead.received_at))
        stored = self.add(lead.model_copy(update={"lead_id": digest}), deliveries, beside=[first])
        if not stored.duplicate:
            return stored
        # No content row beside it: the version before stored it, its lead was erased (the row goes
        # with it), or one arrival got that far.
        content = self._content(digest) or self._carry_forward(lead, digest)
        while lead.received_at - content.latest_at >= dedupe_window:
            candidate = lead.model_copy(update={"lead_id": http_lead_id(lead, content.leads)})
            stored = self.add(candidate, deliveries)
            made = replace(content, leads=content.leads + 1, latest_id=candidate.lead_id, latest_at=lead.received_at)
            if not stored.duplicate:
                self._after_stored(
                    stored.lead_id,
                    "its content's row not moved on to it (the next arrival of the content does that)",
                    self._advance,
                    made,
                )
                return stored
            # Already there: a racing arrival made it, or one that died before moving the row on.
            made_at = self._received_at(candidate.lead_id) or lead.received_at
            content = self._advance(replace(made, latest_at=made_at))
        # A repeat of an erased lead is not taken in: the erasure stands (leads/store/tombstones.py).
        return Stored(
            content.latest_id, duplicate=True, erased=not self._count_duplicate(content.latest_id, lead.received_at)
        )

    def _content(self, digest: str) -> Content | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(digest, CONTENT_ROW)
        except ResourceNotFoundError:
            return None
        return content_from_entity(entity)

    def _advance(self, content: Content) -> Content:
        """Record ``content`` unless the stored row is as far on already; the row as it now is.
        Never raises for a race: the next arrival finds the lead made and moves the row on."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        for _ in range(5):
            entity = content_entity(content)
            try:
                if content.etag is None:
                    metadata = self.leads.create_entity(entity)
                else:
                    metadata = self.leads.update_entity(
                        entity,
                        mode=UpdateMode.REPLACE,
                        etag=content.etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
                return replace(content, etag=metadata["etag"])
            except (ResourceExistsError, ResourceModifiedError):
                current = self._content(content.digest)
                if current is not None and current.leads >= content.leads:
                    return current
                content = replace(content, etag=current.etag if current else None)
        return content

    def _count_content(self, digest: str, lead_id: str, received_at: datetime) -> None:
        """Count one more lead made from the content ``digest`` (a lead that names no one)."""
        current = self._content(digest)
        for _ in range(5):
            counted = Content(
                digest, (current.leads if current else 0) + 1, lead_id, received_at, current.etag if current else None
            )
            if self._advance(counted).latest_id == lead_id:
                return
            current = self._content(digest)

    def _carry_forward(self, lead: Lead, digest: str) -> Content:
        """The content row for leads stored before content rows existed: the version before gave
        the same content's leads the ids ``http_lead_id(lead, 0)``, ``(lead, 1)``, ... without gaps,
        so the latest is found by doubling then halving, with point reads (about 20 for 1,000)."""
        made = {0: self._received_at(digest)}

        def exists(occurrence: int) -> bool:
            if occurrence not in made:
                made[occurrence] = self._received_at(http_lead_id(lead, occurrence))
            return made[occurrence] is not None

        low, high = 0, 1
        while exists(high):
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if exists(middle) else (low, middle)
        latest_at = made[low] or lead.received_at
        return self._advance(Content(digest, low + 1, http_lead_id(lead, low), latest_at))

    def _received_at(self, lead_id: str) -> datetime | None:
        row = self._lead_row(lead_id, ["ReceivedAt"])
        return row["ReceivedAt"] if row is not None else None

    def reject(
        self, record_id: str, error: str, raw: dict[str, Any] | bytes, received_at: datetime, channel: str = "table"
    ) -> Rejected:
        """Keep what came in but holds no usable lead, with the reason, so that nothing the
        marketplace sent disappears unseen (``show`` finds it by its id): a marketplace row
        (``raw``: its properties) or a refused HTTP body (``raw``: the bytes as received, of
        which the first ``rows.MAX_KEPT_BYTES`` are kept). Counted on its day when new."""
        from azure.core.exceptions import ResourceExistsError

        self.ensure_tables()
        self.index.before_reject(record_id, received_at)
        self.counters.mark(day_of(received_at))
        entity = rejected_entity(record_id, error, raw, received_at, channel)
        self.identities.record_addresses(record_id, REJECTED_ROW, addresses_of(entity))
        try:
            self.leads.create_entity(entity)
        except ResourceExistsError:
            self.leads.upsert_entity(entity)  # kept again, with the reason of now; counted once
        else:
            self.counters.add(day_of(received_at), {REJECTED_COUNT: 1})
        return Rejected(record_id, channel, error, received_at)

    def rejected(self, record_id: str) -> dict[str, Any] | None:
        """A rejected record (``rows.rejected_from_entity``), or None."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return rejected_from_entity(self.leads.get_entity(record_id, REJECTED_ROW))
        except ResourceNotFoundError:
            return None

    def _count_duplicate(self, lead_id: str, seen_at: datetime) -> bool:
        """Count a repeat on the lead; False (nothing counted) if its personal data was erased."""

        def counted(entity: Mapping[str, Any] | None) -> dict[str, Any] | None:
            # A lead row is never deleted (erasure marks it), and the content row names a lead only
            # once it is stored: no row is as good as erased.
            if entity is None or entity.get("ErasedAt") is not None:
                return None
            return {"Duplicates": int(entity.get("Duplicates") or 0) + 1, "LastDuplicateAt": seen_at}

        try:
            return (
                change_row(self.leads, lead_id, LEAD_ROW, counted, tries=5, select=["Duplicates", "ErasedAt"])
                is not None
            )
        except RowKeptChanging:
            return True  # a repeat all the same: only its count is short

    # --- reading --------------------------------------------------------------------------------

    def get(self, lead_id: str) -> Lead | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(lead_id, LEAD_ROW)
        except ResourceNotFoundError:
            return None
        return lead_from_entity(entity)

    def get_for_delivery(self, lead_id: str) -> tuple[Lead | None, bool]:
        """A lead and whether its personal data was erased (``forget``, retention), in one read."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(lead_id, LEAD_ROW)
        except ResourceNotFoundError:
            return None, False
        return lead_from_entity(entity), entity.get("ErasedAt") is not None

    def same_content(self, lead_id: str) -> int:
        """How many leads were made from this HTTP lead's content (2 and more: it arrived again
        after the dedupe window, or it names no one and so was never taken for a repeat)."""
        lead = self.get(lead_id)
        if lead is None or lead.channel != "http":
            return 0
        content = self._content(http_lead_id(lead))
        return content.leads if content else 1

    def duplicates(self, lead_id: str) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(lead_id, LEAD_ROW, select=["Duplicates"])
        except ResourceNotFoundError:
            return 0
        return int(entity.get("Duplicates") or 0)

    def list(self, limit: int | None = 50) -> list[Lead]:
        """Leads (not rejected records), newest first."""
        leads = (item.record for item in self.newest(page=min(limit or 1000, 1000)) if isinstance(item.record, Lead))
        return list(islice(leads, limit))

    def newest(
        self, since: datetime | None = None, until: datetime | None = None, after: str | None = None, page: int = 50
    ) -> Iterator[Listed]:
        """Leads and rejected records received in [``since``, ``until``), newest first, after the
        cursor ``after``, read from the time index a page at a time (memory stays one page)."""
        from concurrent.futures import ThreadPoolExecutor

        entries = self.index.newest(since, until, after, page)
        with ThreadPoolExecutor(8) as pool:
            while chunk := list(islice(entries, page)):
                for entry, record in zip(chunk, pool.map(self._record, chunk), strict=True):
                    if record is not None:
                        yield Listed(record, entry.row_key)

    def _record(self, entry: Entry) -> Lead | dict[str, Any] | None:
        """What an entry of the time index points at, or None for an entry left over (its write
        failed, or its lead was a duplicate stored under an earlier time)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(entry.lead_id, REJECTED_ROW if entry.rejected else LEAD_ROW)
        except ResourceNotFoundError:
            return None
        if entry.row_key != cursor_of(entry.lead_id, entity["ReceivedAt"]):
            return None
        if entry.rejected:
            return {**rejected_from_entity(entity), "rejected": True}
        return lead_from_entity(entity)


def _attempt(writes: Mapping[str, Callable[[], object]]) -> dict[str, str]:
    """Run each of ``writes`` (rows a lead can be stored without); those that failed, with the
    error's kind."""
    from azure.core.exceptions import AzureError

    missed = {}
    for name, write in writes.items():
        try:
            write()
        except AzureError as exc:
            missed[name] = type(exc).__name__
    return missed


@lru_cache(maxsize=8)
def _store(connection: str, prefix: str) -> LeadStore:
    # One client per process and account: its connection pool is reused across invocations.
    return LeadStore(table_service(connection), prefix)
