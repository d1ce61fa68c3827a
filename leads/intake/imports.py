"""``python -m leads import FILE...``: recover leads the marketplace never delivered.

The marketplace hands a lead over once. When a destination was down, Microsoft's answer is to
download the leads from Partner Center (Referrals → Leads → Download: the last six months, up to
5,000 rows a file, so filter by date for the rest) and enter them again by hand. This reads such
files, or ones in the marketplace's own formats, several in one run, and takes each row in as a
lead with channel ``import``:

- ``jsonl`` / ``json``: JSON lines, or a JSON array, of HTTPS-endpoint bodies as the marketplace
  POSTs them (which carry no created time);
- ``table-csv``: the marketplace table exported as CSV by Azure Storage Explorer (PartitionKey,
  RowKey, Timestamp, the lead columns, ``CustomerInfo`` as a JSON string; ``<name>@type`` columns
  are ignored). A row keeps the id the table poll gives it, so one the poll took in is found;
- ``partner-center``: the CSV of Partner Center's Leads page. Its column names are not documented,
  so headers are matched to lead fields ignoring case, spaces and punctuation, with
  ``--column FIELD=HEADER`` to override; ``--dry-run`` shows the mapping chosen.

How a file is read (encodings, delimiters, rows refused with their line) is
:mod:`leads.intake.import_formats`; how a row is told to be a lead already received, an erased lead or a
new one is :mod:`leads.intake.matching`. A row imported before has the same id again, so importing a file
twice stores nothing the second time. New leads follow routing, except that leads older than
``LEADS_BACKFILL_DAYS``, and leads of rows without a created date, are stored without being sent
unless ``deliver`` is asked for. Rows are read and stored a few at a time: memory stays flat
whatever the files' size (but for the ids of the leads the files account for, kept to tell what
the store has that the files do not).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from leads.core.http import carried
from leads.core.model import Lead, Route
from leads.core.pseudonyms import SETTING, key_changed
from leads.core.settings import Settings, get_settings
from leads.intake.import_formats import FORMATS, ImportError_, Refused, Row, Source, map_columns, open_source
from leads.intake.matching import MATCH_WINDOW, UNDATED_WINDOW, Matcher
from leads.store.identities import identity_keys

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from leads.store.lead_store import LeadStore, Stored

__all__ = ["FORMATS", "ImportError_", "ImportReport", "import_file", "import_files", "map_columns"]

# A window: the rows whose derived rows go in one transaction per partition. Its email rows spread
# over 16 buckets, so a window of 500 rows costs a new row 1.07 requests (benchmarks/imports.py), one of 100 rows 1.2.
WORKERS, WINDOW = 8, 500
_LISTED = 50  # refused rows and leads only in the store the text report lists (--json: all)


@dataclass
class Outcome:
    file: str
    row: int
    state: str  # imported, imported-not-sent, already-received, erased, refused
    lead_id: str | None = None
    matched: str | None = None  # the stored (or erased) lead an already-received or erased row matched
    reason: str | None = None
    offer: str | None = None


@dataclass
class FileReport:
    file: str
    format: str
    encoding: str
    delimiter: str | None = None
    read: int = 0
    already_received: int = 0
    erased: int = 0
    imported: int = 0
    imported_not_sent: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)
    mapping: dict[str, str] | None = None
    preview: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    undated: int = 0

    def count(self, outcome: Outcome) -> None:
        if outcome.state == "refused":
            self.refused.append({"file": self.file, "row": outcome.row, "reason": outcome.reason})
        else:
            name = outcome.state.replace("-", "_")
            setattr(self, name, getattr(self, name) + 1)

    def to_dict(self) -> dict[str, Any]:
        body = {
            "file": self.file,
            "format": self.format,
            "encoding": self.encoding,
            "read": self.read,
            "alreadyReceived": self.already_received,
            "erased": self.erased,
            "importedAndQueued": self.imported,
            "importedNotSent": self.imported_not_sent,
            "refused": len(self.refused),
            "undated": self.undated,
            "warnings": self.warnings,
        }
        if self.delimiter is not None:
            body["delimiter"] = self.delimiter
        if self.mapping is not None:
            body["mapping"] = self.mapping
        return body


@dataclass
class ImportReport:
    """What became of every row of every file, and (``in_store_only``) the leads the store has for
    the files' offers and days that no row of them accounts for."""

    files: list[FileReport] = field(default_factory=list)
    dry_run: bool = False
    in_store_only: list[dict[str, Any]] | None = None

    def _sum(self, name: str) -> int:
        return sum(getattr(report, name) for report in self.files)

    read = property(lambda self: self._sum("read"))
    already_received = property(lambda self: self._sum("already_received"))
    erased = property(lambda self: self._sum("erased"))
    imported = property(lambda self: self._sum("imported"))
    imported_not_sent = property(lambda self: self._sum("imported_not_sent"))
    refused = property(lambda self: [item for report in self.files for item in report.refused])
    warnings = property(lambda self: [warning for report in self.files for warning in report.warnings])
    preview = property(lambda self: [item for report in self.files for item in report.preview])
    # Of the first file (the one of a run of one).
    format = property(lambda self: self.files[0].format)
    mapping = property(lambda self: self.files[0].mapping)

    def to_dict(self) -> dict[str, Any]:
        body = {
            "files": [report.to_dict() for report in self.files],
            "read": self.read,
            "alreadyReceived": self.already_received,
            "erased": self.erased,
            "importedAndQueued": self.imported,
            "importedNotSent": self.imported_not_sent,
            "refused": self.refused,
            "dryRun": self.dry_run,
        }
        if self.dry_run:
            body["preview"] = self.preview
        if self.in_store_only is not None:
            body["inStoreNotInFiles"] = self.in_store_only
        return body

    def text(self) -> str:
        lines = []
        for report in self.files:
            how = ", ".join(
                part
                for part in (
                    report.format,
                    report.encoding,
                    report.delimiter and f"fields separated by {report.delimiter!r}",
                )
                if part
            )
            lines.append(f"{report.file} ({how}): {report.read} rows read")
            if report.mapping is not None:
                names = (f"{name} ← {header!r}" for name, header in report.mapping.items())
                lines.append("  columns: " + ", ".join(names))
            lines += [f"  warning: {warning}" for warning in report.warnings]
        if self.dry_run:
            lines.append("dry run: nothing was stored; the first rows read as:")
            lines += [
                f"  row {item['row']} ({item.get('outcome')}): {json.dumps(item['lead'], ensure_ascii=False)}"
                for item in self.preview
            ]
            lines.append("a real run would take them in as:")
        if len(self.files) > 1:
            lines.append(f"all {len(self.files)} files: {self.read} rows read")
        lines += [
            f"  {'already received:':<28}{self.already_received}",
            f"  {'erased, not taken in:':<28}{self.erased}",
            f"  {'imported and queued:':<28}{self.imported}",
            f"  {'imported, not sent (old):':<28}{self.imported_not_sent}",
        ]
        refused = self.refused
        lines.append(f"  {'refused:':<28}{len(refused)}")
        where = (lambda item: f" of {item['file']}") if len(self.files) > 1 else (lambda item: "")
        lines += [f"    row {item['row']}{where(item)}: {item['reason']}" for item in refused[:_LISTED]]
        if len(refused) > _LISTED:
            lines.append(f"    ... and {len(refused) - _LISTED} more (--json lists them all)")
        if self.in_store_only is not None:
            lines.append(
                f"  {'in the store, not in files:':<28}{len(self.in_store_only)} (leads of the files' offers "
                "and days that no row accounts for: a test lead, or another app writing to the endpoint?)"
            )
            lines += [
                f"    {item['leadId']} received {item['receivedAt']} via {item['channel']}, {item['offer']}"
                + "".join(f" [{flag}]" for flag in ("erased", "test") if item[flag])
                for item in self.in_store_only[:_LISTED]
            ]
            if len(self.in_store_only) > _LISTED:
                lines.append(f"    ... and {len(self.in_store_only) - _LISTED} more (--json lists them all)")
        return "\n".join(lines)


def import_file(path: str | Path, **options: Any) -> ImportReport:
    """:func:`import_files` of one file."""
    return import_files([path], **options)


def import_files(
    paths: Iterable[str | Path],
    *,
    format: str = "auto",  # noqa: A002
    columns: dict[str, str] | None = None,
    encoding: str | None = None,
    dry_run: bool = False,
    deliver: bool = False,
    table_name: str | None = None,
    settings: Settings | None = None,
    progress: Callable[[int], None] | None = None,
    preview_rows: int = 5,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> ImportReport:
    """Read ``paths`` and take their rows in; the reconciliation report says what became of each
    row (``on_outcome`` is told of each as it is decided), and what the store has that they lack.
    Every file is opened and its header read before anything is stored, so a file that cannot be
    used (or a ``--column`` no file has) stops the run before it changed anything."""
    settings = settings or get_settings()
    paths = [Path(path) for path in paths]
    sources = [open_source(path, format, columns, encoding, lenient=len(paths) > 1) for path in paths]
    for name, header in (columns or {}).items():
        if len(sources) > 1 and not any(source.mapping and name in source.mapping for source in sources):
            raise ImportError_(f"--column {name}={header}: none of the files has such a column")
    report = ImportReport(dry_run=dry_run)
    from leads.store.lead_store import LeadStore

    # A dry run reads the store as the real run does, through take_in, and writes no lead.
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    matcher = Matcher(store)
    if key_changed(store.checkpoints):
        sources[0].warnings = [
            *(sources[0].warnings or []),
            f"{SETTING} is not the key this store's leads were "
            "stored with: rows of leads stored before it changed are not recognised (see "
            "python -m leads check)",
        ]
    seen = _Seen()
    now = datetime.now(UTC)
    for source in sources:
        part, before = _report_of(source), report.read
        report.files.append(part)
        told = (lambda rows, before=before: progress(before + rows)) if progress else None
        _import_source(
            source,
            part,
            store,
            matcher,
            settings,
            now,
            deliver,
            dry_run,
            table_name,
            seen,
            told,
            preview_rows,
            on_outcome,
        )
        if part.undated and source.format in ("jsonl", "json", "table-csv"):
            part.warnings.append(
                f"{part.undated} rows have no created time: they are matched against the leads of "
                "the last 6 months (as long as Partner Center keeps them), and new ones are stored "
                "unsent unless --deliver"
            )
    if seen.rows:
        report.in_store_only = in_store_only(store, seen, now)
    return report


def _report_of(source: Source) -> FileReport:
    mapping = None
    if source.mapping is not None and source.headers is not None:
        mapping = {name: source.headers[index] for name, index in source.mapping.items()}
    delimiter = source.delimiter if source.format in ("table-csv", "partner-center") else None
    return FileReport(
        str(source.path),
        source.format,
        source.encoding_note,
        delimiter,
        mapping=mapping,
        warnings=list(source.warnings or []),
    )


@dataclass
class _Seen:
    """What the rows of a run account for, to tell what the store has that they do not."""

    rows: int = 0
    accounted: set[str] = field(default_factory=set)  # lead ids matched or stored
    offers: set[str] = field(default_factory=set)
    first: datetime | None = None
    last: datetime | None = None
    undated: bool = False
    planned: set[str] = field(default_factory=set)  # a dry run's new leads

    def add(self, row: Row, outcome: Outcome) -> None:
        self.rows += 1
        self.accounted.update(lead_id for lead_id in (outcome.lead_id, outcome.matched) if lead_id)
        self.offers.update(offer.casefold() for offer in (row.lead.offer_title, row.lead.offer_id) if offer)
        if not row.dated:
            self.undated = True
            return
        at = row.lead.received_at
        self.first = at if self.first is None else min(self.first, at)
        self.last = at if self.last is None else max(self.last, at)


def _import_source(
    source: Source,
    part: FileReport,
    store: LeadStore,
    matcher: Matcher,
    settings: Settings,
    now: datetime,
    deliver: bool,
    dry_run: bool,
    table_name: str | None,
    seen: _Seen,
    progress: Callable[[int], None] | None,
    preview_rows: int,
    on_outcome: Callable[[Outcome], None] | None,
) -> None:
    """Take in the rows of one file a window of :data:`WINDOW` rows at a time (memory stays
    flat), each window's new leads stored together (:meth:`LeadStore.add_many`), all of them done
    before the next file begins (so that a row of the next file that repeats one of this file
    finds it)."""
    from concurrent.futures import ThreadPoolExecutor

    table = table_name or settings.marketplace_table_name
    previewed = {item["row"]: item for item in part.preview}

    def tally(row: Row | None, outcome: Outcome) -> None:
        if dry_run and outcome.state.startswith("imported"):
            if outcome.lead_id in seen.planned:  # the same row twice in one window: the real run stores one
                outcome = replace(outcome, state="already-received", matched=outcome.lead_id)
            seen.planned.add(outcome.lead_id)
        if row is not None and row.number in previewed:
            as_ = f", as {outcome.matched}" if outcome.matched else ""
            previewed[row.number]["outcome"] = outcome.state + as_
        part.count(outcome)
        if row is not None:
            seen.add(row, outcome)
        if on_outcome:
            on_outcome(outcome)

    def take_window(window: list[Row]) -> None:
        for row, outcome in zip(
            window,
            take_in_many(
                store,
                window,
                settings,
                deliver=deliver,
                matcher=matcher,
                now=now,
                file=part.file,
                dry_run=dry_run,
                pool=pool,
            ),
            strict=True,
        ):
            tally(row, outcome)

    window: list[Row] = []
    with ThreadPoolExecutor(WORKERS) as pool:
        for item in source.rows(table):
            part.read += 1
            if progress:
                progress(part.read)
            if isinstance(item, Refused):
                tally(None, Outcome(part.file, item.number, "refused", reason=item.reason))
                continue
            part.undated += not item.dated
            if dry_run and len(part.preview) < preview_rows:
                previewed[item.number] = {"row": item.number, "lead": _preview(item.lead)}
                part.preview.append(previewed[item.number])
            window.append(item)
            if len(window) >= WINDOW:
                take_window(window)
                window = []
        if window:
            take_window(window)


@dataclass
class _New:
    """A row that is no lead the store has: to store, routed (``held``: its deliveries skipped)."""

    lead: Lead
    deliveries: dict[str, Route]
    held: bool


def take_in(
    store: LeadStore,
    row: Row,
    settings: Settings,
    *,
    deliver: bool = False,
    matcher: Matcher | None = None,
    now: datetime | None = None,
    file: str = "",
    dry_run: bool = False,
) -> Outcome:
    """Store one imported lead unless it was received already or erased; route it, or hold it if
    old or undated. With ``dry_run``, the same decision, with nothing stored or sent."""
    (outcome,) = take_in_many(
        store, [row], settings, deliver=deliver, matcher=matcher, now=now, file=file, dry_run=dry_run
    )
    return outcome


def take_in_many(
    store: LeadStore,
    rows: list[Row],
    settings: Settings,
    *,
    deliver: bool = False,
    matcher: Matcher | None = None,
    now: datetime | None = None,
    file: str = "",
    dry_run: bool = False,
    pool: Executor | None = None,
) -> list[Outcome]:
    """:func:`take_in` for a window of rows: each matched (in ``pool``), then the new ones stored
    together, then their deliveries queued. A storage outage raises."""
    from leads.delivery.deliver import enqueue

    matcher = matcher or Matcher(store)
    run = pool.map if pool else map

    def decide(row: Row) -> Outcome | _New:
        return _decide(store, row, settings, deliver=deliver, matcher=matcher, now=now, file=file, dry_run=dry_run)

    decided = list(run(carried(decide), rows))
    new = [(row, item) for row, item in zip(rows, decided, strict=True) if isinstance(item, _New)]
    stored = store.add_many([(item.lead, item.deliveries) for _, item in new], pool=pool) if new else []

    def finish(row: Row, item: _New, outcome: Stored | Exception) -> Outcome:
        lead, offer = item.lead, item.lead.offer_title or item.lead.offer_id
        if isinstance(outcome, ValueError):  # more than a lead row can hold
            return Outcome(file, row.number, "refused", reason=str(outcome))
        if isinstance(outcome, Exception):
            raise outcome
        if outcome.duplicate:
            return Outcome(
                file,
                row.number,
                "erased" if outcome.erased else "already-received",
                lead.lead_id,
                outcome.lead_id,
                offer=offer,
            )
        matcher.remember(lead)
        if not item.held:
            enqueue(lead.lead_id, item.deliveries, settings)
        return Outcome(file, row.number, "imported-not-sent" if item.held else "imported", lead.lead_id, offer=offer)

    finished = iter(list(run(carried(finish), [row for row, _ in new], [item for _, item in new], stored)))
    return [next(finished) if isinstance(item, _New) else item for item in decided]


def _decide(
    store: LeadStore,
    row: Row,
    settings: Settings,
    *,
    deliver: bool,
    matcher: Matcher,
    now: datetime | None,
    file: str,
    dry_run: bool,
) -> Outcome | _New:
    """What a row is: received already, erased, or new (routed, or held if old or undated); a dry
    run's new lead is remembered as if stored."""
    from leads.destinations.routing import hold_backfill, hold_undated, plan

    lead = row.lead
    offer = lead.offer_title or lead.offer_id
    match = matcher.find(lead, dated=row.dated, now=now)
    if match:
        return Outcome(
            file, row.number, "erased" if match.erased else "already-received", lead.lead_id, match.lead_id, offer=offer
        )
    if row.plain_id and not identity_keys(lead) and (stored := matcher.stored_state(row.plain_id)) is not None:
        # Imported by a version before LEADS_ID_KEY, under the plain digest of the same row; one
        # that names someone has an identity row, which the matcher finds in either form.
        return Outcome(
            file, row.number, "erased" if stored else "already-received", lead.lead_id, row.plain_id, offer=offer
        )
    deliveries = plan(lead, settings)
    if not deliver:
        deliveries = hold_backfill(lead, deliveries, settings) if row.dated else hold_undated(lead, deliveries)
    held = any(route.skip_reason for route in deliveries.values())
    if dry_run:  # what store.add would find: a lead under this id (imported before, or the poll's row)
        if (stored_erased := matcher.stored_state(lead.lead_id)) is not None:
            return Outcome(
                file,
                row.number,
                "erased" if stored_erased else "already-received",
                lead.lead_id,
                lead.lead_id,
                offer=offer,
            )
        matcher.plan(lead)
        return Outcome(file, row.number, "imported-not-sent" if held else "imported", lead.lead_id, offer=offer)
    return _New(lead, deliveries, held)


# --- reconciliation the other way ----------------------------------------------------------------


def in_store_only(store: LeadStore, seen: _Seen, now: datetime, page: int = 200) -> list[dict[str, Any]]:
    """The leads the store has for the files' offers, received on the files' days (over the last 6
    months for rows without a date), that no row accounts for: the timeline of those days, and
    each lead's look-up columns (no personal data) read by key."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    from azure.core.exceptions import ResourceNotFoundError

    from leads.store.index import cursor_of
    from leads.store.rows import LEAD_ROW

    since = now - UNDATED_WINDOW if seen.undated else None
    if seen.first is not None:
        since = min(since or seen.first, seen.first)
    until = now + MATCH_WINDOW if seen.undated else None
    if seen.last is not None:
        until = max(until or seen.last, seen.last)
    if since is None or until is None:
        return []
    since = since.replace(hour=0, minute=0, second=0, microsecond=0)
    until = until.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    columns = ["ReceivedAt", "Channel", "OfferTitle", "OfferId", "IsTest", "ErasedAt"]

    def look_up(lead_id: str) -> dict[str, Any] | None:
        try:
            return dict(store.leads.get_entity(lead_id, LEAD_ROW, select=columns))
        except ResourceNotFoundError:
            return None

    found = []
    entries = (
        entry
        for entry in store.index.newest(since, until, None, page)
        if not entry.rejected and entry.lead_id not in seen.accounted
    )
    with ThreadPoolExecutor(8) as pool:
        while chunk := list(islice(entries, page)):
            for entry, row in zip(chunk, pool.map(look_up, [entry.lead_id for entry in chunk]), strict=True):
                if row is None or entry.row_key != cursor_of(entry.lead_id, row["ReceivedAt"]):
                    continue  # an entry left over: its lead is not there, or was stored under another time
                offers = {(row.get(name) or "").casefold() for name in ("OfferTitle", "OfferId")} - {""}
                if seen.offers and not offers & seen.offers:
                    continue
                found.append(
                    {
                        "leadId": entry.lead_id,
                        "receivedAt": row["ReceivedAt"].isoformat(),
                        "channel": row.get("Channel") or "",
                        "offer": row.get("OfferTitle") or row.get("OfferId"),
                        "erased": row.get("ErasedAt") is not None,
                        "test": bool(row.get("IsTest")),
                    }
                )
    return found


# --- the report as CSV -----------------------------------------------------------------------------

CSV_COLUMNS = ("file", "row", "outcome", "leadId", "matched", "offer", "reason")
# A cell a spreadsheet would run as a formula (OWASP's "CSV injection"): written with a leading '.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """A value as a cell of a CSV file the app writes: text that starts as a formula does is
    kept as text by a leading apostrophe, as spreadsheets read it."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


class CsvReport:
    """The per-row outcomes, written as they are decided, then the leads only the store has."""

    def __init__(self, stream: TextIO) -> None:
        self.writer = csv.writer(stream, quoting=csv.QUOTE_ALL)
        self.writer.writerow(CSV_COLUMNS)

    def __call__(self, outcome: Outcome) -> None:
        self._write(
            outcome.file, outcome.row, outcome.state, outcome.lead_id, outcome.matched, outcome.offer, outcome.reason
        )

    def in_store_only(self, leads: list[dict[str, Any]]) -> None:
        for lead in leads:
            state = "in-store-not-in-files" + "".join(f" ({flag})" for flag in ("erased", "test") if lead[flag])
            self._write(
                "", "", state, lead["leadId"], "", lead["offer"], f"received {lead['receivedAt']} via {lead['channel']}"
            )

    def _write(self, *values: Any) -> None:
        self.writer.writerow([csv_cell(value) for value in values])


def _preview(lead: Lead) -> dict[str, Any]:
    body = lead.to_dict()
    body.pop("raw", None)
    return body


class Progress:
    """A one-line progress count on a terminal (standard error), every ``every`` rows."""

    def __init__(self, stream=sys.stderr, every: int = 100) -> None:
        self.stream, self.every = stream, every
        self.active = hasattr(stream, "isatty") and stream.isatty()

    def __call__(self, rows: int) -> None:
        if self.active and rows % self.every == 0:
            self.stream.write(f"\r{rows} rows read…")
            self.stream.flush()

    def done(self) -> None:
        if self.active:
            self.stream.write("\r" + " " * 40 + "\r")
            self.stream.flush()
