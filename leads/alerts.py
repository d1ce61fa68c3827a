"""The mail operators get when a delivery fails: which lead, which destination, why, what fixes it
and how to replay it. It carries no personal data of the customer (only the lead id), and a
failure to send it is logged and swallowed: an alert must never break the delivery it reports.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from .telemetry import mask_urls

if TYPE_CHECKING:
    from .deliveries import Delivery
    from .settings import Settings

log = logging.getLogger(__name__)

# Destinations' errors should not quote personal data, but a CRM's validation message may echo a
# value (``duplicate value found: jane@contoso.com``): such things are blanked out of alerts.
_EMAIL = re.compile(r"[^\s@<>()\[\]\"',;:]+@[^\s@<>()\[\]\"',;:]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<![\w.:-])\+?\d[\d ().-]{6,}\d(?![\w:-])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}.*)?")


def scrub(text: str) -> str:
    """``text`` with anything that looks like an email address or a phone number blanked out."""

    def number(match: re.Match[str]) -> str:
        value = match.group(0)
        if sum(ch.isdigit() for ch in value) < 8 or _DATE.fullmatch(value.strip()):
            return value
        return "[number removed]"

    return _PHONE.sub(number, _EMAIL.sub("[address removed]", text))


def failure_alert_text(delivery: Delivery) -> tuple[str, str]:
    """The subject and body of the alert about a failed ``delivery``."""
    lead, name = delivery.lead_id, delivery.destination
    error = scrub(mask_urls(delivery.last_error or "no error was recorded"))
    reason, _, fix = error.partition(" — ")
    subject = f"Lead delivery failed: {name} for lead {lead}"
    lines = [
        f"A lead could not be delivered to {name}, and will not be retried until it is replayed.",
        "",
        f"Lead:        {lead}",
        f"Destination: {name}",
        f"Attempts:    {delivery.attempts}",
        f"Error:       {reason.strip()}",
    ]
    if fix.strip():
        lines.append(f"Fix:         {fix.strip()}")
    lines += [
        "",
        "Once it is fixed, deliver it again:",
        f"    python -m leads replay --lead {lead} --destination {name}",
        "See the lead and its deliveries:",
        f"    python -m leads show {lead}",
        "All failures:",
        "    python -m leads status",
        "",
        "This alert holds no personal data of the customer; the lead store has the lead.",
    ]
    return subject, "\n".join(lines) + "\n"


def send_failure_alert(delivery: Delivery, settings: Settings) -> bool:
    """Mail ``LEADS_ALERT_TO`` about a failed delivery. True when the mail went out; a failure
    to send it is logged (without personal data) and otherwise ignored."""
    from .routing import split_addresses

    to = split_addresses(settings.alert_to)
    if not to:
        return False
    subject, text = failure_alert_text(delivery)
    stamp = delivery.updated_at.isoformat() if delivery.updated_at else ""
    key = f"alert|{delivery.lead_id}|{delivery.destination}|{delivery.attempts}|{stamp}"
    try:
        from .destinations.email import send_operator_mail

        send_operator_mail(settings, to, subject, text, key=key)
    except Exception as exc:  # noqa: BLE001 - best effort, by design
        explain = getattr(exc, "explain", None)
        reason = scrub(explain()) if callable(explain) else type(exc).__name__
        log.warning("alert about lead %s to %s not sent: %s", delivery.lead_id, delivery.destination, reason)
        return False
    log.info("alert sent about lead %s to %s", delivery.lead_id, delivery.destination)
    return True
