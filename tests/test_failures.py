"""What a failed delivery records: the service's own words without the lead's personal values,
a fix, and for a call that got no answer, the host and why.
"""

from __future__ import annotations

import json
import socket

import pytest
import requests

from leads.core.normalise import from_http_body
from leads.delivery.deliver import deliver
from leads.destinations.base import HttpDestination, Refusal
from leads.destinations.dynamics import dataverse_error
from leads.destinations.redact import mask_personal
from leads.intake.ingest import accept_http
from leads.store.lead_store import LeadStore

from .fake_webhook import FakeWebhook
from .loopback import LoopbackHandler, LoopbackServer
from .personal import leaked

# Short values too: a two-letter first name, a three-letter company.
BODY = {
    "UserDetails": {
        "FirstName": "Al",
        "LastName": "Ng",
        "Email": "al.ng@fabrikam.com",
        "Phone": "+1 425 555 0142",
        "Country": "US",
        "Company": "Ikt",
        "Title": "VP",
    },
    "LeadSource": "SPZA-PLT|contoso.crm",
    "OfferTitle": "Contoso CRM",
    "Description": "Call me on Fridays",
}
LEAD = from_http_body(BODY)
PERSONAL = ("Al", "Ng", "al.ng", "fabrikam", "Ikt", "VP", "555", "0142", "Fridays")
ECHO = (
    "Lead Al Ng (al.ng@fabrikam.com, 425-555-0142, VP at Ikt) rejected: field 'notes' value 'Call me on Fridays' "
    "is not allowed; Al must be unique"
)


def recorded(lead_id: str, name: str) -> str:
    return LeadStore.from_settings().deliveries.get(lead_id, name).last_error


class _Refuses(LoopbackHandler):
    """A service that refuses every lead with a 422 whose message echoes the lead."""

    def do_POST(self):
        self.read_body()
        self.answer(422, {"error": {"code": "VALIDATION", "message": ECHO}})


class Refusing(LoopbackServer):
    handler = _Refuses


@pytest.fixture
def queue(storage, env):
    env(
        LEADS_HTTP_TIMEOUT_SECONDS="1",
        EMAIL_TO="",
        LEADS_RETRY_BASE_SECONDS="0.2",
    )


def take_in() -> str:
    return accept_http(json.dumps(BODY).encode()).body["leadId"]


def test_a_refusal_records_the_services_words_masked_and_a_fix(queue, env):
    with Refusing() as service:
        env(WEBHOOK_URL=service.base_url + "/hook", WEBHOOK_SECRET="s")
        lead_id = take_in()
        assert deliver(lead_id, "webhook").state == "failed"
    error = recorded(lead_id, "webhook")
    assert "422" in error and "rejected: field 'notes'" in error and "must be unique" in error  # its own words
    assert "replay" in error.partition(" — ")[2]  # and a fix
    assert leaked(PERSONAL, error) == []


def test_a_lead_value_echoed_by_dataverse_is_masked_whatever_its_length():
    with Refusing() as service:
        response = requests.post(service.base_url + "/api/data/v9.2/leads", json={})
    text = dataverse_error(response, LEAD).explain()
    assert "rejected" in text
    assert leaked(PERSONAL, text) == []


class _Service(HttpDestination):
    """The shared base's reading of statuses, on a table of two entries (never made: ``refused``
    is the class's)."""

    name = "service"
    who = "Service"
    statuses = {
        404: Refusal(fix="correct SERVICE_URL", message="{label}: SERVICE_URL is not the service's API"),
        409: Refusal(message="{label}: the record is being changed", transient=True, retry_after=2),
    }


def test_an_http_destinations_table_says_more_than_the_status_alone():
    listed = _Service.refused(404, "Not Found", {}, said="no route")
    assert str(listed) == "Service answered 404 Not Found: SERVICE_URL is not the service's API"
    assert not listed.transient and listed.fix == "correct SERVICE_URL"
    busy = _Service.refused(409, "Conflict", {})
    assert str(busy) == "Service answered 409 Conflict: the record is being changed"
    assert busy.transient and busy.retry_after == 2
    assert _Service.refused(409, "Conflict", {"Retry-After": "7"}).retry_after == 7  # the service's own wait first


def test_an_http_destination_reads_unlisted_statuses_as_from_status_does():
    throttled = _Service.refused(429, "Too Many Requests", {"Retry-After": "40"})
    assert str(throttled) == "Service answered 429 Too Many Requests"
    assert throttled.transient and throttled.retry_after == 40
    down = _Service.refused(503, "Service Unavailable", {"Retry-After": "5"}, fix="wait")
    assert down.transient and down.retry_after == 5 and down.fix == "wait"
    refused = _Service.refused(422, "Unprocessable Entity", {"Retry-After": "5"}, said="a field is missing")
    assert str(refused) == "Service answered 422 Unprocessable Entity: a field is missing"
    assert not refused.transient and refused.retry_after is None and refused.fix is None
    assert _Service.refused(404, "Not Found", {}, fix="the code's own fix").fix == "the code's own fix"


def test_masking_keeps_the_services_words_and_caps_the_length():
    masked = mask_personal(ECHO * 20, LEAD, limit=200)
    assert len(masked) <= 200 and "must be unique" in masked and "all" not in masked.lower().replace("allowed", "")
    assert mask_personal("Al: a value is invalid", LEAD) == "…: a value is invalid"  # 'a' and 'al' in words stay


def test_connection_refused_names_the_host_and_the_cause(queue, env):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connections are refused
        env(WEBHOOK_URL=f"http://127.0.0.1:{port}/hook")
        lead_id = take_in()
        assert deliver(lead_id, "webhook").state == "retrying"
    error = recorded(lead_id, "webhook")
    assert f"127.0.0.1:{port}" in error and "connection refused" in error


def test_tls_failure_names_the_host_and_the_cause(queue, env):
    with FakeWebhook() as plain:  # speaks HTTP: a TLS handshake with it fails
        env(WEBHOOK_URL=f"https://127.0.0.1:{plain.port}/hook", WEBHOOK_SECRET=plain.secret)
        lead_id = take_in()
        assert deliver(lead_id, "webhook").state == "retrying"
    error = recorded(lead_id, "webhook")
    assert f"127.0.0.1:{plain.port}" in error and "TLS failed" in error


def test_a_timeout_names_the_host_and_the_cause(queue, env):
    with FakeWebhook(timeout_after=3) as slow:
        slow.faults = ["timeout"]
        env(**slow.settings())
        lead_id = take_in()
        assert deliver(lead_id, "webhook").state == "retrying"
    error = recorded(lead_id, "webhook")
    assert f"127.0.0.1:{slow.port}" in error and ("within 1 s" in error or "(timeout)" in error)


def test_a_name_that_does_not_resolve_is_named(queue, env, monkeypatch):
    real = socket.getaddrinfo

    def lookup(host, *args, **kwargs):  # no query leaves the machine: this name resolves nowhere
        if host == "crm.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    env(WEBHOOK_URL="http://crm.invalid/hook")
    lead_id = take_in()
    assert deliver(lead_id, "webhook").state == "retrying"
    error = recorded(lead_id, "webhook")
    assert "crm.invalid" in error and "name lookup failed" in error
