"""Every SDK client the app builds retries as little as a caller can wait for, read back from the
client itself, not from the options the app passes.

Each SDK reads its own options (``leads/core/retries.py``): the Storage Queues SDK ignores azure-core's
``retry_backoff_factor`` and waited 18, 24 and 42 s (± 3 s) between its tries by default; a client
given a transport ignores its own ``connection_timeout``/``read_timeout`` (the transport kept
requests' 300 s); azure-identity's credentials retry 10 times, waiting up to 2 minutes. So each
client's pipeline is taken from the built client and its retry policy run against a service that answers 503 every time:
the tries it makes and the waits it asks for are what the SDK will really do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
from azure.core.pipeline import PipelineContext, PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import RetryPolicy
from azure.core.rest import HttpRequest
from azure.storage.queue._shared.policies import StorageRetryPolicy

from leads.core import http
from leads.core import storage as storage_module
from leads.core.storage import queue_service, table_service
from leads.delivery.queue import DeliveryQueue
from leads.destinations import email as email_module
from leads.destinations.dynamics import DynamicsDestination
from leads.local.azurite import connection_string

CONNECTION = connection_string(9, 9, 9)  # nothing is sent: the policies are run against a fake below
ACS = "endpoint=https://contoso.communication.azure.com/;accesskey=YWJj"


@pytest.fixture(autouse=True)
def _on_app_service(monkeypatch):
    """As on App Service and Functions: the host's identity endpoint (loopback, never called)."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://127.0.0.1:9/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "secret")
    storage_module._credential.cache_clear()
    yield
    storage_module._credential.cache_clear()


def pipeline_of(client):
    """The azure-core pipeline a client or credential sends through."""
    for path in ("_client._client._pipeline", "_client._pipeline", "_pipeline", "_credential._client._pipeline"):
        found = client
        try:
            for name in path.split("."):
                found = getattr(found, name)
        except AttributeError:
            continue
        return found
    raise AssertionError(f"no pipeline found in {type(client).__name__}")


def default_credentials_managed_identity():
    credential = storage_module._credential(None, False)  # DefaultAzureCredential: its managed identity
    return next(c for c in credential.credentials if type(c).__name__ == "ManagedIdentityCredential")


CLIENTS = {
    "table service": lambda: table_service(CONNECTION),
    "table": lambda: table_service(CONNECTION).get_table_client("Leads"),
    "queue service": lambda: queue_service(CONNECTION),
    "delivery queue": lambda: DeliveryQueue(CONNECTION, "leads-deliveries").client,
    "storage identity (user-assigned)": lambda: storage_module._credential(
        "00000000-0000-0000-0000-000000000001", True
    ),
    "storage identity (default credential)": default_credentials_managed_identity,
    "ACS email identity": lambda: email_module._identity_credential(),
    "ACS email": lambda: email_module._acs_client(ACS, "", 5.0, 20.0),
    "Dynamics identity": lambda: DynamicsDestination(
        "https://contoso.crm.dynamics.com", "t", "c", "", timeout=10.0
    )._managed_identity(),
}
# What each may cost when every try fails: tries, seconds waited between them (at most), and the
# transport's connect and read timeouts. Storage's waits also end at the caller's deadline.
BOUNDS = {
    "table service": (4, 3.0, (5, 20)),
    "table": (4, 3.0, (5, 20)),
    "queue service": (4, 6.0, (5, 20)),
    "delivery queue": (4, 6.0, (5, 20)),
    "storage identity (user-assigned)": (2, 0.0, (2, 5)),
    "storage identity (default credential)": (2, 0.0, (2, 5)),
    "ACS email identity": (2, 0.0, (2, 5)),
    "ACS email": (1, 0.0, (5, 20)),
    "Dynamics identity": (2, 0.0, (10, 10)),
}
DEADLINE_AWARE = {"table service", "table", "queue service", "delivery queue"}


@dataclass
class _Busy:
    """The rest of the pipeline, as a service answering 503 Server Busy to every try."""

    tries: int = 0

    def send(self, request: PipelineRequest) -> PipelineResponse:
        self.tries += 1
        return PipelineResponse(request.http_request, _Answer(request.http_request), request.context)


@dataclass
class _Answer:
    request: HttpRequest
    status_code: int = 503
    headers: dict = field(default_factory=dict)
    reason: str = "Server Busy"


class _Clock:
    """The transport the policy sleeps on: records each wait; sleeps it only when ``real``."""

    def __init__(self, transport, real: bool = False) -> None:
        self.connection_config = getattr(transport, "connection_config", None)
        self.waits: list[float] = []
        self.real = real

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.real:
            time.sleep(seconds)


def retry_policy(pipeline):
    policies = [p for p in pipeline._impl_policies if isinstance(p, RetryPolicy | StorageRetryPolicy)]
    assert len(policies) == 1, [type(p).__name__ for p in pipeline._impl_policies]
    return policies[0]


def transport_of(pipeline):
    transport = pipeline._transport
    return getattr(transport, "_transport", transport)  # under a sub-client's TransportWrapper


def run_busy(policy, clock: _Clock) -> int:
    """Run the policy against the busy service; the tries it made."""
    busy = _Busy()
    policy.next = busy
    request = PipelineRequest(HttpRequest("PUT", "https://127.0.0.1:9/devstoreaccount1/t"), PipelineContext(clock))
    policy.send(request)
    return busy.tries


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_each_client_retries_a_busy_service_briefly_and_its_calls_end_by_the_deadline(name):
    tries, waited, (connect, read) = BOUNDS[name]
    pipeline = pipeline_of(CLIENTS[name]())
    policy, transport = retry_policy(pipeline), transport_of(pipeline)
    for _ in range(10):  # the queue policy's waits are random (± its jitter): its largest of 10 runs
        clock = _Clock(transport)
        assert run_busy(policy, clock) == tries
        assert sum(clock.waits) <= waited, clock.waits
    config = transport.connection_config
    assert (config.timeout, config.read_timeout) == (connect, read)
    # Its calls are cut at the deadline of the path that waits (leads/core/http.py).
    assert isinstance(transport.session.get_adapter("https://contoso.example/"), http.DeadlineAdapter)


@pytest.mark.parametrize("name", sorted(DEADLINE_AWARE))
def test_a_storage_client_waits_between_tries_no_longer_than_the_deadline(name):
    policy = retry_policy(pipeline_of(CLIENTS[name]()))
    policy.retry_after = None
    clock = _Clock(None, real=True)
    with http.deadline(0.3):
        run_busy(policy, clock)
    assert sum(clock.waits) <= 0.3 + 0.05, clock.waits  # its own waits are seconds (above)


def test_the_storage_clients_of_one_connection_share_one_identity():
    # One token serves tables and queues alike (the same scope): a slow token endpoint is waited
    # for once, not once per client.
    settings = {"AzureWebJobsStorage__accountName": "contoso", "AzureWebJobsStorage__credential": "managedidentity"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in settings.items():
            patch.setenv(key, value)
        tables, queues = table_service(""), queue_service("")
    assert tables.credential is queues.credential
