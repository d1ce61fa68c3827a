"""The durable state of each (lead, destination) delivery, and its changes.

A delivery is a row in its lead's partition of the lead store (``leads/store/rows.py``), written in the
same transaction as the lead, so a lead is never stored without the deliveries it owes. Every
change of state is a conditional (ETag) write: a worker calls a destination only after its claim
of the row succeeded, so a duplicated message or a racing worker finds the row claimed, or
finished, and does nothing.

States: ``pending`` → ``sending`` → ``delivered``; ``sending`` → ``retrying`` → ``sending`` ...;
``sending`` → ``failed`` (permanent, or retried past ``LEADS_RETRY_HOURS``); ``skipped`` (nothing
to send, e.g. no email recipients, or a lead older than ``LEADS_BACKFILL_DAYS``). ``replay`` turns
``failed``, and ``skipped`` for age, back into ``pending``. Each change keeps the index in step by
the derived-row protocol (the entry it moves into before the write, the one it leaves after) and
moves the delivery between its day's counts (``leads/store/counts.py``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from leads.core.model import Route
from leads.store.counts import changes_of
from leads.store.rows import DELIVERY_ROW, Delivery, day_of, delivery_entity, delivery_from_entity

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from leads.store.counts import DayCounters
    from leads.store.index import LeadIndex


def initial_state(route: Route) -> str:
    """``skipped`` for a delivery with nothing to send (an email with no one to mail, a card with
    no channel: ``route.unaddressed``, from the destination's class) or held by routing
    (``route.skip_reason``), else ``pending``. The store knows no destination: routing says."""
    addressed_to_no_one = bool(route.unaddressed) and not route.recipients
    return "skipped" if route.skip_reason or addressed_to_no_one else "pending"


def new_delivery(
    lead_id: str, destination: str, route: Route, now: datetime, received_at: datetime | None = None
) -> Delivery:
    """A delivery owed by a lead received at ``received_at`` (its day counts it), as stored beside it."""
    state = initial_state(route)
    error = (route.skip_reason or route.unaddressed) if state == "skipped" else None
    return Delivery(
        lead_id,
        destination,
        state=state,
        last_error=error,
        recipients=route.recipients,
        test=route.test,
        created_at=now,
        updated_at=now,
        retry_from=now,
        day=day_of(received_at or now),
        mapping=route.mapping,
    )


def new_delivery_entity(
    lead_id: str, destination: str, route: Route, now: datetime, received_at: datetime | None = None
) -> dict[str, Any]:
    """The row of :func:`new_delivery`."""
    return delivery_entity(new_delivery(lead_id, destination, route, now, received_at))


class DeliveryBook:
    """Reads and conditionally changes delivery rows in the lead store's table."""

    def __init__(self, table: TableClient, index: LeadIndex, counters: DayCounters) -> None:
        self.table = table
        self.index = index
        self.counters = counters

    def get(self, lead_id: str, destination: str) -> Delivery | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return delivery_from_entity(self.table.get_entity(lead_id, DELIVERY_ROW + destination))
        except ResourceNotFoundError:
            return None

    def for_lead(self, lead_id: str) -> list[Delivery]:
        query = "PartitionKey eq @lead and RowKey ge @low and RowKey lt @high"
        entities = self.table.query_entities(query, parameters={"lead": lead_id, **_ROW_RANGE})
        return sorted((delivery_from_entity(entity) for entity in entities), key=lambda d: d.destination)

    def change(self, delivery: Delivery, **changes: Any) -> Delivery | None:
        """Write ``changes`` if the row is still as ``delivery`` read it; None if it moved on."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        updated = replace(delivery, **changes, updated_at=changes.get("updated_at") or _now())
        counted = changes_of(delivery, updated)
        if counted:
            self.counters.mark(updated.lead_day)
        self.index.before_change(delivery, updated)
        try:
            metadata = self.table.update_entity(
                delivery_entity(updated),
                mode=UpdateMode.REPLACE,
                etag=delivery.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        self.index.after_change(delivery, updated)
        self.counters.add(updated.lead_day, counted)
        return replace(updated, etag=metadata["etag"])


_ROW_RANGE = {"low": DELIVERY_ROW, "high": DELIVERY_ROW[:-1] + chr(ord(DELIVERY_ROW[-1]) + 1)}


def _now() -> datetime:
    return datetime.now(UTC)


def backoff(attempt: int, base: float = 30.0, cap: float = 3600.0) -> timedelta:
    """Exponential backoff with full jitter between half and the whole step."""
    import random

    step = min(cap, base * 2 ** max(0, attempt - 1))
    return timedelta(seconds=step * random.uniform(0.5, 1.0))
