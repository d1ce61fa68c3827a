"""Recovery (issue 17) against Azurite: ``import`` never merges two people, never takes in again a
lead the store has, never brings an erased person back; and every digest made of personal data
is keyed (``LEADS_ID_KEY``), so a kept id cannot be recomputed from the person's details."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from leads import deliver, erasure
from leads.imports import import_file
from leads.intake import accept_http
from leads.normalise import from_http_body
from leads.routing import plan
from leads.settings import get_settings
from leads.storage import table_service
from leads.store import LeadStore

from .test_erasure import left_behind, person

NOW = datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture
def store(storage, env):
    env(LEADS_DELIVERY_QUEUE=f"q{uuid.uuid4().hex[:12]}", EMAIL_TO="sales@contoso.example", WEBHOOK_URL="",
        LEADS_BACKFILL_DAYS="7")  # fmt: skip
    return LeadStore.from_settings()


def outbox() -> Path:
    return Path(get_settings().email_outbox_dir)


def mails() -> list[str]:
    return sorted(path.name for path in outbox().glob("*.eml")) if outbox().is_dir() else []


def http_body(who: dict[str, str], offer: str = "Contoso CRM") -> dict:
    return {"UserDetails": {"FirstName": who["FirstName"], "LastName": who["LastName"], "Email": who["Email"],
                            "Company": who["Company"]},
            "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": offer}  # fmt: skip


def take_in(body: dict) -> str:
    answer = accept_http(json.dumps(body).encode())
    assert answer.status == 202, answer.body
    return answer.body["leadId"]


def partner_center_csv(path: Path, rows: list[dict[str, str]], date_header: str = "Created Date") -> Path:
    lines = [f"First Name,Last Name,Email,Company,Offer Name,{date_header}"]
    lines += [",".join([row["FirstName"], row["LastName"], row["Email"], row["Company"], row.get("Offer", "Contoso CRM"),
                        row["Created"]]) for row in rows]  # fmt: skip
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
    lead = from_http_body(body, received_at=datetime.now(timezone.utc) - timedelta(days=days))
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
        created = f"{datetime.now(timezone.utc) - timedelta(days=3):%Y-%m-%d}"
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
    content = json.dumps(lead.model_dump(exclude={"lead_id", "received_at", "channel", "raw"}), sort_keys=True,
                         ensure_ascii=False, default=str)  # fmt: skip
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
