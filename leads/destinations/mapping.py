"""Field mapping, one module for the four CRMs: which CRM field gets what of a lead.

A CRM destination writes its **built-in** record (the fields its module has always filled), then the
publisher's own fields on top, from its setting (``SALESFORCE_MAPPING``, ``HUBSPOT_MAPPING``,
``DYNAMICS_MAPPING``, ``MARKETO_MAPPING``): JSON, or the path of a JSON file, as ``LEADS_ROUTING``::

    {"fields": {
       "Marketplace_Offer__c": "offer_title",                              <- a lead field
       "Campaign_Code__c": "campaign.mktcmpid",                            <- a campaign value
       "Lead_Source_Detail__c": {"value": "Microsoft Marketplace"},        <- a constant
       "Description": {"template": "Marketplace: {offer_title} ({action})"},  <- a template
       "Fax": null},                                                       <- leave a built-in field out
     "mappings": {"partner": {"RecordTypeId": {"value": "Partner_Lead"}}}}

A routing rule's ``"mapping": "partner"`` picks a named mapping (the default's fields, then its
own); a destination without that name uses its default. A lead field is any field of the normalised
lead (:data:`LEAD_FIELDS`, snake_case or the contract's camelCase), and ``campaign.<name>`` any
campaign value the marketplace passed (``campaign.utm_source``); a template's ``{name}`` are the
same names. Values are converted to the CRM field's type, read from the CRM's own schema
(:class:`FieldSpec`): text is cut to its length, a picklist takes one of its values (matched on
value or label), numbers, dates and booleans are parsed; a value that cannot be converted fails
the delivery permanently, naming the field and why (never the lead's value: it is the customer's).
``check`` proves every mapped field against the schema with :func:`problems`.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from leads.destinations.base import Check, DeliveryError, PermanentError

if TYPE_CHECKING:
    from leads.core.model import Lead

DEFAULT = "default"
# The lead's fields a mapping may name: the normalised lead's own (less its raw body), and the
# words the marketplace's codes stand for.
LEAD_FIELDS = (
    "lead_id",
    "received_at",
    "channel",
    "source",
    "source_words",
    "action",
    "action_words",
    "offer_id",
    "offer_title",
    "first_name",
    "last_name",
    "full_name",
    "email",
    "email_valid",
    "phone",
    "country",
    "company",
    "title",
    "description",
    "is_test",
    "do_not_contact",
    "pii_withheld",
)
CAMPAIGN = "campaign."
KINDS = ("text", "picklist", "multipicklist", "integer", "number", "boolean", "date", "datetime", "unsupported")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")
_MAPPING_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_TRUE, _FALSE = {"true", "yes", "y", "1", "on"}, {"false", "no", "n", "0", "off"}


class MappingError(ValueError):
    """A mapping setting cannot be used; the message says where and why."""


# --- what a field gets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a CRM field's value comes from: a lead ``field``, a constant ``value``, a ``template``."""

    kind: str  # "field", "value" or "template"
    spec: Any

    def value(self, facts: Mapping[str, Any]) -> Any:
        if self.kind == "field":
            return facts.get(self.spec)
        if self.kind == "value":
            return self.spec
        text = _PLACEHOLDER.sub(
            lambda m: _text(facts.get(lead_field(m.group(1)))), self.spec.replace("{{", "\0").replace("}}", "\1")
        )
        return text.replace("\0", "{").replace("\1", "}").strip() or None

    def describe(self) -> str:
        if self.kind == "field":
            return self.spec
        if self.kind == "value":
            return f"the constant {json.dumps(self.spec, ensure_ascii=False)}"
        return f"the template {json.dumps(self.spec, ensure_ascii=False)}"


def lead_field(name: str) -> str:
    """The lead field ``name`` stands for (``offerTitle`` is ``offer_title``); as it is if unknown."""
    name = name.strip()
    if name.startswith(CAMPAIGN):
        return name
    snake = _CAMEL.sub("_", name).lower()
    return snake if snake in LEAD_FIELDS else name


def facts_of(lead: Lead) -> dict[str, Any]:
    """What a mapping can name of ``lead``: :data:`LEAD_FIELDS` and ``campaign.<name>``."""
    facts: dict[str, Any] = {name: getattr(lead, name) for name in LEAD_FIELDS}
    for key, value in lead.campaign.items():
        facts[CAMPAIGN + str(key)] = ", ".join(map(str, value)) if isinstance(value, list) else value
    return facts


@dataclass(frozen=True)
class FieldMapping:
    """One mapping of a destination: its setting's fields (``None``: the built-in field is left
    out) over the built-in record."""

    name: str
    fields: dict[str, Source | None]

    @property
    def mapped(self) -> dict[str, Source]:
        return {name: source for name, source in self.fields.items() if source is not None}


@dataclass(frozen=True)
class Mappings:
    """A destination's mappings, as its setting (``setting``, e.g. ``SALESFORCE_MAPPING``) holds them."""

    setting: str
    text: str = ""

    def load(self) -> dict[str, FieldMapping]:
        """Mapping name → mapping (``default`` always there). Raises :class:`MappingError`."""
        return _load(self.setting, self.text.strip())

    def pick(self, name: str = "") -> FieldMapping:
        """The mapping a route names, or the default (also for a name this setting lacks)."""
        loaded = self.load()
        return loaded.get(name or DEFAULT) or loaded[DEFAULT]

    @property
    def custom(self) -> bool:
        """Whether the setting maps any field (so the CRM's schema is needed to convert values)."""
        try:
            return any(mapping.mapped for mapping in self.load().values())
        except MappingError:
            return False

    def error(self) -> PermanentError | None:
        try:
            self.load()
        except MappingError as exc:
            return PermanentError(
                str(exc),
                fix=f"correct {self.setting} (docs/settings.md, Field mapping), then replay the failed deliveries",
            )
        return None


@lru_cache(maxsize=32)
def _load(setting: str, text: str) -> dict[str, FieldMapping]:
    if not text:
        return {DEFAULT: FieldMapping(DEFAULT, {})}
    from leads.core.settings import json_setting

    document, where = json_setting(setting, text, MappingError)
    unknown = set(document) - {"fields", "mappings"} if isinstance(document, dict) else None
    if unknown is None or unknown:
        raise MappingError(
            f'{where} must be {{"fields": {{"<CRM field>": <source>, ...}}, "mappings": {{"<name>": '
            f"{{...}}}}}}" + (f"; unknown keys {sorted(unknown)}" if unknown else "")
        )
    default = _fields(document.get("fields") or {}, f"{where}, fields")
    mappings = {DEFAULT: FieldMapping(DEFAULT, default)}
    named = document.get("mappings") or {}
    if not isinstance(named, dict):
        raise MappingError(f'{where}: mappings must be an object of named mappings, {{"partner": {{...}}}}')
    for name, fields in named.items():
        if not _MAPPING_NAME.match(name) or name == DEFAULT:
            raise MappingError(
                f"{where}: the mapping name {name!r} must be lower-case letters, digits, - and _ (and not {DEFAULT!r})"
            )
        mappings[name] = FieldMapping(name, {**default, **_fields(fields, f"{where}, mapping {name!r}")})
    return mappings


def _fields(fields: Any, where: str) -> dict[str, Source | None]:
    if not isinstance(fields, dict):
        raise MappingError(f'{where} must be an object: {{"<CRM field>": <source>, ...}}')
    parsed = {}
    for name, spec in fields.items():
        if not isinstance(name, str) or not name.strip() or len(name) > 100 or any(c.isspace() for c in name):
            raise MappingError(f"{where}: {name!r} is not a field name (its API name, without spaces)")
        parsed[name] = _source(spec, f"{where}, {name}")
    return parsed


def _source(spec: Any, where: str) -> Source | None:
    if spec is None:
        return None
    if isinstance(spec, (bool, int, float)):
        return Source("value", spec)
    if isinstance(spec, str):
        spec = {"template": spec} if "{" in spec else {"field": spec}
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("field", "value", "template"):
        raise MappingError(
            f'{where}: a source is a lead field ("offer_title", "campaign.utm_source"), '
            '{"value": <constant>}, {"template": "... {offer_title} ..."} or null'
        )
    kind, value = next(iter(spec.items()))
    if kind == "value":
        if not isinstance(value, (str, bool, int, float)):
            raise MappingError(f"{where}: a constant is text, a number or true/false")
        return Source("value", value)
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"{where}: {kind} must be text")
    if kind == "field":
        name = lead_field(value)
        _known(name, where, value)
        return Source("field", name)
    for placeholder in _PLACEHOLDER.findall(value.replace("{{", "").replace("}}", "")):
        _known(lead_field(placeholder), where, "{" + placeholder + "}")
    return Source("template", value)


def _known(name: str, where: str, given: str) -> None:
    if name in LEAD_FIELDS or (name.startswith(CAMPAIGN) and _NAME.match(name) and len(name) > len(CAMPAIGN)):
        return
    close = difflib.get_close_matches(name, LEAD_FIELDS, n=1)
    raise MappingError(
        f"{where}: {given} is not a lead field"
        + (f" (did you mean {close[0]}?)" if close else "")
        + f"; the lead's fields are {', '.join(LEAD_FIELDS)} and campaign.<name>; a constant is "
        '{"value": "..."}'
    )


# --- the CRM's fields, and converting to them --------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """What a CRM's schema says of one field, in the terms the conversion needs. ``options`` are
    (value, label) pairs of a picklist; ``restricted`` False: the CRM takes other values too;
    ``writable`` False with ``why`` (read-only, computed, not on the form)."""

    name: str
    kind: str
    length: int | None = None
    options: tuple[tuple[Any, str], ...] = ()
    restricted: bool = True
    writable: bool = True
    why: str = ""
    label: str = ""

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind


class ValueRefused(ValueError):
    """A value the field's type cannot take; the message says why, without the value."""


def convert(value: Any, spec: FieldSpec) -> Any:
    """``value`` as ``spec``'s field takes it (date, datetime, bool, int, float, text); None for no
    value. Raises :class:`ValueRefused`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    kind = spec.kind
    if kind == "unsupported":
        raise ValueRefused(spec.why or "its type cannot be mapped")
    if kind == "text":
        text = _text(value)
        return _cut(text, spec.length)
    if kind in ("picklist", "multipicklist"):
        items = [_text(value)] if kind == "picklist" else [i for i in re.split(r"\s*[;,]\s*", _text(value)) if i]
        chosen = [_option(item, spec) for item in items]
        return chosen[0] if kind == "picklist" else ";".join(map(str, chosen))
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        word = _text(value).strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueRefused("it is a true/false field, and the value is neither")
    if kind in ("integer", "number"):
        if isinstance(value, bool):
            raise ValueRefused("it is a number field, and the value is true/false")
        try:
            number = float(value) if not isinstance(value, (int, float)) else value
        except ValueError:
            raise ValueRefused("it is a number field, and the value is not a number") from None
        if kind == "integer":
            if float(number) != int(number):
                raise ValueRefused("it is a whole-number field, and the value has decimals")
            return int(number)
        return int(number) if isinstance(number, float) and number.is_integer() else number
    moment = _moment(value)
    if moment is None:
        raise ValueRefused(f"it is a {kind} field, and the value is not an ISO 8601 date (2026-12-07)")
    if kind == "date":
        return moment.date() if isinstance(moment, datetime) else moment
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def encode(value: Any, as_text: bool = False) -> Any:
    """A converted value as JSON carries it (dates in ISO 8601; everything as text for a CRM that
    takes text only, as HubSpot does)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    if as_text and isinstance(value, bool):
        return "true" if value else "false"
    if as_text and isinstance(value, (int, float)):
        return str(value)
    return value


def _option(item: str, spec: FieldSpec) -> Any:
    for value, _label in spec.options:
        if str(value) == item:
            return value
    folded = item.casefold()
    for value, label in spec.options:
        if folded in (str(value).casefold(), (label or "").casefold()):
            return value
    if not spec.restricted:
        return _cut(item, spec.length)
    shown = ", ".join(
        f"{label} ({value})" if label and str(label) != str(value) else str(value) for value, label in spec.options[:12]
    ) + (", ..." if len(spec.options) > 12 else "")
    raise ValueRefused(f"the value is not one of its picklist's values ({shown or 'it has none'})")


def _moment(value: Any) -> date | datetime | None:
    if isinstance(value, (date, datetime)):
        return value
    text = _text(value).strip()
    try:
        return (
            datetime.fromisoformat(text.replace("Z", "+00:00"))
            if "T" in text or " " in text
            else date.fromisoformat(text)
        )
    except ValueError:
        return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return encode(value)
    if isinstance(value, list):
        return ", ".join(map(_text, value))
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _cut(text: str, length: int | None) -> str:
    from leads.destinations.notice import within

    return within(text, length) if length else text


# --- a record, mapped -------------------------------------------------------------------------------


def apply(
    mapping: FieldMapping,
    lead: Lead,
    record: dict[str, Any],
    schema: Mapping[str, FieldSpec] | None,
    crm: str,
    setting: str,
    as_text: bool = False,
) -> dict[str, Any]:
    """``record`` (the built-in one) with ``mapping``'s fields set, each converted to its type in
    ``schema`` (None: as the source gives it). A field the CRM lacks, cannot write, or whose value
    its type refuses is a :class:`PermanentError` naming the field and why (``crm``: "Salesforce's
    Lead", for the message; ``setting``: where the field is mapped)."""
    facts = facts_of(lead)
    record = dict(record)
    for name, source in mapping.fields.items():
        record.pop(name, None)
        if source is None:
            continue
        value = source.value(facts)
        if schema is not None:
            spec = schema.get(name)
            problem = field_problem(name, spec, schema, crm)
            if problem:
                raise PermanentError(
                    f"{setting} maps {name}: {problem}",
                    fix=f"correct {name} in {setting} (python -m "
                    "leads check proves the mapping), then replay the failed deliveries",
                )
            try:
                value = convert(value, spec)
            except ValueRefused as exc:
                given = f" {json.dumps(source.spec, ensure_ascii=False)}" if source.kind == "value" else ""
                raise PermanentError(
                    f"{crm} field {name} cannot take the value{given} of {source.describe()}: {exc}",
                    fix=f"map another value to {name} in {setting}, or change the field in the "
                    "CRM; then replay the failed deliveries",
                ) from None
        if value is not None:
            record[name] = encode(value, as_text)
    return record


def field_problem(name: str, spec: FieldSpec | None, schema: Mapping[str, FieldSpec], crm: str) -> str | None:
    """Why ``name`` cannot be written (it does not exist, or is read-only), or None."""
    if spec is None:
        close = difflib.get_close_matches(name, list(schema), n=1, cutoff=0.75)
        return f"{crm} has no field {name}" + (f" (did you mean {close[0]}?)" if close else "")
    if not spec.writable:
        return f"{crm} field {name} cannot be written: {spec.why or 'it is read-only'}"
    return None


@dataclass(frozen=True)
class Problem:
    """One thing ``check`` found in a mapping: a ``problem`` (leads fail on it) or a ``warning``."""

    state: str
    message: str


def problems(
    mappings: Mappings, schema: Mapping[str, FieldSpec], crm: str, sample: Lead | None = None
) -> list[Problem]:
    """What is wrong with each mapped field of every mapping of ``mappings`` against ``schema``: a
    field that does not exist or cannot be written, a constant its type refuses (problems); a
    template or lead field whose value for ``sample`` its type refuses (warnings: real leads may
    differ)."""
    try:
        loaded = mappings.load()
    except MappingError as exc:
        return [Problem("problem", str(exc))]
    found: list[Problem] = []
    facts = facts_of(sample) if sample is not None else {}
    seen: set[tuple[str, str, Any]] = set()
    for mapping in loaded.values():
        for name, source in mapping.mapped.items():
            key = (name, source.kind, json.dumps(source.spec))
            if key in seen:
                continue
            seen.add(key)
            where = f"{mappings.setting}" + (f" (mapping {mapping.name!r})" if mapping.name != DEFAULT else "")
            spec = schema.get(name)
            problem = field_problem(name, spec, schema, crm)
            if problem:
                found.append(Problem("problem", f"{where} maps {name}: {problem}"))
                continue
            if source.kind != "value" and sample is None:
                continue
            try:
                convert(source.value(facts), spec)
            except ValueRefused as exc:
                if source.kind == "value":
                    found.append(Problem("problem", f"{where}: {name} cannot take {source.describe()}: {exc}"))
                else:
                    found.append(
                        Problem(
                            "warning",
                            f"{where}: {name} ({spec.kind}) could not take {source.describe()} of a sample lead: {exc}",
                        )
                    )
    return found


def summary(mappings: Mappings) -> str:
    """``SALESFORCE_MAPPING: 3 fields; mappings partner`` for a check line."""
    loaded = mappings.load()
    count = len(loaded[DEFAULT].mapped)
    named = [name for name in loaded if name != DEFAULT]
    return f"{mappings.setting}: {count} field{'s' * (count != 1)} of its own" + (
        f", mappings {', '.join(named)}" if named else ""
    )


def names(mappings: Mappings) -> set[str]:
    """The named mappings a setting defines (none when it cannot be read)."""
    try:
        return set(mappings.load()) - {DEFAULT}
    except MappingError:
        return set()


def described(
    builtin: Mapping[str, str], mapping: FieldMapping, record: dict[str, Any], setting: str
) -> list[dict[str, Any]]:
    """Each CRM field of a mapped record with where its value comes from: ``builtin`` (field →
    what the built-in mapping puts there) and the mapping's own fields, for ``python -m leads mapping``."""
    rows = []
    for name in dict.fromkeys([*builtin, *record, *mapping.fields]):
        source = mapping.fields.get(name, ...)
        if source is None:
            rows.append({"field": name, "from": f"left out by {setting}", "source": "setting", "value": None})
        elif source is not ...:
            rows.append({"field": name, "from": source.describe(), "source": "setting", "value": record.get(name)})
        else:
            rows.append(
                {"field": name, "from": builtin.get(name, "built-in"), "source": "built-in", "value": record.get(name)}
            )
    return rows


def options_of(items: Iterable[tuple[Any, str]]) -> tuple[tuple[Any, str], ...]:
    """Picklist options without blanks or repeats, in order."""
    return tuple(dict.fromkeys((value, label or "") for value, label in items if value not in (None, "")))


# --- what every mapped destination does with it ---------------------------------------------------------


Schema = Callable[[], Mapping[str, FieldSpec]]  # a destination's reader of its CRM's field definitions


def mapped_record(
    mappings: Mappings, route: Any, lead: Lead, builtin: dict[str, Any], schema: Schema, crm: str, as_text: bool = False
) -> dict[str, Any]:
    """The record a CRM destination sends: ``builtin`` with the mapping ``route`` names applied.
    ``schema`` is called (the CRM's own field definitions, cached by the destination) only when
    the mapping maps fields of its own; an unusable setting is a :class:`PermanentError`."""
    error = mappings.error()
    if error:
        raise error
    mapping = mappings.pick(getattr(route, "mapping", ""))
    return apply(mapping, lead, builtin, schema() if mapping.mapped else None, crm, mappings.setting, as_text)


def check_mapping(mappings: Mappings, schema: Schema, crm: str, fix: str) -> Check | list[str]:
    """What a destination's ``check`` says of its mapping against the CRM's schema: a failed
    :class:`Check` (with ``fix``) when leads would fail on it or the schema cannot be read, else
    notes (what it maps, warnings) to add to its line. Reads the schema only when the setting maps
    fields of its own."""

    error = mappings.error()
    if error:
        return Check.failed(error)
    if not mappings.custom:
        return []
    try:
        found = problems(mappings, schema(), crm, sample_lead())
    except DeliveryError as exc:
        return Check.failed(exc)
    worst = [p.message for p in found if p.state == "problem"]
    if worst:
        return Check(False, "; ".join(worst), fix=fix)
    return [summary(mappings) + " proven against the CRM's schema"] + [p.message for p in found]


def sample_lead() -> Lead:
    """A lead as the marketplace sends one from a listing link with campaign parameters: for
    ``python -m leads mapping`` and for ``check``'s trial of a mapping."""
    from leads.core.normalise import from_http_body

    description = json.dumps(
        {
            "mktcmpid": "contoso-winter-26",
            "utm_source": "newsletter",
            "utm_medium": "email",
            "utm_campaign": "winter-promo",
        }
    )
    return from_http_body(
        {
            "UserDetails": {
                "FirstName": "Ada",
                "LastName": "Lovelace",
                "Email": "ada@contoso.com",
                "Phone": "+14255550100",
                "Country": "US",
                "Company": "Contoso",
                "Title": "CTO",
            },
            "LeadSource": "AzureMarketplace-PLT|contoso.contoso-crm",
            "OfferTitle": "Contoso CRM",
            "Description": description,
        }
    )


def preview(destination: str, settings: Any, name: str = "") -> tuple[str, list[dict[str, Any]]]:
    """``(heading, rows)`` of ``python -m leads mapping DESTINATION``: what each CRM field gets,
    and from where, for :func:`sample_lead`, as the setting maps it (no call to the CRM: values
    as their sources give them, before conversion to the CRM's types). Raises :class:`MappingError`."""
    from leads.destinations import destination_class

    cls = destination_class(destination)
    setting = cls.mapping_setting
    text = next(getattr(settings, key) for key, info in type(settings).model_fields.items() if info.alias == setting)
    mappings = Mappings(setting, text)
    loaded = mappings.load()
    if name and name not in loaded:
        raise MappingError(f"{setting} has no mapping {name!r}" + (f"; it has {', '.join(sorted(loaded))}"))
    mapping = loaded[name or DEFAULT]
    lead, route = sample_lead(), _route(mapping.name)
    record = apply(mapping, lead, cls.builtin_record(lead, route), None, destination, setting)
    shown = f"mapping {mapping.name!r} of {setting}" if text.strip() else f"the built-in mapping ({setting} is not set)"
    return f"{destination}: {shown}, for a sample lead ({lead.lead_id})", described(
        cls.builtin_fields, mapping, record, setting
    )


def _route(mapping: str) -> Any:
    from leads.destinations.base import Route

    return Route(mapping="" if mapping == DEFAULT else mapping)
