"""``python -m leads status`` on a terminal: a compact table with a sparkline a destination, the
arrivals of each offer against its rhythm; ``--json`` keeps every field it had and adds the watch's."""

from __future__ import annotations

import json

from leads.cli import main
from leads.delivery.deliver import deliver
from leads.intake.ingest import accept_http
from leads.ops.dashboard import spark

from .fake_webhook import FakeWebhook

BEFORE = {
    "days",
    "counts",
    "open",
    "failed",
    "heldBack",
    "oldestPending",
    "recentFailures",
    "recentRejections",
    "indexBuilt",
}


def test_a_sparkline_scales_to_the_largest_day_and_shows_an_empty_day_as_a_dot():
    assert spark([0, 1, 2, 4, 8]) == "·▁▂▄█"
    assert spark([0, 0]) == "··" and spark([3]) == "█"


def test_status_prints_deliveries_per_day_and_the_arrivals(storage, env, capsys):
    with FakeWebhook() as webhook:
        env(
            **webhook.settings(),
            EMAIL_TO="",
        )
        body = {
            "UserDetails": {"FirstName": "Ann", "LastName": "Lee", "Email": "ann@fabrikam.com"},
            "LeadSource": "AzureMarketplace-INS|contoso.crm",
            "OfferTitle": "Contoso CRM",
        }
        first = accept_http(json.dumps(body).encode()).body["leadId"]
        second = accept_http(
            json.dumps({**body, "LeadSource": "AzureMarketplace-INS|contoso.erp", "OfferTitle": "Contoso ERP"}).encode()
        ).body["leadId"]
        assert deliver(first, "webhook").state == "delivered"
        webhook.faults = ["410"]
        assert deliver(second, "webhook").state == "failed"

        assert main(["--settings", "/nonexistent", "status"]) == 0
        text = capsys.readouterr().out
        header, row = (line for line in text.splitlines() if line.startswith(("DESTINATION", "webhook")))
        assert "DELIVERED 7d" in header and "FAILED 7d" in header
        assert row.split()[1:] == ["······█", "1", "······█", "1", "0", "1", "0"]
        arrivals = [line.split("  ")[0] for line in text.splitlines() if line.endswith("  ok")]
        assert arrivals == ["(all)", "Contoso CRM", "Contoso ERP"]

        assert main(["--settings", "/nonexistent", "status", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert BEFORE <= set(report) and {"arrivals", "poll", "poisonMessages"} <= set(report)
        assert {row["offer"] for row in report["arrivals"]} == {None, "Contoso CRM", "Contoso ERP"}
