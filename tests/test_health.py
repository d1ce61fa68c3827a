"""``/api/health`` tells anyone only whether the app is up, cheaply; ``/api/status`` tells the
holder of the function key the rest. Through the real function app and the local host, whose
function-key check models Azure's."""

from __future__ import annotations

import json

import azure.functions as func
import pytest
import requests

import function_app
from leads.intake.ingest import accept_http
from leads.local.serve import LocalHost
from leads.ops import health as health_module
from leads.ops.health import HEALTH_CACHE_SECONDS, health

from .conftest import FIXTURES

UNREACHABLE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"
)
KEY = "local-test-key-0123456789"


@pytest.fixture(autouse=True)
def _fresh_probe(monkeypatch):
    monkeypatch.setattr(health_module, "_last_probe", health_module._Probe())


def call(function, url: str) -> tuple[int, dict]:
    response = function(func.HttpRequest("GET", url, body=b""))
    return response.status_code, json.loads(response.get_body())


def test_health_says_the_status_and_nothing_else(storage, env):
    env(WEBHOOK_URL="https://hooks.slack.com/services/T0/B0/AbCdEfGh1234567890aBcDeF", LEADS_ROUTING="/etc/rules.json")
    assert call(function_app.health, "http://localhost/api/health") == (200, {"status": "ok"})


def test_health_probes_storage_at_most_once_per_window(storage, env):
    assert health(now=1000.0).status == 200
    env(AzureWebJobsStorage=UNREACHABLE, LEADS_TABLE_PREFIX="Gone")  # storage goes away
    assert health(now=1000.0 + HEALTH_CACHE_SECONDS - 0.1).status == 200, "the probe's answer is kept"
    down = health(now=1000.0 + HEALTH_CACHE_SECONDS)
    assert (down.status, down.body) == (503, {"status": "unavailable"})


def test_status_tells_the_key_holder_readiness_destinations_and_deliveries(storage, env):
    env(
        WEBHOOK_URL="https://hooks.zapier.com/hooks/catch/123/abc/",
        EMAIL_TO="sales@contoso.com",
        LEADS_DELIVERY_QUEUE="health-status",
    )
    assert accept_http((FIXTURES / "marketplace" / "https-documented-example.json").read_bytes()).status == 202
    status, body = call(function_app.status, "http://localhost/api/status")
    assert status == 200 and body["status"] == "ok"
    assert {name: check["ok"] for name, check in body["readiness"].items()} == {
        "storage": True,
        "routing": True,
        "settings": True,
    }
    assert body["destinations"] == ["email", "webhook"] and body["marketplaceTable"].startswith("Marketplace")
    assert body["open"] == {"email": 1, "webhook": 1}  # as `status --json` says
    assert {"counts", "failed", "oldestPending", "recentFailures", "recentRejections"} <= set(body)


def test_status_names_what_is_down(env):
    env(AzureWebJobsStorage=UNREACHABLE, LEADS_TABLE_PREFIX="Gone")
    status, body = call(function_app.status, "http://localhost/api/status")
    assert status == 503 and body["status"] == "unavailable"
    # The storage is an emulator on this machine (a local run): the fix is to start it.
    assert not body["readiness"]["storage"]["ok"] and "make run" in body["readiness"]["storage"]["fix"]
    assert "AccountKey" not in json.dumps(body)


# --- auth levels, as the local host models them ------------------------------------------------


@pytest.fixture
def served(storage, env):
    env(LEADS_POLL_SCHEDULE="0 0 0 1 1 *", LEADS_SWEEP_SCHEDULE="0 0 0 1 1 *", LEADS_DELIVERY_QUEUE="health-auth")
    with LocalHost("function_app", port=0, settings_file=None, function_key=KEY) as host:
        yield f"{host.url}/api"


def test_with_a_function_key_function_routes_want_it_and_health_does_not(served):
    assert requests.get(f"{served}/health", timeout=10).status_code == 200
    refused = requests.get(f"{served}/status", timeout=10)
    assert refused.status_code == 401 and KEY not in refused.text
    assert requests.get(f"{served}/status?code=wrong", timeout=10).status_code == 401
    assert requests.get(f"{served}/status?code={KEY}", timeout=10).status_code == 200
    assert requests.get(f"{served}/status", headers={"x-functions-key": KEY}, timeout=10).status_code == 200
    body = (FIXTURES / "marketplace" / "https-documented-example.json").read_bytes()
    assert requests.post(f"{served}/leads", data=body, timeout=10).status_code == 401
    assert requests.post(f"{served}/leads?code={KEY}", data=body, timeout=10).status_code == 202


def test_without_a_key_only_loopback_is_served():
    with pytest.raises(ValueError, match="--function-key"):
        LocalHost("function_app", port=0, host="0.0.0.0", settings_file=None).start()
