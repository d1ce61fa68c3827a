"""HubSpot: the real connector against a fake of HubSpot's date-versioned CRM contacts API on
loopback (tests/fake_hubspot.py)."""

from __future__ import annotations

import json

import pytest

import leads.destinations
from leads.destinations.base import PermanentError, Route, TransientError
from leads.destinations.hubspot import API_VERSION, HubSpotDestination, property_errors, required_scopes
from leads.destinations.ratelimit import CallLimiter
from leads.intake.ingest import accept_http
from leads.store.lead_store import LeadStore

from . import fake_hubspot
from .conftest import EXAMPLE
from .fake_hubspot import FakeHubSpot
from .fake_marketo import sample_lead
from .loopback import send_error
from .workers import drain

hubspot = fake_hubspot.hubspot  # the fixture

ROUTE = Route()
WRITE = "crm.objects.contacts.write"


def destination(fake: FakeHubSpot, token: str | None = None, **limits) -> HubSpotDestination:
    limiter = CallLimiter(**limits) if limits else None
    return HubSpotDestination(fake.token if token is None else token, fake.url, timeout=5, limiter=limiter)


# --- mapping ----------------------------------------------------------------------------------


def test_a_lead_is_upserted_on_email_property_by_property(hubspot):
    lead = sample_lead(1, Description='{"mktcmpid": "spring-24"}')
    sent = destination(hubspot).send(lead, ROUTE)
    contact = hubspot.contacts["ada1@contoso.com"]
    assert sent.external_id == contact["id"] and sent.detail == {"new": "true"}
    assert contact["properties"] == {
        "email": "ada1@contoso.com",
        "firstname": "Ada",
        "lastname": "Lovelace1",
        "phone": "+14255550100",
        "company": "Contoso",
        "jobtitle": "CTO",
        "country": "United States",
        "message": "Lead source: Microsoft commercial marketplace (Contact me on AppSource)\n"
        f"Offer: Contoso CRM (contoso.contoso-crm)\nCampaign: mktcmpid=spring-24\nLead id: {lead.lead_id}",
    }


def test_empty_properties_are_left_out_so_an_upsert_never_blanks_hubspot(hubspot):
    destination(hubspot).send(sample_lead(2).model_copy(update={"phone": None, "title": ""}), ROUTE)
    assert not {"phone", "jobtitle"} & set(hubspot.contacts["ada2@contoso.com"]["properties"])


def test_a_do_not_contact_and_test_lead_are_marked_in_the_message(hubspot):
    destination(hubspot).send(sample_lead(3, LeadSource="SPZA-DNC|contoso.contoso-crm"), Route(test=True))
    lines = hubspot.contacts["ada3@contoso.com"]["properties"]["message"].splitlines()
    assert lines[0].startswith("[TEST]") and lines[1].startswith("DO NOT CONTACT")
    assert "(Do not contact on AppSource)" in lines[2]


def test_a_lead_without_a_valid_email_fails_at_once_without_personal_data(hubspot):
    lead = sample_lead(4).model_copy(update={"email": "ada4@contoso", "email_valid": False})
    error = send_error(destination(hubspot), lead)
    assert isinstance(error, PermanentError) and "no valid email" in str(error) and "ada4" not in error.explain()
    assert hubspot.requests == 0


def test_an_email_hubspot_rejects_is_permanent_and_not_quoted(hubspot):
    lead = sample_lead(5).model_copy(update={"email": "ada5@@contoso.com", "email_valid": True})
    error = send_error(destination(hubspot), lead)
    assert isinstance(error, PermanentError) and "INVALID_EMAIL" in str(error)
    assert "ada5" not in error.explain()


def test_a_missing_property_is_named(hubspot):
    hubspot.properties.discard("message")
    error = send_error(destination(hubspot), sample_lead(6))
    assert isinstance(error, PermanentError)
    assert "400 VALIDATION_ERROR: the contact property message does not exist" in str(error)


# --- idempotency, auth -------------------------------------------------------------------------


def test_a_lost_response_then_a_retry_leaves_one_contact(hubspot):
    dest = destination(hubspot)
    lead = sample_lead(7)
    hubspot.faults = ["lost"]
    assert isinstance(send_error(dest, lead), TransientError)
    assert len(hubspot.contacts) == 1  # created, but the answer never came
    sent = dest.send(lead, ROUTE)
    assert len(hubspot.contacts) == 1 and sent.external_id == hubspot.contacts["ada7@contoso.com"]["id"]
    assert sent.detail == {"new": "false"}


def test_no_token_requests_across_200_leads(env):
    with FakeHubSpot(per_window=10_000) as fake:  # the limits have tests of their own
        dest = destination(fake, calls=10_000, period=10)
        for n in range(200):
            dest.send(sample_lead(n), ROUTE)
        # A private app token is static: no token endpoint is ever called, each lead is one request.
        assert len(fake.contacts) == 200 and fake.requests == 200 and fake.upserts == 200


def test_an_invalid_token_is_permanent_with_the_fix(hubspot):
    error = send_error(destination(hubspot, token="pat-na1-revoked"), sample_lead(8))
    assert isinstance(error, PermanentError) and "401 INVALID_AUTHENTICATION" in str(error)
    assert "HUBSPOT_TOKEN" in error.fix and "pat-na1-revoked" not in error.explain()


def test_an_expired_token_is_permanent_there_is_nothing_to_refresh(hubspot):
    hubspot.faults = ["expired"]
    error = send_error(destination(hubspot), sample_lead(9))
    assert isinstance(error, PermanentError) and "401 EXPIRED_AUTHENTICATION" in str(error)


def test_a_missing_write_scope_is_named(hubspot):
    hubspot.scopes.discard(WRITE)
    error = send_error(destination(hubspot), sample_lead(10))
    assert isinstance(error, PermanentError)
    assert f"403 MISSING_SCOPES: HUBSPOT_TOKEN lacks the scope {WRITE}" in str(error) and WRITE in error.fix
    assert "Service Keys" in error.fix and "Scopes tab" in error.fix


def test_missing_scopes_read_both_body_shapes():
    body = {
        "errors": [
            {"context": {"requiredGranularScopes": ["a.write", "b"]}},
            {"context": {"requiredScopes": ["contacts"]}},
        ]
    }
    assert required_scopes(body) == ["a.write", "b", "contacts"]


def test_property_errors_keep_codes_and_names_never_values():
    body = {
        "message": 'Property values were not valid: [{"isValid":false,"message":"Email address x@y is invalid",'
        '"error":"INVALID_EMAIL","name":"email"}]',
        "category": "VALIDATION_ERROR",
        "errors": [{"code": "INVALID_OPTION", "context": {"propertyName": ["hs_lead_status"]}}],
    }
    assert property_errors(body) == [("INVALID_EMAIL", "email"), ("INVALID_OPTION", "hs_lead_status")]


# --- limits ------------------------------------------------------------------------------------


def test_a_429_is_transient_after_the_rate_window(hubspot):
    hubspot.faults = ["429"]
    error = send_error(destination(hubspot), sample_lead(11))
    assert isinstance(error, TransientError) and "TEN_SECONDLY_ROLLING" in str(error) and error.retry_after == 10.0


def test_the_daily_limit_waits_until_midnight(hubspot):
    hubspot.faults = ["daily"]
    error = send_error(destination(hubspot), sample_lead(12))
    assert isinstance(error, TransientError) and "DAILY" in str(error) and 0 < error.retry_after <= 86400


@pytest.mark.parametrize("fault", ["500", "409", "drop"])
def test_server_errors_conflicts_and_dropped_connections_are_transient(hubspot, fault):
    dest = destination(hubspot)
    hubspot.faults = [fault]
    assert isinstance(send_error(dest, sample_lead(13)), TransientError)
    dest.send(sample_lead(13), ROUTE)
    assert len(hubspot.contacts) == 1


def test_the_limiter_keeps_the_calls_under_hubspots_window(env):
    with FakeHubSpot(per_window=5, window=1.0) as fake:
        dest = destination(fake, calls=5, period=1.0, max_wait=3.0)
        for n in range(9):
            dest.send(sample_lead(n), ROUTE)
        assert len(fake.contacts) == 9 and fake.rate_limited == 0 and dest.limiter.waited > 0.5


# --- check -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["service key", "private app token"])
def test_check_ok_verifies_the_write_scope_and_creates_nothing(hubspot, kind):
    check = destination(hubspot, token=hubspot.service_key if kind == "service key" else hubspot.token).check()
    assert check.ok and f"{WRITE} granted" in check.message and API_VERSION in check.message
    assert hubspot.contacts == {}


@pytest.mark.parametrize("kind", ["service key", "private app token"])
def test_check_names_a_missing_write_scope(hubspot, kind):
    hubspot.scopes.discard(WRITE)
    check = destination(hubspot, token=hubspot.service_key if kind == "service key" else hubspot.token).check()
    assert not check.ok and f"lacks the scope {WRITE}" in check.message
    assert "Service Keys" in check.fix and hubspot.contacts == {}


def test_check_names_a_missing_read_scope(hubspot):
    hubspot.scopes = {WRITE}
    check = destination(hubspot).check()
    assert not check.ok and "lacks the scope crm.objects.contacts.read" in check.message


def test_check_an_invalid_token(hubspot):
    check = destination(hubspot, token="pat-na1-wrong").check()
    assert not check.ok and "401 INVALID_AUTHENTICATION" in check.message and "Show token" in check.fix


def test_check_an_unreachable_or_wrong_url(hubspot):
    from leads.local.azurite import free_port

    check = HubSpotDestination("pat", f"http://127.0.0.1:{free_port()}", timeout=2).check()
    assert not check.ok and "could not reach" in check.message and "HUBSPOT_URL" in check.fix
    check = HubSpotDestination(hubspot.token, hubspot.url + "/nothing", timeout=2).check()
    assert not check.ok and "HUBSPOT_URL does not answer as HubSpot's API" in check.message


def test_check_rate_limited_is_reported(hubspot):
    hubspot.faults = ["429"]
    check = destination(hubspot).check()
    assert not check.ok and "429" in check.message


# --- the date-versioned API, Service Keys, the portal's rules ---------------------------------------


def test_every_call_uses_the_current_date_version(hubspot):
    dest = destination(hubspot, token=hubspot.service_key)
    dest.send(sample_lead(20), ROUTE)
    dest.check()
    assert hubspot.paths and all(path.startswith(f"/crm/objects/{API_VERSION}/contacts") for path in hubspot.paths)
    assert API_VERSION >= "2026-09", "the portal's rules apply from 2026-09: the tests below assume it"


def test_a_service_key_upserts_like_a_private_app_token(hubspot):
    for n, token in enumerate((hubspot.service_key, hubspot.token)):
        sent = destination(hubspot, token=token).send(sample_lead(30), ROUTE)
        assert sent.external_id == hubspot.contacts["ada30@contoso.com"]["id"]
        assert sent.detail == {"new": "true" if n == 0 else "false"}


def test_a_property_validation_rule_is_permanent_and_names_property_and_rule_not_value(hubspot):
    hubspot.validation_rules["lastname"] = (
        "INVALID_ALPHA",
        'Enter only letters ("{value}")',
        lambda v: not v.isalpha(),
    )
    error = send_error(destination(hubspot), sample_lead(21))
    assert isinstance(error, PermanentError)
    assert "validation rules reject the contact: lastname (INVALID_ALPHA: Enter only letters" in str(error)
    assert "Lovelace21" not in error.explain() and "Settings > Properties" in error.fix
    assert hubspot.contacts == {}


def test_a_property_required_on_create_is_permanent_and_named(hubspot):
    hubspot.required_on_create["hs_lead_status"] = "Lead Status is required to create a contact"
    error = send_error(destination(hubspot), sample_lead(22))
    assert isinstance(error, PermanentError)
    assert "hs_lead_status (REQUIRED_PROPERTY: Lead Status is required to create a contact)" in str(error)
    assert "replay" in error.fix and hubspot.contacts == {}


# --- end to end --------------------------------------------------------------------------------


def test_a_lead_the_portal_s_rules_reject_fails_once_and_is_never_retried(storage, env, monkeypatch):
    monkeypatch.setitem(leads.destinations.REGISTRY, "hubspot", "leads.destinations.hubspot:HubSpotDestination")
    with FakeHubSpot() as fake:
        fake.required_on_create["lifecyclestage"] = "Lifecycle stage is required"
        env(
            HUBSPOT_TOKEN=fake.service_key,
            HUBSPOT_URL=fake.url,
            LEADS_RETRY_BASE_SECONDS="0.2",
            EMAIL_TO="",
            WEBHOOK_URL="",
            LEADS_HTTP_TIMEOUT_SECONDS="2",
        )
        answer = accept_http(
            json.dumps(
                {
                    "UserDetails": {
                        "FirstName": "Some",
                        "LastName": "One",
                        "Email": "someone@contoso.com",
                        "Company": "Contoso",
                    },
                    "LeadSource": "AppSource",
                    "ActionCode": "INS",
                    "OfferTitle": "Test",
                }
            ).encode()
        )
        drain(deadline=20)
        delivery = LeadStore.from_settings().deliveries.get(answer.body["leadId"], "hubspot")
        assert (delivery.state, delivery.attempts) == ("failed", 1)
        assert "lifecyclestage (REQUIRED_PROPERTY" in delivery.last_error and fake.upserts == 0


def test_python_m_leads_check_passes_with_a_service_key_and_a_private_app_token(storage, env, capsys):
    from leads.cli import main

    with FakeHubSpot() as fake:
        for token in (fake.service_key, fake.token):
            env(HUBSPOT_TOKEN=token, HUBSPOT_URL=fake.url, EMAIL_TO="", WEBHOOK_URL="", LEADS_ROUTING="")
            assert main(["check", "--json"]) == 0, capsys.readouterr().out
            report = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
            assert report["hubspot"]["ok"] and WRITE in report["hubspot"]["message"]
        assert fake.contacts == {}


def test_a_lead_taken_in_is_delivered_to_hubspot_by_the_worker(storage, env, monkeypatch):
    monkeypatch.setitem(leads.destinations.REGISTRY, "hubspot", "leads.destinations.hubspot:HubSpotDestination")
    with FakeHubSpot() as fake:
        env(
            HUBSPOT_TOKEN=fake.token,
            HUBSPOT_URL=fake.url,
            LEADS_RETRY_BASE_SECONDS="0.2",
            EMAIL_TO="",
            WEBHOOK_URL="",
            LEADS_HTTP_TIMEOUT_SECONDS="2",
        )
        fake.faults = ["lost", "500"]  # the first answer is lost, then a 500: still one contact
        answer = accept_http(json.dumps(EXAMPLE).encode())  # the documented example: Some One of Contoso, USA
        assert answer.status == 202
        drain(deadline=40)
        contact = fake.contacts["someone@contoso.com"]
        assert (contact["properties"]["firstname"], contact["properties"]["country"]) == ("Some", "United States")
        assert len(fake.contacts) == 1
        delivery = LeadStore.from_settings().deliveries.get(answer.body["leadId"], "hubspot")
        assert (delivery.state, delivery.external_id, delivery.attempts) == ("delivered", contact["id"], 3)


# --- the portal's own properties (HUBSPOT_MAPPING) ----------------------------------------------------------

HS_MAPPING = {
    "fields": {
        "marketplace_offer": "Marketplace: {offer_title} ({action})",
        "lead_channel": {"value": "Marketplace"},
        "campaign_code": "campaign.mktcmpid",
        "lifecyclestage": {"value": "lead"},
    },
    "mappings": {"partner": {"lead_channel": {"value": "partner"}}},
}


def portal_with_its_own_properties(fake: FakeHubSpot) -> FakeHubSpot:
    """A portal with a text property, an enumeration (dropdown) and a campaign property."""
    fake.add_property("marketplace_offer", label="Marketplace offer")
    fake.add_property(
        "lead_channel",
        "enumeration",
        "select",
        [("marketplace", "Marketplace"), ("partner", "Partner"), ("event", "Event")],
    )
    fake.add_property("campaign_code")
    return fake


def mapped(fake: FakeHubSpot, mapping: dict) -> HubSpotDestination:
    return HubSpotDestination(fake.token, fake.url, timeout=5, mapping=json.dumps(mapping))


def test_the_portals_own_properties_and_a_campaign_value_land_on_the_contact(hubspot):
    portal_with_its_own_properties(hubspot)
    mapped(hubspot, HS_MAPPING).send(sample_lead(1, Description='{"mktcmpid": "winter-26"}'), ROUTE)
    properties = hubspot.contacts["ada1@contoso.com"]["properties"]
    # The enumeration takes its option's value, matched on the label; the built-in properties stay.
    assert {
        name: properties[name]
        for name in ("marketplace_offer", "lead_channel", "campaign_code", "lifecyclestage", "lastname")
    } == {
        "marketplace_offer": "Marketplace: Contoso CRM (PLT)",
        "lead_channel": "marketplace",
        "campaign_code": "winter-26",
        "lifecyclestage": "lead",
        "lastname": "Lovelace1",
    }
    mapped(hubspot, HS_MAPPING).send(sample_lead(2), Route(mapping="partner"))
    assert hubspot.contacts["ada2@contoso.com"]["properties"]["lead_channel"] == "partner"


def test_hubspot_refuses_an_option_the_enumeration_lacks_as_the_portal_would(hubspot):
    portal_with_its_own_properties(hubspot)
    destination = mapped(hubspot, HS_MAPPING)
    destination.send(sample_lead(1), ROUTE)  # the property definitions are read and kept
    hubspot.custom_properties["lead_channel"]["options"] = hubspot.custom_properties["lead_channel"]["options"][1:]
    error = send_error(destination, sample_lead(2))
    assert not error.transient and "lead_channel (INVALID_OPTION)" in str(error)
    assert destination._specs is None and "ada2@contoso.com" not in hubspot.contacts


def test_a_source_property_is_read_only_and_a_mapping_of_it_fails_before_any_write(hubspot):
    error = send_error(
        mapped(hubspot, {"fields": {"hs_analytics_source_data_1": "campaign.utm_source"}}),
        sample_lead(1, Description='{"utm_source": "newsletter"}'),
    )
    assert "hs_analytics_source_data_1 cannot be written: HubSpot sets it" in str(error)
    assert not hubspot.contacts and hubspot.upserts == 0


def test_check_proves_the_mapping_against_the_properties_api(hubspot):
    portal_with_its_own_properties(hubspot)
    result = mapped(hubspot, HS_MAPPING).check()
    assert result.ok, result
    assert "HUBSPOT_MAPPING: 4 fields of its own, mappings partner proven" in result.message
    assert any(path.startswith(f"/crm/properties/{API_VERSION}/contacts") for path in hubspot.paths)


@pytest.mark.parametrize(
    "fields, says",
    [
        (
            {"marketplace_ofer": "offer_title"},
            "HUBSPOT_MAPPING maps marketplace_ofer: HubSpot's contact has no field marketplace_ofer (did you mean "
            "marketplace_offer?)",
        ),
        (
            {"lead_channel": {"value": "webinar"}},
            'lead_channel cannot take the constant "webinar": '
            "the value is not one of its picklist's values (Marketplace "
            "(marketplace), Partner (partner), Event (event))",
        ),
    ],
    ids=["misspelt", "option"],
)
def test_check_finds_what_the_portal_would_refuse(hubspot, fields, says):
    portal_with_its_own_properties(hubspot)
    result = mapped(hubspot, {"fields": fields}).check()
    assert not result.ok and says in result.message, result
    assert "HUBSPOT_MAPPING" in result.fix


def test_check_names_the_scope_the_properties_api_needs(hubspot):
    hubspot.scopes.discard("crm.schemas.contacts.read")
    result = mapped(hubspot, {"fields": {"campaign_code": "campaign.mktcmpid"}}).check()
    assert not result.ok and "crm.schemas.contacts.read" in result.message, result
