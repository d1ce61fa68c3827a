"""Dynamics 365 (Dataverse Web API): each lead becomes one ``lead`` row, created once.

What it does and why (token, writes, fields, do-not-contact, errors, rate, ``check``): docs/dynamics.md,
"How the app talks to Dataverse"; that page also says which of the vendor's docs were checked, and when.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from leads.destinations.base import (
    Check,
    DeliveryError,
    HttpDestination,
    PermanentError,
    Route,
    Sent,
    TransientError,
    parse_retry_after,
)
from leads.destinations.mapping import FieldSpec, Mappings, check_mapping, mapped_record, options_of
from leads.destinations.notice import within

if TYPE_CHECKING:
    import msal
    import requests
    from azure.identity import ManagedIdentityCredential

    from leads.core.model import Lead
    from leads.core.settings import Settings

API = "/api/data/v9.2"
CRM = "Dataverse's lead table"
MAPPING_FIX = (
    "correct DYNAMICS_MAPPING, or the column in Power Apps (Tables → Lead → Columns: its logical name, e.g. "
    "new_offer, its choices)"
)
LEAD_ATTRIBUTES = "/EntityDefinitions(LogicalName='lead')/Attributes"
ATTRIBUTES_EVERY = 3600.0  # seconds the table definitions are trusted
# Attribute types → the mapping's kinds.
KINDS = {
    "String": "text",
    "Memo": "text",
    "Picklist": "picklist",
    "Boolean": "boolean",
    "Integer": "integer",
    "BigInt": "integer",
    "Decimal": "number",
    "Double": "number",
    "Money": "number",
    "DateTime": "datetime",
}
# What the built-in mapping puts in each column (python -m leads mapping dynamics).
BUILTIN_FIELDS = {
    "leadid": "a GUID derived from lead_id (the row is created once)",
    "subject": "offer, action and source ([TEST] for a test lead)",
    "firstname": "first_name",
    "lastname": "last_name",
    "emailaddress1": "email, unless invalid",
    "telephone1": "phone",
    "jobtitle": "title",
    "companyname": "company",
    "address1_country": "country's name",
    "description": "the test mark, description, source, action, offer, campaign, the lead id",
    "leadsourcecode": "8 (Web)",
    "donotemail": "true for a do-not-contact lead (and the other donot* columns)",
}

# The lead's standard "Lead Source" choice: 8 is "Web" in every environment (1 Advertisement,
# 2 Employee Referral, 3 External Referral, 4 Partner, 5 Public Relations, 6 Seminar, 7 Trade Show,
# 8 Web, 9 Word of Mouth, 10 Other). The marketplace's own connector sets this column too, which
# is why "no permission to create attribute leadsourcecode" is one of its known failures.
LEAD_SOURCE_WEB = 8

# Column sizes of the lead table; longer values would fail the whole create.
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
DO_NOT_CONTACT_COLUMNS = ("donotemail", "donotphone", "donotbulkemail", "donotpostalmail", "donotfax", "donotsendmm")

# Dataverse error codes (``error.code`` in a Web API error body), lower case.
DUPLICATE_KEY = "0x80040237"  # 412 "A record with matching key values already exists."
NO_ROLES = "0x80042f09"  # 403 "SecLib::RetrievePrivilegeForUser failed - no roles are assigned to user."
NOT_A_MEMBER = "0x80072560"  # 403 "The user is not a member of the organization."
PRIVILEGE_DENIED = ("0x80040220", "0x80048306")  # 403 "Principal user (...) is missing prvCreateLead privilege"
USER_DISABLED = ("0x80040225", "0x8004d24b")  # the (application) user is disabled
FIELD_CREATE_DENIED = ("0x8004f502",)  # 403 no create permission on a secured column
NOT_FOUND = ("0x80040217", "0x80060888", "0x8006088a")  # no such record / resource segment
THROTTLED = ("0x80072322", "0x80072321", "0x80072326")  # service protection: requests, time, concurrency

# Where a publisher fixes each problem.
APP_USERS = (
    "Power Platform admin center → Environments → (your environment) → Settings → Users + permissions → "
    "Application users"
)
FIX_TENANT = (
    "set DYNAMICS_TENANT_ID to your Microsoft Entra tenant (directory) ID: Entra admin center → Overview "
    "→ Tenant ID (a GUID); if your tenant is in a sovereign cloud, set DYNAMICS_AUTHORITY to that cloud's "
    "login host"
)
FIX_APP = (
    "set DYNAMICS_CLIENT_ID to the Application (client) ID of the app registration (Entra admin center → "
    "App registrations → your app → Overview), registered in the tenant of DYNAMICS_TENANT_ID"
)
FIX_SECRET = (
    "Entra admin center → App registrations → your app → Certificates & secrets → New client secret, "
    "and put its Value (not its Secret ID) in DYNAMICS_CLIENT_SECRET"
)
FIX_SECRET_EXPIRED = (
    FIX_SECRET + "; note the new secret's expiry date and replace it before then, then replay "
    "the failed deliveries: python -m leads replay --destination dynamics"
)
FIX_URL = (
    "set DYNAMICS_URL to the environment URL shown in Power Platform admin center → Environments → (your "
    "environment) → Environment URL, e.g. https://contoso.crm4.dynamics.com (no path), in the same tenant "
    "as DYNAMICS_TENANT_ID"
)
FIX_APP_USER = (
    f"{APP_USERS} → New app user → pick the app registration DYNAMICS_CLIENT_ID, a business unit, and a "
    "security role that can create leads (e.g. Salesperson, or the 'Microsoft Marketplace Lead Writer' "
    "role of the marketplace's solution)"
)
FIX_APP_USER_IDENTITY = (
    f"{APP_USERS} → New app user → Add an app → search for the managed identity's client ID "
    "(DYNAMICS_CLIENT_ID; azd env get-value APP_IDENTITY_CLIENT_ID) → Add, then a business unit "
    "and a security role that can create leads (e.g. Salesperson, or the 'Microsoft Marketplace "
    "Lead Writer' role)"
)
# The managed identity path: the host's identity endpoint and the identity assigned to the app.
IDENTITY_VARIABLES = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER")
FIX_NO_IDENTITY = (
    "run the app where it has its managed identity (the Function App, which sets IDENTITY_ENDPOINT "
    "and IDENTITY_HEADER), or, to run it elsewhere, use an app registration: set DYNAMICS_TENANT_ID, "
    "DYNAMICS_CLIENT_ID to the app registration's client ID and DYNAMICS_CLIENT_SECRET (see "
    "docs/dynamics.md)"
)
FIX_IDENTITY_NOT_ASSIGNED = (
    "set DYNAMICS_CLIENT_ID to the client ID of a user-assigned managed identity of this app "
    "(azd env get-value APP_IDENTITY_CLIENT_ID; Azure portal → the Function App → Identity → "
    "User assigned), or assign that identity to the app there"
)
FIX_IDENTITY_TOKEN = (
    "the environment must be in the tenant of the app's managed identity (the Function App's "
    "subscription's tenant), and DYNAMICS_URL must be that environment's URL: "
)
FIX_ROLE = (
    f"{APP_USERS} → select the app user of DYNAMICS_CLIENT_ID → Edit security roles → add a role that can "
    "create leads (e.g. Salesperson, or the 'Microsoft Marketplace Lead Writer' role)"
)
FIX_CREATE = (
    "give the application user's security role the Create privilege on Lead (Power Platform admin center → "
    "Settings → Users + permissions → Security roles → the role → Sales (or Core records) → Lead → "
    "Create: User level at least), or add a role that has it"
)
FIX_LEAD_SOURCE = (
    "the application user must be allowed to create the Lead Source (leadsourcecode) column: give its "
    "security role Create on Lead, and if Lead Source is a secured column (column security), add the "
    "application user to a column security profile that allows Create on it"
)
FIX_NO_LEAD_TABLE = (
    "install Dynamics 365 Sales in the environment (Power Platform admin "
    "center → the environment → Resources → Dynamics 365 apps), or set DYNAMICS_URL to the "
    "environment that has your leads"
)
FIX_REACH = (
    "if this lasts, check that DYNAMICS_URL is your environment URL (Power Platform admin center → "
    "Environments → Environment URL) and that this app can reach it"
)


def lead_guid(lead_id: str) -> str:
    """The ``leadid`` of a lead's row: the same GUID for the same lead, every time."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "marketplace-lead:" + lead_id))


class _TimedClient:
    """The HTTP client MSAL gets: our session, with our timeout on every call (MSAL sets none on a
    client it is given)."""

    def __init__(self, session: requests.Session, timeout: float) -> None:
        self.session = session
        self.timeout = timeout

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return self.session.get(url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return self.session.post(url, **kwargs)

    def close(self) -> None:  # the session is ours, not MSAL's
        pass


class DynamicsDestination(HttpDestination):
    name = "dynamics"
    setting_fields = (
        "dynamics_url",
        "dynamics_tenant_id",
        "dynamics_client_id",
        "dynamics_client_secret",
        "dynamics_authority",
        "dynamics_mapping",
    )
    secret_fields = ("dynamics_client_secret",)

    def __init__(
        self,
        url: str,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        authority: str = "https://login.microsoftonline.com",
        timeout: float = 30.0,
        session: requests.Session | None = None,
        mapping: str = "",
    ) -> None:
        super().__init__(timeout, session)
        self.url = _environment_url(url)
        self.mappings = Mappings("DYNAMICS_MAPPING", mapping)
        self._specs: dict[str, FieldSpec] | None = None
        self._specs_at = 0.0
        self.tenant_id = tenant_id.strip()
        self.client_id = client_id.strip()
        self.client_secret = client_secret
        self.authority = (authority or "https://login.microsoftonline.com").strip().rstrip("/")
        self.scope = f"{self.url}/.default"
        self._app: msal.ConfidentialClientApplication | None = None
        self._identity: ManagedIdentityCredential | None = None
        self._identity_token: str | None = None  # the last token the identity gave, to drop it if refused
        self._lock = threading.Lock()

    @property
    def uses_managed_identity(self) -> bool:
        """No client secret: the tokens are the managed identity DYNAMICS_CLIENT_ID's."""
        return not self.client_secret

    @classmethod
    def is_enabled(cls, settings: Settings) -> bool:
        return bool(settings.dynamics_url)

    @classmethod
    def from_settings(cls, settings: Settings) -> DynamicsDestination | None:
        if not cls.is_enabled(settings):
            return None
        return cls(
            settings.dynamics_url,
            settings.dynamics_tenant_id,
            settings.dynamics_client_id,
            settings.dynamics_client_secret,
            settings.dynamics_authority,
            settings.http_timeout_seconds,
            mapping=settings.dynamics_mapping,
        )

    # --- sending ---------------------------------------------------------------------------------

    def send(self, lead: Lead, route: Route) -> Sent:
        self._check_settings()
        guid = lead_guid(lead.lead_id)
        record = mapped_record(self.mappings, route, lead, self.lead_record(lead, route), self.attribute_specs, CRM)
        record["leadid"] = guid  # the row's id is the lead's, whatever a mapping says
        response = self._call("POST", "/leads", json=record)
        if 200 <= response.status_code < 300 and _is_dataverse(response):
            return Sent(external_id=guid, detail={"record": "created"})
        code, _ = _error_of(response)
        if code == DUPLICATE_KEY:
            return self._existing(guid, lead)
        self._specs = None  # the table may have changed: read its definitions again next time
        raise self._refused(response, lead)

    def _existing(self, guid: str, lead: Lead) -> Sent:
        """The row the duplicate-key answer says exists: ours, unless the environment has an
        alternate key on leads that another row already holds."""
        response = self._call("GET", f"/leads({guid})", params={"$select": "leadid"})
        if response.status_code == 200:
            return Sent(external_id=guid, detail={"record": "existing"})
        code, _ = _error_of(response)
        if code in NOT_FOUND:
            raise PermanentError(
                "Dataverse refused the lead as a duplicate of another row (an alternate key on leads matched)",
                fix="remove or relax the alternate key on the Lead table, or "
                "merge the leads by hand, then replay the delivery",
            )
        if response.status_code == 403:  # the role may create but not read: the duplicate key is our leadid
            return Sent(external_id=guid, detail={"record": "existing"})
        raise self._refused(response, lead)

    mapping_setting = "DYNAMICS_MAPPING"
    builtin_fields = BUILTIN_FIELDS

    @staticmethod
    def builtin_record(lead: Lead, route: Route) -> dict[str, Any]:
        return DynamicsDestination.lead_record(lead, route)

    @staticmethod
    def lead_record(lead: Lead, route: Route) -> dict[str, Any]:
        """The ``lead`` row for a lead, column by column (the built-in mapping)."""
        test = route.test or lead.is_test
        record: dict[str, Any] = {
            "leadid": lead_guid(lead.lead_id),
            "subject": _subject(lead, test),
            "firstname": lead.first_name,
            "lastname": lead.last_name,
            "emailaddress1": lead.email if lead.email and lead.email_valid is not False else None,
            "telephone1": lead.phone,
            "jobtitle": lead.title,
            "companyname": lead.company,
            "address1_country": _country_name(lead.country),
            "description": _description(lead, test),
            "leadsourcecode": LEAD_SOURCE_WEB,
        }
        record = {column: value for column, value in record.items() if value not in (None, "")}
        for column, limit in MAX_LENGTHS.items():
            if isinstance(record.get(column), str):
                record[column] = within(record[column], limit)
        if lead.do_not_contact:
            record.update(dict.fromkeys(DO_NOT_CONTACT_COLUMNS, True))
        return record

    # --- checking --------------------------------------------------------------------------------

    def check(self) -> Check:
        try:
            self._check_settings()
            user_id = self.whoami()["UserId"]
            can_create = self._can_create_leads(user_id)
            secured = self._lead_source_secured()
        except DeliveryError as error:
            return Check.failed(error)
        if can_create is False:
            return Check(False, f"the application user ({user_id}) has no Create privilege on Lead", FIX_CREATE)
        message = f"token accepted by {urlsplit(self.url).hostname}; application user {user_id}"
        notes = []
        if can_create is None:
            notes.append(
                "its privileges could not be read (its role lacks Read on Users): whether it can create "
                "leads shows with the first lead"
            )
        else:
            message += " can create leads"
        if secured:
            notes.append(
                "Lead Source (leadsourcecode) is a secured column: the application user needs a column "
                "security profile that allows Create on it (only a created lead can prove it)"
            )
        self._specs = None
        mapped = check_mapping(self.mappings, self.attribute_specs, CRM, MAPPING_FIX)
        if isinstance(mapped, Check):
            return mapped
        return Check(True, "; ".join([message, *notes, *mapped]), None)

    def attribute_specs(self) -> dict[str, FieldSpec]:
        """The lead table's columns as the field mapping sees them, from its definitions (the
        common properties, then the String and Memo columns' lengths and the Choice columns'
        options, each by a cast), read again each hour and after a refused create."""
        import time

        if self._specs is not None and time.monotonic() - self._specs_at <= ATTRIBUTES_EVERY:
            return self._specs
        base = self._metadata("", {"$select": "LogicalName,AttributeType,IsValidForCreate"})
        lengths = {}
        for cast in ("StringAttributeMetadata", "MemoAttributeMetadata"):
            for item in self._metadata(f"/Microsoft.Dynamics.CRM.{cast}", {"$select": "LogicalName,MaxLength"}):
                lengths[item.get("LogicalName")] = item.get("MaxLength")
        choices = {
            item.get("LogicalName"): item
            for item in self._metadata(
                "/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
                {"$select": "LogicalName", "$expand": "OptionSet($select=Options),GlobalOptionSet($select=Options)"},
            )
        }
        self._specs, self._specs_at = attribute_specs(base, lengths, choices), time.monotonic()
        return self._specs

    def _metadata(self, cast: str, params: dict[str, str]) -> list[dict[str, Any]]:
        response = self._call("GET", LEAD_ATTRIBUTES + cast, params=params)
        body = _json(response) if response.status_code == 200 else None
        if not isinstance(body, dict):
            code, _ = _error_of(response)
            if response.status_code == 404 and code in NOT_FOUND:
                raise PermanentError("the environment has no Lead table", fix=FIX_NO_LEAD_TABLE)
            raise self._refused(response)
        return [item for item in body.get("value") or [] if isinstance(item, dict)]

    def whoami(self) -> dict[str, Any]:
        """``WhoAmI``: which user (and organisation) the token is in this environment."""
        response = self._call("GET", "/WhoAmI")
        body = _json(response) if response.status_code == 200 else None
        if not isinstance(body, dict) or "UserId" not in body:
            raise self._refused(response)
        return body

    def _can_create_leads(self, user_id: str) -> bool | None:
        """Whether the user's roles grant prvCreateLead; None when its privileges cannot be read."""
        path = (
            f"/systemusers({user_id})/Microsoft.Dynamics.CRM.RetrieveUserPrivilegeByPrivilegeName"
            "(PrivilegeName='prvCreateLead')"
        )
        response = self._call("GET", path)
        body = _json(response) if response.status_code == 200 else None
        if isinstance(body, dict):
            held = body.get("RolePrivileges") or []
            return any(str(item.get("PrivilegeName", "")).lower() == "prvcreatelead" for item in held)
        code, _ = _error_of(response)
        status = response.status_code
        if code in (NO_ROLES, NOT_A_MEMBER, *USER_DISABLED) or status in (401, 429) or status >= 500:
            raise self._refused(response)
        return None

    def _lead_source_secured(self) -> bool | None:
        response = self._call(
            "GET",
            "/EntityDefinitions(LogicalName='lead')/Attributes(LogicalName='leadsourcecode')",
            params={"$select": "LogicalName,IsSecured"},
        )
        body = _json(response) if response.status_code == 200 else None
        if isinstance(body, dict):
            return bool(body.get("IsSecured"))
        code, _ = _error_of(response)
        if response.status_code == 404 and code in NOT_FOUND:
            raise PermanentError("the environment has no Lead table", fix=FIX_NO_LEAD_TABLE)
        if response.status_code == 403 and code in PRIVILEGE_DENIED:
            return None  # metadata not readable by this role: nothing to conclude
        raise self._refused(response)

    # --- talking to Dataverse ------------------------------------------------------------------

    def _refused(self, response: requests.Response, lead: Lead | None = None) -> DeliveryError:
        return dataverse_error(response, lead, managed_identity=self.uses_managed_identity)

    def _call(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> requests.Response:
        """One Web API call with a cached token; a refused token is replaced once."""
        token = self._token()
        response = self._request(method, path, token, json=json, params=params)
        if response.status_code == 401:
            self._forget(token)
            response = self._request(method, path, self._token(), json=json, params=params)
        return response

    def _request(
        self, method: str, path: str, token: str, *, json: Any = None, params: dict | None = None
    ) -> requests.Response:
        import requests

        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
            "User-Agent": "marketplace-lead-router",
        }
        if json is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        host = urlsplit(self.url).hostname
        try:
            return self.session.request(
                method,
                self.url + API + path,
                json=json,
                params=params,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout:
            raise TransientError(
                f"Dataverse ({host}) did not answer within {self.timeout:g} s", fix=FIX_REACH
            ) from None
        except requests.ConnectionError as exc:
            raise TransientError(f"could not reach Dataverse ({host}): {_reason(exc)}", fix=FIX_REACH) from None

    # --- tokens ------------------------------------------------------------------------------------

    def _token(self) -> str:
        """An access token for the environment: the cached one while it is valid."""
        if self.uses_managed_identity:
            return self._managed_identity_token()
        return self._secret_token()

    def _managed_identity_token(self) -> str:
        """The managed identity's token from the host's identity endpoint (azure-identity caches it)."""
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError

        with self._lock:
            try:
                token = self._managed_identity().get_token(self.scope).token
            except (ServiceRequestError, ServiceResponseError) as exc:
                raise TransientError(
                    f"could not reach this host's managed identity endpoint: {_reason(exc)}",
                    fix="if this lasts, restart the app; its host provides the endpoint",
                ) from None
            except ClientAuthenticationError as exc:  # CredentialUnavailableError is one too
                raise identity_error(str(exc.message or exc), self) from None
            except ValueError:  # an answer that is not JSON (a proxy's or gateway's page)
                raise TransientError(
                    "this host's managed identity endpoint answered something that is not a token"
                ) from None
            self._identity_token = token
            return token

    def _managed_identity(self) -> ManagedIdentityCredential:
        """azure-identity's credential for the identity DYNAMICS_CLIENT_ID, made at the first token
        request and kept (with its token cache) until Dataverse refuses a token it gave."""
        if self._identity is None:
            if not all(os.environ.get(name) for name in IDENTITY_VARIABLES):
                # Without them azure-identity would probe the VM metadata address (169.254.169.254)
                # for seconds: say plainly that this host has no managed identity instead.
                raise PermanentError(
                    "no managed identity on this host (IDENTITY_ENDPOINT and IDENTITY_HEADER are "
                    "not set), and no DYNAMICS_CLIENT_SECRET",
                    fix=FIX_NO_IDENTITY,
                )
            from azure.core.pipeline.transport import RequestsTransport
            from azure.identity import ManagedIdentityCredential

            # One quick retry of the host-local endpoint; longer waits are the delivery worker's.
            # Its calls go through the destination's deadline session (leads/core/http.py), with the
            # timeouts on the transport: a client given one never passes it its own.
            transport = RequestsTransport(
                session=self.session, session_owner=False, connection_timeout=self.timeout, read_timeout=self.timeout
            )
            self._identity = ManagedIdentityCredential(
                client_id=self.client_id, retry_total=1, retry_backoff_factor=0.5, transport=transport
            )
        return self._identity

    def _secret_token(self) -> str:
        """MSAL's token for the app registration, cached while it is valid."""
        import requests
        from msal.exceptions import MsalServiceError

        with self._lock:
            try:
                result = self._msal().acquire_token_for_client(scopes=[self.scope])
            except requests.Timeout:
                raise TransientError(
                    f"Entra ID ({self.authority}) did not answer within {self.timeout:g} s",
                    fix="if this lasts, check DYNAMICS_AUTHORITY and this app's outbound network",
                ) from None
            except requests.ConnectionError as exc:
                raise TransientError(
                    f"could not reach Entra ID ({self.authority}): {_reason(exc)}",
                    fix="check DYNAMICS_AUTHORITY (default https://login.microsoftonline.com) "
                    "and this app's outbound network",
                ) from None
            except (requests.HTTPError, MsalServiceError) as exc:  # MSAL raises these on a 5xx from Entra
                status = re.search(r"\b[45]\d\d\b", str(exc))
                raise TransientError(
                    f"Entra ID answered {status.group(0) if status else 'with an error'}; "
                    "tokens could not be issued now"
                ) from None
        if "access_token" in result:
            return result["access_token"]
        raise entra_error(result, self)

    def _msal(self) -> msal.ConfidentialClientApplication:
        """The MSAL client, made at the first token request (making it asks Entra for the tenant's
        OpenID configuration); kept, with its token cache, for the life of this destination."""
        if self._app is None:
            import msal

            try:
                self._app = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=self.client_secret,
                    authority=f"{self.authority}/{quote(self.tenant_id, safe='')}",
                    http_client=_TimedClient(self.session, self.timeout),
                    # The public and sovereign clouds' login hosts are known to MSAL and skip instance
                    # discovery anyway; any other host (a test's) would be looked up on the public cloud.
                    instance_discovery=False,
                    token_cache=msal.TokenCache(),
                )
            except ValueError as exc:
                raise discovery_error(exc, self) from None
        return self._app

    def _forget(self, token: str) -> None:
        """Drop a token Dataverse refused, so that the next request gets a new one."""
        if self.uses_managed_identity:
            with self._lock:
                if self._identity_token == token:  # a new credential: its cache starts empty
                    self._identity, self._identity_token = None, None
            return
        if self._app is None:
            return
        cache = self._app.token_cache
        with self._lock:
            stale = [item for item in cache.search(cache.CredentialType.ACCESS_TOKEN) if item.get("secret") == token]
            for item in stale:
                cache.remove_at(item)

    def _check_settings(self) -> None:
        if self.uses_managed_identity and not self.client_id:
            raise PermanentError(
                "DYNAMICS_CLIENT_ID not set",
                fix="set it to the client ID of the app's managed "
                "identity (azd env get-value APP_IDENTITY_CLIENT_ID), or set an app registration's "
                "DYNAMICS_TENANT_ID, DYNAMICS_CLIENT_ID and DYNAMICS_CLIENT_SECRET (see "
                "docs/dynamics.md)",
            )
        missing = [
            name
            for name, value in (("DYNAMICS_TENANT_ID", self.tenant_id), ("DYNAMICS_CLIENT_ID", self.client_id))
            if not value and not self.uses_managed_identity
        ]
        if missing:
            raise PermanentError(
                f"{', '.join(missing)} not set",
                fix="set the Entra app registration's tenant ID, client ID and a client secret (see docs/dynamics.md)",
            )
        parts = urlsplit(self.url)
        if parts.scheme != "https" or not parts.hostname:
            raise PermanentError("DYNAMICS_URL is not an https URL", fix=FIX_URL)
        if self.uses_managed_identity:
            return  # the login host is the managed identity endpoint's business
        if not self.authority.startswith("https://"):
            raise PermanentError(
                "DYNAMICS_AUTHORITY is not an https URL",
                fix="leave DYNAMICS_AUTHORITY unset for "
                "the public cloud (https://login.microsoftonline.com), or set your cloud's login "
                "host, e.g. https://login.microsoftonline.us",
            )


# --- mapping ---------------------------------------------------------------------------------------


def attribute_specs(
    base: list[dict[str, Any]], lengths: dict[str, Any], choices: dict[str, dict[str, Any]]
) -> dict[str, FieldSpec]:
    """The lead table's columns as the mapping sees them: writable when ``IsValidForCreate``; a
    Choice column's options by number and label (its own option set, or the global one it uses)."""
    specs = {}
    for item in base:
        name, kind = item.get("LogicalName"), KINDS.get(str(item.get("AttributeType")), "unsupported")
        if not name:
            continue
        choice = choices.get(name) or {}
        option_set = choice.get("OptionSet") or choice.get("GlobalOptionSet") or {}
        options = options_of(
            (option.get("Value"), _label(option.get("Label"))) for option in option_set.get("Options") or []
        )
        writable = bool(item.get("IsValidForCreate"))
        why = (
            "Dataverse sets it (not valid for create)"
            if not writable
            else (
                f"a {item.get('AttributeType')} column, which a mapping cannot set (a lookup is bound to a row's id)"
                if kind == "unsupported"
                else ""
            )
        )
        specs[name] = FieldSpec(name, kind, int(lengths.get(name) or 0) or None, options, True, writable, why)
    return specs


def _label(label: Any) -> str:
    """The user's label of a Dataverse Label complex type."""
    if not isinstance(label, dict):
        return ""
    user = label.get("UserLocalizedLabel") or next(iter(label.get("LocalizedLabels") or []), None) or {}
    return str(user.get("Label") or "")


def _subject(lead: Lead, test: bool) -> str:
    """e.g. ``Contoso CRM — Contact me (AppSource)``."""
    offer = lead.offer_title or lead.offer_id or "Marketplace offer"
    subject = f"{offer} — {lead.action_words or 'Marketplace lead'}"
    if lead.source_words:
        subject += f" ({lead.source_words})"
    return f"[TEST] {subject}" if test else subject


def _description(lead: Lead, test: bool) -> str:
    lines = []
    if test:
        lines += ["[TEST] A test lead (the marketplace sends one when a lead destination is validated).", ""]
    if lead.description:
        lines += [lead.description, ""]
    lines.append("Commercial marketplace lead")
    if lead.source:
        lines.append(
            f"Source: {lead.source_words} ({lead.source})"
            if lead.source_words != lead.source
            else f"Source: {lead.source}"
        )
    if lead.action:
        lines.append(
            f"Action: {lead.action_words} ({lead.action})"
            if lead.action_words != lead.action
            else f"Action: {lead.action}"
        )
    if lead.offer_title or lead.offer_id:
        offer = lead.offer_title or lead.offer_id
        lines.append(f"Offer: {offer} ({lead.offer_id})" if lead.offer_title and lead.offer_id else f"Offer: {offer}")
    if lead.campaign:
        lines.append("Campaign: " + "; ".join(f"{key}={value}" for key, value in lead.campaign.items()))
    if lead.email and lead.email_valid is False:
        lines.append(f"Email (as given, not a valid address): {lead.email}")
    if lead.do_not_contact:
        lines.append("Do not contact: this customer must not be contacted (a cross-listed partner's lead).")
    if lead.pii_withheld:
        lines.append("The marketplace withheld this customer's personal data.")
    lines.append(f"Lead id: {lead.lead_id}")
    lines.append(f"Received: {lead.received_at.isoformat()}")
    return "\n".join(lines)


def _country_name(code: str | None) -> str | None:
    if not code:
        return None
    import pycountry

    country = pycountry.countries.get(alpha_2=code.upper())
    return getattr(country, "name", None) or code


# --- reading errors --------------------------------------------------------------------------------


def entra_error(result: dict[str, Any], destination: DynamicsDestination | None = None) -> DeliveryError:
    """The diagnosis for a token endpoint's error answer (what MSAL returns)."""
    description = str(result.get("error_description") or "")
    codes = [int(code) for code in result.get("error_codes") or [] if str(code).isdigit()]
    codes += [int(code) for code in re.findall(r"AADSTS(\d+)", description)]
    summary = _first_line(description) or str(result.get("error") or "unknown error")
    error = _entra_diagnosis(codes, summary, destination)
    if error is not None:
        return error
    if result.get("error") in ("temporarily_unavailable", "server_error"):
        return TransientError(f"Entra ID could not issue a token now: {summary}")
    return PermanentError(
        f"Entra ID refused the token request: {summary}",
        fix="check DYNAMICS_TENANT_ID, DYNAMICS_CLIENT_ID and DYNAMICS_CLIENT_SECRET",
    )


def discovery_error(exc: ValueError, destination: DynamicsDestination) -> DeliveryError:
    """The diagnosis when MSAL could not read the tenant's OpenID configuration. MSAL raises its
    own generic ValueError while handling one that holds Entra's answer."""
    text = f"{exc} {exc.__context__ or ''}"
    codes = [int(code) for code in re.findall(r"AADSTS(\d+)", text)]
    detail = re.search(r"(AADSTS\d+:[^\\\"\r\n]*)", text)
    error = _entra_diagnosis(codes, detail.group(1).strip() if detail else "", destination)
    if error is not None:
        return error
    if "should consist of an https url" in text:
        return PermanentError(
            "DYNAMICS_AUTHORITY is not an https URL",
            fix="leave DYNAMICS_AUTHORITY unset, or set your cloud's login host, e.g. https://login.microsoftonline.us",
        )
    return PermanentError(
        f"Entra ID has no configuration for tenant '{destination.tenant_id}' at {destination.authority}", fix=FIX_TENANT
    )


def identity_error(text: str, destination: DynamicsDestination) -> DeliveryError:
    """The diagnosis for a token the host's managed identity endpoint did not give. azure-identity
    reports the endpoint's answer as ``Token request error: (<error>) <status>, <message>``."""
    answer = re.search(r"Token request error: \((\w+)\) (\d{3})?,? ?(.*)", text, re.DOTALL)
    status = int(answer.group(2)) if answer and answer.group(2) else None
    said = _first_line(answer.group(3) if answer else text)[:200]
    if "Unable to load the proper Managed Identity" in text or "No MSI found" in text:
        return PermanentError(
            f"this host has no managed identity with client ID '{destination.client_id}' (DYNAMICS_CLIENT_ID): {said}",
            fix=FIX_IDENTITY_NOT_ASSIGNED,
        )
    if status is not None and (status >= 500 or status == 429):
        return TransientError(
            f"this host's managed identity endpoint could not issue a token now ({status} {said})",
            fix="if this lasts, check that DYNAMICS_URL is your environment URL (the token's "
            "resource) and restart the app",
        )
    answered = " ".join(part for part in (str(status or ""), said) if part)
    return PermanentError(
        f"this host's managed identity endpoint refused the token request ({answered})", fix=FIX_IDENTITY_NOT_ASSIGNED
    )


def _entra_diagnosis(codes: list[int], summary: str, destination: DynamicsDestination | None) -> DeliveryError | None:
    tenant = destination.tenant_id if destination else "DYNAMICS_TENANT_ID"
    client = destination.client_id if destination else "DYNAMICS_CLIENT_ID"
    url = destination.url if destination else "DYNAMICS_URL"
    for code in codes:
        if code == 90002:
            return PermanentError(f"tenant '{tenant}' not found in Entra ID (AADSTS90002)", fix=FIX_TENANT)
        if code == 900023:
            return PermanentError(
                f"DYNAMICS_TENANT_ID '{tenant}' is not a valid tenant ID or domain (AADSTS900023)", fix=FIX_TENANT
            )
        if code == 700016:
            return PermanentError(
                f"application '{client}' was not found in the directory of tenant '{tenant}' (AADSTS700016)",
                fix=FIX_APP,
            )
        if code == 7000215:
            return PermanentError(
                "DYNAMICS_CLIENT_SECRET is not a valid client secret of the application (AADSTS7000215)", fix=FIX_SECRET
            )
        if code == 7000222:
            return PermanentError(
                "the client secret in DYNAMICS_CLIENT_SECRET has expired (AADSTS7000222)", fix=FIX_SECRET_EXPIRED
            )
        if code == 7000112:
            return PermanentError(
                f"application '{client}' is disabled in Entra ID (AADSTS7000112)",
                fix="enable it: Entra admin center → Enterprise applications → the app → "
                "Properties → Enabled for users to sign in = Yes",
            )
        if code == 500011:
            return PermanentError(
                f"{url} is not a Dataverse environment known to tenant '{tenant}' (AADSTS500011)", fix=FIX_URL
            )
        if code == 53003:
            return PermanentError(
                "a Conditional Access policy blocked the application's sign-in (AADSTS53003)",
                fix="exclude the app's service principal from that Conditional Access policy "
                "(Entra admin center → Protection → Conditional Access)",
            )
    return None


def dataverse_error(
    response: requests.Response, lead: Lead | None = None, *, managed_identity: bool = False
) -> DeliveryError:
    """The diagnosis for a Dataverse Web API answer that is not a success (``managed_identity``: the
    token was the app's managed identity's, not an app registration's)."""
    status = response.status_code
    code, message = _error_of(response)
    text = _scrub(message, lead)
    said = f"{code} {text}".strip() if code else text
    if status == 429 or code in THROTTLED:
        return TransientError(
            f"Dataverse service protection limit reached ({said or status})",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if code == NO_ROLES or "no roles are assigned" in message or "not been assigned any roles" in message:
        return PermanentError("the application user has no security role in the environment", fix=FIX_ROLE)
    if code == NOT_A_MEMBER:
        who = "the managed identity DYNAMICS_CLIENT_ID" if managed_identity else "DYNAMICS_CLIENT_ID"
        return PermanentError(
            f"the environment has no application user for {who} (The user is not a member of the organization)",
            fix=FIX_APP_USER_IDENTITY if managed_identity else FIX_APP_USER,
        )
    if code in USER_DISABLED:
        return PermanentError(
            "the application user is disabled in the environment",
            fix=f"{APP_USERS} → select the app user of DYNAMICS_CLIENT_ID → Activate",
        )
    if status == 400 and "leadsourcecode" in message.lower() and "range" in message.lower():
        return PermanentError(
            f"the Lead Source (leadsourcecode) column has no choice {LEAD_SOURCE_WEB} (Web) in this environment",
            fix=f"add the choice Web with value {LEAD_SOURCE_WEB} back to the Lead "
            "Source column (Power Apps → Tables → Lead → Columns → Lead Source)",
        )
    if code in FIELD_CREATE_DENIED or ("leadsourcecode" in message.lower() and status == 403):
        return PermanentError(
            "no create permission on the lead's Lead Source (leadsourcecode) column", fix=FIX_LEAD_SOURCE
        )
    if code in PRIVILEGE_DENIED or "is missing prv" in message:
        privilege = re.search(r"missing (prv\w+) privilege", message)
        name = privilege.group(1) if privilege else "a"
        fix = (
            FIX_CREATE
            if name.lower() == "prvcreatelead"
            else (f"give the application user's security role the {name} privilege, or add a role that has it")
        )
        return PermanentError(f"the application user's security roles lack the {name} privilege", fix=fix)
    if status == 404 and code in NOT_FOUND and ("'leads'" in message or "entity with name" in message.lower()):
        return PermanentError("the environment has no Lead table", fix=FIX_NO_LEAD_TABLE)
    if status == 401 and managed_identity:
        return PermanentError(
            "Dataverse refused a new token of the managed identity (401)", fix=FIX_IDENTITY_TOKEN + FIX_URL
        )
    if status == 401:
        return PermanentError(
            "Dataverse refused a new token from Entra ID (401)",
            fix="the environment must be in "
            "the tenant DYNAMICS_TENANT_ID, and DYNAMICS_URL must be that environment's URL: " + FIX_URL,
        )
    answered_by_dataverse = code is not None and not 300 <= status < 400 and _is_dataverse(response)
    if status < 500 and status not in (408, 425) and not answered_by_dataverse:
        return PermanentError(
            f"{urlsplit(response.url).hostname} is not a Dataverse Web API (it answered "
            f"{status} {response.reason or ''}".rstrip()
            + ")",
            fix=FIX_URL,
        )
    reason = f"{response.reason or ''}: {said}" if said else (response.reason or "")
    fix = None if status >= 500 or status in (408, 425) else "correct what Dataverse names, then replay the delivery"
    return DynamicsDestination.refused(status, reason, response.headers, fix=fix)


def _error_of(response: requests.Response) -> tuple[str | None, str]:
    """(error code in lower case, message) of a Web API error body; (None, "") for anything else."""
    body = _json(response)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, ""
    code = error.get("code")
    return (str(code).lower() if code else None), str(error.get("message") or "")


def _json(response: requests.Response) -> Any:
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return json.loads(response.content or b"null")
    except ValueError:
        return None


def _is_dataverse(response: requests.Response) -> bool:
    """Whether an answer comes from the Dataverse Web API (an HTML page answering 200 is not a
    created lead)."""
    headers = response.headers
    return bool(headers.get("OData-Version") or headers.get("OData-EntityId") or _json(response) is not None)


def _scrub(message: str, lead: Lead | None) -> str:
    """A service's message, without the customer's personal data (a validation error may quote
    a value), shortened."""
    from leads.destinations.redact import mask_personal

    return mask_personal(_first_line(message), lead, limit=300)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def _reason(exc: Exception) -> str:
    text = str(exc)
    for known in (
        "Name or service not known",
        "nodename nor servname",
        "getaddrinfo failed",
        "Connection refused",
        "CERTIFICATE_VERIFY_FAILED",
        "RemoteDisconnected",
        "Connection reset",
        "Connection aborted",
    ):
        if known in text:
            return known
    return type(exc).__name__


def _environment_url(url: str) -> str:
    """``https://contoso.crm4.dynamics.com`` from what a publisher may paste (a trailing slash, an
    app's address with a path and query)."""
    parts = urlsplit((url or "").strip())
    if not parts.scheme or not parts.netloc:
        return (url or "").strip().rstrip("/")
    return f"{parts.scheme}://{parts.netloc}"
