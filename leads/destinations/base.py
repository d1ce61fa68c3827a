"""What every destination is: a small class with a name, enabled by its settings, that sends one
lead and says whether a failure is worth retrying.

A destination raises :class:`TransientError` for what may pass (timeouts, 5xx, 429) and
:class:`PermanentError` for what retrying cannot fix (bad credentials, a rejected field), each
with an explanation an operator can act on. Anything else it raises is classified by
:meth:`Destination.classify`.

A destination that calls a service over HTTP builds on :class:`HttpDestination`: its session (a
deadline session, leads/core/http.py, unless one is injected), the call timeout, an optional call
limiter, and a table of what the service's statuses mean, read by :meth:`HttpDestination.refused`
after the service's own error codes; a status it does not list reads as :func:`from_status` says.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from leads.core.model import Route

if TYPE_CHECKING:
    from collections.abc import Mapping

    import requests

    from leads.core.model import Lead
    from leads.core.settings import Settings
    from leads.destinations.ratelimit import CallLimiter


class DeliveryError(Exception):
    """A send that did not succeed. ``fix`` tells the operator what to do about it."""

    transient: ClassVar[bool] = False

    def __init__(self, message: str, *, fix: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.fix = fix
        self.retry_after = retry_after

    def explain(self) -> str:
        return f"{self} — {self.fix}" if self.fix else str(self)


class TransientError(DeliveryError):
    """Worth trying again later; ``retry_after`` (seconds) when the service said how long."""

    transient = True


class PermanentError(DeliveryError):
    """Retrying cannot fix it; the delivery fails at once."""


@dataclass(frozen=True)
class Sent:
    """A lead the destination accepted, with the destination's own id for it (CRM record id,
    message id) when it gives one."""

    external_id: str | None = None
    detail: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """What ``python -m leads check`` says of one destination, in one of three states:

    - ``ok``: leads get through;
    - ``warning`` (``Check.warn``, or ``ok`` with a ``fix``): leads get through, but something
      deserves a look (mails go to files, requests are unsigned, a probe could not tell);
    - ``problem`` (``ok`` false): leads do not get through until it is fixed.
    """

    ok: bool
    message: str
    fix: str | None = None
    warning: bool = False

    @property
    def state(self) -> str:
        if not self.ok:
            return "problem"
        return "warning" if self.warning or self.fix else "ok"

    @classmethod
    def warn(cls, message: str, fix: str | None = None) -> Check:
        return cls(True, message, fix, warning=True)

    @classmethod
    def failed(cls, error: DeliveryError) -> Check:
        return cls(False, str(error), error.fix)


class Destination(ABC):
    name: ClassVar[str]

    # What the destination is, declared here once: routing, the store's skip reasons and the
    # tests' lists of destinations (tests/test_registry.py) are derived from or held to these.
    # A notification to people (email, Teams, Slack) rather than a record: what a test lead
    # reaches under LEADS_TEST_LEADS=notify.
    notifies: ClassVar[bool] = False
    # Why a delivery that names no one is skipped, for a destination that must name someone (the
    # mail's addresses, the card's channel); None for one that needs no recipients.
    needs_recipients: ClassVar[str | None] = None
    # A routing rule names its channel under the destination's name ("teams": "sales-emea"), the
    # channels' URLs in <NAME>_WEBHOOK_URL (the default one) and <NAME>_CHANNELS (Settings.channel_webhook).
    channels: ClassVar[bool] = False
    # The Settings fields that configure it (its section of the settings model), and those of them
    # that hold a secret (Key Vault references in Azure, never logged).
    setting_fields: ClassVar[tuple[str, ...]] = ()
    secret_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def is_enabled(cls, settings: Settings) -> bool:
        """Whether ``settings`` turn this destination on (cheap: no network, no SDK import)."""

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Destination | None:
        """The destination configured by ``settings``, or None when it is not enabled."""

    # A destination that the service limits to ``rate_limit`` sends per ``rate_period`` seconds
    # (shared across instances); with ``send_digest`` it folds leads waiting for the same
    # recipients into one send instead of queueing them one by one.
    rate_limit: int | None = None
    rate_period: float = 60.0
    # Further limits of the same sends, (sends, seconds) each: ACS's hourly one beside its minute's.
    more_rate_limits: tuple[tuple[int, float], ...] = ()

    def send_digest(self, leads: list[Lead], route: Route) -> Sent:
        raise NotImplementedError(f"{self.name} cannot fold leads into one send")

    @property
    def can_digest(self) -> bool:
        return type(self).send_digest is not Destination.send_digest

    @abstractmethod
    def send(self, lead: Lead, route: Route) -> Sent:
        """Deliver one lead. Must be safe to call again for the same lead (idempotent at the
        destination where the destination allows it)."""

    def check(self) -> Check:
        """Whether the settings and credentials work, found without creating anything: a token,
        a harmless read. The default only says the destination is configured."""
        return Check(True, "configured")

    def classify(self, error: Exception) -> DeliveryError:
        """A :class:`DeliveryError` for any exception ``send`` raised."""
        return classify_error(error)


@dataclass(frozen=True)
class Refusal:
    """What one HTTP status means at a service. ``message`` replaces the service's own words
    (``{label}``: "<who> answered <status> <reason>", ``{status}``); ``transient`` None keeps
    :func:`from_status`'s reading; ``retry_after``: the wait when the answer names none."""

    fix: str | None = None
    message: str | None = None
    transient: bool | None = None
    retry_after: float | None = None


class HttpDestination(Destination):
    """A destination that calls its service over HTTP."""

    # Who answers, as its errors name it ("HubSpot answered 404 ...").
    who: ClassVar[str] = "the service"
    # What the service's statuses mean where they say more than from_status (a fix, a message).
    statuses: ClassVar[Mapping[int, Refusal]] = {}

    def __init__(
        self, timeout: Any = 30.0, session: requests.Session | None = None, limiter: CallLimiter | None = None
    ) -> None:
        if session is None:
            from leads.core.http import session as deadline_session  # requests: loaded when a destination is made

            session = deadline_session()
        self.timeout = timeout
        self.session = session
        self.limiter = limiter

    @classmethod
    def refused(
        cls,
        status: int,
        reason: str = "",
        headers: Mapping[str, Any] | None = None,
        *,
        said: str | None = None,
        fix: str | None = None,
    ) -> DeliveryError:
        """The error for a status the service answered, once its own error codes are read: the
        table's entry for it, else :func:`from_status`. ``fix``: one the caller found (an error
        code's), which the table's does not replace."""
        retry_after = (headers or {}).get("Retry-After")
        known = cls.statuses.get(status) or Refusal()
        error = from_status(status, reason, retry_after, fix=fix or known.fix, said=said, who=cls.who)
        message = (
            str(error)
            if known.message is None
            else known.message.format(label=f"{cls.who} answered {status} {reason}".rstrip(), status=status)
        )
        if not (error.transient if known.transient is None else known.transient):
            return PermanentError(message, fix=error.fix)
        wait = parse_retry_after(retry_after)
        return TransientError(message, fix=error.fix, retry_after=known.retry_after if wait is None else wait)


def classify_error(error: Exception) -> DeliveryError:
    """The usual reading of network and HTTP failures: connection problems, timeouts, 408, 425,
    429 and 5xx may pass; other HTTP errors will not."""
    if isinstance(error, DeliveryError):
        return error
    import requests

    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return unreachable(error)
    if isinstance(error, requests.HTTPError) and error.response is not None:
        response = error.response
        return from_status(
            response.status_code,
            response.reason or "",
            response.headers.get("Retry-After"),
            said=service_said(response),
        )
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(error, (ServiceRequestError, ServiceResponseError)):
        return unreachable(error)
    if isinstance(error, HttpResponseError) and error.status_code is not None:
        headers = error.response.headers if error.response is not None else {}
        return from_status(error.status_code, error.reason or "", headers.get("Retry-After"))
    # The message of an unexpected error may quote the lead: name only its type and where it rose.
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = f" at {frame.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.tb_lineno}" if frame else ""
    return PermanentError(f"unexpected {type(error).__name__}{where}", fix="a bug: report it with this text")


def unreachable(error: BaseException) -> TransientError:
    """A call that got no answer, naming the host and why: refused, name lookup, TLS, timeout,
    dropped. Never the exception's own text, which may hold the URL and its query."""
    import socket
    import ssl

    import requests

    from leads.core.http import DeadlineExceeded

    host = _host_of(error)
    chain = list(_causes(error))
    cut = next((e for e in chain if isinstance(e, DeadlineExceeded)), None)
    if cut is not None:
        return TransientError(str(cut), fix="the service answers too slowly; the delivery is retried")
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        cert = next(e for e in chain if isinstance(e, ssl.SSLCertVerificationError))
        return TransientError(
            f"could not reach {host}: TLS failed, its certificate is not trusted "
            f"({cert.verify_message or 'verify failed'})",
            fix="check the host in the destination's URL setting: it must be the service's own",
        )
    if any(isinstance(e, ssl.SSLError) for e in chain) or isinstance(error, requests.exceptions.SSLError):
        return TransientError(
            f"could not reach {host}: TLS failed",
            fix="check that the URL is the service's "
            "https address (not http on a TLS port, nor a proxy that intercepts TLS)",
        )
    if any(isinstance(e, socket.gaierror) or type(e).__name__ == "NameResolutionError" for e in chain):
        return TransientError(
            f"could not reach {host}: name lookup failed (the host name does not resolve)",
            fix="check the host name in the destination's URL setting and the app's DNS",
        )
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return TransientError(
            f"could not reach {host}: connection refused (nothing listens there)",
            fix="check the port in the destination's URL setting, and that the service is up",
        )
    if isinstance(error, requests.ConnectTimeout) or any(type(e).__name__ == "ConnectTimeoutError" for e in chain):
        return TransientError(
            f"could not reach {host}: connecting timed out",
            fix="check that the service is reachable from the app (firewall, private network)",
        )
    if (
        isinstance(error, requests.Timeout)
        or any(isinstance(e, (TimeoutError, socket.timeout)) for e in chain)
        or "Timeout" in type(error).__name__
    ):
        return TransientError(f"no answer from {host} in time (timeout)", fix="the delivery is retried")
    return TransientError(
        f"could not reach {host}: the connection dropped before an answer ({type(error).__name__})",
        fix="the delivery is retried",
    )


def _causes(error: BaseException):
    """``error`` and what it wraps: causes, contexts, urllib3's ``reason``, azure-core's inner exception."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__, getattr(current, "inner_exception", None)]
        todo += (
            [getattr(current, "reason", None)] if isinstance(getattr(current, "reason", None), BaseException) else []
        )
        todo += [arg for arg in current.args if isinstance(arg, BaseException)]


def _host_of(error: BaseException) -> str:
    from urllib.parse import urlsplit

    for current in _causes(error):
        request = getattr(current, "request", None)
        url = getattr(request, "url", None)
        if isinstance(url, str):
            parts = urlsplit(url)
            if parts.hostname:
                return parts.hostname + (f":{parts.port}" if parts.port else "")
        host = getattr(current, "host", None) or getattr(getattr(current, "pool", None), "host", None)
        if isinstance(host, str) and host:
            return host
    return "the service"


def service_said(response) -> str | None:
    """The service's own words about a refused request, from its answer's body (JSON error
    fields, or the first line of plain text), or None. Callers mask the lead's values in it."""
    try:
        body = response.json()
    except ValueError:
        body = None
    found: list[str] = []

    def collect(value, depth: int = 0) -> None:
        if depth > 3 or len(found) >= 3:
            return
        if isinstance(value, str) and value.strip():
            found.append(value.strip())
        elif isinstance(value, dict):
            for key in (
                "message",
                "error_description",
                "detail",
                "title",
                "error",
                "errors",
                "reason",
                "code",
                "errorCode",
            ):
                if key in value:
                    collect(value[key], depth + 1)
        elif isinstance(value, list):
            for item in value[:3]:
                collect(item, depth + 1)

    if body is not None:
        collect(body)
        text = "; ".join(dict.fromkeys(found))
    else:
        kind = (response.headers.get("Content-Type") or "").lower()
        lines = [] if "html" in kind else (response.text or "").strip().splitlines()
        text = lines[0] if lines else ""
    text = " ".join(text.split())
    return text[:300] or None


def from_status(
    status: int,
    reason: str,
    retry_after: str | None = None,
    fix: str | None = None,
    said: str | None = None,
    who: str = "the service",
) -> DeliveryError:
    """The error for an HTTP status the service answered (``said``: the service's own words)."""
    message = f"{who} answered {status} {reason}".rstrip() + (f": {said}" if said else "")
    if status in (408, 425, 429) or status >= 500:
        return TransientError(message, retry_after=parse_retry_after(retry_after), fix=fix)
    return PermanentError(message, fix=fix)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
