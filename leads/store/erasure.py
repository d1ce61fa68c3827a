"""Erasing a person's personal data: ``forget`` (one person, on request) and retention (every
lead older than ``LEADS_RETENTION_DAYS``, by a daily timer).

What is erased, in the lead store's table: the lead row's normalised lead (name, email, phone,
company, title, description) and its raw input, every chunk; a rejected record's raw row or refused
body, and its reason (which may quote a value); the last error of each of the lead's deliveries
(services echo values back); the record's rows in the identities table (digests of its identities
and of every address it held, ``leads/store/identities.py``, in either form, :mod:`leads.core.pseudonyms`);
an HTTP lead's content row. What is kept, so that counts and audit survive: the lead id, its
times, channel, offer, source, action, flags, duplicate count, and each delivery's destination,
state, attempts and external id; and, written first, the lead's tombstone (keyed digests of its
identities, :mod:`leads.store.tombstones`), so that an import of a file holding it takes nothing in.
The lead row is marked ``ErasedAt``; the delivery worker skips an erased lead's open deliveries
(``skipped``, with :data:`ERASED_REASON`), and nothing writes an erased row again: the store
inserts a lead only if its row is absent, and the HTTP intake takes nothing of a repeat of an
erased lead's content within the dedupe window. Mails in the local outbox (``EMAIL_OUTBOX_DIR``)
that name the person are deleted. Records already sent to CRMs, the webhook or a mailbox are
outside the app and must be erased there.

Erasing is idempotent: an erased row is rewritten to the same erased shape, and a second run finds
nothing personal left. An erasure cut short is finished by the next: the erased row names the
email-index rows still to delete (:data:`PENDING_INDEX_ROWS`, their partitions: digests, no address)
until they are gone, and retention and ``forget`` finish a row that does.

A delivery being sent as the lead is erased (``sending`` under a live claim) is left to its worker:
turned ``skipped`` under it, the send would still reach the destination and be recorded as never
made. The worker records what happened; its next attempt, if any, finds the lead erased and skips.
The report names its destination with those the lead was delivered to (``inFlight``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from leads.core.model import PERSONAL_FIELDS, Lead
from leads.core.normalise import http_lead_id_forms
from leads.core.settings import Settings, get_settings
from leads.store.identities import address_partitions, addresses_of
from leads.store.lead_store import LeadStore
from leads.store.rows import CONTENT_ROW, LEAD_ROW, OPEN, REJECTED_ROW, Delivery, lead_entity, lead_from_entity
from leads.store.tombstones import bury

log = logging.getLogger(__name__)

ERASED_REASON = "the lead's personal data was erased (forget or LEADS_RETENTION_DAYS): nothing to send"
ERASED_ERROR = "(erased with the lead's personal data)"
# Properties of a rejected record that say nothing about its content.
_REJECTED_KEPT = ("ReceivedAt", "Channel", "Size", "Truncated")
# Properties of a lead row outside its JSON that are not personal (the JSON is rebuilt erased).
_LEAD_KEPT = ("Duplicates", "LastDuplicateAt", "WriteId")
# On an erased row until its email-index rows are deleted: their partitions, as JSON.
PENDING_INDEX_ROWS = "PendingIndexRows"
# Retention erases at most this many rows per run: a backlog (the first run over a long history)
# is worked off over the next runs, from where the last one stopped.
RETENTION_PAGE = 200
RETENTION_PAGES_PER_RUN = 10
_RETENTION_KEY = ("retention", "leads")
# How long after its index rows a record's own write may still be on its way (intake's retries
# take seconds): an index row naming a missing record is left alone this long.
_IN_FLIGHT = timedelta(minutes=10)
OUTSIDE_NOTE = (
    "Records already sent to CRMs (Dynamics 365, Salesforce, Marketo, HubSpot), the webhook's "
    "receiver or a mailbox are not erased by this: erase the person there too."
)


@dataclass
class Erased:
    """What one erasure did."""

    leads: list[str] = field(default_factory=list)
    already_erased: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    deliveries_skipped: list[str] = field(default_factory=list)
    errors_erased: int = 0
    outbox_files: list[str] = field(default_factory=list)
    sent_elsewhere: list[dict[str, Any]] = field(default_factory=list)
    scanned: int = 0
    read_every_row: bool = False  # forget --email before the email index was complete

    def add(self, other: Erased) -> None:
        for name, value in asdict(other).items():
            if isinstance(value, list):
                getattr(self, name).extend(value)
            elif not isinstance(value, bool):
                setattr(self, name, getattr(self, name) + value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "erasedLeads": self.leads,
            "alreadyErased": self.already_erased,
            "erasedRejected": self.rejected,
            "deliveriesSkipped": self.deliveries_skipped,
            "deliveryErrorsErased": self.errors_erased,
            "outboxFilesDeleted": self.outbox_files,
            "sentElsewhere": self.sent_elsewhere,
            "rowsScanned": self.scanned,
            "readEveryRow": self.read_every_row,
            "note": OUTSIDE_NOTE,
        }


def is_erased(entity: Any) -> bool:
    return entity.get("ErasedAt") is not None


def forget_lead(lead_id: str, settings: Settings | None = None, now: datetime | None = None) -> Erased | None:
    """Erase one lead (or rejected record) by id, with point reads; None if there is no such id."""
    from azure.core.exceptions import ResourceNotFoundError

    settings = settings or get_settings()
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    for row_key in (LEAD_ROW, REJECTED_ROW):
        try:
            entity = store.leads.get_entity(lead_id, row_key)
        except ResourceNotFoundError:
            continue
        return _erase_row(store, entity, settings, now or _now())
    return None


def forget_email(address: str, settings: Settings | None = None, now: datetime | None = None) -> Erased:
    """Erase every lead whose email is ``address`` or whose fields or raw input hold it, and every
    rejected record whose content holds it (any case). The email index (``leads/store/identities.py``)
    names them: one partition query, then point reads of the person's rows. Until that index is
    complete (a store from before it, not yet through ``reindex``), every lead and rejected row is
    read once instead, page by page, and the result says so (``read_every_row``)."""
    settings = settings or get_settings()
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    needle = address.strip().casefold()
    done, now = Erased(), now or _now()
    if store.identities.built():
        for record_id, row_key, crowded, written in list(store.identities.holding(needle)):
            entity = _get(store, record_id, row_key)
            done.scanned += entity is not None
            if entity is None:
                # Its write never happened, or has not yet: a lead is written seconds after its
                # index rows, so only a row older than that is left over from a crash.
                if written is None or now - written > _IN_FLIGHT:
                    store.identities.forget_addresses(record_id, row_key, [needle])
                continue
            if not is_erased(entity) and needle not in addresses_of(entity) and not _holds(entity, needle):
                # A record that does not hold the address: a crowded record's row names many, and a
                # repeat of a lead writes rows for what it held, which its first may not. Never erase
                # a record for a row that says so; a misleading row goes (a crowded one is shared).
                if not crowded:
                    store.identities.forget_addresses(record_id, row_key, [needle])
                continue
            if is_erased(entity):  # no longer saying which addresses it held: the row goes now
                store.identities.forget_addresses(record_id, row_key, [needle])
            done.add(_erase_row(store, entity, settings, now))
    else:
        done.read_every_row = True
        query = "RowKey eq @lead or RowKey eq @rejected"
        for entity in store.leads.query_entities(
            query, parameters={"lead": LEAD_ROW, "rejected": REJECTED_ROW}, results_per_page=500
        ):
            done.scanned += 1
            if _holds(entity, needle):
                done.add(_erase_row(store, entity, settings, now))
    done.outbox_files += [name for name in _forget_outbox([("", [needle])], settings) if name not in done.outbox_files]
    return done


def _get(store: LeadStore, record_id: str, row_key: str) -> Any:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return store.leads.get_entity(record_id, row_key)
    except ResourceNotFoundError:
        return None


def apply_retention(settings: Settings | None = None, now: datetime | None = None) -> Erased:
    """Erase the personal data of leads and rejected records received more than
    ``LEADS_RETENTION_DAYS`` ago, in bounded pages, from a durable watermark on (see
    :class:`_RetentionMark`). Does nothing (no storage call) when the setting is unset."""
    settings = settings or get_settings()
    done = Erased()
    if settings.retention_days is None:
        return done
    now = now or _now()
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    mark = _RetentionMark.read(store)
    if mark.until is None:  # a new window: from the last one's end to the retention cutoff
        mark.until = now - timedelta(days=settings.retention_days)
        mark.touched, mark.opened = mark.opened, now
    query = "( RowKey eq @lead or RowKey eq @rejected ) and ReceivedAt lt @until"
    parameters: dict[str, Any] = {"lead": LEAD_ROW, "rejected": REJECTED_ROW, "until": mark.until}
    if mark.since:
        # Rows written since the last window opened are read too: a lead stored with a received
        # time already behind the watermark (a first poll of a table with history) is not missed.
        query += " and ( ReceivedAt ge @since or Timestamp ge @touched )"
        parameters.update(since=mark.since, touched=mark.touched or mark.since)
    pages = store.leads.query_entities(query, parameters=parameters, results_per_page=RETENTION_PAGE).by_page(
        continuation_token=mark.token
    )
    for _ in range(RETENTION_PAGES_PER_RUN):
        try:
            page = next(pages)
        except StopIteration:
            break
        for entity in page:
            done.scanned += 1
            if not is_erased(entity) or PENDING_INDEX_ROWS in entity:  # new, or an erasure cut short
                done.add(_erase_row(store, entity, settings, now))
        mark.token = pages.continuation_token
        if mark.token is None:
            break
        mark.write(store)  # a run that dies here resumes after this page
    if mark.token is None:  # the window is done: the next run starts where it ended
        mark.since, mark.until = mark.until, None
    mark.write(store)
    log.info(
        "retention erased %d leads and %d rejected records (%d rows read)",
        len(done.leads),
        len(done.rejected),
        done.scanned,
    )
    return done


# --- one row -------------------------------------------------------------------------------------


def _erase_row(store: LeadStore, entity: Any, settings: Settings, now: datetime) -> Erased:
    done = Erased()
    lead_id = entity["PartitionKey"]
    # Read before the row is erased: the email-index rows to delete with it (and those an erasure
    # cut short left to delete).
    pending = json.loads(entity.get(PENDING_INDEX_ROWS) or "[]")
    index_rows = sorted({*address_partitions(addresses_of(entity), every_form=True), *pending})
    if entity["RowKey"] == REJECTED_ROW:
        kept = {key: entity[key] for key in _REJECTED_KEPT if key in entity}
        erased = {
            "PartitionKey": lead_id,
            "RowKey": REJECTED_ROW,
            **kept,
            "Error": ERASED_ERROR,
            "ErasedAt": entity.get("ErasedAt") or now,
        }
        if "Size" not in erased:
            erased["Raw"] = "null"  # a marketplace row's properties: nothing of it is kept
        _write_erased(store, erased, index_rows)
        done.rejected.append(lead_id)
        log.info("content of rejected record %s erased", lead_id)
        return done
    lead = lead_from_entity(entity)
    if not is_erased(entity):
        # First what keeps the erased lead from being taken in again (an import of the Partner
        # Center download, which keeps it for six months), then what names the person.
        bury(store.identities.table, lead, now)
    if lead.channel == "http":
        _forget_content(store, lead)
    (done.already_erased if is_erased(entity) else done.leads).append(lead_id)
    values = lead.personal_values()
    blank = lead.model_copy(update={**dict.fromkeys(PERSONAL_FIELDS), "email_valid": None, "raw": None})
    erased = {
        **lead_entity(blank),
        **{key: entity[key] for key in _LEAD_KEPT if key in entity},
        "ErasedAt": entity.get("ErasedAt") or now,
    }
    _write_erased(store, erased, index_rows)
    # The digests of the email and name, personal data too, last: until then the identity row's
    # journal names the email rows, so that verify finishes an erasure that died before them.
    store.identities.forget(lead)
    for delivery in store.deliveries.for_lead(lead_id):
        changes: dict[str, Any] = {}
        if _in_flight(delivery, now):
            # Its worker may be sending it now: left to the worker, named for the operator.
            if delivery.destination != "email":
                done.sent_elsewhere.append(
                    {
                        "leadId": lead_id,
                        "destination": delivery.destination,
                        "externalId": delivery.external_id,
                        "inFlight": True,
                    }
                )
            continue
        if delivery.state in OPEN:
            changes = {
                "state": "skipped",
                "last_error": ERASED_REASON,
                "claimed_until": None,
                "next_attempt_at": None,
                "waiting_for": None,
            }
        elif delivery.last_error and delivery.last_error not in (ERASED_ERROR, ERASED_REASON):
            changes = {"last_error": ERASED_ERROR}
        if changes and store.deliveries.change(delivery, **changes) is None:
            # It moved on while we looked (a worker finished it): erase the error of what it now is.
            moved = store.deliveries.get(lead_id, delivery.destination)
            if moved and moved.last_error and moved.last_error not in (ERASED_ERROR, ERASED_REASON):
                store.deliveries.change(moved, last_error=ERASED_ERROR)
        if "state" in changes:
            done.deliveries_skipped.append(f"{lead_id}/{delivery.destination}")
        elif changes:
            done.errors_erased += 1
        if delivery.state == "delivered" and delivery.destination != "email":
            done.sent_elsewhere.append(
                {"leadId": lead_id, "destination": delivery.destination, "externalId": delivery.external_id}
            )
        elif delivery.state == "sending" and delivery.destination != "email":
            # Its worker stopped mid-send (the claim ran out): the send may have arrived.
            done.sent_elsewhere.append(
                {
                    "leadId": lead_id,
                    "destination": delivery.destination,
                    "externalId": delivery.external_id,
                    "inFlight": True,
                }
            )
    if values:
        done.outbox_files = _forget_outbox([(lead_id, values)], settings)
    log.info("personal data of lead %s erased", lead_id)  # the audit trail: the id, never the person
    return done


def _forget_content(store: LeadStore, lead: Lead) -> None:
    """Delete the content row of an HTTP lead's content (a count under a digest of the content),
    under the digest an earlier version gave it too. A later arrival of the same content builds it
    again from the leads themselves (``LeadStore._carry_forward``)."""
    from azure.core.exceptions import ResourceNotFoundError

    for partition in http_lead_id_forms(lead):
        try:
            store.leads.delete_entity(partition, CONTENT_ROW)
        except ResourceNotFoundError:
            pass


def _write_erased(store: LeadStore, erased: dict[str, Any], index_rows: list[str]) -> None:
    """Write the erased row (REPLACE drops every chunk, ``Lead1``.., ``Raw1``.., the personal row
    had), then delete its email-index rows. Until they are deleted the row names them, so that an
    erasure killed between the two is finished by the next run; then it is written without them."""
    from azure.data.tables import UpdateMode

    if index_rows:
        store.leads.upsert_entity({**erased, PENDING_INDEX_ROWS: json.dumps(index_rows)}, mode=UpdateMode.REPLACE)
        store.identities.forget_partitions(erased["PartitionKey"], erased["RowKey"], index_rows)
    store.leads.upsert_entity(erased, mode=UpdateMode.REPLACE)


def _in_flight(delivery: Delivery, now: datetime) -> bool:
    """Whether a worker holds ``delivery`` for its send now (a live claim)."""
    return delivery.state == "sending" and delivery.claimed_until is not None and delivery.claimed_until > now


def _holds(entity: Any, needle: str) -> bool:
    """Whether a lead or rejected row holds the address (its email, or anywhere in its input)."""
    if "Size" in entity:  # a refused body: match the bytes as received, as text
        body = b"".join(value for key, value in entity.items() if key.startswith("Body") and isinstance(value, bytes))
        return needle in body.decode("utf-8", "replace").casefold()
    text = " ".join(str(value) for key, value in entity.items() if key.startswith(("Lead", "Raw"))).casefold()
    # json.dumps escapes nothing in an address but '"' and '\\', which an address rarely holds
    return needle in text or json.dumps(needle)[1:-1] in text


# --- the local outbox ----------------------------------------------------------------------------


def _forget_outbox(people: Iterable[tuple[str, list[str] | None]], settings: Settings | None = None) -> list[str]:
    """Delete the ``.eml`` files of the local outbox that hold a lead's id or any of its personal
    values (a lead's own mail, a digest that lists it, an operator alert that quotes it). The
    outbox exists only in local runs without ACS; reading it is reading a folder on this disk."""
    from email import policy
    from email.parser import BytesParser

    settings = settings or get_settings()
    folder = Path(settings.email_outbox_dir or ".outbox")
    needles = set()
    for lead_id, values in people:
        if lead_id:
            needles.add(lead_id.lower())
        needles.update(value.lower() for value in values or () if len(value) >= 2)
    deleted: list[str] = []
    if not folder.is_dir():
        return deleted
    for path in sorted(folder.glob("*.eml")):
        try:
            message = BytesParser(policy=policy.default).parse(path.open("rb"))
            text = " ".join(
                [str(value) for value in message.values()]
                + [part.get_content() for part in message.walk() if part.get_content_maintype() == "text"]
            )
        except (OSError, ValueError, LookupError):
            continue
        text = text.lower()
        if any(needle in text for needle in needles):
            path.unlink(missing_ok=True)
            deleted.append(path.name)
    return deleted


# --- retention's watermark -----------------------------------------------------------------------


@dataclass
class _RetentionMark:
    """How far retention got, one row of the checkpoints table: every lead received before
    ``since`` and written before ``touched`` is erased; ``until`` and ``token`` are the window being
    worked through (its end, and where in its query the last run stopped), ``opened`` when it began."""

    since: datetime | None = None
    until: datetime | None = None
    token: dict[str, Any] | None = None
    opened: datetime | None = None
    touched: datetime | None = None

    @classmethod
    def read(cls, store: LeadStore) -> _RetentionMark:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = store.checkpoints.get_entity(*_RETENTION_KEY)
        except ResourceNotFoundError:
            return cls()
        token = json.loads(entity["Token"]) if entity.get("Token") else None
        return cls(entity.get("Since"), entity.get("Until"), token, entity.get("Opened"), entity.get("Touched"))

    def write(self, store: LeadStore) -> None:
        from azure.data.tables import UpdateMode

        row: dict[str, Any] = {
            "PartitionKey": _RETENTION_KEY[0],
            "RowKey": _RETENTION_KEY[1],
            "Token": json.dumps(self.token) if self.token else "",
        }
        times = {"Since": self.since, "Until": self.until, "Opened": self.opened, "Touched": self.touched}
        row.update({key: value for key, value in times.items() if value})
        store.checkpoints.upsert_entity(row, mode=UpdateMode.REPLACE)


def _now() -> datetime:
    return datetime.now(UTC)
