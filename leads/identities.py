"""Who a lead is about, findable without reading history: one small row per identity of a lead.

A lead is identified by its email, or by first and last name with company, together with its
offer (the same person asking about two offers is two leads). Each stored lead that carries such
an identity gets a row in the partition of a digest of it, keyed by when the lead arrived:

    PartitionKey ``identity|<sha256 of "email|offer">``, RowKey ``<received, ISO 8601>|<lead id>``

so "was a lead from this person about this offer received within a day of then?" is one query
on one partition, whatever the store holds. ``python -m leads import`` asks it, to tell a lead
the marketplace did deliver from one it lost.

The rows hold no personal data in clear, but a digest of an email is still personal data:
erasing a person erases these rows too. A row is written before its lead, so it can point at a
lead that was never stored (a crash between the two): :meth:`IdentityIndex.find` checks that
the lead exists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from .model import Lead

PARTITION_PREFIX = "identity|"
MATCH_WINDOW = timedelta(days=1)


def identity_keys(lead: Lead) -> list[str]:
    """The identities of a lead: by email, and by name with company; none when neither is known
    (the marketplace withheld them), since such leads cannot be told apart."""
    offer = (lead.offer_id or lead.offer_title or "").casefold()
    keys = []
    if lead.email:
        keys.append(f"email|{lead.email.casefold()}|{offer}")
    if lead.first_name and lead.last_name and lead.company:
        keys.append("name|" + "|".join(part.casefold() for part in (lead.first_name, lead.last_name, lead.company))
                    + f"|{offer}")  # fmt: skip
    return [PARTITION_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:32] for key in keys]


class IdentityIndex:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    def record(self, lead: Lead) -> None:
        """Index a lead under its identities (an upsert: recording it again changes nothing)."""
        for partition in identity_keys(lead):
            self.table.upsert_entity({"PartitionKey": partition, "RowKey": _row_key(lead.received_at, lead.lead_id),
                                      "LeadId": lead.lead_id})  # fmt: skip

    def find(self, lead: Lead, window: timedelta = MATCH_WINDOW) -> str | None:
        """The id of a stored lead with one of ``lead``'s identities that arrived within
        ``window`` of it, or None. The email is asked first: a name can be shared."""
        low, high = lead.received_at - window, lead.received_at + window
        for partition in identity_keys(lead):
            for lead_id in self._lead_ids(partition, low, high):
                if lead_id != lead.lead_id and self._exists(lead_id):
                    return lead_id
        return None

    def forget(self, lead: Lead) -> int:
        """Delete the rows of ``lead``'s identities; how many were deleted."""
        from azure.core.exceptions import ResourceNotFoundError

        count = 0
        for partition in identity_keys(lead):
            try:
                self.table.delete_entity(partition, _row_key(lead.received_at, lead.lead_id))
                count += 1
            except ResourceNotFoundError:
                pass
        return count

    def _lead_ids(self, partition: str, low: datetime, high: datetime) -> Iterator[str]:
        query = "PartitionKey eq @partition and RowKey ge @low and RowKey lt @high"
        parameters = {"partition": partition, "low": _row_key(low, ""), "high": _row_key(high, "~")}
        for entity in self.table.query_entities(query, parameters=parameters, select=["LeadId"]):
            yield entity["LeadId"]

    def _exists(self, lead_id: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        from .store import LEAD_ROW

        try:
            self.table.get_entity(lead_id, LEAD_ROW, select=["PartitionKey"])
        except ResourceNotFoundError:
            return False
        return True


def _row_key(when: datetime, lead_id: str) -> str:
    from datetime import timezone

    return f"{when.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S.%fZ}|{lead_id}"
