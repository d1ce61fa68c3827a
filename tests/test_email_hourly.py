"""ACS limits mails per minute and per hour (5 and 10 on an Azure-managed domain): with only the
minute's limit the app ran into 429s for the rest of the hour. Mails past either limit wait, and
those waiting for the same recipients go out as one digest when a slot frees."""

from __future__ import annotations

from datetime import timedelta

import pytest

from leads.delivery.deliver import deliver
from leads.destinations.ratelimit import RateLimiter
from leads.store.lead_store import LeadStore

from .test_digests import SENDER, email_of, sends, take_in


@pytest.fixture
def acs_at_two_an_hour(storage, env, fake_acs):
    env(
        EMAIL_CONNECTION_STRING=fake_acs.connection_string,
        EMAIL_SENDER=SENDER,
        EMAIL_TO="sales@contoso.com",
        EMAIL_PER_MINUTE="30",
        EMAIL_PER_HOUR="2",
        WEBHOOK_URL="",
    )
    return fake_acs


def test_mails_past_the_hourly_limit_wait_and_go_as_one_digest(acs_at_two_an_hour):
    fake = acs_at_two_an_hour
    lead_ids = [take_in(index) for index in range(4)]
    start = email_of(lead_ids[0]).created_at
    # One lead every two minutes: the minute's limit (30) is never near, the hour's (2) is.
    states = [
        deliver(lead_id, "email", now=start + timedelta(minutes=2 * n)).state for n, lead_id in enumerate(lead_ids)
    ]
    assert states == ["delivered", "delivered", "retrying", "retrying"] and len(sends(fake)) == 2
    waiting = email_of(lead_ids[2])
    # It waits until the first mail's hour is over.
    assert waiting.waiting_for and waiting.next_attempt_at >= start + timedelta(minutes=60)

    assert deliver(lead_ids[2], "email", now=start + timedelta(minutes=61)).state == "delivered"
    assert len(sends(fake)) == 3  # one digest for both that waited
    digest = fake.mails[-1]["text"]
    assert lead_ids[2] in digest and lead_ids[3] in digest
    assert {email_of(lead_id).state for lead_id in lead_ids} == {"delivered"}


def test_each_limit_is_kept_and_the_wait_is_for_the_later_one(storage):
    from datetime import UTC, datetime

    store = LeadStore.from_settings()
    store.ensure_tables()
    limiter = RateLimiter(store, "email", 3, 60.0, (4, 3600.0))

    t0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert [limiter.acquire(t0 + timedelta(seconds=s)) for s in (0, 1, 2)] == [None, None, None]
    assert 57 <= limiter.acquire(t0 + timedelta(seconds=3)) <= 59  # the minute's 3 are taken
    assert limiter.acquire(t0 + timedelta(seconds=62)) is None  # the fourth of the hour
    hour_wait = limiter.acquire(t0 + timedelta(seconds=125))  # the minute is free, the hour is not
    assert 3600 - 125 <= hour_wait <= 3600 - 125 + 60
    assert limiter.acquire(t0 + timedelta(seconds=125 + hour_wait)) is None


@pytest.mark.parametrize(
    ("sender", "per_minute", "per_hour", "state", "said"),
    [
        (
            "DoNotReply@0a1b2c3d.azurecomm.net",
            "5",
            "10",
            "ok",
            "an Azure-managed domain: ACS allows 5 mails a minute and 10 an hour",
        ),
        ("DoNotReply@0a1b2c3d.azurecomm.net", "30", "100", "warning", "set EMAIL_PER_MINUTE=5 and EMAIL_PER_HOUR=10"),
        ("leads@contoso.com", "30", "100", "ok", "a custom domain: ACS allows 30 mails a minute and 100 an hour"),
        ("leads@contoso.com", "30", "500", "warning", "if Azure raised your quota"),
    ],
)
def test_check_says_which_limits_the_sender_has(storage, env, fake_acs, sender, per_minute, per_hour, state, said):
    from leads.ops.checks import run_checks

    env(
        EMAIL_CONNECTION_STRING=fake_acs.connection_string,
        EMAIL_SENDER=sender,
        EMAIL_TO="sales@contoso.com",
        EMAIL_PER_MINUTE=per_minute,
        EMAIL_PER_HOUR=per_hour,
    )
    check = dict(run_checks())["email limits"]
    assert check.state == state and said in check.message + (check.fix or "")
