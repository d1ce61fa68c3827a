"""The marketplace, a probe, an operator and the timers hear back within seconds, whatever storage does.

Storage is Azurite behind a loopback proxy (``tests/storage_proxy.py``) that refuses writes with
503 Server Busy, as an account under throttling does, or holds each call for a minute. The
bounds are asserted by what the proxy saw, not by a stopwatch: how many tries reached storage
before the answer, and that the answer came while storage still held the calls (before the
proxy answered any). Without the deadlines (``leads/core/deadlines.py``), a refused enqueue was tried
4 times over about a minute, and every held call was waited for to its end.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from azure.functions.timer import TimerRequest

import function_app
from leads import cli
from leads.core import deadlines
from leads.intake.ingest import accept_http
from leads.ops import health as health_module
from leads.ops.health import health, status
from leads.ops.operations import sweep
from leads.store.lead_store import LeadStore

from .fake_webhook import FakeWebhook
from .storage_proxy import StorageProxy
from .workers import drain

HELD = 60.0  # how long the proxy holds a slowed call: far past every deadline


def person(index: int) -> bytes:
    return json.dumps(
        {
            "UserDetails": {
                "FirstName": "Ann",
                "LastName": f"Lee{index}",
                "Company": "Contoso",
                "Email": f"ann.lee{index}@contoso.example.com",
            },
            "LeadSource": "SPZA-PLT|contoso.crm",
        }
    ).encode()


@pytest.fixture
def webhook(storage, env):
    with FakeWebhook() as fake:
        env(**fake.settings(), EMAIL_TO="", LEADS_RETRY_BASE_SECONDS="0.2")
        yield fake


@pytest.fixture
def queue(webhook, azurite, env):
    """The queue service behind a proxy."""
    with StorageProxy(azurite.queue_port, "queue") as proxy:
        env(AzureWebJobsStorage=proxy.connection_string(azurite))
        yield proxy


@pytest.fixture
def table(webhook, azurite, env):
    """The table service behind a proxy, with the app's tables made."""
    with StorageProxy(azurite.table_port) as proxy:
        env(AzureWebJobsStorage=proxy.connection_string(azurite))
        LeadStore.from_settings().ensure_tables()
        yield proxy


@pytest.fixture(autouse=True)
def _fresh_probe(monkeypatch):
    monkeypatch.setattr(health_module, "_last_probe", health_module._Probe())


# --- the POST ------------------------------------------------------------------------------------


def test_a_queue_refusing_every_write_delays_no_answer_and_the_sweep_delivers_once_it_is_back(queue, webhook):
    queue.refuse()
    answers, ids = [], set()
    for index in range(2):
        before = queue.count()
        answer = accept_http(person(index))
        answers.append((answer.status, queue.count() - before))
        ids.add(answer.body["leadId"])
    # Each answer came after one try of the queue (the SDK's own policy made 4, over about a minute).
    assert answers == [(202, 1), (202, 1)] and len(queue.refused) == 2

    queue.heal()
    assert sweep(now=datetime.now(UTC) + timedelta(minutes=5)) == 2  # the deliveries were durable
    drain()
    assert set(webhook.leads) == ids and set(webhook.received.values()) == {1}


def test_a_queue_answering_slowly_delays_no_answer(queue):
    queue.slow(HELD)
    answer = accept_http(person(0))
    assert answer.status == 202
    assert queue.count() == 1 and queue.answered == 0  # answered while the queue still held its one try


def test_a_table_refusing_the_leads_transaction_answers_503_at_its_deadline_with_the_body_kept(table, caplog):
    # Retry-After: 30 makes the SDK's own policy wait 30 s before each retry: only the deadline ends that.
    table.refuse("POST", r"/\$batch$", retry_after=30)
    answer = accept_http(person(0))
    assert answer.status == 503 and "no answer within 6 s" in answer.body["error"]
    assert len(table.refused) == 1  # one try; the wait for the next ended with the deadline
    kept = LeadStore.from_settings().rejected(answer.body["rejectedId"])
    assert kept["body"] == person(0) and kept["error"] == answer.body["error"]
    assert LeadStore.from_settings().list() == []


def test_a_table_refusing_every_write_answers_503_after_one_try_to_store_and_one_to_keep(table, caplog):
    table.refuse(retry_after=30)
    with caplog.at_level(logging.ERROR, "leads.intake.ingest"):
        answer = accept_http(person(0))
    assert answer.status == 503 and "rejectedId" not in answer.body
    # The lead's first write, then the body's: each refused once, its retry cut by its deadline
    # (6 s, then 3 s); every write after a deadline failed without a request.
    assert len(table.refused) == 2
    assert "not stored: storage failed (no answer within 6 s)" in caplog.text
    assert "refused body (503) not kept" in caplog.text


# --- what operators and probes wait on -----------------------------------------------------------


def test_health_and_status_answer_while_storage_holds_every_call(table):
    table.slow(HELD)
    answered = table.answered
    assert (health().status, health().body) == (503, {"status": "unavailable"})
    answer = status()
    assert answer.status == 503 and not answer.body["readiness"]["storage"]["ok"]
    assert table.answered == answered  # both answered while storage still held their calls


@pytest.mark.parametrize("command", [["status"], ["list"], ["show", "h0123"]])
def test_a_command_a_person_waits_on_ends_with_a_clear_error_while_storage_holds_every_call(
    table, monkeypatch, capsys, command
):
    monkeypatch.setattr(deadlines, "COMMAND_SECONDS", 1.0)  # 30 s in use; the same deadline, sooner
    table.slow(HELD)
    answered = table.answered
    assert cli.main(["--settings", "/nonexistent", *command]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{command[0]}: the local storage emulator") and "the deadline had passed" in err
    assert table.answered == answered


# --- the timers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "function, setting",
    [
        ("poll_marketplace_table", "LEADS_POLL_SCHEDULE"),
        ("sweep_deliveries", "LEADS_SWEEP_SCHEDULE"),
        ("erase_expired_leads", "LEADS_RETENTION_SCHEDULE"),
    ],
)
def test_a_timer_whose_storage_holds_every_call_ends_within_its_period_and_says_so(
    table, env, caplog, function, setting
):
    env(**{setting: "*/4 * * * * *"}, LEADS_RETENTION_DAYS="30")
    table.slow(HELD)
    answered = table.answered
    with caplog.at_level(logging.ERROR, "leads.core.deadlines"):
        getattr(function_app, function)(TimerRequest(past_due=False))
    assert table.answered == answered  # it ended while storage still held its calls
    assert "stopped 3.6 s in, at its deadline (its schedule */4 * * * * *: every 4 s, less 10%)" in caplog.text
