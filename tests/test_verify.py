"""``verify``: on a store the app built it finds nothing; with differences planted (tests/plant.py)
it finds exactly those and ``--repair`` leaves none; on a store as the version before this one
left it, it finds what that version left and mends it. Against Azurite and a real webhook.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from leads import cli
from leads.core.normalise import from_http_body
from leads.core.settings import get_settings
from leads.delivery.deliver import deliver
from leads.destinations.routing import hold_backfill, plan
from leads.intake.ingest import accept_http
from leads.ops.operations import maintain, replay, status
from leads.store.derived import GRACE, TALLY_ROW
from leads.store.index import FAILED, OPEN, delivery_entry, delivery_row_key, shard_of, shards
from leads.store.lead_store import LeadStore
from leads.store.rows import delivery_entity
from leads.store.verify import verify

from .conftest import EXAMPLE
from .fake_webhook import FakeWebhook
from .plant import plant


def body(number: int) -> dict:
    return {**EXAMPLE, "UserDetails": {**EXAMPLE["UserDetails"], "Email": f"verify{number}@contoso.example"}}


@pytest.fixture
def built(storage, env):
    """A store the app built: leads delivered, one failed, one held back, one rejected."""
    with FakeWebhook() as fake:
        env(**fake.settings(), EMAIL_TO="")
        store = LeadStore.from_settings()
        store.ensure_tables()
        ids = [accept_http(json.dumps(body(n)).encode()).body["leadId"] for n in range(4)]
        fake.faults = ["400"]
        assert deliver(ids[0], "webhook").state == "failed"
        for lead_id in ids[1:]:
            assert deliver(lead_id, "webhook").state == "delivered"
        settings = get_settings()
        held = from_http_body(body(9), received_at=datetime.now(UTC) - timedelta(days=30))
        store.add(held, hold_backfill(held, plan(held, settings), settings))
        assert accept_http(b"not json").status == 400
        yield store


def later() -> datetime:
    return datetime.now(UTC) + GRACE + timedelta(minutes=1)


def test_a_store_the_app_built_has_nothing_to_verify(built):
    report = verify(now=later())
    assert report.by_kind() == {} and report.complete
    assert report.checked["leads"] == 5 and report.checked["rejected"] == 1 and report.checked["held entries"] == 1
    assert verify(since_days=1, now=later()).by_kind() == {}


def test_verify_finds_exactly_what_was_planted_and_repair_leaves_nothing(built):
    planted = plant(built)
    found = verify(now=later())
    assert Counter(found.by_kind()) == planted
    assert not any(difference.repaired for difference in found.differences)
    repaired = verify(repair=True, now=later())
    assert Counter(repaired.by_kind()) == planted and repaired.repaired == sum(planted.values())
    assert verify(now=later()).by_kind() == {}


def test_the_bounded_run_finds_the_recent_days_plants_but_email_rows_only_the_whole_run_reads(built):
    planted = plant(built)
    found = verify(since_days=1, now=later(), repair=True)
    # Email rows are partitioned by address, so no day's read finds one that names a lead which
    # does not hold its address (one left by an intake that died is found: its day's identity
    # row names it; see test_model).
    assert Counter(found.by_kind()) == planted - Counter({"stale email row": 1})
    assert verify(now=later()).by_kind() == {"stale email row": 1}


def test_the_cli_says_what_it_found_and_exits_1_until_repaired(built, capsys):
    planted = plant(built)
    assert cli.main(["--settings", "none", "verify", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert Counter(report["differences"]) == planted
    assert all(set(item) == {"kind", "about", "repaired"} for item in report["details"])
    assert "@" not in json.dumps(report)  # ids only, never personal data
    assert cli.main(["--settings", "none", "verify", "--repair"]) == 0
    out = capsys.readouterr().out
    assert "(repaired)" in out
    assert cli.main(["--settings", "none", "verify", "--since", "1"]) == 0
    assert "No difference" in capsys.readouterr().out
    assert status().verified["differences"] == {}


def as_the_version_before(store: LeadStore) -> None:
    """What the version before this one left: held entries among the failed ones and no held
    tally (its tally was 16 rows of the counts table, partition ``held``), day counters that
    counted a replay's failure and its delivery both."""
    for shard in shards():
        store.index.held_table.delete_entity(shard, TALLY_ROW)
    for entry in list(store.index.held()):
        store.index.held_table.delete_entity(entry.partition, entry.row_key)
        delivery = store.deliveries.get(entry.lead_id, entry.destination)
        store.index.table.upsert_entity(delivery_entry(FAILED, delivery))
    store.counters.table.upsert_entity({"PartitionKey": "held", "RowKey": "00", "webhook": -3})
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    slot = {"PartitionKey": f"count|{today}", "RowKey": "15"}  # one failure more than there were, in any slot
    counted = next(
        iter(
            store.counters.table.query_entities(
                "PartitionKey eq @p and RowKey eq @r", parameters={"p": slot["PartitionKey"], "r": "15"}
            )
        ),
        {},
    )
    store.counters.table.upsert_entity({**slot, "webhook_failed": int(counted.get("webhook_failed") or 0) + 1})


def test_a_store_the_version_before_left_is_carried_forward_by_the_maintenance_run(built):
    as_the_version_before(built)
    report = status()
    assert report.held_back == {} and not report.held_back_counted and report.failed == {"webhook": 1}
    found = verify(since_days=2, now=later())
    assert found.by_kind() == {"day count off": 1, "held entry missing": 1, "stale failed entry": 1}
    maintain(now=later())  # counts the held shards, and verify --repair of the recent days
    report = status()
    assert report.held_back == {"webhook": 1} and report.held_back_counted and report.failed == {"webhook": 1}
    assert report.counts == {"intake": {"rejected": 1}, "webhook": {"delivered": 3, "failed": 1}}
    assert verify(now=later()).by_kind() == {}
    assert [d.destination for d in replay(skipped=True)] == ["webhook"]


def test_a_held_tally_counted_while_writers_go_on_ends_exact(built):
    from leads.store.index import HELD, past

    settings = get_settings()
    tally = built.index.held_tally
    for shard in shards():
        built.index.held_table.delete_entity(shard, TALLY_ROW)
    counted_before = []
    for number in range(10, 16):  # writers during the pass: entries added and removed
        lead = from_http_body(body(number), received_at=datetime.now(UTC) - timedelta(days=30))
        built.add(lead, hold_backfill(lead, plan(lead, settings), settings))
        for shard in shards():
            tally.recount_step(shard, HELD, past(HELD), page=1)  # a page of one entry between writes
        counted_before.append(lead.lead_id)
    replay(lead_id=counted_before[0])
    assert built.index.count_held()
    counts, complete = built.index.held_back()
    assert complete and counts == {"webhook": 6}  # the first held lead and five of these


def test_a_delivery_changed_under_verify_is_not_counted_twice(built):
    """A recount that read a delivery's new state before its count landed writes nothing, or
    is recounted: the next run ends with the truth."""
    lead_id = accept_http(json.dumps(body(40)).encode()).body["leadId"]
    store = built
    delivery = store.deliveries.get(lead_id, "webhook")
    # The change landed, its count not yet (the worker is slow): the row alone says delivered.
    done = replace(delivery, state="delivered", etag=None)
    store.leads.upsert_entity(delivery_entity(done))
    store.index.table.delete_entity(shard_of(lead_id), delivery_row_key(OPEN, delivery))
    verify(since_days=1, repair=True, now=later())  # counts it from the row
    store.counters.add(done.lead_day, {"webhook_delivered": 1})  # the slow worker's count, at last
    assert status().counts["webhook"]["delivered"] == 5  # for now one too many
    verify(since_days=1, repair=True, now=later())
    assert status().counts["webhook"]["delivered"] == 4 and verify(now=later()).by_kind() == {}
