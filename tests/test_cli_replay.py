"""``python -m leads replay``: what it refuses (issue 8, item 15)."""

from __future__ import annotations

import json

import pytest

from leads.cli import main
from leads.intake.ingest import accept_http

from .conftest import FIXTURES

EXAMPLE = (FIXTURES / "marketplace" / "https-documented-example.json").read_bytes()


def test_replay_of_an_unknown_lead_is_an_error_naming_it(storage, capsys):
    assert main(["--settings", "none", "replay", "--lead", "nonexistent"]) == 2
    captured = capsys.readouterr()
    assert "nonexistent" in captured.err and "No failed deliveries" not in captured.out


def test_replay_to_an_unknown_destination_is_an_error_naming_it_and_the_known_ones(storage, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--settings", "none", "replay", "--destination", "nosuch"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "webhook" in err and "dynamics" in err


def test_replay_of_a_known_lead_with_nothing_failed_says_so(storage, capsys):
    lead_id = json.loads(accept_http(EXAMPLE).json())["leadId"]
    assert main(["--settings", "none", "replay", "--lead", lead_id, "--destination", "webhook"]) == 0
    assert "No failed deliveries to replay." in capsys.readouterr().out
