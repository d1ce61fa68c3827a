"""The email destination: a notification to the sales team through Azure Communication Services
Email, or, with no ACS configured (local runs), an ``.eml`` file in ``EMAIL_OUTBOX_DIR``.

Mails are rendered from ``leads/destinations/templates/email/`` (HTML autoescaped, so a company called
``<script>`` is text) from the view in :mod:`leads.destinations.notice`, with as much personal
data as ``EMAIL_PII`` allows (``full``, ``masked``, ``none``: see there).

Every send is idempotent where ACS lets it be: the request carries an ``Operation-Id`` derived
from the lead id(s), the recipients and the sender, so a retry after a timeout names the same
operation instead of queueing a second mail, and the outbox file of a lead is always the same file.

The ACS SDK and azure-identity are imported only when a mail is sent (cold start).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from leads.destinations.base import (
    Check,
    DeliveryError,
    Destination,
    PermanentError,
    Route,
    Sent,
    TransientError,
    classify_error,
    from_status,
)
from leads.destinations.notice import headline, lead_view, offer_name, one_line

if TYPE_CHECKING:
    from leads.core.model import Lead
    from leads.core.settings import Settings

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Namespace of the deterministic ACS operation ids (uuid5 of the lead ids, recipients and sender).
OPERATION_NAMESPACE = uuid.UUID("6f1f0c53-3d0e-4b8e-9a53-2f3c8b1d7e01")
FOOTER = "Sent by the marketplace lead router."
SUBJECT_MAX = 200
TERMINAL = frozenset({"Succeeded", "Failed", "Canceled"})

# --- the destination ---------------------------------------------------------------------------


class EmailDestination(Destination):
    """Notifies sales of a lead by email: through ACS when ``EMAIL_CONNECTION_STRING`` or
    ``EMAIL_ENDPOINT`` is set, else into the outbox folder."""

    name = "email"
    notifies = True
    needs_recipients = "no recipients: set EMAIL_TO, or an email in the matching routing rule"
    setting_fields = (
        "email_to",
        "email_connection_string",
        "email_endpoint",
        "email_sender",
        "email_pii",
        "email_outbox_dir",
        "email_per_minute",
        "email_per_hour",
        "leads_portal_url",
    )
    secret_fields = ("email_connection_string",)
    rate_period = 60.0

    def __init__(
        self,
        settings: Settings,
        *,
        poll_interval: float = 1.0,
        poll_timeout: float = 10.0,
        connection_timeout: float = 5.0,
        read_timeout: float = 20.0,
    ) -> None:
        self.settings = settings
        (self.rate_limit, self.rate_period), *more = email_limits(settings)
        self.more_rate_limits = tuple(more)
        self.transport = transport_for(
            settings,
            poll_interval=poll_interval,
            poll_timeout=poll_timeout,
            connection_timeout=connection_timeout,
            read_timeout=read_timeout,
        )

    @classmethod
    def is_enabled(cls, settings: Settings) -> bool:
        # When someone is to be mailed: EMAIL_TO, or a routing rule's recipients. (Without ACS the
        # mails go to the outbox folder.) A rule that routes to email with no one to mail makes a
        # delivery that is marked skipped, with the reason.
        from leads.destinations.routing import RoutingError, load_rules, split_addresses

        if split_addresses(settings.email_to):
            return True
        try:
            return any(rule.email for rule in load_rules(settings.routing))
        except RoutingError:
            return False

    @classmethod
    def from_settings(cls, settings: Settings) -> EmailDestination:
        timeout = settings.http_timeout_seconds
        return cls(settings, connection_timeout=min(5.0, timeout), read_timeout=timeout)

    def send(self, lead: Lead, route: Route) -> Sent:
        return self.transport.send(render_lead(lead, route, self.settings))

    def send_digest(self, leads: list[Lead], route: Route) -> Sent:
        if len(leads) == 1:
            return self.send(leads[0], route)
        return self.transport.send(render_digest(leads, route, self.settings))

    def classify(self, error: Exception) -> DeliveryError:
        return acs_error(error, self.transport.auth)

    def check(self) -> Check:
        """ACS: a signed read of an operation that does not exist (404 means the endpoint and the
        credentials work; nothing is sent). Outbox: the folder can be written."""
        return self.transport.check()


def email_limits(settings: Settings) -> tuple[tuple[int, float], ...]:
    """ACS's sending limits as configured, (mails, seconds) each: a minute's and an hour's. ACS
    counts per subscription: 5 and 10 on an Azure-managed domain, 30 and 100 by default on a custom
    domain (raisable there only, by a support request). Lead mails, digests and alerts share them."""
    return (settings.email_per_minute, 60.0), (settings.email_per_hour, 3600.0)


# ACS's sending limits per subscription, (a minute, an hour), as documented in "Service limits for
# Azure Communication Services" (Email, rate limits; checked 2026-12-07): an Azure-managed domain's
# cannot be raised; a custom domain's are its defaults, raised by a support request.
MANAGED_DOMAIN_LIMITS = (5, 10)
CUSTOM_DOMAIN_LIMITS = (30, 100)
MANAGED_DOMAIN_SUFFIX = ".azurecomm.net"


def limits_check(settings: Settings) -> Check:
    """Which of ACS's limits the configured sender has, and whether EMAIL_PER_MINUTE and
    EMAIL_PER_HOUR keep under them (over them, mails meet 429s and wait for ACS's Retry-After)."""
    sender = settings.email_sender.strip().lower()
    domain = sender.rpartition("@")[2]
    configured = (settings.email_per_minute, settings.email_per_hour)
    said = f"EMAIL_PER_MINUTE={configured[0]}, EMAIL_PER_HOUR={configured[1]}"
    if not domain:
        return Check(True, f"no EMAIL_SENDER: ACS's limits cannot be told ({said})")
    if domain.endswith(MANAGED_DOMAIN_SUFFIX):
        kind, limits, raise_how = (
            "an Azure-managed domain",
            MANAGED_DOMAIN_LIMITS,
            ("link a custom domain to send more (its limits can be raised by a support request)"),
        )
    else:
        kind, limits, raise_how = (
            "a custom domain",
            CUSTOM_DOMAIN_LIMITS,
            ("if Azure raised your quota, keep the settings; else lower them"),
        )
    message = f"the sender {domain} is {kind}: ACS allows {limits[0]} mails a minute and {limits[1]} an hour; {said}"
    if configured[0] > limits[0] or configured[1] > limits[1]:
        # Leads still get through: mails meet ACS's 429s and wait for its Retry-After.
        fix = f"set EMAIL_PER_MINUTE={limits[0]} and EMAIL_PER_HOUR={limits[1]}"
        return Check.warn(message + " (the settings are above them: mails meet 429s and wait)", f"{fix}; {raise_how}")
    return Check(True, message)


def send_operator_mail(
    settings: Settings, to: tuple[str, ...], subject: str, text: str, *, key: str | None = None
) -> Sent:
    """A plain mail to the app's operators (alerts), through the same transport as lead mails.
    ``key`` makes a repeated call the same mail (same ACS operation, same outbox file)."""
    subject = one_line(subject, SUBJECT_MAX)
    html = _environment().get_template("email/operator.html").render(subject=subject, text=text)
    key = key or json.dumps([sorted(to), subject, text])
    operation = str(uuid.uuid5(OPERATION_NAMESPACE, "operator|" + key + "|" + settings.email_sender))
    mail = Mail(
        to=tuple(to),
        subject=subject,
        text=text,
        html=html,
        operation_id=operation,
        filename=f"operator-{operation}.eml",
        lead_ids=(),
    )
    # An alert must not hold the worker: ACS's acceptance is enough, its final status is not awaited.
    return transport_for(settings, poll_timeout=0.0).send(mail)


# --- what a mail is, and how it is rendered --------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    to: tuple[str, ...]
    subject: str
    text: str
    html: str
    operation_id: str  # deterministic: the same lead(s) to the same people is the same mail
    filename: str  # the outbox file it is written to without ACS
    lead_ids: tuple[str, ...] = field(default=())
    reply_to: tuple[str, ...] = field(default=())  # the customer, so that sales can press Reply


def render_lead(lead: Lead, route: Route, settings: Settings) -> Mail:
    """The mail about one lead."""
    test = lead.is_test or route.test
    title = headline(lead, settings.email_pii)
    view = lead_view(lead, settings.email_pii, settings.leads_portal_url, test, heading=title)
    subject = one_line(("[TEST] " if test else "") + title, SUBJECT_MAX)
    mail = _mail(
        [view],
        subject,
        intro=None,
        route=route,
        settings=settings,
        lead_ids=(lead.lead_id,),
        filename=_safe_name(lead.lead_id) + ".eml",
    )
    return replace(mail, reply_to=reply_to(lead, settings.email_pii, test))


def reply_to(lead: Lead, pii: str, test: bool) -> tuple[str, ...]:
    """The customer's address as ``Reply-To``, when sales may write to it: a valid address, shown
    in full, of a real customer who did not ask not to be contacted."""
    if pii != "full" or test or lead.do_not_contact or not lead.email or lead.email_valid is False:
        return ()
    return (lead.email,)


def render_digest(leads: list[Lead], route: Route, settings: Settings) -> Mail:
    """One mail listing several leads that waited for the same recipients."""
    pii = settings.email_pii
    test = route.test or all(lead.is_test for lead in leads)
    views = [
        lead_view(
            lead,
            pii,
            settings.leads_portal_url,
            lead.is_test or route.test,
            heading=("[TEST] " if lead.is_test and not test else "") + headline(lead, pii),
        )
        for lead in leads
    ]
    offers = list(dict.fromkeys(offer_name(lead) for lead in leads))
    shown = ", ".join(offers[:3]) + (f" and {len(offers) - 3} more" if len(offers) > 3 else "")
    dnc = sum(lead.do_not_contact for lead in leads)
    subject = one_line(
        ("[TEST] " if test else "")
        + f"{len(leads)} new leads"
        + (f" ({dnc} do not contact)" if dnc else "")
        + f": {shown}",
        SUBJECT_MAX,
    )
    intro = (
        f"{len(leads)} leads arrived while the mail service's sending limit was reached, so they are "
        "listed together in this one mail."
    )
    if dnc:
        intro += f" {dnc} of them must NOT be contacted: see each lead."
    lead_ids = tuple(lead.lead_id for lead in leads)
    return _mail(views, subject, intro=intro, route=route, settings=settings, lead_ids=lead_ids, filename=None)


def _mail(
    views: list[dict[str, Any]],
    subject: str,
    *,
    intro: str | None,
    route: Route,
    settings: Settings,
    lead_ids: tuple[str, ...],
    filename: str | None,
) -> Mail:
    context = {"subject": subject, "intro": intro, "leads": views, "digest": len(views) > 1, "footer": FOOTER}
    env = _environment()
    html = env.get_template("email/lead.html").render(context)
    text = env.get_template("email/lead.txt").render(context)
    operation = route.operation or operation_id(lead_ids, route.recipients, settings.email_sender, route.generation)
    return Mail(
        to=tuple(route.recipients),
        subject=subject,
        text=text,
        html=html,
        operation_id=operation,
        filename=filename or f"digest-{operation}.eml",
        lead_ids=lead_ids,
    )


def operation_id(
    lead_ids: tuple[str, ...] | list[str], recipients: tuple[str, ...], sender: str, generation: str = ""
) -> str:
    """The ACS ``Operation-Id`` of the mail about ``lead_ids``: the same on every retry, and new
    when the recipients or the sender change, or an operator replays it."""
    people = ";".join(sorted(address.strip().lower() for address in recipients))
    name = "email|" + "|".join(sorted(lead_ids)) + "|" + people + "|" + sender.strip().lower()
    if generation:
        name += "|" + generation
    return str(uuid.uuid5(OPERATION_NAMESPACE, name))


@lru_cache(maxsize=1)
def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _safe_name(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", value)[:120] or "lead"


# --- transports ----------------------------------------------------------------------------------


def transport_for(settings: Settings, **options: float) -> AcsTransport | OutboxTransport:
    """ACS when it is configured, else the outbox folder."""
    if settings.email_connection_string.strip() or settings.email_endpoint.strip():
        return AcsTransport(settings, **options)
    return OutboxTransport(settings)


class OutboxTransport:
    """Writes each mail as an ``.eml`` file (multipart/alternative, text and HTML) into
    ``EMAIL_OUTBOX_DIR``; a mail sent again overwrites its own file."""

    auth = None

    def __init__(self, settings: Settings) -> None:
        self.folder = Path(settings.email_outbox_dir or ".outbox")
        self.sender = settings.email_sender.strip() or "Marketplace leads <leads@localhost>"

    def send(self, mail: Mail) -> Sent:
        from email.message import EmailMessage
        from email.utils import formatdate

        if not mail.to:
            raise _no_recipients()
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(mail.to)
        message["Subject"] = one_line(mail.subject, SUBJECT_MAX)
        if mail.reply_to:
            message["Reply-To"] = ", ".join(one_line(address, SUBJECT_MAX) for address in mail.reply_to)
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = f"<{mail.operation_id}@leads.localhost>"
        if mail.lead_ids:
            message["X-Leads-Lead-Id"] = ", ".join(mail.lead_ids)
        message.set_content(mail.text)
        message.add_alternative(mail.html, subtype="html")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / mail.filename
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            partial.write_bytes(message.as_bytes())
            os.replace(partial, path)
        except OSError as exc:
            raise PermanentError(
                f"cannot write the mail into the outbox folder ({type(exc).__name__}: {exc.strerror})",
                fix="point EMAIL_OUTBOX_DIR at a writable folder, or configure ACS "
                "(EMAIL_CONNECTION_STRING or EMAIL_ENDPOINT)",
            ) from None
        log.info("mail written to %s", path)
        return Sent(external_id=f"outbox:{mail.filename}", detail={"path": str(path)})

    def check(self) -> Check:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".check.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return Check(
                False,
                f"the outbox folder {self.folder} cannot be written ({exc.strerror})",
                "point EMAIL_OUTBOX_DIR at a writable folder, or configure ACS",
            )
        return Check.warn(
            f"ACS is not configured: nobody is mailed, each lead's mail is an .eml file in {self.folder.resolve()}",
            "set EMAIL_CONNECTION_STRING (or EMAIL_ENDPOINT with a managed identity) and EMAIL_SENDER to send them",
        )


class AcsTransport:
    """Sends through Azure Communication Services Email with the real SDK.

    The SDK's own retries are off (``retry_total=0``): a 429's ``Retry-After`` must not keep the
    worker asleep; the delivery is retried from the queue instead, with the same ``Operation-Id``.
    The send operation is polled here, briefly (the SDK's poller would honour ACS's
    ``Retry-After`` of 20 s and more between polls): a mail ACS accepted (202) counts as sent even
    when its final status is not known yet; only a final ``Failed`` is a failure."""

    def __init__(
        self,
        settings: Settings,
        *,
        poll_interval: float = 1.0,
        poll_timeout: float = 10.0,
        connection_timeout: float = 5.0,
        read_timeout: float = 20.0,
    ) -> None:
        self.connection_string = settings.email_connection_string.strip()
        self.endpoint = settings.email_endpoint.strip()
        self.auth = "key" if self.connection_string else "identity"
        self.sender = settings.email_sender.strip()
        self.poll_interval, self.poll_timeout = poll_interval, poll_timeout
        self.timeouts = (connection_timeout, read_timeout)

    def client(self):
        return _acs_client(self.connection_string, self.endpoint, *self.timeouts)

    def send(self, mail: Mail) -> Sent:
        if not self.sender:
            raise PermanentError(
                "EMAIL_SENDER is not set",
                fix="set EMAIL_SENDER to the MailFrom address of an email "
                "domain linked to the Communication Services resource, e.g. "
                "DoNotReply@<guid>.azurecomm.net",
            )
        if not mail.to:
            raise _no_recipients()
        message = {
            "senderAddress": self.sender,
            "recipients": {"to": [_address(address) for address in mail.to]},
            "content": {"subject": one_line(mail.subject, SUBJECT_MAX), "plainText": mail.text, "html": mail.html},
            "userEngagementTrackingDisabled": True,
        }
        if mail.reply_to:
            message["replyTo"] = [_address(address) for address in mail.reply_to]
        from azure.core.exceptions import ResourceExistsError

        try:
            client = self.client()
        except ValueError as exc:
            raise PermanentError(
                f"EMAIL_CONNECTION_STRING or EMAIL_ENDPOINT cannot be used ({exc})",
                fix=FIX_KEY if self.auth == "key" else FIX_ENDPOINT,
            ) from None
        try:
            poller = client.begin_send(
                message,
                operation_id=mail.operation_id,
                polling=False,
                cls=lambda response, body, _: (body, response.http_response.headers),
            )
            body, headers = poller.result()
        except ResourceExistsError:
            # A repeat of an operation ACS still runs: it has the mail already.
            body, headers = {"id": mail.operation_id, "status": "Running"}, {}
        except Exception as exc:
            raise acs_error(exc, self.auth) from None
        body = body if isinstance(body, dict) else {}
        operation = str(body.get("id") or mail.operation_id)
        status = str(body.get("status") or "Running")
        error = body.get("error")
        if status not in TERMINAL:
            status, error = self._wait(client, operation, headers)
        if status in ("Failed", "Canceled"):
            raise _operation_failed(status, error)
        log.info("mail accepted by ACS, operation %s: %s", operation, status)
        return Sent(external_id=operation, detail={"status": status})

    def check(self) -> Check:
        from azure.core.rest import HttpRequest

        where = urlsplit(self.endpoint).netloc or "the ACS endpoint"
        if self.connection_string:
            where = urlsplit(self.connection_string.split("endpoint=", 1)[-1].split(";", 1)[0]).netloc or where
        if not self.sender:
            return Check(False, "EMAIL_SENDER is not set", FIX_SENDER)
        try:
            client = self.client()
            probe = f"/emails/operations/{uuid.uuid4()}"
            response = client.send_request(HttpRequest("GET", probe, params={"api-version": _api_version(client)}))
        except ValueError as exc:
            return Check(False, f"EMAIL_CONNECTION_STRING or EMAIL_ENDPOINT cannot be used ({exc})", FIX_KEY)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            error = acs_error(exc, self.auth)
            return Check(False, f"{where}: {error}", error.fix or FIX_ENDPOINT)
        if response.status_code in (200, 404):
            return Check(
                True,
                f"{where} accepts the {'access key' if self.auth == 'key' else 'identity'}; "
                f"mails are sent from {self.sender}",
            )
        if response.status_code == 401:
            fix = FIX_KEY if self.auth == "key" else FIX_IDENTITY_401
            return Check(False, f"{where} refused the credentials (401)", fix)
        if response.status_code == 403:
            return Check(False, f"{where} refused the identity (403)", FIX_ROLE)
        return Check(False, f"{where} answered {response.status_code}", FIX_ENDPOINT)

    def _wait(self, client, operation: str, headers) -> tuple[str, Any]:
        """Poll the send operation until it ends or ``poll_timeout`` passes; never longer."""
        from azure.core.rest import HttpRequest

        location = _same_host(headers.get("Operation-Location") if headers else None, client)
        url = location or f"/emails/operations/{quote(operation, safe='')}"
        params = {} if location else {"api-version": _api_version(client)}
        deadline = time.monotonic() + self.poll_timeout
        pause, status = self.poll_interval / 2, "Running"
        retry_after = _seconds(headers.get("Retry-After") if headers else None)
        while True:
            # The service's Retry-After is far longer than a worker should wait (20 s and more):
            # poll at our own short interval, or sooner when the service says so.
            sleep = max(0.05, min(pause, retry_after)) if retry_after is not None else pause
            left = deadline - time.monotonic()
            if left <= 0:
                return status, None
            time.sleep(min(sleep, left))
            pause = min(pause * 2, max(self.poll_interval, 0.05) * 4)
            try:
                response = client.send_request(HttpRequest("GET", url, params=params))
            except Exception as exc:  # accepted already: a status we cannot read is not a failure
                log.info("status of mail operation %s not read (%s); it was accepted", operation, type(exc).__name__)
                return "Unknown", None
            if response.status_code != 200:
                log.info("status of mail operation %s not read (%d); it was accepted", operation, response.status_code)
                return "Unknown", None
            try:
                result = response.json()
            except ValueError:
                return "Unknown", None
            status = str(result.get("status") or "Unknown")
            if status in TERMINAL:
                return status, result.get("error")
            retry_after = _seconds(response.headers.get("Retry-After"))


@lru_cache(maxsize=8)
def _acs_client(connection_string: str, endpoint: str, connection_timeout: float, read_timeout: float):
    """One client (and one credential, so one token per lifetime) per configuration, kept. Its
    transport is a deadline session (leads/core/http.py): a call ends by its total deadline."""
    from azure.communication.email import EmailClient
    from azure.core.pipeline.transport import RequestsTransport

    from leads.core.http import session

    transport = RequestsTransport(
        session=session(), session_owner=False, connection_timeout=connection_timeout, read_timeout=read_timeout
    )
    options = {
        "retry_total": 0,
        "connection_timeout": connection_timeout,
        "read_timeout": read_timeout,
        "transport": transport,
    }
    if connection_string:
        return EmailClient.from_connection_string(connection_string, **options)
    return EmailClient(endpoint, _identity_credential(), **options)


def _identity_credential():
    """The app's managed identity in Azure (user-assigned: its client id from ``AZURE_CLIENT_ID``,
    else the one the storage connection uses), the developer's sign-in elsewhere."""
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    from leads.core.storage import identity_options  # its token calls bounded as the storage identity's are

    client_id = os.environ.get("AZURE_CLIENT_ID") or os.environ.get("AzureWebJobsStorage__clientId")
    in_azure = any(os.environ.get(name) for name in ("IDENTITY_ENDPOINT", "MSI_ENDPOINT"))
    if in_azure:
        return ManagedIdentityCredential(client_id=client_id, **identity_options())
    return DefaultAzureCredential(**identity_options())


def _api_version(client) -> str:
    return (
        getattr(client, "_api_version", None)
        or getattr(getattr(client, "_config", None), "api_version", None)
        or "2025-09-01"
    )


def _same_host(location: str | None, client) -> str | None:
    """``Operation-Location`` when it points at the configured endpoint (requests there are signed)."""
    if not location:
        return None
    endpoint = getattr(getattr(client, "_config", None), "endpoint", "") or ""
    if urlsplit(location).netloc.lower() == urlsplit(endpoint).netloc.lower() and location.lower().startswith(
        "https://"
    ):
        return location
    return None


def _seconds(value: str | None) -> float | None:
    from leads.destinations.base import parse_retry_after

    return parse_retry_after(value)


def _address(text: str) -> dict[str, str]:
    from email.utils import parseaddr

    name, address = parseaddr(text)
    entry = {"address": address or text.strip()}
    if name:
        entry["displayName"] = one_line(name, 100)
    return entry


def _no_recipients() -> PermanentError:
    return PermanentError(
        "the mail has no recipients", fix="set EMAIL_TO, or an email in the routing rule that matches the lead"
    )


# --- errors ---------------------------------------------------------------------------------------

FIX_KEY = (
    "check EMAIL_CONNECTION_STRING: copy it again from the Communication Services resource's Keys (the key "
    "may have been rotated), as endpoint=https://<name>.communication.azure.com/;accesskey=..."
)
FIX_IDENTITY_401 = (
    "ACS did not accept the app's identity token: check that EMAIL_ENDPOINT names the Communication "
    "Services resource and that the managed identity (AZURE_CLIENT_ID) exists"
)
FIX_ROLE = (
    "the app's managed identity lacks a role on the Communication Services resource: assign it "
    "'Communication and Email Service Owner' on that resource (infra/app/rbac.bicep does)"
)
FIX_SENDER = (
    "set EMAIL_SENDER to a MailFrom address of an email domain that is verified and linked to the "
    "Communication Services resource (Azure-managed: DoNotReply@<guid>.azurecomm.net), or link the "
    "domain under the resource's Email > Domains"
)
FIX_RECIPIENTS = "check the recipients: EMAIL_TO, or the email of the routing rule that matched (LEADS_ROUTING)"
FIX_ENDPOINT = (
    "the endpoint does not answer as ACS Email: check the endpoint in EMAIL_CONNECTION_STRING or "
    "EMAIL_ENDPOINT (https://<name>.communication.azure.com)"
)
_SENDER_CODES = ("sender", "domain", "mailfrom")
_RECIPIENT_CODES = ("recipient",)


def acs_error(error: Exception, auth: str | None) -> DeliveryError:
    """The delivery error for what ACS, the network or the credential raised; the text names
    ACS's status and error code, never the mail's content."""
    if isinstance(error, DeliveryError):
        return error
    try:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
    except ImportError:  # pragma: no cover - the SDK is a requirement
        return classify_error(error)
    if isinstance(error, HttpResponseError) and error.status_code is not None:
        status = error.status_code
        code, message = _error_body(error)
        headers = error.response.headers if error.response is not None else {}
        text = (
            f"ACS answered {status}"
            + (f" {code}" if code else f" {error.reason or ''}".rstrip())
            + (f": {message}" if message else "")
        )
        lowered = (code or "").lower() + " " + (message or "").lower()
        if status == 401:
            return PermanentError(text, fix=FIX_KEY if auth == "key" else FIX_IDENTITY_401)
        if status == 403:
            return PermanentError(text, fix=FIX_ROLE if auth == "identity" else FIX_KEY)
        if status == 400 and any(word in lowered for word in _SENDER_CODES):
            return PermanentError(text, fix=FIX_SENDER)
        if status == 400 and any(word in lowered for word in _RECIPIENT_CODES):
            return PermanentError(text, fix=FIX_RECIPIENTS)
        if status == 404:
            return PermanentError(text, fix=FIX_ENDPOINT)
        error_out = from_status(status, "", headers.get("Retry-After"))
        fix = "ACS is limiting sends: the delivery waits as told" if status == 429 else None
        return type(error_out)(text, retry_after=error_out.retry_after, fix=fix)
    if isinstance(error, ClientAuthenticationError):
        # Raised by azure-identity before any request reached ACS.
        from azure.identity import CredentialUnavailableError

        if isinstance(error, CredentialUnavailableError):
            return PermanentError(
                "no identity is available to sign in to ACS",
                fix="in Azure, give the Function App its managed identity (and AZURE_CLIENT_ID for "
                "a user-assigned one); locally, set EMAIL_CONNECTION_STRING or sign in: az login",
            )
        return TransientError(f"could not get a token for ACS ({type(error).__name__})")
    return classify_error(error)


def _error_body(error) -> tuple[str | None, str | None]:
    """ACS's ``{"error": {"code", "message"}}``, bounded (it describes the request, not the mail)."""
    code = message = None
    try:
        body = error.response.json() if error.response is not None else None
    except Exception:  # noqa: BLE001 - any unreadable body is simply not shown
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code, message = body["error"].get("code"), body["error"].get("message")
    if not code and error.response is not None:
        code = error.response.headers.get("x-ms-error-code")
    return (one_line(str(code), 80) if code else None), (one_line(str(message), 300) if message else None)


def _operation_failed(status: str, error: Any) -> PermanentError:
    code = message = None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    text = (
        f"ACS ended the send {status}"
        + (f" ({one_line(str(code), 80)})" if code else "")
        + (f": {one_line(str(message), 300)}" if message else "")
    )
    return PermanentError(
        text,
        fix="check the recipients and the sender domain in the Communication Services "
        "resource's email logs, then: python -m leads replay --destination email",
    )
