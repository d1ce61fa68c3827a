"""Clients for Azure Storage tables and queues, from a Functions-style connection setting.

A connection is named as Azure Functions names them: ``AzureWebJobsStorage`` holds either a
connection string, or nothing, with identity-based settings beside it
(``AzureWebJobsStorage__tableServiceUri``, ``__queueServiceUri`` or ``__accountName``, and
``__clientId`` for a user-assigned identity). The SDKs are imported here, when first used, so that
importing ``function_app`` stays cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.data.tables import TableServiceClient


# The SDKs' own retry policy, bounded so that a caller waiting on an answer (the marketplace's POST)
# hears of a storage outage in seconds rather than after the default ten retries.
RETRY_OPTIONS = {"retry_total": 3, "retry_backoff_factor": 0.5, "connection_timeout": 5, "read_timeout": 20}
# Connections kept open per client: as many as the host runs invocations at once (requests keeps
# 10 by default, and discards the rest under load).
POOL_SIZE = 64


def _client_options() -> dict:
    import requests
    from azure.core.pipeline.transport import RequestsTransport

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return {**RETRY_OPTIONS, "transport": RequestsTransport(session=session, session_owner=True)}


class StorageNotConfigured(RuntimeError):
    """The named connection has neither a connection string nor identity-based settings."""


def _identity_credential(prefix: str):
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    client_id = os.environ.get(f"{prefix}__clientId")
    if os.environ.get(f"{prefix}__credential", "").lower() == "managedidentity" or client_id:
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential()


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
    from azure.data.tables import TableServiceClient

    if connection_string:
        return TableServiceClient.from_connection_string(connection_string, **_client_options())
    uri = _service_uri(setting_name, "table")
    if not uri:
        raise StorageNotConfigured(
            f"{setting_name} is not set: give it a connection string, or set "
            f"{setting_name}__tableServiceUri (or __accountName) for a managed identity"
        )
    return TableServiceClient(endpoint=uri, credential=_identity_credential(setting_name), **_client_options())


def queue_service(connection_string: str, setting_name: str = "AzureWebJobsStorage"):
    """A queue service client, resolved like :func:`table_service`."""
    from azure.storage.queue import QueueServiceClient

    if connection_string:
        return QueueServiceClient.from_connection_string(connection_string, **_client_options())
    uri = _service_uri(setting_name, "queue")
    if not uri:
        raise StorageNotConfigured(
            f"{setting_name} is not set: give it a connection string, or set "
            f"{setting_name}__queueServiceUri (or __accountName) for a managed identity"
        )
    return QueueServiceClient(account_url=uri, credential=_identity_credential(setting_name), **_client_options())
