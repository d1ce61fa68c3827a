"""A Salesforce org on loopback, over HTTPS (simple-salesforce only speaks https): the OAuth token
endpoint (client credentials), the REST API calls the connector makes (Lead describe, SOQL query,
create, upsert and get by external id) and the Web-to-Lead servlet, with Salesforce's own request
and response shapes and error bodies, and its own records to assert on.

Knobs: ``latency`` (seconds added to every call), ``faults`` (played one per REST call before
behaving: ``"500"``, ``"503"``, ``"limit"``, ``"concurrent"``, ``"lock"``, ``"expire"``, ``"drop"``,
``"lost"``: do the work, then drop the connection; ``"ok"``: behave), ``token_faults`` (the same for the token
endpoint: ``"500"``, ``"rate"``), ``daily_limit`` (API requests before REQUEST_LIMIT_EXCEEDED, as
the org's rolling 24-hour limit), ``expire_tokens()``, and the org's setup: the External Client
App's consumer key and secret and its settings, ``client_credentials`` (False: the flow is not
enabled in its OAuth settings and policies), ``run_as`` (None: no Run As user), ``ip_relaxed``
(False: the caller's address is outside the Run As user's Login IP Ranges and the app enforces
them), ``scopes`` (the selected OAuth scopes: none the client credentials flow takes answers "no
valid scopes defined"; without ``api`` the token is issued and the REST API refuses it),
``my_domain`` (False: the generic login host), restricted picklists, country picklists, read-only
fields, required fields, a validation rule, a blocking duplicate rule, external id fields.

The token endpoint's error bodies are Salesforce's OAuth ones, ``{"error", "error_description"}``
with its descriptions: "no client credentials user enabled", "ip restricted", "no valid scopes
defined", "client identifier invalid", "invalid client credentials", "request not supported on
this domain".
"""

from __future__ import annotations

import itertools
import json
import random
import re
import string
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from .loopback import LoopbackHandler, LoopbackServer

API = "/services/data/v"
CLIENT_CREDENTIALS_IGNORES = {"full", "refresh_token", "offline_access"}  # scopes the flow drops
STANDARD_LEAD_SOURCES = ["Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other"]
COUNTRIES = {
    "US": "United States",
    "GB": "United Kingdom",
    "DE": "Germany",
    "FR": "France",
    "IN": "India",
    "JP": "Japan",
    "CA": "Canada",
    "AU": "Australia",
    "NL": "Netherlands",
    "BR": "Brazil",
}


def field(name: str, type_: str = "string", length: int = 0, **extra: Any) -> dict[str, Any]:
    """A field as ``describe`` lists it (the keys the connector reads, and a few more)."""
    return {
        "name": name,
        "label": extra.pop("label", name),
        "type": type_,
        "length": length,
        "createable": True,
        "updateable": True,
        "filterable": True,
        "nillable": True,
        "externalId": False,
        "unique": False,
        "restrictedPicklist": False,
        "picklistValues": [],
        "custom": name.endswith("__c"),
        **extra,
    }


def picklist(values: list[str]) -> list[dict[str, Any]]:
    return [{"active": True, "defaultValue": False, "label": v, "validFor": None, "value": v} for v in values]


class _Handler(LoopbackHandler):
    methods = ("GET", "POST", "PATCH")

    def serve(self, method: str) -> None:
        fake = self.fake
        self.body = self.read_body()
        parsed = urlparse(self.path)
        self.query_args = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        path = parsed.path
        with fake.lock:
            fake.requests.append((method, path))
        if fake.latency:
            time.sleep(fake.latency)
        if path == "/services/oauth2/token" and method == "POST":
            return self._token()
        if path == "/servlet/servlet.WebToLead":
            return self._web_to_lead(method)
        if path.startswith(API):
            return self._api(method, path)
        return self._answer(404, "<html><body>Not Found</body></html>", content_type="text/html")

    # OAuth 2.0 token endpoint, client credentials flow
    def _token(self):
        fake = self.fake
        form = {k: v[-1] for k, v in parse_qs(self.body.decode()).items()}
        with fake.lock:
            fake.token_requests += 1
            fault = fake.token_faults.pop(0) if fake.token_faults else None
        if fault == "rate":
            return self._oauth_error("rate_limit_exceeded", "rate limit exceeded")
        if fault and fault.isdigit():
            return self._answer(int(fault), "<html><body>Service unavailable</body></html>", content_type="text/html")
        if not fake.my_domain:
            return self._oauth_error("invalid_grant", "request not supported on this domain")
        if form.get("grant_type") != "client_credentials":
            return self._oauth_error("unsupported_grant_type", "grant type not supported")
        if form.get("client_id") != fake.client_id:
            return self._oauth_error("invalid_client_id", "client identifier invalid")
        if form.get("client_secret") != fake.client_secret:
            return self._oauth_error("invalid_client", "invalid client credentials")
        if not fake.client_credentials or fake.run_as is None:
            return self._oauth_error("invalid_grant", "no client credentials user enabled")
        if not fake.ip_relaxed:
            return self._oauth_error("invalid_grant", "ip restricted")
        if not fake.scopes - CLIENT_CREDENTIALS_IGNORES:
            return self._oauth_error("invalid_grant", "no valid scopes defined")
        org = fake.oid[:15]
        token = f"{org}!AQ4AQ" + "".join(random.choices(string.ascii_letters + string.digits, k=40))
        with fake.lock:
            fake.tokens.add(token)
        return self._answer(
            200,
            {
                "access_token": token,
                "signature": "c2lnbmF0dXJlLWZha2U=",
                "scope": " ".join(sorted(fake.scopes - CLIENT_CREDENTIALS_IGNORES)),
                "instance_url": fake.url,
                "id": f"https://login.salesforce.com/id/{fake.oid}/{fake.run_as}",
                "token_type": "Bearer",
                "issued_at": str(int(time.time() * 1000)),
            },
        )

    def _oauth_error(self, error: str, description: str):
        return self._answer(400, {"error": error, "error_description": description})

    # REST API
    def _api(self, method: str, path: str):
        fake = self.fake
        auth = self.headers.get("Authorization", "")
        with fake.lock:
            fault = fake.faults.pop(0) if fake.faults else None
            if fault == "expire":
                fake.tokens.clear()
            valid = auth.startswith("Bearer ") and auth[7:] in fake.tokens
            if valid:
                fake.api_calls += 1
            over = fake.api_calls > fake.daily_limit
        if not valid:
            return self._answer(401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
        if "api" not in fake.scopes:
            return self._answer(
                401,
                [{"message": "This session is not valid for use with the REST API", "errorCode": "INVALID_SESSION_ID"}],
            )
        if over or fault == "limit":
            return self._answer(
                403, [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
            )
        if fault == "concurrent":
            return self._answer(
                403, [{"message": "ConcurrentPerOrgLongTxn Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
            )
        if fault == "lock":
            return self._answer(
                400,
                [
                    {
                        "message": "unable to obtain exclusive access to this record or 1 records",
                        "errorCode": "UNABLE_TO_LOCK_ROW",
                        "fields": [],
                    }
                ],
            )
        if fault == "500":
            return self._answer(
                500,
                [
                    {
                        "message": "An unexpected error occurred. Please include this ErrorId "
                        "if you contact support: 1394529150-12345 (-1284721)",
                        "errorCode": "UNKNOWN_EXCEPTION",
                    }
                ],
            )
        if fault == "503":
            return self._answer(503, [{"message": "Server is unavailable", "errorCode": "SERVER_UNAVAILABLE"}])
        if fault == "drop":
            return self._drop()
        rest = re.sub(r"^/services/data/v\d+\.\d+/", "", path)
        status, body = self._route(method, rest)
        if fault == "lost":
            return self._drop()
        return self._answer(status, body)

    def _route(self, method: str, rest: str) -> tuple[int, Any]:
        fake = self.fake
        parts = [unquote(p) for p in rest.strip("/").split("/")]
        with fake.lock:
            if parts[:1] == ["query"] and method == "GET":
                return fake.query(self.query_args.get("q", ""))
            if parts[:2] != ["sobjects", "Lead"] or not fake.lead_visible:
                return 404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
            if not fake.lead_createable and parts != ["sobjects", "Lead", "describe"]:
                return 403, [
                    {
                        "message": "insufficient access rights on object id",
                        "errorCode": "INSUFFICIENT_ACCESS_OR_READONLY",
                        "fields": [],
                    }
                ]
            if parts == ["sobjects", "Lead", "describe"] and method == "GET":
                return 200, fake.describe()
            if parts == ["sobjects", "Lead"] and method == "POST":
                body = json.loads(self.body or b"{}")
                errors = fake.validate(body)
                if errors:
                    return 400, errors
                return 201, {"id": fake.create(body)["Id"], "success": True, "errors": []}
            if len(parts) == 4:
                return self._by_external_id(method, parts[2], parts[3])
        return 404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]

    def _by_external_id(self, method: str, name: str, value: str) -> tuple[int, Any]:
        fake = self.fake
        known = {f["name"]: f for f in fake.lead_fields()}
        if name not in known or not known[name]["externalId"]:
            return 404, [
                {
                    "errorCode": "NOT_FOUND",
                    "message": f"Provided external ID field does not exist or is not accessible: {name}",
                }
            ]
        matches = [r for r in fake.records.values() if r.get(name) == value]
        if len(matches) > 1:
            return 300, [f"/services/data/v59.0/sobjects/Lead/{r['Id']}" for r in matches]
        if method == "GET":
            if not matches:
                return 404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
            wanted = self.query_args.get("fields", "").split(",") if self.query_args.get("fields") else None
            record = matches[0]
            url = f"/services/data/v59.0/sobjects/Lead/{record['Id']}"
            return 200, {
                "attributes": {"type": "Lead", "url": url},
                **({k: record.get(k) for k in wanted} if wanted else record),
            }
        if method != "PATCH":
            return 405, [{"errorCode": "METHOD_NOT_ALLOWED", "message": f"HTTP Method '{method}' not allowed."}]
        body = json.loads(self.body or b"{}")
        if name in body:
            return 400, [
                {
                    "message": f"The {name} field should not be specified in the sobject data.",
                    "errorCode": "INVALID_FIELD",
                }
            ]
        existing = matches[0] if matches else None
        if existing and existing.get("IsConverted"):
            return 400, [
                {
                    "message": "cannot reference converted lead",
                    "errorCode": "CANNOT_UPDATE_CONVERTED_LEAD",
                    "fields": [],
                }
            ]
        errors = fake.validate(body, existing)
        if errors:
            return 400, errors
        if existing:
            existing.update(body)
            return 200, {"id": existing["Id"], "success": True, "errors": [], "created": False}
        created = fake.create({**body, name: value})
        return 201, {"id": created["Id"], "success": True, "errors": [], "created": True}

    # Web-to-Lead: 200 whatever happens; a lead only when the oid and required fields hold
    def _web_to_lead(self, method: str):
        fake = self.fake
        with fake.lock:
            fault = fake.faults.pop(0) if fake.faults else None
        if fault and fault.isdigit():
            return self._answer(int(fault), "<html><body>Service Unavailable</body></html>", content_type="text/html")
        if fault == "drop":
            return self._drop()
        if method == "POST":
            form = {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8"), keep_blank_values=True).items()}
            with fake.lock:
                fake.web_to_lead.append(form)
                if form.get("oid") == fake.oid and form.get("last_name") and form.get("company"):
                    fake.create(
                        {
                            "FirstName": form.get("first_name"),
                            "LastName": form["last_name"],
                            "Company": form["company"],
                            "Email": form.get("email"),
                            "Phone": form.get("phone"),
                            "Title": form.get("title"),
                            "Country": form.get("country"),
                            "Description": form.get("description"),
                            "LeadSource": form.get("lead_source"),
                            "HasOptedOutOfEmail": form.get("emailOptOut") == "1",
                            "DoNotCall": form.get("doNotCall") == "1",
                            "Via": "web-to-lead",
                        }
                    )
            if fault == "lost":
                return self._drop()
        return self._answer(200, "", content_type="text/html;charset=UTF-8")

    def _answer(self, status: int, body: Any, content_type: str = "application/json;charset=UTF-8") -> None:
        fake = self.fake
        headers = (
            {"Sforce-Limit-Info": f"api-usage={fake.api_calls}/{fake.daily_limit}"} if self.path.startswith(API) else {}
        )
        self.answer(status, body, headers, content_type=content_type)

    def _drop(self) -> None:
        self.drop()


class FakeSalesforce(LoopbackServer):
    handler = _Handler

    def __init__(
        self,
        latency: float = 0.0,
        client_id: str = "3MVG9fake.consumer.key",
        client_secret: str = "fake-consumer-secret",
        external_id_field: str | None = "Marketplace_Lead_Id__c",
        oid: str = "00Do000000ZHogE",
        ca=None,
    ) -> None:
        super().__init__(tls=True, ca=ca)
        self.ca_path = self.ca_file
        self.latency = latency
        self.client_id = client_id
        self.client_secret = client_secret
        self.oid = oid
        self.run_as: str | None = "005" + "Fa1KeRunAsUsr"  # the External Client App's Run As user
        self.client_credentials = True  # 'Enable Client Credentials Flow' in its OAuth settings and policies
        self.ip_relaxed = True  # its policies relax IP restrictions (or the Run As user's IP ranges allow us)
        self.scopes = {"api"}  # its selected OAuth scopes
        self.my_domain = True
        self.daily_limit = 15000
        self.faults: list[str] = []
        self.token_faults: list[str] = []
        self.lead_source_values = list(STANDARD_LEAD_SOURCES)
        self.lead_source_restricted = False
        self.country_picklists = False
        self.read_only: set[str] = set()
        self.hidden: set[str] = set()
        self.required: set[str] = set()
        self.validation_rule: tuple[Callable[[dict], bool], str] | None = None  # (rejects?, message)
        self.block_duplicates = False
        self.lead_createable = True
        self.lead_visible = True  # False: the Run As user has no access to Leads at all
        self.external_id_fields: dict[str, dict[str, Any]] = {}
        self.custom_fields: list[dict[str, Any]] = []  # the org's own Lead fields, as describe lists them
        self.record_types: list[dict[str, Any]] = []  # Lead record types besides Master (recordTypeInfos)
        if external_id_field:
            self.external_id_fields[external_id_field] = {"externalId": True, "unique": True}

        self.records: dict[str, dict[str, Any]] = {}  # Id → the Lead
        self.web_to_lead: list[dict[str, str]] = []  # every form posted, as received
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.api_calls = 0
        self.requests: list[tuple[str, str]] = []  # (method, path) of every call
        self._ids = itertools.count(1)

    # -- addresses and settings

    @property
    def url(self) -> str:
        return self.base_url

    @property
    def web_to_lead_url(self) -> str:
        return f"{self.url}/servlet/servlet.WebToLead?encoding=UTF-8"

    def settings(self, external_id_field: str | None = None) -> dict[str, str]:
        """Environment variables pointing the app's REST API destination at this org."""
        if external_id_field is None:
            external_id_field = next(iter(self.external_id_fields), "")
        return {
            "SALESFORCE_URL": self.url,
            "SALESFORCE_CLIENT_ID": self.client_id,
            "SALESFORCE_CLIENT_SECRET": self.client_secret,
            "SALESFORCE_EXTERNAL_ID_FIELD": external_id_field,
            "SALESFORCE_OID": "",
            "REQUESTS_CA_BUNDLE": self.ca_path,
        }

    def session(self):
        """A requests session that trusts this server's certificate."""
        import requests

        session = requests.Session()
        session.verify = self.ca_path
        session.trust_env = False  # else REQUESTS_CA_BUNDLE in the environment outranks ``verify``
        return session

    def expire_tokens(self) -> None:
        """Every token issued so far stops working (the session timed out, or was revoked)."""
        with self.lock:
            self.tokens.clear()

    # -- the org's schema

    def lead_fields(self) -> list[dict[str, Any]]:
        fields = [
            field("Id", "id", 18, createable=False, updateable=False, nillable=False),
            field("FirstName", length=40, label="First Name"),
            field("LastName", length=80, label="Last Name", nillable=False),
            field("Company", length=255, nillable=False),
            field("Title", length=128),
            field("Email", "email", 80),
            field("Phone", "phone", 40),
            field("Description", "textarea", 32000, filterable=False),
            field(
                "LeadSource",
                "picklist",
                255,
                label="Lead Source",
                restrictedPicklist=self.lead_source_restricted,
                picklistValues=picklist(self.lead_source_values),
            ),
            field("Status", "picklist", 255, picklistValues=picklist(["Open - Not Contacted", "Working - Contacted"])),
            field("HasOptedOutOfEmail", "boolean", label="Email Opt Out", nillable=False),
            field("DoNotCall", "boolean", label="Do Not Call", nillable=False),
            field("IsConverted", "boolean", createable=False, updateable=False),
            field("CreatedDate", "datetime", createable=False, updateable=False),
            field("CreatedById", "reference", 18, createable=False, updateable=False),
        ]
        if self.country_picklists:
            fields.append(field("Country", length=80))
            fields.append(
                field(
                    "CountryCode",
                    "picklist",
                    10,
                    label="Country Code",
                    restrictedPicklist=True,
                    picklistValues=[
                        {**item, "label": COUNTRIES[item["value"]]} for item in picklist(sorted(COUNTRIES))
                    ],
                )
            )
        else:
            fields.append(field("Country", length=80))
        for name, flags in self.external_id_fields.items():
            fields.append(field(name, length=64, **flags))
        fields += [dict(item) for item in self.custom_fields]
        if self.record_types:
            fields.append(field("RecordTypeId", "reference", 18, label="Record Type ID", referenceTo=["RecordType"]))
        fields = [f for f in fields if f["name"] not in self.hidden]
        for f in fields:
            if f["name"] in self.read_only:
                f["createable"] = f["updateable"] = False
        return fields

    def describe(self) -> dict[str, Any]:
        master = {
            "active": True,
            "available": True,
            "defaultRecordTypeMapping": not self.record_types,
            "developerName": "Master",
            "master": True,
            "name": "Master",
            "recordTypeId": "012000000000000AAA",
        }
        return {
            "name": "Lead",
            "label": "Lead",
            "keyPrefix": "00Q",
            "createable": self.lead_createable,
            "updateable": self.lead_createable,
            "queryable": True,
            "fields": self.lead_fields(),
            "recordTypeInfos": [*self.record_types, master],
            "urls": {"describe": "/services/data/v59.0/sobjects/Lead/describe"},
        }

    def record_type(self, name: str, record_type_id: str, available: bool = True) -> None:
        """A Lead record type of the org (``available``: to the Run As user's profile)."""
        self.record_types.append(
            {
                "active": True,
                "available": available,
                "defaultRecordTypeMapping": False,
                "developerName": name,
                "master": False,
                "name": name.replace("_", " "),
                "recordTypeId": record_type_id,
            }
        )

    # -- what the org does

    def validate(self, body: dict[str, Any], existing: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The errors Salesforce would answer for saving ``body`` as a Lead (empty: it saves)."""
        fields = {f["name"]: f for f in self.lead_fields()}
        for name in body:
            if name not in fields:
                return [{"message": f"No such column '{name}' on sobject of type Lead", "errorCode": "INVALID_FIELD"}]
        locked = [name for name in body if not fields[name]["createable" if existing is None else "updateable"]]
        if locked:
            return [
                {
                    "message": f"Unable to create/update fields: {', '.join(locked)}. Please check the security "
                    "settings of this field and verify that it is read/write for your profile or permission set.",
                    "errorCode": "INVALID_FIELD_FOR_INSERT_UPDATE",
                    "fields": locked,
                }
            ]
        merged = {**(existing or {}), **body}
        missing = [name for name in ("LastName", "Company", *sorted(self.required)) if not merged.get(name)]
        if missing:
            return [
                {
                    "message": f"Required fields are missing: [{', '.join(missing)}]",
                    "errorCode": "REQUIRED_FIELD_MISSING",
                    "fields": missing,
                }
            ]
        for name, value in body.items():
            info = fields[name]
            if isinstance(value, str) and info["length"] and len(value) > info["length"]:
                return [
                    {
                        "message": f"{info['label']}: data value too large: {value} (max length={info['length']})",
                        "errorCode": "STRING_TOO_LONG",
                        "fields": [name],
                    }
                ]
            if info["type"] == "email" and value and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
                return [
                    {
                        "message": f"{info['label']}: invalid email address: {value}",
                        "errorCode": "INVALID_EMAIL_ADDRESS",
                        "fields": [name],
                    }
                ]
            refused = _type_refuses(info, value)
            if refused:
                return [
                    {
                        "message": f"Cannot deserialize instance of {refused} from {type(value).__name__} value "
                        f"{value} or request may be missing a required field at [line:1, column:2]",
                        "errorCode": "JSON_PARSER_ERROR",
                    }
                ]
            if (
                name == "RecordTypeId"
                and value is not None
                and value
                not in [info["recordTypeId"] for info in self.describe()["recordTypeInfos"] if info["available"]]
            ):
                return [
                    {
                        "message": f"Record Type ID: this ID value isn't valid for the user: {value}",
                        "errorCode": "INVALID_CROSS_REFERENCE_KEY",
                        "fields": [name],
                    }
                ]
            chosen = value.split(";") if info["type"] == "multipicklist" and isinstance(value, str) else [value]
            if info["type"] in ("picklist", "multipicklist") and info["restrictedPicklist"] and value is not None:
                if not set(chosen) <= {item["value"] for item in info["picklistValues"]}:
                    return [
                        {
                            "message": f"{info['label']}: bad value for restricted picklist field: {value}",
                            "errorCode": "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                            "fields": [name],
                        }
                    ]
        if self.country_picklists and body.get("Country") and body["Country"] not in COUNTRIES.values():
            return [
                {
                    "message": "There's a problem with this country, even though it may appear correct. Please "
                    "select a country/territory from the list of valid countries.",
                    "errorCode": "FIELD_INTEGRITY_EXCEPTION",
                    "fields": ["Country"],
                }
            ]
        if self.validation_rule and self.validation_rule[0](merged):
            return [
                {"message": self.validation_rule[1], "errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "fields": []}
            ]
        if self.block_duplicates and existing is None and body.get("Email"):
            if any((r.get("Email") or "").lower() == body["Email"].lower() for r in self.records.values()):
                return [
                    {
                        "duplicateResult": {
                            "allowSave": False,
                            "duplicateRule": "Standard_Lead_Duplicate_Rule",
                            "duplicateRuleEntityType": "Lead",
                            "errorMessage": "Use one of these records?",
                            "matchResults": [],
                        },
                        "errorCode": "DUPLICATES_DETECTED",
                        "message": "Use one of these records?",
                        "fields": [],
                    }
                ]
        return []

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        record_id = "00Q" + f"{next(self._ids):012d}" + "".join(random.choices(string.ascii_uppercase, k=3))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        record = {
            "HasOptedOutOfEmail": False,
            "DoNotCall": False,
            **body,
            "Id": record_id,
            "IsConverted": False,
            "CreatedDate": now,
            "CreatedById": self.run_as,
        }
        self.records[record_id] = record
        return record

    def query(self, soql: str) -> tuple[int, Any]:
        """The SOQL the connector sends: SELECT fields FROM Lead WHERE a op v AND ... ORDER BY x LIMIT n."""
        match = re.fullmatch(
            r"\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+Lead(?:\s+WHERE\s+(?P<where>.+?))?"
            r"(?:\s+ORDER\s+BY\s+(?P<order>\w+))?(?:\s+LIMIT\s+(?P<limit>\d+))?\s*",
            soql,
            re.I | re.S,
        )
        if not match:
            return 400, [{"message": "unexpected token", "errorCode": "MALFORMED_QUERY"}]
        known = {f["name"]: f for f in self.lead_fields()}
        selected = [name.strip() for name in match["fields"].split(",")]
        conditions = []
        for part in re.split(r"\s+AND\s+", match["where"] or "", flags=re.I) if match["where"] else []:
            cond = re.fullmatch(r"(\w+)\s*(=|!=|>=|<=|>|<)\s*('(?:[^'\\]|\\.)*'|\S+)", part.strip())
            if not cond:
                return 400, [{"message": f"unexpected token: {part}", "errorCode": "MALFORMED_QUERY"}]
            conditions.append(cond.groups())
        for name in selected + [c[0] for c in conditions]:
            if name not in known:
                return 400, [{"message": f"No such column '{name}' on entity 'Lead'.", "errorCode": "INVALID_FIELD"}]
        for name, _, _ in conditions:
            if not known[name]["filterable"]:
                return 400, [
                    {"message": f"field '{name}' can not be filtered in a query call", "errorCode": "INVALID_FIELD"}
                ]

        def value_of(text: str) -> Any:
            if text.startswith("'"):
                return re.sub(r"\\(.)", r"\1", text[1:-1])
            if re.fullmatch(r"\d{4}-\d\d-\d\dT.*", text):
                return datetime.fromisoformat(text.replace("Z", "+00:00"))
            return {"true": True, "false": False, "null": None}.get(text.lower(), text)

        def holds(record: dict[str, Any], name: str, op: str, text: str) -> bool:
            wanted, have = value_of(text), record.get(name)
            if isinstance(wanted, datetime):
                have = datetime.strptime(have, "%Y-%m-%dT%H:%M:%S.000+0000").replace(tzinfo=UTC)
            elif isinstance(wanted, str) and isinstance(have, str):
                wanted, have = wanted.lower(), have.lower()
            if have is None or wanted is None:
                return (have == wanted) == (op == "=")
            return {
                "=": have == wanted,
                "!=": have != wanted,
                ">=": have >= wanted,
                "<=": have <= wanted,
                ">": have > wanted,
                "<": have < wanted,
            }[op]

        rows = [r for r in self.records.values() if all(holds(r, *c) for c in conditions)]
        if match["order"]:
            rows.sort(key=lambda r: r.get(match["order"]) or "")
        rows = rows[: int(match["limit"])] if match["limit"] else rows
        records = [
            {
                "attributes": {"type": "Lead", "url": f"/services/data/v59.0/sobjects/Lead/{r['Id']}"},
                **{name: r.get(name) for name in selected},
            }
            for r in rows
        ]
        return 200, {"totalSize": len(records), "done": True, "records": records}

    # -- HTTP


def _type_refuses(info: dict[str, Any], value: Any) -> str | None:
    """The JSON type Salesforce's parser wanted when ``value`` cannot be read as the field's type."""
    if value is None:
        return None
    kind = info["type"]
    if kind in ("double", "currency", "percent", "int") and (
        isinstance(value, bool) or not isinstance(value, (int, float))
    ):
        return "double" if kind != "int" else "int"
    if kind == "boolean" and not isinstance(value, bool):
        return "boolean"
    if kind in ("date", "datetime"):
        pattern = (
            r"\d{4}-\d\d-\d\d" if kind == "date" else r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)"
        )
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            return kind
    return None


@pytest.fixture(name="fake_salesforce")
def fake_salesforce_fixture(fake_tls_ca):
    """A fake org for one test (import ``fake_salesforce_fixture`` into a test module to use it),
    its certificate from the session's one test CA, so it runs beside the other TLS fakes."""
    with FakeSalesforce(ca=fake_tls_ca) as fake:
        yield fake
