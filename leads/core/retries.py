"""The storage SDKs' retry policies, waiting between tries no longer than the caller's deadline.

Each SDK reads its own retry options (read in their source, azure-core 1.41, azure-data-tables
12.7, azure-storage-queue 12.18, on 2026-12-07; ``tests/test_retry_policies.py`` reads the policies
back from the clients the app builds):

- **Tables**: azure-core's ``RetryPolicy`` (as ``TablesRetryPolicy``) reads ``retry_total``,
  ``retry_backoff_factor`` and ``retry_backoff_max``: no wait before the first retry, then
  ``factor * 2 ** (n - 1)``; a ``Retry-After`` is waited as long as it says.
- **Queues**: its own ``ExponentialRetry``, which reads none of those, but ``initial_backoff``,
  ``increment_base``, ``random_jitter_range`` and ``retry_total``: it waits ``initial_backoff +
  increment_base ** n`` before retry n, by default 18, 24 and 42 s (each ± 3 s), so one refused
  ``send_message`` took over a minute.

The waits happen in the policy (``transport.sleep``), outside any HTTP call, so a deadline that
cuts calls (``leads/core/http.py``) does not end them: these subclasses wait at most what is left of
the thread's deadline, and once it has passed each retry fails at once, without a request. The
policies are swapped in where each SDK builds them: the queue client takes ``retry_policy``; the
table client builds its own in ``_configure_policies`` (which its table clients share), so
:class:`DeadlineTableServiceClient` replaces it there.
"""

from __future__ import annotations

from typing import Any

from azure.data.tables import TableServiceClient
from azure.data.tables._policies import TablesRetryPolicy
from azure.storage.queue import ExponentialRetry

from leads.core.http import remaining


def _wait(transport: Any, seconds: float) -> None:
    seconds = min(seconds, remaining())
    if seconds > 0:
        transport.sleep(seconds)


class DeadlineTablesRetry(TablesRetryPolicy):
    """The Tables SDK's policy; its wait (``Retry-After``, or the backoff) ends by the deadline."""

    def sleep(self, settings: dict[str, Any], transport: Any, response: Any = None) -> None:
        _wait(transport, (self.get_retry_after(response) if response else None) or self.get_backoff_time(settings))


class DeadlineExponentialRetry(ExponentialRetry):
    """The Queues SDK's policy; its backoff ends by the deadline."""

    def sleep(self, settings: dict[str, Any], transport: Any) -> None:
        _wait(transport, self.get_backoff_time(settings))


class DeadlineTableServiceClient(TableServiceClient):
    """A table service client (and its table clients) retrying by :class:`DeadlineTablesRetry`."""

    def _configure_policies(self, *, audience: str | None = None, **kwargs: Any) -> list[Any]:
        return [
            DeadlineTablesRetry(**kwargs) if isinstance(policy, TablesRetryPolicy) else policy
            for policy in super()._configure_policies(audience=audience, **kwargs)
        ]
