"""Marketo: the real connector against a fake of Marketo's REST API on loopback (tests/fake_marketo.py)."""

from __future__ import annotations

import json
import threading
from datetime import UTC
from urllib.parse import parse_qs

import pytest

import leads.destinations
from leads.destinations.base import PermanentError, Route, TransientError
from leads.destinations.marketo import DNC_REASON, MarketoDestination, seconds_to_quota_reset
from leads.destinations.ratelimit import CallLimiter
from leads.intake.ingest import accept_http
from leads.store.lead_store import LeadStore

from . import fake_marketo
from .conftest import EXAMPLE
from .fake_marketo import FakeMarketo, sample_lead
from .loopback import send_error
from .workers import drain

marketo = fake_marketo.marketo  # the fixture

ROUTE = Route()


def destination(fake: FakeMarketo, form_id: str = "", **limits) -> MarketoDestination:
    limiter = CallLimiter(**limits) if limits else CallLimiter(calls=10_000, period=20)
    return MarketoDestination(fake.url, fake.client_id, fake.client_secret, form_id, timeout=5, limiter=limiter)


# --- mapping ----------------------------------------------------------------------------------


def test_a_lead_is_upserted_on_email_field_by_field(marketo):
    lead = sample_lead(1, Description='{"mktcmpid": "spring-24", "partnerid": "p1"}')
    sent = destination(marketo).send(lead, ROUTE)
    person = marketo.persons["ada1@contoso.com"]
    assert sent.external_id == str(person["id"]) and sent.detail == {"status": "created"}
    assert person == {
        "id": person["id"],
        "email": "ada1@contoso.com",
        "firstName": "Ada",
        "lastName": "Lovelace1",
        "phone": "+14255550100",
        "company": "Contoso",
        "title": "CTO",
        "country": "United States",
        "leadSource": "AppSource",
        "leadDescription": "Marketplace: Contact me on AppSource\nOffer: Contoso CRM (contoso.contoso-crm)\n"
        f"Campaign: mktcmpid=spring-24, partnerid=p1\nLead id: {lead.lead_id}",
    }
    assert "unsubscribed" not in person


def test_empty_fields_are_left_out_so_an_upsert_never_blanks_marketo(marketo):
    lead = sample_lead(2).model_copy(update={"phone": None, "title": None, "company": ""})
    destination(marketo).send(lead, ROUTE)
    assert not {"phone", "title", "company"} & set(marketo.persons["ada2@contoso.com"])


def test_a_do_not_contact_lead_is_unsubscribed_and_marked_do_not_call(marketo):
    lead = sample_lead(3, LeadSource="SPZA-DNC|contoso.contoso-crm")
    assert lead.do_not_contact
    destination(marketo).send(lead, ROUTE)
    person = marketo.persons["ada3@contoso.com"]
    assert person["unsubscribed"] is True and person["doNotCall"] is True
    assert person["unsubscribedReason"] == person["doNotCallReason"] == DNC_REASON
    assert person["leadDescription"].startswith("DO NOT CONTACT")


def test_a_test_lead_is_marked(marketo):
    destination(marketo).send(sample_lead(4), Route(test=True))
    assert marketo.persons["ada4@contoso.com"]["leadDescription"].startswith("[TEST]")


def test_without_a_free_text_field_the_standard_fields_still_go(env):
    with FakeMarketo(custom_fields={}) as fake:
        dest = destination(fake)
        dest.send(sample_lead(5), ROUTE)
        assert "leadDescription" not in fake.persons["ada5@contoso.com"]
        check = dest.check()
    assert check.ok and "Lead Description" in check.message


def test_with_a_form_id_the_lead_is_a_form_submission_with_its_details_in_visitor_data(marketo):
    lead = sample_lead(6, LeadSource="SPZA-DNC|contoso.contoso-crm", Description="Call me")
    sent = destination(marketo, form_id="1001").send(lead, Route(test=True))
    person = marketo.persons["ada6@contoso.com"]
    assert sent.external_id == str(person["id"]) and "leadDescription" not in person
    assert person["unsubscribed"] is True
    [submission] = marketo.submissions
    assert submission["formId"] == 1001 and submission["visitorData"]["pageURL"] == "https://appsource.microsoft.com/"
    query = {key: values[0] for key, values in parse_qs(submission["visitorData"]["queryString"]).items()}
    assert query == {
        "source": "AppSource",
        "action": "DNC",
        "offer": "contoso.contoso-crm",
        "offerTitle": "Contoso CRM",
        "leadId": lead.lead_id,
        "test": "true",
        "doNotContact": "true",
        "notes": "Call me",
    }


def test_a_field_missing_from_the_form_is_named_with_the_fix(env):
    with FakeMarketo(forms={1001: ["email", "firstName", "lastName"]}) as fake:
        error = send_error(destination(fake, form_id="1001"), sample_lead(7))
        check = destination(fake, form_id="1001").check()
    assert isinstance(error, PermanentError)
    assert "1006 field 'phone' not found in form 1001" in str(error) and "hidden field" in error.fix
    assert not check.ok and "phone, company, title, country, leadSource, unsubscribed" in check.message


def test_a_field_marketo_does_not_have_is_permanent_and_named(marketo):
    marketo.fields.pop("title")
    error = send_error(destination(marketo), sample_lead(8))
    assert isinstance(error, PermanentError) and "field 'title' not found" in str(error)


def test_record_errors_never_quote_the_customers_values(marketo):
    marketo.fields["company"] = ("Company Name", "boolean")  # changed type: Marketo quotes the value
    error = send_error(destination(marketo), sample_lead(9))
    assert isinstance(error, PermanentError) and "1001" in str(error) and "'boolean'" in str(error)
    assert "Contoso" not in error.explain()


def test_a_lead_without_a_valid_email_fails_at_once_without_personal_data(marketo):
    lead = sample_lead(10).model_copy(update={"email": None, "email_valid": None})
    error = send_error(destination(marketo), lead)
    assert isinstance(error, PermanentError) and "no valid email" in str(error)
    assert marketo.calls == 0 and marketo.token_requests == 0


# --- idempotency, tokens -----------------------------------------------------------------------


def test_a_lost_response_then_a_retry_leaves_one_person(marketo):
    dest = destination(marketo)
    lead = sample_lead(11)
    marketo.faults = ["lost"]
    error = send_error(dest, lead)
    assert isinstance(error, TransientError)
    assert len(marketo.persons) == 1  # created, but the answer never came
    sent = dest.send(lead, ROUTE)
    assert len(marketo.persons) == 1 and sent.external_id == str(marketo.persons["ada11@contoso.com"]["id"])
    assert sent.detail == {"status": "updated"}


@pytest.mark.parametrize("how", ["expire_tokens", "invalidate_tokens"])
def test_an_expired_or_invalid_token_is_fetched_again_once(marketo, how):
    dest = destination(marketo)
    dest.send(sample_lead(12), ROUTE)
    getattr(marketo, how)()
    dest.send(sample_lead(13), ROUTE)
    assert marketo.token_requests == 2 and len(marketo.persons) == 2
    assert marketo.errors == {"602" if how == "expire_tokens" else "601": 1}


def test_a_token_refused_twice_is_permanent(marketo):
    dest = destination(marketo)
    dest.send(sample_lead(14), ROUTE)
    marketo.faults = ["601", "601"]
    error = send_error(dest, sample_lead(15))
    assert isinstance(error, PermanentError) and "601" in str(error) and "MARKETO_URL" in error.fix


def test_one_token_request_across_200_leads(env):
    with FakeMarketo(calls_per_window=10_000) as fake:  # the limits have tests of their own
        dest = destination(fake)
        for n in range(200):
            dest.send(sample_lead(n), ROUTE)
        assert fake.token_requests == 1 and dest.token_requests == 1
        assert len(fake.persons) == 200 and fake.calls == 201  # 200 upserts + one describe


def test_the_client_secret_travels_in_a_form_body_never_in_the_url(marketo):
    """A query string lands in proxy logs and in Application Insights' dependency URLs."""
    destination(marketo).send(sample_lead(16), ROUTE)
    assert marketo.token_requests == 1 and marketo.token_request_urls == ["/identity/oauth/token"]


def test_concurrent_first_sends_share_one_token(marketo):
    dest = destination(marketo)
    threads = [threading.Thread(target=dest.send, args=(sample_lead(n), ROUTE)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert marketo.token_requests == 1 and len(marketo.persons) == 8


# --- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "retry_after"), [("606", 20.0), ("615", 5.0), ("604", 30.0), ("611", 30.0), ("713", 30.0)]
)
def test_marketo_limits_and_hiccups_are_transient_with_retry_after(marketo, code, retry_after):
    dest = destination(marketo)
    marketo.faults = [code]
    error = send_error(dest, sample_lead(16))
    assert isinstance(error, TransientError) and code in str(error) and error.retry_after == retry_after


def test_the_daily_quota_waits_for_its_reset(marketo):
    marketo.faults = ["607"]
    error = send_error(destination(marketo), sample_lead(17))
    assert isinstance(error, TransientError) and "daily API quota" in str(error) and "account manager" in error.fix
    assert 60 <= error.retry_after <= 25 * 3600


def test_the_quota_reset_is_midnight_us_central():
    from datetime import datetime

    assert seconds_to_quota_reset(datetime(2024, 1, 15, 5, 0, tzinfo=UTC)) == 3600 + 60  # 23:00 CST
    assert seconds_to_quota_reset(datetime(2024, 7, 15, 4, 0, tzinfo=UTC)) == 3600 + 60  # 23:00 CDT


def test_http_5xx_and_dropped_connections_are_transient(marketo):
    dest = destination(marketo)
    marketo.faults = ["http500", "drop"]
    assert isinstance(send_error(dest, sample_lead(18)), TransientError)
    assert isinstance(send_error(dest, sample_lead(18)), TransientError)
    dest.send(sample_lead(18), ROUTE)


def test_the_limiter_paces_calls_under_marketos_window(env):
    with FakeMarketo(calls_per_window=5, window=1.0) as fake:
        dest = destination(fake, calls=5, period=1.0, max_wait=3.0)
        for n in range(9):  # 1 token + 1 describe + 9 upserts: > 5 calls a second
            dest.send(sample_lead(n), ROUTE)
        assert len(fake.persons) == 9 and fake.errors["606"] == 0 and dest.limiter.waited > 0.5


def test_the_limiter_answers_transient_when_the_wait_is_too_long(marketo):
    dest = destination(marketo, calls=3, period=20.0, max_wait=0.5)
    dest.send(sample_lead(1), ROUTE)  # token, describe, upsert
    error = send_error(dest, sample_lead(2))
    assert isinstance(error, TransientError) and "held back by this app" in str(error)
    assert 15 < error.retry_after <= 20 and marketo.errors["606"] == 0


def test_the_limiter_keeps_at_most_n_calls_in_flight(env):
    with FakeMarketo(latency=0.05, concurrent=3) as fake:
        dest = destination(fake, calls=1000, period=20, concurrent=3, max_wait=10)
        dest.send(sample_lead(0), ROUTE)
        threads = [threading.Thread(target=dest.send, args=(sample_lead(n), ROUTE)) for n in range(1, 13)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(fake.persons) == 13 and fake.max_in_flight <= 3 and fake.errors["615"] == 0


# --- check -------------------------------------------------------------------------------------


def test_check_ok_names_what_it_verified_and_creates_nothing(marketo):
    check = destination(marketo).check()
    assert check.ok and "token issued" in check.message and "'leadDescription'" in check.message
    assert marketo.persons == {} and marketo.token_requests == 1


def test_check_ok_with_a_form_that_has_every_field(marketo):
    check = destination(marketo, form_id="1001").check()
    assert check.ok and "form 1001 has every field" in check.message and marketo.persons == {}


def test_check_bad_client_secret(marketo):
    dest = MarketoDestination(marketo.url, marketo.client_id, "wrong-secret", timeout=5)
    check = dest.check()
    assert not check.ok and "refused the client id and secret (401 invalid_client)" in check.message
    assert "LaunchPoint" in check.fix and "wrong-secret" not in check.message + check.fix


def test_check_missing_settings(marketo):
    check = MarketoDestination(marketo.url, "", "", timeout=5).check()
    assert not check.ok and "MARKETO_CLIENT_ID and MARKETO_CLIENT_SECRET not set" in check.message


def test_check_a_url_that_is_not_marketo(marketo):
    check = MarketoDestination(marketo.url + "/elsewhere", marketo.client_id, marketo.client_secret, timeout=5).check()
    assert not check.ok and "does not answer as Marketo's REST API" in check.message and "mktorest.com" in check.fix


def test_check_a_url_with_rest_pasted_is_accepted(marketo):
    assert MarketoDestination(marketo.url + "/rest/", marketo.client_id, marketo.client_secret, timeout=5).check().ok


def test_check_an_unreachable_instance():
    from leads.local.azurite import free_port

    check = MarketoDestination(f"http://127.0.0.1:{free_port()}", "id", "secret", timeout=2).check()
    assert not check.ok and "could not reach" in check.message and "MARKETO_URL" in check.fix


def test_check_access_denied_names_the_role_permission(marketo):
    marketo.denied.add("/rest/v1/leads")
    check = destination(marketo).check()
    assert not check.ok and "603 (access denied)" in check.message and "Read-Write Person" in check.fix


def test_check_a_form_that_does_not_exist(marketo):
    check = destination(marketo, form_id="999").check()
    assert not check.ok and "form 999 (MARKETO_FORM_ID) was not found" in check.message


def test_check_a_form_the_role_cannot_read_is_not_blamed(marketo):
    marketo.denied.add("/rest/asset/")
    check = destination(marketo, form_id="1001").check()
    assert check.ok and "not verified" in check.message


def test_check_a_form_id_that_is_not_a_number(marketo):
    check = destination(marketo, form_id="MyForm").check()
    assert not check.ok and "MARKETO_FORM_ID is not a number" in check.message


def test_check_reports_the_daily_quota(marketo):
    marketo.daily_quota = 0
    check = destination(marketo).check()
    assert not check.ok and "607" in check.message and "quota" in check.fix


# --- end to end --------------------------------------------------------------------------------


def test_a_lead_taken_in_is_delivered_to_marketo_by_the_worker(storage, env, monkeypatch):
    monkeypatch.setitem(leads.destinations.REGISTRY, "marketo", "leads.destinations.marketo:MarketoDestination")
    with FakeMarketo() as fake:
        env(
            MARKETO_URL=fake.url,
            MARKETO_CLIENT_ID=fake.client_id,
            MARKETO_CLIENT_SECRET=fake.client_secret,
            LEADS_RETRY_BASE_SECONDS="0.2",
            EMAIL_TO="",
            WEBHOOK_URL="",
            LEADS_HTTP_TIMEOUT_SECONDS="2",
        )
        fake.faults = ["lost", "http500"]  # the first answer is lost, then a 500: still one person
        answer = accept_http(json.dumps(EXAMPLE).encode())  # the documented example: Some One of Contoso, USA
        assert answer.status == 202
        drain(deadline=40)
        person = fake.persons["someone@contoso.com"]
        assert (person["firstName"], person["country"], person["leadSource"]) == (
            "Some",
            "United States",
            "Azure Marketplace",
        )
        assert len(fake.persons) == 1
        delivery = LeadStore.from_settings().deliveries.get(answer.body["leadId"], "marketo")
        assert (delivery.state, delivery.external_id, delivery.attempts) == ("delivered", str(person["id"]), 3)


# --- the instance's own fields (MARKETO_MAPPING) -------------------------------------------------------------

MK_MAPPING = {
    "fields": {
        "marketplaceOffer": "Marketplace: {offer_title} ({action})",
        "leadChannel": {"value": "Marketplace"},
        "campaignCode": "campaign.mktcmpid",
    },
    "mappings": {"partner": {"leadChannel": {"value": "partner"}}},
}


def instance_with_its_own_fields() -> FakeMarketo:
    """Custom person fields on the form 1001, the lead channel a select field there."""
    custom = {
        "leadDescription": ("Lead Description", "text"),
        "marketplaceOffer": ("Marketplace Offer", "string"),
        "leadChannel": ("Lead Channel", "string"),
        "campaignCode": ("Campaign Code", "string"),
        "employees": ("Employees", "integer"),
    }
    fake = FakeMarketo(
        custom_fields=custom,
        forms={1001: [*fake_marketo.STANDARD_FIELDS, "marketplaceOffer", "leadChannel", "campaignCode"]},
    )
    fake.selects["leadChannel"] = [("Marketplace", "Marketplace"), ("Partner", "Partner"), ("Event", "Event")]
    return fake


def mapped(fake: FakeMarketo, mapping: dict, form_id: str = "1001") -> MarketoDestination:
    return MarketoDestination(
        fake.url, fake.client_id, fake.client_secret, form_id, timeout=5, mapping=json.dumps(mapping)
    )


def test_the_instances_own_fields_and_a_campaign_value_land_on_the_person():
    with instance_with_its_own_fields() as fake:
        mapped(fake, MK_MAPPING).send(sample_lead(1, Description='{"mktcmpid": "winter-26"}'), ROUTE)
        person = fake.persons["ada1@contoso.com"]
        assert (person["marketplaceOffer"], person["leadChannel"], person["campaignCode"], person["lastName"]) == (
            "Marketplace: Contoso CRM (PLT)",
            "Marketplace",
            "winter-26",
            "Lovelace1",
        )
        assert "mktcmpid=winter-26" in fake.submissions[0]["visitorData"]["queryString"]
        mapped(fake, MK_MAPPING).send(sample_lead(2), Route(mapping="partner"))
        assert fake.persons["ada2@contoso.com"]["leadChannel"] == "Partner"  # the select's value, by its label


def test_a_value_the_forms_select_lacks_fails_before_the_submission_naming_the_field():
    with instance_with_its_own_fields() as fake:
        mapping = {"fields": {"leadChannel": "campaign.utm_source"}}
        error = send_error(mapped(fake, mapping), sample_lead(1, Description='{"utm_source": "newsletter"}'))
        assert not error.transient and "leadChannel cannot take the value of campaign.utm_source" in str(error)
        assert "newsletter" not in str(error) and not fake.persons and not fake.submissions


def test_marketo_refuses_a_value_of_the_wrong_type_as_the_instance_would():
    with instance_with_its_own_fields() as fake:
        fake.forms[1001].append("employees")
        destination = mapped(fake, {"fields": {"employees": {"value": 250}}})
        destination.send(sample_lead(1), ROUTE)  # describe read and kept
        assert fake.persons["ada1@contoso.com"]["employees"] == 250
        fake.fields["employees"] = ("Employees", "date")  # an admin changed the field's type
        error = send_error(destination, sample_lead(2))
        assert not error.transient and "1001" in str(error) and "'date' was required" in str(error)


def test_check_proves_the_mapping_against_describe_and_the_form():
    with instance_with_its_own_fields() as fake:
        result = mapped(fake, MK_MAPPING).check()
        assert result.ok, result
        assert "MARKETO_MAPPING: 3 fields of its own, mappings partner proven" in result.message


@pytest.mark.parametrize(
    "fields, says",
    [
        (
            {"marketplaceOfer": "offer_title"},
            "MARKETO_MAPPING maps marketplaceOfer: Marketo's person has no field marketplaceOfer (did you mean "
            "marketplaceOffer?)",
        ),
        (
            {"leadChannel": {"value": "Webinar"}},
            'leadChannel cannot take the constant "Webinar": '
            "the value is not one of its picklist's values (Marketplace, "
            "Partner, Event)",
        ),
        ({"employees": {"value": 5}}, "employees cannot be written: it is not on form 1001 (MARKETO_FORM_ID)"),
    ],
    ids=["misspelt", "select-value", "not-on-form"],
)
def test_check_finds_what_marketo_would_refuse(fields, says):
    with instance_with_its_own_fields() as fake:
        result = mapped(fake, {"fields": fields}).check()
        assert not result.ok and says in result.message, result
        assert "MARKETO_MAPPING" in result.fix and not fake.persons
