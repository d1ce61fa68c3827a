"""A Marketo REST API on loopback: the identity endpoint, leads.json (createOrUpdate / createOnly /
updateOnly on email), leads/submitForm.json, leads/describe.json and the form asset reads, with
Marketo's real answer shapes: HTTP 200 with ``success: false`` and ``errors[].code`` for
response-level errors, ``result[].status == "skipped"`` with ``reasons`` for record-level ones.

It keeps its own records (``persons`` by email, ``submissions``, ``token_requests``, ``calls``)
and behaves like the service where it matters: tokens expire (601/602), 100 calls per 20 s (606),
10 at once (615), an optional daily quota (607), unknown fields (1006). Knobs: ``latency`` (seconds
per call), ``faults`` (played one per write call: a Marketo code such as ``"606"``, ``"http500"``,
``"drop"``, or ``"lost"``: do the work, then drop the connection), ``expire_tokens()``,
``invalidate_tokens()``, ``denied`` (paths answered 603). Besides Marketo's codes, the faults
shared by every fake (tests/loopback.py) play here too: ``"drip"`` (the answer one byte a second),
``"hang"``, and ``"http429"``/``"http503"`` (an HTTP-level refusal with ``retry_after_header``).
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections import Counter, deque
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import pytest

from .loopback import LoopbackHandler, LoopbackServer, send_in_turn

# Marketo's standard person fields: REST name → (label, data type).
STANDARD_FIELDS = {
    "email": ("Email Address", "email"),
    "firstName": ("First Name", "string"),
    "lastName": ("Last Name", "string"),
    "phone": ("Phone Number", "phone"),
    "company": ("Company Name", "string"),
    "title": ("Job Title", "string"),
    "country": ("Country", "string"),
    "leadSource": ("Lead Source", "string"),
    "leadStatus": ("Lead Status", "string"),
    "unsubscribed": ("Unsubscribed", "boolean"),
    "unsubscribedReason": ("Unsubscribed Reason", "text"),
    "doNotCall": ("Do Not Call", "boolean"),
    "doNotCallReason": ("Do Not Call Reason", "string"),
    "city": ("City", "string"),
    "state": ("State", "string"),
    "website": ("Website", "url"),
}
MESSAGES = {
    "601": "Access token invalid",
    "602": "Access token expired",
    "603": "Access denied",
    "604": "Request time-out",
    "606": "Max rate limit '100' exceeded with in '20' secs",
    "607": "Daily quota reached",
    "608": "API Temporarily Unavailable",
    "609": "Invalid JSON",
    "610": "Requested resource not found",
    "611": "System error",
    "615": "Concurrent access limit reached",
    "713": "Transient Error",
}
JSON = "application/json;charset=UTF-8"


# --- HTTP -----------------------------------------------------------------------------------


class _Handler(LoopbackHandler):
    def serve(self, method: str) -> None:
        fake: FakeMarketo = self.fake
        raw = self.read_body()
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        if fake.latency:
            time.sleep(fake.latency)
        if parts.path == "/identity/oauth/token":  # Marketo takes the credentials by GET or POST
            form = {key: values[-1] for key, values in parse_qs(raw.decode()).items()} if method == "POST" else {}
            with fake.lock:
                fake.token_request_urls.append(self.path)
            status, body = fake.issue_token({**query, **form})
            return self.answer(status, body, content_type=JSON)
        if not parts.path.startswith("/rest/"):
            return self.answer(404, "<html>Not Found</html>", content_type="text/html")
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        token = token or query.get("access_token")
        with fake.lock:  # faults play on writes (leads.json, submitForm), not on reads
            fault = fake.faults.pop(0) if fake.faults and method == "POST" else None
        if self.play(fault):
            return None
        if fault in ("http429", "http503"):
            return self.answer(
                int(fault[4:]),
                {"error": "Too Many Requests" if fault == "http429" else "Service Unavailable"},
                {"Retry-After": fake.retry_after_header},
                content_type=JSON,
            )
        if fault == "http500":
            return self.answer(500, {"error": "Internal Server Error"}, content_type=JSON)
        code = fault if fault and fault.isdigit() else fake.admit(token, parts.path)
        if code:
            with fake.lock:
                fake.errors[code] += 1
            return self.answer(200, _failure(code), content_type=JSON)
        with fake.running():
            body = self._route(method, parts.path, raw)
        self.answer(200, body, content_type=JSON)

    def _route(self, method: str, path: str, raw: bytes) -> dict:
        fake: FakeMarketo = self.fake
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            return _failure("609")
        if method == "POST" and path == "/rest/v1/leads.json":
            action = payload.get("action", "createOrUpdate")
            if payload.get("lookupField", "email") != "email":
                return _ok([_skipped("1011", f"Field '{payload.get('lookupField')}' not supported")])
            return _ok([fake.upsert(dict(r), action, set(fake.fields)) for r in payload.get("input") or []])
        if method == "POST" and path == "/rest/v1/leads/submitForm.json":
            fields = fake.forms.get(payload.get("formId"))
            item = (payload.get("input") or [{}])[0]
            if fields is None:
                return _ok([_skipped("1013", "Object not found")])
            result = fake.upsert(dict(item.get("leadFormFields") or {}), "createOrUpdate", set(fields))
            if "id" in result:
                with fake.lock:
                    fake.submissions.append(
                        {"formId": payload["formId"], "id": result["id"], "visitorData": item.get("visitorData") or {}}
                    )
            return _ok([result])
        if method == "GET" and path == "/rest/v1/leads/describe.json":
            return _ok(fake.describe())
        form = re.fullmatch(r"/rest/asset/v1/form/(\d+)(/fields)?\.json", path)
        if method == "GET" and form:
            fields = fake.forms.get(int(form.group(1)))
            if fields is None:
                return {
                    "success": True,
                    "errors": [],
                    "requestId": _request_id(),
                    "warnings": ["No assets found for the given search criteria."],
                }
            if form.group(2):
                known = [(name, *fake.fields.get(name, (name, "string"))) for name in fields]
                result = [
                    {"id": _soap(name), "label": f"{label}:", "dataType": kind}
                    if name not in fake.selects
                    else {
                        "id": _soap(name),
                        "label": f"{label}:",
                        "dataType": "select",
                        "fieldMetaData": {
                            "multiSelect": False,
                            "visibleLines": 1,
                            "values": [
                                {"label": "Select...", "value": "", "isDefault": True, "selected": True},
                                *({"label": text, "value": value} for value, text in fake.selects[name]),
                            ],
                        },
                    }
                    for name, label, kind in known
                ]
            else:
                result = [{"id": int(form.group(1)), "name": "Marketplace leads", "status": "approved"}]
            return {"success": True, "errors": [], "requestId": _request_id(), "warnings": [], "result": result}
        return _failure("610")


class FakeMarketo(LoopbackServer):
    name = "fake-marketo"
    handler = _Handler

    def __init__(
        self,
        client_id: str = "mkto-client",
        client_secret: str = "mkto-secret",
        latency: float = 0.0,
        token_lifetime: int = 3600,
        calls_per_window: int = 100,
        window: float = 20.0,
        concurrent: int = 10,
        daily_quota: int | None = None,
        custom_fields: dict[str, tuple[str, str]] | None = None,
        forms: dict[int, list[str]] | None = None,
    ) -> None:
        super().__init__()
        self.client_id, self.client_secret = client_id, client_secret
        self.latency = latency
        self.token_lifetime = token_lifetime
        self.calls_per_window, self.window, self.concurrent = calls_per_window, window, concurrent
        self.daily_quota = daily_quota
        self.fields = dict(STANDARD_FIELDS)
        if custom_fields is None:
            custom_fields = {"leadDescription": ("Lead Description", "text")}
        self.fields.update(custom_fields)
        # form id → the REST names of its fields (Marketo lists them under their SOAP-style ids)
        self.forms = {1001: [*STANDARD_FIELDS]} if forms is None else forms
        self.selects: dict[str, list[tuple[str, str]]] = {}  # a form field of type select → its (value, label)s
        self.faults: list[str] = []
        self.denied: set[str] = set()
        self.retry_after_header = "5"  # what an "http429"/"http503" fault says in Retry-After
        self.persons: dict[str, dict] = {}  # lower-cased email → fields, with "id"
        self.submissions: list[dict] = []  # form submissions (formId, visitorData, person id)
        self.token_requests = 0
        self.calls = 0  # REST calls answered (not identity)
        self.token_request_urls: list[str] = []  # path and query of every token request
        self.max_in_flight = 0
        self.errors: Counter[str] = Counter()  # response-level codes answered
        self.tokens: dict[str, float] = {}  # token → expiry (monotonic)
        self._stamps: deque[float] = deque()
        self._in_flight = 0
        self._ids = itertools.count(1000)

    @property
    def url(self) -> str:
        return self.base_url

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (the next call with one answers 602)."""
        with self.lock:
            self.tokens = {token: 0.0 for token in self.tokens}

    def invalidate_tokens(self) -> None:
        """Every token issued so far becomes unknown (601), as after a secret reset."""
        with self.lock:
            self.tokens.clear()

    # --- the service --------------------------------------------------------------------------

    def issue_token(self, query: dict[str, str]) -> tuple[int, dict]:
        with self.lock:
            self.token_requests += 1
            if query.get("grant_type") != "client_credentials":
                return 400, {"error": "invalid_request", "error_description": "Missing grant type"}
            if query.get("client_id") != self.client_id or query.get("client_secret") != self.client_secret:
                return 401, {"error": "invalid_client", "error_description": "Bad client credentials"}
            now = time.monotonic()
            live = [(token, expires) for token, expires in self.tokens.items() if expires > now]
            if live:  # Marketo hands out the same token, with what is left of its life
                token, expires = live[0]
            else:
                token, expires = f"{uuid.uuid4()}:ab", now + self.token_lifetime
                self.tokens[token] = expires
            return 200, {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": max(0, int(expires - now)),
                "scope": "api@example.com",
            }

    def admit(self, token: str | None, path: str) -> str | None:
        """The response-level error code for a REST call before it runs, or None."""
        with self.lock:
            expires = self.tokens.get(token or "")
            if expires is None:
                return "601"
            now = time.monotonic()
            if expires <= now:
                return "602"
            if any(path.startswith(prefix) for prefix in self.denied):
                return "603"
            while self._stamps and self._stamps[0] <= now - self.window:
                self._stamps.popleft()
            if len(self._stamps) >= self.calls_per_window:
                return "606"
            if self._in_flight >= self.concurrent:
                return "615"
            if self.daily_quota is not None and self.calls >= self.daily_quota:
                return "607"
            self._stamps.append(now)
            self.calls += 1
            return None

    @contextmanager
    def running(self):
        with self.lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self.lock:
                self._in_flight -= 1

    def upsert(self, record: dict, action: str, allowed: set[str]) -> dict:
        unknown = next((name for name in record if name not in allowed), None)
        if unknown:
            return _skipped("1006", f"Field '{unknown}' not found")
        for name, value in record.items():
            kind = self.fields.get(name, ("", ""))[1]
            if kind == "boolean" and not isinstance(value, bool):
                return _skipped("1001", f"Invalid value '{value}'. Required of type 'boolean'")
            if kind in ("integer", "score", "percent") and (isinstance(value, bool) or not isinstance(value, int)):
                return _skipped("1001", f"Invalid value '{value}'. Required of type 'integer'")
            if kind in ("float", "currency") and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return _skipped("1001", f"Invalid value '{value}'. Required of type 'float'")
            if kind == "date" and not (isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\d", value)):
                return _skipped("1001", f"Invalid value '{value}'. Required of type 'date'")
        email = record.get("email")
        if not isinstance(email, str) or "@" not in email:
            return _skipped("1003", "Value for lookup field 'email' not specified")
        with self.lock:
            person = self.persons.get(email.lower())
            if person is None and action == "updateOnly":
                return _skipped("1004", "Lead not found")
            if person is not None and action == "createOnly":
                return _skipped("1005", "Lead already exists")
            if person is None:
                person = self.persons[email.lower()] = {"id": next(self._ids)}
                status = "created"
            else:
                status = "updated"
            person.update(record)
            return {"id": person["id"], "status": status}

    def describe(self) -> list[dict]:
        return [
            {
                "id": index,
                "displayName": label,
                "dataType": kind,
                **({"length": 255} if kind == "string" else {}),
                "rest": {"name": name, "readOnly": False},
                "soap": {"name": _soap(name), "readOnly": False},
            }
            for index, (name, (label, kind)) in enumerate(self.fields.items(), 1)
        ]


def _soap(name: str) -> str:
    """The SOAP-style name forms list their fields under: ``FirstName`` for ``firstName``."""
    return name[0].upper() + name[1:]


def _request_id() -> str:
    return f"{uuid.uuid4().hex[:4]}#{uuid.uuid4().hex[:11]}"


def _ok(result: list) -> dict:
    return {"requestId": _request_id(), "result": result, "success": True}


def _failure(code: str) -> dict:
    errors = [{"code": code, "message": MESSAGES.get(code, "Error")}]
    return {"requestId": _request_id(), "success": False, "errors": errors}


def _skipped(code: str, message: str) -> dict:
    return {"status": "skipped", "reasons": [{"code": code, "message": message}]}


@pytest.fixture
def marketo():
    with FakeMarketo() as fake:
        yield fake


def benchmark(count: int = 200, latency: float = 0.05) -> dict:
    """``count`` leads sent one after another through MarketoDestination.send to the fake with
    ``latency`` seconds per call. The destination keeps Marketo's real limits (100 calls per 20 s),
    so past the first hundred leads the figure is Marketo's ceiling, not the app's; the first 90
    leads give ``burst_leads_per_second``. A token lasts an hour, so a run shorter than 1,000 leads
    counts as 1,000 for ``token_requests_per_1000``."""
    from leads.destinations.marketo import MarketoDestination

    with FakeMarketo(latency=latency) as fake:
        destination = MarketoDestination(fake.url, fake.client_id, fake.client_secret, timeout=10)
        elapsed, burst, held_back = send_in_turn(destination, [sample_lead(n) for n in range(count)])
        assert len(fake.persons) == count
        return {
            "leads_per_second": round(count / elapsed, 2),
            "token_requests": fake.token_requests,
            "token_requests_per_1000": round(fake.token_requests * 1000 / max(count, 1000), 2),
            "calls": fake.calls,
            "paced_seconds": round(destination.limiter.waited, 2),
            "held_back": held_back,
            "burst_leads_per_second": round(burst, 2),
            "rate_limited_606": fake.errors["606"],
        }


def sample_lead(n: int, **changes):
    """A marketplace lead as the app normalises it, distinct for each ``n``."""
    from leads.core.normalise import from_http_body

    body = {
        "UserDetails": {
            "FirstName": "Ada",
            "LastName": f"Lovelace{n}",
            "Email": f"ada{n}@contoso.com",
            "Phone": "+1 425 555 0100",
            "Country": "US",
            "Company": "Contoso",
            "Title": "CTO",
        },
        "LeadSource": "SPZA-PLT|contoso.contoso-crm",
        "OfferTitle": "Contoso CRM",
        "Description": "Please call me about pricing",
    }
    body.update(changes)
    return from_http_body(body)
