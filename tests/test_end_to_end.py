"""The whole app as a user runs it: ``python -m leads serve`` as a process, real POSTs, the
marketplace table, the delivery queue, a webhook receiver and the email outbox, and the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
import requests

from leads.core.storage import table_service

from .conftest import EXAMPLE, FIXTURES
from .fake_webhook import FakeWebhook
from .served import Served

REPO = Path(__file__).resolve().parent.parent
ENTITY = json.loads((FIXTURES / "marketplace" / "table-entity-test-lead.json").read_text())


def wait_for(condition, timeout: float = 30.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("the condition did not hold in time")


@pytest.fixture(scope="module")
def app(azurite, tmp_path_factory):
    """The app served by ``python -m leads serve`` on a port it chose, with its own tables and queue."""
    outbox = tmp_path_factory.mktemp("outbox")
    with FakeWebhook() as webhook:
        suffix = uuid.uuid4().hex[:8]
        env = {
            **os.environ,
            "AzureWebJobsStorage": azurite.connection_string,
            "LEADS_TABLE_PREFIX": f"E2e{suffix}",
            "MARKETPLACE_TABLE_NAME": f"Market{suffix}",
            "LEADS_DELIVERY_QUEUE": f"e2e-{suffix}",
            "LEADS_POLL_SCHEDULE": "*/1 * * * * *",
            "WEBHOOK_URL": webhook.url,
            "WEBHOOK_SECRET": webhook.secret,
            "EMAIL_TO": "sales@contoso.com",
            "EMAIL_OUTBOX_DIR": str(outbox),
            "LEADS_TEST_LEADS": "deliver",
        }
        served = Served(
            [sys.executable, "-m", "leads", "--settings", "/nonexistent", "serve", "--port", "0"], cwd=REPO, env=env
        )
        try:
            wait_for(lambda: _healthy(served.url), timeout=60)
            yield {"base": served.url, "env": env, "webhook": webhook, "outbox": outbox, "azurite": azurite}
        finally:
            served.stop(20)


def _healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/api/health", timeout=10).status_code == 200
    except (requests.ConnectionError, requests.Timeout):  # a first health check on a loaded machine can take seconds
        return False


def cli(app, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "leads", "--settings", "/nonexistent", *args],
        cwd=REPO,
        env=app["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_posted_lead_is_stored_emailed_and_forwarded(app):
    session = requests.Session()
    response = session.post(f"{app['base']}/api/leads?code=local", json=EXAMPLE, timeout=10)
    assert response.status_code == 202
    lead_id = response.json()["leadId"]
    again = session.post(f"{app['base']}/api/leads", data=json.dumps(EXAMPLE), timeout=10)
    assert (again.status_code, again.json()) == (200, {"leadId": lead_id, "duplicate": True})

    wait_for(lambda: lead_id in app["webhook"].leads)
    mail_file = wait_for(lambda: next(iter(app["outbox"].glob(f"*{lead_id}*.eml")), None))
    mail = BytesParser(policy=policy.default).parse(mail_file.open("rb"))
    assert mail["To"] == "sales@contoso.com" and "Contoso" in mail["Subject"]

    shown = cli(app, "show", lead_id, "--json")
    assert shown.returncode == 0, shown.stderr
    lead = json.loads(shown.stdout)
    assert lead["email"] == "someone@contoso.com" and lead["phone"] == "+16175555555"

    def delivered():
        states = {
            d["destination"]: d["state"] for d in json.loads(cli(app, "show", lead_id, "--json").stdout)["deliveries"]
        }
        return states if set(states.values()) == {"delivered"} else None

    assert wait_for(delivered) == {"email": "delivered", "webhook": "delivered"}


@pytest.mark.parametrize(
    "body, status, error",
    [
        (b"not json", 400, "not valid JSON"),
        (b"[1, 2, 3]", 400, "must be a JSON object"),
        (b"{}", 400, "no customer or lead data"),
        (json.dumps({**EXAMPLE, "Description": "x" * (1024 * 1024)}).encode(), 413, "64 KiB"),
    ],
)
def test_bad_bodies_get_a_clear_4xx(app, body, status, error):
    response = requests.post(
        f"{app['base']}/api/leads", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == status
    assert error in response.json()["error"]


def test_a_row_in_the_marketplace_table_is_taken_in_by_the_timer(app):
    env = app["env"]
    table = table_service(env["AzureWebJobsStorage"]).get_table_client(env["MARKETPLACE_TABLE_NAME"])
    table.create_table()
    table.create_entity({**ENTITY, "RowKey": "e2e-row"})
    listed = wait_for(
        lambda: [lead for lead in json.loads(cli(app, "list", "--json").stdout) if lead.get("channel") == "table"]
    )
    assert listed[0]["isTest"] and listed[0]["offerTitle"] == "Contoso Test"
    wait_for(lambda: listed[0]["leadId"] in app["webhook"].leads)


def test_test_lead_reports_each_destination(app):
    result = cli(app, "test-lead", "--via", "http", "--url", f"{app['base']}/api/leads", "--timeout", "60", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["stored"]
    assert {d["destination"]: d["state"] for d in report["deliveries"]} == {
        "email": "delivered",
        "webhook": "delivered",
    }


def test_status_and_check(app):
    status = cli(app, "status", "--json")
    assert status.returncode == 0
    counts = json.loads(status.stdout)["counts"]
    assert counts["webhook"].get("delivered", 0) >= 1
    check = cli(app, "check")
    assert check.returncode == 0, check.stdout
    # The fake webhook answers check's HEAD with 501 and mails go to the outbox: both get through.
    assert re.search(r"^warning\s+webhook\s.*501", check.stdout, re.MULTILINE), check.stdout
    assert re.search(r"^warning\s+email\s.*\.eml", check.stdout, re.MULTILINE), check.stdout


def test_test_lead_via_the_table_says_what_it_waits_for(app):
    result = cli(app, "test-lead", "--via", "table", "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    progress = result.stderr.splitlines()
    assert progress[0].startswith("Wrote a test row into the marketplace table; waiting for the app's table poll")
    assert "LEADS_POLL_SCHEDULE '*/1 * * * * *': next poll at" in progress[0]
    assert any(line.startswith("Stored as t") for line in progress)
    assert any(line.startswith("  webhook delivered after") for line in progress), progress
    assert result.stdout.startswith("Test lead t")
