"""Salesforce: the REST API and Web-to-Lead destinations against a fake org on loopback
(tests/fake_salesforce.py), driven by the real connector code and simple-salesforce."""

from __future__ import annotations

import json

import pytest
import requests

import leads.destinations
from leads.core.normalise import from_http_body
from leads.core.settings import Settings
from leads.destinations import PermanentError, Route, TransientError
from leads.destinations.salesforce import (
    MARKER,
    PLACEHOLDER,
    SalesforceDestination,
    SalesforceWebToLeadDestination,
    api_error,
    scrub,
)
from leads.intake.ingest import accept_http
from leads.local.azurite import free_port
from leads.store.lead_store import LeadStore

from .conftest import FIXTURES
from .fake_salesforce import FakeSalesforce, fake_salesforce_fixture  # noqa: F401  (the fake_salesforce fixture)
from .workers import drain

MARKETPLACE = FIXTURES / "marketplace"
EXAMPLE = json.loads((MARKETPLACE / "https-documented-example.json").read_text())
VALIDATION = json.loads((MARKETPLACE / "https-validation-test-lead.json").read_text())
EXT = "Marketplace_Lead_Id__c"


def make_lead(**changes):
    body = json.loads(json.dumps(EXAMPLE))
    body["UserDetails"].update(changes.pop("user", {}))
    body.update(changes)
    return from_http_body(body)


def rest(fake: FakeSalesforce, external_id_field: str | None = EXT, **kwargs) -> SalesforceDestination:
    return SalesforceDestination(
        kwargs.pop("url", fake.url),
        kwargs.pop("client_id", fake.client_id),
        kwargs.pop("client_secret", fake.client_secret),
        external_id_field or "",
        timeout=kwargs.pop("timeout", 5),
        session=fake.session(),
        **kwargs,
    )


def w2l(fake: FakeSalesforce, oid: str | None = None, url: str | None = None) -> SalesforceWebToLeadDestination:
    return SalesforceWebToLeadDestination(oid or fake.oid, url or fake.web_to_lead_url, 5, session=fake.session())


def only_record(fake: FakeSalesforce) -> dict:
    assert len(fake.records) == 1, fake.records
    return next(iter(fake.records.values()))


# --- mapping ---------------------------------------------------------------------------------------


def test_a_lead_is_mapped_field_by_field(fake_salesforce):
    fake_salesforce.lead_source_values.append("Azure Marketplace")
    lead = make_lead(
        LeadSource="SPZA-PLT|contoso.contoso-crm",
        ActionCode=None,
        OfferTitle="Contoso CRM",
        Description='{"mktcmpid": "spring", "partnerid": "42"}',
    )
    sent = rest(fake_salesforce).send(lead, Route())
    record = only_record(fake_salesforce)
    assert sent.external_id == record["Id"] and sent.detail == {"action": "created"}
    assert {
        name: record[name]
        for name in (
            "FirstName",
            "LastName",
            "Email",
            "Phone",
            "Title",
            "Company",
            "Country",
            EXT,
            "HasOptedOutOfEmail",
            "DoNotCall",
        )
    } == {
        "FirstName": "Some",
        "LastName": "One",
        "Email": "someone@contoso.com",
        "Phone": "+16175555555",
        "Title": "Esquire",
        "Company": "Contoso",
        "Country": "United States",
        EXT: lead.lead_id,
        "HasOptedOutOfEmail": False,
        "DoNotCall": False,
    }
    assert "LeadSource" not in record  # AppSource is not in this org's picklist: left empty, never guessed
    assert record["Description"].splitlines() == [
        "Marketplace: AppSource · Contact me (PLT)",
        "Offer: Contoso CRM (contoso.contoso-crm)",
        "Campaign: mktcmpid=spring, partnerid=42",
        MARKER + lead.lead_id,
    ]


def test_lead_source_is_set_only_to_a_value_the_picklist_holds(fake_salesforce):
    fake_salesforce.lead_source_values.append("Azure Marketplace")
    fake_salesforce.lead_source_restricted = True
    rest(fake_salesforce).send(make_lead(), Route())
    assert only_record(fake_salesforce)["LeadSource"] == "Azure Marketplace"


def test_orgs_with_country_picklists_get_the_country_code(fake_salesforce):
    fake_salesforce.country_picklists = True
    destination = rest(fake_salesforce)
    destination.send(make_lead(), Route())
    destination.send(make_lead(user={"Country": "Kenya", "Email": "k@contoso.co.ke"}), Route())  # not in the picklist
    us, kenya = sorted(fake_salesforce.records.values(), key=lambda r: r["Email"] != "someone@contoso.com")
    assert us["CountryCode"] == "US" and "Country" not in us
    assert "CountryCode" not in kenya and "Country as given: KE" in kenya["Description"]


def test_withheld_and_invalid_data_never_costs_the_lead(fake_salesforce):
    lead = make_lead(
        user={"FirstName": "", "LastName": "", "Company": "", "Email": "not an address", "Phone": "", "Title": ""}
    )
    rest(fake_salesforce).send(lead, Route())
    record = only_record(fake_salesforce)
    assert record["LastName"] == PLACEHOLDER and record["Company"] == PLACEHOLDER
    assert "Email" not in record and "FirstName" not in record
    assert "Email as given (not a valid address): not an address" in record["Description"]


def test_long_values_are_cut_to_the_field_lengths(fake_salesforce):
    lead = make_lead(user={"Company": "C" * 300, "Title": "T" * 200}, Description="d" * 40000)
    rest(fake_salesforce).send(lead, Route())
    record = only_record(fake_salesforce)
    assert len(record["Company"]) == 255 and len(record["Title"]) == 128
    assert len(record["Description"]) <= 32000 and record["Description"].endswith(MARKER + lead.lead_id)


def test_a_do_not_contact_lead_sets_the_opt_outs(fake_salesforce):
    lead = make_lead(LeadSource="AzureMarketplace", ActionCode="DNC")
    assert lead.do_not_contact
    rest(fake_salesforce).send(lead, Route())
    record = only_record(fake_salesforce)
    assert record["HasOptedOutOfEmail"] is True and record["DoNotCall"] is True
    assert record["Description"].startswith("DO NOT CONTACT")


def test_a_test_lead_is_marked(fake_salesforce):
    lead = from_http_body(VALIDATION)
    rest(fake_salesforce).send(lead, Route(test=True))
    assert only_record(fake_salesforce)["Description"].startswith("[TEST]")


# --- idempotency, tokens, limits -------------------------------------------------------------------


@pytest.mark.parametrize("external_id_field", [EXT, None], ids=["upsert", "lookup"])
def test_a_lost_response_then_a_retry_makes_one_record(fake_salesforce, external_id_field):
    destination = rest(fake_salesforce, external_id_field)
    lead = make_lead()
    destination.lead_fields()  # described already
    fake_salesforce.faults = ["lost"] if external_id_field else ["ok", "lost"]  # the look-up finds none; create
    with pytest.raises(requests.ConnectionError) as lost:
        destination.send(lead, Route())
    assert destination.classify(lost.value).transient
    assert len(fake_salesforce.records) == 1  # created, but the answer never came
    sent = destination.send(lead, Route())
    record = only_record(fake_salesforce)
    assert sent.external_id == record["Id"]
    assert sent.detail["action"] == ("updated" if external_id_field else "found")


def test_the_lookup_finds_only_the_same_lead(fake_salesforce):
    destination = rest(fake_salesforce, None)
    first = destination.send(make_lead(OfferTitle="One"), Route())
    second = destination.send(make_lead(OfferTitle="Two"), Route())  # same customer, another offer
    assert first.external_id != second.external_id and len(fake_salesforce.records) == 2
    assert destination.send(make_lead(OfferTitle="One"), Route()).external_id == first.external_id


def test_a_converted_lead_counts_as_delivered(fake_salesforce):
    destination = rest(fake_salesforce)
    lead = make_lead()
    first = destination.send(lead, Route())
    fake_salesforce.records[first.external_id]["IsConverted"] = True
    again = destination.send(lead, Route())
    assert again.external_id == first.external_id and again.detail == {"action": "found"}


def test_an_expired_token_is_acquired_again_once(fake_salesforce):
    destination = rest(fake_salesforce)
    destination.send(make_lead(OfferTitle="One"), Route())
    fake_salesforce.expire_tokens()
    destination.send(make_lead(OfferTitle="Two"), Route())
    fake_salesforce.faults = ["expire"]
    destination.send(make_lead(OfferTitle="Three"), Route())
    assert fake_salesforce.token_requests == 3 and len(fake_salesforce.records) == 3


def test_one_token_for_200_leads(fake_salesforce):
    destination = rest(fake_salesforce)
    for number in range(200):
        destination.send(make_lead(user={"Email": f"buyer{number}@contoso.com"}), Route())
    assert fake_salesforce.token_requests == 1 and destination.token_requests == 1
    assert len(fake_salesforce.records) == 200
    assert fake_salesforce.api_calls == 201  # one describe, then one upsert per lead


def test_the_api_limit_is_transient_with_a_retry_after(fake_salesforce):
    destination = rest(fake_salesforce)
    destination.send(make_lead(OfferTitle="One"), Route())
    fake_salesforce.daily_limit = fake_salesforce.api_calls
    with pytest.raises(TransientError) as daily:
        destination.send(make_lead(OfferTitle="Two"), Route())
    assert "REQUEST_LIMIT_EXCEEDED" in str(daily.value) and daily.value.retry_after == 3600
    fake_salesforce.daily_limit = 15000
    fake_salesforce.faults = ["concurrent"]
    with pytest.raises(TransientError) as concurrent:
        destination.send(make_lead(OfferTitle="Two"), Route())
    assert concurrent.value.retry_after == 30
    destination.send(make_lead(OfferTitle="Two"), Route())
    assert len(fake_salesforce.records) == 2


@pytest.mark.parametrize("fault", ["500", "503", "lock", "drop"])
def test_server_trouble_is_transient(fake_salesforce, fault):
    destination = rest(fake_salesforce)
    destination.lead_fields()
    fake_salesforce.faults = [fault]
    with pytest.raises(Exception) as raised:
        destination.send(make_lead(), Route())
    assert destination.classify(raised.value).transient
    destination.send(make_lead(), Route())
    assert len(fake_salesforce.records) == 1


# --- what Salesforce refuses -----------------------------------------------------------------------


def refused(fake: FakeSalesforce, lead=None, **kwargs) -> PermanentError:
    with pytest.raises(PermanentError) as raised:
        rest(fake, **kwargs).send(lead or make_lead(), Route())
    assert not fake.records
    return raised.value


def test_a_required_field_is_named(fake_salesforce):
    fake_salesforce.required = {"Industry__c"}
    error = refused(fake_salesforce)
    assert "REQUIRED_FIELD_MISSING on Industry__c" in str(error) and "Industry__c" in error.fix


def test_a_validation_rule_is_named(fake_salesforce):
    fake_salesforce.validation_rule = (lambda lead: not lead.get("Industry"), "Industry is required for new leads")
    error = refused(fake_salesforce)
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION: Industry is required for new leads" in str(error)
    assert "validation rule" in error.fix


def test_a_picklist_changed_since_described_is_named_and_described_again(fake_salesforce):
    fake_salesforce.lead_source_values.append("Azure Marketplace")
    fake_salesforce.lead_source_restricted = True
    destination = rest(fake_salesforce)
    destination.lead_fields()
    fake_salesforce.lead_source_values.remove("Azure Marketplace")
    with pytest.raises(PermanentError) as raised:
        destination.send(make_lead(), Route())
    assert "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST on LeadSource" in str(raised.value)
    assert "picklist" in raised.value.fix
    destination.send(make_lead(), Route())  # a replay reads the picklist again and leaves it empty
    assert "LeadSource" not in only_record(fake_salesforce)


def test_a_field_the_run_as_user_may_not_write_is_named(fake_salesforce):
    fake_salesforce.read_only = {"DoNotCall"}
    error = refused(fake_salesforce, make_lead(ActionCode="DNC"))
    assert "INVALID_FIELD_FOR_INSERT_UPDATE on DoNotCall" in str(error) and "Field-Level Security" in error.fix


def test_a_blocking_duplicate_rule_is_named(fake_salesforce):
    destination = rest(fake_salesforce)
    destination.send(make_lead(OfferTitle="One"), Route())
    fake_salesforce.block_duplicates = True
    with pytest.raises(PermanentError) as raised:
        destination.send(make_lead(OfferTitle="Two"), Route())
    assert "DUPLICATES_DETECTED" in str(raised.value) and "duplicate rule" in raised.value.fix


def test_an_external_id_field_that_is_not_one(fake_salesforce):
    error = refused(fake_salesforce, external_id_field="Website")
    assert "NOT_FOUND" in str(error) and "SALESFORCE_EXTERNAL_ID_FIELD=Website" in error.fix


def test_errors_never_carry_the_customers_data():
    from simple_salesforce.exceptions import SalesforceMalformedRequest

    lead = make_lead()
    exc = SalesforceMalformedRequest(
        "https://x/services/data/v59.0/query/?q=SELECT+Id+FROM+Lead+WHERE+Email='someone@contoso.com'",
        400,
        "query",
        [
            {
                "message": "Email: invalid email address: someone@contoso.com",
                "errorCode": "INVALID_EMAIL_ADDRESS",
                "fields": ["Email"],
            }
        ],
    )
    for error in (api_error(exc, lead), api_error(exc)):
        assert "someone@contoso.com" not in error.explain() and "INVALID_EMAIL_ADDRESS on Email" in str(error)
    assert (
        scrub("Company: data value too large: Contoso (max length=5)", lead)
        == "Company: data value too large: … (max length=5)"
    )


# --- check -----------------------------------------------------------------------------------------


def test_check_passes_and_says_what_it_found(fake_salesforce):
    result = rest(fake_salesforce).check()
    assert result.ok, result
    assert "upserts on Marketplace_Lead_Id__c" in result.message and "Lead Source left empty" in result.message
    assert not fake_salesforce.records
    lookup = rest(fake_salesforce, None).check()
    assert lookup.ok and "no SALESFORCE_EXTERNAL_ID_FIELD" in lookup.message


@pytest.mark.parametrize(
    "setup, says, fix",
    [
        (lambda f: {"client_id": "3MVG9wrong"}, "does not know SALESFORCE_CLIENT_ID", "Consumer Key"),
        (lambda f: {"client_secret": "wrong"}, "SALESFORCE_CLIENT_SECRET is not", "Consumer Secret"),
        (lambda f: setattr(f, "run_as", None), "no client credentials user enabled", "'Run As (Username)'"),
        (
            lambda f: setattr(f, "client_credentials", False),
            "no client credentials user enabled",
            "Flow Enablement: tick 'Enable Client Credentials Flow'",
        ),
        (lambda f: setattr(f, "ip_relaxed", False), "ip restricted", "IP Relaxation: 'Relax IP restrictions'"),
        (
            lambda f: setattr(f, "scopes", {"full", "refresh_token"}),
            "no valid scopes defined",
            "OAuth Scopes: add 'Manage user data via APIs (api)'",
        ),
        (lambda f: setattr(f, "my_domain", False), "not supported on this domain", "My Domain URL"),
        (
            lambda f: setattr(f, "scopes", {"chatter_api"}),
            "not valid for use with the REST API",
            "External Client App Manager → the app → Settings → OAuth Settings → OAuth Scopes",
        ),
        (lambda f: setattr(f, "token_faults", ["503"]), "503", None),
        (lambda f: setattr(f, "token_faults", ["rate"]), "rate_limit_exceeded", None),
        (lambda f: setattr(f, "lead_createable", False), "may not create Leads", "Create and Edit on Leads"),
        (lambda f: setattr(f, "lead_visible", False), "404 NOT_FOUND", "cannot see Leads"),
        (lambda f: setattr(f, "read_only", {"Phone", "DoNotCall"}), "may not write Phone, DoNotCall", "Field-Level"),
        (lambda f: setattr(f, "external_id_fields", {}), "no field Marketplace_Lead_Id__c", "External ID"),
        (
            lambda f: setattr(f, "external_id_fields", {EXT: {"externalId": False}}),
            "not marked External ID",
            "tick 'External ID'",
        ),
        (lambda f: setattr(f, "daily_limit", 0), "REQUEST_LIMIT_EXCEEDED", "daily API requests"),
        (lambda f: {"url": "https://contoso.lightning.force.com"}, "Lightning page", "contoso.my.salesforce.com"),
        (lambda f: {"url": "https://login.salesforce.com"}, "generic login host", "My Domain URL"),
        (lambda f: {"url": "http://contoso.my.salesforce.com"}, "not an https URL", "My Domain URL"),
        (lambda f: {"client_secret": ""}, "SALESFORCE_CLIENT_SECRET not set", "Consumer Key and Secret"),
        (lambda f: {"url": f"https://127.0.0.1:{free_port()}"}, "could not reach", "SALESFORCE_URL"),
    ],
    ids=[
        "client-id",
        "secret",
        "no-run-as",
        "flow-not-enabled",
        "ip-restricted",
        "no-valid-scope",
        "login-host",
        "no-api-scope",
        "token-503",
        "token-rate",
        "no-create",
        "no-lead-access",
        "fls",
        "no-ext-field",
        "ext-not-external",
        "api-limit",
        "lightning-url",
        "login-url",
        "http-url",
        "missing",
        "unreachable",
    ],
)
def test_check_diagnoses(fake_salesforce, setup, says, fix):
    changes = setup(fake_salesforce) or {}
    result = rest(fake_salesforce, **changes).check()
    assert not result.ok
    assert says in result.message, result
    if fix:
        assert fix in (result.fix or ""), result
    assert not fake_salesforce.records


def test_token_errors_fail_a_send_at_once(fake_salesforce):
    fake_salesforce.run_as = None
    error = refused(fake_salesforce)
    assert "no client credentials user enabled" in str(error) and "Run As" in error.fix


# --- Web-to-Lead -----------------------------------------------------------------------------------


def fixture_form() -> dict[str, str]:
    lines = (MARKETPLACE / "salesforce-web-to-lead-test-lead.txt").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_web_to_lead_posts_the_fields_the_marketplace_posts(fake_salesforce):
    lead = from_http_body(VALIDATION)
    sent = w2l(fake_salesforce).send(lead, Route(test=True))
    assert sent.external_id is None  # Web-to-Lead gives no record id
    (form,) = fake_salesforce.web_to_lead
    marketplace = fixture_form()
    assert set(form) == set(marketplace)
    for name in ("first_name", "last_name", "email", "company", "title"):
        assert form[name] == marketplace[name]
    assert form["encoding"] == "UTF-8" and form["oid"] == fake_salesforce.oid
    assert form["lead_source"] == "AzureMarketplace-INS|Contoso Test"  # Source-Action|Offer, as the marketplace
    assert form["country"] == "United States" and form["phone"] == "1234567890"
    assert form["description"].startswith("[TEST]")
    assert len(fake_salesforce.records) == 1


def test_web_to_lead_do_not_contact_and_placeholders(fake_salesforce):
    lead = make_lead(ActionCode="DNC", user={"LastName": "", "Company": ""})
    w2l(fake_salesforce).send(lead, Route())
    (form,) = fake_salesforce.web_to_lead
    assert form["emailOptOut"] == "1" and form["doNotCall"] == "1"
    assert form["last_name"] == PLACEHOLDER and form["company"] == PLACEHOLDER
    record = only_record(fake_salesforce)
    assert record["HasOptedOutOfEmail"] and record["DoNotCall"]


def test_web_to_lead_counts_200_as_delivered_even_when_salesforce_drops_the_lead(fake_salesforce):
    sent = w2l(fake_salesforce, oid="00D000000000000").send(make_lead(), Route())  # another org's id
    assert sent.external_id is None and "does not confirm" in sent.detail["note"]
    assert len(fake_salesforce.web_to_lead) == 1 and not fake_salesforce.records


def test_web_to_lead_failures(fake_salesforce):
    destination = w2l(fake_salesforce)
    fake_salesforce.faults = ["503"]
    with pytest.raises(TransientError):
        destination.send(make_lead(), Route())
    fake_salesforce.faults = ["drop"]
    with pytest.raises(requests.ConnectionError) as dropped:
        destination.send(make_lead(), Route())
    assert destination.classify(dropped.value).transient
    with pytest.raises(PermanentError, match="SALESFORCE_OID"):
        w2l(fake_salesforce, oid="my-org").send(make_lead(), Route())


def test_web_to_lead_check_warns_that_it_cannot_confirm(fake_salesforce):
    result = w2l(fake_salesforce).check()
    assert result.ok and "cannot confirm delivery" in result.message and "REST API" in result.fix
    assert not w2l(fake_salesforce, oid="123").check().ok
    unreachable = w2l(fake_salesforce, url=f"https://127.0.0.1:{free_port()}/servlet/servlet.WebToLead").check()
    assert not unreachable.ok and "could not reach" in unreachable.message
    assert not fake_salesforce.web_to_lead


def test_which_salesforce_destination_is_enabled():
    both = Settings(SALESFORCE_OID="00Do000000ZHogE", SALESFORCE_URL="https://contoso.my.salesforce.com")
    assert SalesforceDestination.is_enabled(both) and not SalesforceWebToLeadDestination.is_enabled(both)
    assert SalesforceDestination.from_settings(both).web_to_lead_also_set
    w2l_only = Settings(SALESFORCE_OID="00Do000000ZHogE")
    assert SalesforceWebToLeadDestination.is_enabled(w2l_only) and not SalesforceDestination.is_enabled(w2l_only)
    none = Settings()
    assert not SalesforceDestination.is_enabled(none) and not SalesforceWebToLeadDestination.is_enabled(none)


# --- end to end --------------------------------------------------------------------------------------


def test_a_lead_reaches_salesforce_through_the_worker(storage, env, monkeypatch):
    registry = leads.destinations.REGISTRY
    monkeypatch.setitem(registry, "salesforce", "leads.destinations.salesforce:SalesforceDestination")
    monkeypatch.setitem(registry, "salesforce-w2l", "leads.destinations.salesforce:SalesforceWebToLeadDestination")
    with FakeSalesforce() as fake:
        fake.faults = ["ok", "lost"]  # describe; the first upsert's answer is lost: the worker retries
        env(
            **fake.settings(),
            WEBHOOK_URL="",
            EMAIL_TO="",
            LEADS_RETRY_BASE_SECONDS="0.2",
            LEADS_HTTP_TIMEOUT_SECONDS="5",
        )
        answer = accept_http(json.dumps(EXAMPLE).encode())
        assert answer.status == 202, answer.body
        lead_id = answer.body["leadId"]
        drain(deadline=30)
        record = only_record(fake)
        assert record[EXT] == lead_id and record["Email"] == "someone@contoso.com"
        delivery = LeadStore.from_settings().deliveries.get(lead_id, "salesforce")
        assert (delivery.state, delivery.attempts, delivery.external_id) == ("delivered", 2, record["Id"])
        assert LeadStore.from_settings().deliveries.get(lead_id, "salesforce-w2l") is None
        assert fake.token_requests == 1


@pytest.mark.parametrize("mode", ["rest", "web-to-lead"])
def test_python_m_leads_check_passes_against_the_org(storage, env, capsys, fake_salesforce, mode):
    from leads.cli import main

    settings = fake_salesforce.settings()
    if mode == "web-to-lead":
        settings.update(
            SALESFORCE_URL="",
            SALESFORCE_CLIENT_ID="",
            SALESFORCE_CLIENT_SECRET="",
            SALESFORCE_OID=fake_salesforce.oid,
            SALESFORCE_WEB_TO_LEAD_URL=fake_salesforce.web_to_lead_url,
        )
    env(**settings, EMAIL_TO="", WEBHOOK_URL="", LEADS_ROUTING="")
    assert main(["check", "--json"]) == 0, capsys.readouterr().out
    report = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
    name = "salesforce" if mode == "rest" else "salesforce-w2l"
    assert report[name]["ok"] and not fake_salesforce.records and not fake_salesforce.web_to_lead


# --- the org's own fields (SALESFORCE_MAPPING) -----------------------------------------------------------

SF_MAPPING = {
    "fields": {
        "Marketplace_Offer__c": "Marketplace: {offer_title} ({action})",
        "Lead_Source_Detail__c": {"value": "Marketplace"},
        "Campaign_Code__c": "campaign.mktcmpid",
    },
    "mappings": {"partner": {"RecordTypeId": {"value": "Partner_Lead"}, "Lead_Source_Detail__c": {"value": "partner"}}},
}
PARTNER_RECORD_TYPE = "0125g000000PrtnAAC"


def org_with_its_own_fields(fake: FakeSalesforce) -> FakeSalesforce:
    """An org with a text field, a restricted picklist, a campaign field and a partner record type."""
    from .fake_salesforce import field, picklist

    fake.custom_fields += [
        field("Marketplace_Offer__c", length=60, label="Marketplace Offer"),
        field(
            "Lead_Source_Detail__c",
            "picklist",
            255,
            label="Lead Source Detail",
            restrictedPicklist=True,
            picklistValues=picklist(["Marketplace", "Partner", "Event"]),
        ),
        field("Campaign_Code__c", length=40, label="Campaign Code"),
    ]
    fake.record_type("Partner_Lead", PARTNER_RECORD_TYPE)
    return fake


def campaign_lead():
    return make_lead(OfferTitle="Contoso CRM", Description='{"mktcmpid": "winter-26", "utm_source": "newsletter"}')


def test_the_orgs_own_fields_and_a_campaign_value_land_on_the_lead(fake_salesforce):
    org_with_its_own_fields(fake_salesforce)
    destination = rest(fake_salesforce, mapping=json.dumps(SF_MAPPING))
    destination.send(campaign_lead(), Route())
    record = only_record(fake_salesforce)
    assert (record["Marketplace_Offer__c"], record["Lead_Source_Detail__c"], record["Campaign_Code__c"]) == (
        "Marketplace: Contoso CRM (INS)",
        "Marketplace",
        "winter-26",
    )
    assert "RecordTypeId" not in record and record["LastName"] == "One"  # the built-in fields stay


def test_a_routing_rule_picks_the_partner_mapping_and_its_record_type(fake_salesforce):
    org_with_its_own_fields(fake_salesforce)
    rest(fake_salesforce, mapping=json.dumps(SF_MAPPING)).send(campaign_lead(), Route(mapping="partner"))
    record = only_record(fake_salesforce)
    # The record type is named by its developer name and sent as its id; "partner" is matched to "Partner".
    assert (record["RecordTypeId"], record["Lead_Source_Detail__c"]) == (PARTNER_RECORD_TYPE, "Partner")
    assert record["Campaign_Code__c"] == "winter-26"  # the default mapping's fields hold under the named one


def test_a_value_the_picklist_lacks_fails_the_delivery_naming_the_field(fake_salesforce):
    org_with_its_own_fields(fake_salesforce)
    mapping = {"fields": {"Lead_Source_Detail__c": "campaign.utm_source"}}  # "newsletter" is no value of it
    with pytest.raises(PermanentError) as caught:
        rest(fake_salesforce, mapping=json.dumps(mapping)).send(campaign_lead(), Route())
    assert "Lead_Source_Detail__c cannot take the value of campaign.utm_source" in str(caught.value)
    assert "Marketplace, Partner, Event" in str(caught.value) and "newsletter" not in str(caught.value)
    assert not fake_salesforce.records


def test_salesforce_refuses_a_picklist_value_removed_after_describe_as_the_org_would(fake_salesforce):
    org_with_its_own_fields(fake_salesforce)
    destination = rest(fake_salesforce, mapping=json.dumps(SF_MAPPING))
    destination.send(campaign_lead(), Route())  # describe read and kept
    fake_salesforce.custom_fields[1]["picklistValues"] = picklist_without("Marketplace")
    with pytest.raises(PermanentError) as caught:
        destination.send(make_lead(user={"Email": "other@contoso.com"}), Route())
    assert "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST on Lead_Source_Detail__c" in str(caught.value)
    assert destination._fields is None  # describe is read again next time


def picklist_without(value: str):
    from .fake_salesforce import picklist

    return picklist([v for v in ("Marketplace", "Partner", "Event") if v != value])


def test_check_proves_the_mapping_against_describe(fake_salesforce):
    org_with_its_own_fields(fake_salesforce)
    result = rest(fake_salesforce, mapping=json.dumps(SF_MAPPING)).check()
    assert result.ok, result
    assert "SALESFORCE_MAPPING: 3 fields of its own, mappings partner proven against the CRM's schema" in result.message


@pytest.mark.parametrize(
    "fields, says",
    [
        (
            {"Marketplace_Ofer__c": "offer_title"},
            "SALESFORCE_MAPPING maps Marketplace_Ofer__c: Salesforce's Lead has no field Marketplace_Ofer__c "
            "(did you mean "
            "Marketplace_Offer__c?)",
        ),
        (
            {"Lead_Source_Detail__c": {"value": "Webinar"}},
            'Lead_Source_Detail__c cannot take the constant "Webinar": the value is not one of its picklist\'s values '
            "(Marketplace, Partner, Event)",
        ),
        ({"IsConverted": {"value": True}}, "IsConverted cannot be written: the Run As user may not create or edit it"),
    ],
    ids=["misspelt", "picklist-value", "read-only"],
)
def test_check_finds_what_the_org_would_refuse(fake_salesforce, fields, says):
    org_with_its_own_fields(fake_salesforce)
    result = rest(fake_salesforce, mapping=json.dumps({"fields": fields})).check()
    assert not result.ok and says in result.message, result
    assert "SALESFORCE_MAPPING" in result.fix and not fake_salesforce.records
