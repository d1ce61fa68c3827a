"""``python -m leads check``: is every enabled destination set up right, and if not, what to do.

Checks never create a record: each destination proves its credentials with a token and a harmless
read. The routing rules and the app's own storage are checked too, since a lead depends on them.
Each line is ``ok`` (leads get through), ``warning`` (they get through; something deserves a look)
or ``problem`` (they do not, until it is fixed; :func:`what_it_means` says what happens instead).
"""

from __future__ import annotations

from .destinations import Check, enabled_names, get_destination
from .routing import RoutingError, load_rules
from .settings import Settings, SettingsError, get_settings
from .telemetry import mask_urls

VALUES = "setting values"
VALUES_FIX = "set each named setting within its range (docs/settings.md), then restart the app"


def run_checks(settings: Settings | None = None) -> list[tuple[str, Check]]:
    try:
        settings = settings or get_settings()
    except SettingsError as refused:  # nothing else can be checked with settings the app refuses
        return [(VALUES, Check(False, str(refused), VALUES_FIX))]
    from .function_keys import function_keys_check

    results = [("storage", storage_check(settings)), ("routing", routing_check(settings)),
               (VALUES, Check(True, "every numeric setting is finite and within its range")),
               ("settings", key_vault_check(settings)), ("function keys", function_keys_check(settings))]  # fmt: skip
    results.append(("lead arrivals", arrivals_check(settings)))
    names = enabled_names(settings)
    if not names:
        results.append(("destinations", Check(False, "no destination is enabled", "set EMAIL_TO, WEBHOOK_URL "
                                              "or a CRM's settings (see docs/settings.md)")))  # fmt: skip
    if "email" in names and (settings.email_connection_string or settings.email_endpoint):
        from .destinations.email import limits_check

        results.append(("email limits", limits_check(settings)))
    for name in names:
        destination = get_destination(name, settings)
        try:
            results.append((name, destination.check()))
        except Exception as exc:  # a check must report, never crash the others
            results.append((name, Check.failed(destination.classify(exc))))
    # A URL quoted by a check may carry its secret (a Teams workflow's sig=, a Slack hook's path).
    return [(name, Check(check.ok, mask_urls(check.message), check.fix and mask_urls(check.fix)))
            for name, check in results]  # fmt: skip


def storage_check(settings: Settings) -> Check:
    from azure.core.exceptions import AzureError

    from .store import LeadStore

    try:
        LeadStore.from_settings(settings).ping()
    except (AzureError, ValueError) as exc:
        return Check(False, f"the app's storage cannot be used ({type(exc).__name__})",
                     "check AzureWebJobsStorage (or its __tableServiceUri and the identity's roles)")  # fmt: skip
    return Check(True, "reachable")


def arrivals_check(settings: Settings) -> Check:
    """Whether leads arrive as their history says they should (leads/silence.py)."""
    from azure.core.exceptions import AzureError

    from .silence import arrivals_check as arrivals

    try:
        return arrivals(settings)
    except (AzureError, ValueError) as exc:
        return Check.warn(f"the silence watch could not be read ({type(exc).__name__})", "see the storage line")


def key_vault_check(settings: Settings) -> Check:
    """App settings that still read ``@Microsoft.KeyVault(...)`` were not resolved by the platform:
    the app would use the reference itself as the secret."""
    unresolved = sorted(
        field.alias or name
        for name, field in type(settings).model_fields.items()
        if str(getattr(settings, name)).startswith("@Microsoft.KeyVault(")
    )
    if unresolved:
        return Check(False, f"Key Vault references not resolved: {', '.join(unresolved)}",
                     "give the app's identity 'Key Vault Secrets User' on the vault, check the secret exists, "
                     "and that keyVaultReferenceIdentity names that identity")  # fmt: skip
    return Check(True, "no unresolved Key Vault references")


def routing_check(settings: Settings) -> Check:
    try:
        rules = load_rules(settings.routing)
    except RoutingError as exc:
        return Check(False, str(exc), "fix LEADS_ROUTING; until then every lead takes the default route")
    enabled = set(enabled_names(settings))
    unknown = sorted({name for rule in rules for name in rule.destinations or () if name not in enabled})
    if unknown:
        return Check(False, f"rules name destinations that are not enabled: {', '.join(unknown)}",
                     "enable them with their settings, or remove them from LEADS_ROUTING")  # fmt: skip
    return Check(True, f"{len(rules)} rules" if rules else "no rules: every enabled destination gets every lead")


STATES = {
    "ok": "leads get through",
    "warning": "leads get through, but read the line",
    "problem": "leads do not get through until it is fixed",
}


def what_it_means(name: str, check: Check) -> str | None:
    """What a problem on this line does to a lead, in a few words; None unless it is one."""
    if check.state != "problem":
        return None
    return {
        "storage": "no lead can be stored: POST /api/leads answers 503 and the table poll waits",
        "routing": "leads take the default route, or skip destinations a rule names but that are not enabled",
        "settings": "deliveries to the destinations these settings belong to fail",
        VALUES: "the app refuses these settings where it starts: no lead is taken in (POST /api/leads fails, the "
                "table poll does not run) until they are fixed",
        "destinations": "leads are stored, and sent nowhere",
        "lead arrivals": "leads the marketplace sends are not taken in until it is fixed (it sends each lead once)",
    }.get(name, f"leads are stored but not delivered to {name} (retried for LEADS_RETRY_HOURS where that may "
                "help); once fixed, `python -m leads replay` sends those that failed")  # fmt: skip
