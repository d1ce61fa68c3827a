"""The field mapping shared by the four CRMs (leads/destinations/mapping.py): its settings' format,
conversion to a field's type, the routing rule that picks a named mapping and the delivery row
that keeps it, ``check``'s line for such rules, ``python -m leads mapping``, and the campaign values
in every notice. Each CRM's own mapping, against its fake's schema, is tested in its test file."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from leads.cli import main
from leads.core.settings import Settings
from leads.destinations.base import Route
from leads.destinations.mapping import (
    FieldSpec,
    MappingError,
    Mappings,
    ValueRefused,
    apply,
    convert,
    encode,
    sample_lead,
)
from leads.destinations.routing import load_rules, route
from leads.store.deliveries import new_delivery_entity
from leads.store.rows import delivery_from_entity

PICKLIST = FieldSpec("Lead_Source_Detail__c", "picklist", 255, (("Marketplace", "Marketplace"), ("Partner", "Partner")))


def loaded(document: dict | str, setting: str = "SALESFORCE_MAPPING"):
    return Mappings(setting, document if isinstance(document, str) else json.dumps(document)).load()


def test_sources_are_lead_fields_campaign_values_constants_templates_or_left_out():
    mapping = loaded(
        {
            "fields": {
                "A": "offerTitle",
                "B": "campaign.utm_source",
                "C": {"value": 3},
                "D": None,
                "E": "Marketplace: {offer_title} ({action_words}) {{x}}",
            }
        }
    )["default"]
    lead = sample_lead()
    record = apply(mapping, lead, {"D": "built-in", "Z": "kept"}, None, "CRM", "SALESFORCE_MAPPING")
    assert record == {
        "Z": "kept",
        "A": "Contoso CRM",
        "B": "newsletter",
        "C": 3,
        "E": "Marketplace: Contoso CRM (Contact me) {x}",
    }


@pytest.mark.parametrize(
    "document, says",
    [
        ("{not json", "SALESFORCE_MAPPING is not valid JSON"),
        ({"Title": "title"}, 'must be {"fields"'),
        ({"fields": {"Title": "titel"}}, "titel is not a lead field (did you mean title?)"),
        ({"fields": {"Title": "{ofer_title} here"}}, "{ofer_title} is not a lead field (did you mean offer_title?)"),
        ({"fields": {"Title": {"value": [1]}}}, "a constant is text, a number or true/false"),
        ({"fields": {"My Field": "title"}}, "is not a field name"),
        ({"mappings": {"Partner!": {}}}, "the mapping name 'Partner!' must be lower-case"),
        ("missing-file.json", "names missing-file.json, which is not a file"),
    ],
    ids=["json", "no-fields", "field", "placeholder", "constant", "name", "mapping-name", "file"],
)
def test_an_unusable_setting_says_where_and_why(document, says):
    with pytest.raises(MappingError) as caught:
        loaded(document)
    assert says in str(caught.value)


def test_a_mapping_file_is_read_like_a_routing_file(tmp_path):
    path = tmp_path / "hubspot-mapping.json"
    path.write_text(json.dumps({"fields": {"lifecyclestage": {"value": "lead"}}}), encoding="utf-8")
    assert loaded(str(path), "HUBSPOT_MAPPING")["default"].mapped["lifecyclestage"].spec == "lead"


def test_a_named_mapping_adds_to_the_default_and_an_unknown_name_is_the_default():
    mappings = Mappings(
        "X",
        json.dumps(
            {"fields": {"A": "title", "B": "company"}, "mappings": {"partner": {"B": {"value": "P"}, "C": "phone"}}}
        ),
    )
    assert set(mappings.pick("partner").mapped) == {"A", "B", "C"} and mappings.pick("partner").mapped["B"].spec == "P"
    assert mappings.pick("emea") == mappings.pick("") and set(mappings.pick("").mapped) == {"A", "B"}


@pytest.mark.parametrize(
    "value, spec, converted",
    [
        ("partner", PICKLIST, "Partner"),
        ("  ", PICKLIST, None),
        ("a" * 300, FieldSpec("T", "text", 10), "a" * 9 + "…"),
        (
            "Web;partner",
            FieldSpec("M", "multipicklist", options=(("Web", "Web"), ("Partner", "Partner"))),
            "Web;Partner",
        ),
        ("Other value", FieldSpec("P", "picklist", options=(("A", "A"),), restricted=False), "Other value"),
        ("yes", FieldSpec("B", "boolean"), True),
        ("12", FieldSpec("N", "integer"), 12),
        ("12.5", FieldSpec("N", "number"), 12.5),
        ("2026-12-07", FieldSpec("D", "date"), date(2026, 12, 7)),
        ("2026-12-07T10:30:00Z", FieldSpec("D", "datetime"), datetime(2026, 12, 7, 10, 30, tzinfo=UTC)),
        (8, FieldSpec("C", "picklist", options=((8, "Web"),)), 8),
        ("web", FieldSpec("C", "picklist", options=((8, "Web"),)), 8),
    ],
)
def test_values_are_converted_to_the_fields_type(value, spec, converted):
    assert convert(value, spec) == converted


@pytest.mark.parametrize(
    "value, spec, says",
    [
        ("Webinar", PICKLIST, "not one of its picklist's values (Marketplace, Partner)"),
        ("maybe", FieldSpec("B", "boolean"), "true/false field"),
        ("twelve", FieldSpec("N", "number"), "not a number"),
        ("12.5", FieldSpec("N", "integer"), "whole-number field"),
        ("07/12/2026", FieldSpec("D", "date"), "not an ISO 8601 date"),
        ("x", FieldSpec("L", "unsupported", why="a lookup"), "a lookup"),
    ],
)
def test_a_value_the_type_refuses_says_why_without_the_value(value, spec, says):
    with pytest.raises(ValueRefused) as caught:
        convert(value, spec)
    assert says in str(caught.value) and value not in str(caught.value)


def test_values_are_encoded_as_json_and_as_text_for_hubspot():
    assert encode(date(2026, 12, 7)) == "2026-12-07" and encode(True) is True and encode(True, as_text=True) == "true"
    assert encode(datetime(2026, 12, 7, 10, 30, tzinfo=UTC)) == "2026-12-07T10:30:00Z" and encode(12, True) == "12"


def test_a_routing_rule_picks_the_mapping_for_the_crms_and_the_delivery_row_keeps_it():
    rules = load_rules(json.dumps({"rules": [{"offer": "contoso.*", "mapping": "partner"}]}))
    routes = route(sample_lead(), rules, ["email", "salesforce", "hubspot"], "sales@contoso.com")
    assert {name: r.mapping for name, r in routes.items()} == {
        "email": "",
        "salesforce": "partner",
        "hubspot": "partner",
    }
    entity = new_delivery_entity("lead-1", "salesforce", routes["salesforce"], datetime.now(UTC))
    assert entity["Mapping"] == "partner" and delivery_from_entity(entity).route.mapping == "partner"
    # A row an earlier version wrote has no Mapping: its delivery takes the default mapping.
    del entity["Mapping"]
    assert delivery_from_entity(entity).route.mapping == ""


def test_a_rule_naming_a_mapping_no_setting_defines_is_a_problem_in_check():
    from leads.ops.checks import routing_check

    base = {"HUBSPOT_TOKEN": "t", "HUBSPOT_MAPPING": json.dumps({"mappings": {"partner": {}}})}
    named = lambda name: json.dumps({"rules": [{"offer": "*", "mapping": name}]})  # noqa: E731
    assert routing_check(Settings(**base, LEADS_ROUTING=named("partner"))).ok
    result = routing_check(Settings(**base, LEADS_ROUTING=named("parnter")))
    assert not result.ok and "parnter" in result.message and "HUBSPOT_MAPPING" in result.fix


def test_the_mapping_command_shows_each_field_its_source_and_value(capsys, monkeypatch):
    monkeypatch.setenv(
        "SALESFORCE_MAPPING",
        json.dumps(
            {
                "fields": {"Campaign_Code__c": "campaign.mktcmpid", "Title": None},
                "mappings": {"partner": {"RecordTypeId": {"value": "Partner_Lead"}}},
            }
        ),
    )
    assert main(["--settings", "/nonexistent", "mapping", "salesforce", "--mapping", "partner", "--json"]) == 0
    rows = {row["field"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["Campaign_Code__c"] == {
        "field": "Campaign_Code__c",
        "from": "campaign.mktcmpid",
        "source": "setting",
        "value": "contoso-winter-26",
    }
    assert rows["RecordTypeId"]["value"] == "Partner_Lead" and rows["Title"]["value"] is None
    assert rows["LastName"] == {
        "field": "LastName",
        "from": "last_name, else '[not provided]' (required)",
        "source": "built-in",
        "value": "Lovelace",
    }
    assert main(["--settings", "/nonexistent", "mapping", "hubspot"]) == 0
    text = capsys.readouterr().out
    assert "hubspot: the built-in mapping (HUBSPOT_MAPPING is not set)" in text and "from the test and" in text
    assert main(["--settings", "/nonexistent", "mapping", "salesforce", "--mapping", "emea"]) == 1
    assert "SALESFORCE_MAPPING has no mapping 'emea'" in capsys.readouterr().err


def test_the_campaign_values_are_in_every_notice_and_digest():
    from leads.destinations.email import render_digest, render_lead
    from leads.destinations.slack import slack_message
    from leads.destinations.teams import adaptive_card

    lead, other = sample_lead(), sample_lead().model_copy(update={"lead_id": "other"})
    settings = Settings(EMAIL_PII="none")
    texts = {
        "mail": render_lead(lead, Route(recipients=("s@contoso.com",)), settings).text,
        "mail digest": render_digest([lead, other], Route(recipients=("s@contoso.com",)), settings).text,
        "teams": json.dumps(adaptive_card([lead], Route(), "none", "")),
        "teams digest": json.dumps(adaptive_card([lead, other], Route(), "none", "")),
        "slack": json.dumps(slack_message([lead], Route(), "none", "")),
        "slack digest": json.dumps(slack_message([lead, other], Route(), "none", "")),
    }
    missing = [
        name
        for name, text in texts.items()
        if not all(
            part in text.replace("\\", "")  # Teams' markdown escapes - and _
            for part in ("mktcmpid: contoso-winter-26", "utm_source: newsletter")
        )
    ]
    assert not missing, missing
