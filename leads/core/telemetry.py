"""Telemetry: logs and traces to Application Insights, a ``leadId`` on every lead's log lines, and
no personal data in any of them.

- :func:`configure_telemetry` is called once when ``function_app`` is imported. Only when
  ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set (in Azure) does it import
  ``azure-monitor-opentelemetry`` and call ``configure_azure_monitor``, with the app's managed
  identity when ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` says ``Authorization=AAD`` (the
  Bicep template turns local auth off). Locally and in tests it imports nothing heavy: cold start
  stays cheap. Either way it installs the redaction below.
- A lead's journey (intake, each delivery attempt, its outcome) is found by ``leadId``: log
  through :func:`lead_logger` (or pass ``extra=lead_extra(lead_id)``) and the id becomes a custom
  dimension in Application Insights (``traces | where customDimensions.leadId == "..."``).
  Dimension values are ids and codes (``leadId``, ``destination``, ``attempt``, ``outcome``),
  never personal data.
- :class:`RedactingFilter` is the last line of defence: email addresses, phone-number-like
  strings and the secret parts of URLs in a log message, its arguments, string custom dimensions or
  an exception's text are replaced before any handler sees them. Code should not log personal data
  in the first place; this catches what slips through (an exception message quoting a field, a
  CRM's error body).
- :func:`mask_url` is the one place a URL loses its secret parts (userinfo, query values, the
  path of Slack, Zapier, Teams or Discord hooks, token-like path segments): telemetry, ``check``
  and alerts all print URLs through it.
- :class:`TelemetryScrubber` is the one place every exported telemetry item passes through, as a
  span processor and a log record processor handed to ``configure_azure_monitor`` ahead of its
  exporters (and of live metrics). The requests, urllib3 and Azure SDK instrumentations record
  every outgoing URL, query string included (Marketo's token request, Salesforce's SOQL look-up by
  email): spans leave with their URLs masked, their database statements and query attributes
  dropped, and their names, attributes, events and exception texts redacted as log lines are; log
  records leave with their body and attributes redacted the same way. Configured secret values
  (client secrets, tokens, keys) are masked wherever they appear, whatever the pattern.
"""

from __future__ import annotations

import json
import logging
import os
import re
import traceback
from collections.abc import Mapping
from typing import Any

APP_LOGGER = "leads"
"""The app's loggers (``logging.getLogger(__name__)`` in ``leads``) are all under this name; only
they are exported through OpenTelemetry, so the host's and SDKs' own logs are not sent twice."""

EMAIL_MASK = "[email]"
PHONE_MASK = "[phone]"

_EMAIL = re.compile(
    r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
# A phone-number-like run: optional +, optional (, digits with spaces, dots, dashes and brackets
# between them, not glued to a word, a path, a version or a date around it.
_PHONE = re.compile(r"(?<![\w+./\\-])\+?\(?\d[\d ().-]{5,}\d(?![\w@-])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NOT_A_PHONE = re.compile(r"\d+\.\d+|\d{1,3}(?:\.\d{1,3}){3}")  # 3.14159265, 192.168.100.200


def _phone_or_keep(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(ch.isdigit() for ch in text)
    if not 7 <= digits <= 15 or _DATE.search(text) or _NOT_A_PHONE.fullmatch(text):
        return text
    if text.isdigit() and digits < 9:  # a bare count or duration, not a phone number
        return text
    return PHONE_MASK


def redact(text: str) -> str:
    """``text`` with the secret parts of URLs, email addresses and phone-number-like strings masked."""
    if not text:
        return text
    return _PHONE.sub(_phone_or_keep, _EMAIL.sub(EMAIL_MASK, mask_urls(text)))


# --- URLs: their secret parts masked ---------------------------------------------------------------

SECRET_MASK = "***"
# Hooks whose path is the secret: whoever knows the URL can post to the channel.
_HOOK_HOSTS = ("hooks.slack.com", "hooks.zapier.com", "webhook.office.com", "discord.com", "discordapp.com")
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s<>\"'`]+")
_TOKEN_LIKE = re.compile(r"(?=.*[a-z])(?=.*[A-Z])(?=.*\d)[A-Za-z0-9_~.=+/-]{20,}")


def _secret_segment(segment: str) -> bool:
    """A path segment that may be a credential or a person: an email address, or a long random
    mixed-case token. Ids of ours (lead ids, GUIDs, lowercase hex) are kept."""
    return "@" in segment or "%40" in segment.lower() or bool(_TOKEN_LIKE.fullmatch(segment))


def mask_url(url: str) -> str:
    """``url`` with whatever may be secret masked: the user and password, every query value (names
    are kept: ``?sig=***&sv=***``), the fragment, the path of a hook whose path is its secret
    (``https://hooks.slack.com/services/***``) and path segments that look like tokens or email
    addresses. Works on relative URLs (``/path?query``) too; anything else comes back unchanged."""
    from urllib.parse import parse_qsl, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = parts.netloc.rpartition("@")[2]
    except ValueError:
        return url
    if "@" in parts.netloc:
        netloc = f"{SECRET_MASK}@{netloc}"
    segments = parts.path.split("/")
    if any(host == hook or host.endswith("." + hook) for hook in _HOOK_HOSTS):
        kept = 2 if parts.path.startswith("/") else 1  # "" and the first segment (/services, /hooks)
        segments = segments[:kept] + ([SECRET_MASK] if len(segments) > kept else [])
    else:
        segments = [SECRET_MASK if _secret_segment(segment) else segment for segment in segments]
    query = "&".join(f"{name}={SECRET_MASK}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    if parts.query and not query:
        query = SECRET_MASK  # a query that is not name=value pairs: all of it may be secret
    fragment = SECRET_MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, "/".join(segments), query, fragment))


def mask_urls(text: str) -> str:
    """``text`` with every absolute URL in it passed through :func:`mask_url`."""
    if "://" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        trail = len(url) - len(url.rstrip(".,;:!?)]}"))
        return mask_url(url[: len(url) - trail]) + url[len(url) - trail :]

    return _URL_IN_TEXT.sub(one, text)


_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_DONE = "_leads_redacted"


def redact_record(record: logging.LogRecord) -> None:
    """Mask personal data in ``record`` in place: message and arguments, exception text, stack
    text and string-valued custom dimensions. Safe to call more than once."""
    if not getattr(record, _DONE, False):
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it at emit time, as usual
            message = None
        if message is not None:
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            clean = redact(text)
            if clean != text:
                # The exception object itself would be exported as is: keep only its masked text.
                record.msg, record.args = f"{record.getMessage()}\n{clean}", None
                record.exc_info, record.exc_text = None, None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        setattr(record, _DONE, True)
    # Custom dimensions (extra=...) are set after the record is created: look at them every time.
    for name, value in vars(record).items():
        if name not in _STANDARD_ATTRIBUTES and isinstance(value, str) and name != _DONE:
            clean = redact(value)
            if clean != value:
                setattr(record, name, clean)


class RedactingFilter(logging.Filter):
    """A logging filter that masks personal data in every record it sees and lets it through."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_FILTER = RedactingFilter()
_base_factory: Any = None


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = (_base_factory or logging.LogRecord)(*args, **kwargs)
    redact_record(record)
    return record


def install_redaction() -> None:
    """Redact every log record of this process. Filters on a logger do not see records that
    propagate from its children, so the redaction is installed where every record passes: the
    record factory (message, arguments, exception: all known at creation), plus a filter on the
    root and app loggers and their handlers (custom dimensions, added after creation). Idempotent."""
    global _base_factory
    if logging.getLogRecordFactory() is not _redacting_factory:
        _base_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_redacting_factory)
    for logger in (logging.getLogger(), logging.getLogger(APP_LOGGER)):
        for target in (logger, *logger.handlers):
            if _FILTER not in target.filters:
                target.addFilter(_FILTER)


def uninstall_redaction() -> None:
    """Undo :func:`install_redaction` (for tests)."""
    global _base_factory
    if logging.getLogRecordFactory() is _redacting_factory and _base_factory is not None:
        logging.setLogRecordFactory(_base_factory)
        _base_factory = None
    for logger in (logging.getLogger(), logging.getLogger(APP_LOGGER)):
        for target in (logger, *logger.handlers):
            target.removeFilter(_FILTER)


# --- leadId on every lead log line ---------------------------------------------------------------


def lead_extra(lead_id: str, **dimensions: Any) -> dict[str, Any]:
    """``extra=`` for a log call about one lead: ``log.info("...", extra=lead_extra(lead.lead_id))``."""
    return {"leadId": lead_id, **dimensions}


class LeadLogger(logging.LoggerAdapter):
    """A logger whose every record carries the lead's id (and any other dimensions given), merged
    with the call's own ``extra``."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def lead_logger(logger: logging.Logger | str, lead_id: str, **dimensions: Any) -> LeadLogger:
    """``log = lead_logger(__name__, lead.lead_id, destination="dynamics")``, then ``log.info(...)``."""
    if isinstance(logger, str):
        logger = logging.getLogger(logger)
    return LeadLogger(logger, lead_extra(lead_id, **dimensions))


# --- Custom events: what the alert rules and the workbook count ------------------------------------

EVENT_NAME = "microsoft.custom_event.name"  # the log attribute the exporter makes a custom event of
EVENTS_LOGGER = APP_LOGGER + ".events"


def event(name: str, **properties: Any) -> None:
    """Send the custom event ``name`` to Application Insights (``customEvents``; ``AppEvents`` in the
    workspace), with ``properties`` as text: ids, codes, counts, never personal data (the scrubber
    masks what slips through). A log record carrying the ``microsoft.custom_event.name`` attribute is
    what the Azure Monitor exporter sends as an event, not as a trace. Nothing when Application
    Insights is not configured: locally the log lines say the same. The alert rules and the workbook
    (infra/app/alerts.bicep, infra/app/workbook.json) query these names; tests/test_telemetry_export.py
    checks that every name they use is one the running app sends."""
    if not _configured:
        return
    extra = {key: str(value) for key, value in properties.items() if value is not None}
    logging.getLogger(EVENTS_LOGGER).info(name, extra={EVENT_NAME: name, **extra})


def reported(function: Any) -> Any:
    """Wrap a Functions entry point so that a failure is told (a ``FunctionFailed`` event and an
    error line: its kind, never its text) before it goes on to the host, which retries or poisons
    as before. The alert rule on function failures counts these."""
    import functools

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            logging.getLogger(APP_LOGGER).error("function %s failed: %s", function.__name__, type(exc).__name__)
            event("FunctionFailed", function=function.__name__, error=type(exc).__name__)
            raise

    return run


# --- Everything exported: spans and log records --------------------------------------------------

# Attributes that hold a URL, or part of one (semantic conventions old and new).
_URL_ATTRIBUTES = frozenset({"http.url", "url.full", "http.target", "url.path", "http.route", "url.original"})
# Attributes whose whole value may be a query or a statement with the customer in it: dropped.
_DROPPED_ATTRIBUTES = frozenset(
    {"url.query", "db.statement", "db.query.text", "db.query.parameter", "http.request.body", "http.response.body"}
)
# Settings whose values are secrets (by their name), and the parts of connection strings that are.
_SECRET_SETTING = re.compile(r"secret|token|password|key|connection|AzureWebJobsStorage$", re.IGNORECASE)
_SECRET_PART = re.compile(r"(?:accountkey|accesskey|sharedaccesskey|sharedaccesssignature|password)=([^;]+)", re.I)
_MIN_SECRET_LENGTH = 8  # shorter values would mask ordinary words
# Settings holding URLs that carry their secret (a Slack hook's path, a Teams workflow's sig=):
# every path segment and query value of theirs long enough to be one is masked.
_SECRET_URL_SETTING = re.compile(r"WEBHOOK_URL|_CHANNELS$", re.IGNORECASE)


def _secret_url_parts(value: str) -> set[str]:
    from urllib.parse import parse_qsl, urlsplit

    try:
        urls = list(json.loads(value).values()) if value.lstrip().startswith("{") else [value]
    except (ValueError, AttributeError):
        urls = [value]
    parts: set[str] = set()
    for url in urls:
        split = urlsplit(str(url))
        parts.update(segment for segment in split.path.split("/") if len(segment) >= 16)
        parts.update(item for _, item in parse_qsl(split.query) if len(item) >= _MIN_SECRET_LENGTH)
    return parts


_secrets_of: tuple[Any, tuple[str, ...]] = (None, ())  # (the settings object, its secret values)


def secret_values(settings: Any = None) -> tuple[str, ...]:
    """The secret values the app is configured with (client secrets, tokens, the keys inside
    connection strings), longest first, for :meth:`TelemetryScrubber.text` to mask wherever they
    appear. Read from the process's settings when none are given, once per settings object (an
    unreadable configuration masks nothing here: the patterns still apply)."""
    global _secrets_of
    try:
        if settings is None:
            from leads.core.settings import get_settings

            settings = get_settings()
        if _secrets_of[0] is settings:
            return _secrets_of[1]
        values: set[str] = set()
        for name, field in type(settings).model_fields.items():
            value = str(getattr(settings, name) or "")
            if value.startswith("@Microsoft.KeyVault("):
                continue
            if _SECRET_URL_SETTING.search(field.alias or name):
                values.update(_secret_url_parts(value))
            if not _SECRET_SETTING.search(field.alias or name):
                continue
            parts = _SECRET_PART.findall(value) if "=" in value and ";" in value else [value]
            values.update(part for part in parts if len(part) >= _MIN_SECRET_LENGTH)
    except Exception:  # telemetry never breaks the app
        return ()
    _secrets_of = (settings, tuple(sorted(values, key=len, reverse=True)))
    return _secrets_of[1]


class TelemetryScrubber:
    """The one place all exported telemetry passes through. :func:`scrubbing_processors` wraps it
    as a span processor and a log record processor, handed to ``configure_azure_monitor`` so that
    they run before its exporters, its live metrics and its performance counters see anything.

    Spans are immutable once ended, and attributes set after they start (status codes, exception
    events) are only known then; so, as Microsoft documents for modifying spans with the distro (a
    span processor whose ``on_end`` sets ``span._name`` and ``span._attributes``), :meth:`end_span`
    gives the very ``ReadableSpan`` the exporters receive next a scrubbed name, attributes and
    events. :meth:`start_span` masks what is known at start through the public API, for samplers
    and anything reading live spans."""

    def __init__(self, secrets: Any = secret_values) -> None:
        self._secrets = secrets  # a callable: the values as configured now

    def text(self, text: str) -> str:
        for secret in self._secrets():
            if secret in text:
                text = text.replace(secret, SECRET_MASK)
        return redact(text)

    def value(self, key: str, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(mask_url(value) if key in _URL_ATTRIBUTES else value)
        if isinstance(value, (tuple, list)):
            return type(value)(self.value(key, item) for item in value)
        return value

    def attributes(self, attributes: Mapping[str, Any] | None) -> dict[str, Any]:
        return {
            key: self.value(key, value)
            for key, value in (attributes or {}).items()
            if key not in _DROPPED_ATTRIBUTES and key != _DONE
        }

    def start_span(self, span: Any) -> None:
        for key, value in list((span.attributes or {}).items()):
            clean = SECRET_MASK if key in _DROPPED_ATTRIBUTES else self.value(key, value)
            if clean != value:
                span.set_attribute(key, clean)

    def end_span(self, span: Any) -> None:
        from opentelemetry.attributes import BoundedAttributes
        from opentelemetry.sdk.trace import Event
        from opentelemetry.sdk.util import BoundedList

        try:
            span._name = self.text(span.name)
            span._attributes = BoundedAttributes(attributes=self.attributes(span.attributes), immutable=True)
            events = [
                Event(
                    event.name,
                    BoundedAttributes(attributes=self.attributes(event.attributes), immutable=True),
                    event.timestamp,
                )
                for event in span.events
            ]
            span._events = BoundedList.from_seq(max(len(events), 1), events)
        except Exception:  # a span that cannot be scrubbed is not exported: it leaves unsampled
            from opentelemetry.trace import SpanContext, TraceFlags

            context = span.context
            span._context = SpanContext(
                context.trace_id,
                context.span_id,
                context.is_remote,
                TraceFlags(TraceFlags.DEFAULT),
                context.trace_state,
            )

    def emit_log(self, log_record: Any) -> None:
        record = log_record.log_record
        if isinstance(record.body, str):
            record.body = self.text(record.body)
        if not record.attributes:
            return
        clean = self.attributes(record.attributes)
        for key in list(record.attributes):
            if key not in clean:
                del record.attributes[key]
            elif clean[key] != record.attributes[key]:
                record.attributes[key] = clean[key]


def scrubbing_processors(scrubber: TelemetryScrubber | None = None) -> tuple[Any, Any]:
    """(span processor, log record processor) that pass everything through ``scrubber``. Defined
    here, not at import: OpenTelemetry is imported only when Application Insights is configured."""
    from opentelemetry.sdk._logs import LogRecordProcessor
    from opentelemetry.sdk.trace import SpanProcessor

    scrubber = scrubber or TelemetryScrubber()

    class ScrubbingSpanProcessor(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            scrubber.start_span(span)

        def on_end(self, span: Any) -> None:
            scrubber.end_span(span)

    class ScrubbingLogRecordProcessor(LogRecordProcessor):
        def on_emit(self, log_record: Any) -> None:
            scrubber.emit_log(log_record)

        emit = on_emit  # the name SDKs before 1.39 call

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return ScrubbingSpanProcessor(), ScrubbingLogRecordProcessor()


# --- Application Insights ------------------------------------------------------------------------

_configured = False


def _aad_client_id(auth_string: str) -> tuple[bool, str | None]:
    """(uses Entra ID, client id) from ``ClientId=<id>;Authorization=AAD``."""
    parts = {}
    for item in auth_string.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            parts[key.strip().lower()] = value.strip()
    return parts.get("authorization", "").upper() == "AAD", parts.get("clientid") or None


def configure_telemetry(environ: Mapping[str, str] | None = None) -> bool:
    """Install the redaction and, when Application Insights is configured, send the app's logs and
    traces there. Returns whether Azure Monitor was configured (now or by an earlier call)."""
    global _configured
    env = os.environ if environ is None else environ
    install_redaction()
    connection_string = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "")
    if _configured or not connection_string:
        return _configured

    try:
        from azure.monitor.opentelemetry import configure_azure_monitor

        span_scrubber, log_scrubber = scrubbing_processors()
        options: dict[str, Any] = {
            "connection_string": connection_string,
            "logger_name": APP_LOGGER,
            "span_processors": [span_scrubber],
            "log_record_processors": [log_scrubber],
        }
        uses_aad, client_id = _aad_client_id(env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", ""))
        if uses_aad:
            from azure.identity import ManagedIdentityCredential

            options["credential"] = ManagedIdentityCredential(client_id=client_id)
        configure_azure_monitor(**options)
    except Exception:
        # Telemetry must never keep leads out: the app runs on, its logs still reach the host's
        # own Application Insights pipeline.
        logging.getLogger(__name__).exception("Application Insights (OpenTelemetry) could not be configured")
        return False

    app_logger = logging.getLogger(APP_LOGGER)
    if app_logger.level == logging.NOTSET:
        app_logger.setLevel(logging.INFO)
    install_redaction()  # again: configure_azure_monitor added its handler to the app logger
    _configured = True
    return True
