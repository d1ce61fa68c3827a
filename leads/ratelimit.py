"""The send rates that destinations allow, shared by every instance of the app.

A :class:`RateLimiter` is a sliding window of sends per destination, kept in one row of the
checkpoints table (``rate``/``<destination>``) and changed with ETags (``storage.change_row``), so
that instances on several machines keep to one limit between them: the mail service's per-minute
cap (lead mails and alert mails take slots alike), a CRM's quota.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import LeadStore


class RateLimiter:
    """A sliding window of sends per destination, shared by every instance through one row
    written with ETags. ``acquire`` takes a slot, or says how many seconds until one frees."""

    def __init__(self, store: LeadStore, name: str, limit: int, period: float) -> None:
        self.table = store.checkpoints
        self.key = ("rate", name)
        self.limit, self.period = limit, period

    def acquire(self, now: datetime) -> float | None:
        import json

        from .storage import RowKeptChanging, change_row

        stamp, wait = now.timestamp(), None

        def taken(entity: Mapping[str, object] | None) -> dict[str, str] | None:
            nonlocal wait
            sends = [s for s in json.loads(entity["Sends"]) if s > stamp - self.period] if entity else []
            if len(sends) >= self.limit:
                wait = max(1.0, min(sends) + self.period - stamp)
                return None
            return {"Sends": json.dumps([*sends, stamp])}

        try:
            change_row(self.table, *self.key, taken, tries=20)
        except RowKeptChanging:
            return 1.0
        return wait
