"""The answer to a POST while storage's services fail: p50 and p99 of ``POST /api/leads`` through
``serve`` with the queue answering 503 to every write, the queue slow (2 s a call), the table
answering 503 to every write, the table slow, and the managed identity's token endpoint slow,
each beside the healthy figure, in one run (``run.py --only faults``; benchmarks/README.md).

Storage is Azurite behind the tests' loopback proxies (``tests/storage_proxy.py``), one for the
table service and one for the queue service, which play each fault until healed. The identity
rows run a second ``serve`` against an Azurite on HTTPS that takes bearer tokens, with identity-
based settings and a fake App Service identity endpoint (``tests/fake_identity.py``) whose tokens
live under five minutes, so that every storage call asks it for one: the worst case of a slow
endpoint (in Azure a token lasts hours and only its refresh waits).
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests
from common import RESULTS, Budget, Row, cost_ratio, percentile, serve_env, start_serve, stop

BUDGET_SECONDS = {"full": 600, "quick": 240}
SLOW = 2.0  # seconds a slowed call takes
# POSTs per scenario: (fast, slow) ones, full and quick. A slow scenario's POST takes up to 10 s.
POSTS = {"full": (40, 12), "quick": (10, 4)}
BOUNDS = {"queue": (3.0, {202}), "table": (10.0, {503}), "identity": (10.0, {202, 503})}


def _body(n: int) -> bytes:
    return json.dumps(
        {
            "UserDetails": {
                "FirstName": "Bench",
                "LastName": f"Fault{n}",
                "Company": "Contoso",
                "Email": f"bench.fault{n}.{uuid.uuid4().hex[:6]}@contoso.example.com",
            },
            "LeadSource": "SPZA-PLT|contoso.crm",
        }
    ).encode()


def _posts(url: str, count: int, budget: Budget) -> tuple[list[float], Counter[int]]:
    """``count`` sequential POSTs of new leads: their answer times and statuses."""
    import time

    times, statuses = [], Counter()
    with requests.Session() as session:
        for n in range(count):
            if budget.over():
                break
            started = time.perf_counter()
            response = session.post(
                f"{url}/api/leads", data=_body(n), headers={"Content-Type": "application/json"}, timeout=120
            )
            times.append(time.perf_counter() - started)
            statuses[response.status_code] += 1
    return times, statuses


def _row(
    metric: str, times: list[float], statuses: Counter[int], healthy: list[float], bound: tuple | None, fraction: float
) -> Row:
    ours, base = (percentile(times, fraction) if times else None), (percentile(healthy, fraction) if healthy else None)
    goal, met = "", None
    if bound is not None:
        seconds, wanted = bound
        goal = f"{'/'.join(map(str, sorted(wanted)))} ≤ {seconds:g} s"
        met = bool(times) and max(times) <= seconds and set(statuses) <= wanted
    note = ", ".join(f"{count}× {status}" for status, count in sorted(statuses.items())) + f" of {len(times)} POSTs"
    return Row("faults", metric, ours, "s", base, cost_ratio(ours, base), goal, met, note)


def _scenarios(proxies: dict[str, Any]) -> list[tuple[str, str, Callable[[], None]]]:
    table, queue = proxies["table"], proxies["queue"]
    return [
        ("queue answering 503", "queue", queue.refuse),
        (f"queue slow ({SLOW:g} s a call)", "queue", lambda: queue.slow(SLOW)),
        ("table answering 503", "table", table.refuse),
        (f"table slow ({SLOW:g} s a call)", "table", lambda: table.slow(SLOW)),
    ]


def run(quick: bool, budget: Budget) -> tuple[list[Row], dict]:
    from leads.local.azurite import Azurite
    from tests.fake_webhook import FakeWebhook
    from tests.storage_proxy import StorageProxy

    fast, slow = POSTS["quick" if quick else "full"]
    rows: list[Row] = []
    details: dict[str, Any] = {}
    with ExitStack() as stack:
        azurite = stack.enter_context(Azurite())
        proxies = {
            "table": stack.enter_context(StorageProxy(azurite.table_port)),
            "queue": stack.enter_context(StorageProxy(azurite.queue_port, "queue")),
        }
        webhook = stack.enter_context(FakeWebhook())
        outbox = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-outbox-"))
        connection = proxies["queue"].connection_string(azurite, proxies["table"].connection_string(azurite))
        env = {
            **serve_env(connection, uuid.uuid4().hex[:8], outbox),
            "WEBHOOK_URL": webhook.url,
            "WEBHOOK_SECRET": webhook.secret,
            "EMAIL_TO": "",
        }
        process, url = start_serve(env, RESULTS / "faults-serve.log", budget)
        try:
            _posts(url, 5, budget)  # warm: imports, connections, tables and queue made
            healthy, statuses = _posts(url, fast, budget)
            details["healthy"] = {"seconds": healthy, "statuses": dict(statuses)}
            rows += [
                _row(f"POST answer, healthy: {p}", healthy, statuses, healthy, None, f)
                for p, f in (("p50", 0.5), ("p99", 0.99))
            ]
            for name, service, fault in _scenarios(proxies):
                fault()
                times, statuses = _posts(url, slow if "slow" in name or service == "table" else fast, budget)
                for proxy in proxies.values():
                    proxy.heal()
                details[name] = {"seconds": times, "statuses": dict(statuses)}
                rows += [
                    _row(f"POST answer, {name}: {p}", times, statuses, healthy, BOUNDS[service], f)
                    for p, f in (("p50", 0.5), ("p99", 0.99))
                ]
        finally:
            stop(process)
    rows += _identity_rows(fast, slow, budget, details)
    details["note"] = "p99 of so few POSTs is their largest; healthy figures are the baseline column"
    return rows, details


def _identity_rows(fast: int, slow: int, budget: Budget, details: dict[str, Any]) -> list[Row]:
    """The same POSTs with identity-based storage: the token endpoint fast, then slow."""
    import trustme

    from leads.local.azurite import ACCOUNT, Azurite
    from tests.fake_identity import FakeIdentity

    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-tls-")))
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(folder / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
        ca.cert_pem.write_to_path(str(folder / "ca.pem"))
        azurite = stack.enter_context(Azurite(cert=folder / "cert.pem", key=folder / "key.pem", oauth=True))
        identity = stack.enter_context(FakeIdentity(token_lifetime=240))
        env = {
            **serve_env("", uuid.uuid4().hex[:8], str(folder)),
            **identity.host_environment(),
            "AzureWebJobsStorage__tableServiceUri": f"https://127.0.0.1:{azurite.table_port}/{ACCOUNT}",
            "AzureWebJobsStorage__queueServiceUri": f"https://127.0.0.1:{azurite.queue_port}/{ACCOUNT}",
            "AzureWebJobsStorage__credential": "managedidentity",
            "REQUESTS_CA_BUNDLE": str(folder / "ca.pem"),
            "NO_PROXY": "127.0.0.1,localhost",
            "EMAIL_TO": "",
            "WEBHOOK_URL": "",
            "WEBHOOK_SECRET": "",
        }
        process, url = start_serve(env, RESULTS / "faults-identity-serve.log", budget)
        try:
            _posts(url, 5, budget)
            fast_times, fast_statuses = _posts(url, fast, budget)
            identity.latency = SLOW
            slow_times, slow_statuses = _posts(url, slow, budget)
        finally:
            stop(process)
    name = f"identity endpoint slow ({SLOW:g} s a token, one per call)"
    details["identity, fast"] = {"seconds": fast_times, "statuses": dict(fast_statuses)}
    details[name] = {"seconds": slow_times, "statuses": dict(slow_statuses), "token requests": identity.requests}
    rows = [
        _row(f"POST answer, identity-based storage: {p}", fast_times, fast_statuses, fast_times, None, f)
        for p, f in (("p50", 0.5), ("p99", 0.99))
    ]
    return rows + [
        _row(f"POST answer, {name}: {p}", slow_times, slow_statuses, fast_times, BOUNDS["identity"], f)
        for p, f in (("p50", 0.5), ("p99", 0.99))
    ]
