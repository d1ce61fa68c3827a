"""Every destination waits at least as long as the service's ``Retry-After`` says before it tries
again (docs/delivery.md), whatever the retry backoff alone would allow."""

from __future__ import annotations

import json

import pytest

from leads.delivery.deliver import deliver
from leads.intake.ingest import accept_http
from leads.store.lead_store import LeadStore

from .conftest import EXAMPLE
from .fake_dynamics import FakeDynamics
from .loopback import DESTINATION_SETTINGS, LoopbackHandler, LoopbackServer, trust

WAIT = 40  # what the services say; the backoff alone would retry within a second


class _Unavailable(LoopbackHandler):
    """Hands out tokens (Salesforce's and Marketo's token endpoints), and answers every other
    request 503 Service Unavailable with ``Retry-After``."""

    def _serve(self):
        self.read_body()
        if "/oauth2/token" in self.path or "/identity/oauth/token" in self.path:
            return self.answer(
                200,
                {
                    "access_token": "token",
                    "instance_url": self.fake.base_url,
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "issued_at": "1700000000000",
                    "id": "x",
                },
            )
        return self.answer(
            503, [{"message": "Server is unavailable", "errorCode": "SERVER_UNAVAILABLE"}], {"Retry-After": str(WAIT)}
        )

    do_GET = do_POST = do_PATCH = _serve


class Unavailable(LoopbackServer):
    handler = _Unavailable


@pytest.fixture
def unavailable(fake_tls_ca, monkeypatch):
    with Unavailable(tls=True, ca=fake_tls_ca) as server:
        trust(monkeypatch, server.ca_file)
        yield server


@pytest.fixture
def queue(storage, env):
    env(
        LEADS_RETRY_BASE_SECONDS="0.2",
        EMAIL_TO="",
        LEADS_HTTP_TIMEOUT_SECONDS="5",
    )


def waits_as_told(name: str) -> None:
    lead_id = accept_http(json.dumps(EXAMPLE).encode()).body["leadId"]
    before = LeadStore.from_settings().deliveries.get(lead_id, name)
    outcome = deliver(lead_id, name)
    assert outcome.state == "retrying", outcome
    after = LeadStore.from_settings().deliveries.get(lead_id, name)
    assert (after.next_attempt_at - after.updated_at).total_seconds() >= WAIT - 1, (name, after.last_error)
    assert after.attempts == before.attempts + 1


# Dynamics answers with Dataverse's own 429 (below): its token comes from Entra, not this server.
@pytest.mark.parametrize("name", sorted(set(DESTINATION_SETTINGS) - {"dynamics"}))
def test_a_503_with_retry_after_is_retried_no_sooner(queue, env, unavailable, name):
    env(**DESTINATION_SETTINGS[name](unavailable.base_url))
    waits_as_told(name)


def test_email_waits_as_acs_says(queue, env, fake_acs):
    env(
        **fake_acs.settings(),
        EMAIL_TO="sales@contoso.com",
    )
    fake_acs.fail_next("429", on="send", retry_after=str(WAIT))
    waits_as_told("email")


def test_dynamics_waits_as_dataverse_says(queue, env, fake_tls_ca, monkeypatch):
    with FakeDynamics(ca=fake_tls_ca) as fake:
        trust(monkeypatch, fake.ca_file)
        env(**fake.settings())
        fake.fail("429", retry_after=WAIT)
        waits_as_told("dynamics")
