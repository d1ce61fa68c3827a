"""Normalisation: every documented marketplace format, and anything else, in and out."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from leads.core.model import Lead
from leads.core.normalise import (
    LeadValidationError,
    from_http_body,
    from_table_entity,
    http_lead_id,
    normalise_country,
    normalise_email,
    normalise_phone,
    parse_description,
    parse_lead_source,
)

from .conftest import FIXTURES

MARKETPLACE = FIXTURES / "marketplace"


def fixture(name: str):
    return json.loads((MARKETPLACE / name).read_text())


def lead_sources():
    with open(MARKETPLACE / "lead-sources.tsv", newline="") as f:
        rows = [line for line in f if not line.startswith("#")]
    return list(csv.reader(rows, delimiter="\t"))


# --- documented formats ----------------------------------------------------------------------


def test_documented_https_example():
    lead = from_http_body(fixture("https-documented-example.json"))
    assert lead.to_dict() | {"leadId": None, "receivedAt": None} == {
        "leadId": None,
        "receivedAt": None,
        "channel": "http",
        "source": "AzureMarketplace",
        "action": "INS",
        "offerId": None,
        "offerTitle": "Test Microsoft",
        "firstName": "Some",
        "lastName": "One",
        "email": "someone@contoso.com",
        "emailValid": True,
        "phone": "+16175555555",
        "country": "US",
        "company": "Contoso",
        "title": "Esquire",
        "description": "Test run through Power Automate",
        "campaign": {},
        "isTest": False,
        "doNotContact": False,
        "piiWithheld": False,
        "raw": fixture("https-documented-example.json"),
    }


def test_validation_test_lead_over_https_is_a_test_lead():
    lead = from_http_body(fixture("https-validation-test-lead.json"))
    assert lead.is_test
    assert lead.email == "MSFT_TEST_636573304831318844@test.com" and lead.email_valid
    # 123-456-7890 is no real number: kept as received rather than made up.
    assert lead.phone == "1234567890"
    assert lead.country == "US"
    assert not lead.pii_withheld


def test_table_entity_reads_customer_info_from_its_json_string():
    entity = fixture("table-entity-test-lead.json")
    lead = from_table_entity(entity, "MarketplaceLeads")
    assert lead.channel == "table"
    assert lead.first_name == "MSFT_TEST_636737558587117715"
    assert lead.email == "MSFT_TEST_636737558587117715@test.com"
    assert lead.offer_title == "Contoso Test"
    assert (lead.source, lead.action) == ("AzureMarketplace", "INS")
    assert lead.is_test
    assert lead.raw == entity


def test_table_lead_id_comes_from_the_row_identity():
    entity = fixture("table-entity-test-lead.json")
    first = from_table_entity(entity, "MarketplaceLeads")
    changed = from_table_entity({**entity, "Description": "edited"}, "MarketplaceLeads")
    other_row = from_table_entity({**entity, "RowKey": "another"}, "MarketplaceLeads")
    assert first.lead_id == changed.lead_id != other_row.lead_id


@pytest.mark.parametrize("row", lead_sources(), ids=lambda row: row[0])
def test_lead_source_table(row):
    lead_source, action_code, source, action, offer = row
    body = {"UserDetails": {"Email": "a@contoso.com"}, "LeadSource": lead_source}
    if action_code:
        body["ActionCode"] = action_code
    lead = from_http_body(body)
    assert (lead.source, lead.action, lead.offer_id) == (source, action, offer or None)


def test_salesforce_validation_lead_source_folds_test_markers():
    source, action, offer = parse_lead_source("MSFT_TEST_636573304831318844-MSFT_TEST_636573304831318844|<Offer Name>")
    assert (source, action, offer) == ("MSFT_TEST_636573304831318844", "MSFT_TEST_636573304831318844", "<Offer Name>")


def test_unknown_codes_pass_through():
    assert parse_lead_source("NewPlace-NEWCODE|pub.offer") == ("NewPlace", "NEWCODE", "pub.offer")
    lead = from_http_body({"LeadSource": "SomethingNew", "ActionCode": "Upgrade", "UserDetails": {"Email": "a@b.co"}})
    assert (lead.source, lead.action) == ("SomethingNew", "Upgrade")


def test_action_code_beside_a_folded_source_wins_and_codes_are_canonical():
    assert parse_lead_source("spza-plt|p.o") == ("AppSource", "PLT", "p.o")
    lead = from_http_body({"LeadSource": "SPZA-PLT|p.o", "ActionCode": "dnc"})
    assert lead.action == "DNC" and lead.do_not_contact


# --- keys and text -----------------------------------------------------------------------------


def test_keys_match_case_insensitively():
    camel = from_http_body(
        {
            "userDetails": {"firstName": "Ann", "email": "ann@contoso.com"},
            "leadSource": "AzurePortal",
            "actionCode": "Create",
            "offerTitle": "X",
        }
    )
    pascal = from_http_body(
        {
            "UserDetails": {"FirstName": "Ann", "Email": "ann@contoso.com"},
            "LeadSource": "AzurePortal",
            "ActionCode": "Create",
            "OfferTitle": "X",
        }
    )
    assert camel.first_name == pascal.first_name == "Ann"
    assert camel.lead_id == pascal.lead_id


def test_text_is_trimmed_and_whitespace_collapsed():
    lead = from_http_body(
        {
            "UserDetails": {"FirstName": "  Mary \t Ann ", "Company": "Contoso\n  Ltd"},
            "Description": "  Please   call\r\n\r\n\r\n me  ",
        }
    )
    assert lead.first_name == "Mary Ann"
    assert lead.company == "Contoso Ltd"
    assert lead.description == "Please call\n\nme"


def test_numbers_are_read_as_text():
    lead = from_http_body({"UserDetails": {"Phone": 16175555555, "Country": "USA"}, "LeadSource": "AzureMarketplace"})
    assert lead.phone == "+16175555555"


# --- fields ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("US", "US"),
        ("USA", "US"),
        ("United States", "US"),
        ("united states", "US"),
        ("DEU", "DE"),
        ("Germany", "DE"),
        ("gb", "GB"),
        ("UK", "GB"),
        ("Atlantis", "Atlantis"),
        (None, None),
    ],
)
def test_country(value, expected):
    assert normalise_country(value) == expected


@pytest.mark.parametrize(
    "value, country, expected",
    [
        ("16175555555", "US", "+16175555555"),
        ("(617) 555-5555", "US", "+16175555555"),
        ("+44 20 7946 0958", None, "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("4930901820", "FR", "+4930901820"),  # a country code already in the digits
        ("1234567890", "US", "1234567890"),  # not a real number: kept as received
        ("call me", "US", "call me"),
    ],
)
def test_phone(value, country, expected):
    assert normalise_phone(value, country) == expected


def test_email_domain_lower_cased_and_invalid_kept_and_marked():
    assert normalise_email("Some.One@Contoso.COM") == ("Some.One@contoso.com", True)
    assert normalise_email("not an email") == ("not an email", False)
    assert normalise_email("x@localhost") == ("x@localhost", False)
    lead = from_http_body({"UserDetails": {"Email": "bad@@example"}, "LeadSource": "AzureMarketplace"})
    assert lead.email == "bad@@example" and lead.email_valid is False


@settings(max_examples=300)
@given(
    st.one_of(
        st.emails(), st.text(max_size=40), st.from_regex(r"[a-zA-Z0-9._%+-]{1,20}@[a-zA-Z0-9.-]{1,20}", fullmatch=True)
    )
)
def test_email_fast_path_agrees_with_email_validator(value):
    try:
        expected = (validate_email(value, check_deliverability=False).normalized, True)
    except EmailNotValidError:
        expected = (value, False)
    assert normalise_email(value) == (expected if value else (None, None))


@pytest.mark.parametrize(
    "text, description, campaign",
    [
        ('{"mktcmpid":"spring","partnerid":"123"}', None, {"mktcmpid": "spring", "partnerid": "123"}),
        ("Campaigns: alpha, beta", None, {"campaigns": ["alpha", "beta"]}),
        ("Campaigns: ", None, {}),
        ("Please call me on Monday", "Please call me on Monday", {}),
        ("{not json", "{not json", {}),
        ("[1, 2]", "[1, 2]", {}),
    ],
)
def test_description_and_campaign(text, description, campaign):
    assert parse_description(text) == (description, campaign)


def test_pii_withheld_lead_is_still_a_lead():
    lead = from_http_body(
        {
            "UserDetails": {
                "FirstName": "",
                "LastName": "",
                "Email": "",
                "Phone": "",
                "Country": "",
                "Company": "",
                "Title": "",
            },
            "LeadSource": "SPZA-INS|contoso.edu-offer",
            "OfferTitle": "Edu",
        }
    )
    assert lead.pii_withheld and lead.offer_id == "contoso.edu-offer"


def test_test_marker_anywhere_makes_a_test_lead():
    lead = from_http_body({"UserDetails": {"Company": "msft_test_1"}, "LeadSource": "AzureMarketplace"})
    assert lead.is_test
    assert not from_http_body({"UserDetails": {"Company": "Contoso"}, "LeadSource": "AzureMarketplace"}).is_test


# --- ids ---------------------------------------------------------------------------------------


def test_http_lead_id_is_content_not_arrival_time():
    body = fixture("https-documented-example.json")
    early = from_http_body(body, received_at=datetime(2026, 1, 1, tzinfo=UTC))
    late = from_http_body(body, received_at=datetime(2026, 1, 2, tzinfo=UTC))
    cleaned_same = from_http_body({**body, "OfferTitle": "  Test   Microsoft "})
    assert early.lead_id == late.lead_id == cleaned_same.lead_id == http_lead_id(early)
    assert http_lead_id(early, 1) != early.lead_id
    assert from_http_body({**body, "ActionCode": "PLT"}).lead_id != early.lead_id


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        ([], "must be a JSON object, got a list"),
        ("lead", "must be a JSON object, got a string"),
        ({}, "holds no customer or lead data"),
        ({"Description": "hello"}, "holds no customer or lead data"),
        ({"UserDetails": "Ann"}, "UserDetails must be an object, got a string"),
        ({"UserDetails": {"Email": {"a": 1}}}, "UserDetails.Email must be text, got an object"),
        ({"LeadSource": ["x"]}, "LeadSource must be text, got a list"),
    ],
)
def test_unusable_input_is_a_clear_validation_error(body, message):
    with pytest.raises(LeadValidationError, match=message):
        from_http_body(body)


def test_table_entity_with_broken_customer_info():
    entity = fixture("table-entity-test-lead.json")
    with pytest.raises(LeadValidationError, match="CustomerInfo is not valid JSON"):
        from_table_entity({**entity, "CustomerInfo": "{broken"}, "T")


@pytest.mark.parametrize(
    "extra, kept",
    [
        (b"\xff\x00\xfe", {"Extra": "/wD+", "Extra@odata.type": "Edm.Binary"}),  # binary that is not UTF-8
        (float("nan"), {"Extra": "NaN", "Extra@odata.type": "Edm.Double"}),
        (float("-inf"), {"Extra": "-Infinity", "Extra@odata.type": "Edm.Double"}),
        ("a\ud800b", {"Extra": "a\ufffdb"}),  # a lone surrogate
    ],
)
def test_an_odd_extra_property_keeps_the_lead_and_its_raw_record_can_be_written(extra, kept):
    entity = fixture("table-entity-test-lead.json")
    lead = from_table_entity({**entity, "Extra": extra}, "T")
    assert lead.email.endswith("@test.com")
    assert {key: lead.raw[key] for key in kept} == kept
    assert Lead.from_json(lead.to_json().encode().decode()) == lead  # UTF-8 JSON, read back the same


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("Description", "a\ud800b", "Description holds text that is not valid Unicode"),
        ("LeadSource", float("nan"), "LeadSource holds a number JSON cannot carry"),
        ("CustomerInfo", '{"FirstName": "Ann\\ud800"}', "CustomerInfo holds text that is not valid Unicode"),
    ],
)
def test_a_lead_field_that_cannot_be_read_still_rejects_the_row(field, value, message):
    entity = fixture("table-entity-test-lead.json")
    with pytest.raises(LeadValidationError, match=message):
        from_table_entity({**entity, field: value}, "T")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)
lead_keys = st.sampled_from(
    [
        "UserDetails",
        "userDetails",
        "LeadSource",
        "ActionCode",
        "OfferTitle",
        "Description",
        "FirstName",
        "Email",
        "Phone",
        "Country",
        "Company",
    ]
)
lead_like = st.recursive(
    json_values,
    lambda children: st.dictionaries(lead_keys, children, max_size=8),
    max_leaves=30,
)


@settings(max_examples=500)
@given(st.one_of(json_values, lead_like))
def test_any_json_gives_a_lead_or_a_clean_validation_error(body):
    try:
        lead = from_http_body(body)
    except LeadValidationError as exc:
        assert str(exc)
        return
    assert isinstance(lead, Lead)
    assert Lead.from_json(lead.to_json()) == lead  # its JSON form reads back as the same lead
