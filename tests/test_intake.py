"""The HTTP intake, called as the Functions host calls it, against Azurite."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import azure.functions as func
import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import function_app
from leads.cli import main
from leads.core.model import Lead
from leads.core.normalise import from_http_body, http_lead_id
from leads.core.settings import get_settings
from leads.core.storage import table_service
from leads.delivery.queue import delivery_queue
from leads.intake.ingest import accept_http
from leads.local.serve import LocalHost
from leads.store.lead_store import LeadStore
from leads.store.rows import MAX_KEPT_BYTES, lead_entity

from .conftest import EXAMPLE, FIXTURES
from .fake_webhook import FakeWebhook
from .personal import leaked
from .storage_proxy import StorageProxy
from .workers import drain


def post(body: bytes | str | dict | list) -> func.HttpResponse:
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    request = func.HttpRequest(
        "POST", "http://localhost/api/leads", body=body, headers={"Content-Type": "application/json"}
    )
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
    now = datetime.now(UTC)
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


def test_a_body_of_emoji_under_the_limit_is_stored_whole(storage):
    # 33,000 characters are 41,000 UTF-16 code units: more than one table property holds.
    description = "a" * 25_000 + "😀" * 8_000
    response = post(json.dumps({**EXAMPLE, "Description": description}, ensure_ascii=False))
    assert response.status_code == 202
    assert LeadStore.from_settings().get(answer(response)["leadId"]).description == description


@pytest.mark.parametrize("field", ["LeadSource", "OfferTitle", "ActionCode"])
def test_a_value_longer_than_a_table_property_holds_is_stored_whole(storage, field):
    # Found by the property test below: the lead row's look-up columns (source, action, offer) were
    # single properties, and one value over 32K characters made the row unstorable: 503 forever.
    value = "a" * 32_000 + "😀" * 400  # 32,800 UTF-16 code units, over a property's 32,768
    response = post({**EXAMPLE, field: value})
    assert response.status_code == 202, answer(response)
    lead = LeadStore.from_settings().get(answer(response)["leadId"])
    assert lead.raw[field] == value


def test_storage_down_is_503_not_blamed_on_the_caller(env):
    env(
        AzureWebJobsStorage="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        LEADS_TABLE_PREFIX="Down",
    )
    response = post(EXAMPLE)
    assert response.status_code == 503
    assert "could not be stored" in answer(response)["error"]


def test_health_says_ok_and_no_more(storage):
    response = function_app.health(func.HttpRequest("GET", "http://localhost/api/health", body=b""))
    assert (response.status_code, answer(response)) == (200, {"status": "ok"})  # details: tests/test_health.py


def test_no_personal_data_in_logs(storage, caplog):
    caplog.set_level("DEBUG")
    person = {
        "FirstName": "Zanzibarina",
        "LastName": "Quixotely",
        "Email": "zq@quixotely.example.com",
        "Phone": "+44 20 7946 0958",
        "Company": "Quixotely Ltd",
        "Country": "GB",
    }
    post({**EXAMPLE, "UserDetails": person})
    post({**EXAMPLE, "UserDetails": person})
    post({"UserDetails": {**person, "Email": ["zq@quixotely.example.com"]}})
    text = caplog.text
    assert "stored" in text and "duplicate" in text and "refused" in text
    assert leaked(("Zanzibarina", "Quixotely", "zq@", "7946 0958", "2079460958"), text) == []


# --- repeats: only a lead that names a person can be one (issue 8, items 1 and 2) -----------------

WITHHELD = {
    "UserDetails": {
        "FirstName": "",
        "LastName": "",
        "Email": "",
        "Phone": "",
        "Country": "",
        "Company": "",
        "Title": "",
    },
    "LeadSource": "SPZA-INS|contoso.edu-offer",
    "OfferTitle": "Contoso for Education",
}


@pytest.fixture
def served(storage, env):
    """The real function app served over loopback HTTP, delivering to a fake webhook."""
    with FakeWebhook() as webhook:
        env(
            LEADS_POLL_SCHEDULE="0 0 0 1 1 *",
            **webhook.settings(),
            LEADS_RETRY_BASE_SECONDS="0.2",
            EMAIL_TO="",
        )
        with LocalHost("function_app", port=0, settings_file=None) as host:
            yield f"{host.url}/api/leads", webhook


def test_two_customers_whose_personal_data_was_withheld_are_two_leads_both_delivered(served):
    url, webhook = served
    first, second = requests.post(url, json=WITHHELD), requests.post(url, json=WITHHELD)
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["duplicate"] is False and second.json()["duplicate"] is False
    ids = {first.json()["leadId"], second.json()["leadId"]}
    assert len(ids) == 2
    drain(deadline=30)
    assert set(webhook.leads) == ids
    # Repeats of such content are counted on the content, not refused or merged.
    store = LeadStore.from_settings()
    assert [store.same_content(lead_id) for lead_id in sorted(ids)] == [2, 2]


@pytest.mark.parametrize(
    "user, repeat",
    [
        ({"Email": "ann@contoso.com"}, True),
        ({"FirstName": "Ann", "Company": "Contoso"}, True),
        ({"LastName": "Lee", "Company": "Contoso"}, True),
        ({"FirstName": "Ann", "LastName": "Lee"}, False),  # a name without a company names no one
        ({"Company": "Contoso", "Title": "CTO"}, False),
        ({"Phone": "+1 617 555 5555", "Country": "US"}, False),
    ],
)
def test_only_a_lead_that_names_a_person_can_be_a_repeat(storage, user, repeat):
    body = {"UserDetails": user, "LeadSource": "SPZA-PLT|contoso.crm"}
    first, again = answer(post(body)), answer(post(body))
    assert again["duplicate"] is repeat
    assert (again["leadId"] == first["leadId"]) is repeat
    assert len(LeadStore.from_settings().list()) == (1 if repeat else 2)


def storage_counted(proxy: StorageProxy, azurite) -> LeadStore:
    """A lead store on the test's tables whose every request goes through ``proxy``."""
    store = LeadStore(table_service(proxy.connection_string(azurite)), get_settings().table_prefix)
    store.ensure_tables()
    return store


def arrivals(
    store: LeadStore, proxy: StorageProxy, body: dict, times: list[datetime], window: timedelta
) -> list[tuple[bool, int]]:
    """(duplicate?, storage requests) of each arrival of ``body`` at ``times``."""
    outcomes = []
    for at in times:
        before = proxy.count()
        stored = store.add_http(from_http_body(body, received_at=at), window)
        outcomes.append((stored.duplicate, proxy.count() - before))
    return outcomes


def test_the_repeat_check_costs_the_same_on_every_occurrence(storage, azurite):
    window = timedelta(hours=1)
    start = datetime.now(UTC) - timedelta(days=10)
    times = [start + timedelta(hours=2 * k, minutes=minute) for k in range(40) for minute in (0, 5)]
    with StorageProxy(azurite.table_port) as proxy:
        outcomes = arrivals(storage_counted(proxy, azurite), proxy, EXAMPLE, times, window)
    assert [duplicate for duplicate, _ in outcomes] == [False, True] * 40
    new_costs = {cost for (duplicate, cost) in outcomes[2:] if not duplicate}
    repeat_costs = {cost for (duplicate, cost) in outcomes if duplicate}
    # One request less when an attempt's identity row falls on its stored lead's own day (it finds
    # the row there, and has nothing to take back), so the costs differ by one with the day, and
    # never grow with the occurrences: the last ones cost what the first ones did.
    for costs in (new_costs, repeat_costs):
        assert max(costs) - min(costs) <= 1, (new_costs, repeat_costs)
    assert {cost for _, cost in outcomes[-20:]} <= {cost for _, cost in outcomes[2:40]}
    # A first arrival: its identity row (leads/store/identities.py, for `import`), its address's row
    # (the same module: the email index, for `forget --email`; one partition per address, so no
    # transaction can hold it), its timeline entry (leads/store/index.py) and the lead's transaction;
    # the same on the 40th occurrence as on the 2nd (a new lead after the window: 13, its two
    # attempts each writing the address row).
    assert outcomes[0][1] == 4 and max(new_costs | repeat_costs) <= 13


def store_as_before(store: LeadStore, body: dict, count: int, first_at: datetime, every: timedelta) -> Lead:
    """The rows the version before this one left for ``body`` arriving ``count`` times, each
    arrival outside the window of the one before: ids ``h<digest>``, then ``h<digest of #k>``."""
    lead = from_http_body(body, received_at=first_at)
    store.ensure_tables()

    def write(occurrence: int) -> None:
        old = lead.model_copy(
            update={"lead_id": http_lead_id(lead, occurrence), "received_at": first_at + every * occurrence}
        )
        store.leads.create_entity(lead_entity(old))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(count)))
    return lead


def test_a_content_that_arrived_a_thousand_times_before_is_taken_in_at_the_cost_of_the_first(storage, azurite):
    window = timedelta(hours=24)
    now = datetime.now(UTC)
    every = timedelta(hours=25)
    lead = store_as_before(LeadStore.from_settings(), EXAMPLE, 1000, now - every * 1000, every)
    other = {**EXAMPLE, "UserDetails": {**EXAMPLE["UserDetails"], "Email": "other@contoso.com"}}
    with StorageProxy(azurite.table_port) as proxy:
        store = storage_counted(proxy, azurite)
        # The 1,001st: a new lead under the id the version before would have given it.
        stored = store.add_http(from_http_body(EXAMPLE, received_at=now), window)
        assert (stored.lead_id, stored.duplicate) == (http_lead_id(lead, 1000), False)
        later = arrivals(store, proxy, EXAMPLE, [now + timedelta(hours=1), now + every], window)
        fresh = arrivals(store, proxy, other, [now, now + timedelta(hours=1), now + every], window)
    assert [duplicate for duplicate, _ in later] == [True, False]
    # The 1,002nd costs what the second arrival of new content costs, but for one request: its
    # first attempt's identity row, on another day than the old lead it finds, is taken back.
    assert [duplicate for duplicate, _ in later] == [duplicate for duplicate, _ in fresh[1:]]
    assert all(0 <= cost - again <= 1 for (_, cost), (_, again) in zip(later, fresh[1:], strict=True))


def test_a_repeat_of_a_lead_stored_by_the_version_before_is_still_a_repeat(storage):
    store = LeadStore.from_settings()
    now = datetime.now(UTC)
    lead = store_as_before(store, EXAMPLE, 3, now - timedelta(hours=51), timedelta(hours=25))
    again = store.add_http(from_http_body(EXAMPLE, received_at=now), timedelta(hours=24))
    assert (again.lead_id, again.duplicate) == (http_lead_id(lead, 2), True)
    assert store.duplicates(http_lead_id(lead, 2)) == 1


# --- refused bodies are kept (issue 8, items 4 and 5) -------------------------------------------


def nested(depth: int, inner: str = "1") -> str:
    return '{"a":' * depth + inner + "}" * depth


REFUSED = [
    (b"", 400, "the body is empty"),
    (b"not json", 400, "the body is not valid JSON"),
    (b"\xff\xfe\x00garbage", 400, "the body is not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object, got a list"),
    (b'{"UserDetails": {"Email": ["zq@quixotely.example.com"]}}', 400, "UserDetails.Email must be text"),
    (b"[" * 50_000 + b"]" * 10_000, 400, "nested"),
    (f'{{"UserDetails": {{"Email": "ann@contoso.com"}}, "Unused": {nested(300)}}}'.encode(), 400, "nested"),
    (b'{"UserDetails": {"Email": "ann@contoso.com"}, "Score": NaN}', 400, "NaN"),
    (b'{"UserDetails": {"Email": "ann@contoso.com"}, "Score": 1e400}', 400, "1e400"),
    (b'{"UserDetails": {"Email": "ann@contoso.com"}, "Score": ' + b"9" * 5000 + b"}", 400, "5000 digits"),
    (b'{"UserDetails": {"Email": "ann@contoso.com", "Company": "\\ud800"}}', 400, "not valid Unicode"),
    (b"[" * 100_000, 413, "the limit is 65536"),
]


@pytest.mark.parametrize("body, status, error", REFUSED)
def test_a_refused_body_is_kept_with_its_reason_and_the_bytes_as_received(storage, body, status, error, caplog):
    caplog.set_level("INFO", logger="leads.intake.ingest")
    response = post(body)
    refusal = answer(response)
    assert response.status_code == status and error in refusal["error"]
    kept = LeadStore.from_settings().rejected(refusal["rejectedId"])
    assert (kept["channel"], kept["error"], kept["body"], kept["size"]) == ("http", refusal["error"], body, len(body))
    assert kept["truncated"] is False
    # One line for the operator: the record's id and the reason, nothing the body held.
    records = [record for record in caplog.records if record.name == "leads.intake.ingest"]
    assert len(records) == 1 and records[0].leadId == refusal["rejectedId"]
    assert refusal["rejectedId"] in records[0].getMessage() and refusal["error"][:20] in records[0].getMessage()
    assert "quixotely" not in caplog.text


def test_deep_nesting_over_http_is_a_400_naming_the_problem(served):
    url, _ = served
    body = (
        f'{{"UserDetails": {{"Email": "ann@contoso.com"}}, "LeadSource": "AzureMarketplace", "Unused": {nested(300)}}}'
    )
    response = requests.post(url, data=body.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "nested" in response.json()["error"]
    assert LeadStore.from_settings().rejected(response.json()["rejectedId"])["body"] == body.encode()


def test_a_description_holding_deeply_nested_json_stays_the_description(storage):
    description = json.dumps({"mktcmpid": json.loads(nested(300))})
    response = post({**EXAMPLE, "Description": description})
    assert response.status_code == 202
    lead = LeadStore.from_settings().get(answer(response)["leadId"])
    assert (lead.description, lead.campaign) == (description, {})


def test_an_oversized_body_is_kept_up_to_half_a_mebibyte(storage):
    whole = json.dumps({**EXAMPLE, "Description": "x" * 100_000}).encode()
    huge = json.dumps({**EXAMPLE, "Description": "y" * (1024 * 1024)}).encode()
    store = LeadStore.from_settings()
    kept_whole = store.rejected(answer(post(whole))["rejectedId"])
    kept_huge = store.rejected(answer(post(huge))["rejectedId"])
    assert (kept_whole["body"], kept_whole["truncated"]) == (whole, False)
    assert (kept_huge["body"], kept_huge["size"], kept_huge["truncated"]) == (huge[:MAX_KEPT_BYTES], len(huge), True)


def test_show_prints_a_refused_body(storage, capsys):
    refusal = answer(post(b'{"UserDetails": "Ann"}'))
    assert main(["--settings", "none", "show", refusal["rejectedId"]]) == 0
    out = capsys.readouterr().out
    assert "UserDetails must be an object" in out and '{"UserDetails": "Ann"}' in out
    assert main(["--settings", "none", "show", refusal["rejectedId"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["channel"], shown["body"]) == ("http", '{"UserDetails": "Ann"}')


# --- any body, through the store (Azurite) -------------------------------------------------------

ODD_TEXT = ["\x00", "\u2028", "\u202e", "\ufeff", "\uffff", "e\u0301", "😀", "\U0010ffff", "ß", "İ", "\u200b"]
LONE_SURROGATES = ["\ud800", "a\udfffb", "\udbff"]
HUGE_NUMBERS = ["1e400", "-1e400", "1e-400", "-0", "1E+308", "123456789012345678901234567890", "9" * 4000, "9" * 5000]
odd_strings = st.one_of(
    st.text(max_size=20),
    st.lists(st.sampled_from(ODD_TEXT) | st.text(max_size=3), max_size=8).map("".join),
    st.tuples(st.sampled_from(["a", "é", "😀", " "]), st.integers(1, 40_000)).map(lambda p: p[0] * p[1]),
)


def json_text(value, ascii_only: bool = True) -> str:
    """JSON text for generated values; numbers come as their literal text, so any can be written."""
    if isinstance(value, JsonLiteral):
        return value.text
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(
                f"{json.dumps(key, ensure_ascii=ascii_only)}:{json_text(item, ascii_only)}"
                for key, item in value.items()
            )
            + "}"
        )
    if isinstance(value, list):
        return "[" + ",".join(json_text(item, ascii_only) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


@dataclass(frozen=True)
class JsonLiteral:
    text: str


leaves = st.one_of(st.none(), st.booleans(), st.integers(), odd_strings, st.sampled_from(HUGE_NUMBERS).map(JsonLiteral))
nesting = st.tuples(st.sampled_from([1, 31, 32, 33, 254, 300, 900]) | st.integers(0, 400), leaves).map(
    lambda p: JsonLiteral(nested(p[0], json_text(p[1])))
)
user_details = st.dictionaries(
    st.sampled_from(["FirstName", "LastName", "Email", "Phone", "Country", "Company"]),
    odd_strings | st.sampled_from(["ann@contoso.com", "Contoso", "+1 617 555 5555"]),
)
bodies = st.fixed_dictionaries(
    {"UserDetails": user_details},
    optional={
        "LeadSource": st.sampled_from(["AzureMarketplace", "SPZA-PLT|contoso.crm"]) | odd_strings,
        "Description": odd_strings | nesting.map(lambda literal: literal.text),
        "Unused": st.one_of(nesting, nesting, st.sampled_from(HUGE_NUMBERS).map(JsonLiteral), leaves),
        "Odd": st.sampled_from([*LONE_SURROGATES, "", "", "", "", ""]),
    },
)


PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY_SETTINGS
@given(bodies, st.booleans())
def test_any_body_is_stored_whole_or_refused_and_kept(storage, body, ascii_only):
    # Non-ASCII text as UTF-8, and lone surrogates written raw (bytes that are not UTF-8) too.
    assert_stored_whole_or_kept(json_text(body, ascii_only).encode("utf-8", "surrogatepass"))


@PROPERTY_SETTINGS
@given(st.one_of(nesting, st.sampled_from(HUGE_NUMBERS).map(JsonLiteral)), odd_strings)
def test_a_lead_with_values_of_any_depth_or_size_is_stored_whole_or_refused_and_kept(storage, unused, company):
    body = {"UserDetails": {"Email": "ann@contoso.com", "Company": company}, "Unused": unused}
    assert_stored_whole_or_kept(json_text(body, ascii_only=False).encode())


def assert_stored_whole_or_kept(data: bytes) -> None:
    result = accept_http(data)
    store = LeadStore.from_settings()
    assert result.status in (200, 202, 400, 413), result.body
    event(f"{result.status} {re.sub(r'[0-9]+', 'N', result.body.get('error', ''))[:40]}")
    if result.status in (200, 202):
        lead = store.get(result.body["leadId"])
        if result.status == 202:
            assert lead.raw == json.loads(data)
        else:  # a repeat of an earlier example with the same normalised content
            assert http_lead_id(lead) == http_lead_id(from_http_body(json.loads(data)))
        assert Lead.from_json(lead.to_json()) == lead
    else:
        kept = store.rejected(result.body["rejectedId"])
        assert kept["body"] == data[:MAX_KEPT_BYTES] and kept["error"] == result.body["error"]


# --- a write whose answer was lost (issue 8, item 9) ---------------------------------------------


@pytest.mark.parametrize("how", ["503", "drop"])
@pytest.mark.parametrize("write", ["single", "transaction"])
def test_a_lead_whose_write_committed_before_its_answer_was_lost_is_a_new_lead(storage, azurite, env, how, write):
    with StorageProxy(azurite.table_port) as proxy:
        env(
            AzureWebJobsStorage=proxy.connection_string(azurite),
            EMAIL_TO="",
        )
        if write == "transaction":  # the lead, its content row and its delivery, in one batch
            env(WEBHOOK_URL="http://127.0.0.1:9/hook", WEBHOOK_SECRET="s3cret")
        store = LeadStore.from_settings()
        store.ensure_tables()
        table = get_settings().table_prefix
        proxy.lose_next_answer(how, "POST", r"\$batch$" if write == "transaction" else f"/{table}$")
        # A lead naming no one, owing nothing, is one single insert.
        body = EXAMPLE if write == "transaction" else {"UserDetails": {"Company": "Contoso"}, "LeadSource": "AppSource"}
        result = accept_http(json.dumps(body).encode())
        assert proxy.lost, "the answer was not lost: the test tested nothing"
        assert result.status == 202 and result.body["duplicate"] is False
        assert store.duplicates(result.body["leadId"]) == 0
        if write == "transaction":
            messages = delivery_queue(get_settings()).client.peek_messages(max_messages=5)
            assert len(messages) == 1  # queued now, not left for the sweep


# --- what storage failing around the lead's own write does (review findings 5a, 5b, 8) ------------

ANN = {
    "UserDetails": {
        "FirstName": "Ann",
        "LastName": "Lee",
        "Email": "ann.lee@contoso.example.com",
        "Company": "Contoso",
    },
    "LeadSource": "SPZA-PLT|contoso.crm",
}


def refuse(
    monkeypatch, table, method: str, row_key: str | None = None, prefix: str = "", times: int | None = None
) -> list:
    """Make the SDK client ``table``'s ``method`` fail as storage does once the SDK's own retries
    are spent, for the rows whose RowKey is ``row_key`` or starts with ``prefix``, ``times``
    times (or always); the list of the calls refused."""
    from azure.core.exceptions import HttpResponseError

    real, refused = getattr(table, method), []

    def refusing(*args, **kwargs):
        entity = args[0] if args and isinstance(args[0], dict) else kwargs.get("entity")
        key = entity["RowKey"] if entity is not None else (args[1] if len(args) > 1 else kwargs.get("row_key"))
        if (key == row_key or (row_key is None and key.startswith(prefix))) and (times is None or len(refused) < times):
            refused.append(key)
            raise HttpResponseError("The server is busy (503 ServerBusy)")
        return real(*args, **kwargs)

    monkeypatch.setattr(table, method, refusing)
    return refused


@pytest.fixture
def queued(storage, env):
    """A webhook route (never called: nothing drains the queue); the lead ids queued."""
    env(
        WEBHOOK_URL="http://127.0.0.1:9/hook",
        WEBHOOK_SECRET="s3cret",
        EMAIL_TO="",
    )

    def messages() -> list[str]:
        delivery_queue(get_settings())._ensure()  # none made yet when nothing was queued
        peeked = delivery_queue(get_settings()).client.peek_messages(max_messages=32)
        return [json.loads(message.content)["leadId"] for message in peeked]

    return messages


@pytest.mark.parametrize("case", ["naming no one", "after the window"])
def test_a_count_failing_after_the_lead_committed_is_202_with_the_lead_queued(queued, monkeypatch, caplog, case):
    store = LeadStore.from_settings()
    store.ensure_tables()
    if case == "naming no one":  # its content row counts it once it is stored
        body = {"UserDetails": {"Company": "Contoso"}, "LeadSource": "AppSource"}
        refused = refuse(monkeypatch, store.leads, "get_entity", row_key="content")
    else:  # its content row is moved on to the new lead once it is stored
        body = ANN
        window = timedelta(hours=get_settings().dedupe_window_hours)
        store.add_http(from_http_body(body, received_at=datetime.now(UTC) - 2 * window), window)
        refused = refuse(monkeypatch, store.leads, "update_entity", row_key="content")
    result = accept_http(json.dumps(body).encode())
    assert refused, "no count was refused: the test tested nothing"
    assert (result.status, result.body.get("duplicate")) == (202, False), result.body
    assert store.get(result.body["leadId"]) is not None
    assert queued().count(result.body["leadId"]) == 1  # queued now, once
    assert result.body["leadId"] in caplog.text and leaked(("Ann", "ann.lee@", "Lee"), caplog.text) == []


def email_rows(store: LeadStore, address: str) -> list[str]:
    """The RowKeys of the email index's rows for ``address``."""
    from leads.store.identities import CROWDED, email_row_key

    return sorted(
        "|".join(email_row_key(row)[1:])
        for row in store.identities.email_rows(address)
        if row["PartitionKey"] != CROWDED
    )


def identity_rows(store: LeadStore, lead_id: str) -> list[str]:
    """The day partitions holding an identity row of ``lead_id`` (a test may scan the table)."""
    rows = store.identities.table.query_entities("RowKey eq @id", parameters={"id": lead_id})
    return sorted(row["PartitionKey"] for row in rows)


@pytest.mark.parametrize("row", ["timeline entry", "identity rows", "identity rows once"])
def test_a_row_that_can_be_repaired_failing_before_the_lead_does_not_refuse_it(queued, monkeypatch, caplog, row):
    from leads.store.erasure import forget_email

    store = LeadStore.from_settings()
    store.ensure_tables()
    if row == "timeline entry":  # `list` reads it; `reindex --again` writes it
        refused = refuse(monkeypatch, store.index.timeline, "upsert_entity")
    else:  # `import` and `forget --email` read them; `reindex` writes them
        refused = refuse(monkeypatch, store.identities.table, "upsert_entity", times=1 if "once" in row else None)
    result = accept_http(json.dumps(ANN).encode())
    assert refused, "no write was refused: the test tested nothing"
    assert (result.status, result.body.get("duplicate")) == (202, False), result.body
    lead_id = result.body["leadId"]
    assert store.get(lead_id) is not None and queued() == [lead_id]
    assert leaked(("Ann", "ann.lee@", "Lee"), caplog.text) == []
    monkeypatch.undo()
    if row == "timeline entry":
        assert f"{lead_id} stored without its timeline entry" in caplog.text
    elif row == "identity rows once":  # written again once the lead was stored
        assert email_rows(store, "ann.lee@contoso.example.com") == [f"{lead_id}|lead"]
        assert store.identities.built()
    else:  # until `reindex` writes them, `forget --email` reads every row rather than miss this lead
        assert f"{lead_id} stored without its identity and email rows" in caplog.text
        assert not store.identities.built()
        erased = forget_email("ann.lee@contoso.example.com")
        assert erased.read_every_row and erased.leads == [lead_id]


def test_a_lead_whose_open_delivery_entry_cannot_be_written_is_503_and_its_body_kept(queued, monkeypatch, caplog):
    from leads.store.erasure import forget_email

    store = LeadStore.from_settings()
    store.ensure_tables()
    # Without its entry a delivery whose message is lost is never found again: no lead without it.
    refused = refuse(monkeypatch, store.index.table, "upsert_entity", prefix="o|")
    body = json.dumps(ANN).encode()
    result = accept_http(body)
    assert refused, "no write was refused: the test tested nothing"
    assert result.status == 503 and "could not be stored" in result.body["error"] and "again" in result.body["error"]
    assert store.get(http_lead_id(from_http_body(ANN))) is None and queued() == []
    kept = store.rejected(result.body["rejectedId"])  # what the marketplace sent is not lost unseen
    assert (kept["body"], kept["channel"], kept["error"]) == (body, "http", result.body["error"])
    assert leaked(("Ann", "ann.lee@", "Lee"), caplog.text) == []
    monkeypatch.undo()
    assert forget_email("ann.lee@contoso.example.com").rejected == [result.body["rejectedId"]]


@pytest.mark.parametrize("again", ["table row read again", "posted again"])
def test_a_lead_arriving_again_after_it_was_forgotten_gets_no_identity_rows_back(storage, env, again):
    from leads.core.normalise import from_table_entity
    from leads.store.erasure import forget_lead

    env(EMAIL_TO="", WEBHOOK_URL="")
    store = LeadStore.from_settings()
    address = "ann.lee@contoso.example.com"
    # A table row read again: the poll's hourly safety scan, or another process's poll.
    row = {
        **json.loads((FIXTURES / "marketplace" / "table-entity-test-lead.json").read_text()),
        "CustomerInfo": json.dumps({"FirstName": "Ann", "LastName": "Lee", "Email": address, "Company": "Contoso"}),
    }

    window = timedelta(hours=get_settings().dedupe_window_hours)

    def arrive():
        if again == "table row read again":
            return store.add(from_table_entity(row, "Marketplace", received_at=datetime.now(UTC)))
        return store.add_http(from_http_body(ANN), window)

    first = arrive()
    assert email_rows(store, address) == [f"{first.lead_id}|lead"] and identity_rows(store, first.lead_id)
    forget_lead(first.lead_id)
    assert email_rows(store, address) == [] and identity_rows(store, first.lead_id) == []
    second = arrive()
    assert store.get_for_delivery(first.lead_id)[1] is True  # still erased ...
    assert identity_rows(store, first.lead_id) == []  # ... and nothing names it again
    # A repeat of the erased lead (its row read again, its content posted again within the
    # window) is reported erased and nothing of it is kept.
    assert (second.lead_id, second.duplicate, second.erased) == (first.lead_id, True, True)
    assert email_rows(store, address) == [] and len(store.list(limit=None)) == 1
    if again == "posted again":  # after the window, the person sent it again: a new lead, indexed as any other
        later = store.add_http(from_http_body(ANN, received_at=datetime.now(UTC) + window), window)
        assert not later.duplicate and email_rows(store, address) == [f"{later.lead_id}|lead"]


def test_a_repeat_on_the_next_day_leaves_no_identity_row_once_the_lead_is_forgotten(storage, env):
    from leads.store.erasure import forget_lead

    env(EMAIL_TO="", WEBHOOK_URL="", LEADS_DEDUPE_WINDOW_HOURS="24")
    store = LeadStore.from_settings()
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = store.add_http(from_http_body(ANN, received_at=midnight - timedelta(minutes=10)), timedelta(hours=24))
    repeat = store.add_http(from_http_body(ANN, received_at=midnight + timedelta(minutes=10)), timedelta(hours=24))
    assert (repeat.lead_id, repeat.duplicate) == (first.lead_id, True)
    assert identity_rows(store, first.lead_id) == [f"{midnight - timedelta(minutes=10):%Y-%m-%d}"]
    forget_lead(first.lead_id)
    assert identity_rows(store, first.lead_id) == []
