"""HTTP intake: POSTs to ``python -m leads serve`` against the bare SDKs making the app's own writes,
and one ``create_entity`` (goal ≤ 1.5× in rate and p50). See benchmarks/README.md, "HTTP intake".
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import leadgen
from common import (
    RESULTS,
    Budget,
    CpuMeter,
    Row,
    app_writes,
    bare_queue,
    bare_table,
    cost_ratio,
    percentile,
    serve_env,
    start_serve,
    stop,
    write_like_the_app,
)

BUDGET_SECONDS = {"full": 150, "quick": 22}
POSTS, QUICK_POSTS = 2_000, 300  # sequential
CONCURRENT_POSTS, QUICK_CONCURRENT_POSTS = 1_000, 160
THREADS = 8  # clients of the concurrent run


def _latency_rows(name: str, label: str, ours: list[float], bare: list[float], goal: str = "") -> list[Row]:
    """Rows for p50 and p99 (ms) of two latency samples."""
    rows = []
    for fraction, title in ((0.5, "p50"), (0.99, "p99")):
        if not ours or not bare:
            continue
        mine, theirs = percentile(ours, fraction) * 1000, percentile(bare, fraction) * 1000
        ratio = cost_ratio(mine, theirs)
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


def run(quick: bool, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    """POSTs through ``python -m leads serve``, against the bare SDK writing what one new lead
    needs: one ``create_entity`` (the brief's baseline), and, when the app also writes delivery
    rows and queue messages, the same writes as the app. Interleaved in chunks, so that drift and
    background load hit each side alike."""
    name = "http intake"
    import shutil
    import tempfile

    import requests

    from leads.core.normalise import from_http_body
    from leads.local.azurite import Azurite

    count, warm = (QUICK_POSTS if quick else POSTS), 20
    concurrent_count, threads = (QUICK_CONCURRENT_POSTS if quick else CONCURRENT_POSTS), THREADS
    bodies = leadgen.http_bodies(warm + count + concurrent_count, seed=3)
    payloads = [json.dumps(body).encode() for body in bodies]
    tag = uuid.uuid4().hex[:8]
    headers = {"Content-Type": "application/json"}
    details: dict[str, Any] = {}
    outbox = tempfile.mkdtemp(prefix="bench-outbox-")

    with Azurite() as azurite:
        connection = azurite.connection_string
        env = serve_env(connection, tag, outbox)
        writes = app_writes([from_http_body(body) for body in bodies], env)
        same = any(w.delivery_rows or w.messages for w in writes)
        minimal = bare_table(connection, f"BareMin{tag}")
        same_table = bare_table(connection, f"BareSame{tag}") if same else None
        same_queue = bare_queue(connection, f"bare-{tag}") if same else None
        process, url = start_serve(env, RESULTS / "serve.log", budget)
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
                ratio = cost_ratio(rate["ours"], rate[side], rate=True)
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
                    cost_ratio(per["ours"]["serve"], per[reference]["client"]),
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
                    cost_ratio(per["ours"]["azurite"], per[reference]["azurite"]),
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
                            cost_ratio(ours_c, bare_c, rate=True),
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
            stop(process)
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
