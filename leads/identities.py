"""Who a lead is about, findable without reading history: a small row per identity of a lead.

A lead is identified by its email, or by first and last name with company, together with its
offer (the same person asking about two offers is two leads). Each stored lead that carries such
an identity gets a row in the app's ``<prefix>Identities`` table, in the partition of the day it
arrived:

    PartitionKey ``<received day, YYYY-MM-DD>``, RowKey ``<sha256 of "email|offer">|<lead id>``

so "was a lead from this person about this offer received within a day of then?" is one query over
three day partitions, each a range seek on the digest, whatever the store holds; and a lead's rows
are written in one transaction. ``python -m leads import`` asks it, to tell a lead the marketplace
did deliver from one it lost.

The rows hold no personal data in clear, but a digest of an email is still personal data:
erasing a person erases these rows too. A row is written before its lead, so it can point at a
lead that was never stored (a crash between the two): :meth:`IdentityIndex.find` checks that
the lead exists.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from .model import Lead

MATCH_WINDOW = timedelta(days=1)


def identity_keys(lead: Lead) -> list[str]:
    """The identities of a lead: by email, and by name with company, each with the offer's id and
    with its title (a Partner Center download may name the offer by either); none when neither
    person is known (the marketplace withheld them), since such leads cannot be told apart."""
    people = []
    if lead.email:
        people.append(f"email|{lead.email.casefold()}")
    if lead.first_name and lead.last_name and lead.company:
        people.append("name|" + "|".join(part.casefold() for part in (lead.first_name, lead.last_name, lead.company)))
    offers = list(dict.fromkeys(offer.casefold() for offer in (lead.offer_id, lead.offer_title) if offer)) or [""]
    return [hashlib.sha256(f"{person}|{offer}".encode()).hexdigest()[:32] for person in people for offer in offers]


class IdentityIndex:
    def __init__(self, table: TableClient, leads: TableClient) -> None:
        self.table = table
        self.leads = leads

    def record(self, lead: Lead) -> None:
        """Index a lead under its identities, in one write (upserts: recording it again changes nothing)."""
        rows = [{"PartitionKey": _day(lead.received_at), "RowKey": f"{key}|{lead.lead_id}",
                 "LeadId": lead.lead_id, "ReceivedAt": lead.received_at} for key in identity_keys(lead)]  # fmt: skip
        if len(rows) == 1:
            self.table.upsert_entity(rows[0])
        elif rows:
            self.table.submit_transaction([("upsert", row) for row in rows])

    def find(self, lead: Lead, window: timedelta = MATCH_WINDOW) -> str | None:
        """The id of a stored lead with one of ``lead``'s identities that arrived within
        ``window`` of it, or None."""
        keys = identity_keys(lead)
        if not keys:
            return None
        low, high = lead.received_at - window, lead.received_at + window
        # The SDK substitutes @names only between spaces, hence the spaces inside the parentheses.
        ranges = " or ".join(f"( RowKey ge @k{i} and RowKey lt @e{i} )" for i in range(len(keys)))
        query = f"PartitionKey ge @low and PartitionKey le @high and ( {ranges} )"
        parameters = {"low": _day(low), "high": _day(high)}
        for index, key in enumerate(keys):
            parameters.update({f"k{index}": f"{key}|", f"e{index}": f"{key}}}"})  # "}" sorts after "|"
        for entity in self.table.query_entities(query, parameters=parameters, select=["LeadId", "ReceivedAt"]):
            if entity["LeadId"] != lead.lead_id and low <= entity["ReceivedAt"] <= high and self._exists(entity["LeadId"]):
                return entity["LeadId"]
        return None

    def forget(self, lead: Lead) -> int:
        """Delete the rows of ``lead``'s identities; how many there were."""
        from azure.core.exceptions import ResourceNotFoundError

        count = 0
        for key in identity_keys(lead):
            try:
                self.table.delete_entity(_day(lead.received_at), f"{key}|{lead.lead_id}")
                count += 1
            except ResourceNotFoundError:
                pass
        return count

    def _exists(self, lead_id: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        from .store import LEAD_ROW

        try:
            self.leads.get_entity(lead_id, LEAD_ROW, select=["PartitionKey"])
        except ResourceNotFoundError:
            return False
        return True


def _day(when: datetime) -> str:
    return f"{when.astimezone(timezone.utc):%Y-%m-%d}"
