"""What every benchmark shares: paths, the time bound, the table's rows and how it is printed, CPU
and storage-request meters, the app's settings in this process, the app's own writes done with the
bare SDKs (the baseline of the intake benchmarks), and ``serve`` started as a process.

A benchmark module imports what it needs from here; ``run.py`` runs the modules and prints one
table. Azurite itself comes from ``leads.local.azurite`` (in memory, free ports), as in the tests.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (str(REPO), str(HERE)):  # the app's packages, tests/ fakes and leadgen.py importable
    if _path not in sys.path:
        sys.path.insert(0, _path)

RESULTS = HERE / "results"
PYTHON = sys.executable


# --- the time bound ----------------------------------------------------------------------------------


class Budget:
    """A benchmark's time bound: loops ask ``over()`` and stop early (the result says so)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.cut_short = False

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def over(self) -> bool:
        if time.monotonic() > self.deadline:
            self.cut_short = True
        return self.cut_short


# --- results ---------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table. ``ratio`` is always ours' cost over the baseline's (time over time,
    or baseline rate over our rate): above 1 means ours is slower."""

    benchmark: str
    metric: str
    ours: float | None
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""


def cost_ratio(ours: float | None, baseline: float | None, rate: bool = False) -> float | None:
    if not ours or not baseline:
        return None
    return baseline / ours if rate else ours / baseline


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "us":
        return f"{value:.1f} µs"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "req/lead":
        return f"{value:.4f}"
    if unit == "rows":
        return f"{value:.2f}"
    return f"{value:g} {unit}".strip()


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of a process; this one's when ``pid`` is None.
    Linux /proc; 0.0 where that is not available (the CPU rows then read 0)."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class CpuMeter:
    """CPU seconds spent by some processes over the sections measured with it."""

    def __init__(self, **pids: int | None) -> None:
        self.pids = pids
        self.spent = dict.fromkeys(pids, 0.0)

    @contextmanager
    def measuring(self):
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        try:
            yield
        finally:
            for name, pid in self.pids.items():
                self.spent[name] += cpu_seconds(pid) - before[name]


def print_table(rows: list[Row]) -> None:
    """The rows as one table, the benchmark's name on its first row only."""
    header = ["benchmark", "metric", "ours", "baseline", "ratio", "goal", "met?", "note"]
    lines = []
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "NO")
        lines.append(
            [
                row.benchmark,
                row.metric,
                fmt(row.ours, row.unit),
                fmt(row.baseline, row.unit),
                f"{row.ratio:.2f}×" if row.ratio is not None else "",
                row.goal,
                met,
                row.note,
            ]
        )
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header) - 1)]
    align = ["<", "<", ">", ">", ">", "<", "<"]

    def render(cells: list[str]) -> str:
        return (
            " | ".join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths, strict=False)) + " | " + cells[-1]
        )

    print(render(header))
    print("-+-".join("-" * w for w in widths) + "-+-" + "-" * 20)
    previous = None
    for row, cells in zip(rows, lines, strict=True):
        if row.benchmark == previous:
            cells = ["", *cells[1:]]  # the benchmark's name once, on its first line
        elif previous is not None:
            print("-+-".join("-" * w for w in widths) + "-+-")
        previous = row.benchmark
        print(render(cells))


# --- storage: request counting, bare writes, the app's writes ------------------------------------


class RequestCounter:
    """Counts the storage SDKs' HTTP requests at the transport (benchmark instrumentation only),
    by service (from the port), method and status."""

    def __init__(self, ports: dict[int, str] | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.rows = 0  # table rows the answers to GETs carried (a query's page, or one entity)
        self.ports = ports or {}
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def describe(self) -> str:
        return "; ".join(f"{call} ×{count:,}" for call, count in sorted(self.calls.items()))

    @contextmanager
    def counting(self):
        from urllib.parse import urlsplit

        from azure.core.pipeline.transport import RequestsTransport

        original = RequestsTransport.send
        counter = self

        def send(transport, request, **kwargs):
            response = original(transport, request, **kwargs)
            service = counter.ports.get(urlsplit(request.url).port, "")
            rows = 0
            if (
                request.method == "GET"
                and response.status_code == 200
                and "json" in response.headers.get("Content-Type", "")
            ):
                body = response.internal_response.json()
                rows = len(body["value"]) if "value" in body else 1
            with counter._lock:
                counter.calls[f"{service} {request.method} {response.status_code}".strip()] += 1
                counter.rows += rows
            return response

        RequestsTransport.send = send
        try:
            yield self
        finally:
            RequestsTransport.send = original


def ports(azurite) -> dict[int, str]:
    return {azurite.table_port: "table", azurite.queue_port: "queue", azurite.blob_port: "blob"}


def bare_table(connection: str, name: str):
    from azure.data.tables import TableServiceClient

    service = TableServiceClient.from_connection_string(connection)
    service.create_table(name)
    return service.get_table_client(name)


def bare_queue(connection: str, name: str):
    from azure.storage.queue import QueueClient, TextBase64EncodePolicy

    queue = QueueClient.from_connection_string(connection, name, message_encode_policy=TextBase64EncodePolicy())
    queue.create_queue()
    return queue


@contextmanager
def app_environment(env: dict[str, str]):
    """The app's settings as ``env`` gives them, in this process, for the duration."""
    from leads.core.settings import get_settings

    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield get_settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


@dataclass
class LeadWrites:
    """What the app writes to storage for one new lead: the lead entity, the delivery rows beside
    it (one transaction with the lead when there are any), and one queue message per delivery."""

    entity: dict[str, Any]
    delivery_rows: list[dict[str, Any]]
    messages: list[str]


def app_writes(leads: list, env: dict[str, str]) -> list[LeadWrites]:
    """For each lead, the writes the app makes, built with the app's own helpers (so their shape
    and size are the app's). Without a delivery layer, the lead entity alone."""
    from leads.store.rows import lead_entity

    try:
        from leads.delivery.queue import DeliveryMessage
        from leads.destinations.routing import plan
        from leads.store.deliveries import new_delivery_entity
    except ImportError:
        return [LeadWrites(lead_entity(lead), [], []) for lead in leads]
    now = datetime.now(UTC)
    writes = []
    with app_environment(env) as settings:
        for lead in leads:
            deliveries = plan(lead, settings)
            writes.append(
                LeadWrites(
                    lead_entity(lead),
                    [new_delivery_entity(lead.lead_id, name, route, now) for name, route in deliveries.items()],
                    [DeliveryMessage(lead.lead_id, name).to_json() for name in deliveries],
                )
            )
    return writes


def write_like_the_app(table, queue, writes: LeadWrites) -> None:
    """The app's writes for one lead, with the bare SDKs."""
    if writes.delivery_rows:
        table.submit_transaction([("create", writes.entity)] + [("create", row) for row in writes.delivery_rows])
    else:
        table.create_entity(writes.entity)
    for message in writes.messages:
        queue.send_message(message, time_to_live=-1)


# --- the app in this process, and ``serve`` as a process -------------------------------------------


def app_env(connection: str, tag: str) -> dict[str, str]:
    """The app's storage settings: Azurite, with tables and queue named for this run (``tag``)."""
    return {
        "AzureWebJobsStorage": connection,
        "LEADS_TABLE_PREFIX": f"Bench{tag}",
        "MARKETPLACE_TABLE_CONNECTION": "",
        "MARKETPLACE_TABLE_NAME": f"Market{tag}",
        "LEADS_DELIVERY_QUEUE": f"bench-{tag}",
    }


def serve_env(connection: str, tag: str, outbox: str) -> dict[str, str]:
    """``app_env`` with the timers silenced and mail kept in ``outbox``."""
    return {
        **app_env(connection, tag),
        # The timers would poll or sweep mid-measurement; here they fire once a year.
        "LEADS_POLL_SCHEDULE": "0 0 0 1 1 *",
        "LEADS_SWEEP_SCHEDULE": "0 0 0 1 1 *",
        "LEADS_VERIFY_SCHEDULE": "0 0 0 1 1 *",
        # Mail the app writes without ACS goes to a temporary folder, not into the repo.
        "EMAIL_OUTBOX_DIR": outbox,
    }


def start_serve(env: dict[str, str], log_path: Path, budget: Budget) -> tuple[subprocess.Popen, str]:
    """``python -m leads serve`` on a free port with ``env`` (and the repo's host.json, as in Azure);
    returns the process and its URL once ``GET /api/health`` answers 200. Its output goes to ``log_path``."""
    import requests

    from leads.local.azurite import free_port

    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [PYTHON, "-m", "leads", "--settings", "/nonexistent", "serve", "--port", str(port)],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + min(60, max(10, budget.left()))
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/api/health", timeout=5).status_code == 200:
                return process, url
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            stop(process)
            raise TimeoutError(f"serve did not answer GET /api/health with 200: {log_path.read_text()[-2000:]}")
        time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (serve's graceful stop), then SIGKILL if it has not ended within 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
