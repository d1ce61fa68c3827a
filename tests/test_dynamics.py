"""Dynamics 365: leads become Dataverse lead rows once, through the real MSAL and HTTP code, against
a fake Entra ID + Dataverse (tests/fake_dynamics.py) whose own records say what arrived."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
import requests

import leads.destinations as registry
from leads.core.normalise import from_http_body
from leads.core.settings import get_settings
from leads.delivery.deliver import deliver
from leads.destinations.base import PermanentError, Route, TransientError
from leads.destinations.dynamics import (
    DO_NOT_CONTACT_COLUMNS,
    FIX_CREATE,
    DynamicsDestination,
    dataverse_error,
    lead_guid,
)
from leads.intake.ingest import accept_http
from leads.local.azurite import free_port
from leads.store.lead_store import LeadStore

from . import fake_dynamics as fake_dynamics_plugin
from .conftest import EXAMPLE, FIXTURES
from .workers import drain

dynamics, dynamics_mi = fake_dynamics_plugin.dynamics, fake_dynamics_plugin.dynamics_mi  # fixtures
dynamics_tls_ca = fake_dynamics_plugin.dynamics_tls_ca

CONTACT_ME = {
    "UserDetails": {
        "FirstName": "Ada",
        "LastName": "Lovelace",
        "Email": "ada@contoso.com",
        "Phone": "+44 20 7946 0958",
        "Country": "GB",
        "Company": "Analytical Engines Ltd",
        "Title": "CTO",
    },
    "LeadSource": "SPZA-PLT|contoso.contoso-crm",
    "OfferTitle": "Contoso CRM",
    "Description": '{"mktcmpid": "spring-24", "partnerid": "123"}',
}
TEST_LEAD = json.loads((FIXTURES / "marketplace" / "https-validation-test-lead.json").read_text())


def destination() -> DynamicsDestination:
    """A new destination from the settings in the environment (the fixture's)."""
    return DynamicsDestination.from_settings(get_settings())


def lead_of(body: dict, **changes):
    lead = from_http_body(body)
    return lead.model_copy(update=changes) if changes else lead


# --- mapping ---------------------------------------------------------------------------------------


def test_a_lead_becomes_a_dataverse_lead_row_column_by_column(dynamics):
    lead = lead_of(CONTACT_ME, received_at=datetime(2024, 5, 1, 10, 0, tzinfo=UTC))
    sent = destination().send(lead, Route())
    guid = lead_guid(lead.lead_id)
    assert sent.external_id == guid == str(uuid.uuid5(uuid.NAMESPACE_URL, "marketplace-lead:" + lead.lead_id))
    assert sent.detail == {"record": "created"}
    row = dynamics.leads[guid]
    assert {name: value for name, value in row.items() if name not in ("createdon", "fullname")} == {
        "leadid": guid,
        "subject": "Contoso CRM — Contact me (AppSource)",
        "firstname": "Ada",
        "lastname": "Lovelace",
        "emailaddress1": "ada@contoso.com",
        "telephone1": "+442079460958",
        "jobtitle": "CTO",
        "companyname": "Analytical Engines Ltd",
        "address1_country": "United Kingdom",
        "leadsourcecode": 8,
        "description": "\n".join(
            [
                "Commercial marketplace lead",
                "Source: AppSource",
                "Action: Contact me (PLT)",
                "Offer: Contoso CRM (contoso.contoso-crm)",
                "Campaign: mktcmpid=spring-24; partnerid=123",
                f"Lead id: {lead.lead_id}",
                "Received: 2024-05-01T10:00:00+00:00",
            ]
        ),
    }
    assert not any(column in row for column in DO_NOT_CONTACT_COLUMNS)
    create = [r for r in dynamics.requests if r.method == "POST" and r.path == "leads"]
    assert [r.status for r in create] == [204]


def test_a_do_not_contact_lead_sets_every_do_not_contact_column(dynamics):
    lead = lead_of({**CONTACT_ME, "LeadSource": "SPZA-DNC|contoso.contoso-crm", "Description": "Cross-listed"})
    destination().send(lead, Route())
    row = dynamics.leads[lead_guid(lead.lead_id)]
    assert {column: row[column] for column in DO_NOT_CONTACT_COLUMNS} == dict.fromkeys(DO_NOT_CONTACT_COLUMNS, True)
    assert row["subject"] == "Contoso CRM — Do not contact (AppSource)"
    assert row["description"].startswith("Cross-listed\n\nCommercial marketplace lead")
    assert "Do not contact: this customer must not be contacted" in row["description"]


def test_test_leads_are_marked(dynamics):
    marketplace_test = lead_of(TEST_LEAD)
    assert marketplace_test.is_test
    routed_as_test = lead_of(EXAMPLE)
    dest = destination()
    dest.send(marketplace_test, Route())
    dest.send(routed_as_test, Route(test=True))
    for lead in (marketplace_test, routed_as_test):
        row = dynamics.leads[lead_guid(lead.lead_id)]
        assert row["subject"].startswith("[TEST] ") and row["description"].startswith("[TEST] ")
    subject = dynamics.leads[lead_guid(marketplace_test.lead_id)]["subject"]
    assert subject == "[TEST] Contoso Test — Install (Azure Marketplace)"


def test_values_longer_than_their_columns_are_cut_not_refused(dynamics):
    lead = lead_of(
        {
            **CONTACT_ME,
            "OfferTitle": "O" * 400,
            "Description": "word " * 1000,
            "UserDetails": {**CONTACT_ME["UserDetails"], "Company": "C" * 300},
        }
    )
    destination().send(lead, Route())
    row = dynamics.leads[lead_guid(lead.lead_id)]
    assert (len(row["subject"]), len(row["companyname"]), len(row["description"])) == (300, 100, 2000)


# --- create once, tokens, limits ---------------------------------------------------------------------


def test_a_lost_answer_then_a_retry_leaves_one_row(dynamics):
    lead = lead_of(CONTACT_ME)
    dest = destination()
    dynamics.fail("lost")  # the row is created, the answer never arrives
    with pytest.raises(TransientError, match="could not reach Dataverse"):
        dest.send(lead, Route())
    assert list(dynamics.leads) == [lead_guid(lead.lead_id)]
    sent = dest.send(lead, Route())  # the worker's retry
    assert (sent.external_id, sent.detail) == (lead_guid(lead.lead_id), {"record": "existing"})
    assert len(dynamics.leads) == 1
    statuses = [(r.method, r.path, r.status) for r in dynamics.requests if r.path.startswith("leads")]
    assert statuses == [
        ("POST", "leads", None),
        ("POST", "leads", 412),
        ("GET", f"leads({lead_guid(lead.lead_id)})", 200),
    ]


def test_a_duplicate_key_that_is_not_our_row_is_not_counted_delivered(dynamics):
    # A 412 0x80040237 that an alternate key on leads caused: reading our leadid back finds nothing.
    lead = lead_of(CONTACT_ME)
    dest = destination()
    original = dest._call

    def call(method, path, **kwargs):
        if method == "POST":
            answer = requests.Response()
            answer.status_code, answer.headers["Content-Type"] = 412, "application/json"
            answer._content = json.dumps(
                {"error": {"code": "0x80040237", "message": "A record with matching key values already exists."}}
            ).encode()
            return answer
        return original(method, path, **kwargs)

    dest._call = call
    with pytest.raises(PermanentError, match="alternate key"):
        dest.send(lead, Route())


def test_200_leads_take_one_token(dynamics):
    dest = destination()
    for i in range(200):
        dest.send(lead_of({**CONTACT_ME, "Description": f"lead {i}"}), Route())
    assert len(dynamics.leads) == 200
    assert dynamics.token_requests == 1 and dynamics.discovery_requests == 1


# Each token mode: (the fixture, the fake's count of token requests in that mode, what a second refusal says)
MODES = {
    "client secret": ("dynamics", "token_requests", "refused a new token from Entra ID"),
    "managed identity": ("dynamics_mi", "identity_requests", "refused a new token of the managed identity"),
}


@pytest.mark.parametrize("mode", MODES)
def test_an_expired_token_is_replaced_once_and_the_call_made_again(request, mode):
    fixture, requests_made, _ = MODES[mode]
    fake = request.getfixturevalue(fixture)
    dest = destination()
    dest.send(lead_of(CONTACT_ME), Route())
    fake.expire_tokens()  # Dataverse now answers 401 to the cached token (revoked, or expired early)
    dest.send(lead_of(EXAMPLE), Route())
    assert getattr(fake, requests_made) == 2 and len(fake.leads) == 2
    assert [r.status for r in fake.requests if r.path == "leads"] == [204, 401, 204]
    dest.send(lead_of(TEST_LEAD), Route())
    assert getattr(fake, requests_made) == 2  # the new token is cached in turn


@pytest.mark.parametrize("mode", MODES)
def test_a_token_refused_twice_is_not_retried_forever(request, mode):
    fixture, requests_made, refusal = MODES[mode]
    fake = request.getfixturevalue(fixture)
    fake.fail("expired", times=2)
    with pytest.raises(PermanentError, match=refusal) as caught:
        destination().send(lead_of(CONTACT_ME), Route())
    assert "DYNAMICS_URL" in caught.value.fix
    assert getattr(fake, requests_made) == 2 and not fake.leads


def test_service_protection_limits_are_transient_with_retry_after(dynamics):
    dest = destination()
    dynamics.fail("429", retry_after=7)
    with pytest.raises(TransientError, match="service protection") as caught:
        dest.send(lead_of(CONTACT_ME), Route())
    assert caught.value.retry_after == 7
    dynamics.rate_limit, dynamics.rate_window = 2, 30  # Dataverse's own sliding window
    dest.send(lead_of(CONTACT_ME), Route())
    dest.send(lead_of(EXAMPLE), Route())
    with pytest.raises(TransientError, match="0x80072322") as caught:
        dest.send(lead_of(TEST_LEAD), Route())
    assert 25 <= caught.value.retry_after <= 30
    assert len(dynamics.leads) == 2


@pytest.mark.parametrize(
    "fault,on", [("500", "dataverse"), ("503", "dataverse"), ("drop", "dataverse"), ("503", "token"), ("drop", "token")]
)
def test_server_errors_and_dropped_connections_are_transient(dynamics, fault, on):
    dynamics.fail(fault, on=on)
    with pytest.raises(TransientError):
        destination().send(lead_of(CONTACT_ME), Route())


def test_a_request_that_times_out_is_transient_and_says_so(dynamics, env):
    env(LEADS_HTTP_TIMEOUT_SECONDS="0.5")
    dynamics.timeout_after = 1.0
    dest = destination()
    dest.send(lead_of(EXAMPLE), Route())  # token cached
    dynamics.fail("timeout")
    with pytest.raises(TransientError, match=r"did not answer within 0\.5 s") as caught:
        dest.send(lead_of(CONTACT_ME), Route())
    assert "DYNAMICS_URL" in caught.value.fix


# --- diagnoses ---------------------------------------------------------------------------------------


CHECKS = [
    # (id, set up the fake / settings, ok, words in the message, words in the fix)
    ("ok", lambda f: {}, True, "can create leads", None),
    (
        "tenant not found",
        lambda f: {"DYNAMICS_TENANT_ID": str(uuid.uuid4())},
        False,
        "AADSTS90002",
        "DYNAMICS_TENANT_ID to your Microsoft Entra tenant",
    ),
    ("not a tenant id", lambda f: {"DYNAMICS_TENANT_ID": "contoso crm"}, False, "AADSTS900023", "Tenant ID"),
    (
        "application not in directory",
        lambda f: {"DYNAMICS_CLIENT_ID": str(uuid.uuid4())},
        False,
        "AADSTS700016",
        "Application (client) ID",
    ),
    (
        "wrong secret",
        lambda f: {"DYNAMICS_CLIENT_SECRET": "a0b1c2d3-secret-id-not-value"},
        False,
        "AADSTS7000215",
        "Value (not its Secret ID)",
    ),
    ("expired secret", lambda f: setattr(f, "secret_expired", True), False, "AADSTS7000222", "expiry date"),
    ("application disabled", lambda f: setattr(f, "app_disabled", True), False, "AADSTS7000112", "Enabled"),
    (
        "url of another resource",
        lambda f: {"DYNAMICS_URL": f"https://127.0.0.1:{free_port()}/main.aspx"},
        False,
        "AADSTS500011",
        "Environment URL",
    ),
    (
        "url not dataverse",
        lambda f: setattr(f, "not_dataverse", True),
        False,
        "is not a Dataverse Web API",
        "Environment URL",
    ),
    ("no application user", lambda f: setattr(f, "app_user", False), False, "no application user", "New app user"),
    ("no security role", lambda f: setattr(f, "roles", False), False, "no security role", "Edit security roles"),
    (
        "no create on lead",
        lambda f: f.privileges.discard("prvCreateLead"),
        False,
        "no Create privilege on Lead",
        "Create privilege on Lead",
    ),
    ("privileges unreadable", lambda f: f.privileges.discard("prvReadUser"), True, "could not be read", None),
    ("lead source secured", lambda f: setattr(f, "lead_source_secured", True), True, "secured column", None),
    ("no lead table", lambda f: setattr(f, "lead_table", False), False, "no Lead table", "Dynamics 365 Sales"),
    (
        "authority unreachable",
        lambda f: {"DYNAMICS_AUTHORITY": f"https://127.0.0.1:{free_port()}"},
        False,
        "could not reach Entra ID",
        "DYNAMICS_AUTHORITY",
    ),
    ("entra timeout", lambda f: f.fail("timeout", on="token"), False, "Entra ID", "DYNAMICS_AUTHORITY"),
    (
        "dataverse timeout",
        lambda f: f.fail("timeout"),
        False,
        "Dataverse (127.0.0.1) did not answer within 1 s",
        "DYNAMICS_URL is your environment URL",
    ),
    (
        "secret not set, no identity here",
        lambda f: {"DYNAMICS_CLIENT_SECRET": ""},
        False,
        "no managed identity on this host",
        "DYNAMICS_CLIENT_SECRET",
    ),
    ("tenant not set", lambda f: {"DYNAMICS_TENANT_ID": ""}, False, "DYNAMICS_TENANT_ID not set", "client secret"),
    (
        "authority not https",
        lambda f: {"DYNAMICS_AUTHORITY": "http://login.example.invalid"},
        False,
        "DYNAMICS_AUTHORITY is not an https URL",
        "login host",
    ),
]


def assert_check(fake, env, setup, ok, message, fix) -> None:
    """Set the fake or the settings up as ``setup`` says, run the destination's check, and assert
    what it says, and that it created nothing."""
    settings = setup(fake) or {}
    if isinstance(settings, dict) and settings:
        env(**settings)
    check = DynamicsDestination.from_settings(get_settings()).check()
    assert check.ok is ok, check
    assert message in check.message, check
    if fix:
        assert fix in (check.fix or ""), check
    assert not fake.leads
    assert not [r for r in fake.requests if r.method == "POST" and r.path == "leads"]


@pytest.mark.parametrize("name,setup,ok,message,fix", CHECKS, ids=[c[0] for c in CHECKS])
def test_check_diagnoses_from_the_services_answers(dynamics, env, name, setup, ok, message, fix):
    env(LEADS_HTTP_TIMEOUT_SECONDS="1")
    dynamics.timeout_after = 1.5
    assert_check(dynamics, env, setup, ok, message, fix)


def test_send_diagnoses_a_role_without_create_on_lead(dynamics):
    dynamics.privileges.discard("prvCreateLead")
    with pytest.raises(PermanentError, match="lack the prvCreateLead privilege") as caught:
        destination().send(lead_of(CONTACT_ME), Route())
    assert caught.value.fix == FIX_CREATE


def test_send_diagnoses_no_create_permission_on_leadsourcecode(dynamics):
    dynamics.lead_source_secured, dynamics.lead_source_create = True, False
    with pytest.raises(PermanentError, match="leadsourcecode") as caught:
        destination().send(lead_of(CONTACT_ME), Route())
    assert "column security profile" in caught.value.fix
    assert not dynamics.leads


@pytest.mark.parametrize(
    "setup,words",
    [
        (lambda f: setattr(f, "roles", False), "no security role"),
        (lambda f: setattr(f, "app_user", False), "no application user"),
        (lambda f: setattr(f, "lead_table", False), "no Lead table"),
        (lambda f: setattr(f, "not_dataverse", True), "not a Dataverse Web API"),
    ],
)
def test_send_diagnoses_are_permanent(dynamics, setup, words):
    setup(dynamics)
    with pytest.raises(PermanentError, match=words):
        destination().send(lead_of(CONTACT_ME), Route())


def test_errors_never_carry_the_customers_data():
    lead = lead_of(CONTACT_ME)
    response = requests.Response()
    response.status_code, response.reason, response.url = 400, "Bad Request", "https://x.example/api/data/v9.2/leads"
    response.headers.update({"Content-Type": "application/json", "OData-Version": "4.0"})
    response._content = json.dumps(
        {
            "error": {
                "code": "0x80044331",
                "message": "A validation error occurred. The "
                "value 'ada@contoso.com' of 'emailaddress1' for Analytical Engines Ltd is not "
                "valid.",
            }
        }
    ).encode()
    error = dataverse_error(response, lead)
    assert isinstance(error, PermanentError) and "0x80044331" in str(error)
    assert "ada@contoso.com" not in error.explain() and "Analytical Engines" not in error.explain()


# --- through the worker --------------------------------------------------------------------------------


@pytest.fixture
def dynamics_delivery(storage, dynamics, env, monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "dynamics", "leads.destinations.dynamics:DynamicsDestination")
    env(
        LEADS_RETRY_BASE_SECONDS="0.2",
        EMAIL_TO="",
        WEBHOOK_URL="",
        LEADS_HTTP_TIMEOUT_SECONDS="2",
    )
    return dynamics


def take_in(body: dict) -> str:
    answer = accept_http(json.dumps(body).encode())
    assert answer.status == 202, answer.body
    return answer.body["leadId"]


def test_a_lead_taken_in_reaches_dynamics_through_the_worker(dynamics_delivery):
    lead_id = take_in(CONTACT_ME)
    drain()
    guid = lead_guid(lead_id)
    assert list(dynamics_delivery.leads) == [guid]
    assert dynamics_delivery.leads[guid]["emailaddress1"] == "ada@contoso.com"
    delivery = LeadStore.from_settings().deliveries.get(lead_id, "dynamics")
    assert (delivery.state, delivery.attempts, delivery.external_id) == ("delivered", 1, guid)


def test_a_lost_answer_is_retried_by_the_worker_and_leaves_one_row(dynamics_delivery):
    dynamics_delivery.fail("lost")
    lead_id = take_in(CONTACT_ME)
    drain()
    assert list(dynamics_delivery.leads) == [lead_guid(lead_id)]
    delivery = LeadStore.from_settings().deliveries.get(lead_id, "dynamics")
    assert (delivery.state, delivery.attempts) == ("delivered", 2)


def test_the_worker_waits_at_least_what_service_protection_asks(dynamics_delivery):
    dynamics_delivery.fail("429", retry_after=120)
    lead_id = take_in(CONTACT_ME)
    before = datetime.now(UTC)
    outcome = deliver(lead_id, "dynamics")
    delivery = LeadStore.from_settings().deliveries.get(lead_id, "dynamics")
    assert outcome.state == delivery.state == "retrying"
    assert (delivery.next_attempt_at - before).total_seconds() >= 119
    assert "service protection" in delivery.last_error and not dynamics_delivery.leads


# --- the managed identity (no client secret) ------------------------------------------------------


def test_with_no_secret_the_managed_identity_gets_the_token(dynamics_mi):
    lead = lead_of(CONTACT_ME)
    sent = destination().send(lead, Route())
    assert sent.external_id in dynamics_mi.leads and dynamics_mi.token_requests == 0
    # the real azure-identity client asked the host's endpoint as App Service and Functions expect
    (call,) = dynamics_mi.identity_calls
    assert call == {
        "api-version": "2019-08-01",
        "resource": dynamics_mi.url,
        "client_id": dynamics_mi.identity_client_id,
        "X-IDENTITY-HEADER": dynamics_mi.identity_header,
    }
    (grant,) = dynamics_mi.tokens.values()
    assert grant["appid"] == dynamics_mi.identity_client_id


def test_dataverse_accepts_only_the_identity_s_tokens(dynamics_mi, env):
    # The environment's application user is the managed identity's: the app registration's token is
    # refused as "not a member of the organization", with the fix of its own mode.
    env(**dynamics_mi.settings())
    with pytest.raises(PermanentError, match="no application user for DYNAMICS_CLIENT_ID") as caught:
        destination().send(lead_of(CONTACT_ME), Route())
    assert "app registration" in caught.value.fix and not dynamics_mi.leads


def test_200_leads_take_one_identity_token(dynamics_mi):
    dest = destination()
    for i in range(200):
        dest.send(lead_of({**CONTACT_ME, "Description": f"lead {i}"}), Route())
    assert len(dynamics_mi.leads) == 200 and dynamics_mi.identity_requests == 1 and dynamics_mi.token_requests == 0


@pytest.mark.parametrize("fault", ["503", "drop"])
def test_identity_endpoint_trouble_is_transient(dynamics_mi, fault):
    dynamics_mi.fail(fault, times=2, on="identity")  # the credential's one retry meets it too
    with pytest.raises(TransientError, match="managed identity endpoint"):
        destination().send(lead_of(CONTACT_ME), Route())
    assert dynamics_mi.identity_requests == 2 and not dynamics_mi.leads


def test_identity_endpoint_trouble_once_is_retried_by_the_credential(dynamics_mi):
    dynamics_mi.fail("503", on="identity")
    destination().send(lead_of(CONTACT_ME), Route())
    assert dynamics_mi.identity_requests == 2 and len(dynamics_mi.leads) == 1


def test_an_identity_endpoint_that_does_not_answer_in_time_is_transient(dynamics_mi, env):
    env(LEADS_HTTP_TIMEOUT_SECONDS="0.3")
    dynamics_mi.timeout_after = 0.6
    dynamics_mi.fail("timeout", times=2, on="identity")
    with pytest.raises(TransientError, match="could not reach this host's managed identity endpoint"):
        destination().send(lead_of(CONTACT_ME), Route())


def test_an_identity_not_assigned_to_the_app_is_permanent_with_the_fix(dynamics_mi, env):
    other = str(uuid.uuid4())
    env(DYNAMICS_CLIENT_ID=other)
    with pytest.raises(PermanentError, match="Unable to load the proper Managed Identity") as caught:
        destination().send(lead_of(CONTACT_ME), Route())
    assert other in str(caught.value) and "APP_IDENTITY_CLIENT_ID" in caught.value.fix
    assert [call["client_id"] for call in dynamics_mi.identity_calls] == [other]  # a 400 is not retried


MI_CHECKS = [
    # (id, set up the fake / settings, ok, words in the message, words in the fix)
    ("ok", lambda f: {}, True, "can create leads", None),
    (
        "no identity on this host",
        lambda f: {"IDENTITY_ENDPOINT": ""},
        False,
        "no managed identity on this host",
        "DYNAMICS_CLIENT_SECRET",
    ),
    (
        "identity not assigned",
        lambda f: {"DYNAMICS_CLIENT_ID": str(uuid.uuid4())},
        False,
        "has no managed identity with client ID",
        "Identity → User assigned",
    ),
    (
        "client id not set",
        lambda f: {"DYNAMICS_CLIENT_ID": ""},
        False,
        "DYNAMICS_CLIENT_ID not set",
        "APP_IDENTITY_CLIENT_ID",
    ),
    (
        "no application user",
        lambda f: setattr(f, "app_user", False),
        False,
        "no application user for the managed identity",
        "search for the managed identity's client ID",
    ),
    ("no security role", lambda f: setattr(f, "roles", False), False, "no security role", "Edit security roles"),
    (
        "no create on lead",
        lambda f: f.privileges.discard("prvCreateLead"),
        False,
        "no Create privilege on Lead",
        "Create privilege on Lead",
    ),
    ("endpoint down", lambda f: f.fail("503", times=2, on="identity"), False, "could not issue a token now", None),
    (
        "url of another resource",
        lambda f: {"DYNAMICS_URL": f"https://127.0.0.1:{free_port()}"},
        False,
        "could not issue a token now (500",
        "DYNAMICS_URL",
    ),
]


@pytest.mark.parametrize("name,setup,ok,message,fix", MI_CHECKS, ids=[c[0] for c in MI_CHECKS])
def test_check_diagnoses_the_managed_identity_path(dynamics_mi, env, name, setup, ok, message, fix):
    assert_check(dynamics_mi, env, setup, ok, message, fix)
    assert dynamics_mi.token_requests == 0  # never the app registration's way


def test_a_lead_taken_in_reaches_dynamics_with_the_managed_identity(storage, dynamics_mi, env, monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "dynamics", "leads.destinations.dynamics:DynamicsDestination")
    env(
        LEADS_RETRY_BASE_SECONDS="0.2",
        EMAIL_TO="",
        WEBHOOK_URL="",
        LEADS_HTTP_TIMEOUT_SECONDS="2",
    )
    dynamics_mi.fail("drop", times=2, on="identity")  # the first attempt finds the endpoint down
    lead_id = take_in(CONTACT_ME)
    drain()
    assert list(dynamics_mi.leads) == [lead_guid(lead_id)]
    delivery = LeadStore.from_settings().deliveries.get(lead_id, "dynamics")
    assert (delivery.state, delivery.attempts) == ("delivered", 2)


@pytest.mark.parametrize("managed_identity", [False, True], ids=["client secret", "managed identity"])
def test_python_m_leads_check_passes_in_both_modes(storage, dynamics_mi, env, capsys, managed_identity):
    from leads.cli import main

    if not managed_identity:
        dynamics_mi.app_user_client_id = dynamics_mi.client_id
        env(**dynamics_mi.settings())
    env(EMAIL_TO="", WEBHOOK_URL="", LEADS_ROUTING="")
    assert main(["check", "--json"]) == 0, capsys.readouterr().out
    report = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
    assert report["dynamics"]["ok"] and "can create leads" in report["dynamics"]["message"]
    assert (dynamics_mi.identity_requests, dynamics_mi.token_requests) == ((1, 0) if managed_identity else (0, 1))


# --- the environment's own columns (DYNAMICS_MAPPING) -------------------------------------------------------

DV_MAPPING = {
    "fields": {
        "new_marketplaceoffer": "Marketplace: {offer_title} ({action})",
        "new_leadchannel": {"value": "Marketplace"},
        "new_campaigncode": "campaign.mktcmpid",
    },
    "mappings": {"partner": {"new_leadchannel": {"value": "partner"}, "leadsourcecode": {"value": "Partner"}}},
}


def environment_with_its_own_columns(fake, env, mapping: dict) -> None:
    """Custom columns (text, a choice, a campaign code) and DYNAMICS_MAPPING naming them."""
    from .fake_dynamics import attribute

    fake.attributes["new_marketplaceoffer"] = attribute("new_marketplaceoffer", "String", 60)
    fake.attributes["new_leadchannel"] = attribute(
        "new_leadchannel",
        "Picklist",
        options=[(100000000, "Marketplace"), (100000001, "Partner"), (100000002, "Event")],
    )
    fake.attributes["new_campaigncode"] = attribute("new_campaigncode", "String", 40)
    env(DYNAMICS_MAPPING=json.dumps(mapping))


def test_the_environments_own_columns_and_a_campaign_value_land_on_the_row(dynamics, env):
    environment_with_its_own_columns(dynamics, env, DV_MAPPING)
    lead = lead_of(CONTACT_ME)
    destination().send(lead, Route())
    row = dynamics.leads[lead_guid(lead.lead_id)]
    assert (row["new_marketplaceoffer"], row["new_leadchannel"], row["new_campaigncode"], row["leadsourcecode"]) == (
        "Marketplace: Contoso CRM (PLT)",
        100000000,
        "spring-24",
        8,
    )
    partner = lead_of(CONTACT_ME, lead_id="partner-lead")
    destination().send(partner, Route(mapping="partner"))
    row = dynamics.leads[lead_guid("partner-lead")]
    assert (row["new_leadchannel"], row["leadsourcecode"]) == (100000001, 4)  # choices by label, any case


def test_dataverse_refuses_a_choice_removed_after_the_definitions_were_read(dynamics, env):
    environment_with_its_own_columns(dynamics, env, DV_MAPPING)
    sender = destination()
    sender.send(lead_of(CONTACT_ME), Route())
    dynamics.attributes["new_leadchannel"]["Options"] = dynamics.attributes["new_leadchannel"]["Options"][1:]
    with pytest.raises(PermanentError) as caught:
        sender.send(lead_of(CONTACT_ME, lead_id="second"), Route())
    assert "new_leadchannel" in str(caught.value) and "outside the valid range" in str(caught.value)
    assert sender._specs is None and lead_guid("second") not in dynamics.leads


def test_a_lookup_column_is_not_mapped_and_says_why(dynamics, env):
    env(DYNAMICS_MAPPING=json.dumps({"fields": {"campaignid": {"value": "9f6d7c2e-0000-0000-0000-000000000001"}}}))
    result = destination().check()
    assert not result.ok and "campaignid" in result.message and "lookup" in result.message, result


def test_check_proves_the_mapping_against_the_table_definitions(dynamics, env):
    environment_with_its_own_columns(dynamics, env, DV_MAPPING)
    result = destination().check()
    assert result.ok, result
    assert "DYNAMICS_MAPPING: 3 fields of its own, mappings partner proven" in result.message
    assert {r.path for r in dynamics.requests if "EntityDefinitions" in r.path and r.path.endswith("Metadata")} == {
        f"EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.{cast}AttributeMetadata"
        for cast in ("String", "Memo", "Picklist")
    }


@pytest.mark.parametrize(
    "fields, says",
    [
        (
            {"new_marketplaceofer": "offer_title"},
            "DYNAMICS_MAPPING maps new_marketplaceofer: Dataverse's lead table has no field new_marketplaceofer "
            "(did you mean "
            "new_marketplaceoffer?)",
        ),
        (
            {"new_leadchannel": {"value": "Webinar"}},
            'new_leadchannel cannot take the constant "Webinar": '
            "the value is not one of its picklist's values (Marketplace "
            "(100000000), Partner (100000001), Event (100000002))",
        ),
    ],
    ids=["misspelt", "choice"],
)
def test_check_finds_what_dataverse_would_refuse(dynamics, env, fields, says):
    environment_with_its_own_columns(dynamics, env, {"fields": fields})
    result = destination().check()
    assert not result.ok and says in result.message, result
    assert "DYNAMICS_MAPPING" in result.fix and not dynamics.leads
