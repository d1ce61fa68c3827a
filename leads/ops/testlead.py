"""``python -m leads test-lead``: what the marketplace's Validate button does, end to end.

Sends a lead whose fields carry the marketplace's ``MSFT_TEST_`` marker through the HTTP intake of
a running app, or writes it into the marketplace table for the app's poll to find, then waits for
it to be stored and for each of its deliveries to finish.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from leads.core.normalise import table_lead_id
from leads.core.settings import get_settings
from leads.store.lead_store import LeadStore
from leads.store.rows import FINAL


def test_lead_fields(marker: str) -> dict[str, str]:
    """The customer fields of a validation lead, as the marketplace fills them."""
    return {
        "FirstName": marker,
        "LastName": marker,
        "Email": f"{marker}@test.com",
        "Phone": "1234567890",
        "Country": "US",
        "Company": marker,
        "Title": marker,
    }


def run_test_lead(
    via: str = "http",
    url: str = "http://127.0.0.1:7071/api/leads",
    timeout: float = 120,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Send the lead and wait for it; ``progress`` hears, a line at a time, what is awaited."""
    marker = f"MSFT_TEST_{time.time_ns() // 100}"
    started = time.monotonic()
    if via == "http":
        lead_id = _send_http(url, marker)
        from leads.core.telemetry import mask_urls

        progress(f"Posted a test lead to {mask_urls(url)}; it is {lead_id}.")
    else:
        lead_id = _write_row(marker)
        progress(
            f"Wrote a test row into the marketplace table; waiting for the app's table poll to take it in "
            f"({_poll_timing()})."
        )
    store = LeadStore.from_settings()
    deadline = started + timeout
    lead = deliveries = None
    told: dict[str, str] = {}  # the state progress last heard of, per destination
    next_reminder = started + 10
    while time.monotonic() < deadline:
        stored_before = lead is not None
        lead = lead or store.get(lead_id)
        if lead is not None:
            deliveries = store.deliveries.for_lead(lead_id)
            if not stored_before:
                names = ", ".join(d.destination for d in deliveries) or "none"
                progress(
                    f"Stored as {lead_id} after {time.monotonic() - started:.0f} s; waiting for its "
                    f"deliveries ({names})."
                )
            for delivery in deliveries:
                if told.get(delivery.destination) != delivery.state and delivery.state in FINAL | {"retrying"}:
                    told[delivery.destination] = delivery.state
                    error = f": {delivery.last_error}" if delivery.last_error and delivery.state != "delivered" else ""
                    elapsed = time.monotonic() - started
                    progress(f"  {delivery.destination} {delivery.state} after {elapsed:.0f} s{error}")
            if all(d.state in FINAL for d in deliveries):
                break
        if time.monotonic() >= next_reminder:
            next_reminder += 10
            awaited = "the deliveries" if lead is not None else "the lead to be stored"
            progress(f"  still waiting for {awaited} ({time.monotonic() - started:.0f} of {timeout:g} s)")
        time.sleep(0.5)
    report = {
        "leadId": lead_id,
        "via": via,
        "stored": lead is not None,
        "deliveries": [d.to_dict() for d in deliveries or []],
    }
    report["ok"] = lead is not None and all(d["state"] in ("delivered", "skipped") for d in report["deliveries"])
    if lead is None:
        where = " and polling the marketplace table?" if via == "table" else f" at {url}?"
        report["problem"] = f"the lead was not stored within {timeout:g}s: is the app running{where}"
    return report


def _poll_timing() -> str:
    """When the app polls next, by the schedule this process's settings give it."""
    from croniter import croniter

    schedule = get_settings().poll_schedule
    try:
        due = croniter(schedule, datetime.now(UTC), second_at_beginning=True).get_next(datetime)
    except (ValueError, KeyError):
        return f"LEADS_POLL_SCHEDULE is {schedule!r}"
    return f"LEADS_POLL_SCHEDULE {schedule!r}: next poll at {due:%H:%M:%S} UTC"


def _send_http(url: str, marker: str) -> str:
    import requests

    body = {
        "UserDetails": test_lead_fields(marker),
        "LeadSource": "AzureMarketplace",
        "ActionCode": "INS",
        "OfferTitle": "Lead router validation",
        "Description": marker,
    }
    try:
        response = requests.post(url, json=body, timeout=30)
    except requests.RequestException as error:
        from leads.core.telemetry import mask_urls
        from leads.destinations.base import classify_error

        raise SystemExit(
            f"test-lead: the lead could not be posted to {mask_urls(url)}: {classify_error(error)}.\n"
            "  To do: start the app with `make run` (it writes its port to local.settings.json, "
            "Host.LocalHttpPort, where test-lead reads it), or give the intake with --url (the "
            "deployed app's: https://<app>.azurewebsites.net/api/leads?code=<function key>)."
        ) from None
    if response.status_code not in (200, 202):
        from leads.core.telemetry import mask_urls

        raise SystemExit(
            f"test-lead: the intake at {mask_urls(url)} answered {response.status_code}: "
            f"{response.text[:500]}\n  Is it this app? make run writes the port it serves on to "
            "local.settings.json (Host.LocalHttpPort); --url names another intake."
        )
    return response.json()["leadId"]


def _write_row(marker: str) -> str:
    from azure.core.exceptions import ResourceExistsError

    from leads.intake.poll import marketplace_table

    settings = get_settings()
    table = marketplace_table(settings)
    try:
        table.create_table()
    except ResourceExistsError:
        pass
    now = datetime.now(UTC)
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
