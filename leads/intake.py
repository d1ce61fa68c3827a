"""Taking in a lead POSTed by the marketplace: parse, normalise, store, answer.

The answer is given only after the lead is durably stored. Bad input is answered 400 or 413 with
an error naming the problem; a storage failure is 503 (the lead was not stored, say so), never
blamed on the caller.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .deliver import enqueue
from .normalise import LeadValidationError, from_http_body
from .routing import plan
from .settings import Settings, get_settings
from .store import LeadStore

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
        return _refuse(413, f"the body is {len(body)} bytes; the limit is {MAX_BODY_BYTES} (64 KiB)")
    if not body.strip():
        return _refuse(400, "the body is empty: expected a JSON object holding the lead")
    try:
        data = json.loads(body)
    except RecursionError:
        return _refuse(400, "the body is not a lead: its JSON is nested too deeply")
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        return _refuse(400, f"the body is not valid JSON: {exc}")
    try:
        lead = from_http_body(data)
    except LeadValidationError as exc:
        return _refuse(400, str(exc))

    from azure.core.exceptions import AzureError

    store = LeadStore.from_settings(settings)
    deliveries = plan(lead, settings)
    try:
        stored = store.add_http(lead, timedelta(hours=settings.dedupe_window_hours), deliveries)
    except AzureError as exc:
        log.error("lead %s not stored: storage failed (%s)", lead.lead_id, type(exc).__name__)
        return Answer(503, {"error": "the lead could not be stored right now; send it again"})
    if not stored.duplicate:
        enqueue(stored.lead_id, deliveries, settings)
    log.info(
        "lead %s %s (channel=http source=%s action=%s test=%s)",
        stored.lead_id, "duplicate" if stored.duplicate else "stored",
        lead.source, lead.action, lead.is_test,
    )  # fmt: skip
    return Answer(200 if stored.duplicate else 202,
                  {"leadId": stored.lead_id, "duplicate": stored.duplicate})  # fmt: skip


def _refuse(status: int, error: str) -> Answer:
    log.info("lead refused with %d: %s", status, error)
    return Answer(status, {"error": error})
