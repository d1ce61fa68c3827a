"""Delivering one (lead, destination): claim, send, record; retry, fail, alert.

Called by the queue-triggered function with one message. The delivery row decides what happens:
a destination is called only after this worker's conditional claim of the row succeeded, so a
message seen twice, or two workers racing on one delivery, send once. Transient failures are
retried with exponential backoff and jitter (at least as long as the service's ``Retry-After``)
by re-enqueueing the message with a visibility delay, never by sleeping; permanent ones, and
transient ones past ``LEADS_RETRY_HOURS``, end ``failed`` with the reason and one alert mail.

A claim is checked again just before the send, by renewing it with a conditional write: the
storage calls between the claim and the send (rate limiter, fold, lead read, each up to a minute
or more under the SDK's retries) may outlast it, and another worker may own the delivery by then.
The record of a send is retried while the claim lasts; if the lead store refuses it throughout,
a note of the send goes on the queue, and its handling records it (:func:`record_sent`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from leads.core.settings import SEND_DEADLINE_SECONDS, Settings, get_settings
from leads.delivery.digests import FAILED, OPEN, SENT, Digest, DigestBook
from leads.delivery.queue import DeliveryMessage, delivery_queue
from leads.destinations import DeliveryError, Destination, PermanentError, Route, Sent, get_destination
from leads.destinations.ratelimit import RateLimiter
from leads.store.deliveries import backoff, initial_state
from leads.store.lead_store import LeadStore
from leads.store.rows import FINAL, Delivery

log = logging.getLogger(__name__)

# A claim holds a delivery for settings.claim (LEADS_CLAIM_MINUTES); a worker that dies mid-send
# frees it after that. Every send ends by SEND_DEADLINE_SECONDS, inside it (the settings check
# that), so no claim runs out under a live send.
# A message arriving this much before its delivery's next attempt is a stray duplicate.
EARLY = timedelta(seconds=5)
# How many times the record of a send is written, within its claim, before a note of it is queued.
RECORD_TRIES = 5
# The most leads one digest lists.
DIGEST_MAX = 50


@dataclass(frozen=True)
class Outcome:
    state: str
    detail: str = ""


def enqueue(lead_id: str, deliveries: Mapping[str, Route], settings: Settings | None = None) -> None:
    """Queue the deliveries of a stored lead that have something to send: one try, within
    ``ENQUEUE_SECONDS``, and none after a refusal. A failure here loses nothing: the rows exist
    and the sweep queues them again, so it delays neither the answer to the POST nor the poll."""
    from azure.core.exceptions import AzureError

    from leads.core.deadlines import ENQUEUE_SECONDS
    from leads.core.http import deadline

    queue = delivery_queue(settings)
    pending = [name for name, route in deliveries.items() if initial_state(route) == "pending"]
    with deadline(ENQUEUE_SECONDS):
        for name in pending:
            try:
                queue.send(lead_id, name, once=True)
            except AzureError as exc:
                log.warning(
                    "deliveries of %s not queued (%s: %s); the sweep will",
                    lead_id,
                    ", ".join(pending),
                    type(exc).__name__,
                )
                return


def handle_message(text: str | bytes, settings: Settings | None = None, now: datetime | None = None) -> Outcome:
    """Act on one queue message: a delivery, a note of a send, or an alert's wake-up."""
    from leads.delivery.alerts import flush_alerts, woken_destination

    if (woken := woken_destination(text)) is not None:
        settings = settings or get_settings()
        sent = flush_alerts(LeadStore.from_settings(settings), settings, now or _now(), destination=woken)
        return Outcome("alerted" if sent else "waiting", woken)
    try:
        message = DeliveryMessage.from_json(text)
    except ValueError as exc:
        log.error("delivery message dropped: %s", exc)
        return Outcome("ignored", str(exc))
    if message.sent is not None:
        return record_sent(message.lead_id, message.destination, message.sent, settings)
    return deliver(message.lead_id, message.destination, settings, now)


def deliver(lead_id: str, name: str, settings: Settings | None = None, now: datetime | None = None) -> Outcome:
    from leads.core.http import deadline

    settings = settings or get_settings()
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    book = store.deliveries
    now = now or _now()
    clock = _clock_from(now)
    delivery = book.get(lead_id, name)
    if delivery is None:
        return Outcome("ignored", "no such delivery")
    if delivery.state in FINAL:
        return Outcome(delivery.state, "already finished")
    if delivery.state == "sending" and delivery.claimed_until and delivery.claimed_until > now:
        # Not consumed: the holder may stop without a record (killed, or its record refused).
        # This message comes back as the claim ends, to find what the holder left.
        delivery_queue(settings).send(lead_id, name, (delivery.claimed_until - now).total_seconds() + 1)
        return Outcome("sending", "claimed by another worker")
    if delivery.state == "retrying" and delivery.next_attempt_at and delivery.next_attempt_at - EARLY > now:
        return Outcome("retrying", "not due yet")

    destination = get_destination(name, settings)
    if destination is None:
        claimed = book.change(delivery, state="sending", claimed_until=now + settings.claim)
        if claimed:
            _fail(
                book,
                claimed,
                PermanentError(
                    f"the {name} destination is not enabled",
                    fix=f"configure its settings, then: python -m leads replay --destination {name}",
                ),
                settings,
                now,
            )
        return Outcome("failed", "destination not enabled")

    digest = _digest_of(store, delivery)
    if digest is not None and digest.state == SENT:  # it went out; the worker died before saying so here
        done = book.change(
            delivery,
            state="delivered",
            external_id=digest.external_id,
            last_error=None,
            claimed_until=None,
            next_attempt_at=None,
        )
        return Outcome("delivered" if done else delivery.state, f"sent in digest {digest.id}")

    if destination.rate_limit:
        wait = RateLimiter(
            store, name, destination.rate_limit, destination.rate_period, *destination.more_rate_limits
        ).acquire(now)
        if wait is not None:
            if digest is not None:  # the digest waits as one: its members join nothing else
                delivery_queue(settings).send(delivery.lead_id, name, wait)
                return Outcome("retrying", f"rate limited for {wait:.0f}s")
            return _wait_for_rate(book, delivery, destination, wait, settings, now)

    if digest is not None:
        claimed_digest = (
            DigestBook(store.leads).change(digest, claimed_until=now + settings.claim)
            if digest.claimed_until is None or digest.claimed_until <= now
            else None
        )
        if claimed_digest is None:
            return Outcome("sending", "its digest is claimed by another worker")
        return _send_digest(store, destination, claimed_digest, settings, now, clock)

    if delivery.state == "sending":  # its claim ran out, and nothing says what that attempt did
        log.warning(
            "lead %s to %s: attempt %d's outcome was never recorded (its worker stopped, or the lead "
            "store refused its record): sending again, under the same key",
            lead_id,
            name,
            delivery.attempts,
        )
    claimed = book.change(
        delivery,
        state="sending",
        attempts=delivery.attempts + 1,
        claimed_until=now + settings.claim,
        waiting_for=None,
        digest=None,
    )
    if claimed is None:
        return Outcome("sending", "claimed by another worker")
    # Only a first attempt folds others in: an earlier attempt may have gone out under its own
    # idempotency key, which a digest (a new key) would not repeat.
    if destination.can_digest and delivery.attempts == 0:
        folded = _fold_waiting(store, claimed, now, settings.claim)
        if folded is not None:
            return _send_digest(store, destination, folded, settings, now, clock)
    lead, erased = store.get_for_delivery(claimed.lead_id)
    if lead is None:
        _fail(book, claimed, LEAD_GONE, settings, now)
        return Outcome("failed", "lead not found")
    if erased:  # never sent with its fields emptied
        _skip_erased(book, claimed)
        return Outcome("skipped", "lead erased")
    claimed = book.change(claimed, claimed_until=clock() + settings.claim)  # still ours? then a whole claim from now
    if claimed is None:
        return Outcome("sending", "claimed by another worker before the send")
    try:
        with deadline(SEND_DEADLINE_SECONDS):  # every call of the send ends well inside the claim
            sent = destination.send(lead, claimed.route)
    except Exception as exc:  # every failure is classified; none may escape unrecorded
        error = _told(destination.classify(exc), [lead], claimed)
        _after_failure(book, claimed, error, settings, now)
        return Outcome("retrying" if error.transient else "failed", error.explain())
    if not _delivered(book, claimed, sent, settings, clock):
        return Outcome("sending", "sent; the lead store refused its record, which is recorded from the queue")
    return Outcome("delivered", sent.external_id or "")


LEAD_GONE = PermanentError("the lead is not in the lead store", fix="it was deleted; nothing can be sent")


def _skip_erased(book, delivery: Delivery) -> None:
    from leads.store.erasure import ERASED_REASON

    book.change(delivery, state="skipped", last_error=ERASED_REASON, claimed_until=None, next_attempt_at=None)


def _delivered(
    book, delivery: Delivery, sent: Sent, settings: Settings, clock: Callable[[], datetime], digest_size: int = 1
) -> bool:
    """Record a send of ``delivery`` (claimed by this worker). The destination has the lead: a
    record lost here would have it sent again when the claim runs out. So the write is tried again
    while the claim lasts (each try is the SDK's own retries), and if the lead store refuses it
    throughout, a note of the send goes on the queue (another service), whose handling records it.
    False when only that note holds it; raises when the queue refuses the note too."""
    from azure.core.exceptions import AzureError

    refused: AzureError | None = None
    for _ in range(RECORD_TRIES):
        try:
            done = _record_sent(book, delivery, sent.external_id)
        except AzureError as exc:
            refused = exc
            if delivery.claimed_until is None or clock() >= delivery.claimed_until:
                break
            continue
        if done is None:
            log.warning(
                "delivery %s/%s sent but its row changed under the claim", delivery.lead_id, delivery.destination
            )
        log.info(
            "lead %s delivered to %s (attempt %d%s)",
            delivery.lead_id,
            delivery.destination,
            delivery.attempts,
            f", digest of {digest_size}" if digest_size > 1 else "",
        )
        _told_outcome(delivery, "delivered", clock())
        return True
    log.warning(
        "lead %s sent to %s (attempt %d) but its record was refused (%s): recording it from the queue",
        delivery.lead_id,
        delivery.destination,
        delivery.attempts,
        type(refused).__name__,
    )
    note = {"attempt": delivery.attempts, "externalId": sent.external_id}
    delivery_queue(settings).send(delivery.lead_id, delivery.destination, sent=note)
    return False


def _record_sent(book, delivery: Delivery, external_id: str | None) -> Delivery | None:
    """Write ``delivery`` delivered; after a write whose answer was lost (the row moved on, to
    what this write made it), the row as it is."""
    done = book.change(
        delivery, state="delivered", external_id=external_id, last_error=None, claimed_until=None, next_attempt_at=None
    )
    if done is None:
        now = book.get(delivery.lead_id, delivery.destination)
        return now if now is not None and now.state == "delivered" else None
    return done


def record_sent(lead_id: str, name: str, note: Mapping[str, object], settings: Settings | None = None) -> Outcome:
    """Act on a note of a send (see :func:`_delivered`): record it, unless the delivery moved on
    (finished, or claimed again by a later attempt, which then sends it again). While the lead
    store still refuses the record, the note is put back for half a minute on."""
    from azure.core.exceptions import AzureError

    settings = settings or get_settings()
    book = LeadStore.from_settings(settings).deliveries
    try:
        delivery = book.get(lead_id, name)
        if delivery is None:
            return Outcome("ignored", "no such delivery")
        if delivery.state in FINAL:
            return Outcome(delivery.state, "already finished")
        if delivery.state != "sending" or delivery.attempts != note["attempt"]:
            return Outcome(delivery.state, "a later attempt holds it")
        done = _record_sent(book, delivery, note.get("externalId"))  # type: ignore[arg-type]
    except AzureError as exc:
        log.warning(
            "record of the send of lead %s to %s refused again (%s): tried again in 30 s",
            lead_id,
            name,
            type(exc).__name__,
        )
        delivery_queue(settings).send(lead_id, name, 30, sent=dict(note))
        return Outcome("sending", "its record waits")
    if done is None:
        return Outcome("sending", "changed under the note")
    log.info("lead %s delivered to %s (attempt %d), recorded from the queue", lead_id, name, done.attempts)
    return Outcome("delivered", done.external_id or "")


def _digest_of(store: LeadStore, delivery: Delivery) -> Digest | None:
    """The digest ``delivery`` belongs to while that digest holds it: open or sent. A digest that
    failed, or whose row was never written (its worker died first, before any send), holds nothing."""
    if not delivery.digest:
        return None
    digest = DigestBook(store.leads).get(delivery.digest)
    if digest is None or digest.state == FAILED or delivery.lead_id not in digest.members:
        return None
    return digest


def _send_digest(
    store: LeadStore,
    destination: Destination,
    digest: Digest,
    settings: Settings,
    now: datetime,
    clock: Callable[[], datetime],
) -> Outcome:
    """Send ``digest`` (claimed by this worker) with its own Operation-Id and record the outcome
    on it and on every member."""
    from leads.core.http import deadline

    book, digests = store.deliveries, DigestBook(store.leads)
    members = []
    for lead_id in digest.members:
        member = _claim_member(book, lead_id, digest, now)
        if member is not None:
            members.append(member)
    if not members:
        digests.change(digest, state=SENT if digest.external_id else FAILED, claimed_until=None)
        return Outcome("delivered", "nothing left in the digest")
    found = [store.get_for_delivery(member.lead_id) for member in members]
    for member, (lead, erased) in zip(members, found, strict=True):
        if lead is None:
            _fail(book, member, LEAD_GONE, settings, now)
        elif erased:
            _skip_erased(book, member)
    present = [
        (member, lead) for member, (lead, erased) in zip(members, found, strict=True) if lead is not None and not erased
    ]
    if not present:
        digests.change(digest, state=FAILED, claimed_until=None)
        return Outcome("failed", "lead not found")
    members, leads = [member for member, _ in present], [lead for _, lead in present]
    renewed = digests.change(digest, claimed_until=clock() + settings.claim)  # as for one lead: still ours, just before
    if renewed is None:
        return Outcome("sending", "its digest was claimed by another worker before the send")
    digest = renewed
    try:
        with deadline(SEND_DEADLINE_SECONDS):
            sent = destination.send_digest(leads, digest.route)
    except Exception as exc:  # every failure is classified; none may escape unrecorded
        error = _told(destination.classify(exc), leads, members[0])
        # Open, it is sent again as itself (the same Operation-Id) by whichever member comes first.
        digests.change(digest, state=OPEN if error.transient else FAILED, claimed_until=None)
        for member in members:
            _after_failure(book, member, error, settings, now)
        return Outcome("retrying" if error.transient else "failed", error.explain())
    # Sent first on the digest: a worker dying after this leaves members that are marked, not resent.
    digests.change(digest, state=SENT, external_id=sent.external_id, claimed_until=None)
    for member in members:
        _delivered(book, member, sent, settings, clock, len(members))
    return Outcome("delivered", sent.external_id or "")


def _claim_member(book, lead_id: str, digest: Digest, now: datetime) -> Delivery | None:
    """Claim a member of ``digest`` for its send (two tries: a member's row may be touched by a
    stray message between read and write)."""
    for _ in range(2):
        member = book.get(lead_id, digest.destination)
        if member is None or member.digest != digest.id or member.state in FINAL:
            return None
        if member.state == "sending" and member.claimed_until == digest.claimed_until:
            return member  # claimed with the digest when it was folded
        taken = book.change(
            member, state="sending", attempts=member.attempts + 1, claimed_until=digest.claimed_until, waiting_for=None
        )
        if taken is not None:
            return taken
    return None


def _told(error: DeliveryError, leads: list, delivery: Delivery) -> DeliveryError:
    """``error`` as it is recorded, logged and alerted: without the personal values of the leads
    it is about (a service may echo any of them), and with a fix, if the destination gave none."""
    from leads.destinations.redact import mask_personal

    error.args = (mask_personal(str(error), leads),)
    if error.fix:
        error.fix = mask_personal(error.fix, leads)
    elif not error.transient:
        which = f"--lead {delivery.lead_id} " if len(leads) == 1 else ""
        error.fix = (
            "correct what the service names (the destination's settings, or the CRM's rules for the "
            f"field), then: python -m leads replay {which}--destination {delivery.destination}"
        )
    return error


def _after_failure(book, delivery: Delivery, error: DeliveryError, settings: Settings, now: datetime) -> None:
    if error.transient:
        delay = backoff(delivery.attempts, base=settings.retry_base_seconds)
        if error.retry_after is not None:
            delay = max(delay, timedelta(seconds=error.retry_after))
        deadline = (delivery.retry_from or delivery.created_at or now) + timedelta(hours=settings.retry_hours)
        if now + delay <= deadline:
            retrying = book.change(
                delivery,
                state="retrying",
                last_error=error.explain(),
                next_attempt_at=now + delay,
                claimed_until=None,
                waiting_for=None,
            )
            if retrying:
                log.warning(
                    "lead %s to %s: attempt %d failed, retry in %ds: %s",
                    delivery.lead_id,
                    delivery.destination,
                    delivery.attempts,
                    delay.total_seconds(),
                    error,
                )
                _told_outcome(delivery, "retrying", now, error.explain())
                delivery_queue(settings).send(delivery.lead_id, delivery.destination, delay.total_seconds())
            return
        error = PermanentError(
            f"gave up after {delivery.attempts} attempts over {settings.retry_hours:g} hours: {error}", fix=error.fix
        )
    _fail(book, delivery, error, settings, now)


def _fail(book, delivery: Delivery, error: DeliveryError, settings: Settings, now: datetime | None = None) -> None:
    failed = book.change(delivery, state="failed", last_error=error.explain(), claimed_until=None, next_attempt_at=None)
    if failed is None:
        return
    log.error("lead %s to %s failed: %s", delivery.lead_id, delivery.destination, error.explain())
    _told_outcome(delivery, "failed", now or _now(), error.explain())
    if settings.alert_to:
        from leads.delivery.alerts import record_failure

        try:
            record_failure(LeadStore.from_settings(settings), failed, now or _now(), settings)
        except Exception as exc:  # noqa: BLE001 - an alert must never break the delivery it reports
            log.warning(
                "failure of lead %s to %s not counted for an alert (%s)",
                delivery.lead_id,
                delivery.destination,
                type(exc).__name__,
            )


def _told_outcome(delivery: Delivery, outcome: str, now: datetime, error: str | None = None) -> None:
    """The ``DeliveryOutcome`` event: what the workbook and the failed-deliveries alert count. The
    error is the recorded one, already masked of the lead's values."""
    from leads.core.telemetry import event

    took = (now - delivery.created_at).total_seconds() if delivery.created_at and outcome == "delivered" else None
    event(
        "DeliveryOutcome",
        leadId=delivery.lead_id,
        destination=delivery.destination,
        outcome=outcome,
        attempt=delivery.attempts,
        secondsToDeliver=took and round(took, 3),
        error=error and error[:300],
    )


# --- rate limits and digests ---------------------------------------------------------------------


def _wait_for_rate(
    book, delivery: Delivery, destination: Destination, wait: float, settings: Settings, now: datetime
) -> Outcome:
    """Hold a delivery until the destination's rate allows a send. Deliveries waiting for the
    same recipients are folded into one digest by whichever of them sends first."""
    until = now + timedelta(seconds=wait)
    # As above: a delivery tried before waits alone, to be sent again as the same send.
    key = waiting_key(delivery) if destination.can_digest and delivery.attempts == 0 else None
    held = book.change(
        delivery,
        state="retrying",
        next_attempt_at=until,
        waiting_for=key,
        last_error=f"waiting for {destination.name}'s rate limit",
    )
    if held is None:
        return Outcome(delivery.state, "changed under us")
    if key:
        _mark_waiting(book, held, key)
    delivery_queue(settings).send(delivery.lead_id, delivery.destination, wait)
    return Outcome("retrying", f"rate limited for {wait:.0f}s")


_WAITING = "waiting|"


def _mark_waiting(book, delivery: Delivery, key: str) -> None:
    book.table.upsert_entity(
        {"PartitionKey": _WAITING + key, "RowKey": delivery.lead_id, "Destination": delivery.destination}
    )


def waiting_key(delivery: Delivery) -> str:
    recipients = ";".join(sorted(r.lower() for r in delivery.recipients))
    digest = hashlib.sha256(f"{recipients}|{delivery.test}".encode()).hexdigest()[:16]
    return f"{delivery.destination}|{digest}"


def _fold_waiting(store: LeadStore, sender: Delivery, now: datetime, claim: timedelta) -> Digest | None:
    """Fold the deliveries that wait for the same recipients as ``sender`` into one durable
    digest with it: each is claimed naming the digest, then the digest's row is written (members,
    Operation-Id, route) before anything is sent. None when no other delivery waits."""
    import uuid

    book, key = store.deliveries, waiting_key(sender)
    digest_id, until = str(uuid.uuid4()), now + claim
    members = []
    for marker in store.leads.query_entities("PartitionKey eq @key", parameters={"key": _WAITING + key}):
        if len(members) >= DIGEST_MAX - 1:
            break
        other = book.get(marker["RowKey"], sender.destination)
        store.leads.delete_entity(marker["PartitionKey"], marker["RowKey"])
        if other is None or other.lead_id == sender.lead_id or other.state != "retrying" or other.waiting_for != key:
            continue
        taken = book.change(
            other, state="sending", attempts=other.attempts + 1, claimed_until=until, waiting_for=None, digest=digest_id
        )
        if taken:
            members.append(taken)
    if not members:
        return None
    sender = book.change(sender, claimed_until=until, digest=digest_id)
    if sender is None:  # cannot happen under a live claim; the others then go without it
        members, sender = members[1:], members[0]
    route = sender.route
    digest = Digest(
        digest_id,
        sender.destination,
        tuple(m.lead_id for m in [sender, *members]),
        Route(route.recipients, route.test, route.generation, operation=digest_id),
        claimed_until=until,
    )
    return DigestBook(store.leads).create(digest)


def _clock_from(start: datetime) -> Callable[[], datetime]:
    """The time now, on the clock that read ``start`` (a test's given time runs on from there)."""
    began = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - began)


def _now() -> datetime:
    return datetime.now(UTC)
