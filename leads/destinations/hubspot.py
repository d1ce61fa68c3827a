"""HubSpot: each lead upserted as a contact through the date-versioned CRM API, keyed on email.

What it does and why (token, writes, fields, do-not-contact, errors, rate, ``check``): docs/hubspot.md,
"How the app talks to HubSpot"; that page also says which of the vendor's docs were checked, and when.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from leads.destinations.base import (
    Check,
    DeliveryError,
    HttpDestination,
    PermanentError,
    Refusal,
    Route,
    Sent,
    TransientError,
    parse_retry_after,
)
from leads.destinations.mapping import FieldSpec, Mappings, check_mapping, mapped_record, options_of
from leads.destinations.ratelimit import CallLimiter

if TYPE_CHECKING:
    import requests

    from leads.core.model import Lead
    from leads.core.settings import Settings

log = logging.getLogger(__name__)

# The date version of HubSpot's API every call uses: bump it here (each is supported 18 months).
API_VERSION = "2026-09"
CONTACTS = f"/crm/objects/{API_VERSION}/contacts"
PROPERTIES = f"/crm/properties/{API_VERSION}/contacts"
SCHEMA_SCOPE = "crm.schemas.contacts.read"  # reading the property definitions, for the field mapping
PROPERTIES_EVERY = 3600.0  # seconds the property definitions are trusted
CRM = "HubSpot's contact"
MAPPING_FIX = (
    "correct HUBSPOT_MAPPING, or the property in HubSpot (Settings > Properties > Contact properties: its "
    "internal name, its options)"
)
# What the built-in mapping puts in each contact property (python -m leads mapping hubspot).
BUILTIN_FIELDS = {
    "email": "email (the upsert's key)",
    "firstname": "first_name",
    "lastname": "last_name",
    "phone": "phone",
    "company": "company",
    "jobtitle": "title",
    "country": "country's name",
    "message": "the test and do-not-contact marks, source and action, offer, campaign, description, the lead id",
}
# The properties API's types → the mapping's kinds (an enumeration shown as checkboxes takes several).
KINDS = {
    "string": "text",
    "phone_number": "text",
    "number": "number",
    "date": "date",
    "datetime": "datetime",
    "bool": "boolean",
    "enumeration": "picklist",
}
# HubSpot's lowest limit for a private app or key (Free and Starter; Professional and Enterprise allow 190).
CALLS_PER_WINDOW = 100
WINDOW_SECONDS = 10.0
WRITE_SCOPE = "crm.objects.contacts.write"
READ_SCOPE = "crm.objects.contacts.read"
SERVICE_KEYS = "Settings > Integrations > Service Keys (or Development > Keys > Service keys)"
TOKEN_FIX = (
    f"copy the Service Key ({SERVICE_KEYS} > your key > Show) into HUBSPOT_TOKEN; an existing legacy private "
    "app's access token works too (Development > Legacy apps > the app > Auth > Show token); a rotated key "
    "or token stops working when its rotation expires"
)
RULES_FIX = (
    "these are the portal's own rules, which HubSpot applies to API writes from the 2026-09 version: relax or "
    "remove the rule for marketplace leads (Settings > Properties > the property > Rules; a property required "
    "on the contact's Create record form or by a conditional rule: Settings > Objects > Contacts), then "
    "replay: python -m leads replay --destination hubspot"
)
# HubSpot's own checks of a value against its property's type (the app writes text to text
# properties, so these mean a property was changed); any other code is one of the portal's rules.
TYPE_ERRORS = {
    "READ_ONLY_VALUE",
    "INVALID_STRING",
    "INVALID_OPTION",
    "INVALID_INTEGER",
    "INVALID_LONG",
    "INVALID_DOUBLE",
    "INVALID_DATE",
    "INVALID_DATETIME",
    "INVALID_BOOLEAN",
}
_PROPERTY_ERRORS = re.compile(r"\[\s*\{.*\}\s*\]", re.DOTALL)
_TEXT_CODE = re.compile(r"^[A-Z][A-Z0-9_]{1,60}$")
_PROPERTY_NAME = re.compile(r"^[a-z0-9_]{1,100}$")


class HubSpotDestination(HttpDestination):
    name = "hubspot"
    setting_fields = ("hubspot_token", "hubspot_url", "hubspot_mapping")
    secret_fields = ("hubspot_token",)
    who = "HubSpot"
    statuses = {
        401: Refusal(message="{label}: HUBSPOT_TOKEN is not valid (revoked, rotated or mistyped)", fix=TOKEN_FIX),
        403: Refusal(  # without MISSING_SCOPES
            fix="the key's or app's creator may have lost access to contacts: have a super admin create a new "
            "Service Key, or give its creator contact permissions"
        ),
        404: Refusal(
            message="{label}: HUBSPOT_URL does not answer as HubSpot's API",
            fix="leave HUBSPOT_URL unset (https://api.hubapi.com)",
        ),
        409: Refusal(message="{label}: the contact is being changed by another call", transient=True, retry_after=2),
    }

    def __init__(
        self,
        token: str,
        url: str = "https://api.hubapi.com",
        timeout: float = 30.0,
        session: requests.Session | None = None,
        limiter: CallLimiter | None = None,
        mapping: str = "",
    ) -> None:
        super().__init__(
            timeout, session, limiter or CallLimiter(CALLS_PER_WINDOW, WINDOW_SECONDS, concurrent=32, service="HubSpot")
        )
        self.token = token.strip()
        self.url = (url or "https://api.hubapi.com").strip().rstrip("/")
        self.mappings = Mappings("HUBSPOT_MAPPING", mapping)
        self._specs: dict[str, FieldSpec] | None = None
        self._specs_at = 0.0

    mapping_setting = "HUBSPOT_MAPPING"
    builtin_fields = BUILTIN_FIELDS

    @staticmethod
    def builtin_record(lead: Lead, route: Route) -> dict[str, str]:
        return {"email": lead.email, **contact_properties(lead, route)}

    @classmethod
    def is_enabled(cls, settings: Settings) -> bool:
        return bool(settings.hubspot_token)

    @classmethod
    def from_settings(cls, settings: Settings) -> HubSpotDestination | None:
        if not cls.is_enabled(settings):
            return None
        return cls(
            settings.hubspot_token,
            settings.hubspot_url,
            settings.http_timeout_seconds,
            mapping=settings.hubspot_mapping,
        )

    # --- sending ---------------------------------------------------------------------------------

    def send(self, lead: Lead, route: Route) -> Sent:
        self._require_settings()
        if not lead.email or lead.email_valid is False:
            raise PermanentError(
                "the lead has no valid email address, and HubSpot contacts are upserted on email",
                fix="nothing to change in the settings: this lead (often a customer whose data "
                "the marketplace withholds) cannot go to HubSpot; find it with python -m leads "
                "show",
            )
        builtin = contact_properties(lead, route)
        properties = mapped_record(self.mappings, route, lead, builtin, self.property_specs, CRM, as_text=True)
        properties.pop("email", None)  # the upsert's key is the lead's email, whatever a mapping says
        body = {"inputs": [{"idProperty": "email", "id": lead.email, "properties": properties}]}
        response = self._request("POST", f"{CONTACTS}/batch/upsert", json=body)
        answer = _json_body(response)
        if response.status_code == 400:
            self._specs = None  # the portal's properties may have changed: read them again next time
        if response.status_code in (200, 201, 207) and isinstance(answer, dict):
            results = [r for r in answer.get("results") or [] if isinstance(r, dict) and r.get("id")]
            if results:
                return Sent(external_id=str(results[0]["id"]), detail={"new": str(bool(results[0].get("new"))).lower()})
            errors = [e for e in answer.get("errors") or [] if isinstance(e, dict)]
            if errors:  # 207 multi-status: the input failed on its own
                raise self.error(400, errors[0], response.headers, lead=lead)
        raise self.error(response.status_code, answer, response.headers, lead=lead)

    def property_specs(self) -> dict[str, FieldSpec]:
        """The portal's contact properties as the field mapping sees them, from ``GET
        /crm/properties/<version>/contacts``, read again each hour and after a refused write."""
        import time

        if self._specs is None or time.monotonic() - self._specs_at > PROPERTIES_EVERY:
            response = self._request("GET", PROPERTIES)
            answer = _json_body(response)
            if response.status_code != 200 or not isinstance(answer, dict):
                raise self.error(response.status_code, answer, response.headers)
            self._specs, self._specs_at = property_specs(answer.get("results") or []), time.monotonic()
        return self._specs

    # --- checking --------------------------------------------------------------------------------

    def check(self) -> Check:
        result = self._check_access()
        if not result.ok:
            return result
        self._specs = None
        notes = check_mapping(self.mappings, self.property_specs, CRM, MAPPING_FIX)
        if isinstance(notes, Check):
            return notes
        return Check(True, "; ".join([result.message, *notes]))

    def _check_access(self) -> Check:
        try:
            self._require_settings()
            response = self._request("GET", CONTACTS, params={"limit": 1})
            if response.status_code != 200 or not isinstance(_json_body(response), dict):
                raise self.error(response.status_code, _json_body(response), response.headers)
            # An upsert of nothing: HubSpot checks the key's scopes before the inputs, so a key
            # without the write scope gets MISSING_SCOPES, and no contact is written either way.
            response = self._request("POST", f"{CONTACTS}/batch/upsert", json={"inputs": []})
            if response.status_code in (401, 403, 404, 429) or response.status_code >= 500:
                raise self.error(response.status_code, _json_body(response), response.headers)
        except DeliveryError as error:
            return Check.failed(error)
        except Exception as exc:  # noqa: BLE001 — a check reports, it never raises
            return Check.failed(_unreachable(self.classify(exc)))
        return Check(
            True, f"token valid, contacts readable, {WRITE_SCOPE} granted; upsert on email (API {API_VERSION})"
        )

    def _require_settings(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise PermanentError("HUBSPOT_URL is not a URL", fix="leave HUBSPOT_URL unset (https://api.hubapi.com)")
        if not self.token:
            raise PermanentError("HUBSPOT_TOKEN is empty", fix=TOKEN_FIX)

    # --- the API -----------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, json: Any = None, params: dict | None = None, auth: bool = True
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        with self.limiter.slot():
            return self.session.request(
                method, self.url + path, json=json, params=params, headers=headers, timeout=self.timeout
            )

    def error(self, status: int, body: Any, headers: Any = None, *, lead: Lead | None = None) -> DeliveryError:
        """The error for a HubSpot answer that is not a success (``lead``: the one sent, whose values
        are taken out of HubSpot's messages)."""
        headers = headers or {}
        body = body if isinstance(body, dict) else {}
        category = str(body.get("category") or body.get("errorType") or "")
        code = category if _TEXT_CODE.match(category) else ""
        label = f"HubSpot answered {status} {code}".rstrip()
        scopes = required_scopes(body) if status == 403 else []
        if scopes or (status == 403 and category == "MISSING_SCOPES"):
            named = ", ".join(scopes) or WRITE_SCOPE
            return PermanentError(
                f"{label}: HUBSPOT_TOKEN lacks the scope {named}",
                fix=f"add {named} to the Service Key ({SERVICE_KEYS} > the key > Add new scope) "
                "or, for a legacy private app, on its Scopes tab and commit the change; then "
                "replay: python -m leads replay --destination hubspot",
            )
        if status == 429:
            return TransientError(
                f"{label}: rate limit ({_policy(body) or 'rate'} policy)", retry_after=retry_after(body, headers)
            )
        if status == 400 or (category == "VALIDATION_ERROR" and status not in self.statuses):
            return validation_error(label, body, lead)
        return self.refused(status, code, headers)


def validation_error(label: str, body: dict[str, Any], lead: Lead | None) -> PermanentError:
    """The error for a VALIDATION_ERROR: the lead's email, a property missing from the portal, the
    portal's own rules, a property of another type."""
    problems = property_errors(body)
    if any(code == "INVALID_EMAIL" for code, _ in problems):
        return PermanentError(
            f"{label}: HubSpot rejects the lead's email address (INVALID_EMAIL)",
            fix="nothing to change in the settings: add this contact in HubSpot by hand",
        )
    missing = [name for code, name in problems if code == "PROPERTY_DOESNT_EXIST" and name]
    if missing:
        return PermanentError(
            f"{label}: the contact property {', '.join(missing)} does not exist in this portal",
            fix=f"correct {missing[0]!r} in HUBSPOT_MAPPING if it maps it, "
            "else restore that default contact property (Settings > Properties)",
        )
    rules = [
        (code, name, rule)
        for code, name, rule in rule_messages(body, lead)
        if code not in TYPE_ERRORS and code not in ("INVALID_EMAIL", "PROPERTY_DOESNT_EXIST")
    ]
    if rules:
        named = "; ".join(f"{name or '?'} ({code}{': ' + rule if rule else ''})" for code, name, rule in rules[:5])
        return PermanentError(f"{label}: the portal's validation rules reject the contact: {named}", fix=RULES_FIX)
    if problems:
        named = ", ".join(f"{name or '?'} ({code})" for code, name in problems[:5])
        return PermanentError(
            f"{label}: HubSpot rejected the properties {named}",
            fix="check those contact properties' types in Settings > Properties: the app writes text",
        )
    return PermanentError(label, fix="report this as a bug of the app")


def contact_properties(lead: Lead, route: Route) -> dict[str, str]:
    """The contact's built-in properties (all text, as HubSpot takes them); empty ones left out."""
    properties = {
        "firstname": lead.first_name,
        "lastname": lead.last_name,
        "phone": lead.phone,
        "company": lead.company,
        "jobtitle": lead.title,
        "country": country_name(lead.country),
        "message": message(lead, route),
    }
    return {key: str(value) for key, value in properties.items() if value not in (None, "")}


def property_specs(results: list[dict[str, Any]]) -> dict[str, FieldSpec]:
    """The properties API's definitions as the mapping sees them: read-only ones (``readOnlyValue``,
    computed by HubSpot) cannot be written; an enumeration takes its options."""
    specs = {}
    for item in results:
        name = item.get("name")
        if not isinstance(name, str):
            continue
        kind = KINDS.get(str(item.get("type")), "unsupported")
        if kind == "picklist" and item.get("fieldType") == "checkbox":
            kind = "multipicklist"
        read_only = bool((item.get("modificationMetadata") or {}).get("readOnlyValue")) or bool(item.get("calculated"))
        why = (
            "HubSpot sets it (a read-only or calculated property)"
            if read_only
            else (f"its type {item.get('type')} is not mapped" if kind == "unsupported" else "")
        )
        options = options_of(
            (option.get("value"), option.get("label"))
            for option in item.get("options") or []
            if not option.get("hidden")
        )
        specs[name] = FieldSpec(
            name,
            kind,
            65536 if kind == "text" else None,
            options,
            True,
            not read_only,
            why,
            str(item.get("label") or ""),
        )
    return specs


def required_scopes(body: dict[str, Any]) -> list[str]:
    """The scopes a 403 MISSING_SCOPES names (``requiredGranularScopes``, or the older ``requiredScopes``)."""
    scopes: list[str] = []
    for error in body.get("errors") or []:
        context = error.get("context") if isinstance(error, dict) else None
        if isinstance(context, dict):
            for key in ("requiredGranularScopes", "requiredScopes"):
                for scope in context.get(key) or []:
                    if isinstance(scope, str) and scope not in scopes:
                        scopes.append(scope)
    return scopes


def property_errors(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    """``(error code, property name)`` pairs of a VALIDATION_ERROR (see :func:`_validation_items`).
    Only codes and property names are kept: HubSpot's messages quote the values."""
    return [(code, name) for code, name, _ in _validation_items(body)]


def rule_messages(body: dict[str, Any], lead: Lead | None) -> list[tuple[str, str | None, str]]:
    """``(error code, property name, the rule's message)`` of a VALIDATION_ERROR; the message (an
    admin's rule text, which may quote the value) with the lead's values taken out, shortened."""
    return [(code, name, _without_values(message, lead)) for code, name, message in _validation_items(body)]


def _validation_items(body: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """``(error code, property name, message)`` of a VALIDATION_ERROR: from the JSON list HubSpot
    embeds in ``message`` ("Property values were not valid: [{...}]"), then from ``errors[]``
    (``code``, ``context.propertyName``)."""
    items: list[tuple[Any, Any, Any]] = []
    match = _PROPERTY_ERRORS.search(str(body.get("message") or ""))
    if match:
        try:
            parsed = json.loads(match.group(0))
        except ValueError:
            parsed = []
        items += (
            [(item.get("error"), [item.get("name")], item.get("message")) for item in parsed if isinstance(item, dict)]
            if isinstance(parsed, list)
            else []
        )
    for error in body.get("errors") or []:
        if isinstance(error, dict):
            context = error.get("context") if isinstance(error.get("context"), dict) else {}
            names = context.get("propertyName") or [None]
            items.append((error.get("code"), names if isinstance(names, list) else [names], error.get("message")))
    found = []
    for code, names, message in items:
        if _TEXT_CODE.match(str(code or "")):
            for name in names:
                found.append(
                    (
                        str(code),
                        name if isinstance(name, str) and _PROPERTY_NAME.match(name) else None,
                        str(message or ""),
                    )
                )
    return found


def _without_values(text: str, lead: Lead | None) -> str:
    """A rule's message without anything of the lead's (names, email, phone, company, notes)."""
    values = lead.personal_values() if lead is not None else []
    for value in sorted((v for v in values if v and len(v) >= 2), key=len, reverse=True):
        text = text.replace(value, "…")
    if lead is None:
        text = re.sub(r"\S+@\S+", "…", text)
    return re.sub(r"\s+", " ", text).strip()[:200]


def retry_after(body: dict[str, Any], headers: Any) -> float:
    """How long a 429 says to wait: ``Retry-After``; else until midnight for the daily policy; else
    the rolling window (``X-HubSpot-RateLimit-Interval-Milliseconds``, 10 s)."""
    given = parse_retry_after(headers.get("Retry-After"))
    if given is not None:
        return given
    if _policy(body) == "DAILY":
        # HubSpot resets the daily quota at midnight in the portal's time zone, which the app does
        # not know: midnight UTC is a guess, and an early retry only gets another 429.
        now = datetime.now(UTC)
        return ((now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0) - now).total_seconds()
    try:
        return max(1.0, float(headers.get("X-HubSpot-RateLimit-Interval-Milliseconds") or 10000) / 1000)
    except ValueError:
        return 10.0


def message(lead: Lead, route: Route) -> str:
    """The ``message`` property: marks, source and offer, campaign, the customer's notes, lead id."""
    lines = []
    if route.test or lead.is_test:
        lines.append("[TEST] a test lead from the marketplace (Partner Center validation)")
    if lead.do_not_contact:
        lines.append("DO NOT CONTACT: the customer came through a cross-listed partner; record only")
    what = " on ".join(part for part in (lead.action_words, lead.source_words) if part)
    lines.append(f"Lead source: Microsoft commercial marketplace{f' ({what})' if what else ''}")
    offer = " ".join(part for part in (lead.offer_title, f"({lead.offer_id})" if lead.offer_id else None) if part)
    if offer:
        lines.append(f"Offer: {offer}")
    if lead.campaign:
        pairs = (
            f"{key}={', '.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in lead.campaign.items()
        )
        lines.append("Campaign: " + ", ".join(pairs))
    if lead.description:
        lines.append(f"Notes: {lead.description}")
    lines.append(f"Lead id: {lead.lead_id}")
    return "\n".join(lines)[:65000]


def country_name(code: str | None) -> str | None:
    """``United States`` for ``US``; anything else as it is."""
    if not code or len(code) != 2 or not code.isalpha():
        return code
    import pycountry

    country = pycountry.countries.get(alpha_2=code.upper())
    return (getattr(country, "common_name", None) or country.name) if country is not None else code


def _policy(body: dict[str, Any]) -> str:
    policy = str(body.get("policyName") or "")
    return policy if _TEXT_CODE.match(policy) else ""


def _json_body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _unreachable(error: DeliveryError) -> DeliveryError:
    if error.transient and "could not reach" in str(error):
        return TransientError(
            f"{error} at HUBSPOT_URL",
            fix="check HUBSPOT_URL (leave it unset for https://api.hubapi.com) and the app's outbound network",
        )
    return error
