"""``python -m leads check`` as a whole: storage, routing, settings, and each destination."""

from __future__ import annotations

import json

from leads.cli import main
from leads.ops.checks import run_checks

from .fake_webhook import FakeWebhook


def by_name(results):
    return {name: check for name, check in results}


def test_everything_ok_with_a_webhook(storage, env):
    with FakeWebhook() as webhook:
        env(**webhook.settings(), EMAIL_TO="sales@contoso.com")
        results = by_name(run_checks())
        assert all(check.ok for check in results.values()), results
        assert set(results) >= {"storage", "routing", "settings", "email", "webhook"}
        assert webhook.requests == 0  # a HEAD, never a POST: nothing is created


def test_problems_come_with_their_fix(storage, env, capsys):
    env(
        LEADS_ROUTING='[{"destinations": ["hubspot"]}]',
        WEBHOOK_URL="http://127.0.0.1:9/hook",
        WEBHOOK_SECRET="@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/webhook-secret/)",
    )
    results = by_name(run_checks())
    assert not results["routing"].ok and "hubspot" in results["routing"].message
    assert not results["settings"].ok and "WEBHOOK_SECRET" in results["settings"].message
    assert not results["webhook"].ok and "cannot be reached" in results["webhook"].message
    assert main(["--settings", "/nonexistent", "check", "--json"]) == 1
    report = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
    assert report["webhook"]["fix"] and report["settings"]["fix"]


def test_storage_unreachable(env):
    env(
        AzureWebJobsStorage="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        LEADS_TABLE_PREFIX="Gone",
    )
    storage = by_name(run_checks())["storage"]
    # A local emulator that does not answer: the fix is to start it, not to look at Azure settings.
    assert not storage.ok and "connection refused" in storage.message and "make run" in storage.fix
    assert "AzureWebJobsStorage__accountName" not in storage.fix


def test_storage_not_configured_names_the_azure_settings(env, monkeypatch):
    monkeypatch.delenv("AzureWebJobsStorage__accountName", raising=False)
    env(AzureWebJobsStorage="", LEADS_TABLE_PREFIX="Gone")
    storage = by_name(run_checks())["storage"]
    assert not storage.ok and "AzureWebJobsStorage is not set" in storage.message
    assert "AzureWebJobsStorage__accountName" in storage.fix and "make run" not in storage.fix


def test_the_id_key_is_reported_missing_short_or_changed(storage, env):
    env(EMAIL_TO="sales@contoso.com")
    ok = by_name(run_checks())["id key"]
    assert ok.state == "ok" and "LEADS_ID_KEY is set" in ok.message
    env(LEADS_ID_KEY="")
    missing = by_name(run_checks())["id key"]
    assert missing.state == "warning" and "LEADS_ID_KEY is not set" in missing.message and "make run" in missing.fix
    env(LEADS_ID_KEY="short")
    assert "5 characters" in by_name(run_checks())["id key"].message
    env(LEADS_ID_KEY="another-key-than-the-store-first-ran-with-0123456789")  # a redeploy that made a new key
    changed = by_name(run_checks())["id key"]
    assert changed.state == "warning" and "not the key this store" in changed.message
    assert "Key Vault keeps every version" in changed.fix
