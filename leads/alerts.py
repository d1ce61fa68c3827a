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
logged and retried at the next sweep, ``ALERT_TRIES`` times in all: then the group is dropped with
a log line saying what it would have said (count, destination, window, first lead ids, why the mail
failed), so that a mail that can never go out (ACS refusing the sender, the key, the role) neither
stays forever nor takes a slot of the email rate limit at every sweep. Nothing is lost with it: the
failed deliveries stay failed, in ``status`` (its recent failures), until replayed. An alert never
breaks the delivery it reports.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .rows import Delivery
    from .settings import Settings
    from .store import LeadStore

log = logging.getLogger(__name__)

ALERT_WINDOW = timedelta(minutes=5)
# A window is mailed this long after it closed, so that a failure recorded at its very end is in it.
GRACE = timedelta(seconds=30)
PARTITION = "alerts"
FIRST_IDS = 10  # lead ids listed in a mail
ERRORS = 3  # distinct errors listed in a mail
# Sweeps that try to mail a group before it is dropped: at one sweep every 2 minutes, about 10
# minutes of an ACS outage, or of a mail ACS refuses for good, each try taking a rate-limit slot.
ALERT_TRIES = 5


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
    for the next sweep when the rate limiter has no slot, or when the mail could not be sent and
    it has had fewer than ``ALERT_TRIES`` tries; after the last it is dropped (logged)."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
    from azure.data.tables import UpdateMode

    from .ratelimit import RateLimiter
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
            failure = _send(group, entity["RowKey"], to, settings)
            tries = int(entity.get("Tries") or 0) + 1
            if failure is not None and tries < ALERT_TRIES:
                try:  # under the ETag read: two sweeps racing on one group count one try (one mail key)
                    store.checkpoints.update_entity({"PartitionKey": PARTITION, "RowKey": entity["RowKey"],
                                                     "Tries": tries}, mode=UpdateMode.MERGE,
                                                    etag=entity.metadata["etag"],
                                                    match_condition=MatchConditions.IfNotModified)  # fmt: skip
                except (ResourceModifiedError, ResourceNotFoundError):
                    pass
                continue
            if failure is not None:
                _log_dropped(group, tries, failure)
            else:
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


def _send(group: dict[str, Any], key: str, to: tuple[str, ...], settings: Settings) -> str | None:
    """Mail one group; None once ACS took it, else why not (masked of personal data)."""
    subject, text = alert_text(group)
    try:
        from .destinations.email import send_operator_mail

        send_operator_mail(settings, to, subject, text, key=f"alert|{key}")
    except Exception as exc:  # noqa: BLE001 - best effort, by design: tried again at the next sweep
        from .redact import mask_personal

        explain = getattr(exc, "explain", None)
        reason = mask_personal(explain()) if callable(explain) else type(exc).__name__
        log.warning("alert about %d failures to %s not sent: %s", group["count"], group["destination"], reason)
        return reason
    log.info("alert sent about %d failures to %s", group["count"], group["destination"])
    return None


def _log_dropped(group: dict[str, Any], tries: int, failure: str) -> None:
    """What a group that could not be mailed would have said, in the log (ids only, no one's data)."""
    start = datetime.fromisoformat(group["start"])
    log.error("alert about %d failures to %s between %s and %s UTC dropped after %d tries (%s); first leads: %s; "
              "the deliveries stay failed until replayed: python -m leads status", group["count"],
              group["destination"], f"{start:%Y-%m-%d %H:%M}", f"{start + ALERT_WINDOW:%H:%M}", tries, failure,
              ", ".join(group["leads"]) or "none")  # fmt: skip


def _window_start(now: datetime) -> datetime:
    now = now.astimezone(UTC)
    seconds = int(ALERT_WINDOW.total_seconds())
    return datetime.fromtimestamp(int(now.timestamp()) // seconds * seconds, UTC)
