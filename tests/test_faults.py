"""Whatever fails, each lead reaches each routed destination exactly once.

Leads come in through both intakes while the destinations fail about a third of their calls;
storage goes away and comes back. The fakes' own records are the judge.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from leads.azurite import Azurite
from leads.deliver import handle_message
from leads.intake import accept_http
from leads.poll import _recently_stored, poll_marketplace
from leads.settings import get_settings
from leads.storage import table_service
from leads.store import LeadStore

from .fake_acs import FakeAcs
from .fake_webhook import FakeWebhook
from .workers import drain


def http_body(index: int) -> dict:
    return {"UserDetails": {"FirstName": f"Http{index}", "LastName": "Lead", "Email": f"http{index}@contoso.com",
                            "Country": "US", "Company": f"Company {index}"},
            "LeadSource": "SPZA-PLT|contoso.crm", "OfferTitle": "Contoso CRM"}  # fmt: skip


def table_row(index: int) -> dict:
    return {"PartitionKey": f"{datetime.now(timezone.utc):%Y-%m-%d}", "RowKey": f"row-{index:04d}", "ActionCode": "INS",
            "CustomerInfo": json.dumps({"FirstName": f"Table{index}", "Email": f"table{index}@contoso.com",
                                        "Company": f"Company {index}", "Country": "DE"}),
            "LeadSource": "AzureMarketplace", "OfferDisplayName": "Contoso CRM"}  # fmt: skip


@pytest.fixture
def flaky_webhook(storage, env):
    _recently_stored.clear()
    with FakeWebhook(fail_ratio=0.33, timeout_after=1.5) as fake:
        env(WEBHOOK_URL=fake.url, WEBHOOK_SECRET=fake.secret, LEADS_DELIVERY_QUEUE=f"q{uuid.uuid4().hex[:12]}",
            LEADS_RETRY_BASE_SECONDS="0.2", LEADS_HTTP_TIMEOUT_SECONDS="1", EMAIL_TO="")  # fmt: skip
        yield fake


@pytest.fixture
def flaky_acs(flaky_webhook, env, monkeypatch, fake_tls_ca):
    with FakeAcs(ca=fake_tls_ca, fail_ratio=0.33, random_delay=1.5, retry_after="1", seed=11) as fake:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_file)
        env(EMAIL_CONNECTION_STRING=fake.connection_string, EMAIL_SENDER="DoNotReply@contoso.azurecomm.net",
            EMAIL_TO="sales@contoso.com", EMAIL_PER_MINUTE="100000")  # fmt: skip
        yield fake


def test_300_leads_through_both_intakes_with_a_third_of_calls_failing(flaky_webhook, flaky_acs):
    settings = get_settings()
    http_ids = []
    for index in range(150):
        answer = accept_http(json.dumps(http_body(index)).encode())
        assert answer.status == 202
        http_ids.append(answer.body["leadId"])
    table = table_service(settings.storage_connection).get_table_client(settings.marketplace_table_name)
    table.create_table()
    for start in range(0, 150, 50):
        table.submit_transaction([("create", table_row(index)) for index in range(start, start + 50)])
        assert poll_marketplace().stored == 50
    assert poll_marketplace().stored == 0

    drain(deadline=240, workers=6, sweep_every=10)

    leads = LeadStore.from_settings().list(limit=None)
    assert len(leads) == 300
    expected = {lead.lead_id for lead in leads}
    assert set(http_ids) <= expected
    assert set(flaky_webhook.leads) == expected  # nothing lost
    assert all(flaky_webhook.confirmed[lead_id] == 1 for lead_id in expected)  # nothing twice
    assert flaky_webhook.requests > 300  # the faults did happen
    assert all(len(flaky_acs.mails_about(lead_id)) == 1 for lead_id in expected)  # one mail each
    assert len(flaky_acs.mails) == 300
    assert sum(1 for request in flaky_acs.requests if request.fault) > 50
    book = LeadStore.from_settings().deliveries
    assert {d.state for d in book.all()} == {"delivered"}
    assert sum(1 for d in book.all()) == 600


def test_storage_stopped_and_started_again_loses_nothing(tmp_path, env):
    _recently_stored.clear()
    with FakeWebhook() as webhook:
        server = Azurite(location=tmp_path / "azurite").start()
        try:
            env(AzureWebJobsStorage=server.connection_string, LEADS_TABLE_PREFIX="Outage", WEBHOOK_URL=webhook.url,
                WEBHOOK_SECRET=webhook.secret, LEADS_DELIVERY_QUEUE="outage", LEADS_RETRY_BASE_SECONDS="0.2",
                EMAIL_TO="")  # fmt: skip
            accepted = [accept_http(json.dumps(http_body(index)).encode()) for index in range(20)]
            assert {answer.status for answer in accepted} == {202}

            server.stop()
            refused = accept_http(json.dumps(http_body(99)).encode())
            assert refused.status == 503  # said plainly, not stored: the sender knows
            with pytest.raises(Exception):
                handle_message(json.dumps({"leadId": accepted[0].body["leadId"], "destination": "webhook"}))

            server.start()
            drain(deadline=60)
        finally:
            server.stop()
        assert set(webhook.leads) == {answer.body["leadId"] for answer in accepted}
        assert all(count == 1 for count in webhook.confirmed.values())
