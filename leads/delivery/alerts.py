"""The mail operators get when deliveries fail: the first within a minute, what follows grouped.

A CRM outage fails hundreds of deliveries; one mail each would use up the mail service's quota
(5 a minute, 10 an hour on an Azure-managed domain) and push lead mails into 429s. So failures
are grouped per destination, as Alertmanager groups alerts: a failure that finds its destination
quiet opens a group, mailed ``GROUP_WAIT`` (30 s) later with whatever joined it meanwhile (a burst
arrives in one mail); failures after a mail join the next group, mailed no sooner than
``GROUP_INTERVAL`` (5 minutes) after the last mail. A mail says how many leads failed, the first
lead ids, each error with its fix, and how to replay.

Each destination's group is one row of the checkpoints table (partition ``alerts``, the
destination's name), changed only with ETags (:func:`leads.core.storage.change_row`), so every instance
counts into the same group and none is counted twice. Who mails it: the worker that opened the
group puts a wake-up on the delivery queue, hidden until the group is due; whichever worker takes
it mails the group. The sweep mails any group overdue (a wake-up lost, or a mail that waits for a
rate-limit slot), so a crash costs at most a sweep's interval. A sender claims the row (its
``ClaimedUntil``) before the mail, so two instances never both mail a group; the mail's ACS
``Operation-Id`` is the group's id, so a mail sent again after a lost answer is the same mail.
Failures counted while the mail was being sent stay for the next one. The partition holds only
open work: a row with no group is deleted once its destination has been quiet for the interval.

The mail takes a slot of the email rate limiter like any lead mail (both of ACS's limits, a minute's
and an hour's), and waits for one when there is none. An alert carries no personal data: the errors
were masked of the leads' values when recorded, and are masked again of anything shaped like an
email or a phone number. A failure to send is logged and retried at the next sweep,
``ALERT_TRIES`` times in all: then the group is dropped with a log line saying what it would have
said, so that a mail that can never go out (ACS refusing the sender, the key, the role) neither
stays forever nor takes a slot at every sweep. Nothing is lost with it: the failed deliveries stay
failed, in ``status``, until replayed. An alert never breaks the delivery it reports.

Rows of an earlier version (``<destination>|<window start>``, one per 5-minute window, mailed by
the first sweep after the window closed) are mailed as they were, under the same mail key.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from leads.core.settings import Settings
    from leads.store.lead_store import LeadStore
    from leads.store.rows import Delivery

log = logging.getLogger(__name__)

GROUP_WAIT = timedelta(seconds=30)  # a group's first mail waits this long for the rest of its burst
GROUP_INTERVAL = timedelta(minutes=5)  # the least time between two mails about one destination
CLAIM = timedelta(minutes=2)  # a sender holds a group this long: well past any mail's send
# The window of an earlier version's groups; mailed this long after it closed.
ALERT_WINDOW = GROUP_INTERVAL
GRACE = timedelta(seconds=30)
PARTITION = "alerts"
FIRST_IDS = 10  # lead ids listed in a mail
ERRORS = 3  # distinct errors listed in a mail
# Sweeps that try to mail a group before it is dropped: at one sweep every 2 minutes, about 10
# minutes of an ACS outage, or of a mail ACS refuses for good, each try taking a rate-limit slot.
ALERT_TRIES = 5
_WAKE = "alertsOf"  # the delivery-queue message that wakes a destination's group: {"alertsOf": name}


def record_failure(store: LeadStore, delivery: Delivery, now: datetime, settings: Settings | None = None) -> None:
    """Count a failed ``delivery`` into its destination's group; a failure that opens the group
    puts its wake-up on the queue, hidden until the group is due."""
    from leads.core.storage import RowKeptChanging, change_row

    reason, _, fix = (delivery.last_error or "no error was recorded").partition(" — ")
    opened: datetime | None = None  # the group's due time, when this failure opened it

    def counted(entity: Mapping[str, Any] | None) -> dict[str, Any]:
        nonlocal opened
        group = _group_of(entity)
        opened = None
        if group is None:
            group = {
                "id": _group_id(delivery.destination, now),
                "destination": delivery.destination,
                "first": now.isoformat(),
                "count": 0,
                "leads": [],
                "errors": [],
            }
            opened = _due(group, _last_mail(entity))
        group["count"] += 1
        group["last"] = now.isoformat()
        if len(group["leads"]) < FIRST_IDS and delivery.lead_id not in group["leads"]:
            group["leads"].append(delivery.lead_id)
        known = next((e for e in group["errors"] if e["error"] == reason.strip()), None)
        if known is not None:
            known["count"] += 1
        elif len(group["errors"]) < ERRORS:
            group["errors"].append({"error": reason.strip(), "fix": fix.strip(), "count": 1})
        return {"Group": json.dumps(group), **({"Tries": 0} if opened else {})}

    try:
        change_row(store.checkpoints, PARTITION, delivery.destination, counted, tries=20)
    except RowKeptChanging:
        log.warning(
            "failure of lead %s to %s not counted for an alert (the group kept changing)",
            delivery.lead_id,
            delivery.destination,
        )
        return
    if opened is not None:
        _wake(delivery.destination, opened, now, settings)


def flush_alerts(store: LeadStore, settings: Settings, now: datetime, destination: str | None = None) -> int:
    """Mail every group that is due (only ``destination``'s, for its wake-up); returns how many
    were mailed. A group not due yet, or without a rate-limit slot, waits: woken for one
    destination, it puts its wake-up back for when it can go; else the next sweep sees it."""
    from azure.core.exceptions import ResourceNotFoundError

    from leads.destinations.routing import split_addresses

    to = split_addresses(settings.alert_to)
    if destination is None:
        rows = list(store.checkpoints.query_entities("PartitionKey eq @p", parameters={"p": PARTITION}))
    else:
        try:
            rows = [store.checkpoints.get_entity(PARTITION, destination)]
        except ResourceNotFoundError:
            return 0
    sent = 0
    for entity in rows:
        group, key = _group_of(entity), entity["RowKey"]
        if group is None:
            last_mail = _last_mail(entity)
            if last_mail is None or last_mail + GROUP_INTERVAL <= now:
                _delete(store, entity)  # quiet for the interval: nothing left to group with
            continue
        due = _due(group, _last_mail(entity))
        if due > now:
            if destination is not None:
                _wake(key, due, now, settings)
            continue
        if not to:
            _delete(store, entity)  # nobody to tell (LEADS_ALERT_TO was emptied)
            continue
        outcome, wait = _mail(store, settings, entity, to, now)
        if outcome == "no slot":
            if destination is not None:
                _wake(key, now + timedelta(seconds=wait), now, settings)
            break  # lead mails and alerts wait alike
        sent += outcome == "sent"
    return sent


def _mail(
    store: LeadStore, settings: Settings, entity: Mapping[str, Any], to: tuple[str, ...], now: datetime
) -> tuple[str, float]:
    """Claim, mail and settle one due group: "sent", "failed", "claimed" (another sender has it)
    or "no slot" (the rate limiter had none, for the seconds given: the claim is given back)."""
    from leads.core.storage import change_row
    from leads.destinations.email import email_limits
    from leads.destinations.ratelimit import RateLimiter

    key = entity["RowKey"]
    legacy = "|" in key
    claimed: dict[str, Any] = {}

    def claim(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
        group = _group_of(row)
        if group is None or _after(row, "ClaimedUntil", now):
            return None
        claimed.update(group=group, tries=int((row or {}).get("Tries") or 0))
        return {"ClaimedUntil": now + CLAIM}

    if change_row(store.checkpoints, PARTITION, key, claim, tries=5) is None:
        return "claimed", 0.0
    group = claimed["group"]
    (limit, period), *more = email_limits(settings)
    wait = RateLimiter(store, "email", limit, period, *more).acquire(now)
    if wait is not None:
        change_row(store.checkpoints, PARTITION, key, lambda row: {"ClaimedUntil": now} if row else None, tries=5)
        return "no slot", wait
    failure = _send(group, group["id"], to, settings)
    tries = claimed["tries"] + 1
    if legacy:
        if failure is None or tries >= ALERT_TRIES:
            if failure is not None:
                _log_dropped(group, tries, failure)
            _delete(store, store.checkpoints.get_entity(PARTITION, key))
        else:
            change_row(
                store.checkpoints,
                PARTITION,
                key,
                lambda row: {"Tries": tries, "ClaimedUntil": now} if row else None,
                tries=5,
            )
        return ("failed" if failure else "sent"), 0.0
    rest: dict[str, Any] = {}

    def settled(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
        current = _group_of(row)
        if current is None or current["id"] != group["id"]:
            return None  # settled by another sender, whose claim this one outlived
        if failure is not None and tries < ALERT_TRIES:
            return {"Tries": tries, "ClaimedUntil": now}  # the next sweep tries again
        rest.clear()
        rest.update(_minus(current, group, now) or {})
        mailed = {"LastMailAt": now} if failure is None else {}
        return {"Group": json.dumps(rest) if rest else "", "Tries": 0, "ClaimedUntil": now, **mailed}

    change_row(store.checkpoints, PARTITION, key, settled, tries=20)
    if failure is not None and tries >= ALERT_TRIES:
        _log_dropped(group, tries, failure)
    if rest:  # failures counted while the mail went out: the next group, due an interval on
        _wake(key, _due(rest, now if failure is None else None), now, settings)
    return ("failed" if failure else "sent"), 0.0


def wake_up_message(destination: str) -> str:
    """The delivery-queue message that has a worker mail ``destination``'s group."""
    return json.dumps({_WAKE: destination})


def woken_destination(text: str | bytes) -> str | None:
    """The destination a wake-up message names; None for any other message."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    name = data.get(_WAKE) if isinstance(data, dict) else None
    return name if isinstance(name, str) and name else None


def _wake(destination: str, due: datetime, now: datetime, settings: Settings | None) -> None:
    """Put ``destination``'s wake-up on the queue, hidden until ``due``. A wake-up lost costs a
    sweep's interval, no more: the sweep mails what is overdue."""
    from azure.core.exceptions import AzureError

    from leads.delivery.queue import delivery_queue

    try:
        delivery_queue(settings).send_text(wake_up_message(destination), (due - now).total_seconds())
    except AzureError as exc:
        log.warning("alert wake-up for %s not queued (%s); the sweep mails the group", destination, type(exc).__name__)


def _group_of(entity: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The open group of a row, in this version's shape (an earlier version's window: its span)."""
    if entity is None or not entity.get("Group"):
        return None
    group = json.loads(entity["Group"])
    if "id" not in group:  # an earlier version's window: mailed under its own row key, as it would have been
        start = datetime.fromisoformat(group["start"])
        group.update(id=entity["RowKey"], first=start.isoformat(), last=(start + ALERT_WINDOW).isoformat(), legacy=True)
    return group


def _due(group: Mapping[str, Any], last_mail: datetime | None) -> datetime:
    """When a group is mailed: its wait after its first failure, and an interval after the last mail."""
    first = datetime.fromisoformat(group["first"])
    if group.get("legacy"):
        return first + ALERT_WINDOW + GRACE
    due = first + GROUP_WAIT
    return max(due, last_mail + GROUP_INTERVAL) if last_mail else due


def _minus(current: Mapping[str, Any], mailed: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    """What ``current`` counted beyond the ``mailed`` snapshot of it, as a group of its own."""
    count = current["count"] - mailed["count"]
    if count <= 0:
        return None
    counts = {e["error"]: e["count"] for e in mailed["errors"]}
    errors = [{**e, "count": e["count"] - counts.get(e["error"], 0)} for e in current["errors"]]
    return {
        "id": _group_id(current["destination"], now),
        "destination": current["destination"],
        "first": now.isoformat(),
        "last": current.get("last", now.isoformat()),
        "count": count,
        "leads": [lead for lead in current["leads"] if lead not in mailed["leads"]],
        "errors": [e for e in errors if e["count"] > 0],
    }


def _group_id(destination: str, now: datetime) -> str:
    return f"{destination}|{now.astimezone(UTC):%Y%m%dT%H%M%S.%f}"


def _last_mail(entity: Mapping[str, Any] | None) -> datetime | None:
    value = (entity or {}).get("LastMailAt")
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def _after(entity: Mapping[str, Any] | None, name: str, now: datetime) -> bool:
    value = (entity or {}).get(name)
    return value is not None and (value if value.tzinfo else value.replace(tzinfo=UTC)) > now


def _delete(store: LeadStore, entity: Mapping[str, Any]) -> None:
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

    try:
        store.checkpoints.delete_entity(
            PARTITION, entity["RowKey"], etag=entity.metadata["etag"], match_condition=MatchConditions.IfNotModified
        )
    except (ResourceModifiedError, ResourceNotFoundError):
        pass  # changed since: a failure opened a group in it


def alert_text(group: dict[str, Any]) -> tuple[str, str]:
    """The subject and body of the alert about one group of failures."""
    from leads.core.telemetry import mask_urls
    from leads.destinations.redact import mask_personal

    name, count = group["destination"], group["count"]
    if "first" in group:
        first = datetime.fromisoformat(group["first"])
        last = datetime.fromisoformat(group.get("last") or group["first"])
    else:  # an earlier version's window
        first = datetime.fromisoformat(group["start"])
        last = first + ALERT_WINDOW
    leads = "lead" if count == 1 else "leads"
    one_minute = f"{first:%H:%M}" == f"{last:%H:%M}"
    span = f"at {first:%H:%M}" if one_minute else f"between {first:%H:%M} and {last:%H:%M}"
    subject = f"Lead delivery failed: {name}, {count} {leads} {span} UTC"
    when = f"at {first:%Y-%m-%d %H:%M}" if one_minute else f"between {first:%Y-%m-%d %H:%M} and {last:%H:%M}"
    lines = [
        f"{count} {leads} could not be delivered to {name} {when} UTC, and will not be retried until they are "
        "replayed.",
        "",
        f"Leads: {', '.join(group['leads'])}"
        + (f" and {count - len(group['leads'])} more" if count > len(group["leads"]) else ""),
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
        f"Further failures to {name} are mailed together, at most once every "
        f"{GROUP_INTERVAL.total_seconds() / 60:g} minutes.",
        "This alert holds no personal data of the customers; the lead store has the leads.",
    ]
    return subject, "\n".join(lines) + "\n"


def _send(group: dict[str, Any], key: str, to: tuple[str, ...], settings: Settings) -> str | None:
    """Mail one group; None once ACS took it, else why not (masked of personal data)."""
    subject, text = alert_text(group)
    failure = send_to_operators(subject, text, f"alert|{key}", to, settings)
    if failure is None:
        log.info("alert sent about %d failures to %s", group["count"], group["destination"])
    else:
        log.warning("alert about %d failures to %s not sent: %s", group["count"], group["destination"], failure)
    return failure


def send_to_operators(subject: str, text: str, key: str, to: tuple[str, ...], settings: Settings) -> str | None:
    """One mail to the operators (``key``: a repeat is the same mail); None once ACS took it, else
    why not, masked of personal data. Never raises: an alert never breaks what it reports."""
    try:
        from leads.destinations.email import send_operator_mail

        send_operator_mail(settings, to, subject, text, key=key)
    except Exception as exc:  # noqa: BLE001 - best effort, by design: tried again at the next sweep
        from leads.destinations.redact import mask_personal

        explain = getattr(exc, "explain", None)
        return mask_personal(explain()) if callable(explain) else type(exc).__name__
    return None


def _log_dropped(group: dict[str, Any], tries: int, failure: str) -> None:
    """What a group that could not be mailed would have said, in the log (ids only, no one's data)."""
    first = datetime.fromisoformat(group["first"])
    last = datetime.fromisoformat(group.get("last") or group["first"])
    log.error(
        "alert about %d failures to %s between %s and %s UTC dropped after %d tries (%s); first leads: %s; "
        "the deliveries stay failed until replayed: python -m leads status",
        group["count"],
        group["destination"],
        f"{first:%Y-%m-%d %H:%M}",
        f"{last:%H:%M}",
        tries,
        failure,
        ", ".join(group["leads"]) or "none",
    )
