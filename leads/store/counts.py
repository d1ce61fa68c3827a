"""Day counters, for ``status``: how the deliveries of each day's leads stand now, without reading
those leads.

The partition ``count|<YYYY-MM-DD>`` of the counts table holds, for the leads received that day,
how many deliveries per destination are delivered, failed and skipped (``<destination>_<state>``)
and how many records were rejected (``intake_rejected``). A delivery's change of state moves one
from its old state's count to its new one's (a replay of a failed delivery takes it out of
``failed``), so a day's figures are a census, not a log of changes. The counts are spread over
:data:`SLOTS` rows a day, one picked at random per change, so that concurrent workers seldom meet
on one ETag.

A delivery's row and its day's counter are in different tables, so they cannot change in one
transaction: a process that dies between the two leaves the count off by one. :meth:`recount`
puts a day right from the truth (``verify`` reads that day's leads from the timeline), in one
transaction over the day's rows that fails if any of them changed meanwhile, so a recount racing a
change is simply done again later. ``verify``'s timer recounts the recent days, so what ``status``
shows comes back to the truth within minutes whatever died. A change to an older day's count (a
held-back lead taken in, or replayed; a retry of yesterday's lead) first marks that day
(:meth:`mark`, partition ``recount``), and the timer recounts the marked days too.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from leads.core.storage import RowKeptChanging, change_row
from leads.store.rows import Delivery

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)

SLOTS = 16
COUNTED = ("delivered", "failed", "skipped")  # the states a day's figures count
REJECTED = "intake_rejected"
PREFIX = "count|"
MARKS = "recount"  # the partition of the days to recount beside the recent ones


def partition_of(day: str) -> str:
    return PREFIX + day


def changes_of(old: Delivery | None, new: Delivery) -> dict[str, int]:
    """What a delivery's change from ``old`` (None: just stored) to ``new`` does to its day's counts."""
    changes: dict[str, int] = {}
    if old is not None and old.state in COUNTED and old.state != new.state:
        changes[f"{old.destination}_{old.state}"] = -1
    if new.state in COUNTED and (old is None or old.state != new.state):
        changes[f"{new.destination}_{new.state}"] = 1
    return changes


class DayCounters:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    def add(self, day: str, changes: Mapping[str, int]) -> None:
        """Add ``changes`` to the counts of ``day``. Never raises: a count is not worth a
        delivery, and the day's recount puts a missed one right."""
        from azure.core.exceptions import AzureError

        if not changes:
            return

        def added(row: Mapping[str, Any] | None) -> dict[str, int]:
            return {name: int((row or {}).get(name) or 0) + n for name, n in changes.items()}

        slot = f"{random.randrange(SLOTS):02d}"
        try:
            change_row(self.table, partition_of(day), slot, added, tries=20)
        except RowKeptChanging:
            log.warning(
                "a counter of %s kept changing under this update; %s left to the recount", day, ", ".join(changes)
            )
        except AzureError as exc:
            log.warning("counters of %s not updated (%s); left to the recount", day, type(exc).__name__)
            return
        try:
            # Marked again once counted: a recount that read the day while this change was on its
            # way, and removed the mark, counted it twice; this mark has it recounted once more.
            self.mark(day)
        except AzureError as exc:
            log.warning("day %s counted but not marked for its recount (%s)", day, type(exc).__name__)

    def mark(self, day: str, now: datetime | None = None) -> None:
        """Before a change to ``day``'s counts: have the next recount include it, unless it is
        today (always recounted). Raises: the change must not go ahead unmarked."""
        if day != f"{(now or datetime.now(UTC)).astimezone(UTC):%Y-%m-%d}":
            self.table.upsert_entity({"PartitionKey": MARKS, "RowKey": day})

    def marked(self) -> dict[str, str]:
        """The days marked for a recount, with their marks' ETags."""
        return {
            row["RowKey"]: row.metadata["etag"]
            for row in self.table.query_entities("PartitionKey eq @p", parameters={"p": MARKS})
        }

    def unmark(self, day: str, etag: str) -> None:
        """A recount of ``day`` is done: remove its mark, unless it was marked again since read."""
        from leads.core.storage import delete_row

        delete_row(self.table, MARKS, day, etag)

    def day(self, day: str) -> tuple[dict[str, int], dict[str, str]]:
        """A day's totals, and the ETag of each of its rows (for :meth:`recount`)."""
        totals: dict[str, int] = {}
        etags = {}
        for row in self.table.query_entities("PartitionKey eq @p", parameters={"p": partition_of(day)}):
            etags[row["RowKey"]] = row.metadata["etag"]
            for name, value in row.items():
                if name not in ("PartitionKey", "RowKey") and isinstance(value, int) and value:
                    totals[name] = totals.get(name, 0) + value
        return {name: n for name, n in sorted(totals.items()) if n}, etags

    def recount(self, day: str, truth: Callable[[], Mapping[str, int]]) -> tuple[dict[str, int], bool]:
        """Set ``day``'s counts to ``truth()``, unless a change landed while it was read: the
        day's rows are read first, then the truth, then all of them are written in one
        transaction conditional on each row as read (:meth:`write`). Returns what the counters
        said before, and whether the truth was written (False: raced, or nothing to change)."""
        before, etags = self.day(day)
        counted = dict(truth())
        return before, counted != before and self.write(day, counted, etags)

    def write(self, day: str, counted: Mapping[str, int], etags: Mapping[str, str]) -> bool:
        """Replace ``day``'s rows by ``counted`` (in its first slot) if none changed, and none
        was created, since read with ``etags``; whether it was written (False: a change landed
        meanwhile). A change whose delivery was read but whose count lands after this write is
        counted twice until the next recount, which its mark (or the day being recent) brings."""
        from azure.core import MatchConditions
        from azure.data.tables import TableTransactionError, UpdateMode

        counted = {name: n for name, n in counted.items() if n}
        partition = partition_of(day)
        operations: list[tuple] = []
        for slot in (f"{number:02d}" for number in range(SLOTS)):
            fields = dict(counted) if slot == "00" else {}
            entity = {"PartitionKey": partition, "RowKey": slot, **fields}
            if slot in etags:
                operations.append(
                    (
                        "update",
                        entity,
                        {
                            "mode": UpdateMode.REPLACE,
                            "etag": etags[slot],
                            "match_condition": MatchConditions.IfNotModified,
                        },
                    )
                )
            else:  # created even empty: fails if a change created it since the read
                operations.append(("create", entity))
        try:
            self.table.submit_transaction(operations)
        except TableTransactionError as exc:
            if exc.status_code in (409, 412):
                return False
            raise
        return True

    def days(self) -> dict[str, tuple[dict[str, int], dict[str, str]]]:
        """Every day's totals and row ETags (the whole counts table: ``verify`` of the whole store)."""
        found: dict[str, tuple[dict[str, int], dict[str, str]]] = {}
        for row in self.table.query_entities(
            "PartitionKey ge @low and PartitionKey lt @high", parameters={"low": PREFIX, "high": PREFIX[:-1] + "}"}
        ):
            totals, etags = found.setdefault(row["PartitionKey"][len(PREFIX) :], ({}, {}))
            etags[row["RowKey"]] = row.metadata["etag"]
            for name, value in row.items():
                if name not in ("PartitionKey", "RowKey") and isinstance(value, int) and value:
                    totals[name] = totals.get(name, 0) + value
        return {day: ({n: v for n, v in sorted(totals.items()) if v}, etags) for day, (totals, etags) in found.items()}

    def window(self, days: int, now: datetime | None = None) -> dict[str, dict[str, int]]:
        """``{group: {state: count}}`` for the leads of the last ``days`` days (today included)."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        low, high = partition_of(f"{now - timedelta(days=days - 1):%Y-%m-%d}"), partition_of(f"{now:%Y-%m-%d}")
        totals: dict[str, dict[str, int]] = {}
        query = "PartitionKey ge @low and PartitionKey le @high"
        for row in self.table.query_entities(query, parameters={"low": low, "high": high}):
            for name, value in row.items():
                if name in ("PartitionKey", "RowKey") or "_" not in name or not isinstance(value, int):
                    continue
                group, state = name.rsplit("_", 1)
                totals.setdefault(group, {}).setdefault(state, 0)
                totals[group][state] += value
        return {
            group: {state: n for state, n in sorted(states.items()) if n}
            for group, states in sorted(totals.items())
            if any(states.values())
        }
