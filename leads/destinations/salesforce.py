"""Salesforce, two ways: the REST API (``salesforce``) and Web-to-Lead (``salesforce-w2l``).

What it does and why (token, writes, fields, do-not-contact, errors, rate, ``check``): docs/salesforce.md,
"How the app talks to Salesforce"; that page also says which of the vendor's docs were checked, and when.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

from leads.destinations.base import (
    Check,
    DeliveryError,
    HttpDestination,
    PermanentError,
    Refusal,
    Route,
    Sent,
    TransientError,
    classify_error,
    from_status,
    unreachable,
)
from leads.destinations.mapping import FieldSpec, Mappings, check_mapping, mapped_record, options_of

if TYPE_CHECKING:
    import requests

    from leads.core.model import Lead
    from leads.core.settings import Settings

log = logging.getLogger(__name__)

API_VERSION = "59.0"
CRM = "Salesforce's Lead"
MAPPING_FIX = (
    "correct the field's API name or value in SALESFORCE_MAPPING, or the field in Salesforce (Setup → "
    "Object Manager → Lead → Fields & Relationships: its picklist values, its Field-Level Security for the "
    "Run As user)"
)
PLACEHOLDER = "[not provided]"  # LastName and Company are required on every Lead
MARKER = "Marketplace lead id: "
DESCRIBE_EVERY = 3600.0  # seconds a describe of Lead is trusted
# Lengths of the standard Lead fields; longer text is cut rather than rejected (STRING_TOO_LONG).
LENGTHS = {
    "FirstName": 40,
    "LastName": 80,
    "Company": 255,
    "Title": 128,
    "Email": 80,
    "Phone": 40,
    "Country": 80,
    "Description": 32000,
    "LeadSource": 255,
}
SOURCE_WORDS = {
    "AzureMarketplace": "Azure Marketplace",
    "AzurePortal": "Azure portal",
    "AppSource": "AppSource",
    "TestDrive": "Test Drive",
}
W2L_NOTE = (
    "Web-to-Lead cannot confirm delivery: Salesforce answers 200 whatever becomes of a lead (a wrong "
    "SALESFORCE_OID, a missing required field, a validation rule, more than 500 leads a day), and a "
    "retried post may create the lead twice"
)
W2L_FIX = (
    "for leads you can count on, use the REST API instead: set SALESFORCE_URL, SALESFORCE_CLIENT_ID, "
    "SALESFORCE_CLIENT_SECRET (and SALESFORCE_EXTERNAL_ID_FIELD); see docs/salesforce.md"
)


# --- the record ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadFields:
    """What one ``describe`` of Lead says that the mapping needs: the Lead Source picklist's active
    values (lower-cased value or label → value), and the CountryCode picklist's codes when the org
    has State and Country/Territory Picklists (None when it has not)."""

    lead_sources: dict[str, str]
    country_codes: frozenset[str] | None = None
    specs: dict[str, FieldSpec] = field(default_factory=dict)  # every field, for the field mapping

    @classmethod
    def from_describe(cls, describe: dict[str, Any], upsert: bool = False) -> LeadFields:
        fields = {field["name"]: field for field in describe.get("fields", [])}
        sources: dict[str, str] = {}
        lead_source = fields.get("LeadSource", {})
        for item in lead_source.get("picklistValues") or [] if lead_source.get("createable") else []:
            if item.get("active", True) and item.get("value"):
                sources.setdefault(item["value"].casefold(), item["value"])
                sources.setdefault((item.get("label") or item["value"]).casefold(), item["value"])
        codes = None
        if "CountryCode" in fields:
            codes = frozenset(
                item["value"]
                for item in fields["CountryCode"].get("picklistValues") or []
                if item.get("active", True) and item.get("value")
            )
        return cls(sources, codes, field_specs(describe, upsert))

    def lead_source(self, lead: Lead) -> str | None:
        for candidate in (SOURCE_WORDS.get(lead.source or ""), lead.source_words, lead.source):
            if candidate and candidate.casefold() in self.lead_sources:
                return self.lead_sources[candidate.casefold()]
        return None


# What the built-in mapping puts in each Lead field (python -m leads mapping salesforce).
BUILTIN_FIELDS = {
    "FirstName": "first_name",
    "LastName": f"last_name, else {PLACEHOLDER!r} (required)",
    "Company": f"company, else {PLACEHOLDER!r} (required)",
    "Email": "email, when valid",
    "Phone": "phone",
    "Title": "title",
    "Country": "country's name (CountryCode: the ISO code, in orgs with country picklists)",
    "LeadSource": "source_words, when the org's Lead Source picklist has it",
    "Description": "the test and do-not-contact marks, description, source, action, offer, campaign, the lead id",
    "HasOptedOutOfEmail": "true for a do-not-contact lead",
    "DoNotCall": "true for a do-not-contact lead",
}
# describe's field types → the mapping's kinds.
KINDS = {
    "string": "text",
    "textarea": "text",
    "email": "text",
    "phone": "text",
    "url": "text",
    "encryptedstring": "text",
    "reference": "text",
    "picklist": "picklist",
    "combobox": "picklist",
    "multipicklist": "multipicklist",
    "boolean": "boolean",
    "int": "integer",
    "long": "integer",
    "double": "number",
    "currency": "number",
    "percent": "number",
    "date": "date",
    "datetime": "datetime",
}


def field_specs(describe: dict[str, Any], upsert: bool = False) -> dict[str, FieldSpec]:
    """Every Lead field of a ``describe`` as the mapping sees it: writable when ``createable`` (and
    ``updateable`` for an upsert); ``RecordTypeId`` a picklist of the available record types."""
    specs = {}
    for item in describe.get("fields") or []:
        name, kind = item.get("name"), KINDS.get(str(item.get("type")), "unsupported")
        if not name:
            continue
        options = options_of(
            (entry.get("value"), entry.get("label"))
            for entry in item.get("picklistValues") or []
            if entry.get("active", True)
        )
        restricted = bool(item.get("restrictedPicklist"))
        if name == "RecordTypeId":
            infos = [
                info
                for info in describe.get("recordTypeInfos") or []
                if info.get("available") and not info.get("master")
            ]
            options = options_of(
                [(i.get("recordTypeId"), i.get("developerName")) for i in infos]
                + [(i.get("recordTypeId"), i.get("name")) for i in infos]
            )
            kind, restricted = "picklist", True
        writable = bool(item.get("createable")) and (not upsert or bool(item.get("updateable")))
        why = (
            ""
            if writable
            else (
                "the Run As user may not " + ("create or edit" if upsert else "create") + " it "
                "(Field-Level Security), or Salesforce computes it"
            )
        )
        specs[name] = FieldSpec(
            name,
            kind,
            int(item.get("length") or 0) or None,
            options,
            restricted,
            writable,
            why or ("" if kind != "unsupported" else f"its type {item.get('type')} is not mapped"),
            str(item.get("label") or ""),
        )
    return specs


def lead_record(lead: Lead, route: Route, fields: LeadFields) -> dict[str, Any]:
    """The Lead record for the REST API, field by field; fields without a value are left out."""
    email = lead.email if lead.email and lead.email_valid and len(lead.email) <= LENGTHS["Email"] else None
    country_field, country_value = _country(lead.country, fields.country_codes)
    lead_source = fields.lead_source(lead)
    record: dict[str, Any] = {
        "FirstName": _cut(lead.first_name, "FirstName"),
        "LastName": _cut(lead.last_name, "LastName") or PLACEHOLDER,
        "Company": _cut(lead.company, "Company") or PLACEHOLDER,
        "Email": email,
        "Phone": _cut(lead.phone, "Phone"),
        "Title": _cut(lead.title, "Title"),
        country_field: country_value,
        "LeadSource": lead_source,
        "Description": description(
            lead, route, email_kept=email is not None, country_kept=country_value is not None or not lead.country
        ),
    }
    if lead.do_not_contact:
        record["HasOptedOutOfEmail"] = True
        record["DoNotCall"] = True
    return {name: value for name, value in record.items() if value is not None}


def description(lead: Lead, route: Route, email_kept: bool = True, country_kept: bool = True) -> str:
    """The Description: the test and do-not-contact marks, the customer's own words, then what the
    marketplace said of the lead, ending with the marker line that finds the record again."""
    head = []
    if route.test:
        head.append("[TEST] A test lead from the marketplace's validation, not a customer.")
    if lead.do_not_contact:
        head.append(
            "DO NOT CONTACT: the marketplace marked this lead DNC (a cross-listed partner's customer); "
            "the customer must not be contacted."
        )
    tail = []
    action = f"{lead.action_words} ({lead.action})" if lead.action and lead.action_words != lead.action else lead.action
    source = SOURCE_WORDS.get(lead.source or "", lead.source_words)
    if source or action:
        tail.append("Marketplace: " + " · ".join(part for part in (source, action) if part))
    if lead.offer_title or lead.offer_id:
        offer = lead.offer_title or lead.offer_id
        tail.append(f"Offer: {offer} ({lead.offer_id})" if lead.offer_title and lead.offer_id else f"Offer: {offer}")
    if lead.campaign:
        tail.append("Campaign: " + ", ".join(f"{key}={_campaign_text(value)}" for key, value in lead.campaign.items()))
    if lead.email and not email_kept:
        tail.append(f"Email as given (not a valid address): {lead.email}")
    if lead.country and not country_kept:
        tail.append(f"Country as given: {lead.country}")
    if lead.pii_withheld:
        tail.append("The marketplace withheld the customer's personal data (as it does for .edu customers).")
    tail.append(MARKER + lead.lead_id)
    fixed = "\n".join(head) + ("\n\n" if head else "")
    ending = "\n\n" + "\n".join(tail)
    room = LENGTHS["Description"] - len(fixed) - len(ending)
    words = (lead.description or "")[: max(room, 0)]
    return (fixed + words + ending).replace("\n\n\n\n", "\n\n").strip()


def web_to_lead_form(lead: Lead, route: Route, oid: str) -> dict[str, str]:
    """The form fields the marketplace posts to Web-to-Lead, text values only (no picklist value
    but ``lead_source``, which the marketplace posts folded as ``Source-Action|Offer``)."""
    email = lead.email if lead.email and lead.email_valid and len(lead.email) <= LENGTHS["Email"] else None
    _, country = _country(lead.country, None)
    form = {
        "oid": oid,
        "first_name": _cut(lead.first_name, "FirstName"),
        "last_name": _cut(lead.last_name, "LastName") or PLACEHOLDER,
        "email": email,
        "phone": _cut(lead.phone, "Phone"),
        "company": _cut(lead.company, "Company") or PLACEHOLDER,
        "title": _cut(lead.title, "Title"),
        "country": country,
        "description": description(lead, route, email_kept=email is not None),
        "lead_source": _cut(folded_lead_source(lead), "LeadSource"),
        "encoding": "UTF-8",
    }
    if lead.do_not_contact:
        form["emailOptOut"] = "1"
        form["doNotCall"] = "1"
    return {name: value for name, value in form.items() if value}


def folded_lead_source(lead: Lead) -> str | None:
    """``Source-Action|Offer``, as the marketplace writes ``lead_source`` (``SPZA`` is AppSource)."""
    if not (lead.source or lead.action or lead.offer_id or lead.offer_title):
        return None
    source = "SPZA" if lead.source == "AppSource" else lead.source or ""
    head = f"{source}-{lead.action}" if lead.action else source
    offer = lead.offer_id or lead.offer_title
    return f"{head}|{offer}" if offer else head


def _country(code: str | None, picklist: frozenset[str] | None) -> tuple[str, str | None]:
    """``(field, value)``: ``CountryCode`` in orgs with country picklists (None when the code is
    not in the picklist: the text Country would be refused there), else ``Country`` by name."""
    if not code:
        return "Country", None
    if picklist is not None:
        return "CountryCode", code if code in picklist else None
    if len(code) == 2 and code.isalpha():
        import pycountry

        country = pycountry.countries.get(alpha_2=code.upper())
        if country is not None:
            return "Country", _cut(getattr(country, "common_name", None) or country.name, "Country")
    return "Country", _cut(code, "Country")


def _cut(value: str | None, field: str) -> str | None:
    return value[: LENGTHS[field]].strip() or None if value else None


def _campaign_text(value: Any) -> str:
    return ";".join(str(item) for item in value) if isinstance(value, list) else str(value)


# --- errors --------------------------------------------------------------------------------------

# errorCode → the fix a publisher applies in Salesforce. Field names come from the error's "fields".
RUN_AS = "the External Client App's Run As user"
# Where each setting of an External Client App is (Setup → External Client App Manager → the app),
# and where an existing Connected App has the same one.
ECA = "Setup → External Client App Manager → the app"
ECA_FLOW = (
    f"{ECA} → Settings → OAuth Settings → Flow Enablement: tick 'Enable Client Credentials Flow'; then "
    "Policies → Edit → OAuth Policies: tick 'Enable Client Credentials Flow' and set 'Run As (Username)' to "
    "an API Only integration user with Read, Create and Edit on Leads (a Connected App: App Manager → the "
    "app → Manage → Edit Policies → Client Credentials Flow → Run As)"
)
ECA_IP = (
    f"{ECA} → Policies → Edit → OAuth Policies → IP Relaxation: 'Relax IP restrictions' (or allow the "
    "Function App's outbound IPs in the Run As user's profile Login IP Ranges); a Connected App: Manage → "
    "Edit Policies → IP Relaxation"
)
ECA_SCOPE = (
    f"{ECA} → Settings → OAuth Settings → OAuth Scopes: add 'Manage user data via APIs (api)' to the "
    "selected scopes (the client credentials flow ignores full and refresh_token)"
)
ECA_KEYS = f"{ECA} → Settings → OAuth Settings → Consumer Key and Secret"
FIXES = {
    "REQUIRED_FIELD_MISSING": "the org requires {fields} on Leads, which a marketplace lead does not fill: make "
    "the field optional in its field definition (or give it a default value), or exempt " + RUN_AS,
    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST": "the value is not in the restricted picklist {fields}: add it to the "
    "picklist's values (Setup → Object Manager → Lead → Fields), or untick 'Restrict picklist to the values defined'",
    "FIELD_CUSTOM_VALIDATION_EXCEPTION": "a validation rule on Lead rejected the lead: let marketplace leads through, "
    "e.g. exempt " + RUN_AS + " in the rule's formula ($User.Username <> '...')",
    "INVALID_FIELD_FOR_INSERT_UPDATE": RUN_AS + " may not write {fields}: give its profile or a permission set Edit "
    "access to the field (Field-Level Security)",
    "INVALID_FIELD": "Salesforce does not know a field this connector writes ({fields}), or " + RUN_AS + " cannot see "
    "it: check SALESFORCE_EXTERNAL_ID_FIELD's API name (ending __c) and the field's Field-Level Security",
    "DUPLICATES_DETECTED": "a duplicate rule on Lead blocks the lead: set the rule's action on create to 'Allow' "
    "(with an alert or a report), or leave " + RUN_AS + " out of it",
    "FIELD_INTEGRITY_EXCEPTION": "Salesforce refused a value of {fields}; with State and Country/Territory "
    "Picklists, make sure the country is an active value",
    "STORAGE_LIMIT_EXCEEDED": "the org's data storage is full: free some (Setup → Storage Usage) or buy more, then "
    "replay the failed deliveries",
    "INSUFFICIENT_ACCESS_OR_READONLY": RUN_AS + " may not create Leads: give its profile or a permission set "
    "Read, Create and Edit on Leads",
    "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY": "a trigger or flow on Lead failed when the lead was saved: its message "
    "says which; fix it or let " + RUN_AS + " bypass it",
    "API_DISABLED_FOR_ORG": "this Salesforce edition has no API access (Professional Edition needs the API add-on), "
    "or " + RUN_AS + "'s profile lacks the 'API Enabled' permission; otherwise use Web-to-Lead (SALESFORCE_OID)",
    "API_CURRENTLY_DISABLED": "the API is disabled for " + RUN_AS + ": give its profile the 'API Enabled' permission",
}
TRANSIENT_CODES = {"UNABLE_TO_LOCK_ROW", "REQUEST_RUNNING_TOO_LONG", "SERVER_UNAVAILABLE", "QUERY_TIMEOUT"}
NOT_REST_SESSION = (
    ECA_SCOPE
    + "; give "
    + RUN_AS
    + "'s profile the 'API Enabled' permission; and "
    + ECA_IP
    + "; changes can take 10 minutes to apply"
)


def salesforce_errors(content: Any) -> list[dict[str, Any]]:
    """The ``[{"message", "errorCode", "fields"}]`` list of a REST error body."""
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return []
    return [item for item in content if isinstance(item, dict)]


def scrub(text: str, lead: Lead | None) -> str:
    """``text`` without the customer's data: Salesforce echoes rejected values in messages
    (``invalid email address: ...``, ``data value too large: ...``)."""
    from leads.destinations.redact import mask_personal

    return mask_personal(text, lead, limit=300)


def api_error(exc: Exception, lead: Lead | None = None, external_id_field: str = "") -> DeliveryError:
    """A :class:`DeliveryError` for a simple-salesforce exception, from the status and the error
    body's code and fields, never from its ``str()`` (which holds the URL and so the SOQL)."""
    from simple_salesforce.exceptions import SalesforceError

    if not isinstance(exc, SalesforceError):
        return classify_error(exc)
    from leads.core.http import last_retry_after  # the exception lost the answer's headers

    errors = salesforce_errors(exc.content)
    first = errors[0] if errors else {}
    code = str(first.get("errorCode") or "")
    fields = [str(field) for field in first.get("fields") or []]
    message = scrub(str(first.get("message") or ""), lead)
    fix = FIXES.get(code)
    if fix:
        fix = fix.format(fields=", ".join(fields) or "a field")
    reason = " ".join(part for part in (code, f"on {', '.join(fields)}" if fields else "") if part)
    retry_after = last_retry_after()
    # What the status says, unless the error code says more.
    error = SalesforceDestination.refused(exc.status, reason, {"Retry-After": retry_after}, said=message, fix=fix)
    what = str(error)
    if code == "REQUEST_LIMIT_EXCEEDED":
        # No Retry-After from Salesforce. The daily limit is a rolling 24 hours: try again in an
        # hour; the concurrent-request limit frees in seconds.
        concurrent = "concurrent" in message.lower()
        return TransientError(
            what,
            retry_after=30.0 if concurrent else 3600.0,
            fix=None
            if concurrent
            else "the org used up its daily API requests (Setup → "
            "System Overview → API Requests, Last 24 Hours); leads are retried as requests free "
            "up, or raise the limit with Salesforce",
        )
    if code in TRANSIENT_CODES:
        return TransientError(what, fix=fix, retry_after=_seconds(retry_after))
    if exc.status == 404 and external_id_field and f"/{external_id_field}/" in f"/{exc.resource_name}/":
        return PermanentError(
            what,
            fix=f"SALESFORCE_EXTERNAL_ID_FIELD={external_id_field} is not a field of Lead, "
            "is not marked External ID, or " + RUN_AS + " cannot see it: create it as Text(64), "
            "Unique, External ID, and give the user Edit access to it",
        )
    return error


TOKEN_FIXES = {
    "invalid_client_id": (
        "Salesforce does not know SALESFORCE_CLIENT_ID",
        f"copy the External Client App's Consumer Key ({ECA_KEYS}) into SALESFORCE_CLIENT_ID (a "
        "Connected App: App Manager → the app → View → Manage Consumer Details); a new app can take "
        "10 minutes to work",
    ),
    "invalid_client": (
        "SALESFORCE_CLIENT_SECRET is not the app's consumer secret",
        f"copy the External Client App's Consumer Secret ({ECA_KEYS}) into SALESFORCE_CLIENT_SECRET (a "
        "Connected App: App Manager → the app → View → Manage Consumer Details)",
    ),
    "unsupported_grant_type": ("the app does not allow the client credentials flow", ECA_FLOW),
    "inactive_user": (
        "the app's Run As user is inactive",
        f"activate the user, or pick an active one: {ECA} → Policies → Edit → OAuth Policies → Run As (Username)",
    ),
    "inactive_org": ("the Salesforce org is inactive or locked", "check the org's status with its administrator"),
}


def token_error(status: int, error: str, description: str, retry_after: str | None = None) -> DeliveryError:
    """The diagnosis of a failed token request, from OAuth's ``error`` and ``error_description``."""
    said = f"Salesforce refused the token request: {error or status}" + (f" ({description})" if description else "")
    lowered = description.lower()
    if error == "invalid_grant" and "no client credentials user" in lowered:
        return PermanentError(said, fix="the client credentials flow is not enabled with a Run As user: " + ECA_FLOW)
    if error == "invalid_grant" and "ip restricted" in lowered:
        return PermanentError(said, fix="Salesforce refuses tokens from this app's address: " + ECA_IP)
    if error == "invalid_grant" and "no valid scopes" in lowered:
        return PermanentError(said, fix=ECA_SCOPE)
    if error == "invalid_grant" and "not supported on this domain" in lowered:
        return PermanentError(
            said,
            fix="SALESFORCE_URL must be the org's My Domain URL (Setup → My Domain, e.g. "
            "https://contoso.my.salesforce.com), not login.salesforce.com or "
            "test.salesforce.com",
        )
    if error == "invalid_grant":
        return PermanentError(
            said,
            fix="check that the Run As user is active and not locked out, and that its "
            "profile's Login IP Ranges allow the Function App: " + ECA_IP,
        )
    if error == "rate_limit_exceeded" or status == 429 or status >= 500:
        return TransientError(said, retry_after=_seconds(retry_after) or 60.0)
    if error in TOKEN_FIXES:
        message, fix = TOKEN_FIXES[error]
        return PermanentError(f"{message} ({error})", fix=fix)
    return from_status(
        status,
        said,
        retry_after,
        fix="check SALESFORCE_URL, SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET against the External Client App",
    )


def _seconds(value: str | None) -> float | None:
    from leads.destinations.base import parse_retry_after

    return parse_retry_after(value)


# --- the REST API --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    access_token: str
    instance_url: str
    user_id: str | None = None
    org_id: str | None = None


class SalesforceDestination(HttpDestination):
    """Leads created through the REST API with a client-credentials token."""

    name = "salesforce"
    setting_fields = (
        "salesforce_url",
        "salesforce_client_id",
        "salesforce_client_secret",
        "salesforce_external_id_field",
        "salesforce_mapping",
    )
    secret_fields = ("salesforce_client_secret",)
    who = "Salesforce"
    # The REST API's statuses, read by api_error after the error codes (the token endpoint's: token_error).
    statuses = {
        401: Refusal(fix=NOT_REST_SESSION),
        403: Refusal(
            fix=RUN_AS + " lacks a permission: give its profile 'API Enabled' and Read, Create and Edit on Leads"
        ),
        404: Refusal(
            fix=RUN_AS + " cannot see Leads: give its profile or a permission set Read, Create and Edit on Leads"
        ),
    }
    mapping_setting = "SALESFORCE_MAPPING"
    builtin_fields = BUILTIN_FIELDS

    @staticmethod
    def builtin_record(lead: Lead, route: Route) -> dict[str, Any]:
        """The built-in record of an org whose Lead Source picklist holds the marketplace's words."""
        return lead_record(lead, route, LeadFields({word.casefold(): word for word in SOURCE_WORDS.values()}))

    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        external_id_field: str = "",
        timeout: float = 30.0,
        session: requests.Session | None = None,
        web_to_lead_also_set: bool = False,
        mapping: str = "",
    ) -> None:
        super().__init__(timeout, session)
        self.url = url.strip().rstrip("/")
        self.mappings = Mappings("SALESFORCE_MAPPING", mapping)
        self.client_id = client_id.strip()
        self.client_secret = client_secret.strip()
        self.external_id_field = external_id_field.strip()
        self.web_to_lead_also_set = web_to_lead_also_set
        self.token_requests = 0
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._client: Any = None  # simple_salesforce.Salesforce for the current token
        self._fields: LeadFields | None = None
        self._fields_at = 0.0

    @classmethod
    def is_enabled(cls, settings: Settings) -> bool:
        return bool(settings.salesforce_url or settings.salesforce_client_id or settings.salesforce_client_secret)

    @classmethod
    def from_settings(cls, settings: Settings) -> SalesforceDestination | None:
        if not cls.is_enabled(settings):
            return None
        return cls(
            settings.salesforce_url,
            settings.salesforce_client_id,
            settings.salesforce_client_secret,
            settings.salesforce_external_id_field,
            settings.http_timeout_seconds,
            web_to_lead_also_set=bool(settings.salesforce_oid),
            mapping=settings.salesforce_mapping,
        )

    # -- sending

    def send(self, lead: Lead, route: Route) -> Sent:
        from simple_salesforce.exceptions import SalesforceError

        self._settings_problem(raise_it=True)
        try:
            fields = self.lead_fields()
            record = mapped_record(
                self.mappings, route, lead, lead_record(lead, route, fields), lambda: fields.specs, CRM
            )
            if self.external_id_field:
                return self._upsert(lead, record)
            return self._find_or_create(lead, record)
        except SalesforceError as exc:
            error = api_error(exc, lead, self.external_id_field)
            if not error.transient:
                self._fields = None  # the org may have changed: describe Lead again next time
            raise error from None

    def classify(self, error: Exception) -> DeliveryError:
        return api_error(error, external_id_field=self.external_id_field)

    def _upsert(self, lead: Lead, record: dict[str, Any]) -> Sent:
        """``PATCH /sobjects/Lead/<field>/<leadId>``: created (201) or updated (200), one record."""
        from simple_salesforce.exceptions import SalesforceMalformedRequest, SalesforceMoreThanOneRecord

        path = f"sobjects/Lead/{self.external_id_field}/{quote(lead.lead_id, safe='')}"
        try:
            result = self.call(lambda sf: sf.restful(path, method="PATCH", json=record, timeout=self.timeout))
        except SalesforceMoreThanOneRecord as exc:
            # Two records already hold this lead id (the field is not Unique): it is delivered.
            urls = exc.content if isinstance(exc.content, list) else []
            ids = [str(url).rstrip("/").rsplit("/", 1)[-1] for url in urls]
            log.warning(
                "lead %s: %d Salesforce leads hold it; make %s Unique", lead.lead_id, len(ids), self.external_id_field
            )
            return Sent(external_id=ids[0] if ids else None, detail={"action": "found"})
        except SalesforceMalformedRequest as exc:
            codes = {item.get("errorCode") for item in salesforce_errors(exc.content)}
            if "CANNOT_UPDATE_CONVERTED_LEAD" not in codes:
                raise
            # Sales already converted the lead this one created: it was delivered.
            return Sent(external_id=self._id_by_external_id(path), detail={"action": "found"})
        if not result:  # 204 No Content (API versions before 46.0)
            return Sent(external_id=self._id_by_external_id(path), detail={"action": "updated"})
        return Sent(external_id=result.get("id"), detail={"action": "created" if result.get("created") else "updated"})

    def _id_by_external_id(self, path: str) -> str | None:
        found = self.call(lambda sf: sf.restful(path, params={"fields": "Id"}, timeout=self.timeout))
        return (found or {}).get("Id")

    def _find_or_create(self, lead: Lead, record: dict[str, Any]) -> Sent:
        found = self.call(lambda sf: self._find(sf, lead, record))
        if found:
            return Sent(external_id=found, detail={"action": "found"})
        result = self.call(lambda sf: sf.restful("sobjects/Lead/", method="POST", json=record, timeout=self.timeout))
        return Sent(external_id=result["id"], detail={"action": "created"})

    def _find(self, sf: Any, lead: Lead, record: dict[str, Any]) -> str | None:
        """The Id of the Lead an earlier attempt created for ``lead``, if any."""
        from simple_salesforce.format import format_soql

        received = lead.received_at if lead.received_at.tzinfo else lead.received_at.replace(tzinfo=UTC)
        since = received - timedelta(hours=1)  # clock skew between us and Salesforce
        if "Email" in record:
            where = format_soql("CreatedDate >= {} AND Email = {}", since, record["Email"])
        else:
            where = format_soql(
                "CreatedDate >= {} AND LastName = {} AND Company = {}", since, record["LastName"], record["Company"]
            )
        soql = f"SELECT Id, Description FROM Lead WHERE {where} ORDER BY CreatedDate LIMIT 200"
        marker = MARKER + lead.lead_id
        for row in sf.query(soql, timeout=self.timeout).get("records", []):
            if marker in (row.get("Description") or ""):
                return row["Id"]
        return None

    # -- the session

    def call(self, operation):
        """``operation(sf)`` with the current token; when Salesforce says the token is no longer
        valid, a new one once and the operation again."""
        from simple_salesforce.exceptions import SalesforceExpiredSession

        client = self.client()
        try:
            return operation(client)
        except SalesforceExpiredSession:
            client = self.client(stale=client)
        return operation(client)

    def client(self, stale: Any = None) -> Any:
        """The simple-salesforce client of the current token; a new token when there is none or the
        caller's (``stale``) was refused and no other thread has replaced it yet."""
        with self._lock:
            if self._client is None or self._client is stale:
                from simple_salesforce import Salesforce

                self._token = self.request_token()
                self._client = Salesforce(
                    instance_url=self._token.instance_url,
                    session_id=self._token.access_token,
                    session=self.session,
                    version=API_VERSION,
                )
            return self._client

    def request_token(self) -> Token:
        """``POST {SALESFORCE_URL}/services/oauth2/token`` with ``grant_type=client_credentials``."""
        import requests

        self.token_requests += 1
        try:
            response = self.session.post(
                f"{self.url}/services/oauth2/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                },
                headers={"Accept": "application/json"},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(
                str(unreachable(exc)), fix="check SALESFORCE_URL (the org's My Domain URL) and the network"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        if response.status_code == 200 and body.get("access_token"):
            identity = str(body.get("id") or "").rstrip("/").split("/")
            return Token(
                body["access_token"],
                str(body.get("instance_url") or self.url).rstrip("/"),
                user_id=identity[-1] if len(identity) >= 2 else None,
                org_id=identity[-2] if len(identity) >= 2 else None,
            )
        if body.get("error"):
            raise token_error(
                response.status_code,
                str(body["error"]),
                str(body.get("error_description") or ""),
                response.headers.get("Retry-After"),
            )
        if response.status_code >= 500 or response.status_code == 429:
            raise from_status(response.status_code, response.reason or "", response.headers.get("Retry-After"))
        raise PermanentError(
            f"{self.url}/services/oauth2/token answered {response.status_code} without a token",
            fix="SALESFORCE_URL must be the org's My Domain URL, e.g. "
            "https://contoso.my.salesforce.com (Setup → My Domain)",
        )

    def lead_fields(self) -> LeadFields:
        """What the mapping needs from ``GET /sobjects/Lead/describe``, read again each hour (an
        administrator may add picklist values) and after a permanent error."""
        fields = self._fields
        if fields is None or time.monotonic() - self._fields_at > DESCRIBE_EVERY:
            fields = self._fields = LeadFields.from_describe(self.describe(), upsert=bool(self.external_id_field))
            self._fields_at = time.monotonic()
        return fields

    def describe(self) -> dict[str, Any]:
        return self.call(lambda sf: sf.restful("sobjects/Lead/describe", timeout=self.timeout)) or {}

    # -- checking

    def _settings_problem(self, raise_it: bool = False) -> PermanentError | None:
        missing = [
            name
            for name, value in (
                ("SALESFORCE_URL", self.url),
                ("SALESFORCE_CLIENT_ID", self.client_id),
                ("SALESFORCE_CLIENT_SECRET", self.client_secret),
            )
            if not value
        ]
        problem = None
        host = urlparse(self.url).hostname or ""
        if missing:
            problem = PermanentError(
                f"{', '.join(missing)} not set",
                fix="the REST API needs all three: SALESFORCE_URL (My Domain URL), and the "
                "External Client App's Consumer Key and Secret",
            )
        elif not self.url.startswith("https://") or not host:
            problem = PermanentError(
                f"SALESFORCE_URL={self.url} is not an https URL",
                fix="use the org's My Domain URL, e.g. https://contoso.my.salesforce.com",
            )
        elif host.endswith(".lightning.force.com"):
            problem = PermanentError(
                f"SALESFORCE_URL={self.url} is a Lightning page address, not the API's",
                fix=f"use https://{host.split('.')[0]}.my.salesforce.com (Setup → My Domain)",
            )
        elif host in ("login.salesforce.com", "test.salesforce.com"):
            problem = PermanentError(
                f"SALESFORCE_URL={self.url} is the generic login host",
                fix="the client credentials flow works only on the org's My Domain URL, e.g. "
                "https://contoso.my.salesforce.com (Setup → My Domain)",
            )
        if problem and raise_it:
            raise problem
        return problem

    def check(self) -> Check:
        """Settings, then a token, then ``GET /sobjects/Lead/describe``: Leads creatable, the
        fields written writable, the external id field an External ID. Creates nothing."""
        from simple_salesforce.exceptions import SalesforceError

        problem = self._settings_problem()
        if problem:
            return Check.failed(problem)
        try:
            self._fields = None
            describe = self.describe()
        except SalesforceError as exc:
            return Check.failed(api_error(exc, external_id_field=self.external_id_field))
        except DeliveryError as exc:
            return Check.failed(exc)
        except Exception as exc:  # noqa: BLE001 - a check reports, it does not raise
            return Check.failed(classify_error(exc))
        self._fields = LeadFields.from_describe(describe, upsert=bool(self.external_id_field))
        self._fields_at = time.monotonic()
        fields = {field["name"]: field for field in describe.get("fields", [])}
        if not describe.get("createable", True):
            return Check(False, "the Run As user may not create Leads", fix=FIXES["INSUFFICIENT_ACCESS_OR_READONLY"])
        written = [
            "FirstName",
            "LastName",
            "Company",
            "Email",
            "Phone",
            "Title",
            "Description",
            "HasOptedOutOfEmail",
            "DoNotCall",
            "CountryCode" if "CountryCode" in fields else "Country",
        ]
        locked = [
            name
            for name in written
            if not fields.get(name, {}).get("createable")
            or (self.external_id_field and not fields.get(name, {}).get("updateable"))
        ]
        if locked:
            return Check(
                False,
                f"the Run As user may not write {', '.join(locked)} on Leads",
                fix=FIXES["INVALID_FIELD_FOR_INSERT_UPDATE"].format(fields=", ".join(locked))
                + (" (an upsert needs both Create and Edit)" if self.external_id_field else ""),
            )
        notes = [
            f"token for {self._token.user_id or 'the Run As user'} at {self._token.instance_url}"
            if self._token
            else "token"
        ]
        if self.external_id_field:
            field = fields.get(self.external_id_field)
            if field is None:
                return Check(
                    False,
                    f"Lead has no field {self.external_id_field} that the Run As user can see",
                    fix="create it on Lead as Text(64), Unique, External ID (Setup → Object Manager → "
                    "Lead → Fields & Relationships), give the Run As user Edit access to it, and set "
                    "SALESFORCE_EXTERNAL_ID_FIELD to its API name (ending __c)",
                )
            if not field.get("externalId"):
                return Check(
                    False,
                    f"{self.external_id_field} is not marked External ID, so it cannot be upserted on",
                    fix="edit the field and tick 'External ID' (and 'Unique'), or use another field",
                )
            if not (field.get("createable") and field.get("updateable")):
                return Check(
                    False,
                    f"the Run As user may not write {self.external_id_field}",
                    fix=FIXES["INVALID_FIELD_FOR_INSERT_UPDATE"].format(fields=self.external_id_field),
                )
            notes.append(
                f"upserts on {self.external_id_field}"
                + ("" if field.get("unique") else " (tick 'Unique' on it so two records can never hold one lead)")
            )
        else:
            notes.append(
                "no SALESFORCE_EXTERNAL_ID_FIELD: each lead is looked up (one more API call) before it is "
                "created; an External ID field makes delivery idempotent by design"
            )
        if "LeadSource" in fields and not self._fields.lead_sources.keys() & {"azure marketplace", "appsource"}:
            notes.append(
                "Lead Source left empty: add 'Azure Marketplace', 'AppSource', 'Azure portal' and "
                "'Test Drive' to its picklist to have it filled"
            )
        mapped = check_mapping(self.mappings, lambda: self._fields.specs, CRM, MAPPING_FIX)
        if isinstance(mapped, Check):
            return mapped
        notes += mapped
        usage = getattr(self._client, "api_usage", {}).get("api-usage") if self._client is not None else None
        if usage is not None:
            notes.append(f"API requests used {usage.used}/{usage.total} in the last 24 hours")
        if self.web_to_lead_also_set:
            notes.append(
                "SALESFORCE_OID is set too and ignored: the REST API delivers (both would create each lead twice)"
            )
        return Check(True, "; ".join(notes))


# --- Web-to-Lead ---------------------------------------------------------------------------------


class SalesforceWebToLeadDestination(HttpDestination):
    """The marketplace's own way into Salesforce: a form POST with the org id."""

    name = "salesforce-w2l"
    setting_fields = ("salesforce_oid", "salesforce_web_to_lead_url")
    statuses = dict.fromkeys((403, 404, 405), Refusal(fix="check SALESFORCE_WEB_TO_LEAD_URL"))

    def __init__(self, oid: str, url: str, timeout: float = 30.0, session: requests.Session | None = None) -> None:
        super().__init__(timeout, session)
        self.oid = oid.strip()
        self.url = url.strip()

    @classmethod
    def is_enabled(cls, settings: Settings) -> bool:
        return bool(settings.salesforce_oid) and not SalesforceDestination.is_enabled(settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> SalesforceWebToLeadDestination | None:
        if not cls.is_enabled(settings):
            return None
        return cls(settings.salesforce_oid, settings.salesforce_web_to_lead_url, settings.http_timeout_seconds)

    def send(self, lead: Lead, route: Route) -> Sent:
        problem = self._settings_problem()
        if problem:
            raise problem
        response = self.session.post(
            self.url,
            data=web_to_lead_form(lead, route, self.oid),
            headers={"User-Agent": "marketplace-lead-router"},
            timeout=self.timeout,
            allow_redirects=False,
        )
        if 200 <= response.status_code < 400:  # 200, or a redirect to retURL: all Web-to-Lead ever says
            return Sent(external_id=None, detail={"note": "Web-to-Lead does not confirm that a lead was created"})
        raise self.refused(response.status_code, response.reason or "", response.headers)

    def _settings_problem(self) -> PermanentError | None:
        if not re.fullmatch(r"00D[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?", self.oid):
            return PermanentError(
                "SALESFORCE_OID is not a Salesforce organisation id (00D followed by 12 or 15 letters and digits)",
                fix="copy the Salesforce.com Organization ID from Setup → Company Information into SALESFORCE_OID",
            )
        parsed = urlparse(self.url)
        local = parsed.hostname in ("127.0.0.1", "localhost", "::1")
        if parsed.scheme != "https" and not (local and parsed.scheme == "http"):
            return PermanentError(
                f"SALESFORCE_WEB_TO_LEAD_URL={self.url} is not an https URL",
                fix="leave SALESFORCE_WEB_TO_LEAD_URL unset for Salesforce's own Web-to-Lead URL",
            )
        return None

    def check(self) -> Check:
        """The settings and that the Web-to-Lead URL answers; it cannot say more (a GET creates
        nothing, and a POST would create a lead)."""
        import requests

        problem = self._settings_problem()
        if problem:
            return Check.failed(problem)
        try:
            response = self.session.get(self.url, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return Check(
                False,
                f"could not reach {urlparse(self.url).netloc}: {type(exc).__name__}",
                fix="check SALESFORCE_WEB_TO_LEAD_URL and the network",
            )
        if response.status_code >= 500 or response.status_code in (403, 404):
            return Check(
                False,
                f"the Web-to-Lead URL answered {response.status_code}",
                fix="leave SALESFORCE_WEB_TO_LEAD_URL unset for Salesforce's own Web-to-Lead URL",
            )
        return Check(True, f"Web-to-Lead reachable for org {self.oid}. {W2L_NOTE}", fix=W2L_FIX)
