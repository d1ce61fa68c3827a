"""Normalisation: ``from_http_body`` and ``from_table_entity``, leads per second on one thread over
varied leads (benchmarks/leadgen.py), and where a lead's time goes. Goal ≥ 20,000/s. See
benchmarks/README.md, "Normalisation".
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import leadgen
from common import Budget, Row

BUDGET_SECONDS = {"full": 50, "quick": 15}
LEADS, QUICK_LEADS = 20_000, 5_000
REPEATS, QUICK_REPEATS = 5, 2  # timed passes; the figure is their median


def run(quick: bool, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    """Leads per second, one thread, over varied leads; then the same data through each stage
    function alone, to show where a lead's time goes."""
    from leads.core.normalise import (
        from_http_body,
        from_table_entity,
    )

    count = QUICK_LEADS if quick else LEADS
    repeats = QUICK_REPEATS if quick else REPEATS
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
        for _ in range(repeats):
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
    import leads.core.normalise as normalise_module

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
    if min(passes) < repeats:
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
