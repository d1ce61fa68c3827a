"""``python -m leads status`` as a terminal reads it: a compact table with a sparkline a row.

The same few numbers as the Azure Monitor workbook (infra/app/workbook.json): deliveries per day
by destination (delivered, failed), what is open, failed and held back now, the arrivals of each
offer against its usual rhythm (the silence watch), the table poll's health and the poison queue.
The per-day series come from the day counters (one range query of ``days`` × 16 rows, as
``status`` already reads them); ``--json`` prints the report as data instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leads.ops.operations import Status
    from leads.store.lead_store import LeadStore

SPARKS = "▁▂▃▄▅▆▇█"


def spark(values: list[int]) -> str:
    """One character a value, scaled to the largest; a day with none is a dot, so a quiet day is
    told from a small one."""
    top = max(values, default=0)
    return "".join(
        "·" if value == 0 else SPARKS[min(len(SPARKS) - 1, (value * len(SPARKS) - 1) // top)] for value in values
    )


def daily(store: LeadStore, days: int, now: datetime | None = None) -> dict[str, dict[str, list[int]]]:
    """``{group: {state: [count a day, oldest first]}}`` from the day counters of the last ``days``."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    dates = [f"{now - timedelta(days=back):%Y-%m-%d}" for back in range(days - 1, -1, -1)]
    series: dict[str, dict[str, list[int]]] = {}
    query = "PartitionKey ge @low and PartitionKey le @high"
    bounds = {"low": f"count|{dates[0]}", "high": f"count|{dates[-1]}"}
    for row in store.counters.table.query_entities(query, parameters=bounds):
        day = row["PartitionKey"].removeprefix("count|")
        if day not in dates:
            continue
        for name, value in row.items():
            if name in ("PartitionKey", "RowKey") or "_" not in name or not isinstance(value, int):
                continue
            group, state = name.rsplit("_", 1)
            series.setdefault(group, {}).setdefault(state, [0] * days)[dates.index(day)] += value
    return series


def render(report: Status, series: dict[str, dict[str, list[int]]]) -> str:
    """The report as a few aligned tables."""
    lines = []
    if not report.index_built:
        lines.append(
            "The index is still being built (python -m leads reindex): deliveries from before it may be missing."
        )
    if not report.held_back_counted:
        lines.append(
            "Held-back deliveries are still being counted (a store from before their tally): the figure "
            "grows until the maintenance run or python -m leads reindex has counted them."
        )
    names = sorted((set(series) - {"intake"}) | set(report.open) | set(report.failed) | set(report.held_back))
    width = max([11, *map(len, names)])
    days = report.days
    delivered_head, failed_head = f"DELIVERED {days}d", f"FAILED {days}d"
    lines.append(
        f"{'DESTINATION':<{width}}  {delivered_head:<{days + 6}}  {failed_head:<{days + 6}}"
        f"  {'OPEN':>5}  {'FAILED':>6}  {'HELD':>5}"
    )
    for name in names:
        delivered, failed = (series.get(name, {}).get(state, [0] * days) for state in ("delivered", "failed"))
        lines.append(
            f"{name:<{width}}  {spark(delivered)} {sum(delivered):>5}  {spark(failed)} {sum(failed):>5}"
            f"  {report.open.get(name, 0):>5}  {report.failed.get(name, 0):>6}"
            f"  {report.held_back.get(name, 0):>5}"
        )
    if not names:
        lines.append("(no delivery in the last days, nothing open or failed)")
    rejected = series.get("intake", {}).get("rejected", [0] * days)
    if sum(rejected):
        lines.append(f"{'refused input':<{width}}  {spark(rejected)} {sum(rejected):>5}   (python -m leads list)")
    lines += ["", *_arrivals(report.watch)]
    return "\n".join(lines)


def _arrivals(watch: dict[str, Any]) -> list[str]:
    rows = watch.get("arrivals") or []
    lines = []
    if rows:
        width = max([5, *(len(row["offer"] or "(all)") for row in rows)])
        lines.append(f"{'OFFER':<{width}}  {'LAST LEAD':<10}  {'SILENT':>6}  {'ALARM AFTER':>11}  STATE")
        for row in rows:
            state = f"SILENT: {row['likelyCause']}" if row["silent"] else "ok"
            lines.append(
                f"{row['offer'] or '(all)':<{width}}  {row['lastLeadDay']}  {row['silentDays']:>5}d"
                f"  {row['thresholdDays']:>10}d  {state}"
            )
        lines += [f"  {row['offer'] or 'all'}: {row['whatToDo']}" for row in rows if row["silent"]]
    else:
        lines.append("No lead has arrived yet: the silence watch starts with the first.")
    poll = watch.get("poll") or {}
    if poll.get("failing"):
        since = poll["lastFailedAt"][:16].replace("T", " ")
        lines.append(f"Table poll: FAILING since {since} UTC ({poll['lastError']})")
    elif poll.get("lastOkAt"):
        missing = ", the marketplace table does not exist yet" if poll.get("tableMissing") else ""
        last = poll["lastOkAt"][:16].replace("T", " ")
        lines.append(f"Table poll: ok (its successes are noted hourly; the last noted {last} UTC{missing})")
    if watch.get("poisonMessages"):
        lines.append(
            f"Poison queue: {watch['poisonMessages']} messages the host gave up on (docs/operations.md#alerts)"
        )
    return lines
