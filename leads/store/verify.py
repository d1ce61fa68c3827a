"""``verify``: the operator's fsck of what is derived from the lead store.

Every derived row (open, failed and held entries, the held tally, timeline and rejected entries,
identity and email rows, the day counters) is compared with the leads, rejected records and
deliveries it describes, and each difference is reported by kind, with the ids it is about (never
personal data). With ``repair`` each is mended by the rules of ``leads/store/derived.py``: a missing
entry is written, a stale one removed (only once proven stale: a row younger than ``GRACE``
pointing at nothing may belong to a write in flight, and is neither reported nor touched), a day's
counts set to the truth unless a change landed while they were read.

Over the last ``since_days`` days it reads those days' leads (from the timeline), every open and
failed entry and their leads (open work), those days' identity rows and counters: its cost is
the recent days' and the open work's, whatever the store holds, so the maintenance timer runs it
(``LEADS_VERIFY_DAYS``, with repair). Without ``since_days`` it reads the whole store and every
derived table: the fsck to run after an incident or an upgrade.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from leads.core.settings import Settings, get_settings
from leads.core.storage import delete_row
from leads.store.counts import COUNTED, REJECTED
from leads.store.derived import target_missing_long_enough, written_at
from leads.store.identities import EMAIL_PARTITION, email_row_key, rows_for
from leads.store.index import (
    FAILED,
    HELD,
    OPEN,
    TIMELINE,
    Entry,
    cursor_of,
    entries_between,
    kind_of,
    past,
    rejected_entry,
    shards,
    stale,
)
from leads.store.rows import LEAD_ROW, REJECTED_ROW, Delivery, day_of, delivery_from_entity, is_delivery_row
from leads.store.tombstones import buried

if TYPE_CHECKING:
    from leads.store.lead_store import LeadStore

log = logging.getLogger(__name__)

_NAMES = {OPEN: "open", FAILED: "failed", HELD: "held"}
_LAST_RUN = ("verify", "last")


@dataclass(frozen=True)
class Difference:
    kind: str  # e.g. "open entry missing", "stale timeline entry", "day count off"
    about: str  # ids only: a lead id, "<lead id>/<destination>", a day
    repaired: bool = False


@dataclass
class Report:
    since_days: int | None
    checked: Counter = field(default_factory=Counter)
    differences: list[Difference] = field(default_factory=list)
    complete: bool = True
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(difference.kind for difference in self.differences).items()))

    @property
    def repaired(self) -> int:
        return sum(difference.repaired for difference in self.differences)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "sinceDays": self.since_days,
            "complete": self.complete,
            "checked": dict(sorted(self.checked.items())),
            "differences": self.by_kind(),
            "repaired": self.repaired,
            "details": [{"kind": d.kind, "about": d.about, "repaired": d.repaired} for d in self.differences],
        }


def verify(
    settings: Settings | None = None,
    since_days: int | None = None,
    repair: bool = False,
    now: datetime | None = None,
    progress: Callable[[Report], None] | None = None,
    seconds: float | None = None,
    held_page: int = 0,
) -> Report:
    """Compare every derived row with what it describes (the last ``since_days`` days and the
    open work; None: the whole store), and with ``repair`` mend each difference. ``progress`` is
    called after each page; after ``seconds`` the run stops, ``complete`` false (counts are then
    not repaired: their truth was not read in full). ``held_page``: with ``since_days``, also the
    next that many held entries, from where the last run stopped, round and round (held entries
    are history: a run reads a page, and a run after run every one). The outcome is kept for
    ``status``."""
    from leads.store.lead_store import LeadStore

    store = LeadStore.from_settings(settings or get_settings())
    store.ensure_tables()
    checker = _Checker(store, now or datetime.now(UTC), repair, progress, seconds, since_days, held_page)
    report = checker.run()
    if report.differences:
        log.warning(
            "verify found %d differences (%s), %d repaired",
            len(report.differences),
            ", ".join(f"{kind}: {n}" for kind, n in report.by_kind().items()),
            report.repaired,
        )
    _keep(store, report)
    return report


def last_run(store: LeadStore) -> dict[str, Any] | None:
    """What the last ``verify`` found (for ``status``), without its details."""
    import json

    from leads.core.storage import checkpoint_of

    row = checkpoint_of(store.checkpoints, _LAST_RUN)
    if not row:
        return None
    return {
        "at": row["At"].isoformat(),
        "sinceDays": row.get("SinceDays"),
        "complete": bool(row.get("Complete")),
        "differences": json.loads(row.get("Differences") or "{}"),
        "repaired": int(row.get("Repaired") or 0),
    }


def _keep(store: LeadStore, report: Report) -> None:
    import json

    from azure.core.exceptions import AzureError

    row = {
        "PartitionKey": _LAST_RUN[0],
        "RowKey": _LAST_RUN[1],
        "At": report.at,
        "Complete": report.complete,
        "Differences": json.dumps(report.by_kind()),
        "Repaired": report.repaired,
    }
    if report.since_days is not None:
        row["SinceDays"] = report.since_days
    try:
        store.checkpoints.upsert_entity(row)
    except AzureError as exc:
        log.warning("verify's outcome not kept for status (%s)", type(exc).__name__)


class _OutOfTime(Exception):
    pass


class _Checker:
    def __init__(
        self,
        store: LeadStore,
        now: datetime,
        repair: bool,
        progress: Callable[[Report], None] | None,
        seconds: float | None,
        since_days: int | None,
        held_page: int = 0,
    ) -> None:
        self.store, self.now, self.repair, self.progress = store, now, repair, progress
        self.held_page = held_page
        self.deadline = time.monotonic() + seconds if seconds is not None else None
        self.report = Report(since_days)
        self.marks: dict[str, str] = {}
        if since_days is None:
            self.days: set[str] | None = None
        else:
            first = (now - timedelta(days=since_days - 1)).astimezone(UTC)
            self.days = {day_of(first + timedelta(days=n)) for n in range(since_days)}
            # and the older days whose counts changed since (their changes marked them first)
            self.marks = store.counters.marked()
            self.days |= set(self.marks)
        self.truth: dict[str, Counter] = {}
        # Bounded runs keep the partitions they read (the days' leads and the open work's): the
        # timeline, the entries and the forward checks meet the same leads.
        self.partitions: dict[str, list[Mapping[str, Any]]] = {}
        self.checked: set[str] = set()
        self.ticks = 0

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> Report:
        # The counters are read first: a change counted after this read changes their ETags, so a
        # repair conditional on them never writes a truth that missed it (leads/store/counts.py).
        counters = self._counters()
        try:
            if self.days is None:
                self._whole_store()
            else:
                self._recent_days()
            self._entries(self.store.index.open())
            self._entries(self.store.index.failed())
            if self.days is None:
                self._held_entries()
                self._timeline(self.store.index.newest(page=1000))
                self._identity_rows(self._all_identity_rows())
            else:
                self._identity_rows(row for day in sorted(self.days) for row in self._identity_day(day))
                if self.held_page:
                    self._held_round()
        except _OutOfTime:
            self.report.complete = False
            return self.report
        self._counts(counters)
        return self.report

    def _tick(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _OutOfTime
        self.ticks += 1
        if self.progress is not None and self.ticks % 200 == 0:
            self.progress(self.report)

    def _differ(self, kind: str, about: str, mend: Callable[[], object] | None = None) -> None:
        repaired = False
        if self.repair and mend is not None:
            from azure.core.exceptions import AzureError

            try:
                repaired = mend() is not False
            except AzureError as exc:
                log.warning("verify could not repair %s of %s (%s)", kind, about, type(exc).__name__)
        self.report.differences.append(Difference(kind, about, repaired))

    # --- what is read --------------------------------------------------------------------------

    def _recent_days(self) -> None:
        for day in sorted(self.days):
            since = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
            self._timeline(self.store.index.newest(since=since, until=since + timedelta(days=1), page=1000))

    def _whole_store(self) -> None:
        """Every partition of the lead store, a page at a time (a partition may span pages)."""
        group: list[Mapping[str, Any]] = []
        for page in self.store.leads.query_entities("", results_per_page=1000).by_page():
            for entity in page:
                if group and group[0]["PartitionKey"] != entity["PartitionKey"]:
                    self._record(group)
                    group = []
                group.append(entity)
        if group:
            self._record(group)

    def _partition(self, lead_id: str) -> list[Mapping[str, Any]]:
        if lead_id not in self.partitions:
            self.partitions[lead_id] = self._read_partition(lead_id)
        return self.partitions[lead_id]

    def _read_partition(self, lead_id: str) -> list[Mapping[str, Any]]:
        return list(self.store.leads.query_entities("PartitionKey eq @p", parameters={"p": lead_id}))

    def _counters(self) -> dict[str, tuple[dict[str, int], dict[str, str]]]:
        if self.days is None:
            return self.store.counters.days()
        return {day: self.store.counters.day(day) for day in sorted(self.days)}

    # --- records and what they call for ---------------------------------------------------------

    def _record(self, rows: list[Mapping[str, Any]]) -> None:
        """The forward checks of one lead partition: every derived row its lead or rejected record
        and deliveries call for exists; and its part of the day counts."""
        lead_id = rows[0]["PartitionKey"]
        if self.days is not None:  # the whole store reads each partition once, in order
            if lead_id in self.checked:
                return
            self.checked.add(lead_id)
        self._tick()
        record = next((row for row in rows if row["RowKey"] in (LEAD_ROW, REJECTED_ROW)), None)
        if record is not None:
            self.report.checked["leads" if record["RowKey"] == LEAD_ROW else "rejected"] += 1
            self._record_rows(lead_id, record)
        for row in rows:
            if is_delivery_row(row["RowKey"]) and row.get("State"):
                self.report.checked["deliveries"] += 1
                self._delivery(delivery_from_entity(row))

    def _record_rows(self, lead_id: str, record: Mapping[str, Any]) -> None:
        rejected = record["RowKey"] == REJECTED_ROW
        received = record["ReceivedAt"]
        index = self.store.index
        if not self._exists(index.timeline, TIMELINE, cursor_of(lead_id, received)):
            self._differ("timeline entry missing", lead_id, lambda: index.add_to_timeline(lead_id, received, rejected))
        if rejected:
            entry = rejected_entry(lead_id, received)
            if not self._exists(index.table, entry["PartitionKey"], entry["RowKey"]):
                self._differ("rejected entry missing", lead_id, lambda: index.table.upsert_entity(entry))
            if self._counted(day_of(received)):
                self.truth.setdefault(day_of(received), Counter())[REJECTED] += 1
        identities = self.store.identities.table
        expected = rows_for(record)
        if expected is None and not rejected:  # erased: its identity row must be gone
            day = day_of(received)
            if self._exists(identities, day, lead_id):
                self._differ("stale identity row", lead_id, lambda: delete_row(identities, day, lead_id))
        for row in expected or ():
            email = email_row_key(row)
            found = self._get(identities, row["PartitionKey"], row["RowKey"])
            if found is None and email is not None:  # where a version before kept it
                found = self._get(identities, email[0], f"{email[1]}|{email[2]}")
            # An identity row is compared by who it names (its time and the email rows it names
            # are the first attempt's, and a row an earlier version wrote names none).
            if found is None or found.get("Who", "") != row.get("Who", ""):
                kind = "email row missing" if email else "identity row missing"
                self._differ(kind, lead_id, lambda row=row: identities.upsert_entity(row))

    def _delivery(self, delivery: Delivery) -> None:
        about = f"{delivery.lead_id}/{delivery.destination}"
        kind = kind_of(delivery)
        if kind and self.store.index.entry(kind, delivery) is None:
            self._differ(f"{_NAMES[kind]} entry missing", about, lambda: self.store.index.ensure(delivery))
        if delivery.state in COUNTED and self._counted(delivery.lead_day):
            self.truth.setdefault(delivery.lead_day, Counter())[f"{delivery.destination}_{delivery.state}"] += 1

    def _counted(self, day: str) -> bool:
        return self.days is None or day in self.days

    # --- derived rows and what they point at ----------------------------------------------------

    def _entries(self, entries: Iterable[Entry]) -> None:
        """Open and failed entries (open work): each proven stale is reported; the lead of each
        is checked forward too (its entries may be of a lead outside the days)."""
        for entry in list(entries):
            self._tick()
            self.report.checked[f"{_NAMES[entry.kind]} entries"] += 1
            rows = self._partition(entry.lead_id) if self.days is not None else self._read_partition(entry.lead_id)
            delivery = next(
                (
                    delivery_from_entity(row)
                    for row in rows
                    if is_delivery_row(row["RowKey"]) and row.get("Destination") == entry.destination
                ),
                None,
            )
            if stale(entry, delivery, self.now):
                self._differ(
                    f"stale {_NAMES[entry.kind]} entry",
                    f"{entry.lead_id}/{entry.destination}",
                    lambda entry=entry: self.store.index.drop(entry),
                )
            if rows and self.days is not None:
                self._record(rows)

    def _held_entries(self) -> None:
        """Every held entry (the whole store only: held entries are history), and each shard's
        tally against what the entries say."""
        index = self.store.index
        counted: dict[str, Counter] = {shard: Counter() for shard in shards()}
        for entry in index.held(page=1000):
            if self._held_entry(entry):
                counted[entry.partition][entry.destination] += 1
        for shard in shards():
            tally, complete = index.held_tally.counts([shard])
            if complete and tally != {name: n for name, n in counted[shard].items() if n > 0}:
                self._differ("held tally off", shard, lambda shard=shard: self._recount_held(shard))

    def _held_round(self) -> None:
        """The next ``held_page`` held entries after the place the last run kept, each checked as
        the whole store's run checks them (the tally is exact by its transactions; stale entries
        it counts are what this finds)."""
        from leads.core.storage import checkpoint_of

        index, key = self.store.index, ("verify", "held")
        place = checkpoint_of(self.store.checkpoints, key).get("After") or ""
        shard, _, after = place.partition(" ")
        left = self.held_page
        for name in shards():
            if left <= 0 or (shard and name < shard):
                continue
            low = after if name == shard and after else HELD
            for entry in entries_between(index.held_table, name, low, past(HELD), left):
                left -= 1
                place = f"{name} {entry.row_key}"
                self._held_entry(entry)
                if left <= 0:
                    break
        done = left > 0  # the last shard's end was reached: the next run starts again
        self.store.checkpoints.upsert_entity({"PartitionKey": key[0], "RowKey": key[1], "After": "" if done else place})

    def _held_entry(self, entry: Entry) -> bool:
        """Check one held entry; whether it stands (not stale)."""
        self._tick()
        self.report.checked["held entries"] += 1
        delivery = self.store.deliveries.get(entry.lead_id, entry.destination)
        if stale(entry, delivery, self.now):
            self._differ(
                "stale held entry", f"{entry.lead_id}/{entry.destination}", lambda: self.store.index.drop(entry)
            )
            return False
        return True

    def _recount_held(self, shard: str) -> bool:
        self.store.index.held_tally.restart(shard)
        while not self.store.index.held_tally.recount_step(shard, HELD, past(HELD)):
            pass
        return True

    def _timeline(self, entries: Iterator[Entry]) -> None:
        for entry in entries:
            self._tick()
            self.report.checked["timeline entries"] += 1
            rows = self._partition(entry.lead_id) if self.days is not None else self._record_row(entry)
            record = next(
                (row for row in rows if row["RowKey"] == (REJECTED_ROW if entry.rejected else LEAD_ROW)), None
            )
            if record is None or cursor_of(entry.lead_id, record["ReceivedAt"]) != entry.row_key:
                if record is not None or target_missing_long_enough(entry.at, self.now):
                    self._differ(
                        "stale timeline entry", entry.lead_id, lambda entry=entry: self.store.index.drop(entry)
                    )
            elif self.days is not None:
                self._record(rows)

    def _record_row(self, entry: Entry) -> list[Mapping[str, Any]]:
        row = self._get(self.store.leads, entry.lead_id, REJECTED_ROW if entry.rejected else LEAD_ROW)
        return [row] if row is not None else []

    def _identity_day(self, day: str) -> Iterator[Mapping[str, Any]]:
        return iter(self.store.identities.table.query_entities("PartitionKey eq @p", parameters={"p": day}))

    def _all_identity_rows(self) -> Iterator[Mapping[str, Any]]:
        return iter(self.store.identities.table.query_entities("", results_per_page=1000))

    def _identity_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Identity and email rows: each must point at a record, not erased, that calls for it."""
        for row in rows:
            email = email_row_key(row)
            is_email = email is not None
            if not is_email and not _is_day(row["PartitionKey"]) or buried(row):
                continue  # not an identity or email row (a tombstone is no derived row: leads/store/tombstones.py)
            self._tick()
            record_id, row_key = email[1:] if is_email else (row["RowKey"], LEAD_ROW)
            self.report.checked["email rows" if is_email else "identity rows"] += 1
            record = self._get(self.store.leads, record_id, row_key)
            expected = rows_for(record) if record is not None else None
            # An email row is what its record calls for by its address's key, in either layout.
            keys = {email_row_key(r) or (r["PartitionKey"], r["RowKey"]) for r in expected or ()}
            if (email or (row["PartitionKey"], row["RowKey"])) in keys:
                continue
            if record is None and not target_missing_long_enough(written_at(row), self.now):
                continue  # its record may be on its way
            kind = "stale email row" if is_email else "stale identity row"
            self._differ(kind, record_id, lambda row=row: self._remove_identity_row(row))

    def _remove_identity_row(self, row: Mapping[str, Any]) -> bool:
        """Remove a stale identity or email row. An identity row takes with it the email rows it
        names that its lead does not call for: the intake died between them and the lead, or an
        erasure between the email rows and the identity row (which it deletes last for this)."""
        import json

        table = self.store.identities.table
        if not row["PartitionKey"].startswith(EMAIL_PARTITION) and row.get("Addresses"):
            lead = self._get(self.store.leads, row["RowKey"], LEAD_ROW)
            called_for = {email[0] for r in (rows_for(lead) if lead else None) or () if (email := email_row_key(r))}
            extra = [key for key in json.loads(row["Addresses"]) if key not in called_for]
            self.store.identities.forget_partitions(row["RowKey"], LEAD_ROW, extra)
        return delete_row(table, row["PartitionKey"], row["RowKey"])

    def _counts(self, counters: Mapping[str, tuple[dict[str, int], dict[str, str]]]) -> None:
        days = set(counters) | set(self.truth)
        if self.days is not None:
            days &= self.days
        for day in sorted(days):
            truth = {name: n for name, n in sorted(self.truth.get(day, Counter()).items()) if n}
            before, etags = counters.get(day, ({}, {}))
            self.report.checked["days"] += 1
            settled = truth == before
            if not settled:
                self._differ(
                    "day count off",
                    day,
                    lambda day=day, truth=truth, etags=etags: self.store.counters.write(day, truth, etags),
                )
                settled = self.report.differences[-1].repaired
            if settled and self.repair and day in self.marks:
                self.store.counters.unmark(day, self.marks[day])

    # --- point reads --------------------------------------------------------------------------

    @staticmethod
    def _get(table, partition: str, row_key: str) -> Mapping[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return table.get_entity(partition, row_key)
        except ResourceNotFoundError:
            return None

    def _exists(self, table, partition: str, row_key: str) -> bool:
        return self._get(table, partition, row_key) is not None


def _is_day(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        return False
    return True
