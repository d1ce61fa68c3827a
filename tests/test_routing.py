"""Routing rules: which destinations a lead goes to and who is emailed."""

from __future__ import annotations

import json

import pytest

from leads.core.normalise import from_http_body
from leads.destinations.routing import RoutingError, load_rules, route, split_addresses

ENABLED = ("email", "webhook", "dynamics")


def lead(**fields):
    body = {
        "UserDetails": {"Email": "ann@contoso.com", "Company": fields.pop("company", "Contoso")},
        "LeadSource": fields.pop("source", "SPZA-PLT|contoso.crm"),
        "OfferTitle": fields.pop("title", "Contoso CRM"),
    }
    body.update(fields)
    return from_http_body(body)


RULES = json.dumps(
    {
        "rules": [
            {
                "name": "crm trials",
                "offer": "contoso.crm*",
                "action": ["PLT"],
                "email": "crm@contoso.com; lead@contoso.com",
                "destinations": ["email", "dynamics"],
            },
            {"offer": "*Analytics*", "source": "AzurePortal", "email": "analytics@contoso.com"},
            {"test": True, "destinations": ["webhook"]},
        ]
    }
)


def test_first_matching_rule_decides():
    routes = route(lead(), load_rules(RULES), ENABLED, "sales@contoso.com")
    assert set(routes) == {"email", "dynamics"}
    assert routes["email"].recipients == ("crm@contoso.com", "lead@contoso.com")
    assert routes["dynamics"].recipients == ()


def test_offer_title_wildcards_and_source():
    portal = lead(source="AzurePortal-Create|contoso.analytics", title="Contoso Analytics Suite")
    routes = route(portal, load_rules(RULES), ENABLED, "sales@contoso.com")
    assert set(routes) == set(ENABLED)  # no destinations named: every enabled one
    assert routes["email"].recipients == ("analytics@contoso.com",)


def test_no_match_goes_everywhere_enabled_with_email_to():
    other = lead(source="AzureMarketplace-INS|fabrikam.tool", title="Tool")
    routes = route(other, load_rules(RULES), ("email", "webhook"), "a@contoso.com;b@contoso.com")
    assert set(routes) == {"email", "webhook"}
    assert routes["email"].recipients == ("a@contoso.com", "b@contoso.com")


def test_no_routing_set():
    assert route(lead(), load_rules(""), ("webhook",), "") == {
        "webhook": route(lead(), (), ("webhook",), "")["webhook"]
    }


def test_a_rule_naming_a_disabled_destination_skips_it():
    rules = load_rules('[{"destinations": ["hubspot", "webhook"]}]')
    assert set(route(lead(), rules, ("email", "webhook"), "")) == {"webhook"}


@pytest.mark.parametrize("mode, expected", [("notify", {"email"}), ("deliver", set(ENABLED)), ("drop", set())])
def test_test_leads_follow_their_mode(mode, expected):
    test_lead = lead(company="MSFT_TEST_1234", source="AzureMarketplace-INS|x.y", title="Other")
    routes = route(test_lead, (), ENABLED, "sales@contoso.com", test_leads=mode)
    assert set(routes) == expected
    assert all(r.test for r in routes.values())


def test_notify_mode_emails_a_test_lead_even_when_its_rule_names_no_email():
    test_lead = lead(company="MSFT_TEST_1234", source="AzureMarketplace-INS|x.y", title="Other")
    assert set(route(test_lead, load_rules(RULES), ENABLED, "s@contoso.com")) == {"email"}


def test_dnc_leads_still_reach_crms():
    dnc = lead(source="SPZA-DNC|contoso.crm")
    assert dnc.do_not_contact
    assert "dynamics" in route(dnc, (), ENABLED, "s@contoso.com")


def test_addresses_split_as_partner_center_writes_them():
    assert split_addresses(" a@x.com; b@y.com;;a@x.com, c@z.com ") == ("a@x.com", "b@y.com", "c@z.com")


def test_routing_from_a_file(tmp_path):
    path = tmp_path / "routing.json"
    path.write_text(RULES)
    assert [rule.name for rule in load_rules(str(path))] == ["crm trials", "rule 2", "rule 3"]


@pytest.mark.parametrize(
    "setting, message",
    [
        ("{not json", "not valid JSON"),
        ('{"rules": {}}', "must be a list of rules"),
        ('[{"offr": "x"}]', "rule 1 has unknown keys ['offr']"),
        ('[{"test": "yes"}]', "rule 1: test must be true or false"),
        ('[{"destinations": "email"}]', "rule 1: destinations must be a list"),
        ("/no/such/routing.json", "not a file"),
    ],
)
def test_bad_routing_names_the_problem(setting, message):
    with pytest.raises(RoutingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_rules(setting)


def test_a_relative_routing_path_is_read_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "routing.json").write_text(RULES)
    monkeypatch.chdir(tmp_path / "app")
    load_rules.cache_clear()
    assert len(load_rules("routing.json")) == 3
    monkeypatch.chdir(tmp_path)
    load_rules.cache_clear()
    with pytest.raises(RoutingError, match=f"looked for {tmp_path / 'routing.json'}$"):
        load_rules("routing.json")
    load_rules.cache_clear()
