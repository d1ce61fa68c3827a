"""Notification latency through ``serve``: from a POST, and from a row landing in the marketplace
table (the poll at its default 30 s schedule), to the mail arriving at a fake ACS, p50/p95 in the
steady state; and the first lead after an idle period, when the queue listener has backed off to
its longest pause (host.json's ``maxPollingInterval``), as a lead after a quiet hour meets it in
Azure on an instance that is already running. See benchmarks/README.md, "Notification latency".
"""

from __future__ import annotations

import random
import re
import time
import uuid
from datetime import timedelta
from typing import Any

import leadgen
from common import REPO, RESULTS, Budget, Row, app_env, percentile, start_serve, stop

BUDGET_SECONDS = {"full": 260, "quick": 110}
LEADS, QUICK_LEADS = 200, 40  # steady state, on each path
IDLE_LEADS, QUICK_IDLE_LEADS = 8, 3  # one at a time, each after the listener reached its longest pause
MAIL_WAIT_SECONDS = 45  # the longest a mail may take before it counts as missing


def run(quick: bool, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    import tempfile

    import requests

    from leads.core.normalise import table_lead_id
    from leads.core.storage import table_service
    from leads.local.azurite import Azurite
    from leads.local.serve import HostOptions
    from tests.fake_acs import FakeAcs

    count = QUICK_LEADS if quick else LEADS
    idle_count = QUICK_IDLE_LEADS if quick else IDLE_LEADS
    longest_pause = HostOptions.read(REPO / "host.json").queues.max_polling_interval
    tag = uuid.uuid4().hex[:8]
    with Azurite() as azurite, FakeAcs(retry_after="1") as acs, tempfile.TemporaryDirectory() as outbox:
        env = {
            **app_env(azurite.connection_string, tag),
            "LEADS_POLL_SCHEDULE": "*/30 * * * * *",  # the default
            "LEADS_SWEEP_SCHEDULE": "0 0 0 1 1 *",  # nothing is lost here; a sweep would only add noise
            "EMAIL_OUTBOX_DIR": outbox,
            "EMAIL_CONNECTION_STRING": acs.connection_string,
            "EMAIL_SENDER": "DoNotReply@contoso.azurecomm.net",
            "EMAIL_TO": "sales@contoso.com",
            # The pipeline's latency, not ACS's quota: at 30 a minute (100 an hour) a burst becomes digests.
            "EMAIL_PER_MINUTE": "100000",
            "EMAIL_PER_HOUR": "1000000",
            "REQUESTS_CA_BUNDLE": acs.ca_file,
        }
        process, url = start_serve(env, RESULTS / "notify-serve.log", budget)
        try:
            session = requests.Session()
            posted: dict[str, float] = {}
            for body in leadgen.http_bodies(count, seed=3):
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
            spread = max(0.05, min(0.3, budget.left() / 4 / max(count, 1)))
            for row in leadgen.table_entities(count, seed=4):
                if budget.over():
                    break
                table.create_entity(row)
                landed[table_lead_id(env["MARKETPLACE_TABLE_NAME"], row["PartitionKey"], row["RowKey"])] = time.time()
                time.sleep(spread)
            _wait_for_mails(acs, set(posted) | set(landed), MAIL_WAIT_SECONDS)

            # After a quiet spell: each lead arrives at a random moment of one of the longest pauses.
            after_idle: dict[str, float] = {}
            for body in leadgen.http_bodies(idle_count, seed=6):
                idle = (_time_to_longest_pause(longest_pause) + random.uniform(0, 1) * longest_pause).total_seconds()
                if budget.left() < idle + 10:
                    budget.cut_short = True
                    break
                time.sleep(idle)
                sent = time.time()
                response = session.post(f"{url}/api/leads", json=body, timeout=30)
                if response.status_code == 202:
                    after_idle[response.json()["leadId"]] = sent
                    _wait_for_mails(acs, {response.json()["leadId"]}, MAIL_WAIT_SECONDS)
        finally:
            stop(process)
        arrived = _mail_times(acs)

    rows = []
    details: dict[str, Any] = {"max_polling_interval_s": longest_pause.total_seconds()}
    paths = (
        ("POST → mail", posted, ""),
        ("table row → mail", landed, ", poll every 30 s"),
        (
            "POST → mail after idle",
            after_idle,
            f", listener at its longest pause ({longest_pause.total_seconds():g} s, host.json maxPollingInterval)",
        ),
    )
    for label, sent, about in paths:
        latencies = [arrived[lead] - at for lead, at in sent.items() if lead in arrived]
        missing = len(sent) - len(latencies)
        details[label] = {
            "leads": len(sent),
            "mails": len(latencies),
            "missing": missing,
            "latencies_s": sorted(latencies),
        }
        for fraction, title in ((0.5, "p50"), (0.95, "p95") if len(latencies) >= 20 else (1.0, "max")):
            if latencies:
                note = f"{len(latencies)} leads" + (f", {missing} without mail" if missing else "") + about
                rows.append(Row("notify", f"{title} {label}", percentile(latencies, fraction), "s", note=note))
    return rows, details


def _time_to_longest_pause(longest: timedelta) -> timedelta:
    """How long an idle queue listener may take to back off to its longest pause, at most: the
    extension's pauses are 100 ms, then 100 ms + 100 ms × 2^k (k = 0, 1, ...) each ±20 %, capped."""
    from leads.local.serve import QUEUE_POLL_MINIMUM as minimum
    from leads.local.serve import PollingBackoff

    spread = PollingBackoff.RANDOMIZATION
    total, step = minimum, 0
    while minimum + minimum * (1 - spread) * 2**step < longest:  # this pause may still be shorter
        total += min(longest, minimum + minimum * (1 + spread) * 2**step)
        step += 1
    return total + longest  # and one whole longest pause


def _wait_for_mails(acs, lead_ids: set[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while lead_ids - set(_mail_times(acs)) and time.monotonic() < deadline:
        time.sleep(0.05)


def _mail_times(fake) -> dict[str, float]:
    """Lead id → when the fake ACS accepted the first mail naming it."""
    times: dict[str, float] = {}
    for mail in list(fake.mails):
        for lead_id in re.findall(r"\b[ht][0-9a-f]{24}\b", mail["text"] or ""):
            times.setdefault(lead_id, mail["at"])
    return times
