"""The mail operators get when deliveries fail, grouped: one mail per destination and window.

A CRM outage fails hundreds of deliveries; one mail each would use up the mail service's quota
(5 a minute on an Azure-managed domain) and push lead mails into 429s. So a failed delivery is
only counted into its destination's group for the current window (``ALERT_WINDOW``, a row in the
checkpoints table changed with ETags); the sweep mails each group once its window has closed:
how many leads failed, the first lead ids, each error with its fix, and how to replay. The mail
takes a slot of the email rate limiter like any lead mail, and waits for the next sweep when there
is none. Groups are read by their one partition (only open groups are in it), never scanned with
the history.

An alert carries no personal data: the errors were masked of the leads' values when recorded, and
are masked again of anything shaped like an email or a phone number. A failure to send an alert is
logged and retried at the next sweep: an alert never breaks the delivery it reports.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .deliveries import Delivery
    from .settings import Settings
    from .store import LeadStore

log = logging.getLogger(__name__)

ALERT_WINDOW = timedelta(minutes=5)
# A window is mailed this long after it closed, so that a failure recorded at its very end is in it.
GRACE = timedelta(seconds=30)
PARTITION = "alerts"
FIRST_IDS = 10  # lead ids listed in a mail
ERRORS = 3  # distinct errors listed in a mail


def record_failure(store: LeadStore, delivery: Delivery, now: datetime) -> None:
    """Count a failed ``delivery`` into its destination's group for the window of ``now``."""
    from .storage import RowKeptChanging, change_row

    start = _window_start(now)
    key = f"{delivery.destination}|{start:%Y%m%dT%H%M}"
    reason, _, fix = (delivery.last_error or "no error was recorded").partition(" — ")

    def counted(entity: Mapping[str, Any] | None) -> dict[str, str]:
        if entity is None:
            group = {"destination": delivery.destination, "start": start.isoformat(), "count": 0, "leads": [],
                     "errors": []}  # fmt: skip
        else:
            group = json.loads(entity["Group"])
        group["count"] += 1
        if len(group["leads"]) < FIRST_IDS and delivery.lead_id not in group["leads"]:
            group["leads"].append(delivery.lead_id)
        known = next((e for e in group["errors"] if e["error"] == reason.strip()), None)
        if known is not None:
            known["count"] += 1
        elif len(group["errors"]) < ERRORS:
            group["errors"].append({"error": reason.strip(), "fix": fix.strip(), "count": 1})
        return {"Group": json.dumps(group)}

    try:
        change_row(store.checkpoints, PARTITION, key, counted, tries=20)
    except RowKeptChanging:
        log.warning("failure of lead %s to %s not counted for an alert (the group kept changing)",
                    delivery.lead_id, delivery.destination)  # fmt: skip


def flush_alerts(store: LeadStore, settings: Settings, now: datetime) -> int:
    """Mail every group whose window has closed; returns how many were mailed. A group stays
    for the next sweep when the rate limiter has no slot or the mail could not be sent."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

    from .deliver import RateLimiter
    from .routing import split_addresses

    to = split_addresses(settings.alert_to)
    sent = 0
    for entity in store.checkpoints.query_entities("PartitionKey eq @p", parameters={"p": PARTITION}):
        group = json.loads(entity["Group"])
        if datetime.fromisoformat(group["start"]) + ALERT_WINDOW + GRACE > now:
            continue
        if to:
            if RateLimiter(store, "email", settings.email_per_minute, 60.0).acquire(now) is not None:
                break  # no slot: lead mails and alerts wait alike
            if not _send(group, entity["RowKey"], to, settings):
                continue
            sent += 1
        try:
            store.checkpoints.delete_entity(PARTITION, entity["RowKey"], etag=entity.metadata["etag"],
                                            match_condition=MatchConditions.IfNotModified)  # fmt: skip
        except (ResourceModifiedError, ResourceNotFoundError):
            pass  # changed since: mailed again at the next sweep, the same mail (the same key)
    return sent


def alert_text(group: dict[str, Any]) -> tuple[str, str]:
    """The subject and body of the alert about one group of failures."""
    from .redact import mask_personal
    from .telemetry import mask_urls

    name, count = group["destination"], group["count"]
    start = datetime.fromisoformat(group["start"])
    end = start + ALERT_WINDOW
    leads = "lead" if count == 1 else "leads"
    subject = f"Lead delivery failed: {name}, {count} {leads} between {start:%H:%M} and {end:%H:%M} UTC"
    lines = [
        f"{count} {leads} could not be delivered to {name} between {start:%Y-%m-%d %H:%M} and {end:%H:%M} UTC, "
        "and will not be retried until they are replayed.",
        "",
        f"Leads: {', '.join(group['leads'])}" + (f" and {count - len(group['leads'])} more"
                                                 if count > len(group["leads"]) else ""),  # fmt: skip
        "",
    ]
    for error in group["errors"]:
        lines.append(f"Error ({error['count']}x): {mask_personal(mask_urls(error['error']))}")
        if error["fix"]:
            lines.append(f"Fix:        {mask_personal(mask_urls(error['fix']))}")
        lines.append("")
    lines += [
        "Once it is fixed, deliver them again:",
        f"    python -m leads replay --destination {name}",
        "See one lead and its deliveries:",
        f"    python -m leads show {group['leads'][0]}" if group["leads"] else "    python -m leads list",
        "All failures:",
        "    python -m leads status",
        "",
        "This alert holds no personal data of the customers; the lead store has the leads.",
    ]
    return subject, "\n".join(lines) + "\n"


def _send(group: dict[str, Any], key: str, to: tuple[str, ...], settings: Settings) -> bool:
    subject, text = alert_text(group)
    try:
        from .destinations.email import send_operator_mail

        send_operator_mail(settings, to, subject, text, key=f"alert|{key}")
    except Exception as exc:  # noqa: BLE001 - best effort, by design: tried again at the next sweep
        from .redact import mask_personal

        explain = getattr(exc, "explain", None)
        reason = mask_personal(explain()) if callable(explain) else type(exc).__name__
        log.warning("alert about %d failures to %s not sent: %s", group["count"], group["destination"], reason)
        return False
    log.info("alert sent about %d failures to %s", group["count"], group["destination"])
    return True


def _window_start(now: datetime) -> datetime:
    now = now.astimezone(UTC)
    seconds = int(ALERT_WINDOW.total_seconds())
    return datetime.fromtimestamp(int(now.timestamp()) // seconds * seconds, UTC)
