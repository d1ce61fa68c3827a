"""The marketplace table poll: take in every row the marketplace writes, once.

Azure Functions has no table trigger, so a timer calls :func:`poll_marketplace`. Each poll reads
every row whose server-set ``Timestamp`` is at or after the watermark less an overlap window
(Timestamps of concurrent writers do not arrive in order), through every page, and stores each as a
lead whose id comes from the row's identity, so a row read twice is stored once. The watermark is a
row in the app's own checkpoints table; it moves only after every row read was stored, and only
with a conditional (ETag) write, so two polls racing cannot move it back or past a row.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from threading import Lock
from typing import Any

from .deliver import enqueue
from .normalise import LeadValidationError, from_table_entity, table_lead_id
from .routing import plan
from .settings import Settings, get_settings
from .storage import table_service
from .store import LeadStore

log = logging.getLogger(__name__)

CHECKPOINT_PARTITION = "marketplace-poll"
_WORKERS = 8


@dataclass
class PollResult:
    read: int = 0
    stored: int = 0
    already_stored: int = 0
    rejected: int = 0
    table_missing: bool = False
    watermark: datetime | None = None


def poll_marketplace(settings: Settings | None = None) -> PollResult:
    """Read the marketplace table from the checkpoint on and store every new row."""
    settings = settings or get_settings()
    store = LeadStore.from_settings(settings)
    store.ensure_tables()
    source = marketplace_table(settings)
    checkpoint = Checkpoint(store, settings.marketplace_table_name)
    watermark = checkpoint.read()
    overlap = timedelta(minutes=settings.poll_overlap_minutes)

    result = PollResult(watermark=watermark)
    rows = source.query_entities("Timestamp ge @since", parameters={"since": watermark - overlap}) \
        if watermark else source.list_entities()  # fmt: skip
    from azure.core.exceptions import ResourceNotFoundError

    newest = watermark
    try:
        with ThreadPoolExecutor(_WORKERS) as pool:
            # Rows are stored as they stream in, page after page; map() re-raises the first failure.
            for outcome, timestamp in pool.map(lambda row: _take_in(store, row, settings), rows):
                result.read += 1
                setattr(result, outcome, getattr(result, outcome) + 1)
                if newest is None or timestamp > newest:
                    newest = timestamp
    except ResourceNotFoundError:
        # The marketplace creates its table with the first lead it writes: nothing to do yet.
        result.table_missing = True
        return result
    if newest is not None and newest != watermark:
        result.watermark = checkpoint.advance(newest)
    log.info(
        "poll of %s: read %d, stored %d, already stored %d, rejected %d",
        settings.marketplace_table_name, result.read, result.stored, result.already_stored, result.rejected,
    )  # fmt: skip
    return result


def _take_in(store: LeadStore, entity: Any, settings: Settings) -> tuple[str, datetime]:
    timestamp: datetime = entity.metadata["timestamp"]
    row = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"], "Timestamp": timestamp.isoformat()}
    row.update((key, value) for key, value in entity.items() if key not in row)
    table = settings.marketplace_table_name
    lead_id = table_lead_id(table, row["PartitionKey"], row["RowKey"])
    if _recently_stored.contains(lead_id):
        return "already_stored", timestamp
    try:
        lead = from_table_entity(row, table, received_at=timestamp)
    except LeadValidationError as exc:
        store.reject(lead_id, str(exc), row, received_at=timestamp)
        log.warning("marketplace row taken in as rejected lead %s: %s", lead_id, exc)
        _recently_stored.add(lead_id)
        return "rejected", timestamp
    deliveries = plan(lead, settings)
    stored = store.add(lead, deliveries)
    _recently_stored.add(lead_id)
    if not stored.duplicate:
        enqueue(lead_id, deliveries, settings)
    return ("already_stored" if stored.duplicate else "stored"), timestamp


def marketplace_table(settings: Settings):
    if settings.marketplace_table_connection:
        service = table_service(settings.marketplace_table_connection, "MARKETPLACE_TABLE_CONNECTION")
    else:
        service = LeadStore.from_settings(settings).service
    return service.get_table_client(settings.marketplace_table_name)


class Checkpoint:
    """The poll's watermark for one marketplace table, moved only forward and only with a
    conditional write: of two polls racing, the later writer re-reads and keeps the newer mark."""

    def __init__(self, store: LeadStore, table_name: str) -> None:
        self.table = store.checkpoints
        self.key = {"PartitionKey": CHECKPOINT_PARTITION, "RowKey": table_name}
        self._etag: str | None = None

    def read(self) -> datetime | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.table.get_entity(self.key["PartitionKey"], self.key["RowKey"])
        except ResourceNotFoundError:
            self._etag = None
            return None
        self._etag = entity.metadata["etag"]
        return entity["Watermark"]

    def advance(self, watermark: datetime) -> datetime:
        """Move the watermark to ``watermark`` unless another poll moved it further."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        for _ in range(10):
            entity = {**self.key, "Watermark": watermark}
            try:
                if self._etag is None:
                    self.table.create_entity(entity)
                else:
                    self.table.update_entity(entity, mode=UpdateMode.REPLACE, etag=self._etag,
                                             match_condition=MatchConditions.IfNotModified)  # fmt: skip
                return watermark
            except (ResourceExistsError, ResourceModifiedError):
                current = self.read()
                if current is not None and current >= watermark:
                    return current
        raise RuntimeError("the poll checkpoint kept changing under this poll")


class _RecentLeadIds:
    """Lead ids this process stored or saw stored, so that rows the overlap window reads again
    cost no write. Only a saving: the store's insert-if-absent is what makes a re-read harmless."""

    def __init__(self, size: int = 200_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = Lock()

    def contains(self, lead_id: str) -> bool:
        with self._lock:
            return lead_id in self._ids

    def add(self, lead_id: str) -> None:
        with self._lock:
            self._ids[lead_id] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._ids.clear()


_recently_stored = _RecentLeadIds()
