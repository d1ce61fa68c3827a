"""HubSpot's date-versioned CRM contacts API on loopback: ``POST /crm/objects/<version>/contacts/
batch/upsert`` (``idProperty: email``) and ``GET /crm/objects/<version>/contacts`` for the date
versions in :data:`VERSIONS`, with HubSpot's real answer and error shapes: ``{"status": "error",
"message", "correlationId", "category", "errors": [...]}``, 401 ``INVALID_AUTHENTICATION`` /
``EXPIRED_AUTHENTICATION``, 403 ``MISSING_SCOPES`` with ``errors[].context.requiredGranularScopes``
(checked before the inputs, so an upsert of nothing tells whether a key may write), 400
``VALIDATION_ERROR`` with the property errors embedded in ``message``, and 429 ``RATE_LIMIT`` with
the ``X-HubSpot-RateLimit-*`` headers (100 calls per rolling 10 s by default).

The portal's own rules: ``validation_rules`` (property validation rules, which HubSpot has applied
to API writes since 2023, answered in the embedded-list shape of its changelog: ``{"isValid":
false, "message": <the rule's text>, "error": <code>, "name": <property>}``) and
``required_on_create`` (a property required on the Create record form or by a conditional rule,
which HubSpot applies to API writes from the 2026-09 version only, answered with ``errors[]``
naming ``context.propertyName``).

Tokens: ``token`` (a legacy private app's) and ``service_key`` (a Service Key's) both work; there is
no token-info endpoint (HubSpot's answers only for private apps). Keeps ``contacts`` by email,
counts ``requests`` and keeps every request's ``paths``. Knobs: ``latency``, ``scopes``, ``faults``
(played one per call: ``"429"``, ``"daily"``, ``"500"``, ``"409"``, ``"drop"``, ``"lost"``,
``"expired"``), ``tokens`` (valid tokens).
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from .loopback import LoopbackHandler, LoopbackServer, send_in_turn

DEFAULT_PROPERTIES = {
    "email",
    "firstname",
    "lastname",
    "phone",
    "mobilephone",
    "company",
    "jobtitle",
    "country",
    "city",
    "state",
    "website",
    "message",
    "hs_lead_status",
    "lifecyclestage",
}
READ_ONLY = {"hs_email_optout", "hs_analytics_source", "hs_object_id", "createdate", "lastmodifieddate"}
SCOPES_URL = "https://developers.hubspot.com/scopes"
NO_CREDENTIALS = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find "
    "more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
VERSIONS = ("2026-03", "2026-09")  # the date versions served
RULES_ON_EVERY_WRITE = "2026-09"  # from this version on, the portal's record-creation rules apply to API writes
CONTACTS_PATH = re.compile(r"^/crm/objects/(?P<version>\d{4}-\d{2})/contacts(?P<upsert>/batch/upsert)?$")
PROPERTIES_PATH = re.compile(r"^/crm/properties/(?P<version>\d{4}-\d{2})/contacts$")
SCHEMAS_READ = "crm.schemas.contacts.read"
# Every portal's enumerations the app may meet, with their default options (value, label).
LIFECYCLE_STAGES = [
    ("subscriber", "Subscriber"),
    ("lead", "Lead"),
    ("marketingqualifiedlead", "Marketing Qualified Lead"),
    ("salesqualifiedlead", "Sales Qualified Lead"),
    ("opportunity", "Opportunity"),
    ("customer", "Customer"),
    ("evangelist", "Evangelist"),
    ("other", "Other"),
]
LEAD_STATUSES = [
    ("NEW", "New"),
    ("OPEN", "Open"),
    ("IN_PROGRESS", "In Progress"),
    ("OPEN_DEAL", "Open Deal"),
    ("UNQUALIFIED", "Unqualified"),
    ("ATTEMPTED_TO_CONTACT", "Attempted to contact"),
    ("CONNECTED", "Connected"),
    ("BAD_TIMING", "Bad Timing"),
]


def definition(
    name: str,
    type_: str = "string",
    field_type: str = "text",
    options=(),
    read_only: bool = False,
    label: str | None = None,
) -> dict:
    """A property as ``GET /crm/properties/<version>/contacts`` answers it."""
    return {
        "name": name,
        "label": label or name.replace("_", " ").title(),
        "type": type_,
        "fieldType": field_type,
        "groupName": "contactinformation",
        "description": "",
        "hidden": False,
        "formField": True,
        "calculated": False,
        "externalOptions": False,
        "hasUniqueValue": name == "email",
        "hubspotDefined": not name.startswith("custom_"),
        "displayOrder": -1,
        "modificationMetadata": {
            "archivable": True,
            "readOnlyDefinition": read_only,
            "readOnlyValue": read_only,
            "readOnlyOptions": read_only,
        },
        "options": [
            {"value": value, "label": text, "hidden": False, "displayOrder": index, "description": ""}
            for index, (value, text) in enumerate(options)
        ],
    }


class _Handler(LoopbackHandler):
    def serve(self, method: str) -> None:
        fake = self.fake
        raw = self.read_body()
        parts = urlsplit(self.path)
        if fake.latency:
            time.sleep(fake.latency)
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            return self._answer(400, error_body("VALIDATION_ERROR", "Invalid input JSON on line 1"))
        with fake.lock:
            fake.requests += 1
            fake.paths.append(parts.path)
            fault = fake.faults.pop(0) if fake.faults else None
            now = time.monotonic()
            headers = fake.rate_headers(now)
            limited = len(fake._stamps) >= fake.per_window
            if not limited:
                fake._stamps.append(now)
            else:
                fake.rate_limited += 1
        if fault == "drop":
            return self._drop()
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        if fault == "expired":
            return self._answer(
                401,
                error_body("EXPIRED_AUTHENTICATION", "The OAuth token used to make this call expired 2 day(s) ago."),
            )
        if token not in fake.tokens:
            return self._answer(401, error_body("INVALID_AUTHENTICATION", NO_CREDENTIALS))
        if limited or fault in ("429", "daily"):
            policy = "DAILY" if fault == "daily" else "TEN_SECONDLY_ROLLING"
            return self._answer(
                429,
                {
                    "status": "error",
                    "message": f"You have reached your {policy.lower()} limit.",
                    "errorType": "RATE_LIMIT",
                    "correlationId": str(uuid.uuid4()),
                    "policyName": policy,
                    "groupName": "publicapi:private-app:2002",
                },
                headers,
            )
        if fault == "500":
            return self._answer(500, error_body("INTERNAL_ERROR", "internal error"), headers)
        if fault == "409":
            return self._answer(409, error_body("CONFLICT", "Contact already exists. Existing ID: 51"), headers)
        schema = PROPERTIES_PATH.match(parts.path)
        if method == "GET" and schema and schema["version"] in VERSIONS:
            if SCHEMAS_READ not in fake.scopes:
                return self._answer(403, missing_scopes(SCHEMAS_READ), headers)
            with fake.lock:
                results = [dict(item) for item in fake.definitions().values()]
            return self._answer(200, {"results": results}, headers)
        route = CONTACTS_PATH.match(parts.path)
        if not route or route["version"] not in VERSIONS:
            return self._answer(404, error_body("OBJECT_NOT_FOUND", "Unable to infer object type from: x"))
        if method == "POST" and route["upsert"]:
            status, body = fake.upsert(payload.get("inputs") or [], route["version"])
            if fault == "lost":
                return self._drop()
            return self._answer(status, body, headers)
        if method == "GET" and not route["upsert"]:
            if READ not in fake.scopes:
                return self._answer(403, missing_scopes(READ), headers)
            limit = int(parse_qs(parts.query).get("limit", ["10"])[0])
            with fake.lock:
                rows = [
                    {
                        "id": c["id"],
                        "properties": {k: c["properties"].get(k) for k in ("email", "firstname", "lastname")},
                        "createdAt": c["createdAt"],
                        "updatedAt": c["updatedAt"],
                        "archived": False,
                    }
                    for c in list(fake.contacts.values())[:limit]
                ]
            return self._answer(200, {"results": rows}, headers)
        return self._answer(404, error_body("OBJECT_NOT_FOUND", "Unable to infer object type from: x"))

    def _answer(self, status: int, body: dict, headers: dict | None = None) -> None:
        self.answer(status, body, headers, content_type="application/json;charset=utf-8")

    def _drop(self) -> None:
        self.drop()


class FakeHubSpot(LoopbackServer):
    handler = _Handler

    def __init__(
        self,
        token: str = "pat-na1-00000000-fake",
        latency: float = 0.0,
        scopes: tuple[str, ...] = ("crm.objects.contacts.read", "crm.objects.contacts.write", SCHEMAS_READ),
        per_window: int = 100,
        window: float = 10.0,
    ) -> None:
        super().__init__()
        self.token = token  # a legacy private app's access token
        self.service_key = "fake-service-key-" + uuid.uuid4().hex
        self.tokens = {token, self.service_key}
        self.latency = latency
        self.scopes = set(scopes)
        self.per_window, self.window = per_window, window
        self.daily_limit = 250_000
        self.properties = set(DEFAULT_PROPERTIES)
        self.custom_properties: dict[str, dict] = {}  # the portal's own, as the properties API defines them
        # property → (code, the rule's text ("{value}" is the value), rejects(value))
        self.validation_rules: dict[str, tuple[str, str, object]] = {}
        self.required_on_create: dict[str, str] = {}  # property → the rule's text
        self.faults: list[str] = []
        self.paths: list[str] = []
        self.contacts: dict[str, dict] = {}  # lower-cased email → {"id", "properties", "createdAt", "updatedAt"}
        self.requests = 0
        self.upserts = 0
        self.rate_limited = 0
        self._stamps: deque[float] = deque()
        self._ids = itertools.count(51)

    @property
    def url(self) -> str:
        return self.base_url

    # --- the service --------------------------------------------------------------------------

    def add_property(self, name: str, type_: str = "string", field_type: str = "text", options=(), **extra) -> None:
        """A custom contact property of the portal."""
        self.custom_properties[name] = definition(name, type_, field_type, options, **extra)
        self.properties.add(name)

    def definitions(self) -> dict[str, dict]:
        """Every contact property the portal has: the default ones (text, but for the lifecycle
        stage and lead status enumerations), HubSpot's read-only ones, and the custom ones."""
        found = {name: definition(name) for name in sorted(self.properties - set(self.custom_properties))}
        found["lifecyclestage"] = definition(
            "lifecyclestage", "enumeration", "radio", LIFECYCLE_STAGES, label="Lifecycle Stage"
        )
        found["hs_lead_status"] = definition(
            "hs_lead_status", "enumeration", "radio", LEAD_STATUSES, label="Lead Status"
        )
        for name in (*READ_ONLY, "hs_analytics_source_data_1", "hs_analytics_source_data_2"):
            found[name] = definition(name, read_only=True)
        found.update(self.custom_properties)
        return {
            name: item
            for name, item in found.items()
            if name in self.properties or item["modificationMetadata"]["readOnlyValue"]
        }

    def refuses(self, name: str, value: str) -> dict | None:
        """HubSpot's own check of a value against its property's type (the embedded-list shape)."""
        item = self.definitions().get(name)
        if item is None:
            return None
        kind, options = item["type"], [option["value"] for option in item["options"]]
        error = None
        if kind == "enumeration":
            chosen = value.split(";") if item["fieldType"] == "checkbox" else [value]
            if not set(chosen) <= set(options):
                error = (
                    "INVALID_OPTION",
                    (
                        f"{value} was not one of the allowed options: "
                        + ", ".join(f"[label: {o['label']!r} value: {o['value']!r}]" for o in item["options"])
                    ),
                )
        elif kind == "number" and not re.fullmatch(r"-?\d+(\.\d+)?", value):
            error = "INVALID_DOUBLE", f"{value} is not a valid number"
        elif kind == "bool" and value not in ("true", "false"):
            error = "INVALID_BOOLEAN", f"{value} is not a valid boolean"
        elif kind == "date" and not re.fullmatch(r"\d{4}-\d\d-\d\d|\d{12,13}", value):
            error = "INVALID_DATE", f"{value} is not a valid date"
        if error is None:
            return None
        return {"isValid": False, "message": error[1], "error": error[0], "name": name}

    def rate_headers(self, now: float) -> dict[str, str]:
        while self._stamps and self._stamps[0] <= now - self.window:
            self._stamps.popleft()
        return {
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self.window * 1000)),
            "X-HubSpot-RateLimit-Max": str(self.per_window),
            "X-HubSpot-RateLimit-Remaining": str(max(0, self.per_window - len(self._stamps))),
            "X-HubSpot-RateLimit-Daily": str(self.daily_limit),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self.requests)),
        }

    def upsert(self, inputs: list[dict], version: str) -> tuple[int, dict]:
        if WRITE not in self.scopes:
            return 403, missing_scopes(WRITE)
        if not inputs:
            return 400, error_body("VALIDATION_ERROR", "Invalid input: inputs must contain at least one item")
        problems = []
        for item in inputs:
            if item.get("idProperty") != "email":
                return 400, error_body(
                    "VALIDATION_ERROR",
                    f"Unable to perform update/upsert by non-unique 0-1 "
                    f"property {item.get('idProperty')} in portal ID 123456",
                )
            for name, value in (item.get("properties") or {}).items():
                if name in READ_ONLY:
                    problems.append(
                        {
                            "isValid": False,
                            "message": f"{name} is a read only property; its value cannot be set.",
                            "error": "READ_ONLY_VALUE",
                            "name": name,
                        }
                    )
                elif name not in self.properties:
                    problems.append(
                        {
                            "isValid": False,
                            "message": f'Property "{name}" does not exist',
                            "error": "PROPERTY_DOESNT_EXIST",
                            "name": name,
                            "localizedErrorMessage": f'Property "{name}" does not exist',
                            "portalId": 123456,
                        }
                    )
                elif not isinstance(value, str):
                    problems.append(
                        {
                            "isValid": False,
                            "message": f"{value!r} is not a valid string",
                            "error": "INVALID_STRING",
                            "name": name,
                        }
                    )
                elif self.refuses(name, value):
                    problems.append(self.refuses(name, value))
                elif name in self.validation_rules and self.validation_rules[name][2](value):
                    code, rule, _ = self.validation_rules[name]  # HubSpot's messages may quote the value
                    problems.append(
                        {"isValid": False, "message": rule.format(value=value), "error": code, "name": name}
                    )
            email = str(item.get("id") or "")
            if not _EMAIL.match(email):
                problems.append(
                    {
                        "isValid": False,
                        "message": f"Email address {email} is invalid",
                        "error": "INVALID_EMAIL",
                        "name": "email",
                    }
                )
        if problems:
            return 400, error_body("VALIDATION_ERROR", "Property values were not valid: " + json.dumps(problems))
        if version >= RULES_ON_EVERY_WRITE:
            missing = [
                (name, rule)
                for item in inputs
                for name, rule in self.required_on_create.items()
                if str(item.get("id") or "").lower() not in self.contacts
                and not (item.get("properties") or {}).get(name)
            ]
            if missing:
                return 400, error_body(
                    "VALIDATION_ERROR",
                    "One or more properties required by this portal's record creation rules are missing.",
                    errors=[
                        {"message": rule, "code": "REQUIRED_PROPERTY", "context": {"propertyName": [name]}}
                        for name, rule in missing
                    ],
                )
        results = []
        with self.lock:
            for item in inputs:
                stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                email = item["id"].lower()
                contact = self.contacts.get(email)
                new = contact is None
                if new:
                    contact = self.contacts[email] = {
                        "id": str(next(self._ids)),
                        "createdAt": stamp,
                        "properties": {"email": email},
                    }
                contact["properties"].update(item.get("properties") or {})
                contact["updatedAt"] = stamp
                self.upserts += 1
                results.append(
                    {
                        "id": contact["id"],
                        "properties": dict(contact["properties"]),
                        "new": new,
                        "createdAt": contact["createdAt"],
                        "updatedAt": stamp,
                        "archived": False,
                    }
                )
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return 200, {"status": "COMPLETE", "results": results, "startedAt": stamp, "completedAt": stamp}

    # --- HTTP -----------------------------------------------------------------------------------


READ, WRITE = "crm.objects.contacts.read", "crm.objects.contacts.write"


def error_body(category: str, message: str, **extra) -> dict:
    return {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": category, **extra}


def missing_scopes(*scopes: str) -> dict:
    return error_body(
        "MISSING_SCOPES",
        "This app hasn't been granted all required scopes to make this call. Read "
        f"more about required scopes here: {SCOPES_URL}.",
        errors=[
            {
                "message": "One or more of the following scopes are required.",
                "context": {"requiredGranularScopes": list(scopes)},
            }
        ],
        links={"scopes": SCOPES_URL},
    )


@pytest.fixture
def hubspot():
    with FakeHubSpot() as fake:
        yield fake


def benchmark(count: int = 200, latency: float = 0.05) -> dict:
    """``count`` leads sent one after another through HubSpotDestination.send to the fake with
    ``latency`` seconds per call, under HubSpot's real limit (100 calls per 10 s), which the
    destination keeps on its side. A private app token needs no token request: 0 per 1,000."""
    from leads.destinations.hubspot import HubSpotDestination

    from .fake_marketo import sample_lead

    with FakeHubSpot(latency=latency) as fake:
        destination = HubSpotDestination(fake.token, fake.url, timeout=10)
        elapsed, burst, held_back = send_in_turn(destination, [sample_lead(n) for n in range(count)])
        assert len(fake.contacts) == count
        return {
            "leads_per_second": round(count / elapsed, 2),
            "token_requests_per_1000": 0.0,
            "calls": fake.requests,
            "paced_seconds": round(destination.limiter.waited, 2),
            "held_back": held_back,
            "burst_leads_per_second": round(burst, 2),
            "rate_limited_429": fake.rate_limited,
        }
