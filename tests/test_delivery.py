"""Delivery: one send per (lead, destination) through duplicates, races, retries and failures.

The webhook is the destination here: a real receiver on loopback (tests/fake_webhook.py) whose
own records say what arrived.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta

import pytest

from leads.deliver import deliver, handle_message
from leads.destinations.webhook import verify
from leads.intake import accept_http
from leads.normalise import from_http_body
from leads.operations import replay, status, sweep
from leads.queue import delivery_queue
from leads.routing import plan
from leads.settings import get_settings
from leads.store import LeadStore

from .conftest import FIXTURES
from .fake_webhook import FakeWebhook
from .workers import drain

EXAMPLE = json.loads((FIXTURES / "marketplace" / "https-documented-example.json").read_text())


@pytest.fixture
def webhook(storage, env):
    with FakeWebhook() as fake:
        env(WEBHOOK_URL=fake.url, WEBHOOK_SECRET=fake.secret, LEADS_DELIVERY_QUEUE=f"q{uuid.uuid4().hex[:12]}",
            LEADS_RETRY_BASE_SECONDS="0.2", LEADS_HTTP_TIMEOUT_SECONDS="1", EMAIL_TO="")  # fmt: skip
        yield fake


def take_in(body=EXAMPLE) -> str:
    answer = accept_http(json.dumps(body).encode())
    assert answer.status == 202, answer.body
    return answer.body["leadId"]


def webhook_delivery(lead_id: str):
    return LeadStore.from_settings().deliveries.get(lead_id, "webhook")


def test_a_lead_reaches_the_webhook_signed_with_its_idempotency_key(webhook):
    lead_id = take_in()
    drain()
    assert list(webhook.leads) == [lead_id]
    received = webhook.leads[lead_id]
    assert received["leadId"] == lead_id and received["email"] == "someone@contoso.com"
    assert webhook.bad_signatures == 0
    delivery = webhook_delivery(lead_id)
    assert (delivery.state, delivery.attempts, delivery.external_id) == ("delivered", 1, f"wh-{lead_id}")


def test_the_same_message_twice_sends_once(webhook):
    lead_id = take_in()
    delivery_queue().send(lead_id, "webhook")  # a duplicate of the message the intake queued
    drain()
    assert webhook.requests == 1 and webhook.confirmed[lead_id] == 1


def test_two_deliverers_racing_on_one_delivery_send_once(webhook):
    store = LeadStore.from_settings()
    lead = from_http_body(EXAMPLE)
    store.add(lead, plan(lead, get_settings()))  # stored, not queued: the racers are the only workers
    barrier = threading.Barrier(4)

    def race():
        barrier.wait()
        deliver(lead.lead_id, "webhook")

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert webhook.requests == 1
    assert webhook_delivery(lead.lead_id).state == "delivered"


def test_transient_failures_are_retried_until_delivered(webhook):
    webhook.faults = ["503", "429", "drop"]
    lead_id = take_in()
    drain()
    delivery = webhook_delivery(lead_id)
    assert (delivery.state, delivery.attempts) == ("delivered", 4)
    assert webhook.confirmed[lead_id] == 1


def test_a_lost_response_is_retried_and_the_receiver_stores_the_lead_once(webhook):
    webhook.faults = ["lost"]
    lead_id = take_in()
    drain()
    assert webhook.requests == 2 and len(webhook.leads) == 1
    assert webhook_delivery(lead_id).state == "delivered"


def test_a_permanent_failure_fails_at_once_with_the_reason(webhook):
    webhook.faults = ["410"]
    lead_id = take_in()
    handle_message(json.dumps({"leadId": lead_id, "destination": "webhook"}))
    delivery = webhook_delivery(lead_id)
    assert (delivery.state, delivery.attempts) == ("failed", 1)
    assert "410 Gone" in delivery.last_error and "WEBHOOK_URL" in delivery.last_error


def test_transient_failures_past_the_retry_window_fail(webhook):
    webhook.faults = ["503"]
    lead_id = take_in()
    created = webhook_delivery(lead_id).created_at
    deliver(lead_id, "webhook", now=created + timedelta(hours=24))
    delivery = webhook_delivery(lead_id)
    assert delivery.state == "failed"
    assert "gave up after 1 attempts over 24 hours" in delivery.last_error and "503" in delivery.last_error


def test_replay_redelivers_failed_never_delivered(webhook):
    webhook.faults = ["410"]
    failed_id = take_in()
    handle_message(json.dumps({"leadId": failed_id, "destination": "webhook"}))
    delivered_id = take_in({**EXAMPLE, "OfferTitle": "Other offer"})
    drain()
    assert webhook_delivery(failed_id).state == "failed"

    replayed = replay(destination="webhook")
    assert [d.lead_id for d in replayed] == [failed_id]
    assert replay(lead_id=delivered_id) == []
    drain()
    assert webhook_delivery(failed_id).state == "delivered"
    assert webhook.confirmed[delivered_id] == 1 and webhook.confirmed[failed_id] == 1


def test_the_sweep_queues_a_delivery_stored_but_never_queued(webhook):
    store = LeadStore.from_settings()
    lead = from_http_body(EXAMPLE)
    store.add(lead, plan(lead, get_settings()))  # the process died before queueing
    created = webhook_delivery(lead.lead_id).created_at
    assert sweep(now=created + timedelta(seconds=30)) == 0  # not yet stale: its message may be on the way
    assert sweep(now=created + timedelta(minutes=3)) == 1
    drain()
    assert webhook_delivery(lead.lead_id).state == "delivered"


def test_a_message_that_is_not_ours_is_dropped_with_a_reason(webhook):
    assert handle_message(b"not json").state == "ignored"
    assert handle_message(json.dumps({"leadId": 1})).state == "ignored"
    assert handle_message(json.dumps({"leadId": "nope", "destination": "webhook"})).detail == "no such delivery"


def test_status_counts_and_failures(webhook):
    webhook.faults = ["410"]
    failed_id = take_in()
    handle_message(json.dumps({"leadId": failed_id, "destination": "webhook"}))
    take_in({**EXAMPLE, "OfferTitle": "Other offer"})
    drain()
    report = status().to_dict()
    assert report["counts"]["webhook"] == {"delivered": 1, "failed": 1}
    assert report["recentFailures"][0]["leadId"] == failed_id
    assert "410" in report["recentFailures"][0]["lastError"]


def test_a_burst_over_the_email_rate_is_folded_into_one_digest(storage, env, fake_acs):
    env(EMAIL_CONNECTION_STRING=fake_acs.connection_string, EMAIL_SENDER="DoNotReply@contoso.azurecomm.net",
        EMAIL_TO="sales@contoso.com", EMAIL_PER_MINUTE="2", WEBHOOK_URL="",
        LEADS_DELIVERY_QUEUE=f"q{uuid.uuid4().hex[:12]}")  # fmt: skip
    lead_ids = [take_in({**EXAMPLE, "OfferTitle": f"Offer {index}"}) for index in range(6)]
    start = LeadStore.from_settings().deliveries.get(lead_ids[0], "email").created_at
    outcomes = [deliver(lead_id, "email", now=start).state for lead_id in lead_ids]
    assert outcomes == ["delivered", "delivered", "retrying", "retrying", "retrying", "retrying"]

    # A minute on, the first waiting delivery gets a slot and takes the others along.
    assert deliver(lead_ids[2], "email", now=start + timedelta(seconds=61)).state == "delivered"
    assert len(fake_acs.mails) == 3
    digest = fake_acs.mails[-1]
    assert all(lead_id in digest["text"] for lead_id in lead_ids[2:])
    for lead_id in lead_ids:
        assert len(fake_acs.mails_about(lead_id)) == 1
    book = LeadStore.from_settings().deliveries
    assert {book.get(lead_id, "email").state for lead_id in lead_ids} == {"delivered"}
    # Their own queued messages come later and find nothing to do.
    assert deliver(lead_ids[3], "email", now=start + timedelta(seconds=62)).detail == "already finished"


def test_replaying_a_failed_email_is_a_new_send_not_a_repeat(storage, env, fake_acs):
    env(EMAIL_CONNECTION_STRING=fake_acs.connection_string, EMAIL_SENDER="DoNotReply@contoso.azurecomm.net",
        EMAIL_TO="sales@contoso.com", WEBHOOK_URL="", LEADS_DELIVERY_QUEUE=f"q{uuid.uuid4().hex[:12]}")  # fmt: skip
    lead_id = take_in()
    fake_acs.fail_next_operation()
    assert deliver(lead_id, "email").state == "failed"
    assert replay(lead_id=lead_id)
    assert deliver(lead_id, "email").state == "delivered"
    operation_ids = [request.operation_id for request in fake_acs.requests if request.method == "POST"]
    assert len(operation_ids) == 2 and len(set(operation_ids)) == 2


def test_a_delivery_whose_lead_is_gone_fails_plainly(webhook):
    lead_id = take_in()
    LeadStore.from_settings().leads.delete_entity(lead_id, "lead")
    assert deliver(lead_id, "webhook").state == "failed"
    assert "not in the lead store" in webhook_delivery(lead_id).last_error
