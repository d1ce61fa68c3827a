"""``GET /api/health`` for anyone, ``GET /api/status`` for whoever holds the function key.

- :func:`health` is anonymous (uptime monitors and load balancers call it without a key), so it
  says only whether the app can take leads: ``{"status": "ok"}`` (200) or
  ``{"status": "unavailable"}`` (503). Its one storage probe is kept for
  :data:`HEALTH_CACHE_SECONDS`, so a stranger polling it costs at most one storage call per
  instance in that time, and it names nothing: no destination, table, path or error text.
- :func:`status` sits behind function-level auth and tells operators the rest: the readiness checks
  (storage, routing rules, unresolved Key Vault references, as ``check`` runs them but without
  calling any destination), which destinations are enabled, the marketplace table's name, and the
  deliveries exactly as ``python -m leads status --json`` prints them. URLs in it are masked.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from leads.core.settings import Settings, get_settings
from leads.core.telemetry import mask_urls
from leads.intake.ingest import Answer

HEALTH_CACHE_SECONDS = 10.0


@dataclass
class _Probe:
    ok: bool = False
    at: float = float("-inf")  # time.monotonic() of the probe


_last_probe = _Probe()
_probe_lock = threading.Lock()


def health(settings: Settings | None = None, now: float | None = None) -> Answer:
    """The status alone, from a storage probe at most :data:`HEALTH_CACHE_SECONDS` old."""
    global _last_probe
    now = time.monotonic() if now is None else now
    with _probe_lock:  # one probe at a time; callers meanwhile wait for its answer
        if now - _last_probe.at >= HEALTH_CACHE_SECONDS:
            from leads.ops.checks import storage_check

            _last_probe = _Probe(storage_check(settings or get_settings()).ok, now)
        ok = _last_probe.ok
    return Answer(200 if ok else 503, {"status": "ok" if ok else "unavailable"})


def status(settings: Settings | None = None) -> Answer:
    """Readiness checks, enabled destinations, the marketplace table and the deliveries' status."""
    from azure.core.exceptions import AzureError

    from leads.destinations import enabled_names
    from leads.ops.checks import key_vault_check, routing_check, storage_check
    from leads.ops.operations import status as delivery_status

    settings = settings or get_settings()
    checks = {
        "storage": storage_check(settings),
        "routing": routing_check(settings),
        "settings": key_vault_check(settings),
    }
    body: dict = {
        "status": "ok" if checks["storage"].ok else "unavailable",
        "readiness": {
            name: {"ok": check.ok, "message": mask_urls(check.message), "fix": check.fix and mask_urls(check.fix)}
            for name, check in checks.items()
        },
        "destinations": enabled_names(settings),
        "marketplaceTable": settings.marketplace_table_name,
    }
    if checks["storage"].ok:
        from leads.core.deadlines import STATUS_SECONDS
        from leads.core.http import deadline

        try:
            with deadline(STATUS_SECONDS):
                body.update(delivery_status(settings).to_dict())
        except AzureError as exc:  # storage went away between the probe and the read
            body["status"] = "unavailable"
            body["readiness"]["storage"] = {
                "ok": False,
                "fix": None,
                "message": f"deliveries cannot be read ({type(exc).__name__})",
            }
    return Answer(200 if body["status"] == "ok" else 503, body)
