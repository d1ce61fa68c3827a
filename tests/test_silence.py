"""The silence watch against Azurite: an offer whose leads stop coming is alarmed once (a mail,
status, check), one whose leads come weekly is not; the likely cause is named where the app can
see it; and the watch costs nothing per lead but the first of an offer's day."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from leads.core.normalise import from_http_body
from leads.intake.ingest import accept_http
from leads.intake.silence import arrived
from leads.ops.checks import run_checks
from leads.ops.operations import status as status_of
from leads.ops.operations import sweep
from leads.store.lead_store import LeadStore

from .storage_proxy import StorageProxy

NOW = datetime.now(UTC)


def body(offer: str, index: int = 0) -> dict:
    return {
        "UserDetails": {
            "FirstName": "Ann",
            "LastName": f"Lee{index}",
            "Email": f"ann{index}@fabrikam.com",
            "Company": "Fabrikam",
        },
        "LeadSource": f"AzureMarketplace-INS|contoso.{offer.lower()}",
        "OfferTitle": offer,
    }


def arrive(offer: str, days_ago: list[int], channel: str = "http") -> None:
    """Leads of ``offer`` received on those days (by the code's own clock: each lead's time)."""
    store = LeadStore.from_settings()
    store.ensure_tables()
    for n, ago in enumerate(days_ago):
        lead = from_http_body(body(offer, n), received_at=NOW - timedelta(days=ago))
        arrived(store, lead.model_copy(update={"channel": channel}))


@pytest.fixture
def watched(storage, env, fake_acs):
    env(
        **fake_acs.settings(),
        EMAIL_TO="",
        WEBHOOK_URL="",
        LEADS_ALERT_TO="ops@contoso.com",
        LEADS_SILENCE_DAYS="3",
    )
    return fake_acs


def silent_offers() -> dict[str | None, dict]:
    return {row["offer"]: row for row in status_of().to_dict()["arrivals"] if row["silent"]}


def test_a_daily_offer_gone_quiet_is_alarmed_once_and_a_weekly_one_is_not(watched):
    arrive("Daily", list(range(12, 4, -1)))  # every day until 5 days ago
    arrive("Weekly", [36, 29, 22, 15, 8])  # every 7 days, the last 8 days ago
    assert sweep(now=NOW) == 0
    subjects = sorted(mail["subject"] for mail in watched.mails)
    assert subjects == ["No leads from any offer for 5 days", "No leads from offer Daily for 5 days"]
    text = next(mail["text"] for mail in watched.mails if "Daily" in mail["subject"])
    assert "since" in text and "Partner Center" in text and "Offer setup > Customer leads" in text

    silent = silent_offers()
    assert set(silent) == {None, "Daily"}  # None: all leads
    assert silent["Daily"]["likelyCause"] == "no calls" and silent["Daily"]["thresholdDays"] == 3
    weekly = next(row for row in status_of().to_dict()["arrivals"] if row["offer"] == "Weekly")
    assert weekly["silentDays"] == 8 and weekly["thresholdDays"] == 14 and not weekly["silent"]
    check = dict(run_checks())["lead arrivals"]
    assert check.state == "warning" and "no lead from offer Daily for 5 days" in check.message

    sweep(now=NOW + timedelta(minutes=2))
    sweep(now=NOW + timedelta(hours=5))
    assert len(watched.mails) == 2  # once per silence

    assert accept_http(json.dumps(body("Daily", 99)).encode()).status == 202  # a lead ends it
    assert silent_offers() == {}
    assert dict(run_checks())["lead arrivals"].state == "ok"
    sweep(now=NOW + timedelta(hours=6))
    assert len(watched.mails) == 2


def test_the_weekly_offer_is_alarmed_when_it_misses_two_weeks(watched):
    arrive("Weekly", [50, 43, 36, 29, 22, 15])  # the last 15 days ago: past twice its 7
    sweep(now=NOW)
    assert [mail["subject"] for mail in watched.mails if "Weekly" in mail["subject"]] == [
        "No leads from offer Weekly for 15 days"
    ]


def test_a_failing_table_poll_is_named_as_the_cause_and_check_calls_it_a_problem(watched, env):
    from leads.intake.poll import poll_marketplace
    from leads.local.azurite import free_ports

    arrive("Tabled", list(range(12, 4, -1)), channel="table")
    (closed,) = free_ports(1)  # nothing listens there: the marketplace's account cannot be reached
    env(
        MARKETPLACE_TABLE_CONNECTION=f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        f"TableEndpoint=http://127.0.0.1:{closed}/devstoreaccount1;"
    )
    with pytest.raises(Exception):  # noqa: B017 - whichever the SDK raises: the poll failed
        poll_marketplace()
    report = status_of().to_dict()
    assert report["poll"]["failing"] and report["poll"]["lastError"].startswith("ServiceRequestError")
    assert silent_offers()["Tabled"]["likelyCause"] == "poll failing"
    check = dict(run_checks())["lead arrivals"]
    assert check.state == "problem" and "poll failing" in check.message and "MARKETPLACE_TABLE_CONNECTION" in check.fix
    sweep(now=NOW)
    mail = next(mail for mail in watched.mails if "Tabled" in mail["subject"])
    assert "the marketplace table poll has failed since" in mail["text"]


def test_the_watch_costs_the_first_lead_of_an_offer_a_day_two_requests_and_the_rest_none(storage, env):
    with StorageProxy(storage.table_port) as proxy:
        env(
            AzureWebJobsStorage=proxy.connection_string(storage),
            EMAIL_TO="",
            WEBHOOK_URL="",
        )
        LeadStore.from_settings().ensure_tables()

        def checkpoint_requests(offer: str, index: int) -> int:
            before = len(proxy.tables)
            assert accept_http(json.dumps(body(offer, index)).encode()).status == 202
            return sum(1 for table in proxy.tables[before:] if table.endswith("Checkpoints"))

        assert checkpoint_requests("Costly", 0) == 2  # its row and all's: one read, one transaction
        assert [checkpoint_requests("Costly", n) for n in (1, 2, 3)] == [0, 0, 0]
        assert checkpoint_requests("Other", 0) == 2  # its own row; all's was written today already
