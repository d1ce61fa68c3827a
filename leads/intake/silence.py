"""The silence watch: when leads stop arriving, per offer and in all, and why that may be.

The common way leads are lost makes no noise: the marketplace stops sending (a rotated function
key, a changed URL, an expired table connection string, the offer's lead settings changed in
Partner Center), and nothing fails here. So each offer's arrivals are kept in a small row, and the
sweep compares the days since its last lead with what its history says is normal.

**The rows.** Partition ``arrivals`` of the checkpoints table: one row per offer (``offer|<hash of
its id>``, its name beside) and one for all leads (``all``). Each holds the last day a lead arrived
(``LastDay``, UTC), by channel (``Channels``: ``{"http": day, "table": day}``), the gaps in days
between its last few days with leads (``Gaps``), and the day of the silence last alarmed about
(``AlarmedFor``). A lead is counted by its received time (a marketplace row's: its Timestamp), on
arrival, once stored, duplicates and the marketplace's validation (``MSFT_TEST_``) leads included:
each proves the route works. Imported leads are not arrivals; refused bodies are not either (a
marketplace that sends only bodies the app refuses is as silent as one that sends nothing).

**The cost** is flat in history and nearly nothing per lead: a process changes the rows only for
the first lead of an offer (and of all) on a day; every other lead that day costs no request. Then
the rows of the partition are read in one query and changed in one transaction (ETags held), so a
POST, or a poll page whatever its offers, costs 2 storage requests; a process that starts again pays
that once more per offer and day. The sweep reads the partition (one request, a row per offer)
every 2 minutes.

**What is silent.** An offer (or all) is silent when the whole days since its last lead are more
than the longest of its last 8 gaps, more than twice their median, and more than
``LEADS_SILENCE_DAYS`` (3): a daily offer goes silent after 3 empty days, one whose leads come
weekly after 14 (twice 7), one with fewer than 3 gaps known after 14 (its rhythm is taken to be
weekly until known). The silence is alarmed once (the row's ``AlarmedFor``, written with its
ETag, so one instance mails): a mail to ``LEADS_ALERT_TO``, a ``LeadsSilent`` event for the Azure
Monitor alert, a warning in the log; ``status`` and ``check`` say it until a lead arrives.

**Quiet or broken.** Where the app can tell, it says which: the table poll failing (its health row
beside the poll's checkpoint) or the marketplace table missing, leads refused as bodies lately, or
none of these (then the marketplace stopped sending, or the offer is quiet). A marketplace whose
calls the platform answers with 401 (a function key removed) never reaches the app: in Azure the
function app's ``Http401`` metric shows it (the "intake refused" alert rule, infra/app/alerts.bicep).
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from threading import Lock
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from leads.core.model import Lead
    from leads.core.settings import Settings
    from leads.store.lead_store import LeadStore

log = logging.getLogger(__name__)

PARTITION = "arrivals"
ALL = "all"
RECENT_GAPS = 8  # the gaps between days with leads a row keeps
KNOWN_AFTER = 3  # gaps before an offer's rhythm is its own; until then it is taken to be weekly
UNKNOWN_GAP = 7
FACTOR = 2  # silent past twice the median gap
BROKEN = {"poll failing", "table missing"}  # causes that mean the intake is broken, not the offer quiet

# Where to look when an offer goes silent, by how its leads came (Partner Center's lead
# management, checked 2026-12-07: docs/operations.md#silence).
CAUSES = {
    "http": "the HTTPS endpoint's URL in Partner Center (the offer > Offer setup > Customer leads) no longer opens "
    "the app: its ?code= function key was rotated or removed (python -m leads check lists the keys), or "
    "the app's URL changed; in Azure the function app's Http401 metric counts the marketplace's refused calls",
    "table": "the Azure Table connection string in Partner Center (the offer > Offer setup > Customer leads) no "
    "longer opens the account (its key was renewed), or names another table or account",
    "any": "the offer's lead destination was changed in Partner Center (another CRM, another table or URL), or the "
    "offer was unpublished; Partner Center > Referrals > Leads lists the leads the marketplace created: "
    "leads there but not here mean the route is broken; Validate on the Customer leads page sends a test "
    "lead through it",
}


@dataclass
class Silence:
    """What one row says now."""

    key: str
    offer: str  # "" for all leads
    last_day: date
    silent_days: int  # whole days since the last day with a lead
    threshold_days: int
    usual_gap_days: float | None  # the median of its recent gaps, when known
    channels: dict[str, str] = field(default_factory=dict)
    alarmed: bool = False

    @property
    def silent(self) -> bool:
        return self.silent_days > self.threshold_days

    def to_dict(self) -> dict[str, Any]:
        return {
            "offer": self.offer or None,
            "lastLeadDay": self.last_day.isoformat(),
            "silentDays": self.silent_days,
            "thresholdDays": self.threshold_days,
            "usualGapDays": self.usual_gap_days,
            "silent": self.silent,
            "alarmed": self.alarmed,
            "channels": self.channels,
        }


# --- arrivals -------------------------------------------------------------------------------------

_recorded: dict[tuple[str, str, str], str] = {}  # (table, row, channel) -> the day this process recorded
_lock = Lock()


def arrived(store: LeadStore, lead: Lead, lead_id: str | None = None, duplicate: bool = False) -> None:
    """A lead arrived (stored, or a duplicate of one stored): as :func:`arrived_many` for one."""
    arrived_many(store, [lead], lead_id=lead_id, duplicate=duplicate)


def arrived_many(store: LeadStore, leads: list[Lead], *, lead_id: str | None = None, duplicate: bool = False) -> None:
    """Leads arrived (a poll page's, or one POST's): each counted into its offer's row and the row
    of all, and each sent as the ``LeadReceived`` event the workbook counts by offer and action
    (``lead_id``: the one lead's, when it is not ``lead.lead_id``). The rows a day's first lead of an
    offer changes are written together (:func:`~leads.core.storage.change_rows`): two requests
    whatever the offers. Never raises: a count is not worth a lead (the marketplace's answer does
    not wait on it)."""
    from leads.core.storage import change_rows
    from leads.core.telemetry import event

    wanted: dict[str, tuple[str, set[tuple[str, str]]]] = {}  # row key -> (offer name, {(day, channel)})
    for lead in leads:
        event(
            "LeadReceived",
            leadId=lead_id or lead.lead_id,
            channel=lead.channel,
            offer=lead.offer_title or lead.offer_id,
            action=lead.action,
            source=lead.source,
            test=lead.is_test,
            duplicate=duplicate,
        )
        day, channel = lead.received_at.astimezone(UTC).date().isoformat(), lead.channel
        offer = lead.offer_id or lead.offer_title or ""
        for key, name in ((ALL, ""), *([(offer_key(offer), lead.offer_title or offer)] if offer else [])):
            with _lock:
                if _recorded.get((store.checkpoints.table_name, key, channel), "") >= day:
                    continue
            wanted.setdefault(key, (name, set()))[1].add((day, channel))
    if not wanted:
        return

    def counted(rows: dict[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        changes = {}
        for key, (name, days) in wanted.items():
            row, fields = rows.get(key), None
            for day, channel in sorted(days):  # in day order, so each gap is between two days seen
                change = _counted(row, name, day, channel)
                if change is not None:
                    fields, row = {**(fields or {}), **change}, {**(row or {}), **change}
            if fields:
                changes[key] = fields
        return changes

    try:
        change_rows(store.checkpoints, PARTITION, counted, tries=10)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("arrival of %d lead(s) not counted for the silence watch (%s)", len(leads), type(exc).__name__)
        return
    with _lock:
        for key, (_, days) in wanted.items():
            for day, channel in days:
                memo = (store.checkpoints.table_name, key, channel)
                _recorded[memo] = max(_recorded.get(memo, ""), day)


def offer_key(offer: str) -> str:
    """The row key of an offer: any id fits (a row key may not hold '/', '#', '?' and more)."""
    return "offer|" + hashlib.sha256(offer.encode()).hexdigest()[:16]


def _counted(row: Mapping[str, Any] | None, name: str, day: str, channel: str) -> dict[str, Any] | None:
    """What an arrival on ``day`` by ``channel`` changes in its row; None when it was counted."""
    last = str((row or {}).get("LastDay") or "")
    channels = json.loads((row or {}).get("Channels") or "{}")
    if last >= day and channels.get(channel, "") >= day:
        return None  # counted already, by this call's earlier try or another process
    gaps = json.loads((row or {}).get("Gaps") or "[]")
    if last and day > last:
        gaps = [*gaps, (date.fromisoformat(day) - date.fromisoformat(last)).days][-RECENT_GAPS:]
    channels[channel] = max(channels.get(channel, ""), day)
    return {
        "LastDay": max(last, day),
        "Gaps": json.dumps(gaps),
        "Channels": json.dumps(channels, sort_keys=True),
        **({"Offer": name} if name else {}),
    }


def forget_recorded() -> None:
    """Forget what this process recorded (for tests that move the clock back)."""
    with _lock:
        _recorded.clear()


# --- silences -------------------------------------------------------------------------------------


def silences(store: LeadStore, settings: Settings, now: datetime) -> list[Silence]:
    """Every row's state now, all leads first then by offer name: one query of a row per offer."""
    from azure.core.exceptions import ResourceNotFoundError

    today = now.astimezone(UTC).date()
    found = []
    try:
        rows = list(store.checkpoints.query_entities("PartitionKey eq @p", parameters={"p": PARTITION}))
    except ResourceNotFoundError:
        return []
    for row in rows:
        if not row.get("LastDay"):
            continue
        last = date.fromisoformat(row["LastDay"])
        gaps = json.loads(row.get("Gaps") or "[]")
        known = len(gaps) >= KNOWN_AFTER
        median = statistics.median(gaps) if known else None
        threshold = max(settings.silence_days, max(gaps, default=0), FACTOR * (median if known else UNKNOWN_GAP))
        offer = "" if row["RowKey"] == ALL else str(row.get("Offer") or "?")
        found.append(
            Silence(
                row["RowKey"],
                offer,
                last,
                max(0, (today - last).days),
                int(threshold),
                median,
                json.loads(row.get("Channels") or "{}"),
                row.get("AlarmedFor") == row["LastDay"],
            )
        )
    return sorted(found, key=lambda s: (s.key != ALL, s.offer.lower()))


def watch(store: LeadStore, settings: Settings, now: datetime) -> int:
    """Alarm once about each silence not alarmed yet (the sweep calls this); returns how many."""
    alarmed = 0
    for silence in silences(store, settings, now):
        if silence.silent and not silence.alarmed and _mark_alarmed(store, silence):
            _alarm(store, settings, silence, now)
            alarmed += 1
    return alarmed


def _mark_alarmed(store: LeadStore, silence: Silence) -> bool:
    """Whether this process marked the silence alarmed (of two racing, one does)."""
    from leads.core.storage import RowKeptChanging, change_row

    day = silence.last_day.isoformat()

    def mark(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if row is None or row.get("LastDay") != day or row.get("AlarmedFor") == day:
            return None  # a lead arrived meanwhile, or another instance alarmed
        return {"AlarmedFor": day}

    try:
        return change_row(store.checkpoints, PARTITION, silence.key, mark, tries=5) is not None
    except RowKeptChanging:
        return False


def _alarm(store: LeadStore, settings: Settings, silence: Silence, now: datetime) -> None:
    from leads.core.telemetry import event
    from leads.delivery.alerts import send_to_operators
    from leads.destinations.routing import split_addresses

    cause, detail = likely_cause(store, settings, silence, now)
    subject, text = alarm_text(silence, cause, detail)
    who = f"offer {silence.offer}" if silence.offer else "any offer"
    log.warning(
        "no lead from %s for %d days (since %s; silent past %d days): %s",
        who,
        silence.silent_days,
        silence.last_day.isoformat(),
        silence.threshold_days,
        detail,
    )
    event(
        "LeadsSilent",
        offer=silence.offer or "*",
        lastLeadDay=silence.last_day.isoformat(),
        silentDays=silence.silent_days,
        thresholdDays=silence.threshold_days,
        cause=cause,
    )
    to = split_addresses(settings.alert_to)
    if to:
        failure = send_to_operators(subject, text, f"silence|{silence.key}|{silence.last_day}", to, settings)
        if failure is not None:
            log.warning("silence alarm about %s not mailed: %s (status and check still say it)", who, failure)


def likely_cause(store: LeadStore, settings: Settings, silence: Silence, now: datetime) -> tuple[str, str]:
    """(cause, what to do): "poll failing", "table missing", "bodies refused", or "no calls" (the
    marketplace stopped sending, or the offer is quiet), from what the app can see."""
    from leads.intake.poll_health import poll_health

    health = poll_health(store, settings.marketplace_table_name)
    by_table = "table" in silence.channels
    if health.failing:
        return "poll failing", (
            f"the marketplace table poll has failed since {health.failed_at:%Y-%m-%d %H:%M} UTC "
            f"({health.error}): fix MARKETPLACE_TABLE_CONNECTION or the app's storage; "
            f"{CAUSES['table']}"
        )
    if by_table and health.table_missing:
        table = settings.marketplace_table_name
        return "table missing", f"the marketplace table {table} does not exist: {CAUSES['table']}"
    days = max(1, min(silence.silent_days, 31))
    refused = store.counters.window(days, now).get("intake", {}).get("rejected", 0)
    if refused:
        return "bodies refused", (
            f"{refused} inputs were refused as no lead in the last {days} days (python -m leads "
            "status lists them): the marketplace may have changed what it sends"
        )
    routes = [CAUSES[channel] for channel in ("http", "table") if channel in silence.channels]
    return "no calls", "; or ".join([*routes, CAUSES["any"]]) + "; or the offer is simply quiet"


def alarm_text(silence: Silence, cause: str, detail: str) -> tuple[str, str]:
    who = f"offer {silence.offer}" if silence.offer else "any offer"
    subject = f"No leads from {who} for {silence.silent_days} days"
    gap = (
        f"its usual gap is {silence.usual_gap_days:g} days" if silence.usual_gap_days else "its rhythm is not known yet"
    )
    lines = [
        f"No lead has arrived from {who} since {silence.last_day:%Y-%m-%d} ({silence.silent_days} whole days); "
        f"{gap}, so more than {silence.threshold_days} days of silence is unusual.",
        "",
        f"Likely cause ({cause}): {detail}.",
        "",
        "See what the app sees:",
        "    python -m leads status",
        "    python -m leads check",
        "Send a lead through the whole route: Partner Center > the offer > Offer setup > Customer leads > Validate,",
        "or: python -m leads test-lead",
        "",
        "This mail is sent once for this silence; the next lead ends it.",
    ]
    return subject, "\n".join(lines) + "\n"


def status_report(store: LeadStore, settings: Settings, now: datetime) -> dict[str, Any]:
    """What ``status`` says of arrivals: each row's silence (all leads first), the likely cause of
    each silent one, the table poll's health and the poison queue's count."""
    from leads.delivery.queue import poison_messages
    from leads.intake.poll_health import poll_health

    rows = []
    for silence in silences(store, settings, now):
        row = silence.to_dict()
        if silence.silent:
            row["likelyCause"], row["whatToDo"] = likely_cause(store, settings, silence, now)
        rows.append(row)
    return {
        "arrivals": rows,
        "poll": poll_health(store, settings.marketplace_table_name).to_dict(),
        "poisonMessages": poison_messages(settings),
    }


def arrivals_check(settings: Settings, now: datetime | None = None) -> Any:
    """``check``'s line on arrivals: ok, or a warning naming each silence and its likely cause."""
    from leads.destinations import Check
    from leads.store.lead_store import LeadStore

    now = now or datetime.now(UTC)
    store = LeadStore.from_settings(settings)
    found = silences(store, settings, now)
    if not found:
        return Check(True, "no lead has arrived yet: the silence watch starts with the first")
    silent = [s for s in found if s.silent]
    if not silent:
        newest = min(s.silent_days for s in found)
        return Check(True, f"leads arriving as usual ({len(found) - 1} offers; the latest {newest} days ago)")
    parts, fixes, broken = [], [], False
    for s in silent:
        cause, detail = likely_cause(store, settings, s, now)
        broken |= cause in BROKEN
        parts.append(
            f"no lead from {'offer ' + s.offer if s.offer else 'any offer'} for {s.silent_days} days "
            f"(silent past {s.threshold_days}): {cause}"
        )
        fixes.append(detail)
    message, fix = "; ".join(parts), " | ".join(dict.fromkeys(fixes))
    return Check(False, message, fix) if broken else Check.warn(message, fix)
