"""Leads per second delivered to the fake Salesforce org, and token requests per 1,000 leads.

    .venv/bin/python benchmarks/crm_salesforce.py [COUNT] [LATENCY]

``benchmark()`` sends ``count`` varied leads (benchmarks/leadgen.py) one after another through the
REST API destination's ``send`` against tests/fake_salesforce.py with ``latency`` seconds added to
every call, as a real org's round trip: first with an external id field (one upsert per lead),
then without (a SOQL look-up and a create per lead).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (str(HERE.parent), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)


def _run(count: int, latency: float, external_id_field: str | None) -> dict[str, float]:
    import leadgen

    from leads.core.normalise import from_http_body
    from leads.destinations import Route
    from leads.destinations.salesforce import SalesforceDestination
    from tests.fake_salesforce import FakeSalesforce

    leads = [from_http_body(body) for body in leadgen.http_bodies(count)]
    with FakeSalesforce(latency=latency, external_id_field=external_id_field) as fake:
        destination = SalesforceDestination(
            fake.url, fake.client_id, fake.client_secret, external_id_field or "", timeout=30, session=fake.session()
        )
        route = Route()
        started = time.perf_counter()
        for lead in leads:
            destination.send(lead, route)
        elapsed = time.perf_counter() - started
        assert len(fake.records) == len({lead.lead_id for lead in leads}), "a lead was lost or duplicated"
        return {
            "leads_per_second": round(count / elapsed, 2),
            "token_requests_per_1000": round(fake.token_requests * 1000 / count, 2),
            "api_calls_per_lead": round(fake.api_calls / count, 3),
        }


def benchmark(count: int = 200, latency: float = 0.05) -> dict:
    """Sequential sends; the headline figures are the upsert path's (the recommended setup)."""
    upsert = _run(count, latency, "Marketplace_Lead_Id__c")
    lookup = _run(count, latency, None)
    return {
        **upsert,
        "lookup_leads_per_second": lookup["leads_per_second"],
        "lookup_token_requests_per_1000": lookup["token_requests_per_1000"],
        "lookup_api_calls_per_lead": lookup["api_calls_per_lead"],
        "count": count,
        "latency": latency,
    }


if __name__ == "__main__":
    import json

    arguments = [float(value) for value in sys.argv[1:3]]
    print(json.dumps(benchmark(int(arguments[0]) if arguments else 200, *arguments[1:]), indent=2))
