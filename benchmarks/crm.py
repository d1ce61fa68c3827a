"""CRM destinations: each one's ``send`` against its fake with 50 ms a call, leads one after another
under the CRM's own rate limit, and the token requests it makes. See benchmarks/README.md.
"""

from __future__ import annotations

from typing import Any

from common import Budget, Row, cost_ratio

BUDGET_SECONDS = {"full": 200, "quick": 80}
LEADS, QUICK_LEADS = 200, 60


def run(quick: bool, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    """Each CRM destination's ``send`` against its fake with 50 ms per call: leads per second and
    token requests per 1,000 leads (the fakes hold each CRM's own rate limits)."""
    import crm_salesforce

    from tests import fake_dynamics, fake_hubspot, fake_marketo

    runs = {
        "dynamics": fake_dynamics.benchmark,
        "salesforce": crm_salesforce.benchmark,
        "marketo": fake_marketo.benchmark,
        "hubspot": fake_hubspot.benchmark,
    }
    count = QUICK_LEADS if quick else LEADS
    rows, details = [], {}
    for name, benchmark in runs.items():
        if budget.over():
            break
        figures = benchmark(count=count, latency=0.05)
        details[name] = figures
        rows.append(
            Row(
                "crm",
                f"{name}: leads/s, 50 ms a call",
                figures["leads_per_second"],
                "/s",
                20.0,
                cost_ratio(figures["leads_per_second"], 20.0, rate=True),
                note=f"{count} sequential; ceiling 20/s at one call a lead",
            )
        )
        tokens = figures.get("token_requests", round(figures["token_requests_per_1000"] * count / 1000))
        rows.append(
            Row(
                "crm",
                f"{name}: token requests for {count} leads",
                tokens,
                "",
                note="a static token (service key)" if name == "hubspot" else "one per token lifetime",
            )
        )
    return rows, details
