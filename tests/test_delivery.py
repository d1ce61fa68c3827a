"""Delivery: one send per (lead, destination) through duplicates, races, retries and failures.

The webhook is the destination here: a real receiver on loopback (tests/fake_webhook.py) whose
own records say what arrived.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from leads.core.normalise import from_http_body
from leads.core.settings import get_settings
from leads.delivery.deliver import deliver, handle_message
from leads.delivery.queue import delivery_queue
from leads.destinations.routing import plan
from leads.intake.ingest import accept_http
from leads.ops.operations import replay, status, sweep
from leads.store.lead_store import LeadStore

from .conftest import EXAMPLE
from .fake_webhook import FakeWebhook
from .workers import drain


@pytest.fixture
def webhook(storage, env):
    with FakeWebhook() as fake:
        env(
            **fake.settings(),
            LEADS_RETRY_BASE_SECONDS="0.2",
            LEADS_HTTP_TIMEOUT_SECONDS="1",
            EMAIL_TO="",
        )
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
    env(
        **fake_acs.settings(),
        EMAIL_TO="sales@contoso.com",
        EMAIL_PER_MINUTE="2",
        WEBHOOK_URL="",
    )
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
    env(
        **fake_acs.settings(),
        EMAIL_TO="sales@contoso.com",
        WEBHOOK_URL="",
    )
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


# --- claims on the paths between the claim and the record -----------------------------------------


def stored_not_queued():
    store = LeadStore.from_settings()
    lead = from_http_body(EXAMPLE)
    store.add(lead, plan(lead, get_settings()))  # stored, not queued: the test plays every worker
    return store, lead


def test_a_claim_that_runs_out_before_the_send_is_renewed_or_lost_never_sent_twice(webhook, env, monkeypatch):
    """Worker 1's storage calls between its claim and its send (rate limiter, fold, lead read) take
    the whole claim (LEADS_CLAIM_MINUTES long); meanwhile the sweep re-queues and worker 2 claims and
    sends. Worker 1 checks its claim just before the send (a conditional renewal) and does not send."""
    env(LEADS_CLAIM_MINUTES="3")
    store, lead = stored_not_queued()
    read, worker_2 = LeadStore.get_for_delivery, {}
    start = datetime.now(UTC)

    def slow_read(self, lead_id):
        if not worker_2:
            worker_2["started"] = True
            claimed_until = webhook_delivery(lead_id).claimed_until
            assert claimed_until == start + timedelta(minutes=3), "the claim is not LEADS_CLAIM_MINUTES long"
            later = claimed_until + timedelta(seconds=1)
            assert sweep(now=later) == 1
            worker_2["outcome"] = deliver(lead_id, "webhook", now=later)
        return read(self, lead_id)

    monkeypatch.setattr(LeadStore, "get_for_delivery", slow_read)
    first = deliver(lead.lead_id, "webhook", now=start)
    assert worker_2["outcome"].state == "delivered"
    assert webhook.requests == 1, "worker 1 sent after its claim ran out"
    assert (first.state, first.detail) == ("sending", "claimed by another worker before the send")
    delivery = webhook_delivery(lead.lead_id)
    assert (delivery.state, delivery.attempts) == ("delivered", 2)


def test_a_delivered_write_that_fails_once_is_retried_within_the_claim(webhook, monkeypatch):
    from azure.core.exceptions import ServiceRequestError

    from leads.store.deliveries import DeliveryBook

    store, lead = stored_not_queued()
    change, failures = DeliveryBook.change, []

    def flaky(self, delivery, **changes):
        if changes.get("state") == "delivered" and not failures:
            failures.append(1)
            raise ServiceRequestError("storage blip")  # after the SDK's own retries
        return change(self, delivery, **changes)

    monkeypatch.setattr(DeliveryBook, "change", flaky)
    assert deliver(lead.lead_id, "webhook").state == "delivered"
    assert failures and webhook.requests == 1
    assert webhook_delivery(lead.lead_id).state == "delivered"


def test_a_send_whose_record_keeps_failing_is_recorded_from_the_queue_and_never_sent_again(webhook, monkeypatch):
    """The lead store refuses every write of "delivered" for the whole claim: the worker puts a
    note of the send on the queue (another service than the table), whose handling records it; the
    host's retry of the message and the sweep after the claim find it delivered, and send nothing."""
    from azure.core.exceptions import ServiceRequestError

    from leads.store.deliveries import DeliveryBook

    store, lead = stored_not_queued()
    change, refused = DeliveryBook.change, []

    def down(self, delivery, **changes):
        if changes.get("state") == "delivered" and len(refused) < 50:
            refused.append(1)
            raise ServiceRequestError("the lead store is unavailable")
        return change(self, delivery, **changes)

    monkeypatch.setattr(DeliveryBook, "change", down)
    outcome = deliver(lead.lead_id, "webhook")
    assert outcome.state == "sending" and "recorded from the queue" in outcome.detail
    assert webhook.requests == 1 and 1 < len(refused) < 50  # retried, a bounded number of times
    assert webhook_delivery(lead.lead_id).state == "sending"
    monkeypatch.undo()  # the lead store is back
    drain()
    delivery = webhook_delivery(lead.lead_id)
    assert (delivery.state, delivery.external_id) == ("delivered", f"wh-{lead.lead_id}")
    assert sweep(now=datetime.now(UTC) + timedelta(minutes=10)) == 0
    assert deliver(lead.lead_id, "webhook").detail == "already finished"
    assert webhook.requests == 1


def test_a_message_finding_a_live_claim_comes_back_when_it_ends_and_a_resend_says_so(webhook, caplog):
    """A second message for a delivery another worker holds is not consumed: it is put back to
    be seen when the claim ends. A worker that then finds the claim run out (its holder stopped
    without a record) sends again under the same key, and says so in the log."""
    store, lead = stored_not_queued()
    delivery = webhook_delivery(lead.lead_id)
    start = datetime.now(UTC)
    held = store.deliveries.change(
        delivery, state="sending", attempts=1, claimed_until=start + get_settings().claim
    )  # a worker died
    delivery_queue()._ensure()
    queue = delivery_queue().client
    before = queue.get_queue_properties().approximate_message_count
    assert deliver(lead.lead_id, "webhook", now=start).detail == "claimed by another worker"
    assert queue.get_queue_properties().approximate_message_count == before + 1
    assert list(queue.peek_messages()) == [], "not visible before the claim ends"

    with caplog.at_level("WARNING", logger="leads.delivery.deliver"):
        assert deliver(lead.lead_id, "webhook", now=held.claimed_until + timedelta(seconds=1)).state == "delivered"
    assert "attempt 1's outcome was never recorded" in caplog.text and lead.lead_id in caplog.text
    assert webhook.requests == 1 and webhook_delivery(lead.lead_id).attempts == 2


def test_a_digest_whose_claim_runs_out_before_its_send_is_sent_by_one_worker(storage, env, fake_acs, monkeypatch):
    """As for one lead: a digest's claim is renewed on its own row just before the send, and a
    worker that finds another took the digest meanwhile sends nothing."""
    env(
        **fake_acs.settings(),
        EMAIL_TO="sales@contoso.com",
        EMAIL_PER_MINUTE="2",
        WEBHOOK_URL="",
    )
    lead_ids = [take_in({**EXAMPLE, "OfferTitle": f"Offer {index}"}) for index in range(4)]
    start = LeadStore.from_settings().deliveries.get(lead_ids[0], "email").created_at
    assert [deliver(lead_id, "email", now=start).state for lead_id in lead_ids] == [
        "delivered",
        "delivered",
        "retrying",
        "retrying",
    ]
    read, worker_2 = LeadStore.get_for_delivery, {}

    def slow_read(self, lead_id):
        if not worker_2:
            worker_2["started"] = True
            later = start + timedelta(seconds=61) + get_settings().claim + timedelta(seconds=1)
            worker_2["outcome"] = deliver(lead_ids[3], "email", now=later)
        return read(self, lead_id)

    monkeypatch.setattr(LeadStore, "get_for_delivery", slow_read)
    first = deliver(lead_ids[2], "email", now=start + timedelta(seconds=61))
    assert worker_2["outcome"].state == "delivered"
    assert first.detail == "its digest was claimed by another worker before the send"
    sends = [request for request in fake_acs.requests if request.method == "POST"]
    assert len(sends) == 3, "two workers sent the digest"
    assert all(len(fake_acs.mails_about(lead_id)) == 1 for lead_id in lead_ids)
