"""The lead store: every lead, normalised and as received, in the app's own Azure Table.

One partition per lead (``PartitionKey`` = lead id): the lead itself is the row ``lead``, and what
happens to it later (deliveries) lives beside it, so one partition query shows a lead's whole
story. A lead is written with an insert that fails if the row exists: that single atomic write is
both the durable store and the duplicate check.

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

import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import islice
from typing import TYPE_CHECKING, Any

from .deliveries import DeliveryBook, new_delivery_entity
from .destinations.base import Route
from .identities import IdentityIndex, addresses_of
from .index import Entry, LeadIndex
from .model import Lead
from .normalise import http_lead_id, identifies_person
from .settings import Settings, get_settings
from .storage import RowKeptChanging, change_row, table_service

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient

log = logging.getLogger(__name__)

LEAD_ROW = "lead"
REJECTED_ROW = "rejected"
CONTENT_ROW = "content"
# The most of a refused body a rejected record keeps: an entity holds 1 MiB, a binary property
# 64 KiB. Bodies up to the 64 KiB limit (every 400) are kept whole, larger ones (413) up to this.
MAX_KEPT_BYTES = 512 * 1024
_BINARY_CHUNK = 64 * 1024
# A table string property holds at most 64 KiB (32K UTF-16 code units); longer text is split
# into chunks of at most this many code units.
_CHUNK = 30_000
_MAX_CHUNKS = 16
_MAX_BODY_CHUNKS = -(-MAX_KEPT_BYTES // _BINARY_CHUNK)
# The lead row's look-up columns (source, action, offer), for a query in Storage Explorer, hold at
# most this many characters: the values whole are in the lead's JSON, and a column of any length
# would make the row unstorable (a marketplace value is a few dozen characters; a body is 64 KiB).
_COLUMN = 1_000
# The rows written before a lead that it can be stored without, and what their absence means.
_IDENTITY_ROWS, _TIMELINE_ENTRY = "identity and email rows", "timeline entry"
_REPAIRABLE = {
    _IDENTITY_ROWS: "import does not match it, and forget --email reads every row until python -m leads reindex "
                    "has written them",
    _TIMELINE_ENTRY: "list does not show it (show does) until python -m leads reindex --again writes it",
}  # fmt: skip


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


@dataclass(frozen=True)
class _Content:
    """The row of one normalised HTTP content: how many leads it made, and the latest one."""

    digest: str
    leads: int
    latest_id: str
    latest_at: datetime
    etag: str | None = None


class LeadStore:
    def __init__(self, service: TableServiceClient, prefix: str = "Leads") -> None:
        self.service = service
        self.leads: TableClient = service.get_table_client(prefix)
        self.checkpoints: TableClient = service.get_table_client(f"{prefix}Checkpoints")
        self.index = LeadIndex(*(service.get_table_client(prefix + name)
                                 for name in ("Index", "Timeline", "Counts", "Held")))  # fmt: skip
        self.deliveries = DeliveryBook(self.leads, self.index)
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
        for table in (self.leads, self.checkpoints, self.identities.table, *self.index.tables):
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

    def add(self, lead: Lead, deliveries: Mapping[str, Route] | None = None,
            beside: Sequence[dict[str, Any]] = ()) -> Stored:  # fmt: skip
        """Store a lead, and the deliveries it owes (and ``beside`` it, other new rows of its
        partition), in one atomic write, unless a lead with its id exists. Table leads have ids
        from their row, so a row read twice is stored once.

        Before that write, what points at the lead: the open deliveries' index entries, without
        which it is not stored (a delivery whose queue message is lost is found by them alone), then
        the rows that can be written later (:data:`_REPAIRABLE`), written first so that a crash
        leaves no stored lead without them; one of these failing does not refuse the lead, it is
        written again once the lead is stored (:meth:`_stored`). Once the lead's write committed,
        nothing raises."""
        from azure.core.exceptions import ResourceExistsError, ServiceResponseError
        from azure.data.tables import TableTransactionError

        self.ensure_tables()
        # Tells this call's write from another's when an answer was lost and the row is found.
        write_id = uuid.uuid4().hex
        entity = {**_to_entity(lead), "WriteId": write_id}
        now = datetime.now(UTC)
        rows = [entity, *beside] + [new_delivery_entity(lead.lead_id, name, route, now)
                                    for name, route in (deliveries or {}).items()]  # fmt: skip
        owed = rows[1 + len(beside):]
        addresses = addresses_of(entity)
        self.index.before_add(owed)
        missed = self._write_repairable(lead, addresses, _REPAIRABLE)
        for attempt in range(3):
            try:
                if len(rows) == 1:
                    self.leads.create_entity(entity)
                else:
                    self.leads.submit_transaction([("create", row) for row in rows])
                return self._stored(lead, addresses, owed, now, missed)
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
            existing = self._lead_row(lead.lead_id, ["WriteId", "ReceivedAt", "ErasedAt"])
            if existing is not None and existing.get("WriteId") == write_id:
                return self._stored(lead, addresses, owed, now, missed)
            self._take_back(lead, addresses, owed, existing)
            return Stored(lead.lead_id, duplicate=True, erased=bool(existing and existing.get("ErasedAt")))
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_repairable(self, lead: Lead, addresses: Sequence[str], names: Iterable[str]) -> dict[str, str]:
        """Write the rows :data:`_REPAIRABLE` names of a lead; those that failed, with the error."""
        from azure.core.exceptions import AzureError

        writes = {_IDENTITY_ROWS: lambda: self.identities.record(lead, addresses),
                  _TIMELINE_ENTRY: lambda: self.index.add_to_timeline(lead.lead_id, lead.received_at)}  # fmt: skip
        missed = {}
        for name in names:
            try:
                writes[name]()
            except AzureError as exc:
                missed[name] = type(exc).__name__
        return missed

    def _stored(self, lead: Lead, addresses: Sequence[str], owed: Sequence[Mapping[str, Any]], now: datetime,
                missed: Mapping[str, str]) -> Stored:  # fmt: skip
        """The lead is stored: write again what failed before it, count what it owes nothing;
        a failure is logged (the lead's id, never its content), never raised."""
        from azure.core.exceptions import AzureError

        for name, error in self._write_repairable(lead, addresses, missed).items():
            log.warning("lead %s stored without its %s (%s): %s", lead.lead_id, name, error, _REPAIRABLE[name])
            if name == _IDENTITY_ROWS:
                try:
                    self.identities.mark_incomplete()
                except AzureError as exc:
                    log.error("the email index could not be marked incomplete (%s): run python -m leads reindex "
                              "--again before the next forget --email", type(exc).__name__)  # fmt: skip
        self.index.after_add(owed, now)
        return Stored(lead.lead_id, duplicate=False)

    def _take_back(self, lead: Lead, addresses: Sequence[str], owed: Sequence[Mapping[str, Any]],
                   existing: Mapping[str, Any] | None) -> None:  # fmt: skip
        """Take back what was written before the insert for a lead stored already (the stored
        lead's row ``existing``, or None when another row of the write was there): its index
        entries, and the identity and email rows that are not the stored lead's own."""
        from azure.core.exceptions import AzureError

        stored_at = existing.get("ReceivedAt") if existing is not None else None
        self.index.after_duplicate(lead.lead_id, lead.received_at, owed, stored_at)
        try:
            self.identities.take_back(lead, addresses, stored_at, erased=bool(existing and existing.get("ErasedAt")))
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

    def add_http(self, lead: Lead, dedupe_window: timedelta,
                 deliveries: Mapping[str, Route] | None = None) -> Stored:  # fmt: skip
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
            self._after_stored(stored.lead_id, "not counted on its content (show's count of its content's leads is "
                               "one short)", self._count_content, digest, stored.lead_id, lead.received_at)  # fmt: skip
            return stored
        # Most content arrives once: write its first lead and its content row together, and look
        # further only if that lead is there already.
        first = _content_entity(_Content(digest, 1, digest, lead.received_at))
        stored = self.add(lead.model_copy(update={"lead_id": digest}), deliveries, beside=[first])
        if not stored.duplicate:
            return stored
        # No content row beside it: the version before stored it, its lead was erased (the row goes
        # with it), or one arrival got that far.
        content = self._content(digest) or self._carry_forward(lead, digest)
        while lead.received_at - content.latest_at >= dedupe_window:
            candidate = lead.model_copy(update={"lead_id": http_lead_id(lead, content.leads)})
            stored = self.add(candidate, deliveries)
            made = replace(content, leads=content.leads + 1, latest_id=candidate.lead_id,
                           latest_at=lead.received_at)  # fmt: skip
            if not stored.duplicate:
                self._after_stored(stored.lead_id, "its content's row not moved on to it (the next arrival of the "
                                   "content does that)", self._advance, made)  # fmt: skip
                return stored
            # Already there: a racing arrival made it, or one that died before moving the row on.
            made_at = self._received_at(candidate.lead_id) or lead.received_at
            content = self._advance(replace(made, latest_at=made_at))
        # A repeat of an erased lead is not taken in: the erasure stands (leads/tombstones.py).
        return Stored(content.latest_id, duplicate=True,
                      erased=not self._count_duplicate(content.latest_id, lead.received_at))

    def _content(self, digest: str) -> _Content | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(digest, CONTENT_ROW)
        except ResourceNotFoundError:
            return None
        return _Content(digest, int(entity["Leads"]), entity["LatestLeadId"], entity["LatestAt"],
                        entity.metadata["etag"])  # fmt: skip

    def _advance(self, content: _Content) -> _Content:
        """Record ``content`` unless the stored row is as far on already; the row as it now is.
        Never raises for a race: the next arrival finds the lead made and moves the row on."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        for _ in range(5):
            entity = _content_entity(content)
            try:
                if content.etag is None:
                    metadata = self.leads.create_entity(entity)
                else:
                    metadata = self.leads.update_entity(entity, mode=UpdateMode.REPLACE, etag=content.etag,
                                                        match_condition=MatchConditions.IfNotModified)  # fmt: skip
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
            counted = _Content(digest, (current.leads if current else 0) + 1, lead_id, received_at,
                               current.etag if current else None)  # fmt: skip
            if self._advance(counted).latest_id == lead_id:
                return
            current = self._content(digest)

    def _carry_forward(self, lead: Lead, digest: str) -> _Content:
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
        return self._advance(_Content(digest, low + 1, http_lead_id(lead, low), latest_at))

    def _received_at(self, lead_id: str) -> datetime | None:
        row = self._lead_row(lead_id, ["ReceivedAt"])
        return row["ReceivedAt"] if row is not None else None

    def reject(self, record_id: str, error: str, raw: dict[str, Any] | bytes, received_at: datetime,
               channel: str = "table") -> Rejected:  # fmt: skip
        """Keep what came in but holds no usable lead, with the reason, so that nothing the
        marketplace sent disappears unseen (``show`` finds it by its id): a marketplace row
        (``raw``: its properties) or a refused HTTP body (``raw``: the bytes as received, of
        which the first :data:`MAX_KEPT_BYTES` are kept)."""
        self.ensure_tables()
        self.index.before_reject(record_id, received_at)
        entity = {"PartitionKey": record_id, "RowKey": REJECTED_ROW, "ReceivedAt": received_at, "Error": error,
                  "Channel": channel}  # fmt: skip
        if isinstance(raw, bytes):
            kept = raw[:MAX_KEPT_BYTES]
            entity.update({"Size": len(raw), "Truncated": len(kept) < len(raw)})
            entity.update({f"Body{index}": kept[start:start + _BINARY_CHUNK]
                           for index, start in enumerate(range(0, len(kept), _BINARY_CHUNK))})  # fmt: skip
        else:
            entity.update(_split("Raw", json.dumps(raw, ensure_ascii=False, default=str)))
        self.identities.record_addresses(record_id, REJECTED_ROW, addresses_of(entity))
        self.leads.upsert_entity(entity)
        return Rejected(record_id, channel, error, received_at)

    def rejected(self, record_id: str) -> dict[str, Any] | None:
        """A rejected record: its channel, time and reason, and the raw row (``raw``) or the
        body as received (``body``, bytes, with its ``size`` and whether it was ``truncated``)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(record_id, REJECTED_ROW)
        except ResourceNotFoundError:
            return None
        record = {"leadId": record_id, "channel": entity.get("Channel") or "table",
                  "receivedAt": entity["ReceivedAt"].isoformat(), "error": entity["Error"]}  # fmt: skip
        if "Size" in entity:
            body = b"".join(entity[f"Body{index}"] for index in range(_MAX_BODY_CHUNKS) if f"Body{index}" in entity)
            return {**record, "body": body, "size": entity["Size"], "truncated": entity["Truncated"]}
        return {**record, "raw": json.loads(_join("Raw", entity))}

    def _count_duplicate(self, lead_id: str, seen_at: datetime) -> bool:
        """Count a repeat on the lead; False (nothing counted) if its personal data was erased."""

        def counted(entity: Mapping[str, Any] | None) -> dict[str, Any] | None:
            # A lead row is never deleted (erasure marks it), and the content row names a lead only
            # once it is stored: no row is as good as erased.
            if entity is None or entity.get("ErasedAt") is not None:
                return None
            return {"Duplicates": int(entity.get("Duplicates") or 0) + 1, "LastDuplicateAt": seen_at}

        try:
            return change_row(self.leads, lead_id, LEAD_ROW, counted, tries=5,
                              select=["Duplicates", "ErasedAt"]) is not None  # fmt: skip
        except RowKeptChanging:
            return True  # a repeat all the same: only its count is short

    # --- reading --------------------------------------------------------------------------------

    def get(self, lead_id: str) -> Lead | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(lead_id, LEAD_ROW)
        except ResourceNotFoundError:
            return None
        return _from_entity(entity)

    def get_for_delivery(self, lead_id: str) -> tuple[Lead | None, bool]:
        """A lead and whether its personal data was erased (``forget``, retention), in one read."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(lead_id, LEAD_ROW)
        except ResourceNotFoundError:
            return None, False
        return _from_entity(entity), entity.get("ErasedAt") is not None

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

    def newest(self, since: datetime | None = None, until: datetime | None = None, after: str | None = None,
               page: int = 50) -> Iterator[Listed]:  # fmt: skip
        """Leads and rejected records received in [``since``, ``until``), newest first, after the
        cursor ``after``, read from the time index a page at a time (memory stays one page)."""
        from concurrent.futures import ThreadPoolExecutor

        entries = self.index.newest(since, until, after, page)
        with ThreadPoolExecutor(8) as pool:
            while chunk := list(islice(entries, page)):
                for entry, record in zip(chunk, pool.map(self._record, chunk), strict=True):
                    if record is not None:
                        yield Listed(record, self.index.cursor(entry))

    def _record(self, entry: Entry) -> Lead | dict[str, Any] | None:
        """What an entry of the time index points at, or None for an entry left over (its write
        failed, or its lead was a duplicate stored under an earlier time)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(entry.lead_id, REJECTED_ROW if entry.rejected else LEAD_ROW)
        except ResourceNotFoundError:
            return None
        if self.index.cursor(entry) != self.index.cursor_of(entry.lead_id, entity["ReceivedAt"]):
            return None
        if entry.rejected:
            return {**(self.rejected(entry.lead_id) or {}), "rejected": True}
        return _from_entity(entity)


@lru_cache(maxsize=8)
def _store(connection: str, prefix: str) -> LeadStore:
    # One client per process and account: its connection pool is reused across invocations.
    return LeadStore(table_service(connection), prefix)


# --- entity mapping ------------------------------------------------------------------------------


def _content_entity(content: _Content) -> dict[str, Any]:
    return {"PartitionKey": content.digest, "RowKey": CONTENT_ROW, "Leads": content.leads,
            "LatestLeadId": content.latest_id, "LatestAt": content.latest_at}  # fmt: skip


def _to_entity(lead: Lead) -> dict[str, Any]:
    body = lead.to_dict()
    raw = body.pop("raw")
    entity = {
        "PartitionKey": lead.lead_id,
        "RowKey": LEAD_ROW,
        "ReceivedAt": lead.received_at,
        "Channel": lead.channel,
        "Source": (lead.source or "")[:_COLUMN],
        "Action": (lead.action or "")[:_COLUMN],
        "OfferId": (lead.offer_id or "")[:_COLUMN],
        "OfferTitle": (lead.offer_title or "")[:_COLUMN],
        "IsTest": lead.is_test,
        "DoNotContact": lead.do_not_contact,
    }
    entity.update(_split("Lead", json.dumps(body, ensure_ascii=False)))
    entity.update(_split("Raw", json.dumps(raw, ensure_ascii=False, default=str)))
    return entity


def _from_entity(entity: dict[str, Any]) -> Lead:
    body = json.loads(_join("Lead", entity))
    body["raw"] = json.loads(_join("Raw", entity))
    return Lead.model_validate(body)


def _split(name: str, text: str) -> dict[str, str]:
    chunks, start = [], 0
    while start < len(text):
        end = start + _CHUNK
        # The limit is in UTF-16 code units: a character beyond the BMP (an emoji) takes two.
        while (units := len(text[start:end].encode("utf-16-le")) // 2) > _CHUNK:
            end -= units - _CHUNK
        chunks.append(text[start:end])
        start = end
    chunks = chunks or [""]
    if len(chunks) > _MAX_CHUNKS:
        raise ValueError(f"{name} is {len(text)} characters, more than a lead row can hold")
    return {name if index == 0 else f"{name}{index}": chunk for index, chunk in enumerate(chunks)}


def _join(name: str, entity: dict[str, Any]) -> str:
    parts = [entity[name]]
    for index in range(1, _MAX_CHUNKS):
        part = entity.get(f"{name}{index}")
        if part is None:
            break
        parts.append(part)
    return "".join(parts)
