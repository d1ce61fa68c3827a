"""The durable state of each (lead, destination) delivery.

A delivery is a row in its lead's partition of the lead store (``RowKey`` ``delivery|<name>``),
written in the same transaction as the lead, so a lead is never stored without the deliveries it
owes. Every change of state is a conditional (ETag) write: a worker calls a destination only after
its claim of the row succeeded, so a duplicated message or a racing worker finds the row claimed,
or finished, and does nothing.

States: ``pending`` → ``sending`` → ``delivered``; ``sending`` → ``retrying`` → ``sending`` ...;
``sending`` → ``failed`` (permanent, or retried past ``LEADS_RETRY_HOURS``); ``skipped`` (nothing
to send, e.g. no email recipients, or a lead older than ``LEADS_BACKFILL_DAYS``). ``replay`` turns
``failed``, and ``skipped`` for age, back into ``pending``. Each change also keeps the index
(``leads/index.py``, :func:`~leads.index.kind_of`) in step: which deliveries are open, failed or held.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .destinations.base import Route

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from .index import LeadIndex

ROW_PREFIX = "delivery|"
STATES = ("pending", "sending", "delivered", "retrying", "failed", "skipped")
FINAL = frozenset({"delivered", "failed", "skipped"})
OPEN = frozenset({"pending", "sending", "retrying"})


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
    digest: str | None = None  # the durable digest it was folded into (leads/digests.py)
    mapping: str = ""  # the field mapping its routing rule picked (a row without one: the default)
    etag: str | None = None

    @property
    def route(self) -> Route:
        generation = self.retry_from.isoformat() if self.retry_from and self.retry_from != self.created_at else ""
        return Route(recipients=self.recipients, test=self.test, generation=generation, mapping=self.mapping)

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


# Why a delivery that names no one is skipped, for the destinations that must name someone.
NO_RECIPIENTS = {
    "email": "no recipients: set EMAIL_TO, or an email in the matching routing rule",
    "teams": "no Teams channel: set TEAMS_WEBHOOK_URL, or a teams channel in the matching routing rule",
    "slack": "no Slack channel: set SLACK_WEBHOOK_URL, or a slack channel in the matching routing rule",
}


def initial_state(destination: str, route: Route) -> str:
    """``skipped`` for a delivery with nothing to send (an email with no one to mail, a card with
    no channel) or held by routing (``route.skip_reason``), else ``pending``."""
    addressed_to_no_one = destination in NO_RECIPIENTS and not route.recipients
    return "skipped" if route.skip_reason or addressed_to_no_one else "pending"


def new_delivery_entity(lead_id: str, destination: str, route: Route, now: datetime) -> dict[str, Any]:
    """The row of a delivery owed, written beside its lead."""
    state = initial_state(destination, route)
    error = (route.skip_reason or NO_RECIPIENTS[destination]) if state == "skipped" else None
    return _to_entity(Delivery(lead_id, destination, state=state, last_error=error, recipients=route.recipients,
                               test=route.test, created_at=now, updated_at=now, retry_from=now,
                               mapping=route.mapping))  # fmt: skip


class DeliveryBook:
    """Reads and conditionally changes delivery rows in the lead store's table."""

    def __init__(self, table: TableClient, index: LeadIndex) -> None:
        self.table = table
        self.index = index

    def get(self, lead_id: str, destination: str) -> Delivery | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return _from_entity(self.table.get_entity(lead_id, ROW_PREFIX + destination))
        except ResourceNotFoundError:
            return None

    def for_lead(self, lead_id: str) -> list[Delivery]:
        query = "PartitionKey eq @lead and RowKey ge @low and RowKey lt @high"
        entities = self.table.query_entities(query, parameters={"lead": lead_id, **_ROW_RANGE})
        return sorted((_from_entity(entity) for entity in entities), key=lambda d: d.destination)

    def change(self, delivery: Delivery, **changes: Any) -> Delivery | None:
        """Write ``changes`` if the row is still as ``delivery`` read it; None if it moved on."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        updated = replace(delivery, **changes, updated_at=changes.get("updated_at") or _now())
        self.index.before_change(delivery, updated)
        try:
            metadata = self.table.update_entity(_to_entity(updated), mode=UpdateMode.REPLACE, etag=delivery.etag,
                                                match_condition=MatchConditions.IfNotModified)  # fmt: skip
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        self.index.after_change(delivery, updated)
        return replace(updated, etag=metadata["etag"])


_ROW_RANGE = {"low": ROW_PREFIX, "high": ROW_PREFIX[:-1] + chr(ord(ROW_PREFIX[-1]) + 1)}


def _to_entity(delivery: Delivery) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": delivery.lead_id,
        "RowKey": ROW_PREFIX + delivery.destination,
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
        "Mapping": delivery.mapping or None,
    }
    entity.update({key: value for key, value in optional.items() if value is not None})
    return entity


def _from_entity(entity: Mapping[str, Any]) -> Delivery:
    return Delivery(
        lead_id=entity["PartitionKey"],
        destination=entity["Destination"],
        state=entity["State"],
        attempts=int(entity.get("Attempts") or 0),
        last_error=entity.get("LastError"),
        external_id=entity.get("ExternalId"),
        recipients=tuple(r for r in (entity.get("Recipients") or "").split(";") if r),
        test=bool(entity.get("Test")),
        created_at=_utc(entity.get("CreatedAt")),
        updated_at=_utc(entity.get("UpdatedAt")),
        retry_from=_utc(entity.get("RetryFrom")),
        next_attempt_at=_utc(entity.get("NextAttemptAt")),
        claimed_until=_utc(entity.get("ClaimedUntil")),
        waiting_for=entity.get("WaitingFor"),
        digest=entity.get("Digest"),
        mapping=entity.get("Mapping") or "",
        etag=getattr(entity, "metadata", {}).get("etag"),
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _now() -> datetime:
    return datetime.now(UTC)


def backoff(attempt: int, base: float = 30.0, cap: float = 3600.0) -> timedelta:
    """Exponential backoff with full jitter between half and the whole step."""
    import random

    step = min(cap, base * 2 ** max(0, attempt - 1))
    return timedelta(seconds=step * random.uniform(0.5, 1.0))
