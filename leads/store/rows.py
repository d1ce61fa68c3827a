"""The rows of the lead store: their keys, and how a lead, a rejected record, a content count and a
delivery become table entities and back. No storage calls here.

One partition per lead (``PartitionKey`` = lead id): the lead is the row ``lead`` and each
delivery it owes the row ``delivery|<destination>``. A refused body or an unusable marketplace row
is the row ``rejected`` of its own partition; an HTTP content's count is the row ``content`` of the
partition named by its digest. A table string holds 64 KiB (32K UTF-16 units) and a binary 64 KiB,
so long text and bodies are split over numbered properties (``Lead``, ``Lead1``, ...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from leads.core.model import Lead, Route

LEAD_ROW = "lead"
REJECTED_ROW = "rejected"
CONTENT_ROW = "content"
DELIVERY_ROW = "delivery|"

# The most of a refused body a rejected record keeps: an entity holds 1 MiB, a binary property
# 64 KiB. Bodies up to the 64 KiB limit (every 400) are kept whole, larger ones (413) up to this.
MAX_KEPT_BYTES = 512 * 1024
_BINARY_CHUNK = 64 * 1024
_MAX_BODY_CHUNKS = -(-MAX_KEPT_BYTES // _BINARY_CHUNK)
_CHUNK = 30_000  # UTF-16 code units of one text property
_MAX_CHUNKS = 16
# The lead row's look-up columns (source, action, offer), for a query in Storage Explorer: the
# whole values are in the lead's JSON, and a column of any length would make the row unstorable.
_COLUMN = 1_000


# --- leads and rejected records ------------------------------------------------------------------


def lead_entity(lead: Lead) -> dict[str, Any]:
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
    entity.update(split_text("Lead", json.dumps(body, ensure_ascii=False)))
    entity.update(split_text("Raw", json.dumps(raw, ensure_ascii=False, default=str)))
    return entity


def lead_from_entity(entity: Mapping[str, Any]) -> Lead:
    body = json.loads(join_text("Lead", entity))
    body["raw"] = json.loads(join_text("Raw", entity))
    return Lead.model_validate(body)


def rejected_entity(
    record_id: str, error: str, raw: dict[str, Any] | bytes, received_at: datetime, channel: str
) -> dict[str, Any]:
    """A rejected record: a marketplace row (``raw``: its properties) or a refused body (the bytes,
    of which the first :data:`MAX_KEPT_BYTES` are kept)."""
    entity = {
        "PartitionKey": record_id,
        "RowKey": REJECTED_ROW,
        "ReceivedAt": received_at,
        "Error": error,
        "Channel": channel,
    }
    if isinstance(raw, bytes):
        kept = raw[:MAX_KEPT_BYTES]
        entity.update({"Size": len(raw), "Truncated": len(kept) < len(raw)})
        entity.update(
            {
                f"Body{index}": kept[start : start + _BINARY_CHUNK]
                for index, start in enumerate(range(0, len(kept), _BINARY_CHUNK))
            }
        )
    else:
        entity.update(split_text("Raw", json.dumps(raw, ensure_ascii=False, default=str)))
    return entity


def rejected_from_entity(entity: Mapping[str, Any]) -> dict[str, Any]:
    """A rejected record as ``show`` gives it: channel, time, reason, and the raw row (``raw``) or
    the body as received (``body``, bytes, with its ``size`` and whether it was ``truncated``)."""
    record = {
        "leadId": entity["PartitionKey"],
        "channel": entity.get("Channel") or "table",
        "receivedAt": entity["ReceivedAt"].isoformat(),
        "error": entity["Error"],
    }
    if "Size" in entity:
        return {**record, "body": refused_body(entity), "size": entity["Size"], "truncated": entity["Truncated"]}
    return {**record, "raw": json.loads(join_text("Raw", entity))}


def refused_body(entity: Mapping[str, Any]) -> bytes:
    """The bytes a rejected record kept of a refused body."""
    return b"".join(entity[f"Body{index}"] for index in range(_MAX_BODY_CHUNKS) if f"Body{index}" in entity)


def split_text(name: str, text: str) -> dict[str, str]:
    """``text`` over the properties ``name``, ``name1``, ... each within a table string's limit."""
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


def join_text(name: str, entity: Mapping[str, Any]) -> str:
    parts = [entity[name]]
    for index in range(1, _MAX_CHUNKS):
        part = entity.get(f"{name}{index}")
        if part is None:
            break
        parts.append(part)
    return "".join(parts)


# --- content counts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    """The row of one normalised HTTP content: how many leads it made, and the latest one."""

    digest: str
    leads: int
    latest_id: str
    latest_at: datetime
    etag: str | None = None


def content_entity(content: Content) -> dict[str, Any]:
    return {
        "PartitionKey": content.digest,
        "RowKey": CONTENT_ROW,
        "Leads": content.leads,
        "LatestLeadId": content.latest_id,
        "LatestAt": content.latest_at,
    }


def content_from_entity(entity: Mapping[str, Any]) -> Content:
    return Content(
        entity["PartitionKey"],
        int(entity["Leads"]),
        entity["LatestLeadId"],
        entity["LatestAt"],
        entity.metadata["etag"],
    )


# --- deliveries ----------------------------------------------------------------------------------

STATES = ("pending", "sending", "delivered", "retrying", "failed", "skipped")
FINAL = frozenset({"delivered", "failed", "skipped"})
OPEN = frozenset({"pending", "sending", "retrying"})
# The reason a delivery held back by LEADS_BACKFILL_DAYS is stored skipped with (routing.hold_backfill).
BACKFILL_REASON = "older than LEADS_BACKFILL_DAYS"
# ... and one imported from a row without a created date (routing.hold_undated): held the same way.
UNDATED_REASON = "imported from a row without a created date"


@dataclass(frozen=True)
class Delivery:
    lead_id: str
    destination: str
    state: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    external_id: str | None = None
    recipients: tuple[str, ...] = ()
    test: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    retry_from: datetime | None = None
    next_attempt_at: datetime | None = None
    claimed_until: datetime | None = None
    waiting_for: str | None = None
    digest: str | None = None  # the durable digest it was folded into (leads/delivery/digests.py)
    day: str | None = None  # the day its lead was received (YYYY-MM-DD), which counts it
    mapping: str = ""  # the field mapping its routing rule picked (a row without one: the default)
    etag: str | None = None

    @property
    def route(self) -> Route:
        generation = self.retry_from.isoformat() if self.retry_from and self.retry_from != self.created_at else ""
        return Route(recipients=self.recipients, test=self.test, generation=generation, mapping=self.mapping)

    @property
    def held(self) -> bool:
        """Stored skipped by the backfill limit (or undated): ``replay`` delivers it."""
        return self.state == "skipped" and (self.last_error or "").startswith((BACKFILL_REASON, UNDATED_REASON))

    @property
    def lead_day(self) -> str:
        """The day the delivery is counted under: its lead's (rows of an earlier version: its own)."""
        return self.day or day_of(self.created_at or datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        """The operator's view (``show --json``, ``status --json``)."""
        return {
            "destination": self.destination,
            "state": self.state,
            "attempts": self.attempts,
            "lastError": self.last_error,
            "externalId": self.external_id,
            "createdAt": _iso(self.created_at),
            "updatedAt": _iso(self.updated_at),
            "nextAttemptAt": _iso(self.next_attempt_at) if self.state == "retrying" else None,
        }


def delivery_entity(delivery: Delivery) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": delivery.lead_id,
        "RowKey": DELIVERY_ROW + delivery.destination,
        "Destination": delivery.destination,
        "State": delivery.state,
        "Attempts": delivery.attempts,
        "Recipients": ";".join(delivery.recipients),
        "Test": delivery.test,
    }
    optional = {
        "LastError": delivery.last_error,
        "ExternalId": delivery.external_id,
        "CreatedAt": delivery.created_at,
        "UpdatedAt": delivery.updated_at,
        "RetryFrom": delivery.retry_from,
        "NextAttemptAt": delivery.next_attempt_at,
        "ClaimedUntil": delivery.claimed_until,
        "WaitingFor": delivery.waiting_for,
        "Digest": delivery.digest,
        "Day": delivery.day,
        "Mapping": delivery.mapping or None,
    }
    entity.update({key: value for key, value in optional.items() if value is not None})
    return entity


def delivery_from_entity(entity: Mapping[str, Any]) -> Delivery:
    return Delivery(
        lead_id=entity["PartitionKey"],
        destination=entity["Destination"],
        state=entity["State"],
        attempts=int(entity.get("Attempts") or 0),
        last_error=entity.get("LastError"),
        external_id=entity.get("ExternalId"),
        recipients=tuple(r for r in (entity.get("Recipients") or "").split(";") if r),
        test=bool(entity.get("Test")),
        created_at=utc(entity.get("CreatedAt")),
        updated_at=utc(entity.get("UpdatedAt")),
        retry_from=utc(entity.get("RetryFrom")),
        next_attempt_at=utc(entity.get("NextAttemptAt")),
        claimed_until=utc(entity.get("ClaimedUntil")),
        waiting_for=entity.get("WaitingFor"),
        digest=entity.get("Digest"),
        day=entity.get("Day"),
        mapping=entity.get("Mapping") or "",
        etag=getattr(entity, "metadata", {}).get("etag"),
    )


def is_delivery_row(row_key: str) -> bool:
    return row_key.startswith(DELIVERY_ROW)


def day_of(moment: datetime) -> str:
    """The UTC day of ``moment`` (naive: UTC), as partitions and counters name days."""
    return f"{utc(moment).astimezone(UTC):%Y-%m-%d}"


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
