"""The index beside the lead store: the sweep, ``replay``, ``status`` and ``list`` read what is
open or failed (or one page), never every lead ever stored; and stores written before the index
are indexed once, losing nothing and delivering nothing again.

Reads are counted at the storage SDK's transport (tests/storage_reads.py), against Azurite.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient

from leads import cli
from leads.core.normalise import from_http_body
from leads.core.settings import get_settings
from leads.delivery.queue import delivery_queue
from leads.destinations.routing import plan
from leads.ops.operations import STALE, replay, status, sweep
from leads.store.deliveries import new_delivery_entity
from leads.store.derived import GRACE
from leads.store.index import OPEN, SHARDS, delivery_row_key, shard_of
from leads.store.lead_store import LeadStore
from leads.store.rows import lead_entity

from .conftest import EXAMPLE, FIXTURES
from .storage_reads import counting_table_reads

# Yesterday 09:00 UTC: within status's window of days, which counts the leads received in it.
START = (datetime.now(UTC) - timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)


@pytest.fixture
def app(storage, env):
    """The app's storage, a webhook destination that is never called here, and an own queue."""
    suffix = get_settings().table_prefix
    env(
        WEBHOOK_URL="http://127.0.0.1:9/never-called",
        WEBHOOK_SECRET="s",
        EMAIL_TO="",
        LEADS_DELIVERY_QUEUE=f"q{suffix.lower()}",
    )
    store = LeadStore.from_settings()
    store.ensure_tables()
    return store


def lead_at(index: int, received_at: datetime | None = None):
    received_at = received_at or START + timedelta(minutes=index)
    return from_http_body({**EXAMPLE, "OfferTitle": f"Offer {index}"}, received_at=received_at)


def store_finished(store: LeadStore, count: int, start: int = 0) -> list[str]:
    """Store leads the way the intake does and see each delivery through to ``delivered``."""
    ids = []
    for index in range(start, start + count):
        lead = lead_at(index)
        store.add(lead, plan(lead, get_settings()))
        for delivery in store.deliveries.for_lead(lead.lead_id):
            store.deliveries.change(delivery, state="delivered", external_id="x")
        ids.append(lead.lead_id)
    return ids


def queued() -> list[tuple[str, str]]:
    client = delivery_queue().client
    delivery_queue()._ensure()
    messages = []
    while batch := list(client.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=30)):
        for message in batch:
            body = json.loads(message.content)
            messages.append((body["leadId"], body["destination"]))
            client.delete_message(message)
    return sorted(messages)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--settings", "/nonexistent", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- what routine work reads ----------------------------------------------------------------------


def test_sweep_status_replay_and_list_read_no_history(app):
    leads_table = app.leads.table_name
    later = datetime.now(UTC) + STALE * 2
    reads = {}
    for stored in (40, 80):
        store_finished(app, 40, start=stored - 40)
        with counting_table_reads() as swept:
            assert sweep(now=later) == 0
        with counting_table_reads() as replayed:
            assert replay() == []
        with counting_table_reads() as reported:
            report = status()
        with counting_table_reads() as listed:
            page = app.list(limit=10)
        assert len(page) == 10 and report.counts["webhook"]["delivered"] == stored
        # Nothing is open or failed: not one row of the lead store is read, whatever it holds.
        assert (swept.of(leads_table), replayed.of(leads_table), reported.of(leads_table)) == (0, 0, 0)
        assert listed.of(leads_table) == 10  # the page's leads, no more
        assert listed.total - listed.of(leads_table) <= 11 + 1  # a page of the timeline, and whether it is built
        reads[stored] = (swept.total, replayed.total)
    assert reads[40] == reads[80]


def test_the_sweep_does_not_run_on_every_instance_start():
    import subprocess
    import sys

    # In a process of its own: the host's function list is built once per process.
    script = (
        "import json, function_app; print(json.dumps({f.get_function_name(): b.run_on_startup "
        "for f in function_app.app.get_functions() for b in f.get_bindings() if b.type == 'timerTrigger'}))"
    )
    timers = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=FIXTURES.parent.parent
        ).stdout
    )
    assert timers["sweep_deliveries"] is False and not any(timers.values())


# --- the open and failed indexes -------------------------------------------------------------------


def test_the_sweep_finds_open_deliveries_and_drops_entries_left_over(app):
    stuck = lead_at(1)
    app.add(stuck, plan(stuck, get_settings()))  # the process died before queueing
    gone = lead_at(2)
    app.add(gone, plan(gone, get_settings()))
    app.leads.delete_entity(gone.lead_id, "delivery|webhook")  # an entry pointing at nothing
    assert sorted(entry.lead_id for entry in app.index.open()) == sorted([stuck.lead_id, gone.lead_id])

    assert sweep(now=datetime.now(UTC) + STALE * 2) == 1
    assert queued() == [(stuck.lead_id, "webhook")]
    # Pointing at nothing, but young: it may be a lead whose transaction is on its way. It stays
    # until it is older than any write can take.
    assert sorted(entry.lead_id for entry in app.index.open()) == sorted([stuck.lead_id, gone.lead_id])
    assert sweep(now=datetime.now(UTC) + GRACE + STALE) == 1
    assert [entry.lead_id for entry in app.index.open()] == [stuck.lead_id]


def test_a_delivery_leaves_the_open_index_when_it_ends_and_a_failure_enters_the_replay_index(app):
    lead = lead_at(1)
    app.add(lead, plan(lead, get_settings()))
    delivery = app.deliveries.get(lead.lead_id, "webhook")
    sending = app.deliveries.change(delivery, state="sending", attempts=1)
    assert [entry.lead_id for entry in app.index.open()] == [lead.lead_id]
    app.deliveries.change(sending, state="failed", last_error="the service answered 410 Gone")
    assert list(app.index.open()) == [] and [entry.lead_id for entry in app.index.failed()] == [lead.lead_id]

    assert [d.lead_id for d in replay()] == [lead.lead_id]
    assert list(app.index.failed()) == [] and [entry.lead_id for entry in app.index.open()] == [lead.lead_id]
    assert queued() == [(lead.lead_id, "webhook")]
    assert replay() == []  # once is enough


def test_deliveries_held_back_by_the_backfill_limit_are_replayed_from_the_index(app):
    from leads.store.rows import BACKFILL_REASON

    lead = lead_at(1)
    app.add(lead, plan(lead, get_settings()))
    held = app.deliveries.change(
        app.deliveries.get(lead.lead_id, "webhook"), state="skipped", last_error=f"{BACKFILL_REASON} (7) when taken in"
    )
    assert held and [entry.lead_id for entry in app.index.held()] == [lead.lead_id]
    assert list(app.index.failed()) == []
    report = status()
    assert report.held_back == {"webhook": 1} and report.failed == {} and report.open == {}

    assert replay() == []  # a plain replay sends failures only
    assert [d.lead_id for d in replay(destination="webhook", skipped=True)] == [lead.lead_id]
    assert app.deliveries.get(lead.lead_id, "webhook").state == "pending"
    assert queued() == [(lead.lead_id, "webhook")]


def hold(store: LeadStore, count: int) -> list[str]:
    """Take in ``count`` leads older than LEADS_BACKFILL_DAYS, as the first poll of a table holding
    years of rows does: stored, each delivery held back (``skipped`` with the backfill reason)."""
    from leads.destinations.routing import hold_backfill

    settings, ids = get_settings(), []
    for _ in range(count):
        lead = from_http_body(
            {**EXAMPLE, "OfferTitle": f"Offer {uuid.uuid4().hex}"}, received_at=datetime.now(UTC) - timedelta(days=400)
        )
        store.add(lead, hold_backfill(lead, plan(lead, settings), settings))
        ids.append(lead.lead_id)
    return ids


def test_status_and_replay_read_no_held_back_history(app):
    leads_table, held_table = app.leads.table_name, f"{get_settings().table_prefix}Held"
    reads, held = {}, []
    for count in (10, 40):
        held += hold(app, count - len(held))
        with counting_table_reads() as reported:
            report = status()
        with counting_table_reads() as replayed:
            assert replay() == []  # a plain replay sends failures only
        assert report.held_back == {"webhook": count} and report.failed == {} and report.open == {}
        # Held-back leads are history until replayed: status and replay read none of them, nor
        # their entries; status reads the tally, one row in each shard of the held index.
        assert (reported.of(leads_table), replayed.of(leads_table)) == (0, 0)
        assert (reported.of(held_table), replayed.of(held_table)) == (SHARDS, 0)
        reads[count] = (sum(reported.requests.values()), replayed.total)
    assert reads[10] == reads[40]

    assert sorted(d.lead_id for d in replay(skipped=True)) == sorted(held)  # read from the held index
    assert queued() == sorted((lead_id, "webhook") for lead_id in held)
    assert status().held_back == {} and list(app.index.held()) == []


def test_a_held_lead_taken_in_twice_is_counted_once(app):
    from leads.destinations.routing import hold_backfill

    settings = get_settings()
    lead = lead_at(1, received_at=datetime.now(UTC) - timedelta(days=400))
    for _ in range(2):  # a marketplace row read again by the poll's overlap
        app.add(lead, hold_backfill(lead, plan(lead, settings), settings))
    assert status().held_back == {"webhook": 1} and [e.lead_id for e in app.index.held()] == [lead.lead_id]
    assert [d.lead_id for d in replay(lead_id=lead.lead_id)] == [lead.lead_id]  # replay --lead sends it too
    assert status().held_back == {} and list(app.index.held()) == []


def held_the_old_way(store: LeadStore, index: int) -> str:
    """A lead held back as the version before the held index left it: its delivery ``skipped``
    with the backfill reason, its entry among the failed ones (``f|``). Returns its id."""
    from leads.store.index import FAILED, delivery_entry
    from leads.store.rows import BACKFILL_REASON, delivery_entity

    lead = lead_at(index)
    store.add(lead, plan(lead, get_settings()))
    pending = store.deliveries.get(lead.lead_id, "webhook")
    held = replace(pending, state="skipped", last_error=f"{BACKFILL_REASON} (7) when taken in")
    store.leads.update_entity(delivery_entity(held))
    store.index.table.delete_entity(shard_of(lead.lead_id), delivery_row_key(OPEN, pending))
    store.index.table.upsert_entity(delivery_entry(FAILED, held))
    return lead.lead_id


def test_held_entries_an_earlier_version_kept_among_the_failed_ones_are_moved_by_the_maintenance_run(app):
    from leads.ops.operations import maintain

    ids = [held_the_old_way(app, index) for index in range(3)]
    before = status()  # reads only: it neither counts them as failed nor moves them
    assert (before.held_back, before.failed) == ({}, {}) and len(list(app.index.failed())) == 3

    done = maintain()  # verify --repair of the recent days and the open work: moved, counted
    # (the old way above changed the rows without counting them: yesterday's count is off too)
    assert done["verify"]["differences"] == {"day count off": 1, "held entry missing": 3, "stale failed entry": 3}
    assert list(app.index.failed()) == [] and sorted(e.lead_id for e in app.index.held()) == sorted(ids)
    with counting_table_reads() as reported:
        assert status().held_back == {"webhook": 3}
    assert reported.of(app.leads.table_name) == 0  # moved: not read again
    assert sorted(d.lead_id for d in replay(skipped=True)) == sorted(ids)
    assert status().held_back == {}


def test_a_duplicate_leaves_no_entries_behind(app):
    from leads.intake.ingest import accept_http

    first = accept_http(json.dumps(EXAMPLE).encode())
    again = accept_http(json.dumps(EXAMPLE).encode())
    assert (first.status, again.status) == (202, 200)
    assert [lead.lead_id for lead in app.list()] == [first.body["leadId"]]
    assert [(e.lead_id, e.destination) for e in app.index.open()] == [(first.body["leadId"], "webhook")]
    assert sum(1 for _ in app.index.newest()) == 1


def test_status_counts_stay_exact_under_concurrent_workers(app):
    leads = [lead_at(index) for index in range(48)]
    for lead in leads:
        app.add(lead, plan(lead, get_settings()))
    pending = [app.deliveries.get(lead.lead_id, "webhook") for lead in leads]

    def finish(chunk):
        for delivery in chunk:
            assert app.deliveries.change(delivery, state="delivered")

    threads = [threading.Thread(target=finish, args=(pending[n::8],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = status()
    assert report.counts["webhook"] == {"delivered": 48}
    assert report.open == {} and report.oldest_pending is None


# --- list ------------------------------------------------------------------------------------------


def test_list_pages_newest_first_with_a_cursor_since_and_until(app, capsys):
    ids = [lead.lead_id for lead in map(lead_at, range(25)) if not app.add(lead).duplicate]
    newest_first = ids[::-1]
    code, out, err = run_cli(capsys, "list", "--json", "--limit", "10")
    assert code == 0 and [lead["leadId"] for lead in json.loads(out)] == newest_first[:10]
    pages, cursor = [json.loads(out)], err.split("--cursor ")[1].strip()
    while cursor:
        code, out, err = run_cli(capsys, "list", "--json", "--limit", "10", "--cursor", cursor)
        pages.append(json.loads(out))
        cursor = err.split("--cursor ")[1].strip() if "--cursor" in err else None
    assert [lead["leadId"] for page in pages for lead in page] == newest_first
    assert [len(page) for page in pages] == [10, 10, 5]

    since, until = (START + timedelta(minutes=5)).isoformat(), (START + timedelta(minutes=8)).isoformat()
    code, out, _ = run_cli(capsys, "list", "--json", "--since", since, "--until", until)
    assert [lead["leadId"] for lead in json.loads(out)] == [ids[7], ids[6], ids[5]]
    code, out, _ = run_cli(capsys, "list", "--since", f"{START:%Y-%m-%d}T09:24")
    assert ids[24] in out and ids[23] not in out and "Next page" not in out


def test_list_all_exports_every_lead_as_json_lines(app, capsys):
    ids = {lead.lead_id for lead in map(lead_at, range(60)) if not app.add(lead).duplicate}
    code, out, _ = run_cli(capsys, "list", "--all")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == 60 and {line["leadId"] for line in lines} == ids
    times = [line["receivedAt"] for line in lines]
    assert times == sorted(times, reverse=True)


def test_a_bad_time_is_a_clear_error(app, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--settings", "/nonexistent", "list", "--since", "yesterday"])
    assert "'yesterday' is not a date or time" in capsys.readouterr().err


def test_rejected_records_appear_in_list_and_status(app, capsys):
    lead = lead_at(1)
    app.add(lead)
    received = START + timedelta(minutes=2)
    app.reject("tbroken", "CustomerInfo is not valid JSON", {"RowKey": "broken", "CustomerInfo": "{not json"}, received)

    code, out, _ = run_cli(capsys, "list", "--json")
    listed = json.loads(out)
    assert [item["leadId"] for item in listed] == ["tbroken", lead.lead_id]
    assert listed[0]["rejected"] is True and listed[0]["error"] == "CustomerInfo is not valid JSON"
    assert listed[0]["raw"]["CustomerInfo"] == "{not json"
    code, out, _ = run_cli(capsys, "list")
    assert "tbroken" in out and "REJECTED: CustomerInfo is not valid JSON" in out

    report = status()
    assert report.counts["intake"] == {"rejected": 1}
    assert [r["leadId"] for r in report.recent_rejections] == ["tbroken"]
    code, out, _ = run_cli(capsys, "status")
    assert "Recently rejected" in out and "tbroken" in out


# --- stores written before the index ---------------------------------------------------------------


def write_the_old_way(connection: str, table_name: str) -> dict[str, str]:
    """Rows as the version before the index wrote them: a lead and its deliveries in one
    transaction, a rejected row; no index. Returns lead ids by what became of them."""
    from leads.store.rows import BACKFILL_REASON

    service = TableServiceClient.from_connection_string(connection)
    table = service.create_table_if_not_exists(table_name)
    settings = get_settings()
    long_ago = datetime(2025, 3, 1, tzinfo=UTC)
    states = {
        "delivered": "delivered",
        "failed": "failed",
        "stuck": "pending",
        "claim_ran_out": "sending",
        "held_back": "skipped",
    }
    ids = {}
    for number, (name, state) in enumerate(states.items()):
        lead = lead_at(number, received_at=long_ago + timedelta(days=number))
        (route,) = plan(lead, settings).values()
        delivery = new_delivery_entity(lead.lead_id, "webhook", route, long_ago + timedelta(days=number))
        delivery.update({"State": state, "Attempts": 1})
        if state == "failed":
            delivery["LastError"] = "the service answered 410 Gone"
        if state == "sending":
            delivery["ClaimedUntil"] = long_ago
        if state == "skipped":
            delivery["LastError"] = BACKFILL_REASON
        table.submit_transaction([("create", {**lead_entity(lead), "WriteId": "old"}), ("create", delivery)])
        ids[name] = lead.lead_id
    table.upsert_entity(
        {
            "PartitionKey": "told",
            "RowKey": "rejected",
            "ReceivedAt": long_ago,
            "Error": "no lead",
            "Raw": json.dumps({"RowKey": "r"}),
        }
    )
    ids["rejected"] = "told"
    return ids


@pytest.fixture
def old_store(storage, env):
    settings = get_settings()
    env(
        WEBHOOK_URL="http://127.0.0.1:9/never-called",
        WEBHOOK_SECRET="s",
        EMAIL_TO="",
        LEADS_DELIVERY_QUEUE=f"q{settings.table_prefix.lower()}",
    )
    return write_the_old_way(storage.connection_string, get_settings().table_prefix)


def test_a_store_from_before_the_index_is_indexed_by_reindex(old_store, capsys):
    code, out, err = run_cli(capsys, "list", "--json")
    assert json.loads(out) == [] and "still being built" in err

    code, out, _ = run_cli(capsys, "reindex")
    assert code == 0 and "Indexed 6 leads and rejected records, 4 open or failed deliveries" in out
    code, out, _ = run_cli(capsys, "reindex")
    assert "The index is complete" in out

    code, out, err = run_cli(capsys, "list", "--all")
    newest_first = ("held_back", "claim_ran_out", "stuck", "failed", "delivered", "rejected")
    assert [json.loads(line)["leadId"] for line in out.splitlines()] == [old_store[name] for name in newest_first]
    assert "still being built" not in err
    report = status()
    assert report.open == {"webhook": 2} and report.failed == {"webhook": 1} and report.held_back == {"webhook": 1}
    assert report.index_built

    assert sweep() == 2
    assert queued() == sorted([(old_store["stuck"], "webhook"), (old_store["claim_ran_out"], "webhook")])
    assert [d.lead_id for d in replay()] == [old_store["failed"]]
    assert [d.lead_id for d in replay(skipped=True)] == [old_store["held_back"]]
    assert queued() == sorted([(old_store["failed"], "webhook"), (old_store["held_back"], "webhook")])
    book = LeadStore.from_settings().deliveries
    assert book.get(old_store["delivered"], "webhook").state == "delivered"  # never queued again


def test_a_store_from_before_the_index_is_indexed_by_the_maintenance_run(old_store):
    from leads.ops.operations import maintain

    store = LeadStore.from_settings()
    store.ensure_tables()
    assert not store.index.built()
    progress = store.index.build(store.leads, seconds=0, page=2)  # a build cut short keeps its place
    assert not progress["Done"] and progress["ResumeFrom"]

    maintain()  # finishes the build, then verifies
    assert store.index.built()
    assert sweep() == 2
    assert queued() == sorted([(old_store["stuck"], "webhook"), (old_store["claim_ran_out"], "webhook")])
    assert {lead.lead_id for lead in store.list(limit=None)} == set(old_store.values()) - {"told"}
