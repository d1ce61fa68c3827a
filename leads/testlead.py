"""``python -m leads test-lead``: what the marketplace's Validate button does, end to end.

Sends a lead whose fields carry the marketplace's ``MSFT_TEST_`` marker through the HTTP intake of
a running app, or writes it into the marketplace table for the app's poll to find, then waits for
it to be stored and for each of its deliveries to finish.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from .deliveries import FINAL
from .normalise import table_lead_id
from .settings import get_settings
from .store import LeadStore


def test_lead_fields(marker: str) -> dict[str, str]:
    """The customer fields of a validation lead, as the marketplace fills them."""
    return {"FirstName": marker, "LastName": marker, "Email": f"{marker}@test.com", "Phone": "1234567890",
            "Country": "US", "Company": marker, "Title": marker}  # fmt: skip


def run_test_lead(via: str = "http", url: str = "http://127.0.0.1:7071/api/leads", timeout: float = 120) -> dict[str, Any]:
    marker = f"MSFT_TEST_{time.time_ns() // 100}"
    lead_id = _send_http(url, marker) if via == "http" else _write_row(marker)
    store = LeadStore.from_settings()
    deadline = time.monotonic() + timeout
    lead = deliveries = None
    while time.monotonic() < deadline:
        lead = lead or store.get(lead_id)
        if lead is not None:
            deliveries = store.deliveries.for_lead(lead_id)
            if all(d.state in FINAL for d in deliveries):
                break
        time.sleep(0.5)
    report = {
        "leadId": lead_id,
        "via": via,
        "stored": lead is not None,
        "deliveries": [d.to_dict() for d in deliveries or []],
    }
    report["ok"] = lead is not None and all(d["state"] in ("delivered", "skipped") for d in report["deliveries"])
    if lead is None:
        report["problem"] = (f"the lead was not stored within {timeout:g}s: is the app running"
                             + (" and polling the marketplace table?" if via == "table" else f" at {url}?"))  # fmt: skip
    return report


def _send_http(url: str, marker: str) -> str:
    import requests

    body = {"UserDetails": test_lead_fields(marker), "LeadSource": "AzureMarketplace", "ActionCode": "INS",
            "OfferTitle": "Lead router validation", "Description": marker}  # fmt: skip
    response = requests.post(url, json=body, timeout=30)
    if response.status_code not in (200, 202):
        raise SystemExit(f"the intake at {url} answered {response.status_code}: {response.text[:500]}")
    return response.json()["leadId"]


def _write_row(marker: str) -> str:
    from azure.core.exceptions import ResourceExistsError

    from .poll import marketplace_table

    settings = get_settings()
    table = marketplace_table(settings)
    try:
        table.create_table()
    except ResourceExistsError:
        pass
    now = datetime.now(timezone.utc)
    row = {
        "PartitionKey": now.strftime("%Y-%m-%d"),
        "RowKey": str(uuid.uuid4()),
        "ActionCode": "INS",
        "CreatedTime": now.isoformat(),
        "CustomerInfo": json.dumps(test_lead_fields(marker)),
        "Description": marker,
        "LeadSource": "AzureMarketplace",
        "OfferDisplayName": "Lead router validation",
    }
    table.create_entity(row)
    return table_lead_id(settings.marketplace_table_name, row["PartitionKey"], row["RowKey"])
