"""What ``python -m leads`` answers a newcomer, each through the real CLI in a process of its own
(issue 24): a cursor that pastes into a shell, a reader that goes away, a retrying delivery that
replay names, a setting it cannot read, and check lines that fit where the app runs and agree with
status."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from leads.intake.ingest import accept_http
from leads.store.lead_store import LeadStore

from .conftest import EXAMPLE

REPO = Path(__file__).resolve().parent.parent


def leads(*args: str, **popen) -> subprocess.CompletedProcess:
    """``python -m leads --settings none ARGS``, in this test's environment (its storage)."""
    return subprocess.run(
        [sys.executable, "-m", "leads", "--settings", "none", *args],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=90,
        **popen,
    )


def stored(description: str) -> str:
    return accept_http(json.dumps({**EXAMPLE, "Description": description}).encode()).body["leadId"]


def test_the_next_page_command_pastes_into_a_shell_and_prints_the_next_page(storage):
    ids = [stored(f"lead {number}") for number in range(3)]  # newest last
    first = leads("list", "--limit", "1")
    assert first.returncode == 0, first.stderr
    command = re.search(r"^Next page: (.+)$", first.stdout, re.M).group(1)
    assert "|" not in command and "--settings none list --limit 1 --cursor" in command
    second = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=90)
    assert second.returncode == 0, second.stderr
    assert ids[1] in second.stdout and ids[2] not in second.stdout and ids[0] not in second.stdout
    third = subprocess.run(
        ["bash", "-c", re.search(r"^Next page: (.+)$", second.stdout, re.M).group(1)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert ids[0] in third.stdout and "Next page" not in third.stdout
    # A cursor of an earlier version, with "|" (quoted, as it had to be), is taken as before.
    old = command.rsplit(" ", 1)[1].replace(".", "|")
    again = leads("list", "--limit", "1", "--cursor", old)
    assert ids[1] in again.stdout and ids[2] not in again.stdout


def test_a_reader_that_goes_away_ends_the_command_quietly(storage):
    for number in range(3):
        stored(f"lead {number}")
    for command in (["list"], ["status"]):
        # As `... | head` does once it has read enough: the reading end closes before the output.
        process = subprocess.Popen(
            [sys.executable, "-m", "leads", "--settings", "none", *command],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        process.stdout.close()
        err = process.stderr.read()
        assert process.wait(90) == 1 and "BrokenPipeError" not in err and "Traceback" not in err, err


def test_replay_names_a_delivery_being_retried_and_its_next_attempt(storage, env):
    env(EMAIL_TO="", WEBHOOK_URL="http://127.0.0.1:9/hook")
    lead_id = stored("retrying")
    deliveries = LeadStore.from_settings().deliveries
    due = datetime.now(UTC) + timedelta(minutes=7)
    deliveries.change(
        deliveries.get(lead_id, "webhook"),
        state="retrying",
        attempts=3,
        next_attempt_at=due,
        last_error="could not reach 127.0.0.1:9: connection refused",
    )
    for args in (["replay"], ["replay", "--lead", lead_id], ["replay", "--destination", "webhook"]):
        told = leads(*args)
        assert told.returncode == 0, told.stderr
        assert "No failed deliveries to replay." in told.stdout
        retrying = f"still retrying: {lead_id} webhook    retrying  attempts 3, next attempt at {due:%H:%M:%S} UTC"
        assert retrying in told.stdout
        assert "connection refused" in told.stdout and "sent again at its next attempt" in told.stdout
    assert "still retrying" not in leads("replay", "--destination", "dynamics").stdout


def test_a_setting_it_cannot_read_is_named_never_a_traceback(storage, env):
    env(LEADS_RETRY_HOURS="abc", EMAIL_TO="sales@contoso.com")
    check = leads("check")
    assert check.returncode == 1 and "Traceback" not in check.stdout + check.stderr
    line = next(line for line in check.stdout.splitlines() if line.startswith("problem  setting value"))
    assert "LEADS_RETRY_HOURS is 'abc': Input should be a valid number" in line and "set in the environment" in line
    assert re.search(r"^ok\s+storage\s+reachable", check.stdout, re.M)  # the rest is checked all the same
    listed = leads("list")
    assert listed.returncode == 2 and "Traceback" not in listed.stderr
    assert listed.stderr.splitlines()[:2] == [
        "list: a setting's value cannot be used:",
        "  LEADS_RETRY_HOURS is 'abc': Input should be a valid number, unable to parse string as a number; it must "
        "be a number from 12 to 720 (hours) (set in the environment)",
    ]


def check_lines(text: str) -> dict[str, list[str]]:
    """check's output: each line's name → its state, message and the indented lines below it."""
    lines: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        if match := re.match(r"^(ok|warning|problem)\s+(\S+(?: \S+)?)\s{2,}(.*)$", line):
            name = match.group(2).strip()
            lines[name] = [match.group(1), match.group(3)]
        elif name and line.startswith(" " * 10):
            lines[name].append(line.strip())
    return lines


def test_check_tells_who_is_not_told_fits_a_local_run_and_agrees_with_status(storage, env):
    env(EMAIL_TO="sales", WEBHOOK_URL="http://127.0.0.1:9/hook", WEBHOOK_SECRET="s", LEADS_ALERT_TO="")
    lead_id = stored("failed")
    deliveries = LeadStore.from_settings().deliveries
    deliveries.change(
        deliveries.get(lead_id, "webhook"),
        state="failed",
        attempts=5,
        last_error="could not reach 127.0.0.1:9: connection refused",
    )
    told = leads("check")
    assert told.returncode == 1, told.stdout + told.stderr
    lines = check_lines(told.stdout)
    assert lines["recipients"][:2] == [
        "problem",
        "EMAIL_TO holds 'sales', which is not an email address: the mails about leads to it fail",
    ]
    assert lines["alerts"][0] == "warning" and "a delivery that fails for good alerts nobody" in lines["alerts"][1]
    # A local run: no Azure-only advice.
    assert lines["function keys"][0] == "ok" and "az " not in " ".join(lines["function keys"])
    webhook = " ".join(lines["webhook"])
    assert lines["webhook"][0] == "problem" and "reachable from Azure" not in webhook
    assert "start the receiver on this machine (127.0.0.1:9)" in webhook
    # What status counts as failed now, check says too.
    assert "1 deliveries failed and wait for replay" in webhook and "connection refused" in webhook
    assert "python -m leads replay --destination webhook" in webhook
    assert json.loads(leads("status", "--json").stdout)["failed"] == {"webhook": 1}


def test_check_warns_when_sales_is_not_mailed_and_names_who_is_alerted(storage, env):
    from .fake_webhook import FakeWebhook

    with FakeWebhook() as webhook:
        env(EMAIL_TO="", **webhook.settings(), LEADS_ALERT_TO="ops@contoso.com")
        told = leads("check")
    lines = check_lines(told.stdout)
    assert told.returncode == 0, told.stdout
    state, message = lines["recipients"][:2]
    assert state == "warning" and "EMAIL_TO is not set: nobody is mailed about leads" in message
    assert "test leads (Partner Center's Validate) go nowhere" in message
    assert lines["alerts"][:2] == [
        "ok",
        "failed deliveries are mailed to ops@contoso.com (as .eml files in "
        f"{os.environ['EMAIL_OUTBOX_DIR']}/: ACS is not configured)",
    ]
    assert "email" not in lines  # not enabled: the recipients line says what that means


def test_check_in_azure_gives_azure_advice(env):
    # Identity-based storage (as in Azure) that cannot be reached: the Azure settings are named.
    env(
        AzureWebJobsStorage="",
        AzureWebJobsStorage__tableServiceUri="http://127.0.0.1:9/devstoreaccount1",
        AzureWebJobsStorage__credential="managedidentity",
        WEBHOOK_URL="http://127.0.0.1:9/hook",
        EMAIL_TO="",
    )
    lines = check_lines(leads("check").stdout)
    assert "make run" not in " ".join(lines["storage"]) and "AzureWebJobsStorage" in " ".join(lines["storage"])
    assert lines["function keys"][0] == "warning" and "LEADS_FUNCTION_APP_ID" in lines["function keys"][1]
    assert "the deployed app needs a public one" in " ".join(lines["webhook"])
