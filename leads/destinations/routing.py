"""Which destinations a lead goes to, and who is emailed about it.

``LEADS_ROUTING`` holds ordered rules (a JSON document, or the path of a JSON file); the first rule
that matches a lead decides. A rule matches on offer (id or title, ``*`` wildcards), action,
source and test-ness; every condition it names must hold. For example::

    {"rules": [
      {"offer": "contoso.crm*", "action": ["PLT", "INS"], "email": "crm-sales@contoso.com",
       "destinations": ["email", "dynamics"]},
      {"source": "AzurePortal", "email": "azure-team@contoso.com; lead@contoso.com"},
      {"offer": "*", "test": true, "destinations": ["email"]}
    ]}

A rule without ``destinations`` sends to every enabled destination; without ``email`` it uses
``EMAIL_TO``. ``teams`` and ``slack`` name a channel (``"teams": "sales-emea"``), whose webhook URL
is in the setting ``TEAMS_CHANNELS``: URLs carry their secret, so they live in settings, never
here; without one, the default channel (``TEAMS_WEBHOOK_URL``) is used. ``mapping`` names the field
mapping the CRMs use for the rule's leads (``"mapping": "partner"``: each CRM's mapping of that
name in its ``<CRM>_MAPPING``, or its default where it has none; leads/destinations/mapping.py). With no rule
matching (or no routing set) every enabled destination gets the lead. Test leads then follow
``LEADS_TEST_LEADS``: ``notify`` (the notifications only: email, Teams, Slack), ``deliver``, ``drop``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from leads.core.model import Lead, Route
from leads.core.settings import DEFAULT_CHANNEL, json_setting
from leads.destinations import REGISTRY, declaring, destination_class
from leads.store.rows import BACKFILL_REASON, UNDATED_REASON

if TYPE_CHECKING:
    from leads.core.settings import Settings

log = logging.getLogger(__name__)
TEST_LEAD_MODES = ("notify", "deliver", "drop")
# What a test lead reaches in "notify" (notifications), and which destinations a rule names a
# channel of (a rule key each), are what their classes declare: declaring("notifies"), declaring("channels").
_CHANNEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
# Destinations whose records a field mapping shapes (their classes name their mapping setting).
MAPPED_DESTINATIONS = ("dynamics", "salesforce", "marketo", "hubspot")
_RULE_KEYS = {"name", "offer", "action", "source", "test", "email", "destinations", "mapping"}
_MAPPING_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class RoutingError(ValueError):
    """``LEADS_ROUTING`` cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Rule:
    name: str
    offers: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    test: bool | None = None
    email: tuple[str, ...] | None = None
    destinations: tuple[str, ...] | None = None
    channels: Mapping[str, str] = field(default_factory=dict)  # "teams" → "sales-emea"
    mapping: str = ""  # the CRMs' named field mapping for these leads

    def matches(self, lead: Lead) -> bool:
        if self.test is not None and lead.is_test != self.test:
            return False
        if self.actions and (lead.action or "").casefold() not in self.actions:
            return False
        if self.sources and (lead.source or "").casefold() not in self.sources:
            return False
        if self.offers:
            names = [name.casefold() for name in (lead.offer_id, lead.offer_title) if name]
            if not any(fnmatchcase(name, pattern) for pattern in self.offers for name in names):
                return False
        return True


def split_addresses(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Addresses from ``a@x.com; b@y.com`` (as Partner Center writes them), commas too, or a list."""
    if not value:
        return ()
    items = value.replace(",", ";").split(";") if isinstance(value, str) else value
    return tuple(dict.fromkeys(item.strip() for item in items if item and item.strip()))


@lru_cache(maxsize=16)
def load_rules(setting: str) -> tuple[Rule, ...]:
    """The rules in ``LEADS_ROUTING``: JSON text, or the path of a JSON file."""
    setting = setting.strip()
    if not setting:
        return ()
    document, where = json_setting("LEADS_ROUTING", setting, RoutingError)
    rules = document.get("rules") if isinstance(document, Mapping) else document
    if not isinstance(rules, list):
        raise RoutingError(f'{where} must be a list of rules or {{"rules": [...]}}')
    return tuple(_rule(item, index, where) for index, item in enumerate(rules, 1))


def _rule(item: Any, index: int, where: str) -> Rule:
    label = f"{where}, rule {index}"
    if not isinstance(item, Mapping):
        raise RoutingError(f"{label} must be an object")
    known = _RULE_KEYS | set(declaring("channels"))
    unknown = set(item) - known
    if unknown:
        raise RoutingError(f"{label} has unknown keys {sorted(unknown)}; known: {sorted(known)}")

    def texts(key: str) -> tuple[str, ...]:
        value = item.get(key)
        if value is None:
            return ()
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise RoutingError(f"{label}: {key} must be text or a list of text")
        return tuple(v.strip().casefold() for v in values if v.strip())

    test = item.get("test")
    if test is not None and not isinstance(test, bool):
        raise RoutingError(f"{label}: test must be true or false")
    email = item.get("email")
    destinations = item.get("destinations")
    named = isinstance(destinations, list) and all(isinstance(d, str) for d in destinations)
    if destinations is not None and not named:
        raise RoutingError(f"{label}: destinations must be a list of destination names")
    channels = {}
    for destination in declaring("channels"):
        channel = item.get(destination)
        if channel is None:
            continue
        if not isinstance(channel, str) or not _CHANNEL_NAME.match(channel.strip().lower()):
            raise RoutingError(
                f"{label}: {destination} must name a channel (letters, digits, - and _) whose "
                f"webhook URL is in the setting {destination.upper()}_CHANNELS, not a URL"
            )
        channels[destination] = channel.strip().lower()
    mapping = item.get("mapping")
    if mapping is not None and (not isinstance(mapping, str) or not _MAPPING_NAME.match(mapping.strip())):
        raise RoutingError(
            f"{label}: mapping must name a field mapping (lower-case letters, digits, - and _) "
            "defined in a CRM's mapping setting, e.g. SALESFORCE_MAPPING's \"mappings\""
        )
    return Rule(
        name=str(item.get("name") or f"rule {index}"),
        offers=texts("offer"),
        actions=texts("action"),
        sources=texts("source"),
        test=test,
        email=split_addresses(email) if email is not None else None,
        destinations=tuple(d.strip().lower() for d in destinations) if destinations is not None else None,
        channels=channels,
        mapping=mapping.strip() if mapping else "",
    )


def route(
    lead: Lead,
    rules: Iterable[Rule],
    enabled: Iterable[str],
    email_to: str,
    test_leads: str = "notify",
    default_channels: Iterable[str] = (),
) -> dict[str, Route]:
    """Destination name → :class:`Route` for one lead, among the ``enabled`` destinations. For
    ``teams`` and ``slack`` the route's recipients are the channel: the rule's, else the default
    one when that destination has one (``default_channels``), else none (the delivery is skipped)."""
    enabled = tuple(enabled)
    rule = next((rule for rule in rules if rule.matches(lead)), None)
    names = (
        enabled
        if rule is None or rule.destinations is None
        else tuple(name for name in rule.destinations if name in enabled)
    )
    recipients = split_addresses(email_to) if rule is None or rule.email is None else rule.email
    if lead.is_test:
        if test_leads == "drop":
            names = ()
        elif test_leads == "notify":
            notifications = declaring("notifies")
            names = tuple(name for name in names if name in notifications) or tuple(
                name for name in notifications if name in enabled
            )
    default_channels = frozenset(default_channels)

    def who(name: str) -> tuple[str, ...]:
        if name == "email":
            return recipients
        if name in declaring("channels"):
            channel = rule.channels.get(name) if rule is not None else None
            return (channel,) if channel else ((DEFAULT_CHANNEL,) if name in default_channels else ())
        return ()

    def unaddressed(name: str) -> str:
        return (destination_class(name).needs_recipients or "") if name in REGISTRY else ""

    mapping = rule.mapping if rule is not None else ""
    return {
        name: Route(
            recipients=who(name),
            test=lead.is_test,
            mapping=mapping if name in MAPPED_DESTINATIONS else "",
            unaddressed=unaddressed(name),
        )
        for name in names
    }


def plan(lead: Lead, settings: Settings) -> dict[str, Route]:
    """The deliveries a newly stored lead owes, by the configured routing. An unusable
    ``LEADS_ROUTING`` must not lose the lead: it falls back to the default route, and the
    error shows in the log, in ``check`` and in ``/api/health``."""
    from leads.destinations import enabled_names

    try:
        rules = load_rules(settings.routing)
    except RoutingError as exc:
        log.error("LEADS_ROUTING is unusable, lead %s takes the default route: %s", lead.lead_id, exc)
        rules = ()
    defaults = [name for name in declaring("channels") if settings.channel_webhook(name)]
    return route(lead, rules, enabled_names(settings), settings.email_to, settings.test_leads, defaults)


def hold_backfill(
    lead: Lead, routes: Mapping[str, Route], settings: Settings, now: datetime | None = None
) -> dict[str, Route]:
    """``routes``, each held when the lead is older than ``LEADS_BACKFILL_DAYS`` by its received
    time: stored ``skipped`` with the reason, delivered only by ``replay``. The first poll of a
    table holding years of rows takes them all in without mailing sales about each. The one place
    this is decided, whatever the intake (an HTTP lead is received now: never held)."""
    now = now or datetime.now(UTC)
    if now - lead.received_at <= timedelta(days=settings.backfill_days):
        return dict(routes)
    reason = (
        f"{BACKFILL_REASON} ({settings.backfill_days:g}) when taken in: received "
        f"{lead.received_at:%Y-%m-%d %H:%M} UTC; stored, not delivered. `python -m leads replay "
        f"--lead {lead.lead_id}` (or `replay --skipped`, all such) delivers it"
    )
    return {name: replace(route, skip_reason=reason) for name, route in routes.items()}


def hold_undated(lead: Lead, routes: Mapping[str, Route]) -> dict[str, Route]:
    """``routes``, each held as :func:`hold_backfill` holds an old lead's, for a lead imported from
    a row with no created date: how old it is cannot be told, so it is not sent unless asked."""
    reason = (
        f"{UNDATED_REASON}: its age cannot be told; stored, not delivered. `python -m leads replay --lead "
        f"{lead.lead_id}` (or `replay --skipped`, all such) delivers it"
    )
    return {name: replace(route, skip_reason=reason) for name, route in routes.items()}
