"""The marketplace table poll against Azurite: every row, every page, once; one odd row stays
with that row; history is stored, not delivered; an unchanged table costs the same at any size."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableClient
from azure.functions.timer import TimerRequest

import function_app
from leads.cli import main as cli
from leads.core.normalise import table_lead_id
from leads.core.settings import get_settings
from leads.core.storage import table_service
from leads.delivery.queue import delivery_queue
from leads.intake import poll
from leads.intake.poll import Checkpoint, Marks, _recently_stored, poll_marketplace
from leads.ops.operations import replay
from leads.store.lead_store import LeadStore

from .conftest import FIXTURES
from .fake_webhook import FakeWebhook
from .workers import drain

ENTITY = json.loads((FIXTURES / "marketplace" / "table-entity-test-lead.json").read_text())


@pytest.fixture
def marketplace(storage) -> TableClient:
    """The marketplace's table, created as the marketplace does with its first lead."""
    _recently_stored.clear()  # each test sees the store, not what an earlier poll remembered
    settings = get_settings()
    table = table_service(settings.storage_connection).get_table_client(settings.marketplace_table_name)
    table.create_table()
    yield table
    _recently_stored.clear()


def today() -> str:
    """The PartitionKey the marketplace gives a row written now (a date, as far as anyone has seen)."""
    return f"{datetime.now(UTC):%Y-%m-%d}"


def write_rows(table: TableClient, count: int, start: int = 0, partition: str | None = None) -> list[str]:
    """Write rows as the marketplace does, in batches of 100 (one partition per batch)."""
    partition = partition or today()
    keys = [f"row-{index:05d}" for index in range(start, start + count)]
    for offset in range(0, count, 100):
        table.submit_transaction(
            [
                (
                    "create",
                    {
                        **ENTITY,
                        "PartitionKey": partition,
                        "RowKey": key,
                        "CustomerInfo": json.dumps(
                            {
                                "FirstName": f"Person {key}",
                                "Email": f"{key}@contoso.com",
                                "Country": "US",
                                "Company": "Contoso",
                            }
                        ),
                    },
                )
                for key in keys[offset : offset + 100]
            ]
        )
    return keys


def stored_leads() -> int:
    return len(LeadStore.from_settings().list(limit=None))


def test_a_table_that_does_not_exist_yet_is_normal(storage):
    result = poll_marketplace()
    assert result.table_missing and result.read == 0


def test_more_than_a_thousand_rows_over_several_pages_are_all_taken_in_once(marketplace, monkeypatch):
    write_rows(marketplace, 1050)  # a page holds 1,000: this makes two (more rows would add time, not pages)
    pages_read, pages_read_when_started = [0], []

    def counted_source(settings):
        def count(response):
            pages_read[0] += 1

        return TableClient.from_connection_string(
            settings.storage_connection, settings.marketplace_table_name, raw_response_hook=count
        )

    take_in = poll._prepare  # once a row of the page, before the page is stored

    def counted_take_in(*args, **kwargs):
        pages_read_when_started.append(pages_read[0])
        return take_in(*args, **kwargs)

    monkeypatch.setattr(poll, "marketplace_table", counted_source)
    monkeypatch.setattr(poll, "_prepare", counted_take_in)
    first = poll_marketplace()
    assert (first.read, first.stored) == (1050, 1050)
    assert stored_leads() == 1050
    # Memory stays bounded by a page: the second page is read only once the first is stored.
    assert set(pages_read_when_started[:1000]) == {1}
    monkeypatch.undo()

    second = poll_marketplace()
    assert second.stored == 0
    _recently_stored.clear()  # a fresh instance remembers nothing: the store still refuses a second copy
    third = poll_marketplace()
    assert third.stored == 0 and third.already_stored == third.read
    assert stored_leads() == 1050


def test_the_checkpoint_moves_to_the_newest_row_and_later_rows_are_taken_in(marketplace):
    write_rows(marketplace, 3)
    first = poll_marketplace()
    newest = max(entity.metadata["timestamp"] for entity in marketplace.list_entities())
    assert first.watermark == newest
    write_rows(marketplace, 2, start=3)
    second = poll_marketplace()
    assert second.stored == 2
    assert stored_leads() == 5


def test_a_late_row_with_an_older_timestamp_inside_the_overlap_is_not_missed(marketplace):
    write_rows(marketplace, 2)
    poll_marketplace()
    # Another writer's clock runs behind: the watermark is already past the next row's Timestamp.
    checkpoint = Checkpoint(LeadStore.from_settings(), get_settings().marketplace_table_name)
    checkpoint.read()
    checkpoint.advance(Marks(watermark=datetime.now(UTC) + timedelta(minutes=3)))
    write_rows(marketplace, 1, start=2)
    late = next(e for e in marketplace.list_entities() if e["RowKey"] == "row-00002")
    assert late.metadata["timestamp"] < checkpoint.read()

    result = poll_marketplace()
    assert result.stored == 1
    assert stored_leads() == 3


def test_two_polls_racing_take_in_each_row_once(marketplace):
    write_rows(marketplace, 600)
    results, errors = [], []

    def run():
        try:
            results.append(poll_marketplace())
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(result.stored for result in results) == 600
    assert stored_leads() == 600


def test_a_stale_checkpoint_write_never_moves_the_watermark_back(storage):
    store = LeadStore.from_settings()
    store.ensure_tables()
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    slow, fast = Checkpoint(store, "Racing"), Checkpoint(store, "Racing")
    assert slow.read() is None and fast.read() is None
    assert fast.advance(Marks(watermark=late)).watermark == late
    # Its conditional write fails, it re-reads and keeps the newer mark.
    assert slow.advance(Marks(watermark=early)).watermark == late
    assert Checkpoint(store, "Racing").read() == late


def test_a_row_that_holds_no_lead_is_kept_as_rejected_and_the_poll_moves_on(marketplace):
    marketplace.create_entity({**ENTITY, "PartitionKey": today(), "RowKey": "broken", "CustomerInfo": "{not json"})
    write_rows(marketplace, 1)
    result = poll_marketplace()
    assert (result.stored, result.rejected) == (1, 1)
    store = LeadStore.from_settings()
    rejected_id = next(lead_id for lead_id in {lead.lead_id for lead in store.list()} ^ _all_lead_partitions(store))
    rejected = store.rejected(rejected_id)
    assert "CustomerInfo is not valid JSON" in rejected["error"]
    assert rejected["raw"]["CustomerInfo"] == "{not json"
    assert poll_marketplace().rejected == 0  # remembered, not rejected again
    _recently_stored.clear()  # `python -m leads poll` by hand: a new process remembers nothing
    again = poll_marketplace()
    assert (again.rejected, again.already_stored) == (0, 2)  # the store remembers


def _all_lead_partitions(store: LeadStore) -> set[str]:
    return {entity["PartitionKey"] for entity in store.leads.list_entities(select=["PartitionKey"])}


def test_the_timer_function_polls(marketplace):
    write_rows(marketplace, 4)
    function_app.poll_marketplace_table(TimerRequest(past_due=False))
    assert stored_leads() == 4


def lead_id_of(partition: str, row_key: str) -> str:
    return table_lead_id(get_settings().marketplace_table_name, partition, row_key)


def newest_timestamp(table: TableClient) -> datetime:
    return max(entity.metadata["timestamp"] for entity in table.list_entities())


# --- one odd row stays with that row -----------------------------------------------------------


def test_a_row_with_a_binary_property_does_not_stop_the_intake(marketplace):
    day = today()  # once: a test that runs across midnight UTC still knows its rows' partition
    marketplace.create_entity({**ENTITY, "PartitionKey": day, "RowKey": "binary", "Extra": b"\xff\x00\xfe"})
    good = write_rows(marketplace, 3, partition=day)
    first = poll_marketplace()
    assert first.watermark == newest_timestamp(marketplace)  # moved past the odd row
    good += write_rows(marketplace, 1, start=3, partition=day)
    for _ in range(poll.ROW_TRIES):
        poll_marketplace()
    store = LeadStore.from_settings()
    assert all(store.get(lead_id_of(day, key)) for key in good)
    binary = lead_id_of(day, "binary")
    assert store.get(binary) is not None and store.rejected(binary) is None  # its lead is fine: stored


@pytest.fixture
def buggy_normaliser(monkeypatch, env):
    """A bug in normalising some rows (raising for the RowKeys in ``failures``, as many times as
    listed): no real input is known to trigger one, which is the point of the safety net. The
    overlap is off, so a later poll meets the row only through what the poll kept of it."""
    env(LEADS_POLL_OVERLAP_MINUTES="0")
    failures: dict[str, int] = {}
    normalise = poll.from_table_entity

    def from_table_entity(entity, *args, **kwargs):
        if failures.get(entity["RowKey"], 0) > 0:
            failures[entity["RowKey"]] -= 1
            raise RuntimeError("a bug whose message quotes poisoned@contoso.com")
        return normalise(entity, *args, **kwargs)

    monkeypatch.setattr(poll, "from_table_entity", from_table_entity)
    return failures


def test_a_row_that_keeps_failing_is_tried_on_later_polls_then_kept_as_rejected(marketplace, buggy_normaliser, caplog):
    buggy_normaliser["poison"] = 99
    day = today()
    marketplace.create_entity({**ENTITY, "PartitionKey": day, "RowKey": "poison"})
    write_rows(marketplace, 2, partition=day)
    poison = lead_id_of(day, "poison")
    with caplog.at_level(logging.INFO, logger="leads.intake.poll"):
        first = poll_marketplace()
        assert (first.stored, first.retrying, first.rejected) == (2, 1, 0)
        assert first.watermark == newest_timestamp(marketplace)  # the poll moved past it
        assert poison in caplog.text
        for _ in range(poll.ROW_TRIES - 2):
            assert poll_marketplace().retrying == 1
        last = poll_marketplace()
    assert (last.retrying, last.rejected) == (0, 1)
    rejected = LeadStore.from_settings().rejected(poison)
    assert "RuntimeError" in rejected["error"] and f"{poll.ROW_TRIES} tries" in rejected["error"]
    assert rejected["raw"]["RowKey"] == "poison"
    assert any(
        poison in r.getMessage() and "rejected" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    )
    assert "@contoso.com" not in caplog.text  # the operator is told, without personal data
    after = poll_marketplace()
    assert (after.retrying, after.rejected) == (0, 0)


def test_a_row_whose_failure_passes_is_stored_by_a_later_poll(marketplace, buggy_normaliser):
    buggy_normaliser["flaky"] = 1
    day = today()
    flaky = lead_id_of(day, "flaky")
    marketplace.create_entity({**ENTITY, "PartitionKey": day, "RowKey": "flaky"})
    write_rows(marketplace, 1, partition=day)
    assert poll_marketplace().retrying == 1
    second = poll_marketplace()
    assert (second.stored, second.retrying) == (1, 0)
    store = LeadStore.from_settings()
    assert store.get(flaky) is not None
    assert store.rejected(flaky) is None


def test_a_storage_outage_never_moves_the_watermark_past_rows_not_stored(marketplace, env, tmp_path, monkeypatch):
    from azure.core.exceptions import AzureError

    from leads.local.azurite import Azurite

    server = Azurite(location=tmp_path / "store").start()
    try:
        env(
            MARKETPLACE_TABLE_CONNECTION=get_settings().storage_connection, AzureWebJobsStorage=server.connection_string
        )
        write_rows(marketplace, 2)
        first = poll_marketplace()
        write_rows(marketplace, 2, start=2)
        read = Checkpoint.read

        def read_then_lose_storage(self):
            watermark = read(self)
            server.stop()  # the app's storage goes away after the checkpoint was read
            return watermark

        monkeypatch.setattr(Checkpoint, "read", read_then_lose_storage)
        with pytest.raises(AzureError):
            poll_marketplace()
        monkeypatch.setattr(Checkpoint, "read", read)
        server.start()
        assert Checkpoint(LeadStore.from_settings(), get_settings().marketplace_table_name).read() == first.watermark
        assert poll_marketplace().stored == 2
        assert stored_leads() == 4
    finally:
        server.stop()


# --- history is stored, only recent leads delivered --------------------------------------------


def test_a_table_with_history_is_stored_whole_but_only_recent_leads_are_delivered(marketplace, env):
    with FakeWebhook() as webhook:
        # Every row written before the poll is history here: the limit is under a second. The poll
        # measures a row's age on the storage service's clock (its Date header, to the second), so
        # the rows are let age two seconds.
        env(
            **webhook.settings(),
            EMAIL_TO="",
            LEADS_TEST_LEADS="deliver",
            LEADS_BACKFILL_DAYS="0.00001",
        )
        day = today()
        old = [lead_id_of(day, key) for key in write_rows(marketplace, 3, partition=day)]
        written = newest_timestamp(marketplace)
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while datetime.now(UTC) - written < timedelta(seconds=2.1) and datetime.now(UTC) < deadline:
            threading.Event().wait(0.01)
        result = poll_marketplace()
        assert (result.stored, result.held) == (3, 3)
        store = LeadStore.from_settings()
        for lead_id in old:
            delivery = store.deliveries.get(lead_id, "webhook")
            assert delivery.state == "skipped"
            assert delivery.last_error.startswith("older than LEADS_BACKFILL_DAYS")
        queue = delivery_queue()
        queue._ensure()
        assert list(queue.client.peek_messages(max_messages=32)) == []  # nothing queued

        env(LEADS_BACKFILL_DAYS="7")
        day = today()
        new = lead_id_of(day, write_rows(marketplace, 1, start=3, partition=day)[0])
        assert poll_marketplace().held == 0
        assert store.deliveries.get(new, "webhook").state == "pending"

        assert [d.lead_id for d in replay(lead_id=old[0])] == [old[0]]
        assert cli(["--settings", "/nonexistent", "replay", "--skipped"]) == 0
        drain()
        assert webhook.confirmed == {lead_id: 1 for lead_id in old + [new]}
        assert replay(skipped=True) == []


# --- an unchanged table costs the same at any size ---------------------------------------------


def _us_date(day: datetime) -> str:
    return f"{day.month}:2F{day.day}:2F{day.year}"


@pytest.mark.parametrize(
    "recent, far",
    [
        (today(), "2019-01-01"),
        (_us_date(datetime.now(UTC)), "1:2F2:2F2019"),  # as a public marketplace reader queries it
    ],
)
def test_a_poll_reads_the_recent_days_and_the_safety_scan_takes_in_any_row_they_missed(marketplace, recent, far):
    write_rows(marketplace, 2, partition=recent)
    assert poll_marketplace().mode == "all"  # the first poll reads every row
    write_rows(marketplace, 1, start=2, partition=recent)
    write_rows(marketplace, 1, start=3, partition=far)  # a key far from its write time: the guess misses it
    routine = poll_marketplace()
    assert (routine.mode, routine.stored) == ("days", 1)
    safety = poll_marketplace(full_scan=True)
    assert (safety.mode, safety.stored) == ("full", 1)
    assert stored_leads() == 4
    assert poll_marketplace().mode == "days"  # the safety scan's time is kept: not due again for an hour


def test_the_safety_scan_runs_when_due(marketplace, env):
    write_rows(marketplace, 1)
    poll_marketplace()
    env(LEADS_POLL_FULL_SCAN_MINUTES="0")
    assert poll_marketplace().mode == "full"


def test_rows_whose_partition_key_is_no_date_are_read_by_whole_table_scans(marketplace):
    write_rows(marketplace, 1, partition="leads")
    assert poll_marketplace().stored == 1
    write_rows(marketplace, 1, start=1, partition="leads")
    second = poll_marketplace()
    assert (second.mode, second.stored) == ("full", 1)


# --- a first poll or safety scan cut short goes on where it stopped ------------------------------


class Killed(BaseException):
    """The host ending the invocation (function timeout, scale-in, a deploy)."""


@pytest.fixture
def killed_after(monkeypatch):
    """Pages of 50 rows, and the host ending each poll after ``budget["rows"]`` rows taken in."""
    monkeypatch.setattr(poll, "PAGE_SIZE", 50)
    take_in, budget = poll._prepare, {"rows": None, "taken": 0}

    def limited(*args, **kwargs):
        with lock:
            budget["taken"] += 1
            if budget["rows"] is not None and budget["taken"] > budget["rows"]:
                raise Killed()
        return take_in(*args, **kwargs)

    lock = threading.Lock()
    monkeypatch.setattr(poll, "_prepare", limited)
    return budget


def poll_until_done(budget: dict, rows_per_poll: int, full_scan: bool = False) -> list[tuple[str, datetime]]:
    """Poll as the timer does, each poll ended by the host after ``rows_per_poll`` rows taken in
    (a fresh process each time: nothing remembered in memory), until one ends by itself; returns
    how each ended (killed, or its mode) and when."""
    endings = []
    for _ in range(10):
        budget["rows"], budget["taken"] = rows_per_poll, 0
        _recently_stored.clear()
        try:
            ending = poll_marketplace(full_scan=full_scan and not endings).mode
        except Killed:
            ending = "killed"
        endings.append((ending, datetime.now(UTC)))
        if ending != "killed":
            break
    return endings


def test_a_first_poll_cut_short_goes_on_where_it_stopped_and_reaches_the_newest_rows(marketplace, killed_after):
    write_rows(marketplace, 200, partition="2024-01-15")  # history: sorts before today
    day = today()
    newest = write_rows(marketplace, 1, start=200, partition=day)  # today's lead: the last page
    # Each poll has time for 60 rows: a page and a bit. Without saved progress each starts at row one.
    endings = poll_until_done(killed_after, rows_per_poll=60)
    # 5 pages of 50 (the last holds 1): each poll stores one more page before it is ended.
    assert [ending for ending, _ in endings] == ["killed"] * 3 + ["all"]
    assert LeadStore.from_settings().get(lead_id_of(day, newest[0])) is not None
    assert stored_leads() == 201
    marks = Checkpoint(LeadStore.from_settings(), get_settings().marketplace_table_name)
    marks.read()
    assert marks.under_way is None and marks.marks.watermark == newest_timestamp(marketplace)
    killed_after["rows"] = None
    assert poll_marketplace().mode == "days"  # the pass is done: the routine poll takes over


def test_a_safety_scan_cut_short_goes_on_and_its_start_becomes_the_next_scans_start(marketplace, killed_after):
    write_rows(marketplace, 1)
    poll_marketplace()
    checkpoint = Checkpoint(LeadStore.from_settings(), get_settings().marketplace_table_name)
    checkpoint.read()
    before = checkpoint.marks.full_scan_from
    write_rows(marketplace, 120, start=1, partition="2024-01-15")  # a key the day partitions miss
    endings = poll_until_done(killed_after, rows_per_poll=60, full_scan=True)
    # 121 rows, pages of 50: the polls after the forced one go on with the scan, not "days".
    assert [ending for ending, _ in endings] == ["killed", "killed", "full"]
    assert stored_leads() == 121
    checkpoint.read()
    assert checkpoint.under_way is None
    # The scan began with the first (killed) poll: what was written after is the next scan's.
    assert before < checkpoint.marks.full_scan_from < endings[0][1]


def test_a_pass_reads_a_bounded_number_of_pages_per_poll(marketplace, killed_after, monkeypatch):
    monkeypatch.setattr(poll, "PASS_PAGES_PER_POLL", 2)
    write_rows(marketplace, 201)
    reads = [poll_marketplace() for _ in range(3)]
    assert [(result.mode, result.read) for result in reads] == [("all", 100), ("all", 100), ("all", 1)]
    assert stored_leads() == 201
    assert poll_marketplace().mode == "days"


def test_a_checkpoint_of_an_earlier_version_goes_on_as_before(marketplace):
    write_rows(marketplace, 2)
    store = LeadStore.from_settings()
    store.ensure_tables()
    watermark = datetime.now(UTC) - timedelta(hours=1)
    store.checkpoints.create_entity(
        {
            "PartitionKey": poll.CHECKPOINT_PARTITION,
            "RowKey": get_settings().marketplace_table_name,
            "Watermark": watermark,
        }
    )
    result = poll_marketplace()
    assert (result.mode, result.stored) == ("full", 2)  # the safety scan from the watermark, as that version did
    assert poll_marketplace().mode == "days"


# --- a row rewritten in place is read again -----------------------------------------------------


def test_a_rejected_row_corrected_in_place_is_taken_in(marketplace):
    from azure.data.tables import UpdateMode

    day = today()
    key = {"PartitionKey": day, "RowKey": "corrected"}
    marketplace.create_entity({**ENTITY, **key, "CustomerInfo": "{not json"})
    assert poll_marketplace().rejected == 1
    marketplace.update_entity(
        {
            **ENTITY,
            **key,
            "CustomerInfo": json.dumps({"FirstName": "Ann", "Email": "ann@contoso.com", "Company": "Contoso"}),
        },
        mode=UpdateMode.REPLACE,
    )
    again = poll_marketplace()  # the same process: its cache knows the row's earlier version only
    assert (again.read, again.stored) == (1, 1)
    lead = LeadStore.from_settings().get(lead_id_of(day, "corrected"))
    assert lead is not None and lead.email == "ann@contoso.com"
    assert poll_marketplace().stored == 0  # an unchanged row costs no write again


# --- odd extra properties do not reject a lead --------------------------------------------------


def test_odd_extra_properties_keep_the_lead_and_are_kept_in_its_raw_record(marketplace):
    day = today()
    marketplace.create_entity(
        {
            **ENTITY,
            "PartitionKey": day,
            "RowKey": "odd",
            "Binary": b"\xff\x00\xfe",
            "NotANumber": float("nan"),
            "Surrogate": "a\ud800b",
        }
    )
    result = poll_marketplace()
    assert (result.stored, result.rejected, result.retrying) == (1, 0, 0)
    lead = LeadStore.from_settings().get(lead_id_of(day, "odd"))
    assert lead.email.endswith("@test.com")  # the lead's own fields, as ever
    raw = lead.raw
    assert (raw["Binary"], raw["Binary@odata.type"]) == ("/wD+", "Edm.Binary")  # base64, as the service sends it
    assert (raw["NotANumber"], raw["NotANumber@odata.type"]) == ("NaN", "Edm.Double")
    assert raw["Surrogate"] == "a\ufffdb"
    json.loads(lead.to_json().encode())  # the webhook's body: UTF-8 JSON


def test_a_row_whose_own_fields_cannot_be_read_stays_rejected(marketplace):
    info = json.dumps({"FirstName": "Ann\ud800", "Email": "ann@contoso.com"})  # a lone surrogate, escaped
    day = today()
    marketplace.create_entity({**ENTITY, "PartitionKey": day, "RowKey": "bad", "CustomerInfo": info, "Extra": b"\xff"})
    assert poll_marketplace().rejected == 1
    rejected = LeadStore.from_settings().rejected(lead_id_of(day, "bad"))
    assert "not valid Unicode" in rejected["error"]
    assert rejected["raw"]["Extra@odata.type"] == "Edm.Binary"


# --- PartitionKeys in a format the poll does not know ------------------------------------------


def test_keys_that_fit_no_format_for_more_than_a_day_leave_the_new_rows_to_the_hourly_scan(marketplace, caplog, env):
    env(LEADS_POLL_OVERLAP_MINUTES="0")  # rows written seconds ago are not read again
    write_rows(marketplace, 1)
    poll_marketplace()
    write_rows(marketplace, 1, start=1, partition="L-0001")  # the marketplace changes its format
    assert poll_marketplace(full_scan=True).stored == 1
    assert poll_marketplace().mode == "full"  # for a day, more rows like it are read at once
    # A day on, no row has fit since: polls go back to the day partitions, and the hourly safety
    # scan takes the new rows in.
    set_marks_back_a_day("FitKeyAt", "UnfitSince")
    write_rows(marketplace, 1, start=2, partition="L-0002")
    routine = poll_marketplace()
    assert (routine.mode, routine.stored) == ("days", 0)
    with caplog.at_level(logging.WARNING, logger="leads.intake.poll"):
        safety = poll_marketplace(full_scan=True)
    assert (safety.mode, safety.stored) == ("full", 1)
    assert "hourly safety scan" in caplog.text
    assert poll_marketplace().mode == "days"


def test_a_table_whose_keys_all_fit_no_format_is_not_scanned_whole_on_every_poll(marketplace):
    write_rows(marketplace, 2, partition="L-0001")
    assert poll_marketplace().stored == 2
    assert poll_marketplace().mode == "full"  # for a day after such rows
    set_marks_back_a_day("UnfitSince")
    assert poll_marketplace().mode == "days"  # no format known, none fits for a day: the hourly scan only


def set_marks_back_a_day(*names: str) -> None:
    """As if the checkpoint's ``names`` had been written a day (and a minute) ago."""
    checkpoint = Checkpoint(LeadStore.from_settings(), get_settings().marketplace_table_name)
    day_ago = datetime.now(UTC) - poll.UNFIT_KEYS_SCAN_FOR - timedelta(minutes=1)
    checkpoint.table.update_entity({**checkpoint.key, **dict.fromkeys(names, day_ago)})
