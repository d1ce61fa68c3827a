"""The lead store: every lead, normalised and as received, in the app's own Azure Table.

One partition per lead (``PartitionKey`` = lead id): the lead itself is the row ``lead``, and what
happens to it later (deliveries) lives beside it, so one partition query shows a lead's whole
story. A lead is written with an insert that fails if the row exists: that single atomic write is
both the durable store and the duplicate check.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .deliveries import DeliveryBook, new_delivery_entity
from .destinations.base import Route
from .model import Lead
from .normalise import http_lead_id
from .settings import Settings, get_settings
from .storage import table_service

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient

LEAD_ROW = "lead"
REJECTED_ROW = "rejected"
# A table string property holds at most 64 KiB (32K UTF-16 code units); longer text is split.
_CHUNK = 30_000
_MAX_CHUNKS = 16


@dataclass(frozen=True)
class Stored:
    """The outcome of storing a lead: its id (which for a duplicate is the first one's)."""

    lead_id: str
    duplicate: bool


class LeadStore:
    def __init__(self, service: TableServiceClient, prefix: str = "Leads") -> None:
        self.service = service
        self.leads: TableClient = service.get_table_client(prefix)
        self.checkpoints: TableClient = service.get_table_client(f"{prefix}Checkpoints")
        self.deliveries = DeliveryBook(self.leads)
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

        for table in (self.leads, self.checkpoints):
            try:
                table.create_table()
            except ResourceExistsError:
                pass
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

    def add(self, lead: Lead, deliveries: Mapping[str, Route] | None = None) -> Stored:
        """Store a lead, and the deliveries it owes, in one atomic write, unless a lead with its
        id exists. Table leads have ids from their row, so a row read twice is stored once."""
        from azure.core.exceptions import ResourceExistsError, ServiceResponseError
        from azure.data.tables import TableTransactionError

        self.ensure_tables()
        # Tells this call's write from another's when an answer was lost and the row is found.
        write_id = uuid.uuid4().hex
        entity = {**_to_entity(lead), "WriteId": write_id}
        now = datetime.now(timezone.utc)
        rows = [entity] + [new_delivery_entity(lead.lead_id, name, route, now) for name, route in (deliveries or {}).items()]
        for attempt in range(3):
            try:
                if len(rows) == 1:
                    self.leads.create_entity(entity)
                else:
                    self.leads.submit_transaction([("create", row) for row in rows])
                return Stored(lead.lead_id, duplicate=False)
            except ResourceExistsError:
                pass
            except TableTransactionError as exc:
                if exc.error_code != "EntityAlreadyExists":
                    raise
            except ServiceResponseError:
                # The write was sent but its answer lost (the SDK does not retry a POST): ask again.
                if attempt == 2:
                    raise
                continue
            # The row exists. If an earlier attempt of ours wrote it, this lead is new after all.
            return Stored(lead.lead_id, duplicate=not (attempt and self._written_by(lead.lead_id, write_id)))
        raise AssertionError("unreachable")  # pragma: no cover

    def _written_by(self, lead_id: str, write_id: str) -> bool:
        return self.leads.get_entity(lead_id, LEAD_ROW, select=["WriteId"]).get("WriteId") == write_id

    def add_http(self, lead: Lead, dedupe_window: timedelta,
                 deliveries: Mapping[str, Route] | None = None) -> Stored:  # fmt: skip
        """Store an HTTP lead. The same content within ``dedupe_window`` of the stored one is a
        duplicate (counted on the stored lead); after the window it is a new lead with a new id."""
        for occurrence in range(1000):
            candidate = lead if occurrence == 0 else lead.model_copy(
                update={"lead_id": http_lead_id(lead, occurrence)}
            )
            stored = self.add(candidate, deliveries)
            if not stored.duplicate:
                return stored
            first = self.leads.get_entity(candidate.lead_id, LEAD_ROW)
            if lead.received_at - first["ReceivedAt"] < dedupe_window:
                self._count_duplicate(first, lead.received_at)
                return stored
        raise RuntimeError(f"lead {lead.lead_id} has arrived 1000 times")  # pragma: no cover

    def reject(self, lead_id: str, error: str, raw: dict[str, Any], received_at: datetime) -> None:
        """Keep a marketplace row that holds no usable lead, with the reason, so that nothing
        the marketplace wrote disappears unseen (``show`` finds it by its id)."""
        self.ensure_tables()
        entity = {"PartitionKey": lead_id, "RowKey": REJECTED_ROW, "ReceivedAt": received_at, "Error": error}
        entity.update(_split("Raw", json.dumps(raw, ensure_ascii=False, default=str)))
        self.leads.upsert_entity(entity)

    def rejected(self, lead_id: str) -> dict[str, Any] | None:
        """The reason and raw row of a rejected marketplace row, or None."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(lead_id, REJECTED_ROW)
        except ResourceNotFoundError:
            return None
        return {"leadId": lead_id, "receivedAt": entity["ReceivedAt"].isoformat(),
                "error": entity["Error"], "raw": json.loads(_join("Raw", entity))}  # fmt: skip

    def _count_duplicate(self, entity: dict[str, Any], seen_at: datetime) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError
        from azure.data.tables import UpdateMode

        for _ in range(5):
            patch = {
                "PartitionKey": entity["PartitionKey"],
                "RowKey": entity["RowKey"],
                "Duplicates": int(entity.get("Duplicates") or 0) + 1,
                "LastDuplicateAt": seen_at,
            }
            try:
                self.leads.update_entity(patch, mode=UpdateMode.MERGE, etag=entity.metadata["etag"],
                                         match_condition=MatchConditions.IfNotModified)  # fmt: skip
                return
            except ResourceModifiedError:
                entity = self.leads.get_entity(entity["PartitionKey"], entity["RowKey"])

    # --- reading --------------------------------------------------------------------------------

    def get(self, lead_id: str) -> Lead | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(lead_id, LEAD_ROW)
        except ResourceNotFoundError:
            return None
        return _from_entity(entity)

    def duplicates(self, lead_id: str) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.leads.get_entity(lead_id, LEAD_ROW, select=["Duplicates"])
        except ResourceNotFoundError:
            return 0
        return int(entity.get("Duplicates") or 0)

    def list(self, limit: int | None = 50) -> list[Lead]:
        """Leads, newest first."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entities = list(self.leads.query_entities(f"RowKey eq '{LEAD_ROW}'"))
        except ResourceNotFoundError:
            return []
        entities.sort(key=lambda entity: entity["ReceivedAt"], reverse=True)
        return [_from_entity(entity) for entity in entities[:limit]]


@lru_cache(maxsize=8)
def _store(connection: str, prefix: str) -> LeadStore:
    # One client per process and account: its connection pool is reused across invocations.
    return LeadStore(table_service(connection), prefix)


# --- entity mapping ------------------------------------------------------------------------------


def _to_entity(lead: Lead) -> dict[str, Any]:
    body = lead.to_dict()
    raw = body.pop("raw")
    entity = {
        "PartitionKey": lead.lead_id,
        "RowKey": LEAD_ROW,
        "ReceivedAt": lead.received_at,
        "Channel": lead.channel,
        "Source": lead.source or "",
        "Action": lead.action or "",
        "OfferId": lead.offer_id or "",
        "OfferTitle": lead.offer_title or "",
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
    chunks = [text[start:start + _CHUNK] for start in range(0, len(text), _CHUNK)] or [""]
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
