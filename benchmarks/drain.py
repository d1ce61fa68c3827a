"""Draining the marketplace table: ``poll_marketplace()`` over fresh rows against the bare SDKs
reading the same rows and writing them. See benchmarks/README.md, "Draining the marketplace table".
"""

from __future__ import annotations

import contextlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import leadgen
from common import (
    Budget,
    CpuMeter,
    RequestCounter,
    Row,
    app_environment,
    app_writes,
    bare_queue,
    bare_table,
    cost_ratio,
    ports,
    serve_env,
    write_like_the_app,
)

BUDGET_SECONDS = {"full": 110, "quick": 30}
ROWS, QUICK_ROWS = 10_000, 1_500  # at most: fitted to the time bound first
THREADS = 8  # the baselines' threads, the poll's count


def _load(service, table_name: str, rows: list[dict[str, Any]]) -> float:
    table = service.create_table(table_name)
    started = time.perf_counter()
    for batch in leadgen.batches(rows):
        table.submit_transaction([("create", entity) for entity in batch])
    return time.perf_counter() - started


def _poll(env: dict[str, str], counter: RequestCounter, cpu: CpuMeter):
    """``poll_marketplace()`` in this process, as the timer calls it, counted and timed."""
    from leads.intake import poll

    with app_environment(env):
        poll._recently_stored.clear()
        try:
            with counter.counting(), cpu.measuring():
                started = time.perf_counter()
                result = poll.poll_marketplace()
                return result, time.perf_counter() - started
        finally:
            poll._recently_stored.clear()


def run(quick: bool, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
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

    from leads.core.normalise import from_table_entity
    from leads.intake import poll
    from leads.local.azurite import Azurite

    wanted, threads = (QUICK_ROWS if quick else ROWS), THREADS
    tag = uuid.uuid4().hex[:8]
    outbox = tempfile.mkdtemp(prefix="bench-outbox-")
    details: dict[str, Any] = {"rows_wanted": wanted}
    with Azurite() as azurite, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, outbox, ignore_errors=True)
        connection = azurite.connection_string
        service = TableServiceClient.from_connection_string(connection)
        services = ports(azurite)

        # Calibration (untimed in the table; also the warm-up of imports and connections).
        trial = leadgen.table_entities(300, seed=5)
        trial_env = {**serve_env(connection, f"{tag}w", outbox)}
        _load(service, trial_env["MARKETPLACE_TABLE_NAME"], trial)
        trial_result, trial_seconds = _poll(trial_env, RequestCounter(), CpuMeter())
        trial_rate = trial_result.read / trial_seconds
        fits = int(trial_rate * budget.seconds * 0.33) // 500 * 500
        count = max(500, min(wanted, fits))
        details.update(trial_rows=trial_result.read, trial_per_s=trial_rate, rows=count)

        rows = leadgen.table_entities(count, seed=4)
        env = serve_env(connection, tag, outbox)
        details["load_seconds"] = _load(service, env["MARKETPLACE_TABLE_NAME"], rows)
        market = service.get_table_client(env["MARKETPLACE_TABLE_NAME"])

        counter = RequestCounter(services)
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
            counter = RequestCounter(services)
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
            same_table, same_queue = bare_table(connection, f"BareSame{tag}"), bare_queue(connection, f"bare-{tag}")
            details["bare_same"] = bare_same = bare_drain(
                f"bare, the app's writes, {threads} threads",
                threads,
                lambda entity: write_like_the_app(
                    same_table, same_queue, writes[(entity["PartitionKey"], entity["RowKey"])]
                ),
            )
        copy_table = bare_table(connection, f"BareCopy{tag}")
        details["bare_threads"] = bare_threads = bare_drain(
            f"bare copy, {threads} threads", threads, copy_table.create_entity
        )
        seq_table = bare_table(connection, f"BareSeq{tag}")
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
                cost_ratio(ours_rate, rate, rate=True),
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
                    cost_ratio(ours_rpl, rpl),
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
                cost_ratio(ours_ms, bare_ms),
                note=f"vs {reference['label']}",
            )
        )
    out.append(Row(name, "  (load: batches of 100, untimed)", details["load_seconds"], "s"))
    return out, details
