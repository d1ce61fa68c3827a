"""What is left of an erased lead so that it is never taken in again: its tombstone.

Erasing a lead (``forget``, retention) deletes its identity row, which is what ``import`` matches a
file's row by. Partner Center keeps six months of leads, longer than most retention periods, so
without something in its place the next import of the download would store the erased person
again and mail sales about them again. So erasure first writes a tombstone beside the identity
rows, in the partition of the day the lead arrived (``<prefix>Identities``, PartitionKey
``<YYYY-MM-DD>``, RowKey ``erased|<lead id>``), which the import reads in the same request as the
identity rows of that day: finding tombstones costs an import nothing more.

A tombstone holds no personal data: the keyed digests of the lead's identities (its email and
offer, its name, company and offer: ``Who``, as its identity row held them; :mod:`leads.core.pseudonyms`),
whether it named an email, when the lead arrived and when it was erased. Without the key nobody can
test a digest against a guess; with it, only a person's details presented again (a row of a file)
are recognised as an erased lead's. docs/security.md says why keeping it is allowed. It is no
derived row (nothing else says what it says): ``verify`` leaves it alone.

The HTTP intake and the table poll need no tombstone: an HTTP lead's id is the keyed digest of its
content and a table lead's comes from its row's keys, and the erased lead row keeps its id, so a
repeat of either finds the erased row itself (``Stored.erased``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from leads.store.identities import identity_keys
from leads.store.rows import day_of as _day

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from leads.core.model import Lead

ROW_PREFIX = "erased|"


def bury(table: TableClient, lead: Lead, erased_at: datetime) -> bool:
    """Write the tombstone of ``lead`` (as it was before erasure) into the identities ``table``;
    whether it has an identity to keep one for (a lead that names no one has none)."""
    from azure.data.tables import UpdateMode

    keys = identity_keys(lead)
    if not keys:
        return False
    table.upsert_entity(
        {
            "PartitionKey": _day(lead.received_at),
            "RowKey": ROW_PREFIX + lead.lead_id,
            "Who": " ".join(keys),
            "HasEmail": bool(lead.email),
            "ReceivedAt": lead.received_at,
            "ErasedAt": erased_at,
        },
        mode=UpdateMode.REPLACE,
    )
    return True


def buried(row: dict[str, Any] | Any) -> str | None:
    """The erased lead's id when a row of the identities table is a tombstone, else None."""
    row_key = row["RowKey"]
    return row_key[len(ROW_PREFIX) :] if row_key.startswith(ROW_PREFIX) else None
