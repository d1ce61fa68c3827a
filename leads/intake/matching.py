"""How ``import`` decides what a row of a file is: a lead already received, an erased lead, or new.

A row matches a stored lead (or an erased lead's tombstone, :mod:`leads.store.tombstones`) that has one
of its identities (:func:`leads.store.identities.identity_texts`: the same email and offer, or the same
first and last name, company and offer) and arrived within a day of the row's created date. A
match by name counts only when one of the two names no email: **two leads naming different emails
are two people**, whatever their names (Wei Zhang, wei.zhang@microsoft.com, and Wei Zhang,
wzhang2@microsoft.com, of the same company, offer and day are two leads). Of several matches the
nearest in time wins; a stored lead's row is read to check that it is there (an identity row is
written before its lead, so a crash can leave one naming nothing), and a tombstone is final.

A row **without a date** (a JSON body as the marketplace POSTs it, a Partner Center file whose date
column the import was not told of) is matched over the whole window a Partner Center download can
cover (:data:`UNDATED_WINDOW`: it keeps six months), read once per run and kept in memory (the
identity rows and tombstones of those days: a few hundred bytes a lead).

Digests are looked up in both forms (:mod:`leads.core.pseudonyms`): keyed, and plain as rows of
versions before ``LEADS_ID_KEY`` hold them; a row of an earlier version does not say whether its
lead named an email, so a match by name on such a row reads the lead to tell.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from threading import Lock
from typing import TYPE_CHECKING

from leads.store.identities import identity_key_forms, identity_keys, identity_texts
from leads.store.rows import day_of as _day
from leads.store.tombstones import buried

if TYPE_CHECKING:
    from leads.core.model import Lead
    from leads.store.lead_store import LeadStore

MATCH_WINDOW = timedelta(days=1)
# Partner Center's Leads page keeps the last six months: a row without a date can be any of them.
UNDATED_WINDOW = timedelta(days=184)
_SELECT = ["RowKey", "Who", "HasEmail", "ReceivedAt"]


@dataclass(frozen=True)
class Known:
    """An identity row or a tombstone: who, which lead, when; ``has_email`` None for a row of an
    earlier version, which does not say."""

    who: frozenset[str]
    lead_id: str
    received: datetime
    has_email: bool | None
    erased: bool


@dataclass(frozen=True)
class Match:
    lead_id: str
    erased: bool


class Matcher:
    """Finds what rows of a file match, for many rows in a row (and from several threads),
    keeping the rows of the last ``days_kept`` days it read: a file sorted by date reads each day
    once, and memory is bounded by a week's leads, whatever the file's size."""

    def __init__(self, store: LeadStore, days_kept: int = 7) -> None:
        self.store, self.days_kept = store, days_kept
        self._days: OrderedDict[str, dict[str, list[Known]]] = OrderedDict()  # day → digest → rows
        self._window: dict[str, list[Known]] | None = None
        self._window_since: datetime | None = None
        self._planned: dict[str, str | None] = {}  # a dry run's new leads, as if stored: id → email
        self._lock = Lock()
        self._reading: dict[str, Lock] = {}  # a day being read, and the lock its readers wait on

    def find(self, lead: Lead, dated: bool = True, now: datetime | None = None) -> Match | None:
        by_email, by_name = identity_texts(lead)
        if not (by_email or by_name):
            return None
        email_keys, name_keys = identity_key_forms(by_email), identity_key_forms(by_name)
        if dated:
            low, high = lead.received_at - MATCH_WINDOW, lead.received_at + MATCH_WINDOW
            indexes = [self._rows(day) for day in _days_between(low, high)]
        else:
            now = now or datetime.now(UTC)
            low, high = now - UNDATED_WINDOW, now + MATCH_WINDOW
            indexes = [self._undated(low, high)]
        candidates = list(
            {
                id(known): known for index in indexes for key in email_keys | name_keys for known in index.get(key, ())
            }.values()
        )
        found = []
        for known in candidates:
            if not low <= known.received <= high:
                continue
            if known.who & email_keys:
                check_email = False
            elif known.who & name_keys and (not lead.email or not known.has_email):
                check_email = known.has_email is None and bool(lead.email)  # an earlier version's row
            else:
                continue
            distance = abs(known.received - lead.received_at) if dated else timedelta(0)
            # Nearest first; of two as near, a tombstone (the truth, if an erasure was cut short),
            # and for a row without a date, a lead still stored before a tombstone.
            found.append((distance, not known.erased if dated else known.erased, known, check_email))
        for _, _, known, check_email in sorted(found, key=lambda item: item[:2]):
            if known.erased:
                return Match(known.lead_id, erased=True)
            stored = self._stored(known.lead_id, full=check_email)
            if stored is None:
                continue
            erased, email = stored
            if erased:
                return Match(known.lead_id, erased=True)
            if check_email and email and email.casefold() != (lead.email or "").casefold():
                continue  # two emails: two people
            return Match(known.lead_id, erased=False)
        return None

    def remember(self, lead: Lead) -> None:
        """A lead this run stored: rows of the file read later match it (the days read before it
        was stored do not hold it)."""
        keys = identity_keys(lead)
        if not keys:
            return
        known = Known(frozenset(keys), lead.lead_id, lead.received_at, bool(lead.email), erased=False)
        with self._lock:
            for index in (self._days.get(_day(lead.received_at)), self._window):
                for key in keys if index is not None else ():
                    index[key] = [*index.get(key, ()), known]

    def plan(self, lead: Lead) -> None:
        """A lead a dry run would store: rows read later match it as if it were stored."""
        with self._lock:
            self._planned[lead.lead_id] = lead.email
        self.remember(lead)

    def _rows(self, day: str) -> dict[str, list[Known]]:
        """The identity rows and tombstones of one day, by digest."""
        with self._lock:
            if day in self._days:
                self._days.move_to_end(day)
                return self._days[day]
            reading = self._reading.setdefault(day, Lock())
        with reading:  # the threads wanting a day all at once (a window's first rows) read it once
            with self._lock:
                if day in self._days:
                    return self._days[day]
            rows = _by_digest(
                self.store.identities.table.query_entities(
                    "PartitionKey eq @day", parameters={"day": day}, select=_SELECT
                )
            )
            with self._lock:
                self._days[day] = rows
                self._reading.pop(day, None)
                while len(self._days) > self.days_kept:
                    self._days.popitem(last=False)
        return rows

    def _undated(self, low: datetime, high: datetime) -> dict[str, list[Known]]:
        """Every identity row and tombstone of the days from ``low`` to ``high``, by digest: one
        query of a range of day partitions (the email index's partitions sort after them)."""
        with self._lock:
            if self._window is not None and self._window_since is not None and self._window_since <= low:
                return self._window
            query = "PartitionKey ge @low and PartitionKey le @high"
            rows = self.store.identities.table.query_entities(
                query, parameters={"low": _day(low), "high": _day(high)}, select=_SELECT, results_per_page=1000
            )
            self._window, self._window_since = _by_digest(rows), low
            return self._window

    def stored_state(self, lead_id: str) -> bool | None:
        """Whether the lead ``lead_id`` was erased; None when there is no such lead."""
        stored = self._stored(lead_id, full=False)
        return None if stored is None else stored[0]

    def _stored(self, lead_id: str, full: bool) -> tuple[bool, str | None] | None:
        """(erased?, email) of a stored lead (the email only with ``full``), or None if it is not
        there."""
        from azure.core.exceptions import ResourceNotFoundError

        from leads.store.rows import LEAD_ROW, lead_from_entity

        if lead_id in self._planned:
            return False, self._planned[lead_id]
        try:
            entity = self.store.leads.get_entity(lead_id, LEAD_ROW, select=None if full else ["ErasedAt"])
        except ResourceNotFoundError:
            return None
        erased = entity.get("ErasedAt") is not None
        return erased, (lead_from_entity(entity).email if full and not erased else None)


def _by_digest(rows) -> dict[str, list[Known]]:
    index: dict[str, list[Known]] = {}
    for row in rows:
        known = _known(row)
        for key in known.who:
            index.setdefault(key, []).append(known)
    return index


def _known(row) -> Known:
    erased_id = buried(row)
    return Known(
        frozenset((row.get("Who") or "").split()),
        erased_id or row["RowKey"],
        row["ReceivedAt"],
        row.get("HasEmail"),
        erased=erased_id is not None,
    )


def _days_between(low: datetime, high: datetime) -> list[str]:
    days, day = [], low
    while _day(day) <= _day(high):
        days.append(_day(day))
        day += timedelta(days=1)
    return days
