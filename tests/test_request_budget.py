"""What a lead costs in storage requests, per path, counted at the wire (a proxy in front of
Azurite's tables and one in front of its queues): a budget each path must stay within, so that a
change that adds a round trip to every lead fails here rather than in a benchmark nobody ran.
benchmarks/README.md says what each figure's physical limit is (the requests the guarantee needs).

- **HTTP intake**: the lead's transaction, the rows written before it (its open entries, its
  identity row, its address's email row, its timeline entry) and a queue message per destination.
- **a poll page** and **an import window**: the same rows, batched: one transaction per partition
  the page's derived rows share, so a row costs little more than its lead's own transaction.
"""

from __future__ import annotations

import csv
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from leads.core.settings import get_settings
from leads.core.storage import table_service
from leads.intake.ingest import accept_http

from .conftest import EXAMPLE
from .storage_proxy import StorageProxy

DESTINATIONS = {
    0: {},
    1: {"EMAIL_TO": "sales@contoso.example"},
    3: {"EMAIL_TO": "sales@contoso.example", "WEBHOOK_URL": "http://127.0.0.1:9/leads", "HUBSPOT_TOKEN": "pat-test"},
}
# Requests a lead may cost (table, queue): the HTTP figures are exact today, the batched ones
# leave room for a page's few partitions (measured: see benchmarks/README.md).
HTTP_BUDGET = {0: (4, 0), 1: (5, 1), 3: (5, 3)}
PAGE_ROWS = 100
BATCHED_PER_ROW = 1.3


@pytest.fixture
def counted(storage, env):
    """The app's storage through two counting proxies: (tables, queues)."""
    with StorageProxy(storage.table_port) as tables, StorageProxy(storage.queue_port, service="queue") as queues:
        env(AzureWebJobsStorage=queues.connection_string(storage, tables.connection_string(storage)))
        yield tables, queues


def person(index: int, tag: str) -> dict[str, str]:
    return {**EXAMPLE["UserDetails"], "Email": f"budget{index}.{tag}@contoso.example", "LastName": f"Budget{index}"}


def app_requests(proxy: StorageProxy) -> int:
    """Requests to the app's own tables and queues (not the marketplace table a poll reads, nor the
    transactions that write its rows)."""
    with proxy.lock:
        return sum(1 for table in proxy.tables if not table.startswith("Marketplace"))


@pytest.mark.parametrize("destinations", sorted(DESTINATIONS))
def test_an_http_lead_costs_its_budget_of_requests(counted, env, destinations):
    tables, queues = counted
    env(**{"EMAIL_TO": "", **DESTINATIONS[destinations]})
    tag = uuid.uuid4().hex[:8]
    accept_http(json.dumps({**EXAMPLE, "UserDetails": person(0, tag)}).encode())  # tables made, settings read
    costs = []
    for index in range(1, 6):
        before = app_requests(tables), app_requests(queues)
        answer = accept_http(json.dumps({**EXAMPLE, "UserDetails": person(index, tag)}).encode())
        assert answer.status == 202 and answer.body["duplicate"] is False, answer.body
        costs.append((app_requests(tables) - before[0], app_requests(queues) - before[1]))
    assert set(costs) == {HTTP_BUDGET[destinations]}, costs


def test_a_poll_page_costs_little_more_than_a_request_a_row(counted, env):
    from leads.intake.poll import poll_marketplace

    tables, _ = counted
    env(EMAIL_TO="")
    settings = get_settings()
    marketplace = table_service(settings.storage_connection).get_table_client(settings.marketplace_table_name)
    marketplace.create_table()
    day, tag = f"{datetime.now(UTC):%Y-%m-%d}", uuid.uuid4().hex[:8]

    def write_rows(first: int, count: int) -> None:
        """Rows as the marketplace writes them, a transaction of 100 at a time (untimed, uncounted)."""
        for start in range(first, first + count, 100):
            rows = [
                {
                    "PartitionKey": day,
                    "RowKey": uuid.uuid4().hex,
                    "LeadSource": "AzureMarketplace",
                    "ActionCode": "INS",
                    "OfferDisplayName": "Contoso CRM",
                    "CustomerInfo": json.dumps(person(index, tag)),
                }
                for index in range(start, min(start + 100, first + count))
            ]
            marketplace.submit_transaction([("create", row) for row in rows])

    write_rows(0, PAGE_ROWS)
    poll_marketplace()  # the first poll of a table: its whole history, stored
    write_rows(PAGE_ROWS, PAGE_ROWS)
    before = app_requests(tables)
    done = poll_marketplace()
    assert done.stored == PAGE_ROWS, done.summary()
    per_row = (app_requests(tables) - before) / PAGE_ROWS
    assert per_row <= BATCHED_PER_ROW, per_row


def test_an_import_window_costs_little_more_than_a_request_a_row_and_a_row_received_one(counted, env, tmp_path):
    from leads.intake.imports import import_file

    tables, _ = counted
    env(EMAIL_TO="")
    path, tag = Path(tmp_path) / "leads.csv", uuid.uuid4().hex[:8]
    with path.open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(["First Name", "Last Name", "Email", "Company Name", "Offer Name", "Created Date"])
        created = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"
        writer.writerows(
            [who["FirstName"], who["LastName"], who["Email"], "Contoso", "Contoso CRM", created]
            for who in (person(index, tag) for index in range(2 * PAGE_ROWS))
        )
    costs = []
    for _ in range(2):
        before = app_requests(tables)
        report = import_file(path)
        assert report.read == 2 * PAGE_ROWS and not report.refused, report.to_dict()
        costs.append((app_requests(tables) - before) / (2 * PAGE_ROWS))
    new, again = costs
    assert new <= BATCHED_PER_ROW, costs
    assert again <= 1.05, costs  # a point read of the lead a row matches, and the few reads of its day
