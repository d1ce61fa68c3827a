"""Webhook: POST the normalised lead as JSON to ``WEBHOOK_URL``, signed with ``WEBHOOK_SECRET``.

Headers a receiver gets:

- ``X-Leads-Timestamp``: Unix seconds when the request was signed;
- ``X-Leads-Signature``: ``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>``;
- ``Idempotency-Key``: the lead id, the same on every retry, so a receiver can store a lead once.

2xx is delivered; 410 Gone means the receiver is gone for good (permanent); 408, 425, 429 and
5xx, timeouts and dropped connections are retried; other 4xx are permanent. See docs/webhook.md for how
a receiver verifies the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING

from leads.destinations.base import Check, HttpDestination, Refusal, Route, Sent, service_said

if TYPE_CHECKING:
    import requests

    from leads.core.model import Lead
    from leads.core.settings import Settings


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Leads-Signature`` value for a body sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, tolerance: float = 300) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


SECRET_FIX = "the receiver refused the request: check that it uses the same WEBHOOK_SECRET"


class WebhookDestination(HttpDestination):
    name = "webhook"
    setting_fields = ("webhook_url", "webhook_secret")
    secret_fields = ("webhook_secret",)
    statuses = {
        410: Refusal(
            message="the webhook answered 410 Gone",
            fix="the receiver is retired: set WEBHOOK_URL to its new address (or remove it), then replay the "
            "failed deliveries",
        ),
        401: Refusal(fix=SECRET_FIX),
        403: Refusal(fix=SECRET_FIX),
    }

    def __init__(self, url: str, secret: str, timeout: float = 30.0, session: requests.Session | None = None) -> None:
        super().__init__(timeout, session)
        self.url = url
        self.secret = secret

    @classmethod
    def is_enabled(cls, settings: Settings) -> bool:
        return bool(settings.webhook_url)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookDestination | None:
        if not cls.is_enabled(settings):
            return None
        return cls(settings.webhook_url, settings.webhook_secret, settings.http_timeout_seconds)

    def check(self) -> Check:
        """The URL answers (a HEAD request: nothing is posted). An unsigned webhook works but is
        flagged: anyone who learns the URL could post leads to it."""
        from urllib.parse import urlsplit

        import requests

        if urlsplit(self.url).scheme not in ("http", "https"):
            return Check(False, f"WEBHOOK_URL is not an http(s) URL: {self.url}", "set WEBHOOK_URL to https://...")
        try:
            response = self.session.head(self.url, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return Check(False, f"{self.url} cannot be reached ({type(exc).__name__})", _unreachable_fix(self.url))
        status = response.status_code
        if status == 410:
            return Check(False, f"{self.url} answers 410 Gone", "set WEBHOOK_URL to the receiver's new address")
        if status >= 400:
            # Many receivers take only POST (501 or 405 to a HEAD, 404 from routers that match on
            # the method, 401 without a signature): the receiver is up, what a POST gets is unknown.
            unsigned = "" if self.secret else "; requests are unsigned"
            return Check.warn(
                f"{self.url} is up but answers a HEAD (sent instead of a lead) with {status}: "
                f"whether it takes leads is not known{unsigned}",
                "send it a test lead: python -m leads test-lead, with LEADS_TEST_LEADS=deliver "
                "set for the app (test leads are only mailed by default)",
            )
        if not self.secret:
            return Check.warn(
                f"{self.url} answers {status}, but WEBHOOK_SECRET is not set",
                "set WEBHOOK_SECRET so the receiver can verify X-Leads-Signature",
            )
        return Check(True, f"{self.url} answers {status}; requests are signed")

    def send(self, lead: Lead, route: Route) -> Sent:
        body = lead.to_json().encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": lead.lead_id,
            "X-Leads-Timestamp": timestamp,
            "User-Agent": "marketplace-lead-router",
        }
        if self.secret:
            headers["X-Leads-Signature"] = sign(self.secret, timestamp, body)
        response = self.session.post(self.url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False)
        if 200 <= response.status_code < 300:
            return Sent(external_id=response.headers.get("X-Request-Id") or None)
        raise self.refused(response.status_code, response.reason or "", response.headers, said=service_said(response))


def _unreachable_fix(url: str) -> str:
    """What to look at when the receiver does not answer: on this machine for a loopback URL
    (which only a local run can reach), else from where the app runs."""
    from urllib.parse import urlsplit

    from leads.core.http import is_loopback

    host = urlsplit(url).hostname or ""
    if is_loopback(host):
        return (
            f"start the receiver on this machine ({host}:{urlsplit(url).port or 80}), or correct WEBHOOK_URL; "
            "a loopback URL reaches only a local run, the deployed app needs a public one"
        )
    return "check the URL, and that the receiver is up and reachable from where the app runs (Azure)"
