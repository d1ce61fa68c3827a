"""Every send ends well inside its claim, whatever the destination and however slowly it answers.

A server that answers one byte at a time never trips a per-read timeout; each destination's send
must still end by its total deadline (connect to last byte) and be retried, and settings that
would let a call outlive the claim are refused.
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from leads.core import http
from leads.core.settings import Settings
from leads.delivery.deliver import deliver
from leads.intake.ingest import accept_http
from leads.store.lead_store import LeadStore

from .conftest import EXAMPLE
from .loopback import DESTINATION_SETTINGS, DRIP, LoopbackHandler, LoopbackServer, trust


class _Dripping(LoopbackHandler):
    """Whatever is asked, a well-formed answer, one byte every ``drip_interval`` seconds."""

    def _drip(self) -> None:
        self.read_body()
        self.fake.requests += 1
        self.play(DRIP)
        if self.answer(
            200,
            {
                "access_token": "t",
                "token_type": "Bearer",
                "expires_in": 3600,
                "id": "x",
                "success": True,
                "result": [{"id": 1, "status": "created"}],
            },
        ):
            self.fake.answered += 1

    do_GET = do_POST = do_PATCH = do_PUT = _drip


class DripServer(LoopbackServer):
    name = "drip"
    handler = _Dripping

    def __init__(self, ca) -> None:
        super().__init__(tls=True, ca=ca, drip_interval=0.2)
        self.requests = 0
        self.answered = 0  # answers dripped to their last byte (about a minute each)


@pytest.fixture
def drip(fake_tls_ca, monkeypatch):
    with DripServer(fake_tls_ca) as server:
        trust(monkeypatch, server.ca_file)
        yield server


def test_a_call_is_cut_at_its_total_deadline_though_bytes_keep_coming(drip):
    session = http.session()
    # A byte every 0.2 s: no read ever waits 1 s, and the whole answer takes about a minute. (No
    # stopwatch here: a loaded machine makes any bound on the time taken a coin toss.)
    with pytest.raises(http.DeadlineExceeded, match=r"127\.0\.0\.1:\d+ within 1 s"):
        session.get(drip.base_url + "/", timeout=1)
    assert drip.requests == 1 and drip.answered == 0  # cut while the answer was still coming


def test_calls_of_one_send_end_with_the_send(drip):
    session = http.session()
    with http.deadline(1.5), pytest.raises(http.DeadlineExceeded):
        for _ in range(3):
            session.get(drip.base_url + "/", timeout=30)
    # The first call was cut when the send's 1.5 s ran out, not at its own 30 s: no other call went out.
    assert drip.requests == 1 and drip.answered == 0


@pytest.mark.parametrize("name", sorted(DESTINATION_SETTINGS))
def test_every_http_destination_ends_a_dripping_send_and_retries_it(storage, env, drip, name):
    env(
        LEADS_HTTP_TIMEOUT_SECONDS="1",
        EMAIL_TO="",
        **DESTINATION_SETTINGS[name](drip.base_url),
    )
    answer = accept_http(json.dumps(EXAMPLE).encode())
    lead_id = answer.body["leadId"]
    outcome = deliver(lead_id, name)
    assert outcome.state == "retrying", outcome
    assert "within 1 s" in outcome.detail and "127.0.0.1" in outcome.detail
    # Its first call (a token, a look-up or the lead) took the send's whole second: the send ended
    # there, with no retry inside it and no call after it.
    assert drip.requests == 1 and drip.answered == 0
    assert LeadStore.from_settings().deliveries.get(lead_id, name).state == "retrying"


def test_email_through_acs_ends_a_dripping_send_and_retries_it(storage, env, fake_acs):
    env(
        **fake_acs.settings(),
        EMAIL_TO="sales@contoso.com",
        WEBHOOK_URL="",
        LEADS_HTTP_TIMEOUT_SECONDS="1",
    )
    fake_acs.drip_interval = 0.2
    lead_id = accept_http(json.dumps(EXAMPLE).encode()).body["leadId"]
    fake_acs.fail_next("drip", on="send")
    outcome = deliver(lead_id, "email")
    assert outcome.state == "retrying", outcome
    assert "within 1 s" in outcome.detail
    assert [(request.method, request.fault) for request in fake_acs.requests] == [("POST", "drip")]  # ended there
    # The mail was accepted before its answer dripped: the retry is the same operation, one mail.
    assert (
        deliver(lead_id, "email", now=LeadStore.from_settings().deliveries.get(lead_id, "email").next_attempt_at).state
        == "delivered"
    )
    assert len(fake_acs.mails) == 1


@pytest.mark.parametrize("value", ["600", "61"])
def test_a_call_timeout_that_could_outlive_the_claim_is_refused_by_name(value):
    with pytest.raises(ValidationError) as refused:
        Settings(LEADS_HTTP_TIMEOUT_SECONDS=value)
    text = str(refused.value)
    assert "LEADS_HTTP_TIMEOUT_SECONDS" in text and "at most 60" in text


def test_the_longest_call_timeout_allowed_is_accepted():
    assert Settings(LEADS_HTTP_TIMEOUT_SECONDS="60").http_timeout_seconds == 60
