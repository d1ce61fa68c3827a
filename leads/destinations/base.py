"""What every destination is: a small class with a name, enabled by its settings, that sends one
lead and says whether a failure is worth retrying.

A destination raises :class:`TransientError` for what may pass (timeouts, 5xx, 429) and
:class:`PermanentError` for what retrying cannot fix (bad credentials, a rejected field), each
with an explanation an operator can act on. Anything else it raises is classified by
:meth:`Destination.classify`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..model import Lead
    from ..settings import Settings


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
class Route:
    """What routing decided for one lead and one destination."""

    recipients: tuple[str, ...] = ()
    test: bool = False  # a test lead: destinations mark it as such
    # Changes when an operator replays a failed delivery, so that a destination's idempotency key
    # (e.g. the ACS Operation-Id) makes the replay a new send rather than a repeat of the old one.
    generation: str = ""
    # Why the delivery is stored skipped rather than sent (a lead older than LEADS_BACKFILL_DAYS).
    skip_reason: str = ""


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


def classify_error(error: Exception) -> DeliveryError:
    """The usual reading of network and HTTP failures: connection problems, timeouts, 408, 425,
    429 and 5xx may pass; other HTTP errors will not."""
    if isinstance(error, DeliveryError):
        return error
    import requests

    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return TransientError(f"could not reach the service: {type(error).__name__}")
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return from_status(error.response.status_code, error.response.reason or "",
                           error.response.headers.get("Retry-After"))  # fmt: skip
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(error, (ServiceRequestError, ServiceResponseError)):
        return TransientError(f"could not reach the service: {type(error).__name__}")
    if isinstance(error, HttpResponseError) and error.status_code is not None:
        headers = error.response.headers if error.response is not None else {}
        return from_status(error.status_code, error.reason or "", headers.get("Retry-After"))
    # The message of an unexpected error may quote the lead: name only its type and where it rose.
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = f" at {frame.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.tb_lineno}" if frame else ""
    return PermanentError(f"unexpected {type(error).__name__}{where}", fix="a bug: report it with this text")


def from_status(status: int, reason: str, retry_after: str | None = None, fix: str | None = None) -> DeliveryError:
    """The error for an HTTP status the service answered."""
    message = f"the service answered {status} {reason}".rstrip()
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
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
