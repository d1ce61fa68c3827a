"""A fake Microsoft Entra ID and Dataverse environment: one real HTTPS server on 127.0.0.1 that the
real MSAL and the destination's requests code talk to.

Entra ID (what MSAL's confidential client needs for client credentials):

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: the tenant's OpenID configuration, or
  400 with Entra's error body for a tenant that does not exist (``AADSTS90002``) or is not a tenant
  id at all (``AADSTS900023``);
- ``GET /common/discovery/instance``: instance discovery, for a client that asks;
- ``POST /{tenant}/oauth2/v2.0/token``: ``grant_type=client_credentials`` with the client id and
  secret (body or Basic); answers a bearer token for ``<resource>/.default`` or Entra's errors:
  ``AADSTS700016`` (no such application in the directory), ``AADSTS7000215`` (wrong secret),
  ``AADSTS7000222`` (expired secret), ``AADSTS7000112`` (application disabled), ``AADSTS500011``
  (no such resource: a URL that is not this environment). Every POST counts in
  :attr:`FakeDynamics.token_requests`.

The host's managed identity endpoint, of the kind App Service and Functions expose: plain HTTP on
127.0.0.1 (:attr:`FakeDynamics.identity_endpoint`, for ``IDENTITY_ENDPOINT``), ``GET /msi/token``
with the ``X-IDENTITY-HEADER`` secret (:attr:`FakeDynamics.identity_header`, for
``IDENTITY_HEADER``), ``api-version=2019-08-01``, ``resource`` and ``client_id``. It answers a token
for the one user-assigned identity assigned to "this app" (:attr:`FakeDynamics.identity_client_id`)
as ``{"access_token", "expires_on", "resource", "token_type", "client_id"}``; any other client id
gets the platform's 400 ``{"statusCode": 400, "message": "Unable to load the proper Managed
Identity."}``; a resource that is not this environment a 500. Every GET counts in
:attr:`FakeDynamics.identity_requests`, and each is kept in :attr:`FakeDynamics.identity_calls`.

Dataverse Web API (``/api/data/v9.2``), for the one principal that has an application user
(:attr:`FakeDynamics.app_user_client_id`: the app registration, or the managed identity): a token
of any other principal is "not a member of the organization".

- ``WhoAmI``; ``systemusers(<id>)/Microsoft.Dynamics.CRM.RetrieveUserPrivilegeByPrivilegeName(...)``;
  ``EntityDefinitions(LogicalName='lead')/Attributes(LogicalName='leadsourcecode')``;
  ``POST leads`` (204 + ``OData-EntityId``; 412 ``0x80040237`` for a ``leadid`` that exists;
  400 for unknown columns, too-long values, a Lead Source outside its choices);
  ``GET leads(<id>)``;
- a token it did not issue, that expired or was revoked: 401 with ``WWW-Authenticate``; no
  application user: 403 ``0x80072560``; no security role: 403 ``0x80042f09``; a missing privilege:
  403 ``0x80040220`` "Principal user ... is missing prvCreateLead privilege"; a secured
  ``leadsourcecode`` without create permission: 403 ``0x8004f502``; no Lead table: 404;
- service protection as Dataverse does it: more than ``rate_limit`` requests in ``rate_window``
  seconds answer 429 ``0x80072322`` with ``Retry-After``.

Knobs: ``latency`` (seconds added to every request), :meth:`FakeDynamics.fail` (the next requests
answer 429/500/503, time out, drop the connection, or create the lead and then drop the connection
— a lost answer — or find their token expired), :meth:`FakeDynamics.expire_tokens`, and the
setup attributes (``app_user``, ``roles``, ``privileges``, ``lead_source_secured``,
``lead_source_create``, ``lead_table``, ``not_dataverse``, ``secret_expired``, ``app_disabled``).
Its records: :attr:`FakeDynamics.leads` (leadid → row), :attr:`FakeDynamics.token_requests`,
:attr:`FakeDynamics.requests`.

Use it as a context manager, or through the ``dynamics`` pytest fixture, which also makes requests
trust the fake's certificate authority (``REQUESTS_CA_BUNDLE``) and sets the ``DYNAMICS_*``
settings.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import trustme

from .loopback import LoopbackHandler, LoopbackHTTPServer, LoopbackServer, trust

API = "/api/data/v9.2"
FAULTS = ("429", "500", "503", "timeout", "drop", "lost", "expired")
IDENTITY_API_VERSION = "2019-08-01"  # what App Service's and Functions' identity endpoint takes
MAX_LENGTHS = {
    "subject": 300,
    "firstname": 50,
    "lastname": 50,
    "emailaddress1": 100,
    "telephone1": 50,
    "jobtitle": 100,
    "companyname": 100,
    "address1_country": 80,
    "description": 2000,
}
LEAD_SOURCE_CHOICES = range(1, 11)  # Advertisement ... Other
LEAD_SOURCE_LABELS = [
    "Advertisement",
    "Employee Referral",
    "External Referral",
    "Partner",
    "Public Relations",
    "Seminar",
    "Trade Show",
    "Web",
    "Word of Mouth",
    "Other",
]
METADATA = "EntityDefinitions(LogicalName='lead')/Attributes"
# Edm types of the attribute types a create's JSON must match, for Dataverse's "Cannot convert the literal".
EDM = {
    "Integer": "Edm.Int32",
    "BigInt": "Edm.Int64",
    "Decimal": "Edm.Decimal",
    "Double": "Edm.Double",
    "Money": "Edm.Decimal",
    "Boolean": "Edm.Boolean",
    "DateTime": "Edm.DateTimeOffset",
    "Picklist": "Edm.Int32",
}


def lead_attributes() -> dict[str, dict[str, Any]]:
    """The lead table's standard columns the app meets, as its definitions describe them."""
    found = {
        "leadid": attribute("leadid", "Uniqueidentifier"),
        "fullname": attribute("fullname", "String", 160, create=False),
        "createdon": attribute("createdon", "DateTime", create=False),
        "description": attribute("description", "Memo", 2000),
        "leadsourcecode": attribute(
            "leadsourcecode", "Picklist", options=list(zip(LEAD_SOURCE_CHOICES, LEAD_SOURCE_LABELS, strict=True))
        ),
        "industrycode": attribute("industrycode", "Picklist", options=[(1, "Accounting"), (2, "Agriculture")]),
        "campaignid": attribute("campaignid", "Lookup"),
        "websiteurl": attribute("websiteurl", "String", 200),
        "mobilephone": attribute("mobilephone", "String", 50),
    }
    for name, limit in MAX_LENGTHS.items():
        found.setdefault(name, attribute(name, "String", limit))
    for name in ("donotemail", "donotphone", "donotbulkemail", "donotpostalmail", "donotfax", "donotsendmm"):
        found[name] = attribute(name, "Boolean")
    return found


def attribute(name: str, kind: str, max_length: int | None = None, options=(), create: bool = True) -> dict[str, Any]:
    """One column: its AttributeType, MaxLength (String, Memo), choices (Picklist) and IsValidForCreate."""
    return {
        "LogicalName": name,
        "AttributeType": kind,
        "MaxLength": max_length,
        "IsValidForCreate": create,
        "Options": [
            {
                "Value": value,
                "Label": {
                    "LocalizedLabels": [{"Label": label, "LanguageCode": 1033}],
                    "UserLocalizedLabel": {"Label": label, "LanguageCode": 1033},
                },
            }
            for value, label in options
        ],
    }


GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TENANT_FORMAT = re.compile(rf"^({GUID}|[a-z0-9-]+(\.[a-z0-9-]+)+)$", re.IGNORECASE)


@dataclass
class Fault:
    kind: str  # one of FAULTS
    on: str = "dataverse"  # "dataverse", "token", "identity" or "any"
    retry_after: int = 7  # for 429


@dataclass
class Request:
    method: str
    path: str
    status: int | None  # None: no answer (dropped)
    fault: str | None = None
    at: float = field(default_factory=time.time)


class FakeDynamics(LoopbackServer):
    """Start it with ``with FakeDynamics() as fake:``; point the destination at :meth:`settings`.
    Entra ID and Dataverse answer on the base's HTTPS server; the host's managed identity
    endpoint on a second, plain HTTP server of the same fake, as App Service serves it."""

    name = "fake-dynamics"

    def __init__(
        self,
        *,
        ca: trustme.CA | None = None,
        latency: float = 0.0,
        token_lifetime: int = 3599,
        timeout_after: float = 2.0,
    ) -> None:
        self.handler = _Handler
        super().__init__(tls=True, ca=ca)
        self._identity_server = LoopbackHTTPServer(_Handler, self, None)
        self.latency = latency
        self.token_lifetime = token_lifetime
        self.timeout_after = timeout_after  # how long a "timeout" fault holds the request
        # Entra ID: the tenant and its app registration
        self.tenant_id = str(uuid.uuid4())
        self.tenant_domain = "contoso.onmicrosoft.com"
        self.tenant_name = "Contoso"
        self.client_id = str(uuid.uuid4())
        self.client_secret = "Xy8Q~" + secrets.token_urlsafe(30)
        self.secret_expired = False
        self.app_disabled = False
        # the host: its managed identity endpoint and the user-assigned identity assigned to the app
        self.identity_client_id = str(uuid.uuid4())
        self.identity_header = secrets.token_hex(16)
        # Dataverse: the environment and the app's application user in it
        self.organization_id = str(uuid.uuid4())
        self.business_unit_id = str(uuid.uuid4())
        self.app_user_id = str(uuid.uuid4())
        self.app_user = True  # an application user exists for app_user_client_id
        self.app_user_client_id = self.client_id  # whose application user it is (the identity's, in that mode)
        self.roles = True  # it has at least one security role
        self.privileges = {"prvCreateLead", "prvReadLead", "prvReadUser"}
        self.lead_source_secured = False  # column security on leadsourcecode
        self.lead_source_create = True  # the user's column security profile allows Create on it
        self.lead_table = True
        self.attributes = lead_attributes()  # the lead table's columns; a test adds the environment's own
        self.not_dataverse = False  # answer /api/data like a web server that is not Dataverse
        self.rate_limit: int | None = None
        self.rate_window = 300.0
        # records
        self.leads: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.token_requests = 0
        self.discovery_requests = 0
        self.identity_requests = 0
        self.identity_calls: list[dict[str, str]] = []  # the query and header of each identity request
        self.requests: list[Request] = []
        self._faults: deque[Fault] = deque()
        self._recent: deque[float] = deque()

    # --- lifecycle: the base's server, and the identity endpoint's beside it ---------------------

    def start(self) -> FakeDynamics:
        threading.Thread(
            target=self._identity_server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-identity-endpoint",
            daemon=True,
        ).start()
        return super().start()

    def stop(self) -> None:
        self._identity_server.shutdown()
        self._identity_server.server_close()
        super().stop()

    # --- addresses and settings ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The environment URL (DYNAMICS_URL)."""
        return self.base_url

    @property
    def authority(self) -> str:
        """The login host (DYNAMICS_AUTHORITY)."""
        return self.base_url

    @property
    def identity_endpoint(self) -> str:
        """The host's managed identity endpoint (IDENTITY_ENDPOINT)."""
        return f"http://127.0.0.1:{self._identity_server.server_address[1]}/msi/token"

    def settings(self, *, managed_identity: bool = False, **overrides: str) -> dict[str, str]:
        """The DYNAMICS_* settings that point the destination here, with ``overrides``: the app
        registration's, or (``managed_identity``) the identity's client ID and no secret."""
        if managed_identity:
            return {
                "DYNAMICS_URL": self.url,
                "DYNAMICS_CLIENT_ID": self.identity_client_id,
                "DYNAMICS_TENANT_ID": "",
                "DYNAMICS_CLIENT_SECRET": "",
                "DYNAMICS_AUTHORITY": "",
                **overrides,
            }
        return {
            "DYNAMICS_URL": self.url,
            "DYNAMICS_TENANT_ID": self.tenant_id,
            "DYNAMICS_CLIENT_ID": self.client_id,
            "DYNAMICS_CLIENT_SECRET": self.client_secret,
            "DYNAMICS_AUTHORITY": self.authority,
            **overrides,
        }

    def host_environment(self) -> dict[str, str]:
        """What App Service and Functions put in the app's environment for its identity endpoint."""
        return {"IDENTITY_ENDPOINT": self.identity_endpoint, "IDENTITY_HEADER": self.identity_header}

    # --- knobs ---------------------------------------------------------------------------------

    def fail(self, kind: str, times: int = 1, on: str = "dataverse", retry_after: int = 7) -> None:
        """The next ``times`` requests (to Dataverse, the token endpoint, or any) fail with ``kind``."""
        assert kind in FAULTS, kind
        with self.lock:
            self._faults.extend(Fault(kind, on, retry_after) for _ in range(times))

    def expire_tokens(self) -> None:
        """Every token issued so far is expired (as when a token outlives its hour, or is revoked)."""
        with self.lock:
            for token in self.tokens.values():
                token["expires"] = 0

    def _next_fault(self, target: str) -> Fault | None:
        with self.lock:
            if self._faults and self._faults[0].on in (target, "any"):
                return self._faults.popleft()
        return None

    def _record(self, method: str, path: str, status: int | None, fault: str | None = None) -> None:
        with self.lock:
            self.requests.append(Request(method, path, status, fault))

    def _issue_token(self, resource: str, appid: str) -> dict[str, Any]:
        """A token of the principal ``appid`` for ``resource``, in the token endpoint's answer shape."""
        now = int(time.time())
        claims = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + self.token_lifetime,
            "appid": appid,
            "tid": self.tenant_id,
            "oid": str(uuid.uuid4()),
            "idtyp": "app",
            "ver": "1.0",
        }
        token = ".".join(
            [
                _b64({"typ": "JWT", "alg": "RS256", "kid": "fake"}),
                _b64(claims),
                base64.urlsafe_b64encode(secrets.token_bytes(64)).decode().rstrip("="),
            ]
        )
        with self.lock:
            self.tokens[token] = {"expires": now + self.token_lifetime, "resource": resource, "appid": appid}
        return {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": token,
        }

    def _rate_limited(self) -> int | None:
        """Seconds to wait when this request is over the service protection limit."""
        if not self.rate_limit:
            return None
        now = time.monotonic()
        with self.lock:
            while self._recent and self._recent[0] <= now - self.rate_window:
                self._recent.popleft()
            if len(self._recent) >= self.rate_limit:
                return max(1, math.ceil(self._recent[0] + self.rate_window - now))
            self._recent.append(now)
        return None


def _refused_value(item: dict[str, Any], value: Any) -> tuple[str, str] | None:
    """Dataverse's (code, message) for a value its column cannot take, or None."""
    name, kind = item["LogicalName"], item["AttributeType"]
    if value is None:
        return None
    if kind in EDM and kind != "Picklist":
        wrong = {
            "Boolean": not isinstance(value, bool),
            "DateTime": not (
                isinstance(value, str)
                and re.fullmatch(r"\d{4}-\d\d-\d\d(T\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:\d\d)?)?", value)
            ),
            "Integer": isinstance(value, bool) or not isinstance(value, int),
            "BigInt": isinstance(value, bool) or not isinstance(value, int),
        }.get(kind, isinstance(value, bool) or not isinstance(value, (int, float)))
        if wrong:
            return "0x80048d19", (
                f"Error identified in Payload provided by the user for Entity :'leads', For more "
                f"information on this error please follow this help link https://go.microsoft.com/"
                f"fwlink/?linkid=2195293  ---->  InnerException : Microsoft.OData.ODataException: "
                f"Cannot convert the literal '{value}' to the expected type '{EDM[kind]}'."
            )
    if kind in ("String", "Memo") and (not isinstance(value, str)):
        return "0x80048d19", f"Cannot convert the literal '{value}' to the expected type 'Edm.String'."
    if kind in ("String", "Memo") and item["MaxLength"] and len(value) > item["MaxLength"]:
        return "0x80044331", (
            f"A validation error occurred. The length of the '{name}' attribute of the 'lead' "
            f"entity exceeded the maximum allowed length of '{item['MaxLength']}'."
        )
    if kind == "Picklist":
        accepted = [option["Value"] for option in item["Options"]]
        if isinstance(value, bool) or value not in accepted:
            return "0x80044331", (
                f"A validation error occurred. The value {value} of '{name}' on record of type "
                f"'lead' is outside the valid range. Accepted Values: "
                f"{','.join(map(str, accepted))}"
            )
    return None


def _b64(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def entra_error(fake: FakeDynamics, error: str, code: int, text: str) -> dict[str, Any]:
    """Entra ID's error body."""
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {stamp}",
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"{fake.authority}/error?code={code}",
    }


def dataverse_error(code: str, message: str) -> dict[str, Any]:
    """Dataverse Web API's error body."""
    return {"error": {"code": code, "message": message}}


class _Handler(LoopbackHandler):
    """Entra, Dataverse and the host's identity endpoint: one handler, routed by path."""

    methods = ("GET", "POST", "PATCH")

    def serve(self, method: str) -> None:
        fake = self.fake
        body = self.read_body()
        if fake.latency:
            time.sleep(fake.latency)
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path.startswith(API + "/") or path == API:
            return self._dataverse(method, path[len(API) + 1 :], parse_qs(url.query), body)
        if self.server is self.fake._identity_server:
            if method == "GET" and path == "/msi/token":
                return self._identity_token(parse_qs(url.query))
            return self._json(404, {"statusCode": 404, "message": "Not found"})
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/common/discovery/instance":
            return self._instance_discovery(parse_qs(url.query))
        if method == "GET" and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            return self._openid_configuration(parts[0])
        if method == "POST" and parts[1:] == ["oauth2", "v2.0", "token"]:
            return self._token(parts[0], body)
        self._html(404, "Not Found")

    # --- Entra ID ------------------------------------------------------------------------------

    def _tenant_error(self, tenant: str) -> dict[str, Any] | None:
        fake = self.fake
        if not TENANT_FORMAT.match(tenant):
            return entra_error(
                fake,
                "invalid_request",
                900023,
                f"Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid external domain.",
            )
        if tenant.lower() not in (fake.tenant_id, fake.tenant_domain):
            return entra_error(
                fake,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you "
                "have the correct tenant ID and are signing into the correct cloud. Check with your "
                "subscription administrator, this may happen if there are no active subscriptions for "
                "the tenant.",
            )
        return None

    def _openid_configuration(self, tenant: str) -> None:
        fake = self.fake
        with fake.lock:
            fake.discovery_requests += 1
        error = self._tenant_error(tenant)
        if error:
            self._record("GET", "openid-configuration", 400)
            return self._json(400, error)
        base = f"{fake.authority}/{fake.tenant_id}"
        self._record("GET", "openid-configuration", 200)
        self._json(
            200,
            {
                "token_endpoint": f"{fake.authority}/{tenant}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{fake.authority}/{fake.tenant_id}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
                "authorization_endpoint": f"{fake.authority}/{tenant}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{fake.authority}/{tenant}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{fake.authority}/{tenant}/oauth2/v2.0/logout",
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce", "tid", "ver"],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
            },
        )

    def _instance_discovery(self, query: dict[str, list[str]]) -> None:
        fake = self.fake
        endpoint = (query.get("authorization_endpoint") or [""])[0]
        tenant = urlsplit(endpoint).path.strip("/").split("/")[0] or "common"
        host = urlsplit(fake.authority).netloc
        self._record("GET", "discovery/instance", 200)
        self._json(
            200,
            {
                "tenant_discovery_endpoint": f"{fake.authority}/{tenant}/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            },
        )

    def _token(self, tenant: str, body: bytes) -> None:
        fake = self.fake
        with fake.lock:
            fake.token_requests += 1
        fault = fake._next_fault("token")
        if fault and self._play(fault, "POST", "token"):
            return
        form = {key: values[0] for key, values in parse_qs(body.decode()).items()}
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        authorization = self.headers.get("Authorization", "")
        if authorization.startswith("Basic "):
            client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
            client_id, secret = unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))
        status, answer = 200, None
        if error := self._tenant_error(tenant):
            status, answer = 400, error
        elif form.get("grant_type") != "client_credentials":
            status, answer = (
                400,
                entra_error(fake, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."),
            )
        elif client_id != fake.client_id:
            status, answer = (
                400,
                entra_error(
                    fake,
                    "unauthorized_client",
                    700016,
                    f"Application with identifier "
                    f"'{client_id}' was not found in the directory '{fake.tenant_name}'. This can happen if the "
                    "application has not been installed by the administrator of the tenant or consented to by any user "
                    "in the tenant. You may have sent your authentication request to the wrong tenant.",
                ),
            )
        elif fake.app_disabled:
            status, answer = (
                400,
                entra_error(
                    fake, "unauthorized_client", 7000112, f"Application '{client_id}'(Lead router) is disabled."
                ),
            )
        elif secret != fake.client_secret:
            status, answer = (
                401,
                entra_error(
                    fake,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. "
                    "Ensure the secret being sent in the request is the client secret value, not the client secret ID, "
                    f"for a secret added to app '{fake.client_id}'.",
                ),
            )
        elif fake.secret_expired:
            status, answer = (
                401,
                entra_error(
                    fake,
                    "invalid_client",
                    7000222,
                    f"The provided client secret keys for "
                    f"app '{fake.client_id}' are expired. Visit the Azure portal to create new keys for your app: "
                    "https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: "
                    "https://aka.ms/certCreds.",
                ),
            )
        else:
            scope = form.get("scope", "")
            resource = scope[: -len("/.default")] if scope.endswith("/.default") else None
            if resource is None:
                status, answer = (
                    400,
                    entra_error(
                        fake,
                        "invalid_scope",
                        1002012,
                        f"The provided value for scope "
                        f"{scope} is not valid. Client credential flows must have a scope value "
                        "with /.default suffixed "
                        "to the resource identifier (application ID URI).",
                    ),
                )
            elif resource.rstrip("/") != fake.url:
                status, answer = (
                    400,
                    entra_error(
                        fake,
                        "invalid_resource",
                        500011,
                        f"The resource principal named "
                        f"{resource} was not found in the tenant named {fake.tenant_name}. This can happen if the "
                        "application has not been installed by the administrator of the tenant or consented to by any "
                        "user in the tenant. You might have sent your authentication request to the wrong "
                        "tenant.",
                    ),
                )
            else:
                answer = fake._issue_token(fake.url, fake.client_id)
        self._record("POST", "token", status)
        self._json(status, answer, {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    # --- the host's managed identity endpoint ---------------------------------------------------

    def _identity_token(self, query: dict[str, list[str]]) -> None:
        fake = self.fake
        args = {name: values[0] for name, values in query.items()}
        with fake.lock:
            fake.identity_requests += 1
            fake.identity_calls.append({**args, "X-IDENTITY-HEADER": self.headers.get("X-IDENTITY-HEADER", "")})
        fault = fake._next_fault("identity")
        if fault and self._play(fault, "GET", "msi/token"):
            return
        resource = args.get("resource", "").rstrip("/")
        if self.headers.get("X-IDENTITY-HEADER") != fake.identity_header:
            status, answer = (
                401,
                {
                    "statusCode": 401,
                    "message": "Unauthorized: the X-IDENTITY-HEADER is missing or not valid.",
                    "correlationId": str(uuid.uuid4()),
                },
            )
        elif args.get("api-version") != IDENTITY_API_VERSION:
            status, answer = (
                400,
                {
                    "statusCode": 400,
                    "message": f"api-version '{args.get('api-version')}' is not supported.",
                    "correlationId": str(uuid.uuid4()),
                },
            )
        elif args.get("client_id", "").lower() != fake.identity_client_id:
            status, answer = (
                400,
                {
                    "statusCode": 400,
                    "message": "Unable to load the proper Managed Identity.",
                    "correlationId": str(uuid.uuid4()),
                },
            )
        elif resource != fake.url:
            status, answer = (
                500,
                {
                    "statusCode": 500,
                    "message": "An unexpected error occured while fetching the AAD Token.",
                    "correlationId": str(uuid.uuid4()),
                },
            )
        else:
            issued = fake._issue_token(fake.url, fake.identity_client_id)
            status, answer = (
                200,
                {
                    "access_token": issued["access_token"],
                    "resource": args["resource"],
                    "expires_on": str(int(time.time()) + fake.token_lifetime),
                    "token_type": "Bearer",
                    "client_id": fake.identity_client_id,
                },
            )
        self._record("GET", "msi/token", status)
        self._json(status, answer)

    # --- Dataverse -----------------------------------------------------------------------------

    def _dataverse(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        fake = self.fake
        if fake.not_dataverse:
            self._record(method, path, 404)
            return self._html(404, "Not Found")
        fault = fake._next_fault("dataverse")
        if fault and self._play(fault, method, path):
            return
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        with fake.lock:
            grant = fake.tokens.get(token)
            if grant and fault and fault.kind == "expired":
                grant["expires"] = 0
        if not grant or grant["expires"] <= time.time() or grant["resource"] != fake.url:
            self._record(method, path, 401)
            return self._answer(
                401,
                None,
                {
                    "WWW-Authenticate": f"Bearer authorization_uri={fake.authority}/"
                    f"{fake.tenant_id}/oauth2/authorize, resource_id={fake.url}/"
                },
            )
        if wait := fake._rate_limited():
            self._record(method, path, 429)
            return self._answer(
                429,
                dataverse_error(
                    "0x80072322",
                    f"Number of requests exceeded the limit of "
                    f"{fake.rate_limit} over time window of {fake.rate_window:g} seconds.",
                ),
                {"Retry-After": str(wait)},
            )
        if not fake.app_user or grant.get("appid") != fake.app_user_client_id:
            self._record(method, path, 403)
            return self._answer(403, dataverse_error("0x80072560", "The user is not a member of the organization."))
        if not fake.roles:
            self._record(method, path, 403)
            return self._answer(
                403,
                dataverse_error(
                    "0x80042f09",
                    "SecLib::RetrievePrivilegeForUser failed - no "
                    "roles are assigned to user. Returned hr = -2147209463, User: "
                    f"{fake.app_user_id}",
                ),
            )
        status, payload, headers = self._route(method, path, query, body)
        if fault and fault.kind == "lost":  # done, and the answer never arrives
            self._record(method, path, None, "lost")
            return self._drop()
        self._record(method, path, status)
        self._answer(status, payload, headers)

    def _route(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, Any, dict[str, str]]:
        fake = self.fake
        if method == "GET" and path == "WhoAmI":
            return (
                200,
                {
                    "@odata.context": f"{fake.url}{API}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                    "BusinessUnitId": fake.business_unit_id,
                    "UserId": fake.app_user_id,
                    "OrganizationId": fake.organization_id,
                },
                {},
            )
        match = re.fullmatch(
            r"systemusers\(([0-9a-f-]+)\)/Microsoft\.Dynamics\.CRM\."
            r"RetrieveUserPrivilegeByPrivilegeName\(PrivilegeName='(\w+)'\)",
            path,
        )
        if method == "GET" and match:
            if denied := self._privilege("prvReadUser", 8, "systemuser"):
                return denied
            held = match.group(2) in fake.privileges and match.group(1) == fake.app_user_id
            privileges = (
                [
                    {
                        "Depth": "Global",
                        "PrivilegeId": str(uuid.uuid5(uuid.NAMESPACE_OID, match.group(2))),
                        "BusinessUnitId": fake.business_unit_id,
                        "PrivilegeName": match.group(2),
                        "RecordFilterId": None,
                        "RecordFilterUniqueName": None,
                    }
                ]
                if held
                else []
            )
            return (
                200,
                {
                    "@odata.context": f"{fake.url}{API}/$metadata#Microsoft.Dynamics.CRM."
                    "RetrieveUserPrivilegeByPrivilegeNameResponse",
                    "RolePrivileges": privileges,
                },
                {},
            )
        if method == "GET" and path == "EntityDefinitions(LogicalName='lead')/Attributes(LogicalName='leadsourcecode')":
            if not fake.lead_table:
                return 404, dataverse_error("0x80040217", "Could not find an entity with name lead"), {}
            return (
                200,
                {
                    "@odata.context": f"{fake.url}{API}/$metadata#EntityDefinitions('lead')/Attributes"
                    "(LogicalName,IsSecured)/$entity",
                    "@odata.type": "#Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
                    "LogicalName": "leadsourcecode",
                    "MetadataId": "0d3ffa5e-0b5c-4b7f-9c57-7cb4a8f4b0e1",
                    "IsSecured": fake.lead_source_secured,
                },
                {},
            )
        if method == "GET" and path.startswith(METADATA):
            return self._attributes(path[len(METADATA) :], query)
        if path == "leads" and not fake.lead_table or path.startswith("leads(") and not fake.lead_table:
            return 404, dataverse_error("0x80060888", "Resource not found for the segment 'leads'."), {}
        if method == "POST" and path == "leads":
            return self._create_lead(body)
        match = re.fullmatch(r"leads\(([0-9a-fA-F-]{36})\)", path)
        if method == "GET" and match:
            if denied := self._privilege("prvReadLead", 4, "lead"):
                return denied
            row = fake.leads.get(match.group(1).lower())
            if row is None:
                return 404, dataverse_error("0x80040217", f"lead With Id = {match.group(1)} Does Not Exist"), {}
            select = (query.get("$select") or [""])[0]
            columns = [name for name in select.split(",") if name] or list(row)
            return (
                200,
                {
                    "@odata.context": f"{fake.url}{API}/$metadata#leads({select})/$entity",
                    **{name: row.get(name) for name in columns},
                },
                {},
            )
        return 404, dataverse_error("0x8006088a", f"Resource not found for the segment '{path.split('(')[0]}'."), {}

    def _attributes(self, cast: str, query: dict) -> tuple[int, Any, dict[str, str]]:
        """The lead table's column definitions: the common properties, or (cast to a metadata
        type) only the columns of that type with its own properties, as $select and $expand ask."""
        fake = self.fake
        if not fake.lead_table:
            return 404, dataverse_error("0x80040217", "Could not find an entity with name lead"), {}
        types = {
            "": None,
            "/Microsoft.Dynamics.CRM.StringAttributeMetadata": "String",
            "/Microsoft.Dynamics.CRM.MemoAttributeMetadata": "Memo",
            "/Microsoft.Dynamics.CRM.PicklistAttributeMetadata": "Picklist",
        }
        if cast not in types:
            return 404, dataverse_error("0x8006088a", f"Resource not found for the segment '{cast.strip('/')}'."), {}
        select = [name for name in (query.get("$select") or [""])[0].split(",") if name]
        if "MaxLength" in select and types[cast] is None:  # a derived type's property on the base type
            return (
                400,
                dataverse_error(
                    "0x0",
                    "Could not find a property named 'MaxLength' on type 'Microsoft.Dynamics.CRM.AttributeMetadata'.",
                ),
                {},
            )
        rows = []
        for item in fake.attributes.values():
            if types[cast] is not None and item["AttributeType"] != types[cast]:
                continue
            row = {
                "@odata.type": f"#Microsoft.Dynamics.CRM.{item['AttributeType']}AttributeMetadata",
                "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_OID, item["LogicalName"])),
                **{name: item.get(name) for name in select or ("LogicalName", "AttributeType")},
            }
            if "OptionSet" in (query.get("$expand") or [""])[0]:
                row["OptionSet"] = {"Options": item["Options"]}
                row["GlobalOptionSet"] = None
            rows.append(row)
        return (
            200,
            {"@odata.context": f"{fake.url}{API}/$metadata#EntityDefinitions('lead')/Attributes", "value": rows},
            {},
        )

    def _privilege(self, privilege: str, otc: int, entity: str) -> tuple[int, Any, dict] | None:
        fake = self.fake
        if privilege in fake.privileges:
            return None
        return (
            403,
            dataverse_error(
                "0x80040220",
                f"Principal user (Id={fake.app_user_id}, type=8, roleCount=1, "
                f"privilegeCount={len(fake.privileges)}, accessMode=4), is missing {privilege} "
                f"privilege (Id={uuid.uuid5(uuid.NAMESPACE_OID, privilege)}) on OTC={otc} for "
                f"entity '{entity}'. context.Caller={fake.app_user_id}",
            ),
            {},
        )

    def _create_lead(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        fake = self.fake
        if denied := self._privilege("prvCreateLead", 4, "lead"):
            return denied
        try:
            row = json.loads(body)
            assert isinstance(row, dict)
        except (ValueError, AssertionError):
            return 400, dataverse_error("0x80040216", "The request body is not a valid lead."), {}
        for name, value in row.items():
            item = fake.attributes.get(name)
            if item is None or item["AttributeType"] in ("Lookup", "Customer", "Owner"):
                return (
                    400,
                    dataverse_error(
                        "0x80060888", f"Invalid property '{name}' was found in entity 'Microsoft.Dynamics.CRM.lead'."
                    ),
                    {},
                )
            refused = _refused_value(item, value)
            if refused:
                return 400, dataverse_error(*refused), {}
        source = row.get("leadsourcecode")
        if source is not None and fake.lead_source_secured and not fake.lead_source_create:
            return (
                403,
                dataverse_error(
                    "0x8004f502", "The user doesn't have permission to create attribute leadsourcecode in entity lead"
                ),
                {},
            )
        lead_id = str(row.get("leadid") or uuid.uuid4()).lower()
        with fake.lock:
            if lead_id in fake.leads:
                return 412, dataverse_error("0x80040237", "A record with matching key values already exists."), {}
            fake.leads[lead_id] = {
                **row,
                "leadid": lead_id,
                "fullname": " ".join(filter(None, (row.get("firstname"), row.get("lastname")))),
                "createdon": datetime.now(UTC).isoformat(),
            }
        return 204, None, {"OData-EntityId": f"{fake.url}{API}/leads({lead_id})"}

    # --- answering -----------------------------------------------------------------------------

    def _play(self, fault: Fault, method: str, path: str) -> bool:
        """Act out a fault that answers in place of the service; False for those that come later."""
        if fault.kind in ("lost", "expired"):
            return False
        self._record(method, path, None if fault.kind in ("drop", "timeout") else int(fault.kind), fault.kind)
        if fault.kind == "drop":
            self._drop()
        elif fault.kind == "timeout":
            time.sleep(self.fake.timeout_after)
            self._drop()
        elif fault.kind == "429":
            self._answer(
                429,
                dataverse_error(
                    "0x80072321",
                    "Combined execution time of incoming requests exceeded "
                    "limit of 1,200,000 milliseconds over time window of 300 seconds. Decrease number of "
                    "concurrent requests or reduce the duration of requests and try again later.",
                ),
                {"Retry-After": str(fault.retry_after)},
            )
        elif path == "msi/token":  # the identity endpoint's own error shape
            self._json(
                int(fault.kind),
                {
                    "statusCode": int(fault.kind),
                    "message": "The service is unavailable.",
                    "correlationId": str(uuid.uuid4()),
                },
            )
        else:
            self._answer(int(fault.kind), dataverse_error("0x80040216", "An unexpected error occurred."))
        return True

    def _answer(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("OData-Version", "4.0")
            if payload is not None:
                self.send_header("Content-Type", "application/json; odata.metadata=minimal")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("REQ_ID", str(uuid.uuid4()))
            self.send_header("x-ms-service-request-id", str(uuid.uuid4()))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            pass

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            pass

    def _html(self, status: int, title: str) -> None:
        data = f"<!DOCTYPE html><html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>".encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass

    def _record(self, method: str, path: str, status: int | None, fault: str | None = None) -> None:
        self.fake._record(method, path, status, fault)

    def _drop(self) -> None:
        self.drop()


# --- pytest fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dynamics_tls_ca(fake_tls_ca) -> trustme.CA:
    """The session's one certificate authority for fake HTTPS services (conftest.py), so fakes
    running side by side are all trusted through one ``REQUESTS_CA_BUNDLE``."""
    return fake_tls_ca


@pytest.fixture
def dynamics(monkeypatch, env, dynamics_tls_ca):
    """A running :class:`FakeDynamics`, trusted by requests (``REQUESTS_CA_BUNDLE``), with the
    ``DYNAMICS_*`` settings of an app registration pointing at it."""
    with FakeDynamics(ca=dynamics_tls_ca) as fake:
        trust(monkeypatch, fake.ca_file)
        for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"):  # this machine is no Azure host
            monkeypatch.delenv(name, raising=False)
        env(**fake.settings())
        yield fake


@pytest.fixture
def dynamics_mi(dynamics, env):
    """:func:`dynamics` as the Function App sees it: its managed identity endpoint in the
    environment, the identity's client ID and no secret in the settings, and the application user
    in the environment being the identity's."""
    dynamics.app_user_client_id = dynamics.identity_client_id
    env(**dynamics.host_environment(), **dynamics.settings(managed_identity=True))
    return dynamics


# --- benchmark -----------------------------------------------------------------------------------------


def benchmark(count: int = 200, latency: float = 0.05) -> dict[str, float]:
    """Deliver ``count`` leads one after another through the destination's ``send`` to a fake with
    ``latency`` seconds added to every call; leads per second and token requests per 1,000 leads
    (one token serves every lead of a run: a token lasts an hour)."""
    import requests

    from leads.core.normalise import from_http_body
    from leads.destinations.base import Route
    from leads.destinations.dynamics import DynamicsDestination

    with FakeDynamics(latency=latency) as fake:
        session = requests.Session()
        session.verify = fake.ca_file
        session.trust_env = False  # no proxy settings, no REQUESTS_CA_BUNDLE from the environment
        destination = DynamicsDestination(
            fake.url, fake.tenant_id, fake.client_id, fake.client_secret, fake.authority, timeout=30, session=session
        )
        leads = [
            from_http_body(
                {
                    "UserDetails": {
                        "FirstName": "Bench",
                        "LastName": f"Mark {i}",
                        "Email": f"bench{i}@contoso.com",
                        "Country": "US",
                        "Company": "Contoso",
                    },
                    "LeadSource": "SPZA-PLT|contoso.crm",
                    "OfferTitle": "Contoso CRM",
                    "Description": f"benchmark lead {i}",
                }
            )
            for i in range(count)
        ]
        started = time.perf_counter()
        for lead in leads:
            destination.send(lead, Route())
        elapsed = time.perf_counter() - started
        assert len(fake.leads) == len({lead.lead_id for lead in leads})
        return {
            "leads_per_second": round(count / elapsed, 2),
            "token_requests_per_1000": round(fake.token_requests * 1000 / count, 2),
            "token_requests": fake.token_requests,
            "seconds": round(elapsed, 2),
        }
