"""The Azure Monitor alerts and the workbook in infra/: one rule for each thing operators must hear
of even when the app is dead, all mailing the operators' action group; the workbook's queries in
workbook.json. tests/test_telemetry_export.py checks their names against what the app sends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .kql import names_in, queries

pycep = pytest.importorskip("pycep", reason="pycep-parser is in requirements-infra.txt")

INFRA = Path(__file__).resolve().parents[1] / "infra"


def parsed(relative: str) -> dict:
    return pycep.BicepParser().parse(file_path=INFRA / relative)


def test_every_subject_has_a_rule_mailing_the_operators():
    alerts = parsed("app/alerts.bicep")
    rules = {rule["name"]: rule for rule in alerts["variables"]["rules"]["value"]}
    assert set(rules) == {
        "no-poll-or-sweep",
        "failed-deliveries",
        "function-failures",
        "poison-messages",
        "leads-silent",
    }
    assert rules["no-poll-or-sweep"]["window"] == "PT10M"  # no successful poll or sweep for 10 minutes
    assert all("docs/operations.md#" in rule["description"] for rule in rules.values())
    query_rules = alerts["resources"]["queryRules"]
    assert (query_rules["type"], query_rules["api_version"]) == ("Microsoft.Insights/scheduledQueryRules", "2023-12-01")
    properties = query_rules["config"]["config"]["properties"]
    assert properties["scopes"] == ["workspaceId"]
    assert json.dumps(properties["actions"]).count("operators") == 1
    (criterion,) = properties["criteria"]["allOf"]
    assert (criterion["operator"], criterion["threshold"], criterion["timeAggregation"]) == ("GreaterThan", 0, "Count")
    refused = alerts["resources"]["refusedCalls"]["config"]["properties"]
    assert refused["scopes"] == ["functionAppId"] and refused["criteria"]["allOf"][0]["metricName"] == "Http401"
    receivers = alerts["resources"]["operators"]["config"]["properties"]["emailReceivers"]
    assert receivers["loop_type"]["detail"]["array_name"] == "addresses"  # one receiver per address given


def test_the_rules_are_deployed_when_someone_is_to_be_told_and_the_workbook_always():
    main = parsed("main.bicep")
    operands = main["variables"]["alertsEmail"]["value"]["operator"]["operands"]
    assert (operands["true_value"], operands["false_value"]) == ("leadsAlertTo", "operatorsEmail")
    condition = main["modules"]["alerts"]["config"]["condition"]
    assert condition["operator"]["operands"]["bool_value"]["function"]["parameters"]["item_to_test"] == "alertsEmail"
    assert "condition" not in main["modules"]["workbook"]["config"]
    workbook = parsed("app/workbook.bicep")["resources"]["workbook"]
    assert workbook["api_version"] == "2023-06-01" and workbook["config"]["kind"] == "shared"
    data = workbook["config"]["properties"]["serializedData"]["function"]["parameters"]["original_string"]
    assert data["function"]["parameters"]["file_path"] == "workbook.json"


def test_the_workbook_shows_what_operators_asked_for():
    items = {item["name"]: item for item in json.loads((INFRA / "app" / "workbook.json").read_text())["items"]}
    assert {"leads-per-day", "deliveries", "time-to-delivery", "failures", "silence"} <= set(items)
    assert "percentile(Seconds, 95)" in items["time-to-delivery"]["content"]["query"]
    assert {item["content"].get("resourceType") for item in items.values() if item["type"] == 3} == {
        "microsoft.operationalinsights/workspaces"
    }


@pytest.mark.parametrize(("where", "query"), queries(), ids=[where for where, _ in queries()])
def test_each_query_names_known_columns_only(where, query):
    assert names_in(query).unknown == set()


def test_the_name_check_catches_a_misspelt_column_and_reads_events_and_properties():
    names = names_in('AppEvents | where Nmae == "LeadReceived" | summarize n = count() by tostring(Properties.ofer)')
    assert names.unknown == {"Nmae"} and names.properties == {"ofer"}
    names = names_in('AppEvents | where Name in ("A", "B") | project Properties["count"]')
    assert names.events == {"A", "B"} and names.properties == {"count"} and names.unknown == set()
