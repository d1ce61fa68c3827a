"""The one protocol for derived rows: the index entries, timeline entries, identity and email rows
that let routine work find a lead or a delivery without reading history. Each is a second copy of
a fact its target (a lead, a delivery, a rejected record) holds, so each follows four rules:

1. **Written before what it points at.** A crash between the two leaves an entry pointing at
   nothing, never a target that no reader can find.
2. **Removed only by whoever can prove it stale** (:func:`entry_stale`): its target exists and
   says otherwise for good, or its target is missing and the entry is older than :data:`GRACE`,
   longer than any write of a target can take. A target that says otherwise *for now* (a delivery
   still ``sending`` under an entry that says ``failed``) may be a writer in flight: the entry stays.
3. **No read path writes.** ``status``, ``/api/status``, ``list`` and ``show`` only read; the sweep
   (open entries), ``replay`` (what it replays) and ``verify --repair`` remove what they prove stale.
4. **A count kept beside entries changes in the same transaction as they do** (:class:`Tally`), so
   it cannot drift from them; a count that cannot share their partition (the day counters,
   ``leads/store/counts.py``) is recounted from the truth, a day at a time, by ``verify``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from leads.core.storage import put_row

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)

# Longer than any write of a target can take: an entry this old whose target is missing (or of an
# earlier round) belongs to a write that failed or died. A lead's transaction and a delivery's
# change are bounded to seconds by the SDKs' retry policies; ten minutes leaves room for clocks
# that differ between instances.
GRACE = timedelta(minutes=10)


def written_at(entity: Mapping[str, Any]) -> datetime | None:
    """When a derived row was written: its ``At`` (the writer's clock), else the service's
    ``Timestamp``."""
    moment = entity.get("At") or getattr(entity, "metadata", {}).get("timestamp")
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def target_missing_long_enough(written: datetime | None, now: datetime) -> bool:
    """Whether an entry whose target is missing may be removed: it is older than :data:`GRACE`."""
    return written is not None and now - written > GRACE


def entry_stale(
    written: datetime | None,
    now: datetime,
    *,
    target_exists: bool,
    entry_round: int = 0,
    target_round: int = 0,
    target_final: bool = False,
    target_agrees: bool = True,
) -> bool:
    """Whether an entry may be removed, by what its target (read now) says.

    Rounds only grow (a replay starts a delivery's next): a target in a later round than the
    entry's has left it for good, while one in an earlier round may be about to enter it (the entry
    is written first), as a missing target may be about to be written: those wait out
    :data:`GRACE`. Within one round a final state (delivered, failed, skipped) is for good, so a
    final target that disagrees proves the entry stale; an open one may still become what the entry
    says (a delivery ``sending`` under an entry that says ``failed``: a writer in flight).
    """
    if not target_exists or target_round < entry_round:
        return target_missing_long_enough(written, now)
    if target_round > entry_round:
        return True
    return target_final and not target_agrees


# --- counts kept with their entries --------------------------------------------------------------

TALLY_ROW = "tally"  # outside every entry's key range (entries start with a kind such as "h|")
_TALLY_TRIES = 20


class TallyKeptChanging(RuntimeError):
    """Other writers changed a tally before every one of a change's tries."""


class Tally:
    """Entries of one table counted per destination in one row of each partition (``tally``),
    changed in the same entity group transaction as the entries it counts, so that the count moves
    exactly when they do: a create that found the entry there, a delete that found nothing, a
    crash or a lost answer (the transaction is all or nothing) change nothing.

    A partition whose tally row is missing (a store from before tallies) is counted from its entries
    a page at a time (:meth:`recount_step`): the row then holds ``Cursor``, the last key counted,
    and a writer adds to the count only for keys up to it, the pass counting the rest. Every
    writer changes the row, so a pass step that raced a writer fails its condition and reads again.
    """

    def __init__(self, table: TableClient) -> None:
        self.table = table

    def create(self, partition: str, entries: Iterable[Mapping[str, Any]]) -> int:
        """Create ``entries`` (of one partition, each naming its ``Destination``) that do not
        exist yet, and count them; how many were created."""
        pending = {entry["RowKey"]: dict(entry) for entry in entries}
        for _ in range(_TALLY_TRIES):
            if not pending:
                return 0
            rows = list(pending.values())
            counted = [(row["RowKey"], row["Destination"], 1) for row in rows]
            failed = self._submit(partition, [("create", row) for row in rows], counted)
            if failed is None:
                return len(rows)
            if failed < len(rows):  # that entry exists: counted when it was created
                del pending[rows[failed]["RowKey"]]
        raise TallyKeptChanging(f"the tally of {self.table.table_name}/{partition} kept changing")

    def delete(self, partition: str, row_key: str, destination: str, etag: str | None = None) -> bool:
        """Delete an entry (only if unchanged since read, given its ``etag``) and count it out;
        whether it was there to delete."""
        from azure.core import MatchConditions

        condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        operation = ("delete", {"PartitionKey": partition, "RowKey": row_key}, condition)
        for _ in range(_TALLY_TRIES):
            failed = self._submit(partition, [operation], [(row_key, destination, -1)])
            if failed is None:
                return True
            if failed == 0:
                return False
        raise TallyKeptChanging(f"the tally of {self.table.table_name}/{partition} kept changing")

    def _submit(self, partition: str, operations: list[tuple], counted: list[tuple[str, str, int]]) -> int | None:
        """One transaction: ``operations`` on entries, and the tally changed by ``counted`` (key,
        destination, change), for the keys a pass has counted already. None when it committed,
        else the index of the operation that failed (``len(operations)``: the tally, changed
        meanwhile)."""
        from azure.core import MatchConditions
        from azure.data.tables import TableTransactionError, UpdateMode

        tally = self._row(partition)
        if tally is None:
            # Not counted yet: a pass starts here, and counts this change with the rest.
            operations = [*operations, ("create", {"PartitionKey": partition, "RowKey": TALLY_ROW, "Cursor": ""})]
        else:
            cursor = tally.get("Cursor")
            fields: dict[str, int] = {}
            for key, name, change in counted:
                if cursor is None or key <= cursor:
                    fields[name] = fields.get(name, int(tally.get(name) or 0)) + change
            # Written even when nothing is counted: a pass that read the entries meanwhile must see it.
            fields["Changes"] = int(tally.get("Changes") or 0) + 1
            operations = [
                *operations,
                (
                    "update",
                    {"PartitionKey": partition, "RowKey": TALLY_ROW, **fields},
                    {
                        "mode": UpdateMode.MERGE,
                        "etag": tally.metadata["etag"],
                        "match_condition": MatchConditions.IfNotModified,
                    },
                ),
            ]
        try:
            self.table.submit_transaction(operations)
        except TableTransactionError as exc:
            if exc.status_code not in (404, 409, 412):
                raise
            return exc.index
        return None

    def _row(self, partition: str):
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.table.get_entity(partition, TALLY_ROW)
        except ResourceNotFoundError:
            return None

    def start(self, partitions: Iterable[str]) -> None:
        """Tally rows for partitions known to hold no entry yet (a new store): complete, zero."""
        from azure.core.exceptions import ResourceExistsError

        for partition in partitions:
            try:
                self.table.create_entity({"PartitionKey": partition, "RowKey": TALLY_ROW})
            except ResourceExistsError:
                pass

    def counts(self, partitions: Iterable[str]) -> tuple[dict[str, int], bool]:
        """The count per destination over ``partitions`` (those above zero), and whether every
        partition is counted to the end (no pass under way or due)."""
        totals: dict[str, int] = {}
        complete = True
        for partition in partitions:
            row = self._row(partition)
            if row is None or row.get("Cursor") is not None:
                complete = False
            for name, value in (row or {}).items():
                if name not in ("PartitionKey", "RowKey", "Changes") and isinstance(value, int):
                    totals[name] = totals.get(name, 0) + value
        return {name: n for name, n in sorted(totals.items()) if n > 0}, complete

    def restart(self, partition: str) -> None:
        """Count ``partition`` again from its entries (``verify --repair`` of a tally found off)."""
        from azure.data.tables import UpdateMode

        self.table.upsert_entity(
            {"PartitionKey": partition, "RowKey": TALLY_ROW, "Cursor": ""}, mode=UpdateMode.REPLACE
        )

    def recount_step(self, partition: str, low: str, high: str, page: int = 1000) -> bool:
        """Count the next ``page`` entries (keys in (``low``, ``high``)) of a partition being
        counted; True once it is counted to the end (or was)."""
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

        for _ in range(_TALLY_TRIES):
            tally = self._row(partition)
            if tally is not None and tally.get("Cursor") is None:
                return True
            cursor = (tally or {}).get("Cursor") or low
            query = "PartitionKey eq @p and RowKey gt @low and RowKey lt @high"
            rows = self.table.query_entities(
                query,
                parameters={"p": partition, "low": cursor, "high": high},
                select=["RowKey", "Destination"],
                results_per_page=page,
            )
            found = []
            for row in rows:
                found.append(row)
                if len(found) == page:
                    break
            fields = {
                name: int(value)
                for name, value in (tally or {}).items()
                if name not in ("PartitionKey", "RowKey", "Cursor") and isinstance(value, int)
            }
            for row in found:
                fields[row["Destination"]] = fields.get(row["Destination"], 0) + 1
            done = len(found) < page
            entity = {
                "PartitionKey": partition,
                "RowKey": TALLY_ROW,
                **fields,
                **({} if done else {"Cursor": found[-1]["RowKey"]}),
            }
            try:
                put_row(self.table, entity, tally.metadata["etag"] if tally is not None else None)
            except (ResourceModifiedError, ResourceNotFoundError, ResourceExistsError):
                continue  # a writer changed the partition meanwhile: read again
            return done
        raise TallyKeptChanging(f"the tally of {self.table.table_name}/{partition} kept changing")
