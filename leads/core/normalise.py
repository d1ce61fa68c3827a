"""Turn what the marketplace sends into a :class:`~leads.core.model.Lead`.

Two inputs: the JSON body the marketplace POSTs to an HTTPS endpoint, and the entity it writes to
an Azure Table (whose ``CustomerInfo`` is a JSON *string*). Keys are matched case-insensitively,
codes the marketplace may add later pass through unchanged, and a value that cannot be cleaned is
kept as received. The only exception raised is :class:`LeadValidationError`, for input that holds
no lead at all or has a structure the marketplace never sends (nesting deeper than
:data:`MAX_NESTING`, text that is not valid Unicode); it names what is wrong. Of a table row, only
the properties a lead is made of (:data:`TABLE_FIELDS`) must be sound; any other is kept in the raw
record in a form JSON carries (:func:`storable_row`).

An HTTP lead's id is a digest of its normalised content when the lead names a person (see
:func:`identifies_person`), so that the same lead POSTed again is recognised; a lead that names no
one (the marketplace withholds personal data for ``.edu`` customers) gets an id of its own, since
two such leads with the same content may well be two customers. The digest is keyed
(:mod:`leads.core.pseudonyms`): the id cannot be recomputed from the person's details.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from leads.core.model import Lead
from leads.core.pseudonyms import digest, forms

TEST_MARKER = "MSFT_TEST_"
# The properties of a marketplace row a lead is made of (lower-cased); the others are only kept.
TABLE_FIELDS = frozenset(
    {
        "partitionkey",
        "rowkey",
        "timestamp",
        "customerinfo",
        "leadsource",
        "actioncode",
        "offertitle",
        "offerdisplayname",
        "description",
    }
)
USER_FIELDS = ("firstname", "lastname", "email", "phone", "country", "company", "title")
# What the marketplace withholds from a lead it hides the person of ("PII withheld").
WITHHELD_FIELDS = ("first_name", "last_name", "email", "phone")
# The marketplace's JSON is two levels deep; pydantic cannot serialise much past 250.
MAX_NESTING = 32

# LeadSource values as the marketplace writes them, matched case-insensitively.
_SOURCE_NAMES = {
    "azuremarketplace": "AzureMarketplace",
    "azureportal": "AzurePortal",
    "appsource": "AppSource",
    "spza": "AppSource",
    "testdrive": "TestDrive",
}
_ACTION_CODES = {code.lower(): code for code in ("INS", "PLT", "DNC", "Create", "StartTestDrive")}
_CAMPAIGNS_PREFIX = re.compile(r"^campaigns\s*:", re.IGNORECASE)
# Plain ASCII addresses, by far the most common, that email-validator accepts unchanged but for
# the domain's case: checked here in a microsecond instead of its full IDNA path (tests hold the
# two to agreement). Anything else goes through email-validator.
_PLAIN_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
)
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


class LeadValidationError(ValueError):
    """The input holds no usable lead; the message says what is wrong, naming the field."""


# --- entry points ------------------------------------------------------------------------------


def from_http_body(body: Any, received_at: datetime | None = None) -> Lead:
    """A lead from a parsed JSON body POSTed by the marketplace."""
    if not isinstance(body, Mapping):
        raise LeadValidationError(f"the lead must be a JSON object, got {_json_type(body)}")
    check_json(body, "the body")
    fields = _lower_keys(body)
    user = fields.get("userdetails")
    if user is not None and not isinstance(user, Mapping):
        raise LeadValidationError(f"UserDetails must be an object, got {_json_type(user)}")
    parts = _lead_parts(fields, _lower_keys(user or {}), user_prefix="UserDetails.")
    lead_id = _content_id(parts) if identifies_person(parts) else new_http_lead_id()
    return Lead(lead_id=lead_id, received_at=received_at or _now(), channel="http", raw=body, **parts)


def from_table_entity(entity: Mapping[str, Any], table_name: str, received_at: datetime | None = None) -> Lead:
    """A lead from an entity of the marketplace's table. Its id comes from the row's identity,
    so reading the same row again always gives the same lead."""
    fields = _lower_keys(entity)
    partition, row = fields.get("partitionkey"), fields.get("rowkey")
    if not isinstance(partition, str) or not isinstance(row, str):
        raise LeadValidationError("the table entity has no PartitionKey and RowKey")
    info = fields.get("customerinfo")
    if isinstance(info, str) and info.strip():
        try:
            info = json.loads(info)
        except ValueError as exc:
            raise LeadValidationError(f"CustomerInfo is not valid JSON: {exc.msg}") from None
    if info is not None and info != "" and not isinstance(info, Mapping):
        raise LeadValidationError(f"CustomerInfo must hold a JSON object, got {_json_type(info)}")
    # Only the properties a lead is made of must be sound: an odd value elsewhere in the row is
    # kept in the raw record in a form JSON carries (storable_row), and the lead taken in.
    for key, value in entity.items():
        if str(key).lower() in TABLE_FIELDS:
            check_json(value, str(key))
    check_json(info, "CustomerInfo")
    parts = _lead_parts(fields, _lower_keys(info or {}), user_prefix="CustomerInfo.")
    lead_id = table_lead_id(table_name, partition, row)
    received = received_at or _as_datetime(fields.get("timestamp")) or _now()
    return Lead(lead_id=lead_id, received_at=received, channel="table", raw=storable_row(entity), **parts)


def storable_row(entity: Mapping[str, Any]) -> dict[str, Any]:
    """A marketplace row as its raw record keeps it: the properties as read, but for the values
    JSON in UTF-8 cannot carry, written as the Table service's own JSON writes them (its OData
    payload format): binary as base64 text and a not-finite number as ``NaN``, ``Infinity`` or
    ``-Infinity``, each with a ``<name>@odata.type`` property beside it naming its type
    (``Edm.Binary``, ``Edm.Double``). A lone surrogate, which is no character, becomes U+FFFD, the
    replacement character."""
    row: dict[str, Any] = {}
    for key, value in entity.items():
        key = _unicode(str(key))
        if isinstance(value, (bytes, bytearray)):
            row[key], row[f"{key}@odata.type"] = base64.b64encode(value).decode("ascii"), "Edm.Binary"
        elif isinstance(value, float) and not math.isfinite(value):
            row[key] = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
            row[f"{key}@odata.type"] = "Edm.Double"
        elif isinstance(value, str):
            row[key] = _unicode(value)
        else:
            row[key] = value
    return row


def identifies_person(lead: Lead | Mapping[str, Any]) -> bool:
    """Whether a lead names a person: an email, or a first or last name with a company. Only
    such a lead can be a repeat of another; two leads that name no one may be two customers."""
    get = lead.get if isinstance(lead, Mapping) else lambda name: getattr(lead, name)
    return bool(get("email")) or bool((get("first_name") or get("last_name")) and get("company"))


def http_lead_id(lead: Lead, occurrence: int = 0) -> str:
    """The digest of an HTTP lead's normalised content (not of when it came): the id of a lead
    that names a person, so the same lead POSTed twice gets the same id. ``occurrence`` numbers
    the same content arriving again after the dedupe window, which is a new lead."""
    return _content_id(lead.model_dump(exclude={"lead_id", "received_at", "channel", "raw"}), occurrence)


def new_http_lead_id() -> str:
    """A fresh id for an HTTP lead that names no one: it is never taken for a repeat."""
    return "h" + uuid.uuid4().hex[:24]


def http_lead_id_forms(lead: Lead, occurrence: int = 0) -> list[str]:
    """The ids :func:`http_lead_id` gives now and gave before ``LEADS_ID_KEY`` (its plain
    SHA-256), for finding rows an earlier version wrote under a content's digest."""
    content = _content(lead.model_dump(exclude={"lead_id", "received_at", "channel", "raw"}), occurrence)
    return ["h" + form[:24] for form in forms(content)]


def _content_id(parts: Mapping[str, Any], occurrence: int = 0) -> str:
    return "h" + digest(_content(parts, occurrence))[:24]


def _content(parts: Mapping[str, Any], occurrence: int) -> str:
    content = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return content + f"#{occurrence}" if occurrence else content


def table_lead_id(table_name: str, partition_key: str, row_key: str) -> str:
    identity = f"{table_name}\n{partition_key}\n{row_key}"
    return "t" + hashlib.sha256(identity.encode()).hexdigest()[:24]


# --- the pieces ----------------------------------------------------------------------------------


def _lead_parts(fields: Mapping[str, Any], user: Mapping[str, Any], user_prefix: str) -> dict[str, Any]:
    """The normalised content of a lead, as keyword arguments for :class:`Lead`."""
    text = {name: _text(user.get(name), user_prefix + _PASCAL[name]) for name in USER_FIELDS}
    lead_source = _text(fields.get("leadsource"), "LeadSource")
    action_code = _text(fields.get("actioncode"), "ActionCode")
    offer_title = _text(fields.get("offertitle"), "OfferTitle") or _text(
        fields.get("offerdisplayname"), "OfferDisplayName"
    )
    description = _text(fields.get("description"), "Description", keep_lines=True)

    source, folded_action, offer_id = parse_lead_source(lead_source)
    action = _canonical_action(action_code) or folded_action
    country = normalise_country(text["country"])
    email, email_valid = normalise_email(text["email"])
    description, campaign = parse_description(description)

    parts = {
        "source": source,
        "action": action,
        "offer_id": offer_id,
        "offer_title": offer_title,
        "first_name": text["firstname"],
        "last_name": text["lastname"],
        "email": email,
        "email_valid": email_valid,
        "phone": normalise_phone(text["phone"], country),
        "country": country,
        "company": text["company"],
        "title": text["title"],
        "description": description,
        "campaign": campaign,
    }
    if not any(parts[name] for name in _USABLE):
        raise LeadValidationError(
            "the lead holds no customer or lead data: expected UserDetails (or CustomerInfo) "
            "with a name, email or company, or LeadSource, ActionCode or OfferTitle"
        )
    parts["is_test"] = (
        any(isinstance(value, str) and TEST_MARKER in value.upper() for value in parts.values())
        or TEST_MARKER in (lead_source or "").upper()
    )
    parts["do_not_contact"] = action == "DNC"
    parts["pii_withheld"] = not any(parts[name] for name in WITHHELD_FIELDS)
    return parts


_PASCAL = {
    "firstname": "FirstName",
    "lastname": "LastName",
    "email": "Email",
    "phone": "Phone",
    "country": "Country",
    "company": "Company",
    "title": "Title",
}
_USABLE = ("first_name", "last_name", "email", "phone", "company", "source", "action", "offer_id", "offer_title")


def parse_lead_source(value: str | None) -> tuple[str | None, str | None, str | None]:
    """``(source, action, offer)`` from a LeadSource, alone (``AzureMarketplace``) or folded
    (``SPZA-PLT|contoso.contoso-crm``). Unknown sources and actions pass through as written."""
    if not value:
        return None, None, None
    head, bar, offer = value.partition("|")
    offer = offer.strip() or None if bar else None
    source, _, action = head.partition("-")
    source = source.strip()
    canonical = _SOURCE_NAMES.get(source.lower())
    return canonical or source or None, _canonical_action(action), offer


def _canonical_action(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    return _ACTION_CODES.get(value.lower(), value) or None


def parse_description(value: str | None) -> tuple[str | None, dict[str, Any]]:
    """``(description, campaign)``: a JSON object of AppSource URL parameters, or
    ``Campaigns: a, b``, becomes the campaign; other text stays the description."""
    if not value:
        return None, {}
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
            check_json(parsed, "Description")
        except (ValueError, RecursionError):  # LeadValidationError too: then it is only text
            parsed = None
        if isinstance(parsed, dict):
            return None, {str(key): _campaign_value(item) for key, item in parsed.items()}
    match = _CAMPAIGNS_PREFIX.match(value)
    if match:
        names = [name.strip() for name in value[match.end() :].split(",")]
        names = [name for name in names if name]
        return None, ({"campaigns": names} if names else {})
    return value, {}


def _campaign_value(value: Any) -> Any:
    if isinstance(value, str):
        return _collapse(value) or None
    return value


# --- field cleaners ------------------------------------------------------------------------------


def normalise_email(value: str | None) -> tuple[str | None, bool | None]:
    """``(email, valid)``: a valid address with its domain lower-cased, or the text as received
    and ``False``. Syntax only: no DNS look-up."""
    if not value:
        return None, None
    if len(value) <= 254 and _PLAIN_EMAIL.fullmatch(value):
        local, _, domain = value.rpartition("@")
        if len(local) <= 64 and len(domain) <= 253 and not _special_use(domain):
            return f"{local}@{domain.lower()}", True
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        return value, False
    return checked.normalized, True


def _special_use(domain: str) -> bool:
    """Whether email-validator refuses the domain as special-use (``.test``, ``.local``, ...)."""
    names = _special_use_names()
    labels = domain.lower().split(".")
    return any(".".join(labels[start:]) in names for start in range(len(labels)))


@lru_cache(maxsize=1)
def _special_use_names() -> frozenset[str]:
    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    return frozenset(SPECIAL_USE_DOMAIN_NAMES)


def normalise_phone(value: str | None, country: str | None) -> str | None:
    """E.164 when the number parses as a valid one (the country is the region hint, and digits
    that already start with a country code are read as such); otherwise the text as received."""
    if not value:
        return None
    import phonenumbers

    region = country if country and len(country) == 2 else None
    parsed = _valid_number(value, region)
    if parsed is None and not value.startswith("+"):
        # Digits that already begin with a country code, written without the plus.
        parsed = _valid_number("+" + value, None)
    if parsed is None:
        return value
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _valid_number(value: str, region: str | None):
    import phonenumbers

    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    return parsed if phonenumbers.is_valid_number(parsed) else None


def normalise_country(value: str | None) -> str | None:
    """ISO 3166 alpha-2 for a code or a name (``US``, ``USA``, ``United States``); an unknown
    value is kept as received."""
    if not value:
        return None
    return _countries().get(value.casefold(), value)


@lru_cache(maxsize=1)
def _countries() -> dict[str, str]:
    import pycountry

    index: dict[str, str] = {}
    for country in pycountry.countries:
        for attribute in ("alpha_2", "alpha_3", "name", "official_name", "common_name"):
            name = getattr(country, attribute, None)
            if name:
                index[name.casefold()] = country.alpha_2
    # Names people write that ISO 3166 does not list.
    index.update(
        {
            "uk": "GB",
            "great britain": "GB",
            "england": "GB",
            "usa": "US",
            "united states of america": "US",
            "korea": "KR",
            "south korea": "KR",
            "russia": "RU",
            "vietnam": "VN",
            "turkey": "TR",
        }
    )
    return index


def _text(value: Any, field: str, keep_lines: bool = False) -> str | None:
    """Trimmed text with inner whitespace collapsed (line breaks kept in ``keep_lines`` fields),
    or None when empty. Numbers are text (phones arrive as numbers); objects are an error."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise LeadValidationError(f"{field} must be text, got a boolean")
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, float):
        value = str(int(value)) if value.is_integer() else repr(value)
    elif not isinstance(value, str):
        raise LeadValidationError(f"{field} must be text, got {_json_type(value)}")
    return (_collapse_lines(value) if keep_lines else _collapse(value)) or None


def _collapse(value: str) -> str:
    return " ".join(value.split())


def _collapse_lines(value: str) -> str:
    lines = _SPACES.sub(" ", value.replace("\r\n", "\n").replace("\r", "\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(line.strip() for line in lines.split("\n"))).strip()


def check_json(value: Any, name: str) -> None:
    """Raise :class:`LeadValidationError` for what no lead holds and the lead's JSON form cannot
    carry: nesting deeper than :data:`MAX_NESTING`, text that is not valid Unicode (a lone
    surrogate), a number that is not finite. Other types (a table row's dates, bytes) pass."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and not _is_unicode(item):
                raise LeadValidationError(f"{name} holds text that is not valid Unicode (a lone surrogate)")
        elif isinstance(item, (Mapping, list)):
            if depth >= MAX_NESTING:
                raise LeadValidationError(
                    f"{name} is nested more than {MAX_NESTING} levels deep: "
                    "a lead is an object holding UserDetails, two levels"
                )
            children = [*item.keys(), *item.values()] if isinstance(item, Mapping) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, float) and not math.isfinite(item):
            raise LeadValidationError(f"{name} holds a number JSON cannot carry ({item})")


def _unicode(text: str) -> str:
    """``text`` as valid Unicode: surrogates in pairs joined (as UTF-16 reads them), each lone
    one replaced by U+FFFD."""
    if text.isascii() or _is_unicode(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lower_keys(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key).lower(): value for key, value in mapping.items()}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            return _as_datetime(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _now() -> datetime:
    return datetime.now(UTC)
