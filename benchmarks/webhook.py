"""Webhook delivery: leads delivered by ``serve``'s queue worker to a fake webhook taking 50 ms a call,
against one POST after another (20/s). See benchmarks/README.md.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import leadgen
from common import REPO, RESULTS, Budget, Row, app_env, app_environment, cost_ratio, start_serve, stop

BUDGET_SECONDS = {"full": 120, "quick": 40}
LEADS, QUICK_LEADS = 1_000, 200


def run(quick: bool, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    """1,000 leads delivered by ``serve``'s queue worker to a webhook taking 50 ms a call, against
    the same POSTs made one after another (what a sequential forwarder achieves)."""
    import tempfile

    from leads.core.normalise import from_http_body
    from leads.core.settings import get_settings
    from leads.delivery.deliver import enqueue
    from leads.local.azurite import Azurite
    from leads.local.serve import HostOptions
    from leads.store.lead_store import LeadStore
    from tests.fake_webhook import FakeWebhook

    count = QUICK_LEADS if quick else LEADS
    tag = uuid.uuid4().hex[:8]
    with Azurite() as azurite, FakeWebhook(latency=0.05) as webhook, tempfile.TemporaryDirectory() as outbox:
        env = {
            **app_env(azurite.connection_string, tag),
            "WEBHOOK_URL": webhook.url,
            "WEBHOOK_SECRET": webhook.secret,
            "EMAIL_TO": "",
            "EMAIL_OUTBOX_DIR": outbox,
            "LEADS_POLL_SCHEDULE": "0 0 0 1 1 *",
        }
        leads = [from_http_body(body) for body in leadgen.http_bodies(count, seed=5)]
        with app_environment(env):
            store = LeadStore.from_settings()
            for lead in leads:
                store.add(lead, {"webhook": _route()})
            process, _ = start_serve(env, RESULTS / "webhook-serve.log", budget)
            try:
                started = time.monotonic()
                for lead in leads:
                    enqueue(lead.lead_id, {"webhook": _route()}, get_settings())
                while len(webhook.leads) < len(leads) and not budget.over():
                    time.sleep(0.05)
                elapsed = time.monotonic() - started
            finally:
                stop(process)
        delivered = len(webhook.leads)
    ours = delivered / elapsed if elapsed else None
    sequential = 1 / 0.05
    queues = HostOptions.read(REPO / "host.json").queues
    in_flight = queues.batch_size + queues.new_batch_threshold
    rows = [
        Row(
            "webhook",
            f"{delivered:,} leads, 50 ms per call",
            ours,
            "/s",
            sequential,
            cost_ratio(ours, sequential, rate=True),
            note=f"serve's queue worker (up to {in_flight} in flight) vs one POST after another",
        )
    ]
    return rows, {"delivered": delivered, "seconds": elapsed, "requests": webhook.requests}


def _route():
    from leads.destinations.base import Route

    return Route()
