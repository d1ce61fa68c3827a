"""``python -m leads import``: each format, header matching and overrides, dedupe against leads
the HTTP intake and the table poll took in, a second import of the same file, old leads held,
bad rows refused with their reasons, and a large file at a bounded cost a row; against Azurite."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta

import pytest

from leads.cli import main
from leads.core.normalise import from_table_entity
from leads.core.settings import get_settings
from leads.intake.imports import ImportError_, import_file, map_columns
from leads.intake.ingest import accept_http
from leads.store.lead_store import LeadStore

from .conftest import FIXTURES

NOW = datetime.now(UTC).replace(microsecond=0)
OFFER = "contoso.contoso-crm"


def body(email="jane.doe@fabrikam.com", created=NOW, **changes) -> dict:
    lead = {
        "UserDetails": {
            "FirstName": "Jane",
            "LastName": "Doe",
            "Email": email,
            "Phone": "+44 20 7946 0958",
            "Country": "United Kingdom",
            "Company": "Fabrikam Ltd",
            "Title": "Buyer",
        },
        "LeadSource": f"SPZA-PLT|{OFFER}",
        "OfferTitle": "Contoso CRM",
        "CreatedTime": created.isoformat(),
    }
    lead.update(changes)
    return lead


@pytest.fixture
def store(storage, env):
    env(
        EMAIL_TO="sales@contoso.com",
        WEBHOOK_URL="",
        LEADS_BACKFILL_DAYS="7",
    )
    return LeadStore.from_settings()


def write_jsonl(path, bodies):
    path.write_text("".join(json.dumps(item) + "\n" for item in bodies))
    return path


def deliveries_of(store, lead_id):
    return {d.destination: d for d in store.deliveries.for_lead(lead_id)}


# --- the marketplace's own formats --------------------------------------------------------------


def test_json_lines_are_imported_once_and_a_second_import_stores_nothing(store, tmp_path):
    path = write_jsonl(tmp_path / "leads.jsonl", [body(email=f"buyer{i}@fabrikam.com") for i in range(3)])
    first = import_file(path)
    assert (first.format, first.read, first.imported, first.already_received, first.refused) == ("jsonl", 3, 3, 0, [])
    stored = store.list(limit=10)
    assert {lead.channel for lead in stored} == {"import"} and len(stored) == 3
    assert all(deliveries_of(store, lead.lead_id)["email"].state == "pending" for lead in stored)
    second = import_file(path)
    assert (second.imported, second.already_received) == (0, 3)
    assert len(store.list(limit=10)) == 3


def test_a_json_array_is_read_item_by_item_and_a_bad_item_is_refused_with_its_number(store, tmp_path):
    items = [body(email=f"buyer{i}@fabrikam.com", Description="x" * 50_000) for i in range(4)]
    items.insert(2, [1, 2])  # not a lead
    path = tmp_path / "leads.json"
    path.write_text(json.dumps(items, indent=1))
    report = import_file(path)
    assert report.format == "json" and report.read == 5 and report.imported == 4
    assert report.refused == [{"file": str(path), "row": 3, "reason": "the lead must be a JSON object, got a list"}]


def test_a_table_export_matches_the_rows_the_poll_took_in(store, tmp_path):
    table = get_settings().marketplace_table_name
    row = json.loads((FIXTURES / "marketplace" / "table-entity-test-lead.json").read_text())
    polled = from_table_entity({**row, "Timestamp": NOW.isoformat()}, table)
    store.add(polled)  # as the poll stores it
    path = tmp_path / "export.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        names = [
            "PartitionKey",
            "RowKey",
            "Timestamp",
            "ActionCode",
            "ActionCode@type",
            "CustomerInfo",
            "CustomerInfo@type",
            "LeadSource",
            "LeadSource@type",
            "OfferDisplayName",
            "OfferDisplayName@type",
        ]
        writer.writerow(names)
        info = json.loads(row["CustomerInfo"])
        for index, row_key in enumerate([row["RowKey"], "new-row-1"]):
            customer = json.dumps({**info, "Email": f"someone{index}@contoso.com"})
            writer.writerow(
                [
                    row["PartitionKey"],
                    row_key,
                    NOW.isoformat().replace("+00:00", "Z"),
                    "INS",
                    "Edm.String",
                    customer,
                    "Edm.String",
                    "AzureMarketplace",
                    "Edm.String",
                    "Contoso",
                    "Edm.String",
                ]
            )
    report = import_file(path)
    assert (report.format, report.read, report.already_received, report.imported) == ("table-csv", 2, 1, 1)
    imported = [lead for lead in store.list(limit=5) if lead.channel == "import"]
    assert len(imported) == 1 and imported[0].email == "someone1@contoso.com"
    assert "CustomerInfo@type" not in imported[0].raw


# --- Partner Center's download --------------------------------------------------------------------


PARTNER_CENTER_HEADERS = [
    "Lead ID",
    "Created Date",
    "First Name",
    "Last Name",
    "Email Address",
    "Phone Number",
    "Company Name",
    "Job Title",
    "Country/Region",
    "Offer Name",
    "Lead Source",
    "Action",
    "Comments",
]


def partner_center_file(path, rows):
    with path.open("w", newline="", encoding="utf-8-sig") as handle:  # Excel-friendly, as downloads are
        writer = csv.writer(handle)
        writer.writerow(PARTNER_CENTER_HEADERS)
        writer.writerows(rows)
    return path


def partner_center_row(index=0, email=None, created=NOW, **changes):
    row = {
        "Lead ID": f"pc-{index}",
        "Created Date": created.strftime("%m/%d/%Y %I:%M:%S %p"),
        "First Name": "Ann",
        "Last Name": f"Buyer{index}",
        "Email Address": f"ann{index}@northwind.example" if email is None else email,
        "Phone Number": "+1 425 555 0100",
        "Company Name": "Northwind",
        "Job Title": "CTO",
        "Country/Region": "US",
        "Offer Name": "Contoso CRM",
        "Lead Source": "AppSource",
        "Action": "PLT",
        "Comments": "Call me",
    }
    row.update(changes)
    return [row[name] for name in PARTNER_CENTER_HEADERS]


def test_partner_center_headers_are_matched_ignoring_case_spaces_and_punctuation(store, tmp_path):
    path = partner_center_file(tmp_path / "leads.csv", [partner_center_row(i) for i in range(3)])
    report = import_file(path, dry_run=True)
    assert report.format == "partner-center" and report.dry_run and report.read == 3
    assert report.mapping == {
        "firstName": "First Name",
        "lastName": "Last Name",
        "email": "Email Address",
        "phone": "Phone Number",
        "company": "Company Name",
        "title": "Job Title",
        "country": "Country/Region",
        "offer": "Offer Name",
        "source": "Lead Source",
        "action": "Action",
        "createdAt": "Created Date",
        "description": "Comments",
    }
    preview = report.preview[0]["lead"]
    assert (preview["email"], preview["source"], preview["action"], preview["country"]) == (
        "ann0@northwind.example",
        "AppSource",
        "PLT",
        "US",
    )
    assert store.list(limit=10) == []  # a dry run stores nothing


def test_column_overrides_win_and_name_unknown_fields_or_headers(store, tmp_path):
    headers = ["Contact", "Mail", "Org", "When"]
    assert map_columns(headers, {"email": "mail", "company": "Org", "createdAt": "When"}) == {
        "email": 1,
        "company": 2,
        "createdAt": 3,
    }
    with pytest.raises(ImportError_, match="--column shoe=Mail: unknown field"):
        map_columns(headers, {"shoe": "Mail"})
    with pytest.raises(ImportError_, match="the file has no such column"):
        map_columns(headers, {"email": "E-mail"})


def test_a_row_received_by_the_http_intake_is_already_received(store, tmp_path):
    answer = accept_http(
        json.dumps(
            body(
                email="ann0@northwind.example",
                UserDetails={
                    "FirstName": "Ann",
                    "LastName": "Buyer0",
                    "Email": "ann0@northwind.example",
                    "Company": "Northwind",
                },
                LeadSource=f"SPZA-PLT|{OFFER}",
                OfferTitle="Contoso CRM",
            )
        ).encode()
    )
    assert answer.status == 202
    rows = [
        partner_center_row(0, created=NOW + timedelta(hours=3)),  # the same person and offer, same day
        partner_center_row(0, created=NOW + timedelta(days=3)),  # asked again three days later: a new lead
        partner_center_row(1, email="", **{"Last Name": "Buyer0"}),
    ]  # no email: by name and company
    report = import_file(partner_center_file(tmp_path / "leads.csv", rows))
    assert (report.read, report.already_received, report.imported) == (3, 2, 1)


def test_leads_older_than_the_backfill_limit_are_stored_unsent_unless_asked(store, tmp_path):
    old = NOW - timedelta(days=30)
    path = partner_center_file(tmp_path / "old.csv", [partner_center_row(0, created=old)])
    report = import_file(path)
    assert (report.imported, report.imported_not_sent) == (0, 1)
    [lead] = store.list(limit=5)
    email = deliveries_of(store, lead.lead_id)["email"]
    assert email.state == "skipped" and "LEADS_BACKFILL_DAYS" in email.last_error
    path = partner_center_file(tmp_path / "old2.csv", [partner_center_row(1, created=old)])
    forced = import_file(path, deliver=True)
    assert (forced.imported, forced.imported_not_sent) == (1, 0)


def test_bad_rows_are_refused_with_their_reasons_and_nothing_else_is_lost(store, tmp_path):
    rows = [
        partner_center_row(0),
        partner_center_row(1, **{"Created Date": "yesterday-ish"}),
        partner_center_row(2, email="", **{name: "" for name in PARTNER_CENTER_HEADERS if name != "Lead ID"}),
        partner_center_row(3),
    ]
    report = import_file(partner_center_file(tmp_path / "leads.csv", rows))
    assert report.read == 4 and report.imported == 2
    assert [item["row"] for item in report.refused] == [3, 4]
    assert "'yesterday-ish' is not a date" in report.refused[0]["reason"]
    assert "no customer or lead data" in report.refused[1]["reason"]


def test_a_row_whose_personal_data_was_withheld_is_still_a_lead(store, tmp_path):
    withheld = {
        name: ""
        for name in (
            "First Name",
            "Last Name",
            "Company Name",
            "Phone Number",
            "Job Title",
            "Country/Region",
            "Comments",
        )
    }
    report = import_file(partner_center_file(tmp_path / "edu.csv", [partner_center_row(0, email="", **withheld)]))
    assert report.imported == 1
    [lead] = store.list(limit=5)
    assert lead.pii_withheld and lead.offer_title == "Contoso CRM"


def test_a_file_with_no_customer_column_is_an_error_naming_its_headers(store, tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("Colour,Size\nred,4\n")
    with pytest.raises(ImportError_, match=r"no column .* reads as the customer's email.*--column email=HEADER"):
        import_file(path)


# --- the command -------------------------------------------------------------------------------------


def test_the_command_prints_the_reconciliation_and_json(store, tmp_path, capsys):
    path = partner_center_file(
        tmp_path / "leads.csv", [partner_center_row(0), partner_center_row(1, **{"Created Date": "not a date"})]
    )
    assert main(["--settings", "none", "import", str(path), "--json"]) == 1  # a row was refused
    report = json.loads(capsys.readouterr().out)
    assert (report["read"], report["importedAndQueued"], len(report["refused"])) == (2, 1, 1)
    assert main(["--settings", "none", "import", str(path)]) == 1
    text = capsys.readouterr().out
    assert "already received:           1" in text and "row 3:" in text
    assert main(["--settings", "none", "import", str(path), "--column", "email"]) == 2
    assert "expected FIELD=HEADER" in capsys.readouterr().err


# Several times the rows an import holds in flight (imports.WINDOW, made SMALL_WINDOW here), so the
# window turns over; the 5,000-row figure (Partner Center's largest download) is
# benchmarks/imports.py's. Each row's long comment makes the file large beside the reader's buffers.
LARGE_FILE_ROWS, SMALL_WINDOW = 200, 50
COMMENT = "Please call me about pricing for our team. " * 50


def read_position(path) -> int | None:
    """Where the kernel says this process's open handle on ``path`` has read to; None when no
    handle is open (Linux's /proc)."""
    import os
    import re

    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                with open(f"/proc/self/fdinfo/{fd}") as info:
                    return int(re.search(r"pos:\s+(\d+)", info.read()).group(1))
        except OSError:  # closed meanwhile
            continue
    return None


def test_a_large_file_is_streamed_at_a_bounded_cost_a_row_and_a_second_import_stores_nothing(
    store, tmp_path, env, azurite, monkeypatch
):
    from leads.intake import imports

    monkeypatch.setattr(imports, "WINDOW", SMALL_WINDOW)

    from .storage_proxy import StorageProxy

    with StorageProxy(azurite.table_port) as proxy:
        # Routed nowhere: the test is of reading, matching and storing, not of queues.
        env(EMAIL_TO="", AzureWebJobsStorage=proxy.connection_string(azurite))
        leads_table = LeadStore.from_settings().leads.table_name
        LeadStore.from_settings().ensure_tables()
        rows = [partner_center_row(i, Comments=COMMENT) for i in range(LARGE_FILE_ROWS)]
        path = partner_center_file(tmp_path / "big.csv", rows)
        row_bytes = path.stat().st_size // LARGE_FILE_ROWS + 1

        def lead_writes() -> int:
            with proxy.lock:
                return sum(
                    1
                    for method, where in proxy.requests
                    if method == "POST" and where.split("?")[0].endswith(f"/{leads_table}")
                )

        ahead = []  # at each row read: rows read whose lead write has not started yet
        read_past = []  # at each row read: bytes of the file read past that row

        def progress(read: int) -> None:
            ahead.append(read - 1 - lead_writes())
            position = read_position(path)
            read_past.append(None if position is None else position - (read + 1) * row_bytes)

        before = proxy.count()
        report = import_file(path, progress=progress)
        first_requests = proxy.count() - before
        assert (report.read, report.imported, report.refused) == (LARGE_FILE_ROWS, LARGE_FILE_ROWS, [])
        assert len(ahead) == LARGE_FILE_ROWS  # progress is told of every row as it is read
        # Rows are stored while the file is read: the file is read no further than the row being
        # taken (give or take the reader's 64 KiB of buffers), and never more than a window of
        # rows is read and not yet being stored. Memory stays flat whatever the file's size.
        assert None not in read_past and max(read_past) <= 64 * 1024, read_past
        assert max(ahead) <= imports.WINDOW, max(ahead)
        assert lead_writes() == LARGE_FILE_ROWS
        # Storage calls a row, whatever the file's size: the identity row, the email index's row
        # (for forget --email), the timeline entry, the lead. The matcher reads the identities of
        # each day a row can match (up to 3) once, not once a row; its workers may each miss its
        # cache once at the start.
        day_reads = imports.WORKERS * 3
        assert first_requests <= 4 * LARGE_FILE_ROWS + day_reads, first_requests

        before = proxy.count()
        again = import_file(path)
        second_requests = proxy.count() - before
        assert (again.read, again.imported, again.already_received) == (LARGE_FILE_ROWS, 0, LARGE_FILE_ROWS)
        assert len(LeadStore.from_settings().list(limit=None)) == LARGE_FILE_ROWS  # nothing stored twice
        # A row imported before is found by its identity row (the days read once), and its lead
        # read to see it is there: one request a row, nothing written (it was six: its rows written
        # again and its insert refused, before the match counted the row's own lead).
        assert second_requests <= LARGE_FILE_ROWS + day_reads, second_requests

        preview = import_file(path, dry_run=True)
        assert preview.read == LARGE_FILE_ROWS and len(preview.preview) == 5


def test_an_erased_person_is_found_only_by_their_tombstone(store, tmp_path):
    from leads.intake.matching import Match, Matcher
    from leads.store.erasure import forget_lead
    from leads.store.identities import identity_keys

    path = partner_center_file(tmp_path / "leads.csv", [partner_center_row(0)])
    assert import_file(path).imported == 1
    [lead] = store.list(limit=5)
    again = lead.model_copy(update={"lead_id": "other"})
    assert Matcher(store).find(again) == Match(lead.lead_id, erased=False)
    forget_lead(lead.lead_id)
    assert Matcher(store).find(again) == Match(lead.lead_id, erased=True)
    # What is left in the identities table: the tombstone, keyed digests and times only.
    [tombstone] = store.identities.table.list_entities()
    assert tombstone["RowKey"] == f"erased|{lead.lead_id}" and tombstone["Who"].split() == identity_keys(lead)
    assert set(tombstone) == {"PartitionKey", "RowKey", "Who", "HasEmail", "ReceivedAt", "ErasedAt"}


def test_a_dry_run_predicts_what_the_real_run_does_with_the_same_matching(store, tmp_path):
    """Through the real CLI: a row that matches a stored lead by identity, a row imported twice in
    the file, an old row and a new one: the dry run's counts are the real run's."""
    import os
    import subprocess
    import sys

    def person(name: str, **changes) -> dict:  # no name, company or email in common with Ann's
        return body(
            UserDetails={
                "FirstName": name,
                "LastName": "Buyer",
                "Email": f"{name}@northwind.example",
                "Company": f"{name} Ltd",
            },
            **changes,
        )

    accept_http(json.dumps(body(email="ann@northwind.example")).encode())  # received over HTTP
    path = write_jsonl(
        tmp_path / "leads.jsonl",
        [
            body(email="ann@northwind.example", Description="the same person, about the same offer"),
            person("new"),
            person("new"),  # twice in the file
            person("old", created=NOW - timedelta(days=30)),
        ],
    )

    def run(*extra: str) -> dict:
        command = [sys.executable, "-m", "leads", "--settings", "none", "import", str(path), "--json", *extra]
        done = subprocess.run(command, capture_output=True, text=True, timeout=90, env=dict(os.environ))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    counts = ("read", "alreadyReceived", "importedAndQueued", "importedNotSent")
    dry = run("--dry-run")
    assert [dry[name] for name in counts] == [4, 2, 1, 1]
    assert dry["preview"][0]["outcome"].startswith("already-received, as h")  # the HTTP lead it matched
    assert len(store.list(limit=10)) == 1  # nothing stored
    real = run()
    assert [real[name] for name in counts] == [dry[name] for name in counts]
    again = run("--dry-run")  # and after it, a dry run says the file is in
    assert [again[name] for name in counts] == [4, 4, 0, 0]
