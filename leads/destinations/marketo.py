"""Marketo: each lead upserted as a Marketo person through the REST API, keyed on email.

What it does and why (token, writes, fields, do-not-contact, errors, rate, ``check``): docs/marketo.md,
"How the app talks to Marketo"; that page also says which of the vendor's docs were checked, and when.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from leads.destinations.base import (
    Check,
    DeliveryError,
    HttpDestination,
    PermanentError,
    Refusal,
    Route,
    Sent,
    TransientError,
    service_said,
)
from leads.destinations.mapping import FieldSpec, Mappings, check_mapping, mapped_record, options_of
from leads.destinations.notice import within
from leads.destinations.ratelimit import CallLimiter

if TYPE_CHECKING:
    import requests

    from leads.core.model import Lead
    from leads.core.settings import Settings

log = logging.getLogger(__name__)

# Marketo's documented limits for a subscription.
CALLS_PER_WINDOW = 100
WINDOW_SECONDS = 20.0
CONCURRENT_CALLS = 10

# Writable text fields the details may go to, by REST name or by label (lower case), first found wins.
NOTE_FIELDS = ("leadDescription", "marketplaceLeadDetails", "description", "comments", "comment", "personNotes")
NOTE_LABELS = ("lead description", "description", "comments", "comment", "person notes", "notes")
NOTE_MAX = 2000  # characters of details when the field's length is not given

CRM = "Marketo's person"
MAPPING_FIX = (
    "correct MARKETO_MAPPING (fields by their REST API name, Admin > Field Management), or the field in "
    "Marketo: on form MARKETO_FORM_ID (a hidden field is enough), a select field's values"
)
# describe's data types → the mapping's kinds.
KINDS = {
    "string": "text",
    "text": "text",
    "textarea": "text",
    "email": "text",
    "phone": "text",
    "url": "text",
    "reference": "text",
    "boolean": "boolean",
    "integer": "integer",
    "score": "integer",
    "percent": "integer",
    "float": "number",
    "currency": "number",
    "date": "date",
    "datetime": "datetime",
}
# What the built-in mapping puts in each person field (python -m leads mapping marketo).
BUILTIN_FIELDS = {
    "email": "email (the upsert's key)",
    "firstName": "first_name",
    "lastName": "last_name",
    "phone": "phone",
    "company": "company",
    "title": "title",
    "country": "country's name",
    "leadSource": "source_words",
    "leadDescription": "the details: test and do-not-contact marks, "
    "action, offer, campaign, description, lead id (the first writable text field of "
    + ", ".join(NOTE_FIELDS)
    + "; without a form)",
    "unsubscribed": "true for a do-not-contact lead (and doNotCall, with their reasons)",
}
DNC_REASON = (
    "Microsoft commercial marketplace: do-not-contact lead (the customer came through a "
    "cross-listed partner and must not be contacted)"
)

# errors[].code → (what it means, transient, fix)
_RESPONSE_CODES: dict[str, tuple[str, bool, str | None]] = {
    "601": (
        "access token invalid",
        False,
        "the token Marketo issued was refused at once: check that "
        "MARKETO_URL is the REST endpoint of the same instance as the LaunchPoint service",
    ),
    "602": ("access token expired", False, None),
    "603": (
        "access denied",
        False,
        "give the API-only user of the LaunchPoint service a role with the "
        "'Read-Write Person' API permission (Admin > Users & Roles), and if Admin > Web Services has an "
        "IP allowlist, add the app's outbound addresses",
    ),
    "604": ("request timed out in Marketo", True, None),
    "605": ("HTTP method not supported", False, "report this as a bug of the app"),
    "606": ("rate limit exceeded (100 calls per 20 s)", True, None),
    "607": (
        "daily API quota reached",
        True,
        "the quota resets at midnight US Central time; other "
        "integrations share it (Admin > Web Services shows usage); ask your Marketo account manager "
        "for a higher quota if this recurs",
    ),
    "608": ("API temporarily unavailable", True, None),
    "609": ("invalid JSON", False, "report this as a bug of the app"),
    "610": (
        "requested resource not found",
        False,
        "set MARKETO_URL to the REST API endpoint shown in "
        "Admin > Web Services, without /rest (https://<munchkin-id>.mktorest.com)",
    ),
    "611": ("system error", True, None),
    "612": ("invalid content type", False, "report this as a bug of the app"),
    "614": (
        "invalid subscription (temporarily unreachable)",
        True,
        "if it lasts, check MARKETO_URL's Munchkin id (Admin > Web Services)",
    ),
    "615": ("concurrent access limit reached (10 calls at once)", True, None),
    "616": ("invalid subscription type", False, None),
    "701": ("a required value is blank", False, None),
    "713": ("transient error", True, None),
    "719": ("lock wait timeout", True, None),
}
_RETRY_AFTER = {
    "606": WINDOW_SECONDS,
    "615": 5.0,
    "604": 30.0,
    "608": 60.0,
    "611": 30.0,
    "614": 60.0,
    "713": 30.0,
    "719": 30.0,
}
# reasons[].code of a skipped record → what it means (Marketo's messages may quote values: not used).
_RECORD_CODES = {
    "1001": "invalid value for a field's type",
    "1002": "missing value for a required parameter",
    "1003": "invalid data",
    "1004": "lead not found",
    "1005": "lead already exists",
    "1006": "field not found",
    "1007": "multiple leads match the lookup criteria",
    "1008": "access denied to the lead's partition",
    "1010": "partition update not allowed",
    "1011": "field not supported",
    "1013": "object not found",
}
NOT_MARKETO = "MARKETO_URL does not answer as Marketo's REST API (HTTP {status})"
NOT_MARKETO_FIX = (
    "set it to the REST API endpoint shown in Admin > Web Services, without /rest (https://<munchkin-id>.mktorest.com)"
)
TOO_LARGE = Refusal(
    message="Marketo answered {status}: the request is too large", fix="report this as a bug of the app"
)
_FIELD_NAMED = re.compile(r"field\s+'([^']{1,100})'", re.IGNORECASE)
_TYPE_NAMED = re.compile(r"of type\s+'([^']{1,40})'", re.IGNORECASE)


class MarketoDestination(HttpDestination):
    name = "marketo"
    setting_fields = ("marketo_url", "marketo_client_id", "marketo_client_secret", "marketo_form_id", "marketo_mapping")
    secret_fields = ("marketo_client_secret",)
    # HTTP statuses; Marketo's own errors come with 200 and a code (_RESPONSE_CODES).
    statuses = {404: Refusal(message=NOT_MARKETO, fix=NOT_MARKETO_FIX), 413: TOO_LARGE, 414: TOO_LARGE}

    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        form_id: str = "",
        timeout: float = 30.0,
        session: requests.Session | None = None,
        limiter: CallLimiter | None = None,
        mapping: str = "",
    ) -> None:
        super().__init__(
            timeout,
            session,
            limiter or CallLimiter(CALLS_PER_WINDOW, WINDOW_SECONDS, CONCURRENT_CALLS, service="Marketo"),
        )
        self.url = base_url(url)
        self.client_id = client_id
        self.client_secret = client_secret
        self.form_id = form_id.strip()
        self.token_requests = 0
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = threading.Lock()
        self._fields: dict[str, dict[str, Any]] | None = None
        self._fields_lock = threading.Lock()
        self._email_locks = [threading.Lock() for _ in range(64)]
        self.mappings = Mappings("MARKETO_MAPPING", mapping)
        self._specs: dict[str, FieldSpec] | None = None

    mapping_setting = "MARKETO_MAPPING"
    builtin_fields = BUILTIN_FIELDS

    @staticmethod
    def builtin_record(lead: Lead, route: Route) -> dict[str, Any]:
        return {**MarketoDestination.fields_for(lead), NOTE_FIELDS[0]: details(lead, route)}

    @classmethod
    def is_enabled(cls, settings: Settings) -> bool:
        return bool(settings.marketo_url)

    @classmethod
    def from_settings(cls, settings: Settings) -> MarketoDestination | None:
        if not cls.is_enabled(settings):
            return None
        return cls(
            settings.marketo_url,
            settings.marketo_client_id,
            settings.marketo_client_secret,
            settings.marketo_form_id,
            settings.http_timeout_seconds,
            mapping=settings.marketo_mapping,
        )

    # --- sending ---------------------------------------------------------------------------------

    def send(self, lead: Lead, route: Route) -> Sent:
        self._require_settings()
        email = lead.email or ""
        if not email or lead.email_valid is False:
            raise PermanentError(
                "the lead has no valid email address, and Marketo upserts persons on email",
                fix="nothing to change in the settings: this lead (often a customer whose data "
                "the marketplace withholds) cannot go to Marketo; find it with python -m leads "
                "show",
            )
        if not email.isascii():
            raise PermanentError(
                "the lead's email address has non-ASCII characters, which Marketo does not accept",
                fix="nothing to change in the settings: add this person in Marketo by hand",
            )
        fields = self.fields_for(lead)
        if not self.form_id:
            note = self._note_field()
            if note:
                fields[note[0]] = details(lead, route, note[1])
        fields = mapped_record(self.mappings, route, lead, fields, self.field_specs, CRM)
        fields["email"] = email  # the upsert's key is the lead's email, whatever a mapping says
        stripe = int(hashlib.sha256(email.lower().encode()).hexdigest()[:8], 16) % len(self._email_locks)
        with self._email_locks[stripe]:
            if self.form_id:
                body = {
                    "formId": _form_id(self.form_id),
                    "input": [{"leadFormFields": fields, "visitorData": visitor_data(lead, route)}],
                }
                answer = self._call("POST", "/rest/v1/leads/submitForm.json", json=body)
            else:
                body = {"action": "createOrUpdate", "lookupField": "email", "input": [fields]}
                answer = self._call("POST", "/rest/v1/leads.json", json=body)
        record = (answer.get("result") or [{}])[0]
        status = record.get("status")
        if status in ("created", "updated") and record.get("id") is not None:
            return Sent(external_id=str(record["id"]), detail={"status": status})
        if status == "skipped":
            raise self._skipped(record.get("reasons") or [])
        raise PermanentError(
            f"Marketo answered success without a created or updated person (status {status!r})",
            fix="report this as a bug of the app",
        )

    def field_specs(self) -> dict[str, FieldSpec]:
        """The person fields as the field mapping sees them: ``leads/describe.json``, and with a form
        its fields (only those can be sent; a ``select`` takes its values). Read once per instance."""
        if self._specs is None:
            fields = self._describe()
            form = self._form_fields() if self.form_id else None
            self._specs = field_specs(fields, form, self.form_id)
        return self._specs

    def _form_fields(self) -> list[dict[str, Any]] | None:
        """The form's fields (``id``: the SOAP-style name, ``dataType``, ``fieldMetaData``); None if
        the API role cannot read assets."""
        try:
            return self._call("GET", f"/rest/asset/v1/form/{_form_id(self.form_id)}/fields.json").get("result") or []
        except DeliveryError as error:
            if "access denied" in str(error):
                return None
            raise

    @staticmethod
    def fields_for(lead: Lead) -> dict[str, Any]:
        """The person's Marketo fields (REST names); empty values are left out so an upsert never
        blanks what Marketo already knows."""
        fields: dict[str, Any] = {
            "email": lead.email,
            "firstName": lead.first_name,
            "lastName": lead.last_name,
            "phone": lead.phone,
            "company": lead.company,
            "title": lead.title,
            "country": country_name(lead.country),
            "leadSource": lead.source_words or "Microsoft commercial marketplace",
        }
        if lead.do_not_contact:
            fields.update(unsubscribed=True, unsubscribedReason=DNC_REASON, doNotCall=True, doNotCallReason=DNC_REASON)
        return {key: value for key, value in fields.items() if value not in (None, "")}

    # --- checking --------------------------------------------------------------------------------

    def check(self) -> Check:
        try:
            self._require_settings()
            self._access_token()
            fields = self._describe()
        except DeliveryError as error:
            return Check.failed(error)
        except Exception as exc:  # noqa: BLE001 — a check reports, it never raises
            return Check.failed(_unreachable(self.classify(exc)))
        parts = ["token issued", f"{len(fields)} person fields readable"]
        if self.form_id:
            try:
                missing = self._form_missing(lead_fields=list(PERSON_FIELDS))
            except DeliveryError as error:
                if "access denied" in str(error):
                    parts.append(f"form {self.form_id}'s fields not verified (the API role cannot read assets)")
                    return Check(True, "; ".join(parts))
                return Check.failed(error)
            if missing is None:
                return Check(
                    False,
                    f"form {self.form_id} (MARKETO_FORM_ID) was not found in Marketo",
                    fix="set MARKETO_FORM_ID to the id in the form's URL (Marketing Activities > the "
                    "form: ...#FO1234B2 is 1234), or leave it empty to upsert without a form",
                )
            if missing:
                return Check(
                    False,
                    f"form {self.form_id} lacks the fields {', '.join(missing)}",
                    fix=f"add them to form {self.form_id} (hidden fields are enough) and approve it, "
                    "or leave MARKETO_FORM_ID empty to upsert without a form",
                )
            parts.append(f"form {self.form_id} has every field; upsert on email through submitForm")
            return self._check_mapping(parts)
        else:
            note = self._note_field()
            parts.append("upsert on email through leads.json")
            parts.append(
                f"marketplace details go to {note[0]!r}"
                if note
                else "no free-text person field: marketplace details (action, offer, notes) are not stored; "
                "add a text field labelled 'Lead Description' to keep them"
            )
        return self._check_mapping(parts)

    def _check_mapping(self, parts: list[str]) -> Check:
        self._specs = None
        notes = check_mapping(self.mappings, self.field_specs, CRM, MAPPING_FIX)
        return notes if isinstance(notes, Check) else Check(True, "; ".join([*parts, *notes]))

    def _require_settings(self) -> None:
        missing = [
            name
            for name, value in (("MARKETO_CLIENT_ID", self.client_id), ("MARKETO_CLIENT_SECRET", self.client_secret))
            if not value
        ]
        if missing:
            raise PermanentError(
                f"{' and '.join(missing)} not set",
                fix="copy them from Admin > Integration > LaunchPoint > your custom service > View Details",
            )
        parts = urlsplit(self.url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise PermanentError(
                "MARKETO_URL is not a URL",
                fix="set it to the REST API endpoint shown in Admin > "
                "Web Services, e.g. https://123-ABC-456.mktorest.com",
            )
        if self.form_id and not self.form_id.isdigit():
            raise PermanentError(
                "MARKETO_FORM_ID is not a number",
                fix="set it to the form's id (its URL ends #FO<id>B2), or leave it empty",
            )

    # --- the API -----------------------------------------------------------------------------------

    def _access_token(self) -> str:
        with self._token_lock:
            if self._token and time.monotonic() < self._token_expires:
                return self._token
            params = {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
            }
            with self.limiter.slot():
                response = self.session.post(f"{self.url}/identity/oauth/token", data=params, timeout=self.timeout)
            self.token_requests += 1
            if response.status_code in (400, 401, 403):
                raise PermanentError(
                    f"Marketo refused the client id and secret ({response.status_code} {_oauth_error(response)})",
                    fix="copy Client Id and Client Secret from Admin > "
                    "Integration > LaunchPoint > your custom service > View Details into "
                    "MARKETO_CLIENT_ID and MARKETO_CLIENT_SECRET",
                )
            if response.status_code == 404 or response.status_code >= 500 or response.status_code == 429:
                raise self._refused(response)
            body = _json_body(response)
            token = body.get("access_token") if isinstance(body, dict) else None
            if response.status_code != 200 or not token:
                raise _not_marketo(response.status_code)
            lifetime = float(body.get("expires_in") or 3600)
            self._token = token
            # Marketo hands the same token out again until it expires; keep a margin for clock skew.
            self._token_expires = time.monotonic() + max(1.0, lifetime - 5)
            return token

    def _forget_token(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None

    def _call(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> dict[str, Any]:
        """One REST call, its answer when ``success`` is true; a token Marketo calls invalid or
        expired is fetched again once and the call repeated."""
        for attempt in (1, 2):
            token = self._access_token()
            with self.limiter.slot():
                response = self.session.request(
                    method,
                    self.url + path,
                    json=json,
                    params=params,
                    timeout=self.timeout,
                    headers={"Authorization": f"Bearer {token}"},
                )
            if response.status_code != 200:
                raise self._refused(response)
            body = _json_body(response)
            if not isinstance(body, dict):
                raise _not_marketo(200)
            if body.get("success"):
                return body
            errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
            codes = {str(e.get("code")) for e in errors}
            if attempt == 1 and codes & {"601", "602"}:
                log.info("marketo: access token %s, fetching a new one", "expired" if "602" in codes else "invalid")
                self._forget_token(token)
                continue
            raise response_error(errors)
        raise AssertionError("unreachable")

    def _refused(self, response: requests.Response) -> DeliveryError:
        return self.refused(response.status_code, response.reason or "", response.headers, said=service_said(response))

    def _describe(self) -> dict[str, dict[str, Any]]:
        """REST name → field description, from ``leads/describe.json``, once per instance."""
        with self._fields_lock:
            if self._fields is None:
                answer = self._call("GET", "/rest/v1/leads/describe.json")
                fields = {}
                for item in answer.get("result") or []:
                    rest = item.get("rest") if isinstance(item, dict) else None
                    if isinstance(rest, dict) and rest.get("name"):
                        fields[rest["name"]] = {
                            "label": item.get("displayName") or "",
                            "soap": (item.get("soap") or {}).get("name") or "",
                            "type": item.get("dataType"),
                            "length": item.get("length"),
                            "readOnly": bool(rest.get("readOnly")),
                        }
                self._fields = fields
            return self._fields

    def _note_field(self) -> tuple[str, int] | None:
        """The writable text field the marketplace details go to, and its length; None if the
        instance has none (or its fields cannot be read: the lead then goes without details)."""
        try:
            fields = self._describe()
        except DeliveryError as error:
            if error.transient:
                raise
            log.warning("marketo: person fields not readable (%s); sending without details", error)
            self._fields = {}
            return None
        writable = {
            name: f for name, f in fields.items() if not f["readOnly"] and f["type"] in ("string", "text", "textarea")
        }
        by_label = {f["label"].strip().rstrip(":").lower(): name for name, f in writable.items()}
        name = next((n for n in NOTE_FIELDS if n in writable), None) or next(
            (by_label[label] for label in NOTE_LABELS if label in by_label), None
        )
        if name is None:
            return None
        return name, int(writable[name].get("length") or NOTE_MAX)

    def _form_missing(self, lead_fields: list[str]) -> list[str] | None:
        """The fields a lead may send that the form lacks; None when the form does not exist."""
        answer = self._call("GET", f"/rest/asset/v1/form/{_form_id(self.form_id)}.json")
        if not answer.get("result"):
            return None
        fields = self._call("GET", f"/rest/asset/v1/form/{_form_id(self.form_id)}/fields.json").get("result") or []
        present = {str(f.get("id", "")).lower() for f in fields if isinstance(f, dict)}
        return [name for name in lead_fields if name.lower() not in present]

    def _skipped(self, reasons: list[Any]) -> DeliveryError:
        reason = next((r for r in reasons if isinstance(r, dict)), {})
        code = str(reason.get("code", ""))
        message = str(reason.get("message", ""))
        what = _RECORD_CODES.get(code, "record skipped")
        field = _FIELD_NAMED.search(message)
        if code in ("1006", "1011") and field:
            where = f"form {self.form_id}" if self.form_id else "Marketo's person fields"
            fix = (
                f"add the field '{field.group(1)}' to form {self.form_id} (a hidden field is enough) and approve "
                "the form, or leave MARKETO_FORM_ID empty"
                if self.form_id
                else f"this Marketo instance has no person field '{field.group(1)}': report it as a bug of the app"
            )
            return PermanentError(
                f"Marketo skipped the lead: {code} field '{field.group(1)}' not found in {where}", fix=fix
            )
        if code == "1001":
            kind = _TYPE_NAMED.search(message)
            return PermanentError(
                f"Marketo skipped the lead: 1001 {what}" + (f" (a '{kind.group(1)}' was required)" if kind else ""),
                fix="a field's type was changed in Marketo (Admin > Field Management): restore it to text",
            )
        if code == "1013" and self.form_id:
            return PermanentError(
                f"Marketo skipped the lead: 1013 form {self.form_id} not found",
                fix="set MARKETO_FORM_ID to an existing, approved form's id, or leave it empty",
            )
        if code == "1007":
            return PermanentError(
                "Marketo skipped the lead: 1007 several persons have this email",
                fix="merge the duplicate persons in Marketo, then replay: python -m leads replay --destination marketo",
            )
        if code in ("1008", "1010"):
            return PermanentError(
                f"Marketo skipped the lead: {code} {what}",
                fix="give the API-only user's role access to the workspace of the person's "
                "partition (Admin > Users & Roles)",
            )
        return PermanentError(f"Marketo skipped the lead: {code or '?'} {what}", fix=None)


def field_specs(
    fields: dict[str, dict[str, Any]], form: list[dict[str, Any]] | None, form_id: str = ""
) -> dict[str, FieldSpec]:
    """Marketo's person fields (``_describe``'s) as the mapping sees them; with a ``form`` (its
    fields), a field not on it cannot be sent, and a ``select`` field takes one of its values."""
    on_form = {str(item.get("id") or "").lower(): item for item in form or [] if isinstance(item, dict)}
    specs = {}
    for name, item in fields.items():
        kind = KINDS.get(str(item.get("type")), "unsupported")
        length = int(item.get("length") or 0) or (255 if item.get("type") == "string" else None)
        entry = on_form.get(str(item.get("soap") or "").lower()) or on_form.get(name.lower())
        options: tuple = ()
        if entry is not None and entry.get("dataType") == "select":
            values = (entry.get("fieldMetaData") or {}).get("values") or []
            options = options_of(
                (value.get("value"), value.get("label")) for value in values if isinstance(value, dict)
            )
            kind = "multipicklist" if (entry.get("fieldMetaData") or {}).get("multiSelect") else "picklist"
        why = "Marketo sets it (read-only)" if item.get("readOnly") else ""
        if form is not None and entry is None:
            why = f"it is not on form {form_id} (MARKETO_FORM_ID): add it, a hidden field is enough"
        if kind == "unsupported" and not why:
            why = f"its type {item.get('type')} is not mapped"
        writable = not item.get("readOnly") and (form is None or entry is not None)
        specs[name] = FieldSpec(name, kind, length, options, True, writable, why, str(item.get("label") or ""))
    return specs


PERSON_FIELDS = (
    "email",
    "firstName",
    "lastName",
    "phone",
    "company",
    "title",
    "country",
    "leadSource",
    "unsubscribed",
    "unsubscribedReason",
    "doNotCall",
    "doNotCallReason",
)


def response_error(errors: list[dict[str, Any]]) -> DeliveryError:
    """The error for a response Marketo answered with ``success: false``."""
    error = errors[0] if errors else {}
    code = str(error.get("code", ""))
    what, transient, fix = _RESPONSE_CODES.get(code, (None, False, None))
    if what is None:
        # Unknown codes: 5xx-like ones may pass; name the code, not the message (it may quote values).
        transient = code.startswith("5")
        what = "blank required value" if code == "701" else "error"
    message = f"Marketo answered {code or '?'} ({what})"
    if code == "607":
        return TransientError(message, fix=fix, retry_after=seconds_to_quota_reset())
    if transient:
        return TransientError(message, fix=fix, retry_after=_RETRY_AFTER.get(code))
    if code in ("601", "602"):
        return PermanentError(message + " again with a new token", fix=_RESPONSE_CODES["601"][2])
    return PermanentError(message, fix=fix)


def seconds_to_quota_reset(now: datetime | None = None) -> float:
    """Seconds until midnight US Central time, when Marketo's daily quota resets."""
    try:
        from zoneinfo import ZoneInfo

        zone: Any = ZoneInfo("America/Chicago")
    except Exception:  # noqa: BLE001 — no time zone database: CST all year
        zone = timezone(timedelta(hours=-6))
    now = (now or datetime.now(UTC)).astimezone(zone)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(60.0, (midnight - now).total_seconds() + 60)


def base_url(url: str) -> str:
    """``MARKETO_URL`` without a trailing slash, ``/rest`` or ``/identity`` (all seen pasted)."""
    url = url.strip().rstrip("/")
    for suffix in ("/rest", "/identity"):
        if url.lower().endswith(suffix):
            url = url[: -len(suffix)]
    return url


def country_name(code: str | None) -> str | None:
    """``United States`` for ``US``; anything else as it is."""
    if not code or len(code) != 2 or not code.isalpha():
        return code
    import pycountry

    country = pycountry.countries.get(alpha_2=code.upper())
    return (getattr(country, "common_name", None) or country.name) if country is not None else code


def details(lead: Lead, route: Route, limit: int = NOTE_MAX) -> str:
    """The marketplace details as text for sales: test mark, do-not-contact, action, offer,
    campaign, the customer's notes and the lead id."""
    lines = []
    if route.test or lead.is_test:
        lines.append("[TEST] a test lead from the marketplace (Partner Center validation)")
    if lead.do_not_contact:
        lines.append("DO NOT CONTACT: the customer came through a cross-listed partner")
    what = " on ".join(part for part in (lead.action_words, lead.source_words) if part)
    if what:
        lines.append(f"Marketplace: {what}")
    offer = " ".join(part for part in (lead.offer_title, f"({lead.offer_id})" if lead.offer_id else None) if part)
    if offer:
        lines.append(f"Offer: {offer}")
    if lead.campaign:
        lines.append("Campaign: " + ", ".join(f"{key}={_flat(value)}" for key, value in lead.campaign.items()))
    if lead.description:
        lines.append(f"Notes: {lead.description}")
    lines.append(f"Lead id: {lead.lead_id}")
    text = "\n".join(lines)
    return within(text, limit)


def visitor_data(lead: Lead, route: Route) -> dict[str, str]:
    """The Fill out Form activity's page data: the marketplace the lead came from, and the details
    as a query string smart campaigns can filter on ("Query String contains action=PLT")."""
    page = (
        "https://appsource.microsoft.com/" if lead.source == "AppSource" else "https://azuremarketplace.microsoft.com/"
    )
    query: dict[str, str] = {}
    for key, value in (
        ("source", lead.source),
        ("action", lead.action),
        ("offer", lead.offer_id),
        ("offerTitle", lead.offer_title),
        ("leadId", lead.lead_id),
    ):
        if value:
            query[key] = value
    if route.test or lead.is_test:
        query["test"] = "true"
    if lead.do_not_contact:
        query["doNotContact"] = "true"
    for key, value in lead.campaign.items():
        query.setdefault(str(key), _flat(value))
    if lead.description:
        query["notes"] = lead.description[:1000]
    return {"pageURL": page, "queryString": urlencode(query)}


def _flat(value: Any) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _form_id(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _json_body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _oauth_error(response: requests.Response) -> str:
    body = _json_body(response)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"][:60]
    return response.reason or "unauthorized"


def _not_marketo(status: int) -> PermanentError:
    return PermanentError(NOT_MARKETO.format(status=status), fix=NOT_MARKETO_FIX)


def _unreachable(error: DeliveryError) -> DeliveryError:
    if error.transient and "could not reach" in str(error):
        return TransientError(
            f"{error} at MARKETO_URL",
            fix="check MARKETO_URL (Admin > Web Services > REST API Endpoint) and the app's outbound network",
        )
    return error
