"""Who a lead is about, findable without reading history: one small row per lead.

A lead is identified by its email, or by first and last name with company, together with its
offer (the same person asking about two offers is two leads). Each stored lead that carries such
an identity gets one row in the app's ``<prefix>Identities`` table, in the partition of the day it
arrived: PartitionKey ``<received day, YYYY-MM-DD>``, RowKey ``<lead id>``, ``Who`` the digests of
its identities. "Was a lead from this person about this offer received within a day of then?"
reads the three day partitions around then, whatever the store holds; :class:`Matcher` keeps the
last few days it read, so a file of leads sorted by date reads each day once.

The row costs one write per lead (a PUT, which the SDK retries safely), at intake. The rows hold
no personal data in clear, but a digest of an email is still personal data: erasing a person
erases their rows too (:meth:`IdentityIndex.forget`). A row is written before its lead, so it
can point at a lead that was never stored (a crash between the two): a match is checked to exist.
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
        """Index a lead under its identities (a replace: recording it again changes nothing)."""
        from azure.data.tables import UpdateMode

        keys = identity_keys(lead)
        if keys:
            self.table.upsert_entity({"PartitionKey": _day(lead.received_at), "RowKey": lead.lead_id,
                                      "Who": " ".join(keys), "ReceivedAt": lead.received_at},
                                     mode=UpdateMode.REPLACE)  # fmt: skip

    def matcher(self, days_kept: int = 7) -> Matcher:
        return Matcher(self, days_kept)

    def find(self, lead: Lead, window: timedelta = MATCH_WINDOW) -> str | None:
        """The id of a stored lead with one of ``lead``'s identities that arrived within
        ``window`` of it, or None."""
        return self.matcher().find(lead, window)

    def forget(self, lead: Lead) -> bool:
        """Delete the row of ``lead``'s identities; whether there was one."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.table.delete_entity(_day(lead.received_at), lead.lead_id)
        except ResourceNotFoundError:
            return False
        return True

    def day(self, day: str) -> list[tuple[frozenset[str], str, datetime]]:
        """Every row of one day: (identities, lead id, received)."""
        rows = self.table.query_entities("PartitionKey eq @day", parameters={"day": day},
                                         select=["RowKey", "Who", "ReceivedAt"])  # fmt: skip
        return [(frozenset(row["Who"].split()), row["RowKey"], row["ReceivedAt"]) for row in rows]

    def exists(self, lead_id: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        from .store import LEAD_ROW

        try:
            self.leads.get_entity(lead_id, LEAD_ROW, select=["PartitionKey"])
        except ResourceNotFoundError:
            return False
        return True


class Matcher:
    """Finds stored leads by identity for many leads in a row, keeping the rows of the last
    ``days_kept`` days it read (memory bounded by a week's leads, whatever the file's size)."""

    def __init__(self, index: IdentityIndex, days_kept: int) -> None:
        from collections import OrderedDict
        from threading import Lock

        self.index, self.days_kept = index, days_kept
        self._days: OrderedDict[str, list[tuple[frozenset[str], str, datetime]]] = OrderedDict()
        self._lock = Lock()

    def find(self, lead: Lead, window: timedelta = MATCH_WINDOW) -> str | None:
        keys = set(identity_keys(lead))
        if not keys:
            return None
        low, high = lead.received_at - window, lead.received_at + window
        day, days = low, []
        while _day(day) <= _day(high):
            days.append(_day(day))
            day += timedelta(days=1)
        for name in days:
            for who, lead_id, received in self._rows(name):
                if who & keys and lead_id != lead.lead_id and low <= received <= high and self.index.exists(lead_id):
                    return lead_id
        return None

    def _rows(self, day: str) -> list[tuple[frozenset[str], str, datetime]]:
        with self._lock:
            if day in self._days:
                self._days.move_to_end(day)
                return self._days[day]
        rows = self.index.day(day)
        with self._lock:
            self._days[day] = rows
            while len(self._days) > self.days_kept:
                self._days.popitem(last=False)
        return rows


def _day(when: datetime) -> str:
    return f"{when.astimezone(timezone.utc):%Y-%m-%d}"
