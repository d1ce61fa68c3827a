"""The marketplace table poll: take in every row the marketplace writes, once.

Azure Functions has no table trigger, so a timer calls :func:`poll_marketplace`.

**What a poll reads.** Azure Tables indexes only ``PartitionKey`` and ``RowKey``: a filter on
``Timestamp`` alone reads the whole table, which the marketplace only ever grows. Its PartitionKey
is not documented, but every row seen carries the date of the lead (``2018-09-28``, or
``9:2F28:2F2018`` with ``/`` written as ``:2F``, as a public reader of the table queries it). So a
routine poll reads, in each date format its rows have shown (:data:`KEY_FORMATS`), only the
partitions of the days from its starting point (less a day) to tomorrow, and in them the rows whose
``Timestamp`` is at or after that point: its cost follows the rows written since, not the table's
size. The starting point is the watermark (the newest Timestamp taken in) or the start of the last
safety scan, whichever is later, less ``LEADS_POLL_OVERLAP_MINUTES`` (Timestamps of concurrent
writers do not arrive in order).

A guess about keys must never lose a row. So the poll reads the whole table by Timestamp (a *safety
scan*, from the previous one's start on) every ``LEADS_POLL_FULL_SCAN_MINUTES``, while it knows no
date format yet, and for a day after it saw a row whose key fits none (unless none has fit for a
day: then the keys changed for good, and the hourly scan alone takes them in); the first poll of a
table reads every row. Such a *pass* saves its place on the checkpoint after each page and reads at
most :data:`PASS_PAGES_PER_POLL` pages a poll: the next poll goes on where it stopped, so a poll
ended part-way loses at most a page, and a table of any size is read through.

**Each row stands alone.** Rows are stored a page at a time, so memory is bounded by a page, each as
a lead whose id comes from the row's identity: a row read twice is stored once. A row that holds no
lead is kept as rejected with the reason, and counted once (the store is asked first). A row that
fails in any other way, short of a storage outage, is remembered in the checkpoints table and tried
by the next polls, then kept as rejected after :data:`ROW_TRIES` tries; the operator is told (a
warning naming the lead id and the kind of failure, no personal data) and the watermark moves past
it. A storage outage stops the poll, and the watermark stays where it was.

**The checkpoint** is one row of the app's checkpoints table, changed only with a conditional (ETag)
write that merges what two racing polls saw: no mark ever moves back.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from threading import Lock
from typing import Any

from leads.core.http import carried, remaining
from leads.core.model import Lead, Route
from leads.core.normalise import LeadValidationError, from_table_entity, storable_row, table_lead_id
from leads.core.settings import Settings, get_settings
from leads.core.storage import put_row, table_service
from leads.delivery.deliver import enqueue
from leads.destinations.routing import hold_backfill, plan
from leads.intake.poll_health import CHECKPOINT_PARTITION, HEALTH_SUFFIX, PollHealth
from leads.store.lead_store import LeadStore, Stored

log = logging.getLogger(__name__)

# RowKey of a row being tried again, beside its table's checkpoint: <table>|retry|<lead id>.
_RETRY_MARK = "|retry|"
ROW_TRIES = 3
HEALTH_EVERY = timedelta(hours=1)  # a poll's success is written to its health at least this often
# After a row whose key fits no known format, polls read the whole table for this long, so that
# more rows like it are taken in at once rather than by the next safety scan.
# A whole format change (every row fits none for this long since the last that fit) ends that:
# the new rows are left to the hourly safety scan rather than a whole-table read every poll.
UNFIT_KEYS_SCAN_FOR = timedelta(days=1)
PAGE_SIZE = 1000  # rows per request: the service's most
# A first poll or safety scan reads at most this many pages per poll and saves its place after
# each; the next polls go on from there until it is done.
PASS_PAGES_PER_POLL = 50
_WORKERS = 8


@dataclass(frozen=True)
class KeyFormat:
    """A date format the marketplace's PartitionKey has been seen in."""

    name: str
    pattern: re.Pattern[str]
    render: Callable[[date], str]
    sorted_by_day: bool  # consecutive days have consecutive keys: one range query reads them all

    def fits(self, key: str) -> bool:
        match = self.pattern.fullmatch(key)
        if not match:
            return False
        try:
            day = date(int(match["year"]), int(match["month"]), int(match["day"]))
        except ValueError:
            return False
        return self.render(day) == key


_US_DATE = re.compile(r"(?P<month>\d{1,2}):2F(?P<day>\d{1,2}):2F(?P<year>\d{4})")
KEY_FORMATS = (
    KeyFormat(
        "yyyy-mm-dd",
        re.compile(r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"),
        lambda day: f"{day:%Y-%m-%d}",
        sorted_by_day=True,
    ),
    KeyFormat("m:2Fd:2Fyyyy", _US_DATE, lambda day: f"{day.month}:2F{day.day}:2F{day.year}", sorted_by_day=False),
    KeyFormat("mm:2Fdd:2Fyyyy", _US_DATE, lambda day: f"{day:%m}:2F{day:%d}:2F{day.year}", sorted_by_day=False),
)


def key_formats(key: str) -> frozenset[str]:
    """The names of the formats a PartitionKey fits (``10:2F12:2F2018`` fits two)."""
    return frozenset(form.name for form in KEY_FORMATS if form.fits(key))


@dataclass
class PollResult:
    read: int = 0
    stored: int = 0
    already_stored: int = 0
    rejected: int = 0
    retrying: int = 0  # rows that failed, to be tried again by the next polls
    held: int = 0  # leads stored with their deliveries skipped: older than LEADS_BACKFILL_DAYS
    erased: int = 0  # rows of leads whose personal data was erased: not taken in again
    mode: str = ""  # "all" (first poll), "full" (safety scan) or "days" (the recent day partitions)
    table_missing: bool = False
    watermark: datetime | None = None

    def summary(self) -> str:
        return (
            f"read {self.read}, stored {self.stored}, already stored {self.already_stored}, "
            f"rejected {self.rejected}, retrying {self.retrying}, held {self.held}"
            + (f", erased (not taken in) {self.erased}" if self.erased else "")
            + f" ({self.mode})"
        )


def poll_marketplace(settings: Settings | None = None, full_scan: bool = False) -> PollResult:
    """Read the marketplace table from the checkpoint on and store every new row; with
    ``full_scan``, run the safety scan now (a pass under way goes on first). Its health (the last
    poll that worked, the last that failed and why) is kept beside the checkpoint, for ``status``
    and the silence watch, and told to Application Insights (``PollDone``, ``PollFailed``)."""
    from leads.core.telemetry import event

    settings = settings or get_settings()
    store = LeadStore.from_settings(settings)
    checkpoint = Checkpoint(store, settings.marketplace_table_name)
    try:
        result = _poll(settings, full_scan, store, checkpoint)
    except Exception as exc:
        reason = _failure_of(exc)
        event("PollFailed", table=settings.marketplace_table_name, error=reason)
        checkpoint.note_health(failure=reason)
        raise
    event(
        "PollDone",
        table=settings.marketplace_table_name,
        mode=result.mode,
        read=result.read,
        stored=result.stored,
        rejected=result.rejected,
        retrying=result.retrying,
        tableMissing=result.table_missing,
    )
    checkpoint.note_health(missing=result.table_missing)
    return result


def _failure_of(exc: BaseException) -> str:
    """A failure's kind, status and service code: never its text, which may quote a row."""
    status, code = getattr(exc, "status_code", None), getattr(exc, "error_code", None)
    return " ".join(str(part) for part in (type(exc).__name__, status, code) if part)


def _poll(settings: Settings, full_scan: bool, store: LeadStore, checkpoint: Checkpoint) -> PollResult:
    from azure.core.exceptions import ResourceNotFoundError

    store.ensure_tables()
    source = marketplace_table(settings)
    checkpoint.read()
    # Storage's clock, never this process's: every time the poll compares (a scan's start, the day
    # partitions, the backfill age) meets the rows' server-set Timestamps.
    marks, now = checkpoint.marks, checkpoint.storage_time()
    overlap = timedelta(minutes=settings.poll_overlap_minutes)
    under_way = checkpoint.under_way or _begin_pass(_mode(marks, settings, now, full_scan), marks, now, overlap)
    mode = under_way.mode if under_way else "days"
    result = PollResult(watermark=marks.watermark, mode=mode)
    seen = Marks()

    longest_page = 0.0
    with ThreadPoolExecutor(_WORKERS) as pool:
        retried = _retry_failed_rows(checkpoint, source, store, settings, now, result)
        pages = _pass_pages(source, under_way) if under_way else _pages(source, marks, overlap, now)
        for number in itertools.count(1):
            if under_way and remaining() < longest_page:
                log.info(
                    "poll of %s: the pass stops after %d pages, before the run's deadline; the next poll "
                    "goes on from here",
                    settings.marketplace_table_name,
                    number - 1,
                )
                break
            started = time.monotonic()
            try:
                page = list(next(pages))
            except StopIteration:
                break
            except ResourceNotFoundError:
                # The marketplace creates its table with the first lead it writes: nothing to do yet.
                result.table_missing = True
                return result
            page_marks = Marks()
            if retried:
                page = [entity for entity in page if _lead_id(entity, settings) not in retried]
            # One page at a time: a page is all this poll ever holds. Only an outage raises here.
            outcomes = _take_in_page(store, page, settings, now, pool)
            for entity, taken in zip(page, outcomes, strict=True):
                result.read += 1
                _count(result, taken)
                if taken.outcome == "failed":
                    checkpoint.remember_failure(taken, entity)
                page_marks = page_marks.merged(_marks_of(entity))
            seen = seen.merged(page_marks)
            if under_way:
                # Every row of the page is stored, rejected or remembered: save the pass's place.
                under_way = under_way.went_on(pages.continuation_token, page_marks.watermark)
                if under_way.done:
                    checkpoint.advance(
                        replace(page_marks, watermark=under_way.newest, full_scan_from=under_way.began),
                        finished=under_way,
                    )
                    break
                checkpoint.advance(replace(page_marks, watermark=None), under_way=under_way)
                if number >= PASS_PAGES_PER_POLL:
                    break  # the next poll goes on from here
            longest_page = max(longest_page, time.monotonic() - started)

    if not under_way and (seen.watermark or seen.key_formats):
        checkpoint.advance(seen)
    result.watermark = checkpoint.marks.watermark
    if seen.unfit_key_at and (marks.unfit_key_at is None or seen.unfit_key_at > marks.unfit_key_at):
        since = checkpoint.marks.unfit_keys_since(now)
        if since:
            log.warning(
                "poll of %s: no row has had a PartitionKey in a date format the poll knows since %s (the "
                "newest was written at %s): the marketplace may have changed its format; such rows are "
                "taken in by the hourly safety scan only (LEADS_POLL_FULL_SCAN_MINUTES)",
                settings.marketplace_table_name,
                since.isoformat(),
                seen.unfit_key_at.isoformat(),
            )
        else:
            log.warning(
                "poll of %s: a row written at %s has a PartitionKey in no date format the poll knows; "
                "polls read the whole table for a day after such a row",
                settings.marketplace_table_name,
                seen.unfit_key_at.isoformat(),
            )
    log.info("poll of %s: %s", settings.marketplace_table_name, result.summary())
    if result.held:
        log.warning(
            "poll of %s: %d leads older than LEADS_BACKFILL_DAYS (%g) stored with their deliveries skipped; "
            "`python -m leads replay --skipped` delivers them",
            settings.marketplace_table_name,
            result.held,
            settings.backfill_days,
        )
    return result


def _mode(marks: Marks, settings: Settings, now: datetime, forced: bool) -> str:
    if marks.watermark is None and marks.full_scan_from is None:
        return "all"
    interval = timedelta(minutes=settings.poll_full_scan_minutes)
    due = marks.full_scan_from is None or now - marks.full_scan_from >= interval
    unfit = (
        marks.unfit_key_at is not None
        and now - marks.unfit_key_at < UNFIT_KEYS_SCAN_FOR
        and marks.unfit_keys_since(now) is None
    )
    # No format known and no row yet (a new, empty table): a scan costs little and finds the first.
    unknown = not marks.key_formats and marks.watermark is None
    return "full" if forced or due or unfit or unknown else "days"


def _begin_pass(mode: str, marks: Marks, now: datetime, overlap: timedelta) -> Pass | None:
    if mode == "days":
        return None
    since = None if mode == "all" else (marks.full_scan_from or marks.watermark) - overlap
    return Pass(mode, began=now, since=since)


def _pass_pages(source: Any, under_way: Pass) -> Any:
    """The pages of a first poll (every row) or a safety scan (the whole table by Timestamp), from
    where the pass stopped; ``continuation_token`` is the next page's place."""
    if under_way.mode == "all":
        query = source.list_entities(results_per_page=PAGE_SIZE)
    else:
        query = source.query_entities(
            "Timestamp ge @since", parameters={"since": under_way.since}, results_per_page=PAGE_SIZE
        )
    return query.by_page(continuation_token=under_way.next_page)


def _pages(source: Any, marks: Marks, overlap: timedelta, now: datetime) -> Iterator[Iterator[Any]]:
    """The pages of a routine poll: the recent day partitions (see the module's docstring)."""
    since = max(marks.watermark, marks.full_scan_from) - overlap
    # The key's date may be the marketplace's local day, a few hours either side of UTC.
    first, last = since.date() - timedelta(days=1), now.date() + timedelta(days=1)
    days = [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
    queries, single_days = [], set()
    for form in KEY_FORMATS:
        if form.name not in marks.key_formats:
            continue
        if form.sorted_by_day:
            queries.append(
                (
                    "PartitionKey ge @low and PartitionKey le @high and Timestamp ge @since",
                    {"low": form.render(first), "high": form.render(last), "since": since},
                )
            )
        else:
            single_days.update(form.render(day) for day in days)
    queries += [
        ("PartitionKey eq @key and Timestamp ge @since", {"key": key, "since": since}) for key in sorted(single_days)
    ]
    for query, parameters in queries:
        yield from source.query_entities(query, parameters=parameters, results_per_page=PAGE_SIZE).by_page()


# --- one row ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Taken:
    """What became of one row."""

    outcome: str  # stored, already_stored, erased, rejected, failed
    lead_id: str
    timestamp: datetime
    held: bool = False
    failure: str = ""  # for the log: the kind of failure and where, never its text
    detail: str = ""  # the failure's own text, kept with the rejected row only


def _take_in_page(
    store: LeadStore, page: list[Any], settings: Settings, now: datetime, pool: ThreadPoolExecutor
) -> list[Taken]:
    """Store the rows of a page as leads (or as rejected), the derived rows they share written
    together (:meth:`LeadStore.add_many`), the workers under this run's deadline (a timer's
    period: leads/core/deadlines.py). Raises only when the app's storage is out."""
    prepared = list(pool.map(carried(lambda entity: _prepare(store, entity, settings, now)), page))
    storable = [item for item in prepared if isinstance(item, _Storable)]
    stored = store.add_many([(item.lead, item.deliveries) for item in storable], pool=pool)
    finish = carried(lambda item, outcome: _finish(store, settings, item, outcome))
    finished = dict(zip((id(item) for item in storable), pool.map(finish, storable, stored), strict=True))
    _arrived(store, [item for item in storable if finished[id(item)].outcome == "stored"])
    return [finished[id(item)] if isinstance(item, _Storable) else item for item in prepared]


@dataclass
class _Storable:
    """A row normalised into a lead and routed: what :meth:`LeadStore.add_many` stores."""

    lead: Lead
    deliveries: dict[str, Route]
    version: str | None
    timestamp: datetime


def _prepare(store: LeadStore, entity: Any, settings: Settings, now: datetime) -> Taken | _Storable:
    """A row as a lead to store, or what became of it already (read before, or rejected)."""
    row, timestamp = _row(entity), entity.metadata["timestamp"]
    table = settings.marketplace_table_name
    lead_id, version = table_lead_id(table, row["PartitionKey"], row["RowKey"]), entity.metadata.get("etag")
    if _recently_stored.contains(lead_id, version):
        return Taken("already_stored", lead_id, timestamp)
    stage = "normalising"
    try:
        try:
            lead = from_table_entity(row, table, received_at=timestamp)
        except LeadValidationError as exc:
            stage = "keeping it as rejected"
            return _reject_once(store, lead_id, version, str(exc), row, timestamp)
        stage = "routing"
        deliveries = hold_backfill(lead, plan(lead, settings), settings, now)
    except Exception as exc:
        if _storage_outage(exc):
            raise
        return Taken("failed", lead_id, timestamp, failure=f"{type(exc).__name__} while {stage}", detail=str(exc)[:500])
    return _Storable(lead, deliveries, version, timestamp)


def _take_in(store: LeadStore, entity: Any, settings: Settings, now: datetime) -> Taken:
    """Store one row as a lead (or as rejected), a row on its own (one an earlier poll failed)."""
    item = _prepare(store, entity, settings, now)
    if not isinstance(item, _Storable):
        return item
    try:
        stored: Stored | Exception = store.add(item.lead, item.deliveries)
    except Exception as exc:
        stored = exc
    taken = _finish(store, settings, item, stored)
    _arrived(store, [item] if taken.outcome == "stored" else [])
    return taken


def _arrived(store: LeadStore, stored: list[_Storable]) -> None:
    """The silence watch counts the new leads of a page together: 0 requests but for a day's first
    lead of an offer, and then 2 for the page, whatever its offers (leads/intake/silence.py)."""
    if stored:
        from leads.intake.silence import arrived_many

        arrived_many(store, [item.lead for item in stored])


def _finish(store: LeadStore, settings: Settings, item: _Storable, stored: Stored | Exception) -> Taken:
    """What became of a row :meth:`LeadStore.add_many` stored (or could not): its deliveries
    queued, once it is new (its arrival is counted by the caller, with the page's: :func:`_arrived`)."""
    lead_id, timestamp = item.lead.lead_id, item.timestamp
    if isinstance(stored, Exception):
        if _storage_outage(stored):
            raise stored
        return Taken(
            "failed", lead_id, timestamp, failure=f"{type(stored).__name__} while storing", detail=str(stored)[:500]
        )
    _recently_stored.add(lead_id, item.version)
    if stored.duplicate:
        # A row read again (or rewritten) of a lead erased since: its erased row is the tombstone.
        return Taken("erased" if stored.erased else "already_stored", lead_id, timestamp)
    enqueue(lead_id, item.deliveries, settings)
    return Taken("stored", lead_id, timestamp, held=any(route.skip_reason for route in item.deliveries.values()))


def _reject_once(
    store: LeadStore, lead_id: str, version: str | None, reason: str, row: dict[str, Any], timestamp: datetime
) -> Taken:
    """Keep a row as rejected, unless an earlier poll (of any process) did."""
    outcome = "already_stored"
    if store.rejected(lead_id) is None:
        store.reject(lead_id, reason, storable_row(row), received_at=timestamp)
        log.warning("marketplace row taken in as rejected lead %s: %s", lead_id, reason)
        outcome = "rejected"
    _recently_stored.add(lead_id, version)
    return Taken(outcome, lead_id, timestamp)


def _storage_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the app's storage cannot be used now (the poll then stops and keeps its
    watermark) rather than that this one row cannot be stored (a 400 for its size, a bug)."""
    from azure.core.exceptions import AzureError, HttpResponseError

    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        return status >= 500 or status in (0, 401, 403, 404, 408, 429)
    return isinstance(exc, AzureError)  # no answer at all: connection refused, timed out, lost


def _row(entity: Any) -> dict[str, Any]:
    timestamp: datetime = entity.metadata["timestamp"]
    row = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"], "Timestamp": timestamp.isoformat()}
    row.update((key, value) for key, value in entity.items() if key not in row)
    return row


def _lead_id(entity: Any, settings: Settings) -> str:
    return table_lead_id(settings.marketplace_table_name, entity["PartitionKey"], entity["RowKey"])


def _count(result: PollResult, taken: Taken) -> None:
    if taken.outcome == "failed":
        result.retrying += 1
    else:
        setattr(result, taken.outcome, getattr(result, taken.outcome) + 1)
    result.held += taken.held


def _marks_of(entity: Any) -> Marks:
    timestamp = entity.metadata["timestamp"]
    formats = key_formats(entity["PartitionKey"])
    if formats:
        return Marks(watermark=timestamp, key_formats=formats, fit_key_at=timestamp)
    return Marks(watermark=timestamp, unfit_key_at=timestamp, unfit_since=timestamp)


def _retry_failed_rows(
    checkpoint: Checkpoint, source: Any, store: LeadStore, settings: Settings, now: datetime, result: PollResult
) -> set[str]:
    """Try again each row an earlier poll could not take in; keep it as rejected at the last try.
    Returns their lead ids: this poll's reading skips them."""
    from azure.core.exceptions import ResourceNotFoundError

    retried = set()
    for record in list(checkpoint.retries):
        lead_id = record["RowKey"].rpartition("|")[2]
        retried.add(lead_id)
        try:
            entity = source.get_entity(record["SourcePartitionKey"], record["SourceRowKey"])
        except ResourceNotFoundError:
            checkpoint.forget_failure(record)  # the row (or its table) is gone: nothing to take in
            continue
        taken = _take_in(store, entity, settings, now)
        result.read += 1
        tries = int(record.get("Tries") or 1) + 1
        if taken.outcome != "failed":
            _count(result, taken)
            checkpoint.forget_failure(record)
        elif tries < ROW_TRIES:
            result.retrying += 1
            checkpoint.remember_failure(taken, entity, record=record, tries=tries)
        else:
            _give_up(store, taken, entity, tries)
            result.rejected += 1
            checkpoint.forget_failure(record)
    return retried


def _give_up(store: LeadStore, taken: Taken, entity: Any, tries: int) -> None:
    reason = f"could not be taken in after {tries} tries: {taken.failure}: {taken.detail}"
    try:
        store.reject(taken.lead_id, reason, storable_row(_row(entity)), received_at=taken.timestamp)
    except Exception as exc:
        if _storage_outage(exc):
            raise
        log.error(
            "marketplace row %s could not be taken in (%s) nor kept as rejected (%s): it is only in the "
            "marketplace table",
            taken.lead_id,
            taken.failure,
            type(exc).__name__,
        )
        return
    _recently_stored.add(taken.lead_id, entity.metadata.get("etag"))
    log.warning(
        "marketplace row %s kept as rejected after %d tries: %s (`python -m leads show %s` tells more)",
        taken.lead_id,
        tries,
        taken.failure,
        taken.lead_id,
    )


# --- the checkpoint -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Marks:
    """What the polls of one table have established, each mark only ever moving one way."""

    watermark: datetime | None = None  # the newest Timestamp taken in
    full_scan_from: datetime | None = None  # when the last completed safety scan (or first poll) began
    key_formats: frozenset[str] = field(default_factory=frozenset)  # the date formats keys have shown
    unfit_key_at: datetime | None = None  # the Timestamp of the newest row whose key fits none
    fit_key_at: datetime | None = None  # the Timestamp of the newest row whose key fits one
    unfit_since: datetime | None = None  # the Timestamp of the oldest row whose key fits none

    def merged(self, other: Marks) -> Marks:
        return Marks(
            _later(self.watermark, other.watermark),
            _later(self.full_scan_from, other.full_scan_from),
            self.key_formats | other.key_formats,
            _later(self.unfit_key_at, other.unfit_key_at),
            _later(self.fit_key_at, other.fit_key_at),
            _earlier(self.unfit_since, other.unfit_since),
        )

    def unfit_keys_since(self, now: datetime) -> datetime | None:
        """Since when no row's key has fit a known format, when that is longer than
        :data:`UNFIT_KEYS_SCAN_FOR`: the marketplace's keys have changed for good, not one odd row."""
        if self.unfit_key_at is None or (self.fit_key_at and self.fit_key_at > self.unfit_key_at):
            return None
        since = _later(self.fit_key_at, self.unfit_since)  # the last row that fit, or the first unfit
        return since if since and now - since >= UNFIT_KEYS_SCAN_FOR else None

    def to_entity(self) -> dict[str, Any]:
        values = {
            "Watermark": self.watermark,
            "FullScanFrom": self.full_scan_from,
            "KeyFormats": ",".join(sorted(self.key_formats)),
            "UnfitKeyAt": self.unfit_key_at,
            "FitKeyAt": self.fit_key_at,
            "UnfitSince": self.unfit_since,
        }
        return {name: value for name, value in values.items() if value not in (None, "")}

    @classmethod
    def from_entity(cls, entity: dict[str, Any]) -> Marks:
        # A checkpoint of an earlier version holds only Watermark: the safety scan is then due at
        # once, reads from the watermark on as that version did, and learns the key formats. One
        # without FitKeyAt and UnfitSince learns them from the rows read next.
        formats = frozenset(name for name in (entity.get("KeyFormats") or "").split(",") if name)
        return cls(
            entity.get("Watermark"),
            entity.get("FullScanFrom"),
            formats,
            entity.get("UnfitKeyAt"),
            entity.get("FitKeyAt"),
            entity.get("UnfitSince"),
        )


@dataclass(frozen=True)
class Pass:
    """A first poll (``all``: every row) or safety scan (``full``: every row by Timestamp from
    ``since``) under way, kept on the checkpoint after each page so that a poll ended part-way
    (a timeout, a scale-in, a restart) is gone on with by the next rather than begun again."""

    mode: str
    began: datetime  # when its first poll began: FullScanFrom once it is done
    since: datetime | None = None
    next_page: dict[str, str] | None = None  # the service's continuation token: the next page's keys
    newest: datetime | None = None  # the newest Timestamp it has read: the watermark once it is done
    done: bool = False

    def went_on(self, next_page: dict[str, str] | None, newest: datetime | None) -> Pass:
        return replace(self, next_page=next_page, newest=_later(self.newest, newest), done=not next_page)

    def to_entity(self) -> dict[str, Any]:
        page = self.next_page or {}
        values = {
            "PassMode": self.mode,
            "PassBegan": self.began,
            "PassSince": self.since,
            "PassNextPartitionKey": page.get("PartitionKey"),
            "PassNextRowKey": page.get("RowKey"),
            "PassNewest": self.newest,
        }
        return {name: value for name, value in values.items() if value is not None}

    @classmethod
    def from_entity(cls, entity: dict[str, Any]) -> Pass | None:
        if not entity.get("PassMode"):
            return None
        page = {"PartitionKey": entity.get("PassNextPartitionKey"), "RowKey": entity.get("PassNextRowKey")}
        return cls(
            entity["PassMode"],
            entity["PassBegan"],
            entity.get("PassSince"),
            page if any(page.values()) else None,
            entity.get("PassNewest"),
        )


def _later(first: datetime | None, second: datetime | None) -> datetime | None:
    return max(first, second) if first and second else first or second


def _earlier(first: datetime | None, second: datetime | None) -> datetime | None:
    return min(first, second) if first and second else first or second


class Checkpoint:
    """The marks of one marketplace table's polls, the pass under way, and the rows being tried
    again, in one partition of the checkpoints table. Marks are written merged with what is stored,
    with a conditional write: of two polls racing, the later writer re-reads and keeps the newer of
    each mark. Of two passes, the one stored first is kept; any pass done ends the one stored."""

    def __init__(self, store: LeadStore, table_name: str) -> None:
        self.table = store.checkpoints
        self.key = {"PartitionKey": CHECKPOINT_PARTITION, "RowKey": table_name}
        self.marks = Marks()
        self.under_way: Pass | None = None
        self.retries: list[Any] = []
        self._etag: str | None = None
        self._date: datetime | None = None  # the storage service's clock at the last read
        self._written: datetime | None = None  # the checkpoint's own Timestamp: when it was last written
        self.health = PollHealth()

    def read(self) -> datetime | None:
        """Read the marks and the rows being tried again, in one request; returns the watermark."""
        name = self.key["RowKey"]
        entities = self.table.query_entities(
            "PartitionKey eq @partition and RowKey ge @low and RowKey le @high",
            parameters={"partition": CHECKPOINT_PARTITION, "low": name, "high": name + _RETRY_MARK + "~"},
            raw_response_hook=self._note_date,
        )
        self.marks, self.under_way, self.retries, self._etag, self._written = Marks(), None, [], None, None
        for entity in entities:
            if entity["RowKey"] == name:
                self.marks, self._etag = Marks.from_entity(entity), entity.metadata["etag"]
                self.under_way = Pass.from_entity(entity)
                self._written = entity.metadata.get("timestamp")
            elif entity["RowKey"].startswith(name + _RETRY_MARK):
                self.retries.append(entity)
            elif entity["RowKey"] == name + HEALTH_SUFFIX:  # in the same range: read for nothing
                self.health = PollHealth.from_entity(entity)
        return self.marks.watermark

    def note_health(self, failure: str | None = None, missing: bool = False) -> None:
        """Keep the poll's health beside its checkpoint: each failure, and a success after one (or
        after ``HEALTH_EVERY``, or when the table appeared or went): a routine poll writes nothing.
        Never raises: the poll's own outcome is what counts."""
        from azure.core.exceptions import AzureError
        from azure.data.tables import UpdateMode

        now = self._date or datetime.now(UTC)  # shown, never compared with a row's Timestamp
        health = self.health
        if (
            failure is None
            and health.ok_at
            and not health.failing
            and health.table_missing == missing
            and now - health.ok_at < HEALTH_EVERY
        ):
            return
        fields = {"FailedAt": now, "Error": failure} if failure else {"OkAt": now, "TableMissing": missing}
        try:
            row = {"PartitionKey": CHECKPOINT_PARTITION, "RowKey": self.key["RowKey"] + HEALTH_SUFFIX}
            self.table.upsert_entity({**row, **fields}, mode=UpdateMode.MERGE)
        except AzureError:
            pass

    def _note_date(self, response: Any) -> None:
        from email.utils import parsedate_to_datetime

        try:
            self._date = parsedate_to_datetime(response.http_response.headers["Date"]).astimezone(UTC)
        except (KeyError, TypeError, ValueError):
            pass

    def storage_time(self) -> datetime:
        """The time on the storage service's clock: what the poll compares the marketplace's
        ``Timestamp``s with. A process whose own clock runs ahead would otherwise start a scan
        "later" than rows written after it, and never read them. It is the ``Date`` header of the
        last read (to the second), or the checkpoint's own ``Timestamp`` when that is later (it was
        written within the same second: two polls a second apart must not begin "at once"). Without
        the header (no service omits it), the newest storage time the marks hold; only a first poll
        with neither falls back to this process's clock."""
        if self._date is not None:
            return _later(self._date, self._written)
        known = _later(_later(self.marks.watermark, self.marks.full_scan_from), self.under_way and self.under_way.began)
        known = _later(known, self._written)
        if known is not None:
            return known
        log.warning("the storage service's answer carried no Date header: the first poll goes by this process's clock")
        return datetime.now(UTC)

    def advance(self, marks: Marks, under_way: Pass | None = None, finished: Pass | None = None) -> Marks:
        """Store ``marks`` merged with the stored ones, and the place of the pass ``under_way``, or
        that the pass ``finished`` is done; returns what is stored."""
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        for _ in range(10):
            merged, stored_pass = self.marks.merged(marks), self._pass_after(under_way, finished)
            if merged == self.marks and stored_pass == self.under_way and self._etag is not None:
                return merged
            entity = {**self.key, **merged.to_entity(), **(stored_pass.to_entity() if stored_pass else {})}
            try:
                metadata = put_row(self.table, entity, self._etag)
                self.marks, self.under_way, self._etag = merged, stored_pass, metadata["etag"]
                return merged
            except (ResourceExistsError, ResourceModifiedError):
                self.read()
        raise RuntimeError("the poll checkpoint kept changing under this poll")

    def _pass_after(self, under_way: Pass | None, finished: Pass | None) -> Pass | None:
        """The pass to store. Any place a pass saved is safe to go on from (every row before it is
        taken in), so of the same pass the latest place is kept; a pass done (this poll's or a
        racing one's) read everything the stored one would, so it ends it."""
        stored = self.under_way
        if finished or under_way is None:
            return None if finished else stored
        if stored is None:
            ended = self.marks.full_scan_from is not None and self.marks.full_scan_from >= under_way.began
            return None if ended else under_way  # ended: a racing poll's pass begun later is done
        if (stored.mode, stored.began) == (under_way.mode, under_way.began):
            return replace(under_way, newest=_later(stored.newest, under_way.newest))
        return stored

    def remember_failure(self, taken: Taken, entity: Any, record: Any = None, tries: int = 1) -> None:
        """Keep a row that failed, to be tried by the next polls (``tries`` so far)."""
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        log.warning(
            "marketplace row %s could not be taken in (%s, try %d of %d): the poll moves on and tries it again",
            taken.lead_id,
            taken.failure,
            tries,
            ROW_TRIES,
        )
        row = {
            "PartitionKey": CHECKPOINT_PARTITION,
            "RowKey": self.key["RowKey"] + _RETRY_MARK + taken.lead_id,
            "SourcePartitionKey": entity["PartitionKey"],
            "SourceRowKey": entity["RowKey"],
            "Tries": tries,
            "Failure": taken.failure,
        }
        try:
            put_row(self.table, row, record.metadata["etag"] if record is not None else None)
        except (ResourceExistsError, ResourceModifiedError):
            pass  # a racing poll keeps it already

    def forget_failure(self, record: Any) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            self.table.delete_entity(
                record["PartitionKey"],
                record["RowKey"],
                etag=record.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            pass  # a racing poll dealt with it


def marketplace_table(settings: Settings):
    if settings.marketplace_table_connection:
        service = table_service(settings.marketplace_table_connection, "MARKETPLACE_TABLE_CONNECTION")
    else:
        service = LeadStore.from_settings(settings).service
    return service.get_table_client(settings.marketplace_table_name)


class _RecentLeadIds:
    """Rows this process stored, saw stored or kept as rejected, by lead id with the row's ETag, so
    that rows the overlap window reads again cost no write. Only a saving: the store's
    insert-if-absent is what makes a re-read harmless. A row the marketplace rewrote in place has a
    new ETag and is taken in again (a rejected row it corrected becomes its lead)."""

    def __init__(self, size: int = 200_000) -> None:
        self._ids: OrderedDict[str, str | None] = OrderedDict()
        self._size = size
        self._lock = Lock()

    def contains(self, lead_id: str, version: str | None) -> bool:
        with self._lock:
            return lead_id in self._ids and self._ids[lead_id] == version

    def add(self, lead_id: str, version: str | None) -> None:
        with self._lock:
            self._ids[lead_id] = version
            self._ids.move_to_end(lead_id)
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._ids.clear()


_recently_stored = _RecentLeadIds()
