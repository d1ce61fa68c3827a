"""``python -m leads check``: is every enabled destination set up right, and if not, what to do.

Checks never create a record: each destination proves its credentials with a token and a harmless
read. The routing rules and the app's own storage are checked too, since a lead depends on them.
Each line is ``ok`` (leads get through), ``warning`` (they get through; something deserves a look)
or ``problem`` (they do not, until it is fixed; :func:`what_it_means` says what happens instead).
A line applies to where the app runs (``leads/ops/advice.py``): a local run is not told of function
keys or of what Azure can reach. Where ``status`` knows deliveries to a destination failed and
wait for replay, that destination's line says so, so that the two never disagree.
"""

from __future__ import annotations

from leads.core.settings import Settings, get_settings
from leads.core.telemetry import mask_urls
from leads.destinations import REGISTRY, Check, enabled_names, get_destination
from leads.destinations.routing import RoutingError, load_rules


def run_checks(settings: Settings | None = None) -> list[tuple[str, Check]]:
    refused: list[tuple[str, Check]] = []
    if settings is None:
        settings, refused = _readable_settings()
        if settings is None:
            return refused
    from leads.ops.function_keys import function_keys_check

    storage = storage_check(settings)
    results = [
        *refused,
        ("storage", storage),
        ("routing", routing_check(settings)),
        ("settings", key_vault_check(settings)),
        ("id key", id_key_check(settings, storage.ok)),
        ("function keys", function_keys_check(settings)),
    ]
    if storage.ok:
        results.append(("lead arrivals", arrivals_check(settings)))
    names = enabled_names(settings)
    if not names:
        results.append(
            (
                "destinations",
                Check(
                    False,
                    "no destination is enabled",
                    "set EMAIL_TO, WEBHOOK_URL or a CRM's settings (see docs/settings.md)",
                ),
            )
        )
    if "email" in names and (settings.email_connection_string or settings.email_endpoint):
        from leads.destinations.email import limits_check

        results.append(("email limits", limits_check(settings)))
    for name in names:
        destination = get_destination(name, settings)
        try:
            results.append((name, destination.check()))
        except Exception as exc:  # a check must report, never crash the others
            results.append((name, Check.failed(destination.classify(exc))))
    results += recipients_checks(settings, names)
    if storage.ok:
        results = failing_now(results, settings)
    # A URL quoted by a check may carry its secret (a Teams workflow's sig=, a Slack hook's path).
    return [
        (name, Check(check.ok, mask_urls(check.message), check.fix and mask_urls(check.fix))) for name, check in results
    ]


def storage_check(settings: Settings) -> Check:
    from azure.core.exceptions import AzureError

    from leads.core.deadlines import PROBE_SECONDS
    from leads.core.http import deadline
    from leads.core.storage import StorageNotConfigured
    from leads.ops.advice import storage_failure, storage_fix
    from leads.store.lead_store import LeadStore

    try:
        with deadline(PROBE_SECONDS):  # /api/health, /api/status and check answer in seconds all the same
            LeadStore.from_settings(settings).ping()
    except (AzureError, ValueError, StorageNotConfigured) as exc:
        return Check(False, f"the app's storage cannot be used: {storage_failure(exc)}", storage_fix(settings))
    return Check(True, "reachable")


def arrivals_check(settings: Settings) -> Check:
    """Whether leads arrive as their history says they should (leads/intake/silence.py)."""
    from azure.core.exceptions import AzureError

    from leads.intake.silence import arrivals_check as arrivals

    try:
        return arrivals(settings)
    except (AzureError, ValueError) as exc:
        return Check.warn(f"the silence watch could not be read ({type(exc).__name__})", "see the storage line")


def _readable_settings() -> tuple[Settings | None, list[tuple[str, Check]]]:
    """This process's settings, and a problem line for each value the settings model refused
    (the other lines are checked with its default in its place)."""
    from pydantic import ValidationError

    from leads.ops.advice import SETTINGS_FIX, setting_problems, settings_despite

    try:
        return get_settings(), []
    except ValidationError as error:
        refused = [
            ("setting value", Check(False, problem, f"{SETTINGS_FIX}; the lines below take its default"))
            for _, problem in setting_problems(error)
        ]
        try:
            return settings_despite(error), refused
        except ValidationError:
            return None, refused


def recipients_checks(settings: Settings, enabled: list[str]) -> list[tuple[str, Check]]:
    """Who is told: sales (``EMAIL_TO``) when leads go elsewhere too, and the operators
    (``LEADS_ALERT_TO``) when a delivery fails for good."""
    from leads.core.normalise import normalise_email
    from leads.destinations.routing import split_addresses

    results = []
    sales = split_addresses(settings.email_to)
    if wrong := [address for address in sales if not normalise_email(address)[1]]:
        results.append(
            (
                "recipients",
                Check(
                    False,
                    f"EMAIL_TO holds {', '.join(map(repr, wrong))}, which is not an "
                    "email address: the mails about leads to it fail",
                    "set EMAIL_TO to addresses separated by ';': sales@contoso.com; emea@contoso.com",
                ),
            )
        )
    elif not sales and enabled and "email" not in enabled:
        tests = (
            ", and test leads (Partner Center's Validate) go nowhere: LEADS_TEST_LEADS=notify mails them only"
            if settings.test_leads == "notify"
            else ""
        )
        results.append(
            (
                "recipients",
                Check.warn(
                    f"EMAIL_TO is not set: nobody is mailed about leads{tests}",
                    "set EMAIL_TO to sales' addresses (';' between several)",
                ),
            )
        )
    operators = split_addresses(settings.alert_to)
    if wrong := [address for address in operators if not normalise_email(address)[1]]:
        results.append(
            (
                "alerts",
                Check.warn(
                    f"LEADS_ALERT_TO holds {', '.join(map(repr, wrong))}, which is not an "
                    "email address: alerts of failed deliveries to it fail",
                    "set LEADS_ALERT_TO to the operators' addresses (';' between several)",
                ),
            )
        )
    elif not operators:
        results.append(
            (
                "alerts",
                Check.warn(
                    "LEADS_ALERT_TO is not set: a delivery that fails for good alerts "
                    "nobody; it shows only in python -m leads status",
                    "set LEADS_ALERT_TO to the operators' addresses (docs/deploy.md, "
                    "Destinations and alerts on the deployed app)",
                ),
            )
        )
    else:
        outbox = (
            ""
            if settings.email_connection_string or settings.email_endpoint
            else f" (as .eml files in {settings.email_outbox_dir}/: ACS is not configured)"
        )
        results.append(("alerts", Check(True, f"failed deliveries are mailed to {', '.join(operators)}{outbox}")))
    return results


def failing_now(results: list[tuple[str, Check]], settings: Settings) -> list[tuple[str, Check]]:
    """Each destination's line, saying too how many of its deliveries failed and wait for replay,
    as ``status`` counts them (its index of failed deliveries: the open work, not the history)."""
    from leads.destinations.notice import one_line
    from leads.ops.operations import status

    report = status(settings)
    latest = {}
    for delivery in report.recent_failures:  # newest first
        latest.setdefault(delivery.destination, delivery)
    told = []
    for name, check in results:
        count = report.failed.get(name, 0)
        if name not in REGISTRY or not count:
            told.append((name, check))
            continue
        error = latest[name].last_error if name in latest else None
        said = f"{count} deliveries failed and wait for replay (python -m leads status)" + (
            f"; the latest: {one_line(error, 200)}" if error else ""
        )
        fix = f"once the cause is fixed: python -m leads replay --destination {name}"
        told.append(
            (
                name,
                Check(
                    False,
                    f"{check.message}; but {said}" if check.ok else f"{check.message}; {said}",
                    f"{check.fix}; {fix}" if check.fix else fix,
                ),
            )
        )
    return told


def key_vault_check(settings: Settings) -> Check:
    """App settings that still read ``@Microsoft.KeyVault(...)`` were not resolved by the platform:
    the app would use the reference itself as the secret."""
    unresolved = sorted(
        field.alias or name
        for name, field in type(settings).model_fields.items()
        if str(getattr(settings, name)).startswith("@Microsoft.KeyVault(")
    )
    if unresolved:
        return Check(
            False,
            f"Key Vault references not resolved: {', '.join(unresolved)}",
            "give the app's identity 'Key Vault Secrets User' on the vault, check the secret exists, "
            "and that keyVaultReferenceIdentity names that identity",
        )
    return Check(True, "no unresolved Key Vault references")


def id_key_check(settings: Settings, storage_ok: bool = True) -> Check:
    """``LEADS_ID_KEY``: set, long enough, and the key this store first ran with (leads/core/pseudonyms.py)."""
    from azure.core.exceptions import AzureError

    from leads.core.pseudonyms import SETTING, key_changed, key_problem
    from leads.store.lead_store import LeadStore

    if problem := key_problem(settings):
        return Check.warn(problem[1], problem[2])
    if settings.id_key.strip().startswith("@Microsoft.KeyVault("):
        return Check.warn(
            f"{SETTING} is an unresolved Key Vault reference: digests are plain until it resolves",
            "see the settings line",
        )
    if not storage_ok:
        return Check.warn(f"{SETTING} is set; whether it is the store's cannot be read (see the storage line)")
    from leads.core.deadlines import PROBE_SECONDS
    from leads.core.http import deadline
    from leads.core.storage import StorageNotConfigured

    try:
        with deadline(PROBE_SECONDS):
            store = LeadStore.from_settings(settings)
            store.ensure_tables()
            changed = key_changed(store.checkpoints)
    except (AzureError, ValueError, StorageNotConfigured) as exc:
        return Check.warn(f"{SETTING} is set; whether it is the store's could not be read ({type(exc).__name__})")
    if changed:
        return Check.warn(
            f"{SETTING} is not the key this store's ids and rows were made with: import no longer "
            "matches the leads stored before, and forget --email misses their email rows",
            "set it back to the earlier key (Key Vault keeps every version of the secret "
            "leads-id-key); never change it once leads are stored",
        )
    return Check(True, f"{SETTING} is set, the key this store's ids are made with")


def routing_check(settings: Settings) -> Check:
    try:
        rules = load_rules(settings.routing)
    except RoutingError as exc:
        return Check(False, str(exc), "fix LEADS_ROUTING; until then every lead takes the default route")
    enabled = set(enabled_names(settings))
    unknown = sorted({name for rule in rules for name in rule.destinations or () if name not in enabled})
    if unknown:
        return Check(
            False,
            f"rules name destinations that are not enabled: {', '.join(unknown)}",
            "enable them with their settings, or remove them from LEADS_ROUTING",
        )
    problem = mapping_names_problem(rules, settings, enabled)
    if problem:
        return problem
    return Check(True, f"{len(rules)} rules" if rules else "no rules: every enabled destination gets every lead")


def mapping_names_problem(rules, settings: Settings, enabled: set[str]) -> Check | None:
    """A rule's ``mapping`` that no enabled CRM's mapping setting defines (a typo would send its
    leads with the default mappings unnoticed)."""
    from leads.destinations import destination_class
    from leads.destinations.mapping import Mappings, names
    from leads.destinations.routing import MAPPED_DESTINATIONS

    defined: dict[str, set[str]] = {}
    for name in MAPPED_DESTINATIONS:
        if name in enabled:
            setting = destination_class(name).mapping_setting
            text = getattr(settings, setting.lower())
            defined[name] = names(Mappings(setting, text))
    missing = sorted(
        {
            rule.mapping
            for rule in rules
            if rule.mapping and not any(rule.mapping in found for found in defined.values())
        }
    )
    if not missing:
        return None
    return Check(
        False,
        f"rules name field mappings no enabled CRM's mapping setting defines: {', '.join(missing)}",
        'define them under "mappings" in SALESFORCE_MAPPING, HUBSPOT_MAPPING, DYNAMICS_MAPPING or '
        'MARKETO_MAPPING (docs/settings.md, Field mapping), or correct the rule\'s "mapping"',
    )


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
        "setting value": "the app cannot read its settings: every function fails (POST /api/leads answers 500 and "
        "stores nothing; the poll and the deliveries stop) until it is fixed",
        "recipients": "the mails about leads fail (retried, then failed and replayable with `replay`)",
        "storage": "no lead can be stored: POST /api/leads answers 503 and the table poll waits",
        "routing": "leads take the default route, or skip destinations a rule names but that are not enabled",
        "settings": "deliveries to the destinations these settings belong to fail",
        "destinations": "leads are stored, and sent nowhere",
        "lead arrivals": "leads the marketplace sends are not taken in until it is fixed (it sends each lead once)",
    }.get(
        name,
        f"leads are stored but not delivered to {name} (retried for LEADS_RETRY_HOURS where that may "
        "help); once fixed, `python -m leads replay` sends those that failed",
    )
