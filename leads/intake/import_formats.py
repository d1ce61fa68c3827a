"""Reading the files ``import`` takes (:mod:`leads.intake.imports`), as people have them.

**Encodings.** Partner Center downloads UTF-8; Excel saves it again as UTF-8 with a BOM, as
"Unicode Text" (UTF-16 with a BOM), or as "CSV (Comma delimited)" in the machine's ANSI code page
(Windows-1252 in Western locales), and with ``;`` between fields where the decimal mark is a comma.
:func:`detect_encoding` reads a BOM if there is one (UTF-8, UTF-16 LE or BE), else tells UTF-16
without one by its NUL bytes, else decodes the whole file as UTF-8 and then as Windows-1252 (a
trial decode, streamed: memory stays flat), and only when both fail asks charset-normalizer
(which on a few accented names guesses Windows-1250 as readily as 1252, so it is the last
resort). ``--encoding`` overrides it. The report says what was read.

**Rows.** A CSV file is split into records by its quoting (a quoted field may hold line breaks),
each with the line it starts on, so that a bad row is refused with its line number and the rest
goes on: bytes that are not text in the file's encoding, a field over the CSV module's limit
(128 KiB), a record over :data:`MAX_RECORD_CHARS`, a quote never closed. A cell is kept as the
text it is, whatever it starts with (``=``, ``+``, ``-``, ``@``: see ``--csv`` in
:mod:`leads.intake.imports` for how such text is written back out).
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from leads.core.model import Lead
from leads.core.normalise import LeadValidationError, from_http_body, from_table_entity, table_lead_id
from leads.core.pseudonyms import digest, plain

FORMATS = ("jsonl", "json", "table-csv", "partner-center")
MAX_RECORD_CHARS = 1 << 20
_PIECE = 1 << 16  # a physical line is read this much at a time, so a line of any length costs a bounded buffer
# What an undecodable byte reads as: a noncharacter, never in text people exchange, so a row holding
# one is a row with bytes that are not text in the file's encoding.
_UNDECODABLE = "\ufdd0"
codecs.register_error("leads-undecodable", lambda error: (_UNDECODABLE, error.end))

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
    "createdAt": (
        "createddate",
        "created",
        "createdon",
        "createdtime",
        "createdat",
        "date",
        "leaddate",
        "datecreated",
        "timestamp",
        "receiveddate",
    ),
    "description": ("description", "comments", "comment", "notes", "message", "details"),
}
# Words of a header that may hold a date the mapping did not take: named in a warning.
_DATE_WORDS = ("date", "created", "time", "when", "received", "submitted")


class ImportError_(ValueError):  # noqa: N801 - "ImportError" is Python's own
    """The file or an option cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Row:
    """A row of a file as a lead: where it starts (a line, or a JSON array's item number), whether
    it gave a created date, and the id a version before ``LEADS_ID_KEY`` gave it (a plain digest),
    by which a row imported then is still found."""

    number: int
    lead: Lead
    dated: bool = True
    plain_id: str | None = None


@dataclass(frozen=True)
class Refused:
    number: int
    reason: str


@dataclass
class Source:
    """One file, read as far as its header: what it is and how it is read."""

    path: Path
    format: str
    encoding: str
    encoding_note: str
    delimiter: str = ","
    headers: list[str] | None = None
    skip: int = 1  # records before the rows: the header, and Excel's "sep=" line if there is one
    mapping: dict[str, int] | None = None
    warnings: list[str] | None = None

    def rows(self, table: str) -> Iterator[Row | Refused]:
        if self.format == "jsonl":
            return _from_bodies(self._json_lines())
        if self.format == "json":
            return _from_bodies(self._json_array())
        if self.format == "table-csv":
            return self._from_table_csv(table)
        return self._from_partner_center()

    # --- JSON ------------------------------------------------------------------------------------

    def _json_lines(self) -> Iterator[tuple[int, Any]]:
        for number, line, error in _lines(self.path, self.encoding):
            if error:
                yield number, ImportError_(error)
            elif line.strip():
                try:
                    yield number, json.loads(line)
                except ValueError as exc:
                    yield number, ImportError_(f"not JSON: {exc}")

    def _json_array(self, chunk: int = 1 << 16) -> Iterator[tuple[int, Any]]:
        """The items of a JSON array, one at a time, without reading the whole file."""
        decoder = json.JSONDecoder()
        buffer, number, started = "", 0, False
        with self.path.open(encoding=self.encoding, errors="leads-undecodable") as handle:
            while True:
                data = handle.read(chunk)
                buffer += data
                while True:
                    buffer = buffer.lstrip()
                    if not started:
                        if not buffer:
                            break
                        if buffer[0] != "[":
                            raise ImportError_(f"{self.path} does not hold a JSON array")
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

    # --- CSV --------------------------------------------------------------------------------------

    def _records(self) -> Iterator[tuple[int, list[str]] | Refused]:
        """(line, cells) of each record after the header, but blank ones, or why it cannot be read."""
        for number, text, error in islice(_records(self.path, self.encoding), self.skip, None):
            cells = error or _cells(text, self.delimiter)
            if isinstance(cells, str):
                yield Refused(number, cells)
            elif any(cell.strip() for cell in cells):
                yield number, cells

    def _from_table_csv(self, table: str) -> Iterator[Row | Refused]:
        headers = self.headers or []
        for record in self._records():
            if isinstance(record, Refused):
                yield record
                continue
            number, cells = record
            entity = {
                name: value for name, value in zip(headers, cells, strict=False) if name and not name.endswith("@type")
            }
            try:
                received = parse_time(entity.get("Timestamp") or entity.get("CreatedTime"))
                lead = from_table_entity(entity, table, received_at=received)
            except LeadValidationError as exc:
                yield Refused(number, str(exc))
                continue
            # The id the table poll gives this row: a row it already took in is the same lead.
            lead_id = table_lead_id(table, entity["PartitionKey"], entity["RowKey"])
            yield Row(number, lead.model_copy(update={"channel": "import", "lead_id": lead_id}), received is not None)

    def _from_partner_center(self) -> Iterator[Row | Refused]:
        mapping = self.mapping or {}
        for record in self._records():
            if isinstance(record, Refused):
                yield record
                continue
            number, cells = record
            try:
                yield _partner_center_row(
                    number, {name: cells[index].strip() for name, index in mapping.items() if index < len(cells)}
                )
            except LeadValidationError as exc:
                yield Refused(number, str(exc))


def open_source(
    path: Path,
    format: str = "auto",
    columns: dict[str, str] | None = None,  # noqa: A002
    encoding: str | None = None,
    lenient: bool = False,
) -> Source:
    """``path`` read as far as its header: its encoding, format, delimiter and (Partner Center)
    column mapping. Raises :class:`ImportError_` for what makes the file unusable. With
    ``lenient`` (one of several files), a ``--column`` naming a header this file lacks is a warning."""
    if not path.is_file():
        raise ImportError_(f"{path} is not a file")
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ImportError_(f"--encoding {encoding}: no such encoding (e.g. utf-8, utf-16, cp1252)") from None
        codec, note = encoding, f"{encoding} (as given)"
    else:
        codec, note = detect_encoding(path)
    header = next(_records(path, codec), None)
    head_text = header[1] if header and header[1] is not None else ""
    chosen = detect_format(path, head_text) if format == "auto" else format
    if chosen not in FORMATS:
        raise ImportError_(f"unknown format {format!r}; one of: auto, {', '.join(FORMATS)}")
    source = Source(path, chosen, codec, note, warnings=[])
    if chosen in ("jsonl", "json"):
        return source
    if not head_text.strip():
        raise ImportError_(f"{path} is empty")
    if re.fullmatch(r"sep=.\r?\n?", head_text):  # Excel's hint line naming the delimiter
        source.delimiter, source.skip = head_text[4], 2
        second = next(islice(_records(path, codec), 1, 2), None)
        head_text = second[1] if second and second[1] else ""
    else:
        source.delimiter = _delimiter(head_text)
    headers = _cells(head_text, source.delimiter)
    if isinstance(headers, str):
        raise ImportError_(f"the header of {path} cannot be read: {headers}")
    source.headers = headers = [name.strip() for name in headers]
    if chosen == "table-csv":
        return source
    mapping, skipped = _map_columns(headers, columns or {}, lenient)
    source.warnings += [
        f"--column {name}={header}: this file has no such column (its headers: {headers}); the "
        "column matched by name is read"
        for name, header in skipped.items()
    ]
    source.mapping = mapping
    if not any(name in mapping for name in ("email", "lastName", "company")):
        raise ImportError_(
            f"no column of {path} reads as the customer's email, last name or company; headers: "
            f"{headers}; name them with --column email=HEADER"
        )
    if "createdAt" not in mapping:
        taken = set(mapping.values())
        maybe = [
            name
            for index, name in enumerate(headers)
            if index not in taken and any(word in _squash(name) for word in _DATE_WORDS)
        ]
        unknown = f": {', '.join(map(repr, maybe))} is not a header the import knows" if maybe else ""
        hint = (
            f"if {maybe[0]!r} is the created date, give --column createdAt={_quoted(maybe[0])}"
            if maybe
            else "if the file has one, name it with --column createdAt=HEADER"
        )
        source.warnings.append(
            f"no column is read as the created date{unknown}. Rows are matched against the leads "
            "of the last 6 months (as long as Partner Center keeps them), and new ones are stored "
            f"unsent unless --deliver; {hint}"
        )
    return source


def map_columns(headers: list[str], overrides: dict[str, str]) -> dict[str, int]:
    """Lead field → column index: the ``--column`` overrides, then header names matched ignoring
    case, spaces and punctuation."""
    return _map_columns(headers, overrides, lenient=False)[0]


def _map_columns(headers: list[str], overrides: dict[str, str], lenient: bool) -> tuple[dict[str, int], dict[str, str]]:
    """:func:`map_columns`, and the overrides skipped with ``lenient`` (their header is not in
    this file, one of several)."""
    squashed = [_squash(header) for header in headers]
    mapping: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for name, header in overrides.items():
        if name not in PARTNER_CENTER_FIELDS:
            raise ImportError_(f"--column {name}={header}: unknown field; fields: {', '.join(PARTNER_CENTER_FIELDS)}")
        if _squash(header) not in squashed:
            if lenient:
                skipped[name] = header
                continue
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
    return mapping, skipped


def detect_format(path: Path, head: str) -> str:
    """The format of a file, from its name and its first line (decoded)."""
    stripped = head.lstrip()
    if path.suffix.lower() in (".jsonl", ".ndjson") or (stripped.startswith("{") and path.suffix.lower() != ".csv"):
        return "jsonl"
    if stripped.startswith("["):
        return "json"
    cells = _cells(stripped, _delimiter(stripped)) if stripped else []
    headers = {_squash(name) for name in cells} if isinstance(cells, list) else set()
    if {"partitionkey", "rowkey"} <= headers:
        return "table-csv"
    if path.suffix.lower() == ".csv" or len(headers) > 1:
        return "partner-center"
    raise ImportError_(f"cannot tell the format of {path}: give --format ({', '.join(FORMATS)})")


# --- encodings -------------------------------------------------------------------------------------


def detect_encoding(path: Path) -> tuple[str, str]:
    """(codec, what the report says of it)."""
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", "UTF-8 with a BOM"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", f"UTF-16 {'LE' if head.startswith(codecs.BOM_UTF16_LE) else 'BE'} with a BOM"
    pairs = len(head) // 2
    if pairs >= 8:  # UTF-16 without a BOM: every other byte of Latin text is NUL
        even, odd = head[0 : pairs * 2 : 2].count(0), head[1 : pairs * 2 : 2].count(0)
        if odd > pairs * 0.3 and even < pairs * 0.05:
            return "utf-16-le", "UTF-16 LE (no BOM: told by its NUL bytes)"
        if even > pairs * 0.3 and odd < pairs * 0.05:
            return "utf-16-be", "UTF-16 BE (no BOM: told by its NUL bytes)"
    if _decodes(path, "utf-8"):
        return "utf-8", "UTF-8"
    if _decodes(path, "cp1252"):
        return "cp1252", 'Windows-1252 (not UTF-8: what Excel\'s "CSV (Comma delimited)" writes in Western locales)'
    from charset_normalizer import from_bytes

    guess = from_bytes(_non_ascii_sample(path)).best()
    if guess is not None:
        return guess.encoding, f"{guess.encoding} (told by charset-normalizer: neither UTF-8 nor Windows-1252)"
    return "cp1252", "Windows-1252 (undetermined: rows with bytes it cannot read are refused; give --encoding)"


def _decodes(path: Path, codec: str) -> bool:
    """Whether the whole file is text in ``codec``, read a piece at a time."""
    decoder = codecs.getincrementaldecoder(codec)()
    with path.open("rb") as handle:
        try:
            while chunk := handle.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def _non_ascii_sample(path: Path, limit: int = 1 << 18) -> bytes:
    """The lines of the file that hold bytes beyond ASCII (what tells encodings apart), up to ``limit``."""
    sample = bytearray()
    with path.open("rb") as handle:
        for line in handle:
            if not line.isascii():
                sample += line
                if len(sample) >= limit:
                    break
    return bytes(sample)


# --- lines and records -----------------------------------------------------------------------------


def _pieces(path: Path, codec: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, whether it ends the line) of the file's physical lines, a line of any
    length read in pieces of at most :data:`_PIECE` characters."""
    number = 1
    with path.open(encoding=codec, errors="leads-undecodable", newline="") as handle:
        while piece := handle.readline(_PIECE):
            ends = piece.endswith(("\n", "\r"))
            yield number, piece, ends
            number += ends


def _lines(path: Path, codec: str) -> Iterator[tuple[int, str, str | None]]:
    """(line number, line, why it cannot be read) of each line, for JSON lines."""
    line, size, start = [], 0, None
    for number, piece, ends in _pieces(path, codec):
        start = number if start is None else start
        size += len(piece)
        if size <= MAX_RECORD_CHARS:
            line.append(piece)
        if ends:
            yield (start, "", _too_long(size)) if size > MAX_RECORD_CHARS else _checked(start, "".join(line))
            line, size, start = [], 0, None
    if start is not None:
        yield (start, "", _too_long(size)) if size > MAX_RECORD_CHARS else _checked(start, "".join(line))


def _records(path: Path, codec: str) -> Iterator[tuple[int, str, str | None]]:
    """(first line, record text, why it cannot be read) of each CSV record: a record ends at a
    line break outside quotes, as the csv module reads them (a quote opens a quoted field only at
    a field's start)."""
    state, start, parts, size = _START, None, [], 0
    for number, piece, ends in _pieces(path, codec):
        start = number if start is None else start
        size += len(piece)
        if size <= MAX_RECORD_CHARS:
            parts.append(piece)
        state = _scan(piece, state)
        if ends and state != _QUOTED:
            yield (start, "", _too_long(size)) if size > MAX_RECORD_CHARS else _checked(start, "".join(parts))
            state, start, parts, size = _START, None, [], 0
    if start is not None:
        if state == _QUOTED:
            yield start, "", f"a quoted field opened on line {start} is never closed"
        else:
            yield (start, "", _too_long(size)) if size > MAX_RECORD_CHARS else _checked(start, "".join(parts))


_START, _FIELD, _QUOTED, _CLOSED = range(4)
_DELIMITERS = (",", ";", "\t")


def _scan(text: str, state: int) -> int:
    """The quoting state after ``text``: at a field's start, in an unquoted field, in a quoted
    field, or just after a quote inside one (a closing quote, or the first of a doubled one)."""
    if '"' not in text:  # the common case, at no cost a character
        if state == _QUOTED or not text:
            return state
        return _START if text[-1] in _DELIMITERS or text[-1] in "\r\n" else _FIELD
    for char in text:
        if state == _QUOTED:
            state = _CLOSED if char == '"' else _QUOTED
        elif state == _CLOSED:
            state = _QUOTED if char == '"' else (_START if char in _DELIMITERS or char in "\r\n" else _FIELD)
        elif state == _START:
            state = _QUOTED if char == '"' else (_START if char in _DELIMITERS or char in "\r\n" else _FIELD)
        elif char in _DELIMITERS or char in "\r\n":
            state = _START
    return state


def _checked(number: int, text: str) -> tuple[int, str, str | None]:
    if _UNDECODABLE in text:
        return number, "", "it holds bytes that are not text in the file's encoding (see the encoding above)"
    return number, text, None


def _too_long(size: int) -> str:
    return f"it is {size:,} characters long, more than a row can be ({MAX_RECORD_CHARS:,})"


def _cells(text: str, delimiter: str) -> list[str] | str:
    """The cells of one record, or why it cannot be read."""
    try:
        return next(csv.reader([text.rstrip("\r\n")], delimiter=delimiter), [])
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            return f"a field is longer than the CSV reader's limit ({csv.field_size_limit():,} characters)"
        return f"it is not a CSV row: {exc}"


def _delimiter(header: str) -> str:
    """The delimiter a header line uses most: ``,``, ``;`` or a tab."""
    unquoted = re.sub(r'"[^"]*"', "", header)
    counts = {delimiter: unquoted.count(delimiter) for delimiter in _DELIMITERS}
    best = max(counts, key=lambda delimiter: counts[delimiter])
    return best if counts[best] else ","


# --- rows as leads ---------------------------------------------------------------------------------


def _from_bodies(items: Iterator[tuple[int, Any]]) -> Iterator[Row | Refused]:
    for number, body in items:
        if isinstance(body, ImportError_):
            yield Refused(number, str(body))
            continue
        created = _created(body)
        try:
            lead = from_http_body(body, received_at=created)
        except LeadValidationError as exc:
            yield Refused(number, str(exc))
            continue
        yield _as_import(
            number, lead, json.dumps(body, sort_keys=True, ensure_ascii=False, default=str), created is not None
        )


def _partner_center_row(number: int, row: dict[str, str]) -> Row:
    source, action = row.get("source") or "", row.get("action") or ""
    body = {
        "UserDetails": {
            "FirstName": row.get("firstName"),
            "LastName": row.get("lastName"),
            "Email": row.get("email"),
            "Phone": row.get("phone"),
            "Country": row.get("country"),
            "Company": row.get("company"),
            "Title": row.get("title"),
        },
        "LeadSource": source
        + (f"-{action}" if action and "-" not in source else "")
        + (f"|{row['offerId']}" if row.get("offerId") else ""),
        "ActionCode": action,
        "OfferTitle": row.get("offer"),
        "Description": row.get("description"),
    }
    received = parse_time(row.get("createdAt"))
    if row.get("createdAt") and received is None:
        raise LeadValidationError(f"the created date {row['createdAt']!r} is not a date")
    lead = from_http_body(body, received_at=received)
    return _as_import(number, lead, json.dumps(row, sort_keys=True, ensure_ascii=False), received is not None)


def _as_import(number: int, lead: Lead, identity: str, dated: bool) -> Row:
    """The lead as imported: channel ``import``, and an id from the row itself (keyed), so the
    same row imported again is the same lead."""
    lead_id, plain_id = "i" + digest(identity)[:24], "i" + plain(identity)[:24]
    lead = lead.model_copy(update={"channel": "import", "lead_id": lead_id})
    return Row(number, lead, dated, plain_id if plain_id != lead_id else None)


def _created(body: Any) -> datetime | None:
    if isinstance(body, dict):
        for key, value in body.items():
            if _squash(key) in ("createdtime", "createddate", "createdat", "timestamp"):
                return parse_time(value)
    return None


_DATE_FORMATS = (
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y",
    "%d.%m.%Y %H:%M",
    "%d.%m.%Y",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d",
)


def parse_time(value: Any) -> datetime | None:
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


def _quoted(header: str) -> str:
    return f"'{header}'" if re.search(r"[^\w.-]", header) else header
