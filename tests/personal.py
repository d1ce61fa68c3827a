"""How a test asks whether a person's value shows in a text it checks.

A name or an email is long enough to look for as it is. A short run of digits (the ``7946`` of a
phone number, kept short so that a masked or re-formatted phone is caught too) is not: the same four
digits turn up by chance in a timestamp's fraction, an ETag or a hex lead id, and a test that looked
for them as they are failed a CI run. A digit run counts only where no letter or digit touches it, as
a phone's groups are written ("425-555-0142", "+44 *** *** 0958"). A text full of request ids (a
DEBUG log of the SDKs) can still hold a group by chance between two hyphens: look there for the
phone's longer forms instead.
"""

from __future__ import annotations

import re


def shown(value: str, text: str) -> bool:
    if not value.isdigit():
        return value in text
    return re.search(rf"(?<![0-9A-Za-z]){value}(?![0-9A-Za-z])", text) is not None


def leaked(values, text: str) -> list[str]:
    """The ``values`` that show in ``text``: a test asserts this is empty."""
    return [value for value in values if shown(value, text)]
