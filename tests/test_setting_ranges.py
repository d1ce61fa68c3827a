"""Every numeric setting is finite and within its range, or the app refuses it where it starts,
naming it and its range (../shared/reproductions/08_*: ``inf`` was accepted, then every POST was
a 500 that kept nothing, and every marketplace row became a rejected record)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from leads.core.settings import SEND_DEADLINE_SECONDS, Settings, get_settings, range_text
from leads.ops.advice import setting_problems
from leads.ops.checks import run_checks, what_it_means

from .served import Served

REPO = Path(__file__).resolve().parents[1]
NUMERIC = {
    field.alias: (name, field)
    for name, field in Settings.model_fields.items()
    if isinstance(field.json_schema_extra, dict) and "range" in field.json_schema_extra
}


def test_every_numeric_setting_has_a_range():
    numeric = {
        field.alias
        for field in Settings.model_fields.values()
        if field.annotation in (int, float, int | None, float | None)
    }
    assert numeric == set(NUMERIC), "a numeric setting without a range: use settings.number(...)"


@pytest.mark.parametrize("alias", sorted(NUMERIC))
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e12", "-1"])
def test_a_value_out_of_range_is_refused_by_name_and_range(alias, value, env):
    name, field = NUMERIC[alias]
    env(**{alias: value})
    with pytest.raises(ValidationError) as refused:
        get_settings()
    text = " ".join(problem for _, problem in setting_problems(refused.value))  # what every command prints
    assert alias in text and range_text(field, field.annotation is int) in text


@pytest.mark.parametrize("alias", sorted(NUMERIC))
def test_both_ends_of_each_range_are_accepted(alias, env):
    name, field = NUMERIC[alias]
    bounds = field.json_schema_extra["range"]
    low = bounds["low"] + (1 if bounds["above"] else 0)
    for value in (low, bounds["high"]):
        env(**{alias: str(int(value) if field.annotation is int else value)})
        assert getattr(get_settings(), name) == value


def test_the_claim_outlasts_the_send_and_a_claim_that_does_not_is_refused_by_name_and_value(env):
    # The claim's range starts at the send deadline, so the order of the two is kept by the range.
    env(LEADS_CLAIM_MINUTES=f"{SEND_DEADLINE_SECONDS / 60:g}")  # as long as a send may take: not longer
    with pytest.raises(ValidationError) as refused:
        get_settings()
    ((setting, problem),) = setting_problems(refused.value)
    assert setting == "LEADS_CLAIM_MINUTES"
    assert problem.startswith("LEADS_CLAIM_MINUTES is 2: it must be a number above 2 and at most 60 (minutes)")
    env(LEADS_CLAIM_MINUTES="2.5")
    assert get_settings().claim.total_seconds() == 150


def test_a_call_that_may_outlast_its_send_is_refused_by_name_and_value(env, monkeypatch):
    # With the send deadline of the code, the call timeout's range (at most half of it) keeps every
    # value below it; the order is checked in one place all the same, and says what is wrong.
    monkeypatch.setattr("leads.core.settings.SEND_DEADLINE_SECONDS", 20.0)
    env(LEADS_HTTP_TIMEOUT_SECONDS="20")
    with pytest.raises(ValidationError) as refused:
        get_settings()
    ((setting, problem),) = setting_problems(refused.value)
    assert setting == "LEADS_HTTP_TIMEOUT_SECONDS"
    assert problem.startswith("LEADS_HTTP_TIMEOUT_SECONDS is 20, not shorter than a send's deadline (20 s)")
    env(LEADS_HTTP_TIMEOUT_SECONDS="19")
    assert get_settings().http_timeout_seconds == 19


def test_check_goes_on_with_the_default_claim_in_place_of_a_refused_one(storage, env):
    env(LEADS_CLAIM_MINUTES="1")
    checks = run_checks()
    (check,) = [check for name, check in checks if name == "setting value"]
    assert check.state == "problem" and check.message.startswith(
        "LEADS_CLAIM_MINUTES is 1: it must be a number above 2"
    )
    assert "storage" in dict(checks), "the other lines are checked with the claim at its default"


def test_check_names_the_refused_setting_its_range_and_what_it_does_to_a_lead(storage, env):
    env(LEADS_DEDUPE_WINDOW_HOURS="inf")
    (check,) = [check for name, check in run_checks() if name == "setting value"]
    assert check.state == "problem" and "LEADS_DEDUPE_WINDOW_HOURS is inf" in check.message
    assert "from 0 to 8,760 (hours)" in check.message and "every function fails" in what_it_means(
        "setting value", check
    )


def test_check_has_no_refused_value_when_each_is_in_range(storage):
    assert "setting value" not in dict(run_checks())


@pytest.mark.parametrize("setting", ["LEADS_DEDUPE_WINDOW_HOURS", "LEADS_BACKFILL_DAYS"])
def test_the_local_host_refuses_to_start_with_an_infinite_setting(storage, env, setting):
    """Before: the host served, and with LEADS_DEDUPE_WINDOW_HOURS=inf every POST answered 500."""
    env(**{setting: "inf"})
    code = "from leads.cli import main\nraise SystemExit(main(['--settings', '/nonexistent', 'serve', '--port', '0']))"
    with pytest.raises(RuntimeError) as exited:
        Served([sys.executable, "-c", code], cwd=REPO).stop()
    assert "the app exited (2) before it served" in str(exited.value)
    assert f"{setting} is inf" in str(exited.value) and "Traceback" not in str(exited.value)


def test_an_infinite_backfill_leaves_marketplace_rows_untouched_until_it_is_fixed(storage, env):
    """Before: every row failed in hold_backfill, was retried, then kept as a rejected record that
    stayed rejected after the fix. Now the poll refuses to run, and the fixed poll takes the row in."""
    from leads.core.storage import table_service
    from leads.intake.poll import _recently_stored, poll_marketplace
    from leads.store.lead_store import LeadStore

    table = table_service(storage.connection_string).get_table_client(get_settings().marketplace_table_name)
    table.create_table()
    person = json.dumps({"FirstName": "H", "LastName": "I", "Email": "h@i.com"})
    table.create_entity(
        {
            "PartitionKey": datetime.now(UTC).strftime("%Y-%m-%d"),
            "RowKey": "row-1",
            "LeadSource": "AzureMarketplace",
            "ActionCode": "INS",
            "OfferDisplayName": "CRM",
            "CustomerInfo": person,
        }
    )
    _recently_stored.clear()
    env(LEADS_BACKFILL_DAYS="inf")
    for _ in range(4):
        with pytest.raises(ValidationError, match="LEADS_BACKFILL_DAYS is inf"):
            poll_marketplace()
    env(LEADS_BACKFILL_DAYS="7")
    assert poll_marketplace().stored == 1
    (item,) = LeadStore.from_settings().newest()
    assert not isinstance(item.record, dict) and item.record.first_name == "H"  # a lead, not a rejected record
