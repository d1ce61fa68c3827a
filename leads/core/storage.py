"""Clients for Azure Storage tables and queues, from a Functions-style connection setting.

A connection is named as Azure Functions names them: ``AzureWebJobsStorage`` holds either a
connection string, or nothing, with identity-based settings beside it
(``AzureWebJobsStorage__tableServiceUri``, ``__queueServiceUri`` or ``__accountName``, and
``__clientId`` for a user-assigned identity). The SDKs are imported here, when first used, so that
importing ``function_app`` stays cheap.

:func:`change_row` is the one read, change and conditional write of a row that several writers
may change at once (counters, the rate limiter's slots, alert groups); :func:`delete_row` the one
delete that says whether it found the row; :func:`read_store_once` the one resumable read of a
whole table (``reindex``, ``verify``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableEntity, TableServiceClient
    from azure.storage.queue import QueueServiceClient


# Each SDK's retry policy, set by the options it reads (``leads/core/retries.py``), so that one call
# hears of an outage in seconds rather than after the defaults' minute and more (queues: 18, 24
# and 42 s between tries) or ten retries (identity): a first try and 3 retries, waiting 0, 1 and
# 2 s (tables) or about 1.25, 1.6 and 2 s (queues, each ± 0.25 s) between them, and never past the
# deadline of the path that waits (``leads/core/deadlines.py``), which also cuts each call
# (``leads/core/http.py``).
TABLE_RETRY = {"retry_total": 3, "retry_backoff_factor": 0.5, "retry_backoff_max": 2}
QUEUE_RETRY = {"retry_total": 3, "initial_backoff": 0, "increment_base": 1.25, "random_jitter_range": 0.25}
# The managed identity's token endpoint (App Service's, on the host): one retry, at once (azure-core
# waits before the second retry only). Its policy cannot be swapped for one that stops waiting at
# the deadline (azure-identity builds it), so it has no wait to stop: a storage call retried after
# the deadline asks for a token again, and a wait there would be paid once per retry.
IDENTITY_RETRY = {"retry_total": 1}
# Seconds to connect, and to wait for the next byte. A client given a transport uses it as built
# (its own connection_timeout and read_timeout options never reach it; requests' default is 300 s),
# so the transport is given them.
TIMEOUTS = {"connection_timeout": 5, "read_timeout": 20}
IDENTITY_TIMEOUTS = {"connection_timeout": 2, "read_timeout": 5}
# Connections kept open per client: as many as the host runs invocations at once (requests keeps
# 10 by default, and discards the rest under load).
POOL_SIZE = 64


def transport(timeouts: dict[str, float] = TIMEOUTS, pool_size: int = POOL_SIZE):
    """A requests transport whose calls end by the thread's deadline (``leads/core/http.py``)."""
    from azure.core.pipeline.transport import RequestsTransport

    from leads.core.http import session

    return RequestsTransport(
        session=session(pool_size, pool_connections=4, remember=False), session_owner=True, **timeouts
    )


def identity_options() -> dict[str, Any]:
    """What every azure-identity credential of the app is built with: the retries above, and a
    transport whose calls end by the deadline, so a slow token endpoint delays no caller past it."""
    return {**IDENTITY_RETRY, "transport": transport(IDENTITY_TIMEOUTS, pool_size=4)}


class StorageNotConfigured(RuntimeError):
    """The named connection has neither a connection string nor identity-based settings."""


def _identity_credential(prefix: str):
    """One credential per connection's settings, shared by its table and queue clients: both ask
    for the same scope, so the token one fetched serves the other."""
    client_id = os.environ.get(f"{prefix}__clientId")
    managed = os.environ.get(f"{prefix}__credential", "").lower() == "managedidentity" or bool(client_id)
    return _credential(client_id, managed)


@lru_cache(maxsize=8)
def _credential(client_id: str | None, managed: bool):
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if managed:
        return ManagedIdentityCredential(client_id=client_id, **identity_options())
    return DefaultAzureCredential(**identity_options())


def _service_uri(prefix: str, service: str) -> str | None:
    uri = os.environ.get(f"{prefix}__{service}ServiceUri")
    if uri:
        return uri
    account = os.environ.get(f"{prefix}__accountName")
    if account:
        return f"https://{account}.{service}.core.windows.net"
    return None


def table_service(connection_string: str, setting_name: str = "AzureWebJobsStorage") -> TableServiceClient:
    """A table service client for a connection string, or for the identity-based settings
    named ``<setting_name>__...`` when the string is empty."""
    from leads.core.retries import DeadlineTableServiceClient

    return _service(DeadlineTableServiceClient, "table", connection_string, setting_name, TABLE_RETRY)


def queue_service(connection_string: str, setting_name: str = "AzureWebJobsStorage") -> QueueServiceClient:
    """A queue service client, resolved like :func:`table_service`."""
    from azure.storage.queue import QueueServiceClient

    from leads.core.retries import DeadlineExponentialRetry

    return _service(
        QueueServiceClient,
        "queue",
        connection_string,
        setting_name,
        {"retry_policy": DeadlineExponentialRetry(**QUEUE_RETRY)},
    )


def _service(client_class: type, service: str, connection_string: str, setting_name: str, retry: dict[str, Any]):
    options = {**retry, "transport": transport()}
    if connection_string:
        return client_class.from_connection_string(connection_string, **options)
    uri = _service_uri(setting_name, service)
    if not uri:
        raise StorageNotConfigured(
            f"{setting_name} is not set: give it a connection string, or set "
            f"{setting_name}__{service}ServiceUri (or __accountName) for a managed identity"
        )
    # Both clients take the service's URL first (``endpoint``, ``account_url``).
    return client_class(uri, credential=_identity_credential(setting_name), **options)


class RowKeptChanging(RuntimeError):
    """Other writers changed the row before every one of :func:`change_row`'s tries."""


def put_row(table: TableClient, entity: Mapping[str, Any], etag: str | None) -> Mapping[str, Any]:
    """Write ``entity`` as the row it was read as: created where none was read (``etag`` None),
    else replaced only if unchanged since. Raises ResourceExistsError or ResourceModifiedError
    (ResourceNotFoundError: deleted since) when another writer came first; returns the answer's
    metadata (its new ETag)."""
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    if etag is None:
        return table.create_entity(entity)
    condition = MatchConditions.IfNotModified
    return table.update_entity(entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=condition)


def change_row(
    table: TableClient,
    partition: str,
    row_key: str,
    change: Callable[[TableEntity | None], Mapping[str, Any] | None],
    *,
    tries: int,
    select: list[str] | None = None,
) -> Mapping[str, Any] | None:
    """Read a row, ``change(row)`` (``None`` when there is none) says what to write, and it is
    written only if nobody wrote the row in between: merged into the row under ``If-Match`` of the
    ETag that was read (Merge Entity), or inserted, which fails if another writer inserted it first
    (Insert Entity). Either refusal (412 Precondition Failed, 409 Conflict) means someone else's
    change landed: the row is read again and ``change`` asked again, so no change is lost and none
    is applied twice. (https://learn.microsoft.com/rest/api/storageservices/merge-entity,
    https://learn.microsoft.com/rest/api/storageservices/insert-entity)

    Returns what was written, or None when ``change`` returned None (nothing to write). ``select``
    limits the columns read. ``tries`` bounds the reads and writes one call may cost: each refusal
    is a write that landed, so a row refused that often is written faster than it can be read and
    written back, and wants its writers spread over more rows (as the day counters are) rather
    than more tries. Then :class:`RowKeptChanging` is raised.
    """
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
    from azure.data.tables import UpdateMode

    for _ in range(tries):
        try:
            row = table.get_entity(partition, row_key, select=select)
        except ResourceNotFoundError:
            row = None
        fields = change(row)
        if fields is None:
            return None
        entity = {"PartitionKey": partition, "RowKey": row_key, **fields}
        try:
            if row is None:
                table.create_entity(entity)
            else:
                table.update_entity(
                    entity,
                    mode=UpdateMode.MERGE,
                    etag=row.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            return fields
        except (ResourceExistsError, ResourceModifiedError):
            continue
    raise RowKeptChanging(f"the row {partition}/{row_key} of {table.table_name} kept changing over {tries} tries")


# The most operations one entity group transaction may hold.
TRANSACTION_LIMIT = 100


def change_rows(
    table: TableClient,
    partition: str,
    change: Callable[[dict[str, TableEntity]], Mapping[str, Mapping[str, Any]]],
    *,
    tries: int,
) -> None:
    """:func:`change_row` for the rows of a small partition at once: it is read in one query,
    ``change(rows)`` (row key → row) says what to write (row key → fields), and the writes go in one
    transaction per :data:`TRANSACTION_LIMIT` rows, each row merged under the ETag that was read or
    inserted. A transaction is all or nothing, so one refused row (412, 409: another writer came
    first) refuses its transaction whole: the partition is read again and ``change`` asked again for
    what is still to write. ``change`` must say nothing for a change that landed already, since an
    answer can be lost after the write. For a partition of a bounded number of rows (one an offer):
    its read grows with the partition, not with the rows changed."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ServiceResponseError
    from azure.data.tables import TableTransactionError, UpdateMode

    for _ in range(tries):
        rows = {row["RowKey"]: row for row in table.query_entities("PartitionKey eq @p", parameters={"p": partition})}
        writes = [
            ("create", entity, {})
            if key not in rows
            else (
                "update",
                entity,
                {
                    "mode": UpdateMode.MERGE,
                    "etag": rows[key].metadata["etag"],
                    "match_condition": MatchConditions.IfNotModified,
                },
            )
            for key, fields in change(rows).items()
            for entity in [{"PartitionKey": partition, "RowKey": key, **fields}]
        ]
        refused = False
        for start in range(0, len(writes), TRANSACTION_LIMIT):
            try:
                table.submit_transaction(writes[start : start + TRANSACTION_LIMIT])
            except (TableTransactionError, ResourceExistsError, ResourceModifiedError) as exc:
                if getattr(exc, "status_code", None) not in (409, 412):
                    raise
                refused = True
            except ServiceResponseError:
                refused = True  # sent, its answer lost: read again to see whether it landed
        if not refused:
            return
    raise RowKeptChanging(f"rows of {partition} in {table.table_name} kept changing over {tries} tries")


def delete_row(table: TableClient, partition: str, row_key: str, etag: str | None = None) -> bool:
    """Delete a row (only if unchanged since read, given its ``etag``); whether this call found and
    deleted it. ``TableClient.delete_entity`` returns on a 404 without saying so (azure-data-tables
    12.x, tested in tests/test_storage.py), so the delete goes as a one-operation transaction, which
    fails on a missing row and on a changed one."""
    from azure.core import MatchConditions
    from azure.data.tables import TableTransactionError

    condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
    try:
        table.submit_transaction([("delete", {"PartitionKey": partition, "RowKey": row_key}, condition)])
    except TableTransactionError as exc:
        if exc.status_code in (404, 412):
            return False
        raise
    return True


def upsert_batched(table: TableClient, entities: Iterable[Mapping[str, Any]]) -> None:
    """Upsert ``entities``, in one transaction per partition and :data:`TRANSACTION_LIMIT` rows
    (the last of two with one key wins); a lone row as a plain upsert. An upsert is the same
    however often it lands, so a transaction whose answer was lost (which the SDK does not retry)
    is sent again."""
    from azure.core.exceptions import ServiceResponseError

    partitions: dict[str, dict[str, Mapping[str, Any]]] = {}
    for entity in entities:
        partitions.setdefault(entity["PartitionKey"], {})[entity["RowKey"]] = entity
    for rows in partitions.values():
        unique = list(rows.values())
        for start in range(0, len(unique), TRANSACTION_LIMIT):
            chunk = unique[start : start + TRANSACTION_LIMIT]
            if len(chunk) == 1:
                table.upsert_entity(chunk[0])
                continue
            for attempt in range(3):
                try:
                    table.submit_transaction([("upsert", entity) for entity in chunk])
                    break
                except ServiceResponseError:
                    if attempt == 2:
                        raise


def create_batched(table: TableClient, entities: Iterable[Mapping[str, Any]]) -> None:
    """Create ``entities`` that do not exist yet, in one transaction per partition and
    :data:`TRANSACTION_LIMIT` rows; a row that exists is left as it is (a transaction fails whole
    on one, naming it: it is dropped and the rest sent again, a few times, then row by row)."""
    from azure.core.exceptions import ResourceExistsError, ServiceResponseError
    from azure.data.tables import TableTransactionError

    partitions: dict[str, dict[str, Mapping[str, Any]]] = {}
    for entity in entities:
        partitions.setdefault(entity["PartitionKey"], {}).setdefault(entity["RowKey"], entity)
    for rows in partitions.values():
        unique = list(rows.values())
        for start in range(0, len(unique), TRANSACTION_LIMIT):
            chunk = unique[start : start + TRANSACTION_LIMIT]
            for _ in range(4):
                if len(chunk) <= 1:
                    break
                try:
                    table.submit_transaction([("create", entity) for entity in chunk])
                    chunk = []
                except TableTransactionError as exc:
                    if exc.error_code != "EntityAlreadyExists" or not 0 <= exc.index < len(chunk):
                        raise
                    chunk = chunk[: exc.index] + chunk[exc.index + 1 :]
                except ServiceResponseError:
                    pass  # sent, its answer lost: what it created now exists, and is dropped below
            for entity in chunk:
                try:
                    table.create_entity(entity)
                except ResourceExistsError:
                    pass


def checkpoint_of(table: TableClient, key: tuple[str, str]) -> dict[str, Any]:
    """A checkpoint row (see :func:`read_store_once`); empty if there is none."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return dict(table.get_entity(*key))
    except ResourceNotFoundError:
        return {}


def mark_done(table: TableClient, key: tuple[str, str]) -> None:
    """Record a read of the whole store as complete (a new store has nothing from before)."""
    table.upsert_entity({"PartitionKey": key[0], "RowKey": key[1], "Done": True, "DoneAt": datetime.now(UTC)})


def read_store_once(
    leads: TableClient,
    checkpoints: TableClient,
    key: tuple[str, str],
    read_page: Callable[[list[Mapping[str, Any]]], Mapping[str, int]],
    counts: Iterable[str],
    seconds: float | None = None,
    again: bool = False,
    page: int = 1000,
) -> dict[str, Any]:
    """Hand every row of the table ``leads`` to ``read_page``, a page at a time, from start to end
    once, resuming where the last call stopped, for at most ``seconds`` (None: to the end).
    ``read_page`` returns what it did (``counts`` names the figures); the place and the totals are
    saved in the row ``key`` of ``checkpoints`` after each page, so a read cut short, or two at
    once, only repeat work. ``again``: from the start once more."""
    meta = {} if again else checkpoint_of(checkpoints, key)
    if meta.get("Done"):
        return meta
    started = time.monotonic()
    last = meta.get("ResumeFrom") or ""
    progress = {name: int(meta.get(name) or 0) for name in counts}
    query = leads.query_entities("PartitionKey ge @resume", parameters={"resume": last}, results_per_page=page)
    for entities in query.by_page():
        entities = list(entities)
        for name, count in read_page(entities).items():
            progress[name] += count
        last = entities[-1]["PartitionKey"] if entities else last
        checkpoints.upsert_entity({"PartitionKey": key[0], "RowKey": key[1], "ResumeFrom": last, **progress})
        if seconds is not None and time.monotonic() - started > seconds:
            return {"ResumeFrom": last, **progress, "Done": False}
    meta = {"ResumeFrom": last, **progress, "Done": True, "DoneAt": datetime.now(UTC)}
    checkpoints.upsert_entity({"PartitionKey": key[0], "RowKey": key[1], **meta})
    return meta
