"""The HTTP intake, called as the Functions host calls it, against Azurite."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import azure.functions as func
import pytest

import function_app
from leads.normalise import from_http_body
from leads.settings import get_settings
from leads.store import LeadStore

from .conftest import FIXTURES

EXAMPLE = json.loads((FIXTURES / "marketplace" / "https-documented-example.json").read_text())


def post(body: bytes | str | dict | list) -> func.HttpResponse:
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    request = func.HttpRequest("POST", "http://localhost/api/leads", body=body, headers={"Content-Type": "application/json"})
    return function_app.ingest_lead(request)


def answer(response: func.HttpResponse) -> dict:
    assert response.mimetype == "application/json"
    return json.loads(response.get_body())


def test_a_lead_is_stored_before_the_answer(storage):
    response = post(EXAMPLE)
    assert response.status_code == 202
    body = answer(response)
    assert body["duplicate"] is False
    stored = LeadStore.from_settings().get(body["leadId"])
    assert stored is not None
    assert stored.email == "someone@contoso.com" and stored.phone == "+16175555555"
    assert stored.raw == EXAMPLE


def test_the_same_lead_again_is_a_duplicate_recorded_once(storage):
    first = answer(post(EXAMPLE))
    again = post(EXAMPLE)
    assert again.status_code == 200
    assert answer(again) == {"leadId": first["leadId"], "duplicate": True}
    store = LeadStore.from_settings()
    assert store.duplicates(first["leadId"]) == 1
    assert [lead.lead_id for lead in store.list()] == [first["leadId"]]


def test_the_same_content_after_the_dedupe_window_is_a_new_lead(storage, env):
    env(LEADS_DEDUPE_WINDOW_HOURS="1")
    store = LeadStore.from_settings()
    window = timedelta(hours=get_settings().dedupe_window_hours)
    now = datetime.now(timezone.utc)
    first = store.add_http(from_http_body(EXAMPLE, received_at=now - timedelta(hours=2)), window)
    # 90 minutes after the first is outside its 1-hour window: a new lead, with a new id.
    within = store.add_http(from_http_body(EXAMPLE, received_at=now - timedelta(minutes=30)), window)
    assert within.duplicate is False and within.lead_id != first.lead_id
    # 30 minutes after that one is inside its window: a duplicate of it.
    again = store.add_http(from_http_body(EXAMPLE, received_at=now), window)
    assert (again.lead_id, again.duplicate) == (within.lead_id, True)
    assert len(store.list()) == 2


@pytest.mark.parametrize(
    "body, status, error",
    [
        (b"", 400, "the body is empty"),
        (b"not json", 400, "the body is not valid JSON"),
        (b"\xff\xfe\x00garbage", 400, "the body is not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object, got a list"),
        (b"{}", 400, "holds no customer or lead data"),
        (b'{"UserDetails": []}', 400, "UserDetails must be an object"),
        (b"[" * 100_000, 413, "the limit is 65536"),
        (b"[" * 50_000 + b"]" * 10_000, 400, "nested too deeply"),
    ],
)
def test_bad_bodies_are_refused_with_the_reason(storage, body, status, error):
    response = post(body)
    assert response.status_code == status
    assert error in answer(response)["error"]
    assert LeadStore.from_settings().list() == []


def test_a_body_of_one_mebibyte_is_413(storage):
    response = post({**EXAMPLE, "Description": "x" * (1024 * 1024)})
    assert response.status_code == 413
    assert "64 KiB" in answer(response)["error"]


def test_a_body_just_under_the_limit_is_stored_whole(storage):
    description = "word " * 12_000  # about 60 KB, more than one table property holds
    response = post({**EXAMPLE, "Description": description})
    assert response.status_code == 202
    lead = LeadStore.from_settings().get(answer(response)["leadId"])
    assert lead.raw["Description"] == description


def test_storage_down_is_503_not_blamed_on_the_caller(env):
    env(AzureWebJobsStorage="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;", LEADS_TABLE_PREFIX="Down")  # fmt: skip
    response = post(EXAMPLE)
    assert response.status_code == 503
    assert "could not be stored" in answer(response)["error"]


def test_health_says_ok_and_no_more(storage):
    response = function_app.health(func.HttpRequest("GET", "http://localhost/api/health", body=b""))
    assert (response.status_code, answer(response)) == (200, {"status": "ok"})  # details: tests/test_health.py


def test_no_personal_data_in_logs(storage, caplog):
    caplog.set_level("DEBUG")
    person = {"FirstName": "Zanzibarina", "LastName": "Quixotely", "Email": "zq@quixotely.example.com",
              "Phone": "+44 20 7946 0958", "Company": "Quixotely Ltd", "Country": "GB"}  # fmt: skip
    post({**EXAMPLE, "UserDetails": person})
    post({**EXAMPLE, "UserDetails": person})
    post({"UserDetails": {**person, "Email": ["zq@quixotely.example.com"]}})
    text = caplog.text
    assert "stored" in text and "duplicate" in text and "refused" in text
    for value in ("Zanzibarina", "Quixotely", "zq@", "7946", "0958"):
        assert value not in text
