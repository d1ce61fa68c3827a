"""Taking in a lead POSTed by the marketplace: parse, normalise, store, answer.

The answer is given only after the lead is durably stored, and once it is, it is 202 with the
lead queued, whatever else fails (a count, an index row: see ``LeadStore.add``); a repeat is 200,
and a repeat of a lead whose personal data was erased 200 with ``"erased": true``, nothing of it
kept. Bad input is answered 400 or 413 with an error naming the problem; a storage failure before the lead's own write
committed is 503 (the lead was not stored, say so), never blamed on the caller. A refused body (and
that of a 503, when storage still answers) is kept as a rejected record (the reason, the bytes as
received, the time) under an id of its own, which the answer names, so that nothing the
marketplace sent disappears unseen; the operator is told in one log line (:func:`tell_operator`).

Each of those waits on storage has a deadline (``leads/core/deadlines.py``), so the marketplace hears
back within seconds whatever storage does: the lead's writes up to its transaction, keeping a body,
and the enqueue (one try; the sweep queues what it missed).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from leads.core.deadlines import COMMIT_SECONDS, ENQUEUE_SECONDS, KEEP_SECONDS
from leads.core.http import deadline
from leads.core.normalise import LeadValidationError, from_http_body
from leads.core.settings import Settings, get_settings
from leads.core.telemetry import lead_extra
from leads.delivery.deliver import enqueue
from leads.destinations.routing import plan
from leads.store.lead_store import LeadStore, Rejected

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status and JSON body."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)

    def json(self) -> str:
        return json.dumps(self.body)


def accept_http(body: bytes, settings: Settings | None = None) -> Answer:
    """Take in one POSTed lead and say what became of it."""
    settings = settings or get_settings()
    if len(body) > MAX_BODY_BYTES:
        return _refuse(413, f"the body is {len(body)} bytes; the limit is {MAX_BODY_BYTES} (64 KiB)", body, settings)
    if not body.strip():
        return _refuse(400, "the body is empty: expected a JSON object holding the lead", body, settings)
    try:
        data = json.loads(body, parse_constant=_not_json, parse_float=_finite, parse_int=_integer)
    except RecursionError:
        return _refuse(400, "the body is not a lead: its JSON is nested too deeply", body, settings)
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        return _refuse(400, f"the body is not valid JSON: {exc}", body, settings)
    try:
        lead = from_http_body(data)
    except LeadValidationError as exc:
        return _refuse(400, str(exc), body, settings)

    from azure.core.exceptions import AzureError, ServiceRequestError

    store = LeadStore.from_settings(settings)
    deliveries = plan(lead, settings)
    ends = time.monotonic() + COMMIT_SECONDS
    try:
        with deadline(COMMIT_SECONDS):
            stored = store.add_http(lead, timedelta(hours=settings.dedupe_window_hours), deliveries)
    except AzureError as exc:
        failed = f"no answer within {COMMIT_SECONDS:g} s" if time.monotonic() >= ends else type(exc).__name__
        log.error("lead %s not stored: storage failed (%s)", lead.lead_id, failed)
        error = f"the lead could not be stored right now (storage failed: {failed}); send it again"
        if isinstance(exc, ServiceRequestError):  # storage unreachable: keeping the body would wait as long again
            return Answer(503, {"error": error})
        # Storage answered, with an error: the body may still be kept, so that a lead not sent
        # again is not lost unseen (show prints it, import takes it in).
        return _refuse(503, error, body, settings)
    if not stored.duplicate:
        enqueue(stored.lead_id, deliveries, settings)
    from leads.intake.silence import arrived

    with deadline(ENQUEUE_SECONDS):  # the silence watch: no request but once a day, and never holds the answer
        arrived(store, lead, stored.lead_id, stored.duplicate)
    outcome = "erased, not taken in" if stored.erased else "duplicate" if stored.duplicate else "stored"
    log.info(
        "lead %s %s (channel=http source=%s action=%s test=%s)",
        stored.lead_id,
        outcome,
        lead.source,
        lead.action,
        lead.is_test,
    )
    answer = {"leadId": stored.lead_id, "duplicate": stored.duplicate}
    return Answer(200 if stored.duplicate else 202, {**answer, "erased": True} if stored.erased else answer)


def _refuse(status: int, error: str, body: bytes, settings: Settings) -> Answer:
    """Answer ``status`` with the reason, once the body is kept as a rejected record."""
    from azure.core.exceptions import AzureError

    record_id = "r" + uuid.uuid4().hex[:24]
    try:
        with deadline(KEEP_SECONDS):
            rejected = LeadStore.from_settings(settings).reject(
                record_id, error, body, datetime.now(UTC), channel="http"
            )
    except AzureError as exc:
        # Still the caller's bad input, answered as such; the operator hears that it was not kept.
        log.error("refused body (%d) not kept: storage failed (%s): %s", status, type(exc).__name__, error)
        return Answer(status, {"error": error})
    tell_operator(rejected)
    return Answer(status, {"error": error, "rejectedId": record_id})


def tell_operator(rejected: Rejected) -> None:
    """One log line per rejected record: its id and reason, never its content. Alerts group
    these records (per channel and window) rather than mail one each."""
    log.warning(
        "%s input refused, kept as rejected record %s: %s",
        rejected.channel,
        rejected.record_id,
        rejected.error,
        extra=lead_extra(rejected.record_id, outcome="rejected", channel=rejected.channel),
    )


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is out of range (JSON numbers are doubles)")
    return number


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # Python refuses more than 4,300 digits, to bound the cost of reading them
        raise ValueError(f"a number of {len(text)} digits is longer than any lead holds") from None
