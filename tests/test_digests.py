"""A digest is durable: its members and Operation-Id are written when it is claimed, a retry or a
recovery sends exactly that digest again under the same Operation-Id, and its members join no
other digest while it is open. The fake ACS's own records are the judge.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from leads.delivery.deliver import deliver
from leads.intake.ingest import accept_http
from leads.ops.operations import sweep
from leads.store.lead_store import LeadStore

from .conftest import EXAMPLE

SENDER = "DoNotReply@contoso.azurecomm.net"


@pytest.fixture
def acs_at_two_a_minute(storage, env, fake_acs):
    env(
        EMAIL_CONNECTION_STRING=fake_acs.connection_string,
        EMAIL_SENDER=SENDER,
        EMAIL_TO="sales@contoso.com",
        EMAIL_PER_MINUTE="2",
        WEBHOOK_URL="",
        LEADS_RETRY_BASE_SECONDS="1",
    )
    return fake_acs


def take_in(index: int) -> str:
    answer = accept_http(json.dumps({**EXAMPLE, "OfferTitle": f"Offer {index}"}).encode())
    assert answer.status == 202
    return answer.body["leadId"]


def email_of(lead_id: str):
    return LeadStore.from_settings().deliveries.get(lead_id, "email")


def waiting_burst(count: int):
    """``count`` leads at once: two go out alone, the rest wait for the rate limit."""
    lead_ids = [take_in(index) for index in range(count)]
    start = email_of(lead_ids[0]).created_at
    assert [deliver(lead_id, "email", now=start).state for lead_id in lead_ids][:3] == [
        "delivered",
        "delivered",
        "retrying",
    ]
    return lead_ids, start


def sends(fake) -> list[str]:
    return [request.operation_id for request in fake.requests if request.method == "POST"]


@pytest.mark.parametrize("fault", ["503", "drop_after"])
def test_a_retried_digest_is_the_same_digest_and_newcomers_wait_for_the_next(acs_at_two_a_minute, fault):
    fake = acs_at_two_a_minute
    lead_ids, start = waiting_burst(5)
    fake.fail_next(fault, on="send")  # 503: not sent; drop_after: sent, its answer lost
    assert deliver(lead_ids[2], "email", now=start + timedelta(seconds=61)).state == "retrying"
    first = sends(fake)[-1]
    late = take_in(99)  # arrives while the digest is open, and finds a free slot
    deliver(late, "email", now=start + timedelta(seconds=62))

    retry_at = start + timedelta(seconds=200)  # past the retry's backoff, with free slots
    assert deliver(lead_ids[4], "email", now=retry_at).state == "delivered"
    digest_sends = [
        operation
        for operation in sends(fake)
        if fake.operations.get(operation) and lead_ids[2] in fake.operations[operation].mail["text"]
    ]
    assert set(digest_sends) == {first}  # sent again under the same Operation-Id: ACS knows it for a repeat
    digest = fake.operations[first].mail
    assert all(lead_id in digest["text"] for lead_id in lead_ids[2:]) and late not in digest["text"]
    deliver(late, "email", now=retry_at + timedelta(minutes=2))
    assert {email_of(lead_id).state for lead_id in [*lead_ids, late]} == {"delivered"}
    for lead_id in [*lead_ids, late]:
        assert len(fake.mails_about(lead_id)) == 1


def test_a_worker_dying_after_its_digest_went_out_is_recovered_as_that_digest(acs_at_two_a_minute, env):
    fake = acs_at_two_a_minute
    lead_ids, start = waiting_burst(5)
    # The digest is accepted, then its answer hangs: the worker is killed while it waits.
    fake.fail_next("delay", on="send", delay=60)
    env(LEADS_HTTP_TIMEOUT_SECONDS="60")
    sent_at = start + timedelta(seconds=61)
    script = (
        "import sys; from datetime import datetime; from leads.delivery.deliver import deliver; "
        "deliver(sys.argv[1], 'email', now=datetime.fromisoformat(sys.argv[2]))"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", script, lead_ids[2], sent_at.isoformat()],
        env=dict(os.environ),
        cwd=os.getcwd(),
        start_new_session=True,
    )
    try:
        end = time.monotonic() + 30
        while len(fake.mails) < 3 and time.monotonic() < end and worker.poll() is None:
            time.sleep(0.05)
        assert len(fake.mails) == 3, "the digest never reached ACS"
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert {email_of(lead_id).state for lead_id in lead_ids[2:]} == {"sending"}

    later = sent_at + timedelta(minutes=6)  # every claim has run out
    assert sweep(now=later) == 3
    for lead_id in lead_ids[2:]:
        deliver(lead_id, "email", now=later)
    assert {email_of(lead_id).state for lead_id in lead_ids} == {"delivered"}
    assert len(fake.mails) == 3  # the digest was sent again as itself, and ACS knew it
    for lead_id in lead_ids:
        assert len(fake.mails_about(lead_id)) == 1
