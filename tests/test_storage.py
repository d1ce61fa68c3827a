"""``change_row``, the one read, change and conditional write of a row that several writers change
at once (day counters, the rate limiter, alert groups, a lead's repeat count), against Azurite:
racing writers lose no change and apply none twice, and a row that never stays still ends the
tries with a clear error. ``change_rows`` does the same for the rows of a small partition at once.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from leads.core.storage import (
    RowKeptChanging,
    StorageNotConfigured,
    change_row,
    change_rows,
    queue_service,
    table_service,
)


@pytest.fixture
def table(azurite):
    client = table_service(azurite.connection_string).create_table(f"rows{uuid.uuid4().hex[:8]}")
    yield client
    client.delete_table()


def plus_one(row):
    return {"Count": int((row or {}).get("Count") or 0) + 1}


def test_racing_writers_each_count_once_whether_they_create_the_row_or_change_it(table):
    writers, each = 4, 10
    # Every refusal means another writer's change landed, so no writer can be refused more often
    # than there are writes in all: with that many tries every change lands.
    tries = writers * each
    start = threading.Barrier(writers)

    def write():
        start.wait(timeout=30)
        for _ in range(each):
            change_row(table, "p", "r", plus_one, tries=tries)

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert table.get_entity("p", "r")["Count"] == writers * each


def test_a_row_changed_under_every_try_ends_the_tries_with_a_clear_error(table):
    from azure.data.tables import UpdateMode

    table.create_entity({"PartitionKey": "p", "RowKey": "r", "Count": 0})
    asked = []

    def changed_meanwhile(row):
        asked.append(row["Count"])
        # Another writer comes between this read and its write, every time.
        table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "Count": row["Count"] + 100}, mode=UpdateMode.MERGE)
        return plus_one(row)

    with pytest.raises(RowKeptChanging, match=r"p/r .* kept changing over 3 tries"):
        change_row(table, "p", "r", changed_meanwhile, tries=3)
    assert asked == [0, 100, 200]  # read again after each refusal
    assert table.get_entity("p", "r")["Count"] == 300  # only the other writer's changes landed


def test_a_change_that_declines_writes_nothing(table):
    assert change_row(table, "p", "r", lambda row: None, tries=3) is None
    assert list(table.list_entities()) == []
    assert change_row(table, "p", "r", plus_one, tries=3) == {"Count": 1}
    assert change_row(table, "p", "r", plus_one, tries=3, select=["Count"]) == {"Count": 2}
    assert table.get_entity("p", "r")["Count"] == 2


def plus_one_each(keys):
    return lambda rows: {key: plus_one(rows.get(key)) for key in keys}


def test_racing_writers_of_several_rows_each_count_once(table):
    """Writers that change overlapping rows of one partition, each in one transaction, created or
    merged: every refusal is another writer's change landed, and none is lost or applied twice."""
    writers, each = 4, 6
    start = threading.Barrier(writers)
    keys = [["a", "b"], ["b", "c"], ["a", "c"], ["a", "b", "c", "d"]]

    def write(mine):
        start.wait(timeout=30)
        for _ in range(each):
            change_rows(table, "p", plus_one_each(mine), tries=writers * each)

    threads = [threading.Thread(target=write, args=(mine,)) for mine in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    counts = {row["RowKey"]: row["Count"] for row in table.list_entities()}
    assert counts == {key: each * sum(key in mine for mine in keys) for key in "abcd"}


def test_rows_changed_under_every_try_end_the_tries_and_a_declined_change_writes_nothing(table):
    from azure.data.tables import UpdateMode

    table.create_entity({"PartitionKey": "p", "RowKey": "a", "Count": 0})
    asked = []

    def changed_meanwhile(rows):
        asked.append(rows["a"]["Count"])
        table.upsert_entity(
            {"PartitionKey": "p", "RowKey": "a", "Count": rows["a"]["Count"] + 100}, mode=UpdateMode.MERGE
        )
        return {"a": plus_one(rows["a"]), "new": {"Count": 1}}

    with pytest.raises(RowKeptChanging, match=r"rows of p .* kept changing over 3 tries"):
        change_rows(table, "p", changed_meanwhile, tries=3)
    assert asked == [0, 100, 200]
    assert {row["RowKey"]: row["Count"] for row in table.list_entities()} == {"a": 300}  # "new" went with "a"'s refusal
    change_rows(table, "p", lambda rows: {}, tries=1)
    assert {row["RowKey"]: row["Count"] for row in table.list_entities()} == {"a": 300}


def test_more_rows_than_a_transaction_holds_are_written_in_several(table):
    change_rows(table, "p", plus_one_each([f"r{n:03}" for n in range(150)]), tries=2)
    change_rows(table, "p", plus_one_each([f"r{n:03}" for n in range(0, 150, 2)]), tries=2)
    counts = [row["Count"] for row in table.list_entities()]
    assert len(counts) == 150 and sum(counts) == 150 + 75


@pytest.mark.parametrize("service, make", [("table", table_service), ("queue", queue_service)])
def test_a_connection_with_neither_a_string_nor_identity_settings_names_what_to_set(service, make, monkeypatch):
    for name in ("__tableServiceUri", "__queueServiceUri", "__accountName"):
        monkeypatch.delenv(f"LEADS_TEST_STORAGE{name}", raising=False)
    with pytest.raises(
        StorageNotConfigured,
        match=rf"LEADS_TEST_STORAGE is not set: .* LEADS_TEST_STORAGE__"
        rf"{service}ServiceUri \(or __accountName\)",
    ):
        make("", "LEADS_TEST_STORAGE")


@pytest.mark.parametrize("service, make", [("table", table_service), ("queue", queue_service)])
def test_identity_settings_give_a_client_of_the_accounts_endpoint(service, make, monkeypatch):
    # Nothing is sent: a client is made, and a token asked for only at its first request.
    monkeypatch.setenv("LEADS_TEST_STORAGE__accountName", "contoso")
    monkeypatch.setenv("LEADS_TEST_STORAGE__clientId", "00000000-0000-0000-0000-000000000001")
    client = make("", "LEADS_TEST_STORAGE")
    assert client.url.startswith(f"https://contoso.{service}.core.windows.net")
    monkeypatch.setenv(f"LEADS_TEST_STORAGE__{service}ServiceUri", f"https://127.0.0.1:1/{service}")
    assert make("", "LEADS_TEST_STORAGE").url.startswith(f"https://127.0.0.1:1/{service}")
