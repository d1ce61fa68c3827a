"""The normalised lead: one shape for every lead, whichever way it came in; and the route
routing gives it to each destination.

Its JSON form (camelCase, ``Lead.to_json()``) is part of the outside contract: the CLI prints it,
the webhook posts it, and CRMs are mapped from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Channel = Literal["http", "table", "import"]


class _Personal:
    """The mark of a lead's field that holds personal data: erasure blanks it, redaction masks its
    value in what the services answer and in logs, a destination's error text leaves it out."""

    def __repr__(self) -> str:
        return "PERSONAL"


PERSONAL = _Personal()

# The marketplace's codes, with the words a sales team reads.
SOURCES = {
    "AzureMarketplace": "Azure Marketplace",
    "AzurePortal": "Azure portal",
    "AppSource": "AppSource",
    "TestDrive": "Test Drive",
}
ACTIONS = {
    "INS": "Install",
    "PLT": "Contact me",
    "DNC": "Do not contact",
    "Create": "Purchase",
    "StartTestDrive": "Test drive started",
}


class Lead(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    lead_id: str
    received_at: datetime
    channel: Channel
    source: str | None = None
    action: str | None = None
    offer_id: str | None = None
    offer_title: str | None = None
    first_name: Annotated[str | None, PERSONAL] = None
    last_name: Annotated[str | None, PERSONAL] = None
    email: Annotated[str | None, PERSONAL] = None
    email_valid: bool | None = Field(
        None, description="Whether `email` passed the syntax check; null when there is no email."
    )
    phone: Annotated[str | None, PERSONAL] = None
    country: str | None = None
    company: Annotated[str | None, PERSONAL] = None
    title: Annotated[str | None, PERSONAL] = None
    description: Annotated[str | None, PERSONAL] = None
    campaign: dict[str, Any] = Field(default_factory=dict)
    is_test: bool = False
    do_not_contact: bool = False
    pii_withheld: bool = False
    raw: Any = None

    def personal_values(self) -> list[str]:
        """The values of its personal fields (:data:`PERSONAL_FIELDS`) that are set."""
        return [value for name in PERSONAL_FIELDS if (value := getattr(self, name))]

    @property
    def full_name(self) -> str | None:
        return " ".join(part for part in (self.first_name, self.last_name) if part) or None

    @property
    def source_words(self) -> str | None:
        return SOURCES.get(self.source, self.source) if self.source else None

    @property
    def action_words(self) -> str | None:
        return ACTIONS.get(self.action, self.action) if self.action else None

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON form as Python values (datetimes as ISO 8601 text)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Lead:
        return cls.model_validate_json(text)


# The lead's personal fields, in the order the model declares them: the one list.
PERSONAL_FIELDS = tuple(name for name, field in Lead.model_fields.items() if PERSONAL in field.metadata)


@dataclass(frozen=True)
class Route:
    """What routing decided for one lead and one destination."""

    recipients: tuple[str, ...] = ()
    test: bool = False  # a test lead: destinations mark it as such
    # Changes when an operator replays a failed delivery, so that a destination's idempotency key
    # (e.g. the ACS Operation-Id) makes the replay a new send rather than a repeat of the old one.
    generation: str = ""
    # Why the delivery is stored skipped rather than sent (a lead older than LEADS_BACKFILL_DAYS).
    skip_reason: str = ""
    # Why the delivery is stored skipped if it names no recipients, for a destination that needs
    # some (its class's ``needs_recipients``, which routing copies here); "" for one that needs none.
    unaddressed: str = ""
    # The idempotency key fixed when a durable digest was claimed (leads/delivery/digests.py): a retry of
    # that digest names the same operation, whatever else changed.
    operation: str = ""
    # The named field mapping a routing rule picked for a CRM (leads/destinations/mapping.py); "" the default.
    mapping: str = ""
