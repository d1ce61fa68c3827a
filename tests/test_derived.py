"""Derived rows that cannot drift (leads/store/derived.py): an index entry is removed only by whoever
proves it stale, no read path writes, counts move with what they count or are recounted from the
truth. Each race is forced at the storage SDK's transport (tests/interleave.py), against Azurite
and a real webhook receiver; each of these failed on the version before the protocol.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from leads.core.settings import get_settings
from leads.delivery.deliver import deliver
from leads.delivery.queue import delivery_queue
from leads.intake.ingest import accept_http
from leads.ops.operations import STALE, maintain, replay, status, sweep
from leads.store.derived import GRACE
from leads.store.lead_store import LeadStore

from .conftest import EXAMPLE
from .fake_webhook import FakeWebhook
from .interleave import at_request, refusing, watching


@pytest.fixture
def webhook(storage, env):
    with FakeWebhook() as fake:
        env(
            **fake.settings(),
            EMAIL_TO="",
            LEADS_RETRY_BASE_SECONDS="0.2",
            LEADS_HTTP_TIMEOUT_SECONDS="1",
        )
        store = LeadStore.from_settings()
        store.ensure_tables()
        yield fake


def body(number: int) -> bytes:
    person = {**EXAMPLE["UserDetails"], "Email": f"person{number}@contoso.example", "LastName": f"Person{number}"}
    return json.dumps({**EXAMPLE, "UserDetails": person}).encode()


def queued() -> list[tuple[str, str]]:
    queue = delivery_queue()
    queue._ensure()
    found = []
    while batch := list(queue.client.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=30)):
        for message in batch:
            content = json.loads(message.content)
            found.append((content["leadId"], content["destination"]))
            queue.client.delete_message(message)
    return sorted(found)


def leads_table() -> str:
    return get_settings().table_prefix


def lead_transaction(call) -> bool:
    """The lead's own write: its transaction with its delivery rows."""
    return call.path.endswith("/$batch") and call.to_table(leads_table())


def later(minutes: float) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


# --- 1. a sweep racing intake -------------------------------------------------------------------


def test_a_sweep_racing_the_intake_leaves_the_lead_findable_and_the_next_sweep_queues_it(webhook):
    with at_request(lead_transaction, sweep) as swept, refusing(lambda call: call.is_queue and call.writes):
        answer = accept_http(body(1))
    assert swept and answer.status == 202  # the sweep ran between the entries and the transaction
    lead_id = answer.body["leadId"]
    assert queued() == []  # the intake's enqueue failed: only the sweep can find it now
    delivery = LeadStore.from_settings().deliveries.get(lead_id, "webhook")
    assert delivery.state == "pending"
    assert sweep(now=later(5)) == 1 and queued() == [(lead_id, "webhook")]
    assert status().open == {"webhook": 1}


# --- 2. status racing a failing delivery, and reads that write nothing ----------------------------


def delivery_failing(call) -> bool:
    return call.method == "PUT" and "delivery%7Cwebhook" in call.url.replace("|", "%7C") and b'"failed"' in call.body


def test_status_racing_a_failing_delivery_leaves_its_failed_entry_and_replay_finds_it(webhook):
    webhook.faults = ["400"]  # a permanent failure
    lead_id = accept_http(body(2)).body["leadId"]
    queued()
    with at_request(delivery_failing, status) as reported:
        assert deliver(lead_id, "webhook").state == "failed"
    assert reported  # status ran after the failed entry was written, before the row said so
    assert status().failed == {"webhook": 1}
    assert [(d.lead_id, d.destination) for d in replay()] == [(lead_id, "webhook")]


def test_status_writes_nothing_even_with_stale_entries_to_find(webhook):
    from leads.store.index import FAILED, delivery_entry

    lead_id = accept_http(body(3)).body["leadId"]
    store = LeadStore.from_settings()
    pending = store.deliveries.get(lead_id, "webhook")
    store.index.table.upsert_entity(delivery_entry(FAILED, pending))  # a failed entry for an open delivery
    store.leads.delete_entity(lead_id, "delivery|webhook")  # and an open entry pointing at nothing
    with watching() as calls:
        report = status()
    assert [call for call in calls if call.writes] == []
    assert report.failed == {}  # its delivery is not failed: not counted, and not removed either
    assert len(list(store.index.failed())) == 1 and len(list(store.index.open())) == 1


def test_api_status_writes_nothing(webhook):
    from leads.ops.health import status as api_status

    accept_http(body(4))
    with watching() as calls:
        assert api_status().status == 200
    assert [call for call in calls if call.writes] == []


# --- 3. replay --skipped racing the intake of a held-back lead -----------------------------------


def test_replay_skipped_racing_a_held_lead_leaves_it_held_counted_and_replayable(webhook):
    from leads.core.normalise import from_http_body
    from leads.destinations.routing import hold_backfill, plan

    settings = get_settings()
    lead = from_http_body(json.loads(body(5)), received_at=datetime.now(UTC) - timedelta(days=30))
    store = LeadStore.from_settings()
    with at_request(lead_transaction, lambda: replay(skipped=True)) as ran:
        store.add(lead, hold_backfill(lead, plan(lead, settings), settings))
    assert ran == [[]]  # it ran, and found nothing to replay yet
    assert status().held_back == {"webhook": 1}
    assert [d.lead_id for d in replay(skipped=True)] == [lead.lead_id]
    assert status().held_back == {}


# --- 4. deletes that found nothing ----------------------------------------------------------------


def test_the_sdk_delete_says_nothing_of_a_row_it_did_not_find_so_ours_does(storage):
    from leads.core.storage import delete_row, table_service

    table = table_service(storage.connection_string).get_table_client(f"{get_settings().table_prefix}Probe")
    table.create_table()
    assert table.delete_entity("p", "missing") is None  # azure-data-tables 12.x: no error, no answer
    table.create_entity({"PartitionKey": "p", "RowKey": "r"})
    read = table.get_entity("p", "r")
    table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "Changed": True})
    assert delete_row(table, "p", "r", read.metadata["etag"]) is False  # changed since read
    assert delete_row(table, "p", "r") is True and delete_row(table, "p", "r") is False


def test_the_held_tally_counts_only_the_deletes_that_found_their_entry(webhook):
    from leads.core.normalise import from_http_body
    from leads.destinations.routing import hold_backfill, plan

    settings, store = get_settings(), LeadStore.from_settings()
    held = []
    for number in (6, 7):
        lead = from_http_body(json.loads(body(number)), received_at=datetime.now(UTC) - timedelta(days=30))
        store.add(lead, hold_backfill(lead, plan(lead, settings), settings))
        held.append(lead.lead_id)
    (entry,) = [e for e in store.index.held() if e.lead_id == held[1]]
    assert [d.lead_id for d in replay(lead_id=held[1])] == [held[1]]  # leaves the held index
    # Two readers that read the entry before, each dropping it: neither finds it.
    assert store.index.drop(entry) is False and store.index.drop(entry) is False
    assert status().held_back == {"webhook": 1}


# --- 5. a replay leaves the day counts saying failed -----------------------------------------------


def test_failed_deliveries_replayed_and_delivered_are_counted_delivered_only(webhook):
    webhook.faults = ["400"] * 3
    ids = [accept_http(body(10 + n)).body["leadId"] for n in range(3)]
    queued()
    assert [deliver(lead_id, "webhook").state for lead_id in ids] == ["failed"] * 3
    assert status().counts == {"webhook": {"failed": 3}}
    assert len(replay()) == 3
    assert [deliver(lead_id, "webhook").state for lead_id in ids] == ["delivered"] * 3
    assert status().counts == {"webhook": {"delivered": 3}}
    assert status(now=later(1)).counts == {"webhook": {"delivered": 3}}


# --- 6. a count lost in a crash comes back ---------------------------------------------------------


def test_a_count_lost_between_a_change_and_its_count_is_recounted_by_the_maintenance_run(webhook):
    lead_id = accept_http(body(20)).body["leadId"]
    queued()
    counts_table = f"{leads_table()}Counts"
    with refusing(lambda call: call.to_table(counts_table)) as refused:
        assert deliver(lead_id, "webhook").state == "delivered"
    assert refused and status().counts == {}  # delivered, but not counted
    done = maintain()
    assert done["verify"]["differences"] == {"day count off": 1}
    assert status().counts == {"webhook": {"delivered": 1}}
    assert maintain()["verify"]["differences"] == {}


# --- the grace a missing target gets ---------------------------------------------------------------


def test_an_entry_pointing_at_nothing_is_removed_only_once_older_than_any_write(webhook):
    lead_id = accept_http(body(30)).body["leadId"]
    store = LeadStore.from_settings()
    store.leads.delete_entity(lead_id, "delivery|webhook")
    queued()
    sweep(now=later(STALE.total_seconds() / 60 + 1))
    assert len(list(store.index.open())) == 1
    sweep(now=later((GRACE + STALE).total_seconds() / 60))
    assert list(store.index.open()) == []
