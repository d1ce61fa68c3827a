"""Masking a lead's personal values in a text that is about to be kept, logged or mailed.

Services echo what they were sent (``duplicate value found: jane@contoso.com``, ``Lovelace: data
value too large``, ``Al is not a valid name``). Every destination's error text passes through
:func:`mask_personal` before it is recorded (``leads/delivery/deliver.py`` does it for all of them): each
personal value of the lead (first, last and full name, email and its local part, phone in any
spelling, company, title, description and each of its lines) is masked wherever it stands as a
whole word, whatever its length or kind, and then anything shaped like an email address or a phone
number (the log scrubber's patterns, ``leads/core/telemetry.py``) is masked too. The text ends as one
line, capped in length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leads.core.model import Lead

MASK = "…"
# How much of a service's own error text is kept.
TEXT_MAX = 500
_SEPARATORS = r"[\s().-]*"


def mask_personal(text: str, leads: Lead | Iterable[Lead | None] | None = None, limit: int = TEXT_MAX) -> str:
    """``text`` without the personal values of ``leads``, nor any email address or phone number,
    on one line and at most ``limit`` characters."""
    from leads.core.telemetry import redact
    from leads.destinations.notice import within

    text = " ".join(str(text or "").split())
    for pattern in _patterns(leads):
        text = pattern.sub(MASK, text)
    text = redact(text)
    return within(text, limit)


def _patterns(leads: Lead | Iterable[Lead | None] | None) -> list[re.Pattern[str]]:
    from leads.core.model import Lead

    if leads is None:
        return []
    values: set[str] = set()
    phones: set[str] = set()
    for lead in [leads] if isinstance(leads, Lead) else leads:
        if lead is None:
            continue
        values.update(lead.personal_values())
        if lead.full_name:
            values.add(lead.full_name)
        if lead.email and "@" in lead.email:
            values.add(lead.email.rpartition("@")[0])
        if lead.description:
            values.update(line.strip() for line in lead.description.splitlines() if line.strip())
        digits = re.sub(r"\D", "", lead.phone or "")
        if len(digits) >= 4:
            phones.add(digits[-min(len(digits), 9) :])  # the national number, however it is written
    patterns = []
    # Longest first, so that a full name goes before the first name inside it.
    for value in sorted({" ".join(v.split()) for v in values if v.strip()}, key=len, reverse=True):
        body = r"\s+".join(re.escape(part) for part in value.split())
        # A value of one or two characters is masked only as written (``Al``), not in any case
        # (which would blank every ``al`` of the service's own words).
        flags = re.IGNORECASE if len(value) > 2 else 0
        patterns.append(re.compile(rf"(?<!\w){body}(?!\w)", flags))
    for digits in phones:
        spelled = _SEPARATORS.join(digits)
        patterns.append(re.compile(rf"(?<![\w+])(?:\+?\d{{1,3}}{_SEPARATORS})?\(?0?{spelled}(?!\d)"))
    return patterns
