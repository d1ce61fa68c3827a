"""leads.core.telemetry: Azure Monitor only when configured, leadId dimensions, PII redaction."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

from leads.core import telemetry
from leads.core.telemetry import (
    EMAIL_MASK,
    PHONE_MASK,
    RedactingFilter,
    configure_telemetry,
    lead_extra,
    lead_logger,
    redact,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_logging():
    """Each test starts and ends without the redaction installed and with telemetry unconfigured."""
    factory, base = logging.getLogRecordFactory(), telemetry._base_factory
    telemetry.uninstall_redaction()
    telemetry._configured = False
    yield
    telemetry.uninstall_redaction()
    telemetry._configured = False
    # Put back what the process had (function_app, once imported, installs the redaction).
    logging.setLogRecordFactory(factory)
    telemetry._base_factory = base


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured():
    """A handler on the app logger, as Application Insights' handler would be."""
    handler = ListHandler()
    logger = logging.getLogger("leads.test_telemetry")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


# --- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "mail jane.doe+leads@contoso.com now",
        "MSFT_TEST_636573304831142155@test.com",
        "customer <ADA@Example.co.uk>",
    ],
)
def test_redact_masks_email_addresses(text):
    out = redact(text)
    assert "@" not in out.replace(EMAIL_MASK, "")
    assert EMAIL_MASK in out


@pytest.mark.parametrize(
    "text",
    [
        "call +14255550123",
        "call +1 (425) 555-0123 today",
        "tel: (425) 555-0123",
        "425.555.0123",
        "+44 20 7946 0958",
        "phone 4255550123",
        "+33 6 12 34 56 78",
    ],
)
def test_redact_masks_phone_numbers(text):
    out = redact(text)
    assert PHONE_MASK in out
    assert not any(run in out for run in ("555", "7946", "12 34"))


@pytest.mark.parametrize(
    "text",
    [
        "lead t3f9a0c2b41d5e6f7a8b9c0d1 stored",
        "lead h0123456789abcdef01234567 duplicate",
        "poll of MarketplaceLeads: read 12, stored 10, already stored 2, rejected 0",
        "watermark 2024-05-01 12:30:45.123456+00:00",
        "watermark 2024-05-01T12:30:45Z",
        "request 3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "retry in 1800 seconds, attempt 3 of 12",
        "took 1234567 us",
        "version 1.2.3 from 10.0.0.1 and 192.168.100.200",
        "MSFT_TEST_636573304831142155",
        "schedule */30 * * * * *",
        "@Microsoft.KeyVault(SecretUri=https://kv-x.vault.azure.net/secrets/dynamics-client-secret)",
    ],
)
def test_redact_keeps_ids_counts_dates_and_settings(text):
    assert redact(text) == text


def test_filter_redacts_message_arguments_dimensions_and_exceptions(captured):
    logger, handler = captured
    handler.addFilter(RedactingFilter())
    try:
        raise ValueError("invalid email 'bob@contoso.com'")
    except ValueError:
        logger.exception("lead %s refused: %s", "t123", "call +1 425 555 0123", extra={"note": "bob@contoso.com"})
    (record,) = handler.records
    text = handler.format(record)
    assert "bob@contoso.com" not in text and "555" not in text
    assert "t123" in record.getMessage() and EMAIL_MASK in record.getMessage() and PHONE_MASK in record.getMessage()
    assert record.exc_info is None, "the exception object carried PII: only its masked text is kept"
    assert "ValueError" in record.getMessage()
    assert record.note == EMAIL_MASK


def test_filter_keeps_clean_records_and_their_exceptions(captured):
    logger, handler = captured
    handler.addFilter(RedactingFilter())
    try:
        raise TimeoutError("dynamics timed out after 30 s")
    except TimeoutError:
        logger.exception("lead %s: delivery failed", "t123")
    (record,) = handler.records
    assert record.msg == "lead %s: delivery failed" and record.args == ("t123",)
    assert record.exc_info is not None


def test_installed_redaction_covers_records_from_any_logger(captured):
    logger, handler = captured  # this handler has no filter of its own
    telemetry.install_redaction()
    telemetry.install_redaction()  # idempotent
    logging.getLogger("leads.some.module").propagate = True
    logger.warning("customer %s", "jane@contoso.com")
    assert handler.records[-1].getMessage() == f"customer {EMAIL_MASK}"
    assert telemetry._FILTER in logging.getLogger().filters


# --- leadId dimension --------------------------------------------------------------------------


def test_lead_logger_puts_lead_id_on_every_record(captured):
    logger, handler = captured
    log = lead_logger(logger, "t42", destination="dynamics")
    log.info("delivered")
    log.warning("retrying", extra={"attempt": 2})
    first, second = handler.records
    assert (first.leadId, first.destination) == ("t42", "dynamics")
    assert (second.leadId, second.destination, second.attempt) == ("t42", "dynamics", 2)


def test_lead_extra_is_the_plain_convention(captured):
    logger, handler = captured
    logger.info("stored", extra=lead_extra("t7", outcome="stored"))
    assert handler.records[0].leadId == "t7" and handler.records[0].outcome == "stored"


# --- Azure Monitor -----------------------------------------------------------------------------


@pytest.fixture
def fake_azure_monitor(monkeypatch):
    """Stands in for azure.monitor.opentelemetry (a call that needs Azure) and records its arguments."""
    calls: list[dict] = []
    module = types.ModuleType("azure.monitor.opentelemetry")
    module.configure_azure_monitor = lambda **kwargs: calls.append(kwargs)
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry", module)
    return calls


@pytest.fixture
def fake_managed_identity(monkeypatch):
    import azure.identity

    class FakeManagedIdentityCredential:
        def __init__(self, client_id=None, **kwargs):
            self.client_id = client_id

    monkeypatch.setattr(azure.identity, "ManagedIdentityCredential", FakeManagedIdentityCredential)
    return FakeManagedIdentityCredential


def test_nothing_is_configured_without_a_connection_string(fake_azure_monitor):
    assert configure_telemetry({}) is False
    assert fake_azure_monitor == []
    assert telemetry._FILTER in logging.getLogger().filters, "redaction is installed regardless"


def test_configures_azure_monitor_with_the_managed_identity(fake_azure_monitor, fake_managed_identity):
    env = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "ClientId=11111111-2222-3333-4444-555555555555;Authorization=AAD",
    }
    assert configure_telemetry(env) is True
    (kwargs,) = fake_azure_monitor
    assert kwargs["connection_string"] == env["APPLICATIONINSIGHTS_CONNECTION_STRING"]
    assert kwargs["logger_name"] == "leads"
    assert kwargs["span_processors"] and kwargs["log_record_processors"], "all telemetry passes the scrubber"
    assert isinstance(kwargs["credential"], fake_managed_identity)
    assert kwargs["credential"].client_id == "11111111-2222-3333-4444-555555555555"
    assert configure_telemetry(env) is True and len(fake_azure_monitor) == 1, "configured once per process"


def test_without_aad_no_credential_is_passed(fake_azure_monitor):
    assert configure_telemetry({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"}) is True
    (kwargs,) = fake_azure_monitor
    assert "credential" not in kwargs


def test_system_assigned_identity_when_no_client_id(fake_azure_monitor, fake_managed_identity):
    env = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=AAD",
    }
    configure_telemetry(env)
    assert fake_azure_monitor[0]["credential"].client_id is None


def test_a_failing_configuration_never_breaks_the_app(monkeypatch, caplog):
    module = types.ModuleType("azure.monitor.opentelemetry")

    def broken(**kwargs):
        raise ValueError("bad connection string")

    module.configure_azure_monitor = broken
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry", module)
    assert configure_telemetry({"APPLICATIONINSIGHTS_CONNECTION_STRING": "nonsense"}) is False
    assert "could not be configured" in caplog.text


def test_no_heavy_import_without_the_setting():
    """Cold start: without APPLICATIONINSIGHTS_CONNECTION_STRING, configuring telemetry imports
    neither the Azure Monitor distro, OpenTelemetry nor azure.identity."""
    code = (
        "import json, sys\n"
        "from leads.core.telemetry import configure_telemetry\n"
        "configure_telemetry()\n"
        "heavy = [m for m in sys.modules if m.startswith(('azure.monitor', 'opentelemetry', 'azure.identity'))]\n"
        "print(json.dumps(heavy))\n"
    )
    env = {"PATH": "", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


# --- URLs and the telemetry scrubber -------------------------------------------------------------


@pytest.mark.parametrize(
    "url, masked",
    [
        (
            "https://prod-12.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=Zx9fake",
            "https://prod-12.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=***&sp=***&sv=***&sig=***",
        ),
        (
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            "https://hooks.slack.com/services/***",
        ),
        ("https://hooks.zapier.com/hooks/catch/123456/abcdef/", "https://hooks.zapier.com/hooks/***"),
        (
            "https://contoso.webhook.office.com/webhookb2/1111@2222/IncomingWebhook/abc/def",
            "https://contoso.webhook.office.com/webhookb2/***",
        ),
        ("https://user:p4ss@receiver.example.com/hook", "https://***@receiver.example.com/hook"),
        (
            "https://x.my.salesforce.com/services/data/v59.0/query/?q=SELECT+Id+FROM+Lead+WHERE+Email+%3D+%27a%40b.com%27",
            "https://x.my.salesforce.com/services/data/v59.0/query/?q=***",
        ),
        (
            "https://api.hubapi.com/crm/v3/objects/contacts/ada%40contoso.com?idProperty=email",
            "https://api.hubapi.com/crm/v3/objects/contacts/***?idProperty=***",
        ),
        ("https://discord.com/api/webhooks/123/Ab3dEfGhIjKlMnOpQrStUvWxYz0123456789", "https://discord.com/api/***"),
        ("/api/leads?code=secret-key", "/api/leads?code=***"),
    ],
)
def test_mask_url_masks_what_may_be_secret(url, masked):
    assert telemetry.mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "https://contoso.crm4.dynamics.com",
        "https://127.0.0.1:7071/api/leads",
        "https://x.my.salesforce.com/services/data/v59.0/sobjects/Lead/Marketplace_Lead_Id__c/hc519cf8782dab51f24fabc10",
        "https://org.crm.dynamics.com/api/data/v9.2/leads(3fa85f64-5717-4562-b3fc-2c963f66afa6)",
    ],
)
def test_mask_url_keeps_urls_without_secrets(url):
    assert telemetry.mask_url(url) == url


def test_redact_masks_urls_inside_text():
    text = "POST https://hooks.slack.com/services/T0/B0/abcdefabcdefabcdefabcdef failed (timeout)."
    assert redact(text) == "POST https://hooks.slack.com/services/*** failed (timeout)."


def test_every_exported_span_is_scrubbed_names_attributes_and_exceptions():
    """A real OpenTelemetry pipeline, scrubbing processor first, as configure_azure_monitor builds it."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    secrets = ("sup3r-secret-value",)
    scrubber = telemetry.TelemetryScrubber(secrets=lambda: secrets)
    span_processor, _ = telemetry.scrubbing_processors(scrubber)
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(span_processor)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("test")
    with pytest.raises(ValueError):
        with tracer.start_as_current_span(
            "GET", attributes={"url.full": "https://m.example.com/t?client_secret=x"}
        ) as span:
            span.set_attribute("db.statement", "SELECT * FROM Lead WHERE LastName = 'Quaxwell'")
            span.set_attribute("note", "token sup3r-secret-value for jane@contoso.com")
            raise ValueError("rejected https://m.example.com/t?client_secret=x for jane@contoso.com")
    (span,) = exported.get_finished_spans()
    everything = json.dumps(
        {
            "name": span.name,
            "attributes": dict(span.attributes),
            "events": [dict(event.attributes) for event in span.events],
        }
    )
    for leaked in ("client_secret=x", "Quaxwell", "sup3r-secret-value", "jane@contoso.com"):
        assert leaked not in everything
    assert span.attributes["url.full"] == "https://m.example.com/t?client_secret=***"
    assert "db.statement" not in span.attributes
    assert span.events[0].attributes["exception.type"] == "ValueError"
    assert EMAIL_MASK in span.events[0].attributes["exception.message"]


def test_every_exported_log_record_is_scrubbed():
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    scrubber = telemetry.TelemetryScrubber(secrets=lambda: ("sup3r-secret-value",))
    _, log_processor = telemetry.scrubbing_processors(scrubber)
    exported = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(log_processor)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exported))
    from opentelemetry.instrumentation.logging.handler import LoggingHandler

    logger = logging.getLogger("leads.test_telemetry.otel")
    handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)
    try:
        logger.warning(
            "token sup3r-secret-value refused at https://h.example.com/x?code=abc",
            extra={"url": "https://h.example.com/x?sig=def", "_leads_redacted": True},
        )
    finally:
        logger.removeHandler(handler)
    (record,) = exported.get_finished_logs()
    body, attributes = record.log_record.body, dict(record.log_record.attributes)
    assert "sup3r-secret-value" not in body and "code=abc" not in body and "code=***" in body
    assert attributes["url"] == "https://h.example.com/x?sig=***" and "_leads_redacted" not in attributes


def test_secret_values_are_the_configured_secrets_and_the_keys_in_connection_strings():
    from leads.core.settings import Settings

    settings = Settings(
        DYNAMICS_CLIENT_SECRET="dyn-secret-123456",
        HUBSPOT_TOKEN="pat-na1-abcdef12",
        AzureWebJobsStorage="DefaultEndpointsProtocol=https;AccountName=st;AccountKey=c3RvcmFnZWtleQ==;",
        MARKETO_CLIENT_SECRET="@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/m)",
        WEBHOOK_SECRET="short",
        EMAIL_TO="sales@contoso.com",
    )
    assert set(telemetry.secret_values(settings)) == {"dyn-secret-123456", "pat-na1-abcdef12", "c3RvcmFnZWtleQ=="}


def test_the_secret_parts_of_channel_urls_are_secret_values():
    from leads.core.settings import Settings
    from leads.core.telemetry import secret_values

    settings = Settings(
        SLACK_WEBHOOK_URL="https://hooks.slack.com/services/T0001/B0001/XkQ2b7JmR9sLwE4tYp8vNa3C",
        TEAMS_CHANNELS='{"emea": "https://prod-1.westus.logic.azure.com/workflows/1/triggers/manual/'
        'paths/invoke?api-version=2016-06-01&sig=Zq8RkT2mW5xYb7NcLp3Vd6HsJf9Ga1Ue"}',
    )
    secrets = secret_values(settings)
    assert "XkQ2b7JmR9sLwE4tYp8vNa3C" in secrets and "Zq8RkT2mW5xYb7NcLp3Vd6HsJf9Ga1Ue" in secrets
    assert "hooks.slack.com" not in secrets and "services" not in secrets
