"""Failure alerts: the first failure of a quiet spell mailed within a minute (with the rest of its
burst), what follows grouped into one mail per destination every 5 minutes (how many, the first
lead ids, the error and its fix), sent through the email rate limiter, with no personal data."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from leads.delivery.alerts import ALERT_WINDOW, GROUP_INTERVAL, GROUP_WAIT, wake_up_message, woken_destination
from leads.delivery.deliver import deliver, handle_message
from leads.intake.ingest import accept_http
from leads.ops.operations import sweep
from leads.store.lead_store import LeadStore

from .fake_webhook import FakeWebhook
from .personal import leaked


def body(index: int) -> dict:
    return {
        "UserDetails": {
            "FirstName": "Jo",
            "LastName": f"Doe{index}",
            "Email": f"jo.doe{index}@fabrikam.com",
            "Phone": "+44 20 7946 0958",
            "Company": "Fabrikam",
            "Country": "GB",
        },
        "LeadSource": "SPZA-PLT|contoso.crm",
        "OfferTitle": f"Offer {index}",
    }


@pytest.fixture
def gone_webhook(storage, env, fake_acs):
    with FakeWebhook() as fake:
        fake.fault_headers = {}
        env(
            **fake.settings(),
            **fake_acs.settings(),
            EMAIL_TO="",
            LEADS_ALERT_TO="ops@contoso.com",
            EMAIL_PER_MINUTE="5",
        )
        yield fake


def fail_many(fake, count: int) -> tuple[list[str], object]:
    fake.faults = ["410"] * count  # the receiver is gone: every delivery fails for good
    lead_ids = [accept_http(json.dumps(body(index)).encode()).body["leadId"] for index in range(count)]
    created = LeadStore.from_settings().deliveries.get(lead_ids[0], "webhook").created_at
    window = ALERT_WINDOW.total_seconds()
    start = datetime.fromtimestamp(created.timestamp() // window * window + 10, UTC)  # in one window
    for offset, lead_id in enumerate(lead_ids):
        assert deliver(lead_id, "webhook", now=start + timedelta(seconds=offset)).state == "failed"
    return lead_ids, start


def test_an_outage_sends_one_alert_per_window_with_the_count_ids_error_and_fix(gone_webhook, fake_acs):
    lead_ids, start = fail_many(gone_webhook, 30)
    assert fake_acs.mails == []  # nothing per failure

    sweep(now=start + ALERT_WINDOW + timedelta(minutes=2))
    assert len(fake_acs.mails) == 1
    mail = fake_acs.mails[0]
    assert mail["to"] == ["ops@contoso.com"] and "webhook" in mail["subject"] and "30" in mail["subject"]
    text = mail["text"]
    assert "30 leads" in text
    assert all(lead_id in text for lead_id in lead_ids[:5])
    assert "410 Gone" in text and "set WEBHOOK_URL" in text
    assert "python -m leads replay --destination webhook" in text
    assert leaked(("Jo", "Doe", "fabrikam", "7946", "0958"), mail["subject"] + text + mail["html"]) == []

    sweep(now=start + ALERT_WINDOW + timedelta(minutes=4))  # sent once
    assert len(fake_acs.mails) == 1


def test_alerts_wait_for_the_email_rate_like_any_mail(gone_webhook, fake_acs, env):
    env(EMAIL_PER_MINUTE="1")
    _, start = fail_many(gone_webhook, 3)
    from leads.destinations.ratelimit import RateLimiter

    due = start + ALERT_WINDOW + timedelta(minutes=2)
    assert RateLimiter(LeadStore.from_settings(), "email", 1, 60).acquire(due) is None  # a lead mail took the slot
    sweep(now=due + timedelta(seconds=10))
    assert fake_acs.mails == []  # the alert waits for the limit, as lead mails do
    sweep(now=due + timedelta(seconds=70))
    assert len(fake_acs.mails) == 1 and "3 leads" in fake_acs.mails[0]["text"]


def test_an_alert_whose_mail_fails_for_good_is_tried_a_bounded_number_of_times_then_dropped(
    gone_webhook, fake_acs, env, caplog
):
    from leads.delivery.alerts import ALERT_TRIES, PARTITION
    from leads.ops.operations import status

    env(EMAIL_SENDER="DoNotReply@unlinked.example")  # ACS answers 400 DomainNotLinked: never accepted
    lead_ids, start = fail_many(gone_webhook, 3)
    store = LeadStore.from_settings()

    def sends() -> int:
        return sum(1 for request in fake_acs.requests if request.method == "POST")

    due = start + ALERT_WINDOW + timedelta(minutes=2)
    for sweep_number in range(ALERT_TRIES + 3):  # every 2 minutes, as the timer does
        sweep(now=due + timedelta(minutes=2 * sweep_number))
    assert fake_acs.mails == [] and sends() == ALERT_TRIES  # one try a sweep, then no more
    assert list(store.checkpoints.query_entities("PartitionKey eq @p", parameters={"p": PARTITION})) == []
    dropped = [record.getMessage() for record in caplog.records if "dropped" in record.getMessage()]
    assert len(dropped) == 1 and "3 failures to webhook" in dropped[0] and "DomainNotLinked" in dropped[0]
    assert leaked(("Jo", "Doe", "fabrikam", "7946", "0958", "ops@contoso.com"), dropped[0]) == []
    # What it said stays visible: the failed deliveries, in status, until replayed.
    report = status()
    assert report.failed == {"webhook": 3} and {d.lead_id for d in report.recent_failures} == set(lead_ids)


# --- the first failure within a minute, then one mail per destination every 5 minutes ----------


def fail_at(fake, moments: list[datetime], first_index: int = 0) -> list[str]:
    """One lead per moment, failing for good (410) at that moment by the code's own clock."""
    fake.faults = ["410"] * len(moments)
    lead_ids = [accept_http(json.dumps(body(first_index + i)).encode()).body["leadId"] for i in range(len(moments))]
    for lead_id, moment in zip(lead_ids, moments, strict=True):
        assert deliver(lead_id, "webhook", now=moment).state == "failed"
    return lead_ids


def hidden_wake_ups() -> tuple[int, int]:
    """(messages on the delivery queue, of which visible now): a wake-up waits hidden until due."""
    from leads.delivery.queue import delivery_queue

    queue = delivery_queue()
    visible = list(queue.client.peek_messages(max_messages=32))
    assert not any(woken_destination(message.content) for message in visible)
    return queue.client.get_queue_properties().approximate_message_count, len(visible)


def test_the_first_failure_is_mailed_within_a_minute_with_its_burst_then_one_a_5_minutes(gone_webhook, fake_acs):
    assert GROUP_WAIT < timedelta(seconds=60) - timedelta(seconds=5)  # the queue's own polling is 2 s at most
    t0 = datetime.now(UTC)
    burst = fail_at(gone_webhook, [t0, t0 + timedelta(seconds=5), t0 + timedelta(seconds=10)])
    assert fake_acs.mails == []
    queued, visible = hidden_wake_ups()
    assert queued == visible + 1  # one wake-up for the group, however many failures joined it

    assert handle_message(wake_up_message("webhook"), now=t0 + GROUP_WAIT - timedelta(seconds=1)).state == "waiting"
    assert fake_acs.mails == []
    assert handle_message(wake_up_message("webhook"), now=t0 + GROUP_WAIT).state == "alerted"
    (first,) = fake_acs.mails
    assert "3 leads" in first["text"] and all(lead_id in first["text"] for lead_id in burst)
    mailed = t0 + GROUP_WAIT

    later = fail_at(gone_webhook, [t0 + timedelta(minutes=1), t0 + timedelta(minutes=2)], first_index=3)
    assert handle_message(wake_up_message("webhook"), now=t0 + timedelta(minutes=2)).state == "waiting"
    sweep(now=mailed + GROUP_INTERVAL - timedelta(seconds=1))
    assert len(fake_acs.mails) == 1  # at most one mail per destination every 5 minutes
    sweep(now=mailed + GROUP_INTERVAL)
    assert len(fake_acs.mails) == 2
    second = fake_acs.mails[1]["text"]
    assert "2 leads" in second and all(lead_id in second for lead_id in later)
    assert not any(lead_id in second for lead_id in burst)  # each failure is mailed once

    sweep(now=mailed + 3 * GROUP_INTERVAL)  # quiet since: nothing more, and the partition is empty
    assert len(fake_acs.mails) == 2
    assert list(LeadStore.from_settings().checkpoints.query_entities("PartitionKey eq 'alerts'")) == []


def test_two_instances_woken_at_once_send_one_mail(gone_webhook, fake_acs):
    t0 = datetime.now(UTC)
    fail_at(gone_webhook, [t0])
    with ThreadPoolExecutor(4) as pool:
        states = list(
            pool.map(lambda _: handle_message(wake_up_message("webhook"), now=t0 + GROUP_WAIT).state, range(4))
        )
    assert states.count("alerted") == 1
    assert sum(1 for request in fake_acs.requests if request.method == "POST") == 1 and len(fake_acs.mails) == 1


def test_a_lost_wake_up_costs_a_sweep_at_most(gone_webhook, fake_acs):
    t0 = datetime.now(UTC)
    fail_at(gone_webhook, [t0])
    sweep(now=t0 + timedelta(minutes=2))  # the next sweep after the failure, its wake-up never handled
    assert len(fake_acs.mails) == 1 and "1 lead could not be delivered" in fake_acs.mails[0]["text"]
