"""The app's benchmarks, side by side with their baselines, in one run: ``make bench``.

    .venv/bin/python benchmarks/run.py [--quick] [--only NAME[,NAME]] [--json PATH]

Benchmarks (names for ``--only``): ``cold_start``, ``normalise``, ``http``, ``drain``. Each one is
bounded in time and starts (and stops) its own in-memory Azurite on free ports. The figures are
printed as one table and written to ``benchmarks/results/latest.json``. See benchmarks/README.md for
what is measured against what, and why.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

import leadgen  # noqa: E402  (benchmarks/leadgen.py)

RESULTS = HERE / "results"
PYTHON = sys.executable


# --- sizes and time bounds --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    cold_runs: int = 15
    normalise_leads: int = 20_000
    normalise_repeats: int = 5
    http_posts: int = 2_000
    http_concurrent_posts: int = 1_000
    http_threads: int = 8
    drain_rows: int = 10_000
    drain_threads: int = 8
    notify_leads: int = 200
    webhook_leads: int = 1_000
    crm_leads: int = 200
    # seconds each benchmark may take before it stops where it is and reports what it measured
    budget: dict[str, float] = field(
        default_factory=lambda: {"cold_start": 40, "normalise": 50, "http": 150, "drain": 110, "notify": 200,
                                 "webhook": 120, "crm": 200}  # fmt: skip
    )


FULL = Sizes()
QUICK = Sizes(
    cold_runs=7,
    normalise_leads=5_000,
    normalise_repeats=2,
    http_posts=300,
    http_concurrent_posts=160,
    drain_rows=1_500,
    notify_leads=40,
    webhook_leads=200,
    crm_leads=60,
    budget={"cold_start": 15, "normalise": 15, "http": 22, "drain": 30, "notify": 90, "webhook": 40, "crm": 80},
)


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


def _ratio(ours: float | None, baseline: float | None, rate: bool = False) -> float | None:
    if not ours or not baseline:
        return None
    return baseline / ours if rate else ours / baseline


def _fmt(value: float | None, unit: str) -> str:
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


# --- 1. cold start -----------------------------------------------------------------------------------

_TIMED_IMPORT = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def bench_cold_start(sizes: Sizes, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    """``import function_app`` against ``import azure.functions`` alone, each in a fresh process.

    Primary figure: the import timed inside the child (perf_counter around the import statement).
    The interpreter's own start-up is identical for both and is not what the app controls, so
    leaving it out keeps the ratio about the import. Process wall time (less a bare ``python -c
    pass``) is reported beside it as a check. Runs alternate, so drift hits both alike."""
    kinds = {
        "pass": "pass",
        "azure.functions": _TIMED_IMPORT.format(module="azure.functions"),
        "function_app": _TIMED_IMPORT.format(module="function_app"),
    }
    inside: dict[str, list[float]] = {name: [] for name in kinds}
    wall: dict[str, list[float]] = {name: [] for name in kinds}

    def run(name: str) -> None:
        started = time.perf_counter()
        done = subprocess.run([PYTHON, "-c", kinds[name]], cwd=REPO, capture_output=True, text=True, timeout=60)
        elapsed = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(f"python -c {kinds[name]!r} failed: {done.stderr[-1500:]}")
        wall[name].append(elapsed * 1000)
        if name != "pass":
            inside[name].append(float(done.stdout.split()[-1]) * 1000)

    for name in kinds:  # once each first: byte-code caches written, files in the page cache
        run(name)
    for samples in (*wall.values(), *inside.values()):
        samples.clear()
    order = list(kinds)
    for index in range(sizes.cold_runs):
        if budget.over():
            break
        for name in order[index % 3 :] + order[: index % 3]:  # rotate who goes first
            run(name)
    runs = len(inside["function_app"])
    af, fa = statistics.median(inside["azure.functions"]), statistics.median(inside["function_app"])
    bare = statistics.median(wall["pass"])
    af_wall, fa_wall = statistics.median(wall["azure.functions"]), statistics.median(wall["function_app"])
    note = f"median of {runs} fresh processes each" + (" (time bound hit)" if budget.cut_short else "")
    ratio = _ratio(fa, af)
    wall_ratio = _ratio(fa_wall - bare, af_wall - bare)
    rows = [
        Row(
            "cold start",
            "import, timed in the child",
            fa,
            "ms",
            af,
            ratio,
            "≤ 1.15×",
            ratio is not None and ratio <= 1.15,
            note,
        ),
        Row(
            "cold start",
            "process wall − bare python",
            fa_wall - bare,
            "ms",
            af_wall - bare,
            wall_ratio,
            "(check)",
            None,
            f"bare `python -c pass` = {bare:.1f} ms",
        ),
    ]
    details = {"runs": runs, "inside_ms": inside, "wall_ms": wall, "added_by_function_app_ms": fa - af}
    return rows, details


# --- 2. normalisation ----------------------------------------------------------------------------------


def bench_normalise(sizes: Sizes, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    """Leads per second, one thread, over varied leads; then the same data through each stage
    function alone, to show where a lead's time goes."""
    from leads.normalise import (
        from_http_body,
        from_table_entity,
    )

    count = sizes.normalise_leads
    bodies = leadgen.http_bodies(count, seed=1)
    entities = leadgen.table_entities(count, seed=2)
    table = "MarketplaceLeads"
    stamp = datetime(2026, 11, 25, tzinfo=UTC)
    rows_in = []  # as the poll hands them over: Timestamp as ISO text, received_at the Timestamp
    for entity in entities:
        rows_in.append(
            {
                "PartitionKey": entity["PartitionKey"],
                "RowKey": entity["RowKey"],
                "Timestamp": stamp.isoformat(),
                **entity,
            }
        )

    # Warm-up, untimed: the lazy imports (phonenumbers, email-validator, pycountry's index) and
    # phonenumbers' per-region metadata. Its cost is reported separately.
    started = time.perf_counter()
    from_http_body(bodies[0])
    first_call_ms = (time.perf_counter() - started) * 1000
    for body in bodies[: min(2000, count)]:
        from_http_body(body)

    def timed(function, items, star: bool = False) -> float:
        """Median seconds per item over the repeats (stops repeating when the time bound is hit)."""
        results = []
        for _ in range(sizes.normalise_repeats):
            started = time.perf_counter()
            if star:
                for item in items:
                    function(*item)
            else:
                for item in items:
                    function(item)
            results.append((time.perf_counter() - started) / len(items))
            if budget.over():
                break
        passes.append(len(results))
        return statistics.median(results)

    passes: list[int] = []  # how many passes each measurement made
    http_each = timed(from_http_body, bodies)
    http_passes = passes[-1]
    table_each = timed(lambda row: from_table_entity(row, table, received_at=stamp), rows_in)

    # Where a lead's time goes, two ways. In the flow: one more pass of from_http_body with the
    # stage functions wrapped in timers (what they cost between everything else a lead does, caches
    # shared). Alone: each stage function over the same inputs in a tight loop (its cost with the
    # caches to itself; lower). "The rest" is the flow's total less its stages.
    import leads.normalise as normalise_module

    # The lead id's digest: _content_id where the module has it (the id from the parts), else
    # http_lead_id (the id from a built Lead). A stage the flow never calls is left out.
    id_stage = "_content_id" if hasattr(normalise_module, "_content_id") else "http_lead_id"
    stage_names = {
        "normalise_phone": "phone (normalise_phone)",
        "normalise_email": "email (normalise_email)",
        "normalise_country": "country (normalise_country)",
        id_stage: f"lead id ({id_stage})",
    }
    stage_names = {name: label for name, label in stage_names.items() if hasattr(normalise_module, name)}
    spent = dict.fromkeys(stage_names, 0.0)
    captured: dict[str, list[tuple]] = {name: [] for name in stage_names}
    originals = {name: getattr(normalise_module, name) for name in stage_names}

    def timer(name, function):
        def timed_stage(*args):
            started = time.perf_counter()
            try:
                return function(*args)
            finally:
                spent[name] += time.perf_counter() - started
                captured[name].append(args)

        return timed_stage

    for name, function in originals.items():
        setattr(normalise_module, name, timer(name, function))
    try:
        started = time.perf_counter()
        leads = [from_http_body(body) for body in bodies]
        flow_each = (time.perf_counter() - started) / count
    finally:
        for name, function in originals.items():
            setattr(normalise_module, name, function)
    stage_names = {name: label for name, label in stage_names.items() if captured[name]}
    in_flow = {label: spent[name] / count for name, label in stage_names.items()}
    alone = {
        label: timed(originals[name], captured[name], star=True) * len(captured[name]) / count
        for name, label in stage_names.items()
    }
    rest = "the rest (text, source, Lead)"
    in_flow[rest] = flow_each - sum(in_flow.values())
    alone[rest] = None
    mix = Counter()
    for lead in leads:
        mix["phone in E.164"] += bool(lead.phone and lead.phone.startswith("+"))
        mix["phone kept as received"] += bool(lead.phone and not lead.phone.startswith("+"))
        mix["email invalid"] += lead.email_valid is False
        mix["email not plain ASCII"] += bool(lead.email and not lead.email.isascii())
        mix["country unknown, kept"] += bool(lead.country and len(lead.country) != 2)
        mix["test lead"] += lead.is_test
        mix["pii withheld"] += lead.pii_withheld
        mix["campaign"] += bool(lead.campaign)
        mix["do not contact"] += lead.do_not_contact
    distinct = {
        "lead ids": len({lead.lead_id for lead in leads}),
        "emails": len({lead.email for lead in leads}),
        "companies": len({lead.company for lead in leads}),
        "phones": len({lead.phone for lead in leads}),
    }

    goal = 20_000
    note = f"{count:,} leads, 1 thread, median of {http_passes} passes"
    if min(passes) < sizes.normalise_repeats:
        note += f" (time bound hit: later measurements had {min(passes)})"
    rows = [
        Row(
            "normalisation",
            "from_http_body",
            1 / http_each,
            "/s",
            goal=f"≥ {goal:,}/s",
            met=1 / http_each >= goal,
            note=note,
        ),
        Row(
            "normalisation",
            "from_table_entity",
            1 / table_each,
            "/s",
            goal=f"≥ {goal:,}/s",
            met=1 / table_each >= goal,
            note="as the poll calls it",
        ),
    ]
    for name, seconds in in_flow.items():
        note = f"in the flow, {seconds / flow_each:.0%} of a lead" + (
            f"; alone {alone[name] * 1e6:.1f} µs" if alone[name] else ""
        )
        rows.append(Row("normalisation", f"  µs/lead: {name}", seconds * 1e6, "us", note=note))
    rows.append(
        Row("normalisation", "  first call (lazy imports)", first_call_ms, "ms", note="once per process, untimed above")
    )
    details = {
        "leads": count,
        "http_us_per_lead": http_each * 1e6,
        "table_us_per_lead": table_each * 1e6,
        "stages_us_per_lead_in_flow": {name: value * 1e6 for name, value in in_flow.items()},
        "stages_us_per_lead_alone": {name: value * 1e6 for name, value in alone.items() if value},
        "instrumented_pass_us_per_lead": flow_each * 1e6,
        "first_call_ms": first_call_ms,
        "mix": dict(mix),
        "distinct": distinct,
    }
    return rows, details


# --- storage: request counting, bare writes, the app's writes ------------------------------------


class RequestCounter:
    """Counts the storage SDKs' HTTP requests at the transport (benchmark instrumentation only),
    by service (from the port), method and status."""

    def __init__(self, ports: dict[int, str] | None = None) -> None:
        self.calls: Counter[str] = Counter()
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
            with counter._lock:
                counter.calls[f"{service} {request.method} {response.status_code}".strip()] += 1
            return response

        RequestsTransport.send = send
        try:
            yield self
        finally:
            RequestsTransport.send = original


def _ports(azurite) -> dict[int, str]:
    return {azurite.table_port: "table", azurite.queue_port: "queue", azurite.blob_port: "blob"}


def _bare_table(connection: str, name: str):
    from azure.data.tables import TableServiceClient

    service = TableServiceClient.from_connection_string(connection)
    service.create_table(name)
    return service.get_table_client(name)


def _bare_queue(connection: str, name: str):
    from azure.storage.queue import QueueClient, TextBase64EncodePolicy

    queue = QueueClient.from_connection_string(connection, name, message_encode_policy=TextBase64EncodePolicy())
    queue.create_queue()
    return queue


@contextmanager
def _app_environment(env: dict[str, str]):
    """The app's settings as ``env`` gives them, in this process, for the duration."""
    from leads.settings import get_settings

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
    from leads.store import _to_entity

    try:
        from leads.deliveries import new_delivery_entity
        from leads.queue import DeliveryMessage
        from leads.routing import plan
    except ImportError:
        return [LeadWrites(_to_entity(lead), [], []) for lead in leads]
    now = datetime.now(UTC)
    writes = []
    with _app_environment(env) as settings:
        for lead in leads:
            deliveries = plan(lead, settings)
            writes.append(
                LeadWrites(
                    _to_entity(lead),
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


# --- 3. HTTP intake through serve ----------------------------------------------------------------


def _app_env(connection: str, tag: str) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": connection,
        "LEADS_TABLE_PREFIX": f"Bench{tag}",
        "MARKETPLACE_TABLE_CONNECTION": "",
        "MARKETPLACE_TABLE_NAME": f"Market{tag}",
        "LEADS_DELIVERY_QUEUE": f"bench-{tag}",
    }


def _serve_env(connection: str, tag: str, outbox: str) -> dict[str, str]:
    return {
        **_app_env(connection, tag),
        # The timers would poll or sweep mid-measurement; here they fire once a year.
        "LEADS_POLL_SCHEDULE": "0 0 0 1 1 *",
        "LEADS_SWEEP_SCHEDULE": "0 0 0 1 1 *",
        # Mail the app writes without ACS goes to a temporary folder, not into the repo.
        "EMAIL_OUTBOX_DIR": outbox,
    }


def _serve(env: dict[str, str], log_path: Path, budget: Budget) -> tuple[subprocess.Popen, str]:
    import requests

    from leads.azurite import free_port

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
            _stop(process)
            raise TimeoutError(f"serve did not answer GET /api/health with 200: {log_path.read_text()[-2000:]}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _latency_rows(name: str, label: str, ours: list[float], bare: list[float], goal: str = "") -> list[Row]:
    """Rows for p50 and p99 (ms) of two latency samples."""
    rows = []
    for fraction, title in ((0.5, "p50"), (0.99, "p99")):
        if not ours or not bare:
            continue
        mine, theirs = percentile(ours, fraction) * 1000, percentile(bare, fraction) * 1000
        ratio = _ratio(mine, theirs)
        rows.append(
            Row(
                name,
                f"{title} latency{label}",
                mine,
                "ms",
                theirs,
                ratio,
                goal if fraction == 0.5 else "",
                (ratio <= 1.5) if goal and fraction == 0.5 else None,
            )
        )
    return rows


def bench_http(sizes: Sizes, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    """POSTs through ``python -m leads serve``, against the bare SDK writing what one new lead
    needs: one ``create_entity`` (the brief's baseline), and, when the app also writes delivery
    rows and queue messages, the same writes as the app. Interleaved in chunks, so that drift and
    background load hit each side alike."""
    name = "http intake"
    if not (REPO / "leads" / "serve.py").exists():
        return [Row(name, "skipped: leads/serve.py does not exist yet", None, "")], {"skipped": True}
    import shutil
    import tempfile

    import requests

    from leads.azurite import Azurite
    from leads.normalise import from_http_body

    count, warm = sizes.http_posts, 20
    concurrent_count, threads = sizes.http_concurrent_posts, sizes.http_threads
    bodies = leadgen.http_bodies(warm + count + concurrent_count, seed=3)
    payloads = [json.dumps(body).encode() for body in bodies]
    tag = uuid.uuid4().hex[:8]
    headers = {"Content-Type": "application/json"}
    details: dict[str, Any] = {}
    outbox = tempfile.mkdtemp(prefix="bench-outbox-")

    with Azurite() as azurite:
        connection = azurite.connection_string
        env = _serve_env(connection, tag, outbox)
        writes = app_writes([from_http_body(body) for body in bodies], env)
        same = any(w.delivery_rows or w.messages for w in writes)
        minimal = _bare_table(connection, f"BareMin{tag}")
        same_table = _bare_table(connection, f"BareSame{tag}") if same else None
        same_queue = _bare_queue(connection, f"bare-{tag}") if same else None
        process, url = _serve(env, RESULTS / "serve.log", budget)
        try:
            statuses: Counter[int] = Counter()

            def post(session, index: int) -> float:
                started = time.perf_counter()
                response = session.post(f"{url}/api/leads", data=payloads[index], headers=headers, timeout=30)
                elapsed = time.perf_counter() - started
                statuses[response.status_code] += 1
                return elapsed

            def write_min(index: int) -> float:
                started = time.perf_counter()
                minimal.create_entity(writes[index].entity)
                return time.perf_counter() - started

            def write_same(index: int) -> float:
                started = time.perf_counter()
                write_like_the_app(same_table, same_queue, writes[index])
                return time.perf_counter() - started

            sides = {"ours": None, "min": write_min, **({"same": write_same} if same else {})}
            session = requests.Session()
            sides["ours"] = lambda index: post(session, index)
            for index in range(warm):  # connections open, lazy imports done, on every side
                for run in sides.values():
                    run(index)
            statuses.clear()

            latencies = {side: [] for side in sides}
            cpu = {
                "ours": CpuMeter(client=None, serve=process.pid, azurite=azurite.process.pid),
                **{side: CpuMeter(client=None, azurite=azurite.process.pid) for side in sides if side != "ours"},
            }
            chunk = 50
            for start in range(warm, warm + count, chunk):
                if budget.over():
                    break
                for side, run in sides.items():
                    with cpu[side].measuring():
                        latencies[side] += [run(index) for index in range(start, min(start + chunk, warm + count))]
            done = len(latencies["ours"])
            rate = {side: len(values) / sum(values) for side, values in latencies.items() if values}
            accepted = statuses[202] == done
            note = f"{done:,} sequential POSTs, keep-alive" + (" (time bound hit)" * budget.cut_short)
            if not accepted:
                note += f"; answers {dict(statuses)}"
            rows: list[Row] = []
            baselines = (
                [("same", "bare, the app's writes"), ("min", "bare, 1 create_entity")]
                if same
                else [("min", "bare, 1 create_entity")]
            )
            for side, label in baselines:
                ratio = _ratio(rate["ours"], rate[side], rate=True)
                rows.append(
                    Row(
                        name,
                        f"leads/s vs {label}",
                        rate["ours"],
                        "/s",
                        rate[side],
                        ratio,
                        "≤ 1.5×",
                        ratio <= 1.5 and accepted,
                        note if side == baselines[0][0] else "",
                    )
                )
                rows += _latency_rows(name, f" vs {label}", latencies["ours"], latencies[side], "≤ 1.5×")
            per = {
                side: {
                    process_name: seconds / max(len(latencies[side]), 1) * 1000
                    for process_name, seconds in meter.spent.items()
                }
                for side, meter in cpu.items()
            }
            reference = baselines[0][0]
            rows += [
                Row(
                    name,
                    "  CPU/lead: serve process",
                    per["ours"]["serve"],
                    "ms",
                    per[reference]["client"],
                    _ratio(per["ours"]["serve"], per[reference]["client"]),
                    note=f"vs the {baselines[0][1]} process"
                    + ("; includes serve's background deliveries" if same else ""),
                ),
                Row(
                    name,
                    "  CPU/lead: client (requests)",
                    per["ours"]["client"],
                    "ms",
                    note="the benchmark's own HTTP client, on the same 2 cores",
                ),
                Row(
                    name,
                    "  CPU/lead: Azurite",
                    per["ours"]["azurite"],
                    "ms",
                    per[reference]["azurite"],
                    _ratio(per["ours"]["azurite"], per[reference]["azurite"]),
                    note="serve's background delivery work included" if same else "",
                ),
            ]
            details["sequential"] = {
                "posts": done,
                "statuses": dict(statuses),
                "per_s": rate,
                "p50_ms": {s: percentile(v, 0.5) * 1000 for s, v in latencies.items() if v},
                "p99_ms": {s: percentile(v, 0.99) * 1000 for s, v in latencies.items() if v},
                "cpu_ms_per_lead": per,
                "app_writes_per_lead": {
                    "delivery_rows": sum(len(w.delivery_rows) for w in writes) / len(writes),
                    "queue_messages": sum(len(w.messages) for w in writes) / len(writes),
                },
            }

            # Concurrent: `threads` clients, each its own keep-alive session; the bare baseline is
            # `threads` threads sharing one client per service, as the app shares one.
            if concurrent_count and budget.left() > 10:
                first = warm + count
                statuses.clear()
                sessions = [requests.Session() for _ in range(threads)]
                slices = [range(first + offset, first + concurrent_count, threads) for offset in range(threads)]
                reference_run = sides[reference]

                def run_clients(work) -> tuple[float, list[float]]:
                    results: list[float] = []
                    lock = threading.Lock()

                    def client(number: int) -> None:
                        mine = [work(number, index) for index in slices[number] if not budget.over()]
                        with lock:
                            results.extend(mine)

                    started = time.perf_counter()
                    with ThreadPoolExecutor(threads) as pool:
                        list(pool.map(client, range(threads)))
                    return time.perf_counter() - started, results

                bare_wall, bare_lat = run_clients(lambda number, index: reference_run(index))
                ours_wall, ours_lat = run_clients(lambda number, index: post(sessions[number], index))
                if ours_lat and bare_lat:
                    ours_c, bare_c = len(ours_lat) / ours_wall, len(bare_lat) / bare_wall
                    note = f"{len(ours_lat):,} POSTs from {threads} threads vs {len(bare_lat):,} writes"
                    if statuses[202] != len(ours_lat):
                        note += f"; answers {dict(statuses)}"
                    label = f", {threads} clients, vs {baselines[0][1]}"
                    rows.append(
                        Row(
                            name,
                            f"leads/s{label}",
                            ours_c,
                            "/s",
                            bare_c,
                            _ratio(ours_c, bare_c, rate=True),
                            "(info)",
                            None,
                            note,
                        )
                    )
                    rows += _latency_rows(name, f", {threads} clients", ours_lat, bare_lat)
                    details["concurrent"] = {
                        "threads": threads,
                        "posts": len(ours_lat),
                        "statuses": dict(statuses),
                        "ours_per_s": ours_c,
                        "bare_per_s": bare_c,
                        "baseline": baselines[0][1],
                    }
        finally:
            _stop(process)
            shutil.rmtree(outbox, ignore_errors=True)
        details["app_rows_per_lead"] = _rows_per_lead(connection, f"Bench{tag}")
    if details["app_rows_per_lead"]:
        found = details["app_rows_per_lead"]
        rows.append(
            Row(
                name,
                "  table rows the app wrote per lead",
                found["rows_per_lead"],
                "rows",
                None,
                note=", ".join(f"{key}: {value:,}" for key, value in found["by_row_key"].items()),
            )
        )
    return rows, details


def _rows_per_lead(connection: str, table_name: str) -> dict[str, Any] | None:
    """What the app's leads table holds after the run, per lead (the lead row, deliveries...)."""
    from azure.data.tables import TableServiceClient

    try:
        table = TableServiceClient.from_connection_string(connection).get_table_client(table_name)
        keys = Counter(
            entity["RowKey"].partition("|")[0] + "|…" * ("|" in entity["RowKey"])
            for entity in table.list_entities(select=["PartitionKey", "RowKey"])
        )
    except Exception:  # an app table named otherwise: the figure is only a hint
        return None
    leads = keys.get("lead", 0)
    if not leads:
        return None
    return {
        "leads": leads,
        "rows": sum(keys.values()),
        "rows_per_lead": sum(keys.values()) / leads,
        "by_row_key": dict(keys.most_common(6)),
    }


# --- 4. draining the marketplace table ----------------------------------------------------------------


def _load(service, table_name: str, rows: list[dict[str, Any]]) -> float:
    table = service.create_table(table_name)
    started = time.perf_counter()
    for batch in leadgen.batches(rows):
        table.submit_transaction([("create", entity) for entity in batch])
    return time.perf_counter() - started


def _poll(env: dict[str, str], counter: RequestCounter, cpu: CpuMeter):
    """``poll_marketplace()`` in this process, as the timer calls it, counted and timed."""
    from leads import poll

    with _app_environment(env):
        poll._recently_stored.clear()
        try:
            with counter.counting(), cpu.measuring():
                started = time.perf_counter()
                result = poll.poll_marketplace()
                return result, time.perf_counter() - started
        finally:
            poll._recently_stored.clear()


def bench_drain(sizes: Sizes, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    """``poll_marketplace()`` draining fresh rows, against the bare SDK reading the same rows and
    writing each as one entity, with the poll's number of threads and sequentially (the brief's
    baselines); and, when the app also writes delivery rows and queue messages, the bare SDK making
    the app's own writes with as many threads.

    The poll cannot be stopped part-way, so the row count is fitted to the time bound first: a
    300-row drain measures the app's rate, and the table gets at most 10,000 rows, or fewer if
    that rate would not drain them within about a third of the bound."""
    import shutil
    import tempfile

    from azure.data.tables import TableServiceClient

    from leads import poll
    from leads.azurite import Azurite
    from leads.normalise import from_table_entity

    wanted, threads = sizes.drain_rows, sizes.drain_threads
    tag = uuid.uuid4().hex[:8]
    outbox = tempfile.mkdtemp(prefix="bench-outbox-")
    details: dict[str, Any] = {"rows_wanted": wanted}
    with Azurite() as azurite, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, outbox, ignore_errors=True)
        connection = azurite.connection_string
        service = TableServiceClient.from_connection_string(connection)
        ports = _ports(azurite)

        # Calibration (untimed in the table; also the warm-up of imports and connections).
        trial = leadgen.table_entities(300, seed=5)
        trial_env = {**_serve_env(connection, f"{tag}w", outbox)}
        _load(service, trial_env["MARKETPLACE_TABLE_NAME"], trial)
        trial_result, trial_seconds = _poll(trial_env, RequestCounter(), CpuMeter())
        trial_rate = trial_result.read / trial_seconds
        fits = int(trial_rate * budget.seconds * 0.33) // 500 * 500
        count = max(500, min(wanted, fits))
        details.update(trial_rows=trial_result.read, trial_per_s=trial_rate, rows=count)

        rows = leadgen.table_entities(count, seed=4)
        env = _serve_env(connection, tag, outbox)
        details["load_seconds"] = _load(service, env["MARKETPLACE_TABLE_NAME"], rows)
        market = service.get_table_client(env["MARKETPLACE_TABLE_NAME"])

        counter = RequestCounter(ports)
        ours_cpu = CpuMeter(python=None, azurite=azurite.process.pid)
        result, ours = _poll(env, counter, ours_cpu)
        details["poll"] = {
            "seconds": ours,
            "read": result.read,
            "stored": result.stored,
            "rejected": result.rejected,
            "requests": counter.total,
            "calls": dict(counter.calls),
            "cpu_s": ours_cpu.spent,
        }

        def bare_drain(label: str, workers: int, write) -> dict[str, Any]:
            """Read the marketplace table and write each row with ``write``, until the bound."""
            counter = RequestCounter(ports)
            cpu = CpuMeter(python=None, azurite=azurite.process.pid)

            def one(entity) -> bool:
                if budget.over():
                    return False
                write(entity)
                return True

            with counter.counting(), cpu.measuring():
                started = time.perf_counter()
                if workers == 1:
                    done = 0
                    for entity in market.list_entities():
                        if not one(entity):
                            break
                        done += 1
                else:
                    with ThreadPoolExecutor(workers) as pool:
                        done = sum(pool.map(one, market.list_entities()))
                seconds = time.perf_counter() - started
            return {
                "label": label,
                "seconds": seconds,
                "rows": done,
                "requests": counter.total,
                "calls": dict(counter.calls),
                "describe": counter.describe(),
                "cpu_s": cpu.spent,
            }

        # The app's own writes for these rows, built before the clock starts (normalising is the
        # app's work, not the baseline's).
        leads_by_key = {}
        for entity in rows:
            lead = from_table_entity(entity, env["MARKETPLACE_TABLE_NAME"])
            leads_by_key[(entity["PartitionKey"], entity["RowKey"])] = lead
        keys = list(leads_by_key)
        writes = dict(zip(keys, app_writes([leads_by_key[key] for key in keys], env), strict=True))
        bare_same = None
        if any(w.delivery_rows or w.messages for w in writes.values()):
            same_table, same_queue = _bare_table(connection, f"BareSame{tag}"), _bare_queue(connection, f"bare-{tag}")
            details["bare_same"] = bare_same = bare_drain(
                f"bare, the app's writes, {threads} threads",
                threads,
                lambda entity: write_like_the_app(
                    same_table, same_queue, writes[(entity["PartitionKey"], entity["RowKey"])]
                ),
            )
        copy_table = _bare_table(connection, f"BareCopy{tag}")
        details["bare_threads"] = bare_threads = bare_drain(
            f"bare copy, {threads} threads", threads, copy_table.create_entity
        )
        seq_table = _bare_table(connection, f"BareSeq{tag}")
        details["bare_sequential"] = bare_seq = bare_drain("bare copy, sequential", 1, seq_table.create_entity)

    name = f"drain {count:,} rows"
    ours_rate = result.read / ours
    note = f"poll: {poll._WORKERS} threads, stored {result.stored:,}, rejected {result.rejected}"
    if count < wanted:
        note += f"; {wanted:,} rows would not fit the time bound at the app's {trial_rate:.0f}/s"
    if result.read != count:
        note += f"; READ ONLY {result.read:,}"
    out = [Row(name, "seconds", ours, "s", note=note)]
    baselines = [b for b in (bare_same, bare_threads, bare_seq) if b]
    for bare in baselines:
        if not bare["rows"]:
            out.append(Row(name, f"leads/s vs {bare['label']}", ours_rate, "/s", note="time bound hit before it ran"))
            continue
        rate = bare["rows"] / bare["seconds"]
        bound = f"time bound hit at {bare['rows']:,} rows" if bare["rows"] != count else ""
        out.append(
            Row(
                name,
                f"leads/s vs {bare['label']}",
                ours_rate,
                "/s",
                rate,
                _ratio(ours_rate, rate, rate=True),
                note=bound,
            )
        )
    ours_rpl = counter.total / max(result.read, 1)
    for bare in baselines[:2]:
        if bare["rows"]:
            rpl = bare["requests"] / bare["rows"]
            out.append(
                Row(
                    name,
                    f"storage requests/lead vs {bare['label']}",
                    ours_rpl,
                    "req/lead",
                    rpl,
                    _ratio(ours_rpl, rpl),
                    note=bare["describe"],
                )
            )
    out.append(Row(name, "  the poll's requests", None, "", note=counter.describe()))
    reference = baselines[0]
    for process, label in (("python", "this Python process"), ("azurite", "Azurite")):
        ours_ms = ours_cpu.spent[process] / max(result.read, 1) * 1000
        bare_ms = reference["cpu_s"][process] / reference["rows"] * 1000 if reference["rows"] else None
        out.append(
            Row(
                name,
                f"  CPU/lead: {label}",
                ours_ms,
                "ms",
                bare_ms,
                _ratio(ours_ms, bare_ms),
                note=f"vs {reference['label']}",
            )
        )
    out.append(Row(name, "  (load: batches of 100, untimed)", details["load_seconds"], "s"))
    return out, details


# --- the table --------------------------------------------------------------------------------------

# --- delivery (issue 3) and CRMs (issue 4) ------------------------------------------------------------


def _mail_times(fake) -> dict[str, float]:
    """Lead id → when the fake ACS accepted the first mail naming it."""
    import re

    times: dict[str, float] = {}
    for mail in list(fake.mails):
        for lead_id in re.findall(r"\b[ht][0-9a-f]{24}\b", mail["text"] or ""):
            times.setdefault(lead_id, mail["at"])
    return times


def bench_notify(sizes: Sizes, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    """From a POST, and from a row landing in the marketplace table with the poll at its default
    schedule (every 30 s), to the mail arriving at a fake ACS: p50/p95 through ``serve``."""
    import tempfile

    import requests

    from leads.azurite import Azurite
    from leads.normalise import table_lead_id
    from leads.storage import table_service
    from tests.fake_acs import FakeAcs

    count = sizes.notify_leads
    tag = uuid.uuid4().hex[:8]
    with Azurite() as azurite, FakeAcs(retry_after="1") as acs, tempfile.TemporaryDirectory() as outbox:
        env = {
            **_app_env(azurite.connection_string, tag),
            "LEADS_POLL_SCHEDULE": "*/30 * * * * *",  # the default
            "EMAIL_OUTBOX_DIR": outbox,
            "EMAIL_CONNECTION_STRING": acs.connection_string,
            "EMAIL_SENDER": "DoNotReply@contoso.azurecomm.net",
            "EMAIL_TO": "sales@contoso.com",
            # The pipeline's latency, not ACS's quota: at 30 a minute a burst becomes digests.
            "EMAIL_PER_MINUTE": "100000",
            "REQUESTS_CA_BUNDLE": acs.ca_file,
        }
        process, url = _serve(env, RESULTS / "notify-serve.log", budget)
        try:
            session = requests.Session()
            posted: dict[str, float] = {}
            for index, body in enumerate(leadgen.http_bodies(count, seed=3)):
                if budget.over():
                    break
                sent = time.time()
                response = session.post(f"{url}/api/leads", json=body, timeout=30)
                if response.status_code == 202:
                    posted[response.json()["leadId"]] = sent
                time.sleep(0.05)
            table = table_service(azurite.connection_string).get_table_client(env["MARKETPLACE_TABLE_NAME"])
            table.create_table()
            landed: dict[str, float] = {}
            spread = max(0.05, min(0.3, budget.left() / 3 / max(count, 1)))
            for index, row in enumerate(leadgen.table_entities(count, seed=4)):
                if budget.over():
                    break
                table.create_entity(row)
                landed[table_lead_id(env["MARKETPLACE_TABLE_NAME"], row["PartitionKey"], row["RowKey"])] = time.time()
                time.sleep(spread)
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline and len(set(posted) | set(landed) - set(_mail_times(acs))) > 0:
                time.sleep(0.5)
        finally:
            _stop(process)
        arrived = _mail_times(acs)
    rows = []
    details: dict[str, Any] = {}
    for label, sent in (("POST → mail", posted), ("table row → mail", landed)):
        latencies = [arrived[lead] - at for lead, at in sent.items() if lead in arrived]
        missing = len(sent) - len(latencies)
        details[label] = {"leads": len(sent), "mails": len(latencies), "missing": missing}
        for fraction, title in ((0.5, "p50"), (0.95, "p95")):
            if latencies:
                rows.append(Row("notify", f"{title} {label}", percentile(latencies, fraction), "s",
                                note=f"{len(latencies)} leads" + (f", {missing} without mail" if missing else "")
                                + (", poll every 30 s" if "table" in label else "")))  # fmt: skip
    return rows, details


def bench_webhook(sizes: Sizes, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    """1,000 leads delivered by ``serve``'s queue worker to a webhook taking 50 ms a call, against
    the same POSTs made one after another (what a sequential forwarder achieves)."""
    import tempfile

    from leads.azurite import Azurite
    from leads.deliver import enqueue
    from leads.normalise import from_http_body
    from leads.settings import get_settings
    from leads.store import LeadStore
    from tests.fake_webhook import FakeWebhook

    count = sizes.webhook_leads
    tag = uuid.uuid4().hex[:8]
    with Azurite() as azurite, FakeWebhook(latency=0.05) as webhook, tempfile.TemporaryDirectory() as outbox:
        env = {**_app_env(azurite.connection_string, tag), "WEBHOOK_URL": webhook.url,
               "WEBHOOK_SECRET": webhook.secret, "EMAIL_TO": "", "EMAIL_OUTBOX_DIR": outbox,
               "LEADS_POLL_SCHEDULE": "0 0 0 1 1 *"}  # fmt: skip
        leads = [from_http_body(body) for body in leadgen.http_bodies(count, seed=5)]
        with _app_environment(env):
            store = LeadStore.from_settings()
            for lead in leads:
                store.add(lead, {"webhook": _route()})
            process, _ = _serve(env, RESULTS / "webhook-serve.log", budget)
            try:
                started = time.monotonic()
                for lead in leads:
                    enqueue(lead.lead_id, {"webhook": _route()}, get_settings())
                while len(webhook.leads) < len(leads) and not budget.over():
                    time.sleep(0.05)
                elapsed = time.monotonic() - started
            finally:
                _stop(process)
        delivered = len(webhook.leads)
    ours = delivered / elapsed if elapsed else None
    sequential = 1 / 0.05
    rows = [Row("webhook", f"{delivered:,} leads, 50 ms per call", ours, "/s", sequential, _ratio(ours, sequential, rate=True),
                note="serve's queue worker (16 in flight) vs one POST after another")]  # fmt: skip
    return rows, {"delivered": delivered, "seconds": elapsed, "requests": webhook.requests}


def _route():
    from leads.destinations.base import Route

    return Route()


def bench_crm(sizes: Sizes, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    """Each CRM destination's ``send`` against its fake with 50 ms per call: leads per second and
    token requests per 1,000 leads (the fakes hold each CRM's own rate limits)."""
    import crm_salesforce

    from tests import fake_dynamics, fake_hubspot, fake_marketo

    runs = {"dynamics": fake_dynamics.benchmark, "salesforce": crm_salesforce.benchmark,
            "marketo": fake_marketo.benchmark, "hubspot": fake_hubspot.benchmark}  # fmt: skip
    rows, details = [], {}
    for name, run in runs.items():
        if budget.over():
            break
        figures = run(count=sizes.crm_leads, latency=0.05)
        details[name] = figures
        rows.append(Row("crm", f"{name}: leads/s, 50 ms a call", figures["leads_per_second"], "/s", 20.0,
                        _ratio(figures["leads_per_second"], 20.0, rate=True),
                        note=f"{sizes.crm_leads} sequential; ceiling 20/s at one call a lead"))  # fmt: skip
        tokens = figures.get("token_requests", round(figures["token_requests_per_1000"] * sizes.crm_leads / 1000))
        rows.append(Row("crm", f"{name}: token requests for {sizes.crm_leads} leads", tokens, "",
                        note="one per token lifetime" if name != "hubspot" else "a private app's token is static"))  # fmt: skip
    return rows, details


BENCHMARKS = {"cold_start": bench_cold_start, "normalise": bench_normalise, "http": bench_http, "drain": bench_drain,
              "notify": bench_notify, "webhook": bench_webhook, "crm": bench_crm}  # fmt: skip


def print_table(rows: list[Row]) -> None:
    header = ["benchmark", "metric", "ours", "baseline", "ratio", "goal", "met?", "note"]
    lines = []
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "NO")
        lines.append(
            [
                row.benchmark,
                row.metric,
                _fmt(row.ours, row.unit),
                _fmt(row.baseline, row.unit),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (about a minute)")
    parser.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="where the figures go as JSON")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    sizes = QUICK if args.quick else FULL
    RESULTS.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    all_rows: list[Row] = []
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "commit": _git_commit(),
        "load_average_at_start": os.getloadavg(),
        "benchmarks": {},
    }
    for name in names:
        budget = Budget(sizes.budget[name])
        print(f"running {name} (bound {budget.seconds:.0f} s)...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            rows, details = BENCHMARKS[name](sizes, budget)
        except Exception as exc:  # one benchmark failing still reports the others
            traceback.print_exc()
            rows, details = (
                [Row(name, f"FAILED: {type(exc).__name__}: {str(exc)[:120]}", None, "")],
                {"error": repr(exc)},
            )
        details["seconds"] = time.perf_counter() - t0
        details["time_bound_hit"] = budget.cut_short
        print(f"  {name}: {details['seconds']:.1f} s", file=sys.stderr, flush=True)
        all_rows += rows
        report["benchmarks"][name] = {"rows": [asdict(row) for row in rows], "details": details}
    report["seconds"] = time.perf_counter() - started
    report["load_average_at_end"] = os.getloadavg()

    print()
    print_table(all_rows)
    print(
        f"\nratio = ours' cost / baseline's (time ÷ time, or baseline rate ÷ our rate): above 1× is slower."
        f"\n{report['mode']} run, {report['seconds']:.0f} s on {os.cpu_count()} cores; 1-minute load average "
        f"{report['load_average_at_start'][0]:.2f} at start, {report['load_average_at_end'][0]:.2f} at end "
        f"(other work on the machine skews figures); figures in {_relative(args.json)}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return done.stdout.strip() + ("+dirty" if dirty else "") if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
