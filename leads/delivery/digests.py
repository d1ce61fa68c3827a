"""Digests: one send carrying several deliveries to the same recipients (email, when more leads
wait for the mail service's rate than it allows), made durable before anything is sent.

The worker that folds waiting deliveries into one send claims each of them naming the digest
(``Digest`` on its delivery row), then writes the digest's row: its members, its Operation-Id
(the idempotency key the destination is given: ACS's ``Operation-Id``), its route. Only then does
it send. From then on the digest is the unit of work:

- a retry after a transient failure, or a recovery (the sweep finding members whose claim ran out
  because the worker died), sends exactly that digest again, with the same Operation-Id, so the
  service recognises a repeat of a send that had gone out;
- its members join no other digest while it is ``open`` (they wait for nothing else);
- once it is ``sent``, a member still open is marked delivered without a send; once ``failed``, a
  replayed member is sent afresh (alone or in a new digest).

A member whose digest row was never written (the worker died before) owes nothing to it: nothing
was sent, and it is delivered as if it had never been folded.

Rows live in the lead store's table, ``PartitionKey`` ``digest|<id>``, ``RowKey`` ``digest``, and
are changed with ETags; they are read by id only (from a member's row), never scanned.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from leads.core.model import Route

if TYPE_CHECKING:
    from azure.data.tables import TableClient

PARTITION_PREFIX = "digest|"
ROW = "digest"
OPEN, SENT, FAILED = "open", "sent", "failed"


@dataclass(frozen=True)
class Digest:
    id: str  # also its Operation-Id
    destination: str
    members: tuple[str, ...]  # lead ids
    route: Route
    state: str = OPEN
    claimed_until: datetime | None = None
    external_id: str | None = None
    etag: str | None = None


class DigestBook:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    def create(self, digest: Digest) -> Digest:
        metadata = self.table.create_entity(_to_entity(digest))
        return replace(digest, etag=metadata["etag"])

    def get(self, digest_id: str) -> Digest | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return _from_entity(self.table.get_entity(PARTITION_PREFIX + digest_id, ROW))
        except ResourceNotFoundError:
            return None

    def change(self, digest: Digest, **changes: Any) -> Digest | None:
        """Write ``changes`` if the row is still as ``digest`` read it; None if it moved on."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        updated = replace(digest, **changes)
        try:
            metadata = self.table.update_entity(
                _to_entity(updated),
                mode=UpdateMode.REPLACE,
                etag=digest.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return replace(updated, etag=metadata["etag"])


def _to_entity(digest: Digest) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": PARTITION_PREFIX + digest.id,
        "RowKey": ROW,
        "Destination": digest.destination,
        "Members": json.dumps(list(digest.members)),
        "Recipients": ";".join(digest.route.recipients),
        "Test": digest.route.test,
        "Generation": digest.route.generation,
        "State": digest.state,
        "UpdatedAt": datetime.now(UTC),
    }
    if digest.claimed_until is not None:
        entity["ClaimedUntil"] = digest.claimed_until
    if digest.external_id is not None:
        entity["ExternalId"] = digest.external_id
    return entity


def _from_entity(entity: Mapping[str, Any]) -> Digest:
    digest_id = entity["PartitionKey"][len(PARTITION_PREFIX) :]
    claimed = entity.get("ClaimedUntil")
    if claimed is not None and claimed.tzinfo is None:
        claimed = claimed.replace(tzinfo=UTC)
    route = Route(
        recipients=tuple(r for r in (entity.get("Recipients") or "").split(";") if r),
        test=bool(entity.get("Test")),
        generation=entity.get("Generation") or "",
        operation=digest_id,
    )
    return Digest(
        id=digest_id,
        destination=entity["Destination"],
        members=tuple(json.loads(entity["Members"])),
        route=route,
        state=entity.get("State") or OPEN,
        claimed_until=claimed,
        external_id=entity.get("ExternalId"),
        etag=getattr(entity, "metadata", {}).get("etag"),
    )
