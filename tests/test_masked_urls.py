"""Every URL the CLI or an alert prints has its secret parts masked (leads.core.telemetry.mask_url):
a Teams workflow's ``sig=``, a Slack or Zapier hook's path, a user and password."""

from __future__ import annotations

from datetime import UTC, datetime

from leads.cli import main
from leads.delivery.alerts import alert_text
from leads.store.lead_store import LeadStore

from .fake_webhook import FakeWebhook

SLACK = "https://hooks.slack.com/services/T0001/B0001/AbCdEfGh1234567890aBcDeF"


def test_check_never_prints_a_url_secret(storage, env, capsys):
    """A Teams workflow's URL carries its signature, a Slack hook's path is its secret."""
    with FakeWebhook() as webhook:
        env(
            WEBHOOK_URL=f"{webhook.url}?api-version=2016-06-01&sig=s3cr3t-sig-value",
            WEBHOOK_SECRET=webhook.secret,
            EMAIL_TO="",
        )
        assert main(["--settings", "/nonexistent", "check"]) == 0
        printed = capsys.readouterr().out
        # The fake takes POSTs only, so check's HEAD gets 501: a warning, the URL still masked.
        assert "\nwarning  webhook " in printed and f"{webhook.url}?api-version=***&sig=***" in printed
        main(["--settings", "/nonexistent", "check", "--json"])
        printed += capsys.readouterr().out
    env(WEBHOOK_URL="https://hooks.slack.com/services/T0001/B0001/AbCdEfGh1234567890aBcDeF")
    main(["--settings", "/nonexistent", "check", "--json"])
    printed += capsys.readouterr().out
    assert "s3cr3t-sig-value" not in printed and "AbCdEfGh1234567890aBcDeF" not in printed
    assert "https://hooks.slack.com/services/***" in printed


def test_an_alert_never_quotes_a_url_secret():
    error, _, fix = f"{SLACK} answers 410 Gone — set WEBHOOK_URL to https://u:pw@example.com/h?code=k3y".partition(
        " — "
    )
    group = {
        "destination": "webhook",
        "start": datetime(2024, 5, 1, tzinfo=UTC).isoformat(),
        "count": 1,
        "leads": ["hc519cf8782dab51f24fabc10"],
        "errors": [{"error": error, "fix": fix, "count": 1}],
    }
    subject, text = alert_text(group)
    assert "AbCdEfGh1234567890aBcDeF" not in text and ":pw@" not in text and "k3y" not in text
    assert "https://hooks.slack.com/services/*** answers 410 Gone" in text


def test_show_never_prints_a_url_secret_of_a_delivery_error(storage, env, capsys):
    from leads.intake.ingest import accept_http

    from .conftest import FIXTURES

    env(WEBHOOK_URL="http://127.0.0.1:9/hook", EMAIL_TO="", LEADS_DELIVERY_QUEUE="masked-urls")
    lead_id = accept_http((FIXTURES / "marketplace" / "https-documented-example.json").read_bytes()).body["leadId"]
    deliveries = LeadStore.from_settings().deliveries
    deliveries.change(deliveries.get(lead_id, "webhook"), state="failed", last_error=f"{SLACK} cannot be reached")
    assert main(["--settings", "/nonexistent", "show", lead_id]) == 0
    printed = capsys.readouterr().out
    assert "https://hooks.slack.com/services/*** cannot be reached" in printed
    assert "AbCdEfGh1234567890aBcDeF" not in printed
