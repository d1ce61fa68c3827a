"""What a newcomer reads in the terminal: help texts, ``show``, and the three states of ``check``."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from leads.cli import main
from leads.core.normalise import from_http_body
from leads.destinations import Check
from leads.ops.checks import run_checks
from leads.store.lead_store import LeadStore

from .conftest import EXAMPLE
from .fake_webhook import FakeWebhook

COMMANDS = ["serve", "list", "show", "poll", "status", "replay", "check", "test-lead"]


def help_text(capsys, *args: str) -> str:
    with pytest.raises(SystemExit):
        main([*args, "--help"])
    return capsys.readouterr().out


def options_without_help(text: str) -> list[str]:
    """Options listed in an argparse help whose description is empty."""
    lines = text.split("options:", 1)[1].splitlines()[1:]
    bare = []
    for line, following in zip(lines, [*lines[1:], ""], strict=True):
        match = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if match and not match.group(2) and not re.match(r"^\s{6,}\S", following):
            bare.append(match.group(1))
    return bare


def test_help_shows_no_restructuredtext_and_every_option_is_explained(capsys):
    top = help_text(capsys)
    assert "``" not in top and "python -m leads ...: run the app locally" in top
    for command in COMMANDS:
        text = help_text(capsys, command)
        assert "`" not in text, command
        assert not options_without_help(text), (command, options_without_help(text))
    test_lead = help_text(capsys, "test-lead")
    assert "table poll" in test_lead and "progress still goes to stderr" in test_lead


def test_options_without_help_finds_a_bare_option():
    # The helper must be able to fail, or the test above could pass on anything.
    assert options_without_help("options:\n  -h, --help  show help\n  --json\n  --via X  how\n") == ["--json"]


def test_show_prints_the_campaign_as_the_mail_does(storage, capsys):
    lead = from_http_body({**EXAMPLE, "Description": "Campaigns: winter-promo, partner-x"})
    LeadStore.from_settings().add(lead)
    assert main(["--settings", "/nonexistent", "show", lead.lead_id]) == 0
    assert "Campaign:     campaigns: winter-promo, partner-x\n" in capsys.readouterr().out


def test_a_check_is_ok_warning_or_problem_and_old_constructors_keep_their_meaning():
    assert Check(True, "fine").state == "ok"
    assert Check(True, "works, but", "do this").state == "warning"  # an ok with a fix was never plain ok
    assert Check.warn("works, but").state == "warning" and Check.warn("works, but").ok
    assert Check(False, "broken", "fix it").state == "problem"


@contextlib.contextmanager
def receiver_answering_head(status: int):
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook"
    finally:
        server.shutdown()
        server.server_close()


def test_a_webhook_that_answers_head_with_501_is_a_warning_not_ok(storage, env):
    with FakeWebhook() as webhook:  # takes POSTs only: a HEAD gets 501
        env(**webhook.settings())
        check = dict(run_checks())["webhook"]
    assert check.state == "warning" and "501" in check.message and "test-lead" in check.fix
    with receiver_answering_head(200) as url:
        env(WEBHOOK_URL=url, WEBHOOK_SECRET="s3cret")
        assert dict(run_checks())["webhook"].state == "ok"
        env(WEBHOOK_SECRET="")
        assert dict(run_checks())["webhook"].state == "warning"  # unsigned


def test_check_prints_three_plain_states_and_what_a_problem_means_for_a_lead(storage, env, capsys):
    env(EMAIL_TO="sales@contoso.com", WEBHOOK_URL="http://127.0.0.1:9/hook", WEBHOOK_SECRET="s")
    assert main(["--settings", "/nonexistent", "check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    email = next(line for line in lines if re.match(r"^\S+\s+email\b", line))
    assert email.startswith("warning ") and ".eml" in email  # the outbox: nobody is mailed
    for line, following in zip(lines, lines[1:], strict=False):
        assert not (line.startswith("ok ") and "fix:" in following), "an ok line with a fix"
    webhook = lines.index(next(line for line in lines if re.match(r"^\S+\s+webhook\b", line)))
    assert lines[webhook].startswith("problem ")
    assert "for a lead: leads are stored but not delivered to webhook" in lines[webhook + 2]
    assert lines[-1].startswith("ok: leads get through; warning:")
    states = {line.split()[0] for line in lines[:-1] if line and not line.startswith(" ")}
    assert states <= {"ok", "warning", "problem"}

    assert main(["--settings", "/nonexistent", "check", "--json"]) == 1
    report = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
    assert report["email"]["state"] == "warning" and report["email"]["ok"] is True
    assert report["webhook"]["state"] == "problem" and report["webhook"]["forALead"]
    assert report["storage"]["state"] == "ok" and report["storage"]["forALead"] is None
