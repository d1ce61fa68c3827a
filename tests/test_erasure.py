"""Erasure (``forget``) and retention (``LEADS_RETENTION_DAYS``) against Azurite: afterwards no
personal value of the person is left in any entity of any table of the app's account, nor in the
outbox; ids, times and delivery outcomes are kept; an erased lead is never delivered empty and
stays erased when its marketplace row or its HTTP body comes again."""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.functions.timer import TimerRequest

import function_app
from leads.cli import main as cli
from leads.core.normalise import from_http_body
from leads.core.settings import get_settings
from leads.core.storage import table_service
from leads.delivery.deliver import deliver
from leads.destinations.routing import plan
from leads.intake.imports import import_file
from leads.intake.ingest import accept_http
from leads.intake.poll import _recently_stored, poll_marketplace
from leads.store import erasure
from leads.store.erasure import ERASED_REASON, apply_retention
from leads.store.lead_store import LeadStore
from leads.store.rows import lead_entity

from .conftest import EXAMPLE, FIXTURES
from .fake_webhook import FakeWebhook
from .storage_reads import counting_table_reads
from .workers import drain

ENTITY = json.loads((FIXTURES / "marketplace" / "table-entity-test-lead.json").read_text())


_PHONES = itertools.count(100)


def person() -> dict[str, str]:
    """Personal values unique to one person: the account's other tables (other tests') cannot hold them."""
    tag = uuid.uuid4().hex[:8]
    return {
        "FirstName": f"Zelda{tag}",
        "LastName": f"Quokka{tag}",
        "Email": f"zq{tag}@fabrikam.example",
        "Phone": f"+1 617 555 0{next(_PHONES)}",
        "Company": f"Fabrikam{tag}",
        "Title": f"Otter keeper {tag}",
    }


def http_body(who: dict[str, str]) -> dict:
    body = copy.deepcopy(EXAMPLE)
    body["UserDetails"] = {**who, "Country": "US"}
    body["Description"] = f"call {who['FirstName']} about otters"
    return body


def personal_values(who: dict[str, str]) -> list[str]:
    return [
        who["FirstName"],
        who["LastName"],
        who["Email"],
        who["Company"],
        who["Title"],
        who["Phone"].replace(" ", "")[2:],
    ]


def left_behind(values: list[str], outbox: Path) -> list[str]:
    """Every place in the account's tables (the marketplace's own table aside) and in the outbox
    where one of ``values`` is still found."""
    settings = get_settings()
    service = table_service(settings.storage_connection)
    found = []
    for table in service.list_tables():
        if table.name.startswith("Marketplace"):
            continue  # the marketplace's tables (this test's and others'), not the app's: see docs/security.md
        for entity in service.get_table_client(table.name).query_entities(""):
            for key, value in entity.items():
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                text = text.lower().replace(" ", "").replace("-", "")
                found += [
                    f"{table.name}/{entity['PartitionKey']}/{entity['RowKey']}.{key}: {v}"
                    for v in values
                    if v.lower().replace(" ", "") in text
                ]
    for path in outbox.glob("*") if outbox.is_dir() else ():
        text = path.read_bytes().decode("utf-8", "replace").lower()
        found += [f"outbox/{path.name}: {v}" for v in values if v.lower() in text]
    return found


@pytest.fixture
def app(storage, env, tmp_path):
    with FakeWebhook() as fake:
        env(
            **fake.settings(),
            LEADS_RETRY_BASE_SECONDS="0.2",
            LEADS_HTTP_TIMEOUT_SECONDS="1",
            EMAIL_TO="sales@contoso.example",
        )
        _recently_stored.clear()
        yield fake
        _recently_stored.clear()


def outbox() -> Path:
    return Path(get_settings().email_outbox_dir)


def take_in(body: dict) -> str:
    answer = accept_http(json.dumps(body).encode())
    assert answer.status == 202, answer.body
    return answer.body["leadId"]


def marketplace_row(who: dict[str, str]) -> None:
    settings = get_settings()
    table = table_service(settings.storage_connection).get_table_client(settings.marketplace_table_name)
    table.create_table()
    table.create_entity(
        {
            **ENTITY,
            "PartitionKey": f"{datetime.now(UTC):%Y-%m-%d}",
            "RowKey": uuid.uuid4().hex,
            "CustomerInfo": json.dumps({**who, "Country": "US"}),
            "Description": "from the table",
        }
    )


def test_forget_email_erases_every_row_and_mail_and_keeps_outcomes(app, capsys):
    who = person()
    first = take_in(http_body(who))
    marketplace_row(who)
    assert poll_marketplace().stored == 1
    refused = accept_http(b'{"UserDetails": {"Email": "' + who["Email"].encode() + b'", "FirstName": 7}')
    assert refused.status == 400
    drain()
    store = LeadStore.from_settings()
    # A service that echoed a value back in its error text (as CRMs do) leaves it on the delivery.
    webhook = store.deliveries.get(first, "webhook")
    store.deliveries.change(webhook, last_error=f"rejected {who['Email']}")
    assert left_behind(personal_values(who), outbox())  # the test sees what is there

    assert cli(["forget", "--email", who["Email"].upper(), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert first in report["erasedLeads"] and len(report["erasedLeads"]) == 2
    assert report["erasedRejected"] == [refused.body["rejectedId"]]
    assert report["outboxFilesDeleted"] and "erase the person there too" in report["note"]
    assert {"leadId": first, "destination": "webhook", "externalId": f"wh-{first}"} in report["sentElsewhere"]
    assert left_behind(personal_values(who), outbox()) == []

    kept = store.get(first)
    assert (kept.lead_id, kept.channel, kept.offer_title, kept.action) == (first, "http", "Test Microsoft", "INS")
    assert kept.email is None and kept.raw is None
    assert store.deliveries.get(first, "webhook").state == "delivered"
    assert store.rejected(refused.body["rejectedId"])["body"] == b""

    assert cli(["forget", "--email", who["Email"]]) == 0  # safe to run twice
    assert "Nothing found to erase" in capsys.readouterr().out


def test_forget_lead_before_delivery_skips_its_deliveries_and_the_worker_never_sends_it_empty(app, capsys):
    who = person()
    lead_id = take_in(http_body(who))
    assert cli(["forget", "--lead", lead_id]) == 0
    out = capsys.readouterr().out
    assert f"delivery {lead_id}/webhook was still open: skipped" in out and "erase the person there too" in out
    store = LeadStore.from_settings()
    # A worker that read the delivery as pending before the erasure still finds the lead erased.
    skipped = store.deliveries.get(lead_id, "webhook")
    assert (skipped.state, skipped.last_error) == ("skipped", ERASED_REASON)
    store.deliveries.change(skipped, state="pending", last_error=None)
    assert deliver(lead_id, "webhook").state == "skipped"
    drain()
    assert app.leads == {}
    assert {d.state for d in store.deliveries.for_lead(lead_id)} == {"skipped"}
    assert left_behind(personal_values(who), outbox()) == []
    assert cli(["forget", "--lead", lead_id]) == 0
    assert f"lead {lead_id} was erased already" in capsys.readouterr().out
    assert cli(["forget", "--lead", "no-such-lead"]) == 1


def test_an_erased_lead_stays_erased_when_its_marketplace_row_is_read_again(app):
    who = person()
    marketplace_row(who)
    poll_marketplace()
    drain()
    [lead] = LeadStore.from_settings().list(limit=None)
    assert cli(["forget", "--lead", lead.lead_id]) == 0
    _recently_stored.clear()  # as a new process would
    again = poll_marketplace(full_scan=True)
    assert again.stored == 0 and again.read == 1
    assert [stored.lead_id for stored in LeadStore.from_settings().list(limit=None)] == [lead.lead_id]
    assert left_behind(personal_values(who), outbox()) == []


def test_an_http_repeat_of_an_erased_lead_is_not_taken_in_and_after_the_window_is_a_new_lead(app):
    who = person()
    body = http_body(who)
    erased = take_in(body)
    assert cli(["forget", "--lead", erased]) == 0
    answer = accept_http(json.dumps(body).encode())  # a retried POST, within the dedupe window
    assert (answer.status, answer.body) == (200, {"leadId": erased, "duplicate": True, "erased": True})
    store = LeadStore.from_settings()
    assert [lead.lead_id for lead in store.list(limit=None)] == [erased]
    assert store.get(erased).email is None and store.duplicates(erased) == 0
    assert left_behind(personal_values(who), outbox()) == []
    # After the window the same content is the person asking again: a new lead, as any content.
    window = timedelta(hours=get_settings().dedupe_window_hours)
    later = from_http_body(body, received_at=datetime.now(UTC) + window)
    again = store.add_http(later, window, plan(later, get_settings()))
    assert not again.duplicate and store.get(again.lead_id).email == who["Email"]


def store_received(who: dict[str, str], received_at: datetime) -> str:
    lead = from_http_body(http_body(who), received_at=received_at)
    lead = lead.model_copy(update={"lead_id": uuid.uuid4().hex})
    LeadStore.from_settings().add(lead, plan(lead, get_settings()))
    return lead.lead_id


def test_retention_erases_old_leads_in_bounded_pages_from_a_watermark(app, env, monkeypatch):
    now = datetime.now(UTC)
    old = [person() for _ in range(5)]
    old_ids = [store_received(who, now - timedelta(days=40, minutes=index)) for index, who in enumerate(old)]
    recent = person()
    recent_id = store_received(recent, now - timedelta(days=2))
    assert apply_retention().scanned == 0  # unset: keeps everything, reads nothing

    env(LEADS_RETENTION_DAYS="30")
    monkeypatch.setattr(erasure, "RETENTION_PAGE", 2)
    monkeypatch.setattr(erasure, "RETENTION_PAGES_PER_RUN", 1)
    runs = [apply_retention(now=now) for _ in range(3)]
    assert [len(run.leads) for run in runs] == [2, 2, 1]
    assert sorted(sum((run.leads for run in runs), [])) == sorted(old_ids)
    assert left_behind([v for who in old for v in personal_values(who)], outbox()) == []
    assert LeadStore.from_settings().get(recent_id).email == recent["Email"]

    # A lead stored late with an old received time (a first poll of a table with history) is
    # caught by the next run, which reads only rows received or written since the last window.
    late = person()
    late_id = store_received(late, now - timedelta(days=50))
    monkeypatch.setattr(erasure, "RETENTION_PAGE", 10)
    next_day = apply_retention(now=now + timedelta(days=1))
    assert next_day.leads == [late_id] and next_day.scanned <= 6  # the late one and those just erased
    assert left_behind(personal_values(late), outbox()) == []
    quiet_day = apply_retention(now=now + timedelta(days=2))
    assert quiet_day.leads == [] and quiet_day.scanned <= 1
    # The timer in function_app.py runs the same, with the real clock.
    monkeypatch.setattr(erasure, "_now", lambda: now + timedelta(days=29))
    function_app.erase_expired_leads(TimerRequest())
    assert LeadStore.from_settings().get(recent_id).email is None
    assert left_behind(personal_values(recent), outbox()) == []


def test_a_lead_erased_inside_an_open_digest_is_left_out_of_it(storage, env, fake_acs):
    env(
        **fake_acs.settings(),
        EMAIL_TO="sales@contoso.com",
        EMAIL_PER_MINUTE="2",
        WEBHOOK_URL="",
        LEADS_RETRY_BASE_SECONDS="1",
    )
    lead_ids = [take_in(http_body(person())) for _ in range(5)]
    book = LeadStore.from_settings().deliveries
    start = book.get(lead_ids[0], "email").created_at
    assert [deliver(lead_id, "email", now=start).state for lead_id in lead_ids] == [
        "delivered",
        "delivered",
        "retrying",
        "retrying",
        "retrying",
    ]
    fake_acs.fail_next("503", on="send")  # the digest of the three waiting stays open, to be sent again
    assert deliver(lead_ids[2], "email", now=start + timedelta(seconds=61)).state == "retrying"
    assert cli(["forget", "--lead", lead_ids[3]]) == 0
    # As if a worker had read the member before the erasure: it is in the digest and open again.
    erased = book.get(lead_ids[3], "email")
    assert erased.state == "skipped" and erased.digest
    book.change(erased, state="retrying", last_error=None)
    assert deliver(lead_ids[4], "email", now=start + timedelta(seconds=200)).state == "delivered"
    assert fake_acs.mails_about(lead_ids[3]) == []
    assert (book.get(lead_ids[3], "email").state, book.get(lead_ids[3], "email").last_error) == (
        "skipped",
        ERASED_REASON,
    )
    assert {book.get(lead_id, "email").state for lead_id in (lead_ids[2], lead_ids[4])} == {"delivered"}


# --- finding a person's rows by email without reading history ------------------------------------


def test_forget_email_reads_the_persons_rows_and_none_of_anyone_elses(app):
    now = datetime.now(UTC)
    leads_table = get_settings().table_prefix

    def rows_read_to_forget_one(others: int) -> int:
        for _ in range(others):
            store_received(person(), now)
        who = person()
        lead_id = take_in(http_body(who))
        with counting_table_reads() as reads:
            done = erasure.forget_email(who["Email"])
        assert done.leads == [lead_id] and left_behind(personal_values(who), outbox()) == []
        return reads.of(leads_table)

    few = rows_read_to_forget_one(others=3)
    many = rows_read_to_forget_one(others=20)
    assert few == many, (few, many)  # the person's lead row and deliveries, however many others are stored


def test_forget_email_finds_an_address_in_a_description_and_in_a_refused_body(app):
    who, mentioned, bystander = person(), person(), person()
    body = http_body(who)
    body["Description"] = f"Please mail me at {mentioned['Email'].upper()}, not at the office."
    lead_id = take_in(body)
    refused = accept_http(b'{"Note": "write to\\n' + mentioned["Email"].encode() + b'", "UserDetails": 7}')
    assert refused.status == 400
    bystander_id = take_in(http_body(bystander))

    done = erasure.forget_email(mentioned["Email"])
    assert (done.leads, done.rejected) == ([lead_id], [refused.body["rejectedId"]])
    assert done.scanned == 2  # the two rows the index names, nothing else
    assert left_behind([mentioned["Email"], *personal_values(who)], outbox()) == []
    assert LeadStore.from_settings().get(bystander_id).email == bystander["Email"]
    again = erasure.forget_email(who["Email"])  # every index row of the erased lead went with it
    assert (again.leads, again.already_erased, again.scanned) == ([], [], 0)


def test_forget_email_leaves_a_lead_that_does_not_hold_the_address_whatever_its_index_rows_say(app):
    # A repeat is told by its normalised content, not its raw input: a second POST of the same lead
    # naming another address only in an extra field is a repeat of the first, which never held it.
    who, forwarder = person(), person()
    lead_id = take_in(http_body(who))
    again = accept_http(json.dumps({**http_body(who), "Referrer": f"forwarded by {forwarder['Email']}"}).encode())
    assert (again.status, again.body["leadId"]) == (200, lead_id)
    book = LeadStore.from_settings().deliveries
    before = {delivery.destination: delivery.state for delivery in book.for_lead(lead_id)}

    done = erasure.forget_email(forwarder["Email"])
    assert (done.leads, done.deliveries_skipped) == ([], [])
    assert LeadStore.from_settings().get(lead_id).email == who["Email"]
    assert {delivery.destination: delivery.state for delivery in book.for_lead(lead_id)} == before
    assert erasure.forget_email(forwarder["Email"]).scanned == 0  # the row that misled it is gone


def test_an_index_row_of_a_lead_still_being_written_is_left_and_one_left_by_a_crash_goes(app):
    store, address = LeadStore.from_settings(), person()["Email"].casefold()
    store.ensure_tables()
    store.identities.record_addresses("h" + uuid.uuid4().hex[:24], "lead", [address])  # its lead not yet written
    assert erasure.forget_email(address).leads == []
    assert len(list(store.identities.holding(address))) == 1  # a lead on its way stays findable
    erasure.forget_email(address, now=datetime.now(UTC) + timedelta(hours=1))
    assert list(store.identities.holding(address)) == []  # long after: a crash's leftover, deleted


@pytest.mark.parametrize(
    "mention",
    ["'{address}'", "https://x.example/c?email={address}", "{{{address}}}", "see...{address}", "<mailto:{address}>"],
)
def test_forget_email_finds_an_address_however_the_text_around_it_is_punctuated(app, mention):
    who, mentioned = person(), person()
    body = http_body(who)
    body["Description"] = "write to " + mention.format(address=mentioned["Email"])
    lead_id = take_in(body)
    assert erasure.forget_email(mentioned["Email"]).leads == [lead_id]


def test_forget_email_finds_a_lead_whose_address_is_longer_than_rfc_5321_allows(app):
    who = {**person(), "Email": "a" * 70 + f"{uuid.uuid4().hex[:6]}@fabrikam.example"}
    lead_id = take_in(http_body(who))
    assert LeadStore.from_settings().get(lead_id).email == who["Email"]  # the normaliser keeps it
    assert erasure.forget_email(who["Email"]).leads == [lead_id]


def test_a_refused_body_full_of_addresses_costs_bounded_rows_and_each_address_still_finds_it(app):
    from leads.store.identities import MAX_ADDRESSES

    tag = uuid.uuid4().hex[:6]
    addresses = [f"crowd{index:02d}{tag}@fabrikam.example" for index in range(MAX_ADDRESSES + 5)]
    refused = accept_http(json.dumps({"UserDetails": 7, "Note": " ".join(addresses)}).encode())
    assert refused.status == 400
    identities = LeadStore.from_settings().identities.table

    def rows_of_it():
        suffix = f"{refused.body['rejectedId']}|rejected"
        return [row for row in identities.list_entities() if row["RowKey"].endswith(suffix)]

    assert len(rows_of_it()) == MAX_ADDRESSES + 1

    done = erasure.forget_email(addresses[-1].upper())  # one of those past the bound: found as crowded
    assert done.rejected == [refused.body["rejectedId"]]
    assert rows_of_it() == []
    assert left_behind(addresses, outbox()) == []


def store_the_old_way(who: dict[str, str], received_at: datetime) -> str:
    """A lead as a version before the identity and email indexes stored it: its row and
    deliveries in one transaction, nothing beside them."""
    from leads.store.deliveries import new_delivery_entity

    lead = from_http_body({**http_body(who), "CreatedTime": received_at.isoformat()}, received_at=received_at)
    lead = lead.model_copy(update={"lead_id": uuid.uuid4().hex})
    settings = get_settings()
    table = table_service(settings.storage_connection).create_table_if_not_exists(settings.table_prefix)
    rows = [{**lead_entity(lead), "WriteId": "old"}] + [
        new_delivery_entity(lead.lead_id, name, route, received_at) for name, route in plan(lead, settings).items()
    ]
    table.submit_transaction([("create", row) for row in rows])
    return lead.lead_id


def test_an_old_store_is_erased_by_reading_it_all_until_reindex_then_through_the_index(app, capsys):
    now = datetime.now(UTC)
    old = [person() for _ in range(3)]
    old_ids = [store_the_old_way(who, now - timedelta(days=400 - index)) for index, who in enumerate(old)]
    settings = get_settings()
    table = table_service(settings.storage_connection).get_table_client(settings.table_prefix)
    body = b'{"UserDetails": {"Email": "' + old[0]["Email"].encode() + b'", "FirstName": 7}'
    table.create_entity(
        {
            "PartitionKey": "hrefused-old",
            "RowKey": "rejected",
            "ReceivedAt": now,
            "Error": "bad",
            "Channel": "http",
            "Size": len(body),
            "Truncated": False,
            "Body0": body,
        }
    )

    assert cli(["forget", "--email", old[0]["Email"], "--json"]) == 0
    out, err = capsys.readouterr()
    assert "email index is not complete" in err and "python -m leads reindex" in err
    report = json.loads(out)
    assert (report["erasedLeads"], report["erasedRejected"]) == ([old_ids[0]], ["hrefused-old"])
    assert left_behind(personal_values(old[0]), outbox()) == []

    assert cli(["reindex"]) == 0
    assert "email addresses of 2 leads" in capsys.readouterr().out
    assert cli(["forget", "--email", old[1]["Email"], "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out)["erasedLeads"] == [old_ids[1]] and json.loads(out)["rowsScanned"] == 1
    assert left_behind(personal_values(old[1]), outbox()) == []
    assert LeadStore.from_settings().get(old_ids[2]).email == old[2]["Email"]
    assert cli(["reindex"]) == 0
    assert "complete" in capsys.readouterr().out


def test_import_matches_a_lead_stored_before_the_identities_once_reindexed(app, tmp_path):
    who = person()
    received = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    old_id = store_the_old_way(who, received)
    assert cli(["reindex"]) == 0
    path = tmp_path / "leads.jsonl"
    path.write_text(json.dumps({**http_body(who), "CreatedTime": (received + timedelta(hours=2)).isoformat()}) + "\n")
    report = import_file(path)
    assert (report.already_received, report.imported, report.imported_not_sent) == (1, 0, 0)
    assert [lead.lead_id for lead in LeadStore.from_settings().list(limit=None)] == [old_id]


# --- erasure beside a send, and an erasure cut short ---------------------------------------------


def test_forget_during_a_send_leaves_the_claim_to_its_worker_and_names_the_destination(app, monkeypatch):
    """forget lands while a worker is sending the lead: the delivery it holds is not turned
    skipped under it; the worker records what happened, and the report names the webhook, which
    has the person's data, so the operator erases it there too."""
    from leads.destinations.webhook import WebhookDestination

    who = person()
    lead = from_http_body(http_body(who))
    store = LeadStore.from_settings()
    store.add(lead, plan(lead, get_settings()))  # stored, not queued: this test is the worker
    report, send = {}, WebhookDestination.send

    def send_while_forgotten(self, lead_obj, route):
        sent = send(self, lead_obj, route)  # it reached the receiver
        report["erased"] = erasure.forget_lead(lead.lead_id)  # the operator's forget lands meanwhile
        return sent

    monkeypatch.setattr(WebhookDestination, "send", send_while_forgotten)
    assert deliver(lead.lead_id, "webhook").state == "delivered"
    assert lead.lead_id in app.leads
    assert store.deliveries.get(lead.lead_id, "webhook").state == "delivered"  # recorded as it happened
    done = report["erased"]
    assert f"{lead.lead_id}/webhook" not in done.deliveries_skipped
    assert [(sent["leadId"], sent["destination"], sent.get("inFlight")) for sent in done.sent_elsewhere] == [
        (lead.lead_id, "webhook", True)
    ]
    assert left_behind(personal_values(who), outbox()) == []


def test_forget_names_a_destination_an_earlier_attempt_may_have_reached(app, capsys):
    """A delivery whose worker stopped mid-send (its claim ran out) may have reached the
    destination: it is skipped, and named among the places to erase at."""
    who = person()
    lead_id = take_in(http_body(who))
    store = LeadStore.from_settings()
    delivery = store.deliveries.get(lead_id, "webhook")
    store.deliveries.change(
        delivery, state="sending", attempts=1, claimed_until=datetime.now(UTC) - timedelta(minutes=1)
    )
    assert cli(["forget", "--lead", lead_id, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert f"{lead_id}/webhook" in report["deliveriesSkipped"]
    assert [(sent["destination"], sent.get("inFlight")) for sent in report["sentElsewhere"]] == [("webhook", True)]
    assert store.deliveries.get(lead_id, "webhook").state == "skipped"


class Killed(BaseException):
    """The host ending a run (a timeout, a scale-in): nothing in the app catches it."""


@pytest.mark.parametrize("rerun", ["retention", "forget --lead"])
def test_an_erasure_killed_before_its_email_rows_went_is_finished_by_the_next_run(app, env, monkeypatch, rerun):
    from azure.data.tables import TableClient

    env(LEADS_RETENTION_DAYS="30")
    who = person()
    lead_id = store_received(who, datetime.now(UTC) - timedelta(days=60))
    store = LeadStore.from_settings()
    email_rows = lambda: list(store.identities.email_rows(who["Email"]))  # noqa: E731
    assert email_rows()
    delete, killed = TableClient.delete_entity, []

    def killed_at_the_first_email_row(self, *args, **kwargs):
        key = args[0] if args else kwargs.get("partition_key", "")
        if isinstance(key, str) and key.startswith("email|") and not killed:
            killed.append(key)
            raise Killed()
        return delete(self, *args, **kwargs)

    monkeypatch.setattr(TableClient, "delete_entity", killed_at_the_first_email_row)
    with pytest.raises(Killed):
        apply_retention()
    assert store.get_for_delivery(lead_id)[1] is True, "killed after the lead row was erased"
    if rerun == "retention":
        assert apply_retention().already_erased == [lead_id]
    else:
        assert erasure.forget_lead(lead_id).already_erased == [lead_id]
    assert email_rows() == []
    assert not any(key.startswith("Pending") for key in store.leads.get_entity(lead_id, "lead")), (
        "the rows' digests stay on the erased row only until the rerun"
    )
    assert left_behind(personal_values(who), outbox()) == []
    assert apply_retention().scanned <= 1 and email_rows() == []  # nothing left to finish
