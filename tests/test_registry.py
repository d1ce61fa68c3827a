"""The registry (leads/destinations/__init__.py) is the one list of destinations, and what each is
its class declares (leads/destinations/base.py, ``Destination``): every other list is derived from
it or held to it here. A destination added, or a setting added to one, that some list misses fails
here by name. The settings model, the sample and docs/settings.md are held to the declarations in
tests/test_settings.py, the Bicep's app settings and secrets in tests/test_infra.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from leads.core.model import Lead
from leads.core.settings import Settings
from leads.destinations import REGISTRY, declaring, destination_class
from leads.destinations.routing import MAPPED_DESTINATIONS, RoutingError, load_rules, route
from leads.store.deliveries import new_delivery

from .loopback import DESTINATION_SETTINGS, OWN_FAKE

FIELDS = Settings.model_fields


def declared_settings() -> dict[str, tuple[set[str], set[str]]]:
    """Destination name → (the aliases of its settings, those of its secrets), as its class declares."""
    found = {}
    for name in REGISTRY:
        cls = destination_class(name)
        found[name] = ({FIELDS[f].alias for f in cls.setting_fields}, {FIELDS[f].alias for f in cls.secret_fields})
    return found


def section(name: str) -> str:
    """The prefix of a destination's settings: SALESFORCE_ for salesforce and salesforce-w2l."""
    return name.split("-")[0].upper() + "_"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_registered_class_declares_what_it_is(name):
    cls = destination_class(name)
    assert cls.name == name, f"REGISTRY[{name!r}] names a class called {cls.name!r}"
    assert cls.setting_fields, f"{name} declares no settings: what turns it on?"
    unknown = [field for field in cls.setting_fields if field not in FIELDS]
    assert not unknown, f"{name} declares settings the model does not have: {unknown}"
    assert set(cls.secret_fields) <= set(cls.setting_fields), f"{name}: its secrets must be among its settings"
    assert cls.needs_recipients is None or cls.needs_recipients.strip(), f"{name}: needs_recipients is the skip reason"
    if cls.channels:
        # chat.py and Settings.channel_webhook read a channel destination's URLs by these names.
        assert {f"{name}_webhook_url", f"{name}_channels"} <= set(cls.secret_fields), name
        assert cls.needs_recipients, f"{name}: a delivery with no channel has nowhere to go"


def test_every_destination_setting_is_declared_by_one_destination():
    """A setting in a destination's section of the model (EMAIL_..., HUBSPOT_...) belongs to the
    destination that reads it; a new one the class does not declare would escape every check."""
    owners: dict[str, list[str]] = {}
    for name, (aliases, _) in declared_settings().items():
        for alias in aliases:
            owners.setdefault(alias, []).append(name)
    shared = {alias: names for alias, names in owners.items() if len(names) > 1}
    assert not shared, f"settings declared by more than one destination: {shared}"
    prefixes = tuple({section(name) for name in REGISTRY})
    undeclared = sorted(f.alias for f in FIELDS.values() if f.alias.startswith(prefixes) and f.alias not in owners)
    assert not undeclared, f"settings of a destination's section no destination declares: {undeclared}"


def test_a_test_lead_notifies_exactly_the_destinations_that_say_they_notify():
    notifying = declaring("notifies")
    assert notifying and set(notifying) < set(REGISTRY)
    assert not set(notifying) & set(MAPPED_DESTINATIONS), "a CRM stores a record: it does not notify"
    test_lead = Lead(lead_id="t", received_at=datetime.now(UTC), channel="http", is_test=True)
    assert tuple(route(test_lead, (), REGISTRY, "sales@contoso.example", "notify")) == notifying


def test_a_rule_names_a_channel_of_exactly_the_channel_destinations():
    for name in (n for n in REGISTRY if n != "email"):  # a rule's "email" is its addresses
        rules = f'[{{"offer": "*", "{name}": "sales-emea"}}]'
        if destination_class(name).channels:
            assert load_rules(rules)[0].channels == {name: "sales-emea"}
        else:
            with pytest.raises(RoutingError, match="unknown keys"):
                load_rules(rules)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_a_delivery_naming_no_one_is_skipped_with_its_destinations_reason(name):
    reason = destination_class(name).needs_recipients
    lead = Lead(lead_id="l", received_at=datetime.now(UTC), channel="http")
    (planned,) = route(lead, (), (name,), email_to="").values()
    assert planned.recipients == () and planned.unaddressed == (reason or "")
    delivery = new_delivery("l", name, planned, datetime.now(UTC))
    assert (delivery.state, delivery.last_error) == (("skipped", reason) if reason else ("pending", None))


def test_the_mapped_destinations_are_those_with_a_mapping_setting():
    # cli.py builds its --destination choices from MAPPED_DESTINATIONS when imported: a literal there.
    assert MAPPED_DESTINATIONS == tuple(n for n in REGISTRY if getattr(destination_class(n), "mapping_setting", None))


def test_the_loopback_settings_cover_every_registered_destination():
    """tests/test_deadlines.py and tests/test_retry_after.py play their faults on every destination in
    DESTINATION_SETTINGS: a new destination missing from it (and from OWN_FAKE) would skip them."""
    assert not set(DESTINATION_SETTINGS) & set(OWN_FAKE)
    assert set(DESTINATION_SETTINGS) | set(OWN_FAKE) == set(REGISTRY)
    declared = declared_settings()
    for name, settings_at in DESTINATION_SETTINGS.items():
        strays = set(settings_at("https://127.0.0.1:1")) - declared[name][0]
        assert not strays, f"DESTINATION_SETTINGS[{name!r}] sets what {name} does not declare: {strays}"
