"""What the polls of a marketplace table last kept of their health: when one last worked, when
one last failed and why. The poll writes it beside its checkpoint; the silence watch, ``status``
and ``check`` read it to name a failing poll as the cause of a silence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leads.store.lead_store import LeadStore

CHECKPOINT_PARTITION = "marketplace-poll"  # the polls' partition of the checkpoints table
HEALTH_SUFFIX = "|health"  # after the table's name: the RowKey of its health, beside its checkpoint


@dataclass(frozen=True)
class PollHealth:
    """The last poll of a table that worked, the last that failed and why (its kind and status)."""

    ok_at: datetime | None = None
    failed_at: datetime | None = None
    error: str = ""
    table_missing: bool = False

    @property
    def failing(self) -> bool:
        return self.failed_at is not None and (self.ok_at is None or self.failed_at > self.ok_at)

    @classmethod
    def from_entity(cls, entity: dict[str, Any]) -> PollHealth:
        return cls(
            entity.get("OkAt"), entity.get("FailedAt"), str(entity.get("Error") or ""), bool(entity.get("TableMissing"))
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "lastOkAt": self.ok_at and self.ok_at.isoformat(),
            "failing": self.failing,
            "lastFailedAt": self.failed_at and self.failed_at.isoformat(),
            "lastError": self.error or None,
            "tableMissing": self.table_missing,
        }


def poll_health(store: LeadStore, table_name: str) -> PollHealth:
    """The health the polls of ``table_name`` last kept (nothing known before the first)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return PollHealth.from_entity(store.checkpoints.get_entity(CHECKPOINT_PARTITION, table_name + HEALTH_SUFFIX))
    except ResourceNotFoundError:
        return PollHealth()
