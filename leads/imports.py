"""``python -m leads import FILE``: recover leads the marketplace never delivered.

The marketplace hands a lead over once. When a destination was down, Microsoft's answer is to
download the leads from Partner Center (Referrals → Leads → Download: the last six months, up to
5,000 rows) and enter them again by hand. This reads such a file, or one in the marketplace's own
formats, and takes each row in as a lead with channel ``import``:

- ``jsonl`` / ``json``: JSON lines, or a JSON array, of HTTPS-endpoint bodies as the marketplace
  POSTs them;
- ``table-csv``: the marketplace table exported as CSV by Azure Storage Explorer (PartitionKey,
  RowKey, Timestamp, the lead columns, ``CustomerInfo`` as a JSON string; ``<name>@type`` columns
  are ignored). A row keeps the id the table poll gives it, so one the poll took in is found;
- ``partner-center``: the CSV of Partner Center's Leads page. Its column names are not documented,
  so headers are matched to lead fields ignoring case, spaces and punctuation, with
  ``--column FIELD=HEADER`` to override; ``--dry-run`` shows the mapping chosen.

A row that matches a lead already stored (the same email, or name and company when there is no
email, about the same offer, received within a day of it: :mod:`leads.identities`) is reported as
already received and not stored again, and a row imported before has the same id again, so
importing a file twice stores nothing the second time. New leads follow routing, except that
leads older than ``LEADS_BACKFILL_DAYS`` are stored without being sent unless ``deliver`` is
asked for. Rows are read and stored one at a time: memory stays flat whatever the file's size.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .model import Lead
from .normalise import LeadValidationError, from_http_body, from_table_entity, table_lead_id
from .settings import Settings, get_settings

FORMATS = ("jsonl", "json", "table-csv", "partner-center")
WORKERS, WINDOW = 8, 64

# Lead fields a Partner Center export can fill, and the header names (case, spaces and punctuation
# ignored) that mean them. Partner Center does not document its columns: these are the names its
# Leads page shows and the ones other exports use; --column covers the rest.
PARTNER_CENTER_FIELDS: dict[str, tuple[str, ...]] = {
    "firstName": ("firstname", "givenname", "customerfirstname", "contactfirstname"),
    "lastName": ("lastname", "surname", "familyname", "customerlastname", "contactlastname"),
    "email": ("email", "emailaddress", "customeremail", "contactemail", "businessemail", "workemail"),
    "phone": ("phone", "phonenumber", "telephone", "customerphone", "contactphone", "businessphone"),
    "company": ("company", "companyname", "organization", "organisation", "customercompany", "account"),
    "title": ("title", "jobtitle", "customertitle", "role"),
    "country": ("country", "countryregion", "countryorregion", "customercountry", "region"),
    "offer": ("offer", "offername", "offertitle", "offerdisplayname", "product", "productname", "listing"),
    "offerId": ("offerid", "productid"),
    "source": ("leadsource", "source", "marketplace", "storefront"),
    "action": ("action", "actioncode", "leadaction", "actiontaken", "leadtype"),
    "createdAt": ("createddate", "created", "createdon", "createdtime", "createdat", "date", "leaddate",
                  "datecreated", "timestamp", "receiveddate"),  # fmt: skip
    "description": ("description", "comments", "comment", "notes", "message", "details"),
}


class ImportError_(ValueError):  # noqa: N801 - "ImportError" is Python's own
    """The file or an option cannot be used; the message says which and why."""


@dataclass
class Outcome:
    row: int
    state: str  # imported, imported-not-sent, already-received, refused
    lead_id: str | None = None
    matched: str | None = None  # the stored lead an already-received row matched


@dataclass
class ImportReport:
    file: str
    format: str
    read: int = 0
    already_received: int = 0
    imported: int = 0
    imported_not_sent: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    mapping: dict[str, str] | None = None
    preview: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        body = {"file": self.file, "format": self.format, "read": self.read, "alreadyReceived": self.already_received,
                "importedAndQueued": self.imported, "importedNotSent": self.imported_not_sent,
                "refused": self.refused, "dryRun": self.dry_run}  # fmt: skip
        if self.mapping is not None:
            body["mapping"] = self.mapping
        if self.dry_run:
            body["preview"] = self.preview
        return body

    def text(self) -> str:
        lines = [f"{self.file} ({self.format}): {self.read} rows read"]
        if self.mapping is not None:
            lines.append("columns: " + ", ".join(f"{field} ← {header!r}" for field, header in self.mapping.items()))
        if self.dry_run:
            lines.append("dry run: nothing was stored; the first rows read as:")
            lines += [f"  row {item['row']} ({item.get('outcome')}): {json.dumps(item['lead'], ensure_ascii=False)}"
                      for item in self.preview]  # fmt: skip
            lines.append("a real run would take them in as:")
        lines += [f"  already received:           {self.already_received}",
                  f"  imported and queued:        {self.imported}",
                  f"  imported, not sent (old):   {self.imported_not_sent}"]  # fmt: skip
        lines.append(f"  refused:                    {len(self.refused)}")
        lines += [f"    row {item['row']}: {item['reason']}" for item in self.refused[:50]]
        if len(self.refused) > 50:
            lines.append(f"    ... and {len(self.refused) - 50} more (--json lists them all)")
        return "\n".join(lines)


def import_file(path: str | Path, *, format: str = "auto", columns: dict[str, str] | None = None,  # noqa: A002
                dry_run: bool = False, deliver: bool = False, table_name: str | None = None,
                settings: Settings | None = None, progress: Callable[[int], None] | None = None,
                preview_rows: int = 5) -> ImportReport:  # fmt: skip
    """Read ``path`` and take its rows in; the reconciliation report says what became of each."""
    settings = settings or get_settings()
    path = Path(path)
    if not path.is_file():
        raise ImportError_(f"{path} is not a file")
    chosen = detect_format(path) if format == "auto" else format
    if chosen not in FORMATS:
        raise ImportError_(f"unknown format {format!r}; one of: auto, {', '.join(FORMATS)}")
    report = ImportReport(file=str(path), format=chosen, dry_run=dry_run)
    table = table_name or settings.marketplace_table_name
    leads = _read(path, chosen, columns or {}, table, report)
    from .store import LeadStore

    # A dry run reads the store as the real run does, through take_in, and writes no lead.
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    # Rows are stored by a few threads, at most WINDOW rows in flight: memory stays flat.
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    pending: set = set()
    matcher = store.identities.matcher()
    planned: set[str] = set()  # a dry run's new ids: the same row again in the file is then received already

    def tally(done) -> None:
        for future in done:
            outcome = future.result()
            if dry_run:
                if outcome.state != "already-received" and outcome.lead_id in planned:
                    outcome = Outcome(outcome.row, "already-received", outcome.lead_id, matched=outcome.lead_id)
                planned.add(outcome.lead_id)
                for item in report.preview:
                    if item["row"] == outcome.row:
                        item["outcome"] = outcome.state + (f", as {outcome.matched}" if outcome.matched else "")
            if outcome.state == "already-received":
                report.already_received += 1
            elif outcome.state == "imported":
                report.imported += 1
            elif outcome.state == "imported-not-sent":
                report.imported_not_sent += 1

    with ThreadPoolExecutor(WORKERS) as pool:
        for number, lead_or_error in leads:
            report.read += 1
            if progress:
                progress(report.read)
            if isinstance(lead_or_error, str):
                report.refused.append({"row": number, "reason": lead_or_error})
                continue
            if dry_run and len(report.preview) < preview_rows:
                report.preview.append({"row": number, "lead": _preview(lead_or_error)})
            pending.add(pool.submit(take_in, store, lead_or_error, number, settings, deliver=deliver, matcher=matcher,
                                    dry_run=dry_run))  # fmt: skip
            if len(pending) >= WINDOW:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                tally(done)
        tally(wait(pending).done)
    return report


def take_in(store, lead: Lead, row: int, settings: Settings, *, deliver: bool = False, matcher=None,
            dry_run: bool = False) -> Outcome:  # fmt: skip
    """Store one imported lead unless it was received already; route it, or hold it if old. With
    ``dry_run``, the same decision, with nothing stored or sent."""
    from .deliver import enqueue
    from .routing import hold_backfill, plan

    matched = (matcher or store.identities.matcher()).find(lead)
    if matched:
        return Outcome(row, "already-received", lead.lead_id, matched=matched)
    deliveries = plan(lead, settings)
    if not deliver:
        deliveries = hold_backfill(lead, deliveries, settings)
    old = any(route.skip_reason for route in deliveries.values())
    if dry_run:  # what store.add would find: a lead under this id (imported before, or the poll's row)
        if store.identities.exists(lead.lead_id):
            return Outcome(row, "already-received", lead.lead_id, matched=lead.lead_id)
        return Outcome(row, "imported-not-sent" if old else "imported", lead.lead_id)
    stored = store.add(lead, deliveries)
    if stored.duplicate:
        return Outcome(row, "already-received", lead.lead_id, matched=stored.lead_id)
    if not old:
        enqueue(lead.lead_id, deliveries, settings)
    return Outcome(row, "imported-not-sent" if old else "imported", lead.lead_id)


# --- reading ------------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """The format of a file, from its name and first bytes."""
    with path.open("rb") as handle:
        head = handle.read(4096).decode("utf-8-sig", errors="replace")
    stripped = head.lstrip()
    if path.suffix.lower() in (".jsonl", ".ndjson") or (stripped.startswith("{") and path.suffix.lower() != ".csv"):
        return "jsonl"
    if stripped.startswith("["):
        return "json"
    first_line = next(csv.reader(io.StringIO(stripped.splitlines()[0] if stripped else "")), [])
    headers = {_squash(name) for name in first_line}
    if {"partitionkey", "rowkey"} <= headers:
        return "table-csv"
    if path.suffix.lower() == ".csv" or len(first_line) > 1:
        return "partner-center"
    raise ImportError_(f"cannot tell the format of {path}: give --format ({', '.join(FORMATS)})")


def _read(path: Path, fmt: str, columns: dict[str, str], table: str,
          report: ImportReport) -> Iterator[tuple[int, Lead | str]]:  # fmt: skip
    if fmt == "jsonl":
        return _from_bodies(_json_lines(path))
    if fmt == "json":
        return _from_bodies(_json_array(path))
    if fmt == "table-csv":
        return _from_table_csv(path, table)
    return _from_partner_center(path, columns, report)


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as exc:
                yield number, ImportError_(f"not JSON: {exc}")


def _json_array(path: Path, chunk: int = 1 << 16) -> Iterator[tuple[int, Any]]:
    """The items of a JSON array, one at a time, without reading the whole file."""
    decoder = json.JSONDecoder()
    buffer, number, started = "", 0, False
    with path.open(encoding="utf-8-sig") as handle:
        while True:
            data = handle.read(chunk)
            buffer += data
            while True:
                buffer = buffer.lstrip()
                if not started:
                    if not buffer:
                        break
                    if buffer[0] != "[":
                        raise ImportError_(f"{path} does not hold a JSON array")
                    buffer, started = buffer[1:], True
                    continue
                if buffer.startswith(","):
                    buffer = buffer[1:]
                    continue
                if buffer.startswith("]") or not buffer:
                    break
                try:
                    item, end = decoder.raw_decode(buffer)
                except ValueError as exc:
                    if data:  # the item may continue in the next chunk
                        break
                    raise ImportError_(f"item {number + 1} of the JSON array is not valid JSON: {exc}") from None
                number += 1
                buffer = buffer[end:]
                yield number, item
            if not data:
                return


def _from_bodies(items: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, Lead | str]]:
    for number, body in items:
        if isinstance(body, ImportError_):
            yield number, str(body)
            continue
        try:
            lead = from_http_body(body, received_at=_created(body))
        except LeadValidationError as exc:
            yield number, str(exc)
            continue
        yield number, _as_import(lead, json.dumps(body, sort_keys=True, ensure_ascii=False, default=str))


def _from_table_csv(path: Path, table: str) -> Iterator[tuple[int, Lead | str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        for number, row in enumerate(reader, 2):  # row 1 is the header
            entity = {name: value for name, value in row.items() if name and not name.endswith("@type")}
            try:
                received = _parse_time(entity.get("Timestamp") or entity.get("CreatedTime"))
                lead = from_table_entity(entity, table, received_at=received)
            except LeadValidationError as exc:
                yield number, str(exc)
                continue
            # The id the table poll gives this row: a row it already took in is the same lead.
            yield number, lead.model_copy(update={"channel": "import",
                                                  "lead_id": table_lead_id(table, entity["PartitionKey"],
                                                                           entity["RowKey"])})  # fmt: skip


def _from_partner_center(path: Path, columns: dict[str, str],
                         report: ImportReport) -> Iterator[tuple[int, Lead | str]]:  # fmt: skip
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            headers = next(reader)
        except StopIteration:
            raise ImportError_(f"{path} is empty") from None
        mapping = map_columns(headers, columns)
        report.mapping = {name: headers[index] for name, index in mapping.items()}
        if not any(name in mapping for name in ("email", "lastName", "company")):
            raise ImportError_(f"no column of {path} reads as the customer's email, last name or company; headers: "
                               f"{headers}; name them with --column email=HEADER")  # fmt: skip
        for number, values in enumerate(reader, 2):
            if not any(value.strip() for value in values):
                continue
            row = {name: values[index].strip() for name, index in mapping.items() if index < len(values)}
            try:
                yield number, _partner_center_lead(row)
            except LeadValidationError as exc:
                yield number, str(exc)


def map_columns(headers: list[str], overrides: dict[str, str]) -> dict[str, int]:
    """Lead field → column index: the ``--column`` overrides, then header names matched ignoring
    case, spaces and punctuation."""
    squashed = [_squash(header) for header in headers]
    mapping: dict[str, int] = {}
    for name, header in overrides.items():
        if name not in PARTNER_CENTER_FIELDS:
            raise ImportError_(f"--column {name}={header}: unknown field; fields: {', '.join(PARTNER_CENTER_FIELDS)}")
        if _squash(header) not in squashed:
            raise ImportError_(f"--column {name}={header}: the file has no such column; headers: {headers}")
        mapping[name] = squashed.index(_squash(header))
    taken = set(mapping.values())
    for name, names in PARTNER_CENTER_FIELDS.items():
        if name in mapping:
            continue
        for candidate in names:
            if candidate in squashed and squashed.index(candidate) not in taken:
                mapping[name] = squashed.index(candidate)
                taken.add(mapping[name])
                break
    return mapping


def _partner_center_lead(row: dict[str, str]) -> Lead:
    source, action = row.get("source") or "", row.get("action") or ""
    body = {
        "UserDetails": {"FirstName": row.get("firstName"), "LastName": row.get("lastName"), "Email": row.get("email"),
                        "Phone": row.get("phone"), "Country": row.get("country"), "Company": row.get("company"),
                        "Title": row.get("title")},  # fmt: skip
        "LeadSource": source + (f"-{action}" if action and "-" not in source else "") +
        (f"|{row['offerId']}" if row.get("offerId") else ""),
        "ActionCode": action,
        "OfferTitle": row.get("offer"),
        "Description": row.get("description"),
    }
    received = _parse_time(row.get("createdAt"))
    if row.get("createdAt") and received is None:
        raise LeadValidationError(f"the created date {row['createdAt']!r} is not a date")
    lead = from_http_body(body, received_at=received)
    return _as_import(lead, json.dumps(row, sort_keys=True, ensure_ascii=False))


def _as_import(lead: Lead, identity: str) -> Lead:
    """The lead as imported: channel ``import``, and an id from the row itself, so the same row
    imported again is the same lead."""
    lead_id = "i" + hashlib.sha256(identity.encode()).hexdigest()[:24]
    return lead.model_copy(update={"channel": "import", "lead_id": lead_id})


def _created(body: Any) -> datetime | None:
    if isinstance(body, dict):
        for key, value in body.items():
            if _squash(key) in ("createdtime", "createddate", "createdat", "timestamp"):
                return _parse_time(value)
    return None


_DATE_FORMATS = ("%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y", "%d.%m.%Y %H:%M",
                 "%d.%m.%Y", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")  # fmt: skip


def _parse_time(value: Any) -> datetime | None:
    """A time as the marketplace, Storage Explorer or Partner Center write it; UTC when no zone is given."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    iso = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        parsed = None
        for pattern in _DATE_FORMATS:
            try:
                parsed = datetime.strptime(text, pattern)
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.casefold())


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
