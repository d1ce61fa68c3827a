"""The destinations a lead can be delivered to, each one module with one class.

Adding a CRM adds its module and one line here; routing, delivery states, retries and the CLI
need nothing else (docs/architecture.md, "Adding a destination"). What a destination is (a
notification or not, whether it needs recipients, a channel, its settings and secrets) its class
declares (:class:`Destination`); :func:`declaring` reads it for routing. Modules are imported only
when used, so a destination's SDK costs nothing until a lead is sent to it.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING

from leads.destinations.base import Check, DeliveryError, Destination, PermanentError, Route, Sent, TransientError

if TYPE_CHECKING:
    from leads.core.settings import Settings

# name → "module:Class", in the order operators see them.
REGISTRY: dict[str, str] = {
    "email": "leads.destinations.email:EmailDestination",
    "webhook": "leads.destinations.webhook:WebhookDestination",
    "dynamics": "leads.destinations.dynamics:DynamicsDestination",
    "salesforce": "leads.destinations.salesforce:SalesforceDestination",
    "salesforce-w2l": "leads.destinations.salesforce:SalesforceWebToLeadDestination",
    "marketo": "leads.destinations.marketo:MarketoDestination",
    "hubspot": "leads.destinations.hubspot:HubSpotDestination",
    "teams": "leads.destinations.teams:TeamsDestination",
    "slack": "leads.destinations.slack:SlackDestination",
}

__all__ = [
    "Check",
    "DeliveryError",
    "Destination",
    "PermanentError",
    "Route",
    "Sent",
    "TransientError",
    "REGISTRY",
    "declaring",
    "destination_class",
    "get_destination",
    "enabled_names",
]


def destination_class(name: str) -> type[Destination]:
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(import_module(module), cls)


@cache
def declaring(trait: str) -> tuple[str, ...]:
    """The registered destinations whose class declares ``trait`` true (``"notifies"``,
    ``"channels"``, ``"needs_recipients"``), in the registry's order. It imports every destination
    module, as routing a lead does anyway (:func:`enabled_names`), so it is called where a lead or
    a rule is read, never when a module is imported: importing routing stays light."""
    return tuple(name for name in REGISTRY if getattr(destination_class(name), trait))


def get_destination(name: str, settings: Settings) -> Destination | None:
    """The destination ``name`` as configured, or None if unknown or not enabled. One instance
    per configuration and process, so its connections and tokens are reused across leads."""
    if name not in REGISTRY:
        return None
    key = (name, settings.model_dump_json())
    if key not in _instances:
        if len(_instances) > 32:
            _instances.clear()
        _instances[key] = destination_class(name).from_settings(settings)
    return _instances[key]


_instances: dict[tuple[str, str], Destination | None] = {}


def enabled_names(settings: Settings) -> list[str]:
    """The destinations whose settings enable them."""
    return [name for name in REGISTRY if destination_class(name).is_enabled(settings)]
