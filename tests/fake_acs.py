"""A fake Azure Communication Services Email service: a real HTTPS server on 127.0.0.1 that the
real ``azure-communication-email`` SDK talks to.

It behaves like ACS Email where the app depends on it:

- every request must carry the HMAC-SHA256 signature the SDK computes from the connection string's
  access key (``x-ms-date``, ``host``, ``x-ms-content-sha256``, ``Authorization: HMAC-SHA256
  SignedHeaders=...&Signature=...``); a wrong key answers 401 with ACS's error body;
- ``POST /emails:send?api-version=...`` validates the message (sender domain linked, recipients)
  and answers 202 with ``Operation-Location``, ``Retry-After`` and ``{"id", "status": "Running"}``;
  a repeated ``Operation-Id`` answers with the same operation and sends no second mail;
- ``GET /emails/operations/{id}`` answers ``Running``, then ``Succeeded`` (or ``Failed``);
- faults on demand: the next N requests answer 429 with ``Retry-After``, 500 or 503, answer only
  after a delay longer than the client waits (the mail is accepted first, as when a real answer
  is lost), drop the connection (before or after accepting the mail), or accept the mail and
  answer one byte a second (``drip``); or at random, a share ``fail_ratio`` of all requests
  failing in any of those ways. The server, TLS and the drop and drip behaviours are
  tests/loopback.py's, shared by every fake.

Every accepted mail is recorded in :attr:`FakeAcs.mails` (one entry per operation, so the records
show whether a lead was mailed once), every request in :attr:`FakeAcs.requests`.

Use it as a context manager, or through the ``fake_acs`` pytest fixture, which also makes the
SDK's transport (requests) trust the fake's certificate authority via ``REQUESTS_CA_BUNDLE``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme

from .loopback import DRIP, LOST, LoopbackHandler, LoopbackServer, trust

DEFAULT_SENDER = "DoNotReply@contoso.azurecomm.net"
FAULT_KINDS = ("429", "500", "503", "delay", "drop", "drop_after", "drip")
# The faults a random ``fail_ratio`` draws from unless told otherwise (a drip takes a while).
RANDOM_FAULTS = ("429", "500", "503", "delay", "drop", "drop_after")
CLOCK_SKEW = 15 * 60  # seconds an x-ms-date may be off, as ACS allows


@dataclass
class Fault:
    kind: str  # one of FAULT_KINDS
    on: str = "any"  # "any", "send" (POST /emails:send) or "status" (GET /emails/operations/...)
    retry_after: str = "7"  # for 429
    delay: float = 3.0  # for "delay": seconds before the (late) answer


@dataclass
class Operation:
    id: str
    status: str = "Running"
    polls: int = 0
    fail_with: tuple[str, str] | None = None  # (code, message) it ends Failed with
    mail: dict[str, Any] | None = None


@dataclass
class Request:
    method: str
    path: str
    status: int | None  # None: no answer (dropped, or answered after the client left)
    fault: str | None = None
    operation_id: str | None = None
    at: float = field(default_factory=time.time)


class _Handler(LoopbackHandler):
    def serve(self, method: str) -> None:
        fake: FakeAcs = self.fake
        body = self.read_body()
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if method == "POST" and url.path == "/emails:send":
            kind = "send"
        elif method == "GET" and url.path.startswith("/emails/operations/"):
            kind = "status"
        else:
            self._record(method, 404, None)
            return self._answer(404, {}, _error("NotFound", "No such resource."))

        fault = fake._take_fault(kind)
        if fault and fault.kind == "drop":
            self._record(method, None, "drop")
            return self.drop()
        if fault and fault.kind in ("429", "500", "503"):
            status = int(fault.kind)
            headers = {"Retry-After": fault.retry_after} if status == 429 else {}
            code = {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}[status]
            self._record(method, status, fault.kind)
            return self._answer(status, headers, _error(code, "The service could not take the request now."))

        allowed = fake._authorize(method, self.path, self.headers, body)
        if allowed == 403:
            self._record(method, 403, None)
            return self._answer(403, {}, _error("Forbidden", "The principal does not have permission to send email."))
        if allowed != 200:
            self._record(method, 401, None)
            return self._answer(401, {}, _error("Denied", "Denied by the resource provider."))

        if kind == "send":
            status, headers, payload, operation = fake._send(query, self.headers, body)
        else:
            status, headers, payload, operation = fake._status(url.path.rsplit("/", 1)[1], query)

        if fault and fault.kind in ("drop_after", "drip"):  # the mail is accepted; its answer is lost or slow
            self._record(method, None, fault.kind, operation)
            self.play(LOST if fault.kind == "drop_after" else DRIP)
        if fault and fault.kind == "delay":
            self._record(method, None, "delay", operation)
            time.sleep(fault.delay)
            return self._answer(status, headers, payload)
        if not fault:
            self._record(method, status, None, operation)
        return self._answer(status, headers, payload)

    def _record(self, method: str, status: int | None, fault: str | None, operation: str | None = None) -> None:
        fake = self.fake
        operation = operation or self.headers.get("Operation-Id")  # as asked, when refused before it ran
        with fake.lock:
            fake.requests.append(Request(method, self.path, status, fault, operation))

    def _answer(self, status: int, headers: dict[str, str], payload: Any) -> None:
        extra = {"x-ms-request-id": str(uuid.uuid4())}
        if status >= 400 and isinstance(payload, dict) and "error" in payload:
            extra["x-ms-error-code"] = payload["error"]["code"]
        self.answer(status, payload, {**extra, **headers})


class FakeAcs(LoopbackServer):
    """The fake service. Start it with ``with FakeAcs() as acs:`` (or :meth:`start`/:meth:`stop`)."""

    name = "fake-acs"
    handler = _Handler

    def __init__(
        self,
        *,
        ca: trustme.CA | None = None,
        access_key: str | None = None,
        sender_domains: tuple[str, ...] = ("contoso.azurecomm.net",),
        retry_after: str = "20",
        polls_until_done: int = 1,
        on_repeat: str = "accept",
        fail_ratio: float = 0.0,
        fault_kinds: tuple[str, ...] = RANDOM_FAULTS,
        seed: int | None = None,
        random_delay: float = 3.0,
        tokens: dict[str, bool] | None = None,
        drip_interval: float = 1.0,
    ) -> None:
        super().__init__(tls=True, ca=ca, drip_interval=drip_interval)
        # Entra tokens it knows (``Authorization: Bearer``): token → whether its identity has a
        # role that allows sending (False answers 403, as ACS does without a role assignment).
        self.tokens = dict(tokens or {})
        self.access_key = access_key or base64.b64encode(secrets.token_bytes(32)).decode()
        self.sender_domains = tuple(domain.lower() for domain in sender_domains)
        self.retry_after = retry_after  # what 202s and non-final statuses advise, as ACS does
        self.polls_until_done = polls_until_done  # GETs answering Running before the final status
        self.on_repeat = on_repeat  # a repeated Operation-Id: "accept" (202, same operation) or "conflict" (409)
        self.fail_ratio = fail_ratio
        self.fault_kinds = fault_kinds
        self.random = random.Random(seed)
        self.random_delay = random_delay
        self.mails: list[dict[str, Any]] = []
        self.operations: dict[str, Operation] = {}
        self.requests: list[Request] = []
        self.repeats = 0  # sends that named an operation already accepted
        self._faults: deque[Fault] = deque()
        self._fail_operations: deque[tuple[str, str]] = deque()

    # --- addresses -----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}/"

    @property
    def connection_string(self) -> str:
        return f"endpoint={self.endpoint};accesskey={self.access_key}"

    def settings(self) -> dict[str, str]:
        """The app settings that send the app's mail here, from a sender of a linked domain."""
        return {
            "EMAIL_CONNECTION_STRING": self.connection_string,
            "EMAIL_SENDER": f"DoNotReply@{self.sender_domains[0]}",
        }

    def connection_string_with_wrong_key(self) -> str:
        return f"endpoint={self.endpoint};accesskey={base64.b64encode(secrets.token_bytes(32)).decode()}"

    # --- programming faults ----------------------------------------------------------------------

    def fail_next(
        self, kind: str, times: int = 1, *, on: str = "any", retry_after: str = "7", delay: float = 3.0
    ) -> None:
        """The next ``times`` requests (of kind ``on``) fail as ``kind``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {FAULT_KINDS}")
        with self.lock:
            self._faults.extend(Fault(kind, on, retry_after, delay) for _ in range(times))

    def fail_next_operation(
        self, code: str = "EmailDropped", message: str = "Email was dropped after several attempts to deliver."
    ) -> None:
        """The next new send operation ends ``Failed`` with this error."""
        with self.lock:
            self._fail_operations.append((code, message))

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()
            self.fail_ratio = 0.0

    def _take_fault(self, kind_of_request: str) -> Fault | None:
        with self.lock:
            for index, fault in enumerate(self._faults):
                if fault.on in ("any", kind_of_request):
                    del self._faults[index]
                    return fault
            if self.fail_ratio and self.random.random() < self.fail_ratio:
                kind = self.random.choice(self.fault_kinds)
                return Fault(kind, retry_after=str(self.random.randint(1, 3)), delay=self.random_delay)
        return None

    # --- what it received ------------------------------------------------------------------------

    def mails_to(self, address: str) -> list[dict[str, Any]]:
        return [mail for mail in self.mails if address.lower() in (a.lower() for a in mail["to"])]

    def mails_about(self, text: str) -> list[dict[str, Any]]:
        """Accepted mails whose subject or text mention ``text`` (e.g. a lead id)."""
        return [mail for mail in self.mails if text in mail["subject"] or text in (mail["text"] or "")]

    # --- the service -----------------------------------------------------------------------------

    def _authorize(self, method: str, path: str, headers, body: bytes) -> int:
        """200 when the request may proceed, else the status ACS answers (401, 403)."""
        authorization = headers.get("Authorization") or ""
        if authorization.startswith("Bearer "):
            allowed = self.tokens.get(authorization[len("Bearer ") :].strip())
            return 401 if allowed is None else 200 if allowed else 403
        return 200 if self._signature_ok(method, path, headers, body) else 401

    def _signature_ok(self, method: str, path: str, headers, body: bytes) -> bool:
        authorization = headers.get("Authorization") or ""
        date, host, content_hash = headers.get("x-ms-date"), headers.get("Host"), headers.get("x-ms-content-sha256")
        if not authorization.startswith("HMAC-SHA256 ") or not (date and host and content_hash):
            return False
        parts = dict(part.split("=", 1) for part in authorization[len("HMAC-SHA256 ") :].split("&") if "=" in part)
        if parts.get("SignedHeaders", "").lower() != "x-ms-date;host;x-ms-content-sha256":
            return False
        if base64.b64encode(hashlib.sha256(body).digest()).decode() != content_hash:
            return False
        try:
            when = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return False
        if abs((datetime.now(UTC) - when).total_seconds()) > CLOCK_SKEW:
            return False
        to_sign = f"{method}\n{path}\n{date};{host};{content_hash}"
        key = base64.b64decode(self.access_key)
        expected = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
        return hmac.compare_digest(expected, parts.get("Signature", ""))

    def _send(self, query: dict[str, list[str]], headers, body: bytes) -> tuple[int, dict[str, str], Any, str | None]:
        api_version = (query.get("api-version") or [""])[0]
        if not api_version:
            return 400, {}, _error("MissingApiVersionParameter", "The api-version query parameter is required."), None
        operation_id = headers.get("Operation-Id")
        if operation_id:
            try:
                operation_id = str(uuid.UUID(operation_id))
            except ValueError:
                return 400, {}, _error("InvalidOperationId", "Operation-Id must be a GUID."), None
        with self.lock:
            known = self.operations.get(operation_id) if operation_id else None
            if known is not None:
                self.repeats += 1
                if self.on_repeat == "conflict" and known.status == "Running":
                    return 409, {}, _error("Conflict", "An operation with this Operation-Id is in progress."), known.id
                return self._accepted(known, api_version)
        try:
            message = json.loads(body or b"null")
        except ValueError:
            return 400, {}, _error("BadRequest", "The request body is not valid JSON."), None
        problem = _invalid(message, self.sender_domains)
        if problem:
            return 400, {}, _error(*problem), None
        content, recipients = message["content"], message["recipients"]
        with self.lock:
            operation_id = operation_id or str(uuid.uuid4())
            if operation_id in self.operations:  # raced with an identical request
                known = self.operations[operation_id]
                self.repeats += 1
                return self._accepted(known, api_version)
            mail = {
                "operation_id": operation_id,
                "sender": message["senderAddress"],
                "to": [entry["address"] for entry in recipients.get("to") or []],
                "cc": [entry["address"] for entry in recipients.get("cc") or []],
                "bcc": [entry["address"] for entry in recipients.get("bcc") or []],
                "reply_to": [entry["address"] for entry in message.get("replyTo") or []],
                "subject": content.get("subject"),
                "html": content.get("html"),
                "text": content.get("plainText"),
                "message": message,
                "at": time.time(),
            }
            fail_with = self._fail_operations.popleft() if self._fail_operations else None
            operation = Operation(operation_id, fail_with=fail_with, mail=mail)
            self.operations[operation_id] = operation
            self.mails.append(mail)
        return self._accepted(operation, api_version)

    def _status(self, operation_id: str, query) -> tuple[int, dict[str, str], Any, str | None]:
        with self.lock:
            operation = self.operations.get(operation_id)
            if operation is None:
                return 404, {}, _error("NotFound", "The operation was not found."), None
            operation.polls += 1
            if operation.status == "Running" and operation.polls > self.polls_until_done:
                operation.status = "Failed" if operation.fail_with else "Succeeded"
            result: dict[str, Any] = {"id": operation.id, "status": operation.status}
            if operation.status == "Failed" and operation.fail_with:
                result["error"] = {"code": operation.fail_with[0], "message": operation.fail_with[1]}
            headers = {"Retry-After": self.retry_after} if operation.status == "Running" else {}
        return 200, headers, result, operation.id

    def _accepted(self, operation: Operation, api_version: str) -> tuple[int, dict[str, str], Any, str]:
        return (
            202,
            self._operation_headers(operation, api_version),
            {"id": operation.id, "status": operation.status},
            operation.id,
        )

    def _operation_headers(self, operation: Operation, api_version: str) -> dict[str, str]:
        return {
            "Operation-Location": f"{self.endpoint}emails/operations/{operation.id}?api-version={api_version}",
            "Retry-After": self.retry_after,
        }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _invalid(message: Any, sender_domains: tuple[str, ...]) -> tuple[str, str] | None:
    """ACS's validation of a send request, as far as the app can get it wrong."""
    if not isinstance(message, dict):
        return "BadRequest", "The request body must be an email message."
    sender = message.get("senderAddress")
    if not isinstance(sender, str) or "@" not in sender:
        return "InvalidSenderAddress", "The sender address is missing or invalid."
    if sender.rpartition("@")[2].lower() not in sender_domains:
        return "DomainNotLinked", "The specified sender domain has not been linked."
    content = message.get("content")
    if not isinstance(content, dict) or not content.get("subject"):
        return "BadRequest", "content.subject is required."
    if not (content.get("plainText") or content.get("html")):
        return "BadRequest", "Either content.plainText or content.html is required."
    recipients = message.get("recipients")
    to = recipients.get("to") if isinstance(recipients, dict) else None
    if not to or not isinstance(to, list):
        return "BadRequest", "recipients.to must hold at least one address."
    for entry in to:
        address = entry.get("address") if isinstance(entry, dict) else None
        if not isinstance(address, str) or "@" not in address or any(ch in address for ch in "\r\n <>"):
            return "InvalidRecipientAddress", "A recipient address is invalid."
    return None


# --- pytest fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fake_tls_ca() -> trustme.CA:
    """One certificate authority for the session's fake HTTPS services."""
    return trustme.CA()


@pytest.fixture
def fake_acs(monkeypatch, fake_tls_ca):
    """A running :class:`FakeAcs` that the SDK trusts (``REQUESTS_CA_BUNDLE`` names its CA)."""
    with FakeAcs(ca=fake_tls_ca) as fake:
        trust(monkeypatch, fake.ca_file)
        yield fake
