"""What really reaches Application Insights: no secret and no personal data, whatever happens.

The app runs as in Azure (``python -m leads serve`` importing ``function_app``, whose
``configure_telemetry`` calls the real ``configure_azure_monitor``), with its connection string
pointing at a fake ingestion endpoint on loopback (tests/fake_app_insights.py): the real
exporter turns every log, span, dependency and exception into envelopes and posts them there.
One lead goes to every destination, each failing before it succeeds (and the webhook failing for
good on another lead, which sends an alert); then every byte the exporter sent is searched for
each secret setting and each personal value of the leads.

The child process refuses any connection or name lookup beyond loopback (tests/loopback_only.py):
the exporter's statsbeat, control plane and Azure resource detectors are switched off by their
documented environment variables, and the test proves none of them reached out.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from leads.store.lead_store import LeadStore

from .fake_acs import DEFAULT_SENDER, FakeAcs
from .fake_app_insights import FakeAppInsights
from .fake_chat import FakeSlack, FakeTeams, Fault
from .fake_dynamics import FakeDynamics
from .fake_hubspot import FakeHubSpot
from .fake_marketo import FakeMarketo
from .fake_salesforce import FakeSalesforce
from .fake_webhook import FakeWebhook
from .served import Served
from .workers import open_deliveries

REPO = Path(__file__).resolve().parent.parent
FUNCTION_KEY = "fnkey-" + uuid.uuid4().hex

# Personal values distinctive enough that finding one anywhere means it leaked.
PERSON = {
    "FirstName": "Zebulon",
    "LastName": "Quaxwell",
    "Email": "zebulon.quaxwell@fizzbinworks.com",
    "Phone": "+1 (425) 555-0199",
    "Country": "US",
    "Company": "Fizzbinworks Ltd",
    "Title": "Chief Grommet Officer",
}
OTHER = {
    "FirstName": "Ottoline",
    "LastName": "Wimbrel",
    "Email": "ottoline@wimbrelhaus.com",
    "Phone": "+44 20 7946 0321",
    "Country": "GB",
    "Company": "Wimbrelhaus",
    "Title": "Head of Sprockets",
}
DESCRIPTIONS = ("Needs forty seats of Snorkelware by Friday", "Call about the Zymurgy rollout")
PERSONAL = (
    "Zebulon",
    "Quaxwell",
    "zebulon.quaxwell",
    "fizzbinworks",
    "Chief Grommet Officer",
    "4255550199",
    "555-0199",
    "555 0199",
    "Snorkelware",
    "Ottoline",
    "Wimbrel",
    "wimbrelhaus",
    "Head of Sprockets",
    "79460321",
    "7946 0321",
    "Zymurgy",
)

QUIET_EXPORTER = {
    # Each of these would reach a Microsoft endpoint or the instance metadata service.
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",
    # Every span is kept (Azure samples a few per second): the test sees all there could be.
    "OTEL_TRACES_SAMPLER": "always_on",
    # Export within a fraction of a second rather than every 5 s.
    "OTEL_BSP_SCHEDULE_DELAY": "200",
    "OTEL_BLRP_SCHEDULE_DELAY": "200",
}


def lead_body(person: dict, description: str) -> dict:
    return {
        "UserDetails": person,
        "LeadSource": "SPZA-PLT|contoso.contoso-crm",
        "OfferTitle": "Contoso CRM",
        "Description": description,
    }


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


def variants(value: str) -> set[str]:
    """How a value may be written in an envelope: as is, URL-encoded, JSON-escaped; any case."""
    return {form.lower() for form in (value, quote(value, safe=""), quote(value), json.dumps(value)[1:-1])}


@pytest.mark.parametrize("salesforce_way", ["external-id", "lookup", "web-to-lead"])
def test_no_secret_or_personal_value_reaches_application_insights(storage, env, fake_tls_ca, tmp_path, salesforce_way):
    """Salesforce takes a lead three ways: an upsert on the external id, a look-up by email (or last
    name and company) then a create, or Web-to-Lead; one run each, every other destination alike."""
    with (
        FakeAppInsights() as insights,
        FakeWebhook() as webhook,
        FakeAcs(ca=fake_tls_ca) as acs,
        FakeDynamics(ca=fake_tls_ca) as dynamics,
        FakeSalesforce(ca=fake_tls_ca, client_secret="sf-secret-" + uuid.uuid4().hex) as salesforce,
        FakeMarketo(
            client_id="mkto-id-" + uuid.uuid4().hex, client_secret="mkto-secret-" + uuid.uuid4().hex
        ) as marketo,
        FakeHubSpot(token="pat-na1-" + uuid.uuid4().hex) as hubspot,
        FakeTeams() as teams,
        FakeSlack() as slack,
    ):
        hook_url = f"{webhook.url}?sig=hook-sig-{uuid.uuid4().hex}"  # a Teams workflow's URL carries its secret
        if salesforce_way == "web-to-lead":
            salesforce_settings = {
                "SALESFORCE_OID": salesforce.oid,
                "SALESFORCE_WEB_TO_LEAD_URL": salesforce.web_to_lead_url,
                "SALESFORCE_URL": "",
                "SALESFORCE_CLIENT_ID": "",
                "SALESFORCE_CLIENT_SECRET": "",
            }
        else:
            salesforce_settings = salesforce.settings(
                "Marketplace_Lead_Id__c" if salesforce_way == "external-id" else ""
            )
        settings = {
            **dynamics.settings(),
            **salesforce_settings,
            "APPLICATIONINSIGHTS_CONNECTION_STRING": insights.connection_string(),
            **QUIET_EXPORTER,
            "TMPDIR": str(tmp_path),  # the exporter's offline retry files
            "REQUESTS_CA_BUNDLE": acs.ca_file,
            "NO_PROXY": "127.0.0.1,localhost",  # one CA signs every fake
            "LEADS_DELIVERY_QUEUE": f"q{uuid.uuid4().hex[:12]}",
            "LEADS_RETRY_BASE_SECONDS": "0.2",
            "LEADS_HTTP_TIMEOUT_SECONDS": "10",
            "LEADS_ALERT_TO": "ops@contoso.com",
            "EMAIL_TO": "sales@contoso.com",
            "EMAIL_CONNECTION_STRING": acs.connection_string,
            "EMAIL_SENDER": DEFAULT_SENDER,
            "WEBHOOK_URL": hook_url,
            "WEBHOOK_SECRET": webhook.secret,
            "MARKETO_URL": marketo.url,
            "MARKETO_CLIENT_ID": marketo.client_id,
            "MARKETO_CLIENT_SECRET": marketo.client_secret,
            "HUBSPOT_URL": hubspot.url,
            "HUBSPOT_TOKEN": hubspot.token,
            "TEAMS_WEBHOOK_URL": teams.url(),
            "SLACK_WEBHOOK_URL": slack.url(),
        }
        env(**settings)
        # Every destination fails first and is retried; the webhook then fails one lead for good.
        webhook.faults = ["503", "410"]
        acs.fail_next("503", on="send")
        dynamics.fail("503")
        salesforce.faults = ["ok", "500"]  # the first REST call (describe) behaves, the next fails
        if salesforce_way == "web-to-lead":
            salesforce.faults = []  # Web-to-Lead answers 200 whatever happens: nothing to retry
        marketo.faults = ["http500"]
        hubspot.faults = ["500"]
        teams.fail_next(Fault(503))
        slack.fail_next(Fault(500, "rollup_error"))
        secrets = {
            "function key": FUNCTION_KEY,
            "webhook URL's sig": hook_url.rsplit("=", 1)[1],
            "WEBHOOK_SECRET": webhook.secret,
            "ACS access key": acs.access_key,
            "DYNAMICS_CLIENT_SECRET": dynamics.client_secret,
            "SALESFORCE_CLIENT_SECRET": salesforce.client_secret,
            "MARKETO_CLIENT_ID": marketo.client_id,
            "MARKETO_CLIENT_SECRET": marketo.client_secret,
            "HUBSPOT_TOKEN": hubspot.token,
            "Teams workflow URL": teams.secret,
            "Slack hook URL": slack.secret,
            "storage account key": storage.connection_string.split("AccountKey=")[1].split(";")[0],
        }

        service_ports = {
            "webhook": webhook.port,
            "dynamics": dynamics.port,
            "salesforce": salesforce.port,
            "marketo": marketo.port,
            "hubspot": hubspot.port,
            "teams": teams.port,
            "slack": slack.port,
        }
        served, base = _served_app()
        try:
            lead_ids = []
            for person, description in zip((PERSON, OTHER), DESCRIPTIONS, strict=True):
                answer = requests.post(
                    f"{base}/leads?code={FUNCTION_KEY}", json=lead_body(person, description), timeout=10
                )
                assert answer.status_code == 202, answer.text
                lead_ids.append(answer.json()["leadId"])
            store = LeadStore.from_settings()
            wait_for(
                lambda: len(store.deliveries.for_lead(lead_ids[1])) and open_deliveries() == 0,
                120,
                "every delivery ending",
            )
            outcomes = {
                (d.destination, d.state, d.attempts > 1) for lead in lead_ids for d in store.deliveries.for_lead(lead)
            }
        finally:
            served.stop()  # SIGTERM, a graceful stop: the OpenTelemetry providers flush at exit
            stderr = served.text

    salesforce_name = "salesforce-w2l" if salesforce_way == "web-to-lead" else "salesforce"
    destinations = {"email", "webhook", "dynamics", salesforce_name, "marketo", "hubspot", "teams", "slack"}
    assert {name for name, state, _ in outcomes if state == "delivered"} == destinations, outcomes
    assert {name for name, state, _ in outcomes if state == "failed"} == {"webhook"}, outcomes
    retried = {name for name, state, again in outcomes if again}
    assert retried >= destinations - {"salesforce-w2l", "email"}, f"every destination retried at least once: {outcomes}"
    assert any(request.status == 503 for request in acs.requests), "ACS failed once (the SDK's own retry took it)"

    assert "NOT LOOPBACK" not in stderr, stderr
    # The test means something only if the exporter sent what it sees: a dependency per service.
    targets = " ".join(
        str(item["data"]["baseData"].get("target", "")) for item in insights.of_type("RemoteDependencyData")
    )
    for service, service_port in service_ports.items():
        assert f":{service_port}" in targets, f"no dependency to {service} in {targets}"
    assert insights.of_type("MessageData"), "the app's log lines were exported"

    sent = "\n".join(insights.bodies).lower()
    leaked_secrets = sorted(name for name, value in secrets.items() if any(form in sent for form in variants(value)))
    leaked_personal = sorted(value for value in PERSONAL if any(form in sent for form in variants(value)))
    assert not leaked_secrets and not leaked_personal, f"in the telemetry: {leaked_secrets} {leaked_personal}"


def _served_app() -> tuple[Served, str]:
    """The app served as in Azure by a process of its own (no connection beyond loopback), once it
    answers: (the process, its /api base URL)."""
    code = (
        "import tests.loopback_only\nfrom leads.cli import main\n"
        "raise SystemExit(main(['--settings', '/nonexistent', 'serve', '--port', '0']))"
    )
    served = Served([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ))
    base = f"{served.url}/api"
    try:
        wait_for(lambda: _answers(f"{base}/health"), 60, "the app answering")
    except TimeoutError:
        served.stop()
        raise
    return served, base


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=10).status_code == 200
    except (requests.ConnectionError, requests.Timeout):  # a first health check on a loaded machine can take seconds
        return False


def test_the_alert_rules_and_the_workbook_name_only_what_the_app_sends(storage, env, fake_tls_ca, tmp_path):
    """The app runs as in Azure, through each path the queries count: a lead by HTTP and one from the
    table, deliveries retried, delivered and failed, polls and sweeps, a function failing, a message
    in the poison queue, an offer gone quiet. Every table, column, event name and property the
    alert rules and the workbook name must be in what the exporter sent."""
    from datetime import UTC, datetime, timedelta

    from leads.core.normalise import from_http_body
    from leads.core.storage import queue_service, table_service
    from leads.delivery.queue import delivery_queue
    from leads.intake.silence import arrived

    from .kql import COLUMNS, TABLES, names_in, path_in, queries
    from .test_poll import ENTITY

    wanted = {
        "LeadReceived",
        "DeliveryOutcome",
        "PollDone",
        "SweepDone",
        "FunctionFailed",
        "PoisonMessages",
        "LeadsSilent",
    }
    with FakeAppInsights() as insights, FakeWebhook() as webhook, FakeAcs(ca=fake_tls_ca) as acs:
        queue = f"q{uuid.uuid4().hex[:12]}"
        env(
            APPLICATIONINSIGHTS_CONNECTION_STRING=insights.connection_string(),
            **QUIET_EXPORTER,
            TMPDIR=str(tmp_path),
            REQUESTS_CA_BUNDLE=acs.ca_file,
            NO_PROXY="127.0.0.1,localhost",
            LEADS_DELIVERY_QUEUE=queue,
            LEADS_RETRY_BASE_SECONDS="0.2",
            LEADS_HTTP_TIMEOUT_SECONDS="3",
            LEADS_ALERT_TO="ops@contoso.com",
            EMAIL_TO="",
            EMAIL_CONNECTION_STRING=acs.connection_string,
            EMAIL_SENDER=DEFAULT_SENDER,
            **webhook.settings(),
            LEADS_POLL_SCHEDULE="*/2 * * * * *",
            LEADS_SWEEP_SCHEDULE="*/3 * * * * *",
        )
        webhook.faults = ["503", "410"]  # one attempt retried, one lead failed for good
        store = LeadStore.from_settings()
        store.ensure_tables()
        marketplace = table_service(storage.connection_string).get_table_client(os.environ["MARKETPLACE_TABLE_NAME"])
        marketplace.create_table()
        marketplace.create_entity({**ENTITY, "PartitionKey": f"{datetime.now(UTC):%Y-%m-%d}", "RowKey": "row-1"})
        quiet = lead_body(OTHER, "quiet") | {"OfferTitle": "Quiet Offer", "LeadSource": "AzureMarketplace-INS|c.quiet"}
        for ago in (40, 35, 30, 25):  # an offer whose leads stopped 25 days ago
            arrived(store, from_http_body(quiet, received_at=datetime.now(UTC) - timedelta(days=ago)))
        poison = queue_service(storage.connection_string).get_queue_client(f"{queue}-poison")
        poison.create_queue()
        poison.send_message("a message the host gave up on")
        # A delivery row missing its state: its worker raises, as a bug or a corrupted row would.
        store.leads.create_entity(
            {"PartitionKey": "hbrokenrow000000000000000", "RowKey": "delivery|webhook", "Destination": "webhook"}
        )
        delivery_queue().send("hbrokenrow000000000000000", "webhook")

        served, base = _served_app()
        try:
            for person, description in zip((PERSON, OTHER), DESCRIPTIONS, strict=True):
                answer = requests.post(f"{base}/leads", json=lead_body(person, description), timeout=10)
                assert answer.status_code == 202

            def sent() -> set[str]:
                return {item["data"]["baseData"]["name"] for item in insights.of_type("EventData")}

            wait_for(lambda: wanted <= sent() and open_deliveries() == 0, 120, f"the events {sorted(wanted)}")
        finally:
            served.stop()
    assert "NOT LOOPBACK" not in served.text, served.text

    events = insights.of_type("EventData")
    outcomes = {
        item["data"]["baseData"]["properties"].get("outcome")
        for item in events
        if item["data"]["baseData"]["name"] == "DeliveryOutcome"
    }
    assert {"delivered", "failed", "retrying"} <= outcomes
    channels = {
        item["data"]["baseData"]["properties"]["channel"]
        for item in events
        if item["data"]["baseData"]["name"] == "LeadReceived"
    }
    assert channels == {"http", "table"}
    by_type = {base_type: insights.of_type(base_type) for base_type in TABLES.values()}
    for where, query in queries():
        names = names_in(query)
        assert not names.unknown, f"{where} uses words that are no column, KQL or alias: {names.unknown}"
        envelopes = by_type[TABLES[names.table]]
        assert envelopes, f"{where} reads {names.table}, and the app sent none of it"
        for column in names.columns:
            assert any(path_in(item, COLUMNS[names.table][column]) for item in envelopes), f"{where}: {column}"
        named = {item["data"]["baseData"]["name"] for item in envelopes}
        assert names.events <= named, f"{where} counts events the app never sent: {names.events - named}"
        properties = {
            key
            for item in envelopes
            if item["data"]["baseData"]["name"] in names.events
            for key in item["data"]["baseData"].get("properties", {})
        }
        assert names.properties <= properties, f"{where} reads properties never sent: {names.properties - properties}"
