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
- :class:`RedactingFilter` is the last line of defence: email addresses and phone-number-like
  strings in a log message, its arguments, string custom dimensions or an exception's text are
  replaced before any handler sees them. Code should not log personal data in the first place;
  this catches what slips through (an exception message quoting a field, a CRM's error body).
"""

from __future__ import annotations

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
    """``text`` with email addresses and phone-number-like strings masked."""
    if not text:
        return text
    return _PHONE.sub(_phone_or_keep, _EMAIL.sub(EMAIL_MASK, text))


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

        options: dict[str, Any] = {"connection_string": connection_string, "logger_name": APP_LOGGER}
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
