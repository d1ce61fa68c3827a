"""Teams and Slack: the card and the message (schema, escaping, personal-data modes, marks, size),
the services' answers (202 with an empty body, 200 ok, 429, 5xx, error codes, timeouts), channels
named by routing rules, and delivery end to end through the worker against Azurite."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from importlib.resources import files

import jsonschema
import pytest

from leads.core.normalise import from_http_body
from leads.core.settings import Settings, get_settings
from leads.destinations.base import PermanentError, Route, TransientError
from leads.destinations.routing import RoutingError, load_rules, route
from leads.destinations.slack import SlackDestination, slack_message
from leads.destinations.teams import TeamsDestination, adaptive_card
from leads.intake.ingest import accept_http
from leads.store.lead_store import LeadStore

from .fake_chat import FakeSlack, FakeTeams, Fault
from .personal import leaked
from .workers import drain

RECEIVED = datetime(2026, 11, 30, 9, 15, tzinfo=UTC)
# A lead whose every value tries to format, mention or link, and the personal values of it.
HOSTILE = {
    "FirstName": "Jane_*",
    "LastName": "<!channel> Doe",
    "Email": "jane.doe@fabrikam.com",
    "Phone": "+44 20 7946 0958",
    "Country": "United Kingdom",
    "Company": "**Fabrikam** [win](https://x.test)",
    "Title": "Head & <b>Procurement</b>",
}
PERSONAL = ("Jane", "Doe", "jane.doe", "Fabrikam", "7946", "0958", "Procurement", "40 seats")
SCHEMA = json.loads(files("adaptive_cards").joinpath("schemas/schema-1.5.json").read_text())


def body(**changes) -> dict:
    user = {**HOSTILE, **changes.pop("user", {})}
    lead = {
        "UserDetails": user,
        "LeadSource": "SPZA-PLT|contoso.contoso-crm",
        "OfferTitle": "Contoso CRM",
        "Description": "Please call me about 40 seats.\nWe start in *January*.",
    }
    lead.update(changes)
    return lead


def lead_of(**changes):
    return from_http_body(body(**changes), received_at=RECEIVED)


def texts(value) -> list[str]:
    """Every string inside a JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in texts(item)]
    return []


def unescape_markdown(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def validate_card(card: dict) -> None:
    jsonschema.Draft6Validator(SCHEMA).validate(card)
    kinds = {item.get("type") for item in _elements(card)}
    assert kinds <= {"AdaptiveCard", "TextBlock", "FactSet", "Container", "Action.OpenUrl"}, kinds


def test_the_schema_check_can_fail():
    with pytest.raises(jsonschema.ValidationError):
        validate_card({"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "wrap": "yes"}]})


def _elements(value):
    if isinstance(value, dict):
        if "type" in value:
            yield value
        for item in value.values():
            yield from _elements(item)
    elif isinstance(value, list):
        for item in value:
            yield from _elements(item)


def settings(**values) -> Settings:
    return Settings(**{"EMAIL_PII": "full", **values})


# --- the Teams card ------------------------------------------------------------------------------


def test_the_teams_card_is_a_valid_adaptive_card_showing_what_the_mail_shows():
    lead = lead_of()
    card = adaptive_card([lead], Route(recipients=("default",)), "full", "https://crm.contoso.com/leads/{leadId}")
    validate_card(card)
    shown = [unescape_markdown(text) for text in texts(card["body"])]
    joined = "\n".join(shown)
    for value in (
        HOSTILE["Company"],
        HOSTILE["Title"],
        "Jane_* <!channel> Doe",
        "jane.doe@fabrikam.com",
        "Contoso CRM",
        "AppSource",
        "Contact me",
        lead.lead_id,
        "We start in *January*.",
    ):
        assert value in joined, value
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "Open the lead", "url": f"https://crm.contoso.com/leads/{lead.lead_id}"}
    ]


def test_teams_card_text_escapes_every_markdown_mark_of_a_lead_value():
    card = adaptive_card([lead_of()], Route(recipients=("default",)), "full", "")
    raw = "\n".join(texts(card["body"]))
    assert "**Fabrikam**" not in raw and "[win](https://x.test)" not in raw and "<b>" not in raw
    assert r"\*\*Fabrikam\*\* \[win\]\(https://x\.test\)" in raw


@pytest.mark.parametrize("pii", ["masked", "none"])
def test_the_teams_card_follows_the_personal_data_mode(pii):
    lead = lead_of(user={"Company": "Fabrikam Ltd", "Title": "Head of Procurement"})
    card = adaptive_card([lead], Route(recipients=("default",)), pii, "")
    validate_card(card)
    shown = unescape_markdown("\n".join(texts(card)))
    hidden = ("Jane", "Doe", "jane.doe", "7946", "40 seats") if pii == "masked" else PERSONAL
    assert leaked(hidden, shown) == []
    assert lead.lead_id in shown
    if pii == "masked":
        assert "j***@fabrikam.com" in shown and "Fabrikam Ltd" in shown


def test_teams_marks_test_and_do_not_contact_leads():
    test_card = adaptive_card([lead_of(user={"FirstName": "MSFT_TEST_x"})], Route(("default",), test=True), "full", "")
    first = test_card["body"][0]["items"][0]["text"]
    assert unescape_markdown(first).startswith("[TEST] New lead")
    dnc = adaptive_card([lead_of(LeadSource="SPZA-DNC|contoso.contoso-crm")], Route(("default",)), "full", "")
    shown = unescape_markdown("\n".join(texts(dnc)))
    assert "Do not contact:" in shown and "DO NOT CONTACT this customer" in shown
    assert any(block.get("color") == "Attention" for block in _elements(dnc))


def test_a_long_description_is_cut_and_says_so_and_a_digest_of_fifty_fits_the_limit():
    long = lead_of(Description="x" * 20_000)
    card = adaptive_card([long], Route(("default",)), "full", "")
    size = len(json.dumps(card).encode())
    assert size < 24 * 1024 and "(cut: " in "".join(texts(card))
    leads = [lead_of(user={"Email": f"buyer{i}@fabrikam.com"}, Description="y" * 3000) for i in range(50)]
    digest = adaptive_card(leads, Route(("default",)), "full", "")
    validate_card(digest)
    assert len(json.dumps(digest).encode()) < 24 * 1024
    shown = "\n".join(texts(digest))
    assert all(lead.lead_id in shown for lead in leads)


# --- the Slack message ----------------------------------------------------------------------------


def test_the_slack_message_escapes_control_characters_so_no_one_is_mentioned():
    lead = lead_of()
    message = slack_message([lead], Route(("default",)), "full", "")
    everything = "\n".join(texts(message))
    assert "<!channel>" not in everything and "&lt;!channel&gt;" in everything
    assert "<b>" not in everything and "Head &amp; &lt;b&gt;Procurement&lt;/b&gt;" in everything
    assert lead.lead_id in message["text"] or "New lead" in message["text"]
    assert message["blocks"][0]["type"] == "section" and lead.lead_id in message["blocks"][0]["text"]["text"]


def test_a_slack_digest_of_fifty_keeps_within_slacks_block_and_text_limits():
    leads = [lead_of(user={"Email": f"buyer{i}@fabrikam.com"}) for i in range(50)]
    message = slack_message(leads, Route(("default",)), "full", "")
    assert len(message["blocks"]) <= 50
    assert all(len(block.get("text", {}).get("text", "")) <= 3000 for block in message["blocks"])
    shown = "\n".join(texts(message["blocks"]))
    assert all(lead.lead_id in shown for lead in leads)


def test_slack_without_personal_data_shows_none():
    message = slack_message([lead_of()], Route(("default",)), "none", "")
    everything = "\n".join(texts(message))
    assert leaked(PERSONAL, everything) == []


# --- the services' answers -------------------------------------------------------------------------


@pytest.fixture
def teams():
    with FakeTeams() as fake:
        yield fake


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake


def test_teams_202_with_an_empty_body_is_delivered(teams):
    destination = TeamsDestination(settings(TEAMS_WEBHOOK_URL=teams.url()))
    destination.send(lead_of(), Route(("default",)))
    [card] = teams.cards("general")
    validate_card(card)


def test_slack_200_ok_is_delivered(slack):
    destination = SlackDestination(settings(SLACK_WEBHOOK_URL=slack.url()))
    destination.send(lead_of(), Route(("default",)))
    assert len(slack.messages["general"]) == 1


def send_as_the_worker_does(destination, lead, route):
    """``send``, with whatever it raises classified as the delivery worker classifies it."""
    try:
        return destination.send(lead, route)
    except Exception as exc:  # noqa: BLE001 - every failure is classified, as in deliver()
        raise destination.classify(exc) from None


@pytest.mark.parametrize(
    "fake_class, destination_class, setting",
    [(FakeTeams, TeamsDestination, "TEAMS_WEBHOOK_URL"), (FakeSlack, SlackDestination, "SLACK_WEBHOOK_URL")],
)
def test_429_and_5xx_and_timeouts_are_retried_honouring_retry_after(fake_class, destination_class, setting):
    with fake_class() as fake:
        destination = destination_class(settings(**{setting: fake.url(), "LEADS_HTTP_TIMEOUT_SECONDS": "0.5"}))
        fake.fail_next(Fault(429, "rate_limited", retry_after="4"), Fault(503), Fault(200, delay=1.5))
        with pytest.raises(TransientError) as limited:
            send_as_the_worker_does(destination, lead_of(), Route(("default",)))
        assert limited.value.retry_after == 4.0
        with pytest.raises(TransientError, match="503"):
            send_as_the_worker_does(destination, lead_of(), Route(("default",)))
        with pytest.raises(TransientError, match="no (complete )?answer"):  # a read timeout, or cut at its deadline
            send_as_the_worker_does(destination, lead_of(), Route(("default",)))
        assert fake.all_messages() == []


def test_slack_error_codes_are_permanent_and_name_the_fix(slack):
    destination = SlackDestination(settings(SLACK_WEBHOOK_URL=slack.url()))
    slack.fail_next(Fault(410, "channel_is_archived"))
    with pytest.raises(PermanentError) as refused:
        destination.send(lead_of(), Route(("default",)))
    assert "channel_is_archived" in str(refused.value) and "unarchive" in refused.value.fix


def test_teams_refusals_name_the_workflow_fix_and_not_the_card(teams):
    destination = TeamsDestination(settings(TEAMS_WEBHOOK_URL=teams.url()))
    teams.fail_next(
        Fault(
            403, json.dumps({"error": {"code": "DirectApiAuthorizationRequired", "message": "jane.doe@fabrikam.com"}})
        )
    )
    with pytest.raises(PermanentError) as refused:
        destination.send(lead_of(), Route(("default",)))
    assert "DirectApiAuthorizationRequired" in str(refused.value) and "Anyone" in refused.value.fix
    assert "jane.doe" not in refused.value.explain()


# --- channels and routing -----------------------------------------------------------------------------


def test_a_rule_names_a_channel_whose_url_is_a_setting(teams):
    rules = load_rules(json.dumps({"rules": [{"offer": "contoso.*", "teams": "Sales-EMEA"}]}))
    routes = route(lead_of(), rules, ("teams", "slack"), "", default_channels=("slack",))
    assert routes["teams"].recipients == ("sales-emea",) and routes["slack"].recipients == ("default",)
    assert route(lead_of(), (), ("teams",), "")["teams"].recipients == ()  # no default channel: none

    destination = TeamsDestination(settings(TEAMS_CHANNELS=json.dumps({"Sales-EMEA": teams.url("emea")})))
    destination.send(lead_of(), routes["teams"])
    assert len(teams.cards("emea")) == 1

    with pytest.raises(PermanentError) as missing:
        TeamsDestination(settings(TEAMS_CHANNELS="{}")).send(lead_of(), routes["teams"])
    assert "'sales-emea' has no webhook URL in TEAMS_CHANNELS" in str(missing.value)
    with pytest.raises(PermanentError, match="TEAMS_CHANNELS is not JSON"):
        TeamsDestination(settings(TEAMS_CHANNELS="sales-emea=https://x")).send(lead_of(), routes["teams"])


def test_a_channel_name_that_cannot_be_a_setting_is_a_routing_error():
    with pytest.raises(RoutingError, match="rule 1: teams must name a channel"):
        load_rules(json.dumps([{"teams": "https://example.test/hook"}]))


def test_check_names_channels_without_a_url_and_never_prints_one(env):
    env(
        LEADS_ROUTING=json.dumps([{"slack": "emea"}]),
        SLACK_WEBHOOK_URL="https://hooks.slack.test/T/B/x",
        SLACK_CHANNELS="",
    )
    check = SlackDestination(get_settings()).check()
    assert not check.ok and "'emea', which SLACK_CHANNELS does not hold" in check.message
    env(SLACK_CHANNELS=json.dumps({"emea": "https://hooks.slack.test/T/B/y"}))
    check = SlackDestination(get_settings()).check()
    assert check.ok and "2 channels" in check.message and "hooks.slack.test" not in check.message


# --- end to end ------------------------------------------------------------------------------------------


@pytest.fixture
def channels(storage, env, teams, slack):
    env(
        TEAMS_WEBHOOK_URL=teams.url(),
        SLACK_WEBHOOK_URL=slack.url(),
        EMAIL_TO="",
        WEBHOOK_URL="",
        LEADS_RETRY_BASE_SECONDS="0.2",
        LEADS_HTTP_TIMEOUT_SECONDS="2",
    )
    return teams, slack


def test_a_posted_lead_reaches_teams_and_slack_once_through_the_worker(channels):
    teams, slack = channels
    teams.fail_next(Fault(503))  # the first post fails, and is retried
    answer = accept_http(json.dumps(body()).encode())
    assert answer.status == 202
    drain(deadline=30)
    lead_id = answer.body["leadId"]
    assert len(teams.cards()) == 1 and len(slack.all_messages()) == 1
    deliveries = {d.destination: d for d in LeadStore.from_settings().deliveries.for_lead(lead_id)}
    assert deliveries["teams"].state == deliveries["slack"].state == "delivered"
    assert deliveries["teams"].attempts == 2


def test_a_burst_for_one_channel_is_folded_into_one_card(channels):
    teams, slack = channels
    lead_ids = []
    for index in range(12):
        answer = accept_http(json.dumps(body(user={"Email": f"buyer{index}@fabrikam.com"})).encode())
        lead_ids.append(answer.body["leadId"])
    drain(deadline=60)
    cards = teams.cards()
    shown = unescape_markdown("\n".join(text for card in cards for text in texts(card)))
    assert all(shown.count(lead_id) == 1 for lead_id in lead_ids)  # every lead, once
    assert len(cards) < 12 and any(len(card["body"]) > 2 for card in cards)  # some folded together
    for card in cards:
        validate_card(card)


def test_no_channel_for_a_lead_skips_its_delivery_with_the_reason(storage, env):
    env(
        LEADS_ROUTING=json.dumps([{"offer": "other.*", "teams": "emea"}]),
        TEAMS_WEBHOOK_URL="",
        EMAIL_TO="",
        WEBHOOK_URL="",
    )
    answer = accept_http(json.dumps(body()).encode())
    [delivery] = LeadStore.from_settings().deliveries.for_lead(answer.body["leadId"])
    assert (delivery.destination, delivery.state) == ("teams", "skipped")
    assert "no Teams channel" in delivery.last_error
