"""What a notification says about a lead, wherever it is shown: the headline, banners (test,
do not contact, personal data withheld), labelled facts, the next step for sales, and where to
find what is left out. Email, Teams and Slack render this one view, each in its own format, so
a lead reads alike in every channel and ``EMAIL_PII`` means the same everywhere:

- ``full``: everything the lead holds.
- ``masked``: names as initials, ``j***@contoso.com``, ``+1 *** *** 5555`` (the last four digits
  only); company and title stay (the business context sales needs); the free-text description is
  left out, since no mask can be trusted on free text.
- ``none``: no personal data at all (not name, email, phone, company, title, description); the
  notice says where to find the lead instead (``LEADS_PORTAL_URL``, or ``python -m leads show``).

Values are returned as plain text: each renderer escapes them for its own format, and bounds
them with :func:`within` (a Slack section, a Teams error code) or :func:`one_line` (a mail header).
"""

from __future__ import annotations

import json
import re
from datetime import UTC
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from leads.core.model import Lead

# What sales should do, by action code.
NEXT_STEPS = {
    "INS": "The customer installed or acquired the offer: welcome them and offer help getting started.",
    "Create": "The customer bought the offer in the Azure portal: welcome them and offer help with onboarding.",
    "PLT": "The customer asked to be contacted: call or email them back within one business day.",
    "StartTestDrive": "The customer started a test drive: follow up on how it went and offer a walkthrough.",
}
NEXT_STEP_OTHER = "Review the lead and follow up as its action suggests."
NEXT_STEP_DNC = (
    "Do NOT contact this customer. Record the lead only: the marketplace marked it do-not-contact "
    "(it came through a cross-listed partner)."
)
NEXT_STEP_TEST = (
    "Nothing to do: this is a test lead (the marketplace's validation, or python -m leads test-lead), "
    "and no customer is behind it. It shows that leads reach you."
)


def headline(lead: Lead, pii: str) -> str:
    """``New lead: Contoso — Contoso CRM (Contact me)``, or ``Do not contact: ...``."""
    who = _who(lead, pii)
    what = " — ".join(part for part in (who, offer_name(lead)) if part)
    if lead.do_not_contact:
        return f"Do not contact: {what}"
    action = lead.action_words
    return f"New lead: {what}" + (f" ({action})" if action else "")


def _who(lead: Lead, pii: str) -> str | None:
    if pii == "none":
        return None
    if lead.company:
        return lead.company
    return lead.full_name if pii == "full" else initials(lead)


def offer_name(lead: Lead) -> str:
    return lead.offer_title or lead.offer_id or "an offer"


def lead_view(lead: Lead, pii: str, portal_url: str, test: bool, heading: str) -> dict[str, Any]:
    """What the templates show of one lead: banners, labelled rows, the next step."""
    banners = []
    if lead.do_not_contact:
        banners.append(
            banner(
                "DO NOT CONTACT this customer. The marketplace marked this lead do-not-contact: record "
                "it only; do not call, email or add them to a campaign.",
                "#c50f1f",
                "#fdf3f4",
            )
        )
    if test:
        banners.append(banner("[TEST] This is a test lead, not a customer.", "#bc4b09", "#fff9f5"))
    if lead.pii_withheld:
        banners.append(
            banner(
                "The marketplace withheld this customer's personal data (as it does for some "
                "customers, e.g. education tenants).",
                "#616161",
                "#f5f5f5",
            )
        )

    rows: list[dict[str, Any]] = []

    def row(label: str, value: Any, href: str | None = None, multiline: bool = False) -> None:
        if value not in (None, "", [], {}):
            rows.append({"label": label, "value": str(value), "href": href, "multiline": multiline})

    if pii == "full":
        row("Name", lead.full_name)
        row("Company", lead.company)
        row("Title", lead.title)
        if lead.email:
            valid = lead.email_valid is not False
            row(
                "Email",
                lead.email + ("" if valid else " (not a valid address)"),
                href="mailto:" + quote(lead.email, safe="@.+-_") if valid else None,
            )
        if lead.phone:
            e164 = re.fullmatch(r"\+\d{6,15}", lead.phone) is not None
            row("Phone", phone_display(lead.phone) if e164 else lead.phone, href="tel:" + lead.phone if e164 else None)
    elif pii == "masked":
        row("Name", initials(lead))
        row("Company", lead.company)
        row("Title", lead.title)
        row("Email", mask_email(lead.email))
        row("Phone", mask_phone(lead.phone))
    row("Country", country_name(lead.country))
    offer = lead.offer_title or lead.offer_id
    if lead.offer_title and lead.offer_id:
        offer = f"{lead.offer_title} ({lead.offer_id})"
    row("Offer", offer)
    row("Source", lead.source_words)
    row("Action", lead.action_words)
    row("Campaign", campaign_text(lead.campaign), multiline=True)
    if pii == "full":
        row("Description", lead.description, multiline=True)
    row("Lead id", lead.lead_id)
    row("Received", f"{lead.received_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC")

    if lead.do_not_contact:
        next_step = NEXT_STEP_DNC
    elif test:
        next_step = NEXT_STEP_TEST
    else:
        next_step = NEXT_STEPS.get(lead.action or "", NEXT_STEP_OTHER)

    find = None
    if pii != "full":
        what = "Personal data is not in this mail" if pii == "none" else "The full details are not in this mail"
        url = portal_link(portal_url, lead.lead_id)
        if url:
            find = {"text": f"{what}: see the lead at", "link": url, "href": url}
        else:
            find = {"text": f"{what}: show the lead with", "link": f"python -m leads show {lead.lead_id}", "href": None}
    return {"heading": heading, "banners": banners, "rows": rows, "next_step": next_step, "find": find}


# Line breaks and the other control characters, which a header or a one-line text must not carry.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")


def within(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: a longer one is cut, and ends in ``…``."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def one_line(text: str, limit: int) -> str:
    """``text`` on one line (control characters and runs of white space made one space, so that a
    mail header cannot be split into two), in at most ``limit`` characters."""
    return within(" ".join(_CONTROL.sub(" ", text).split()), limit)


def banner(text: str, colour: str, background: str) -> dict[str, str]:
    return {"text": text, "colour": colour, "background": background}


def portal_link(portal_url: str, lead_id: str) -> str | None:
    """``LEADS_PORTAL_URL`` for one lead: ``{leadId}`` in it is replaced by the lead id."""
    portal_url = portal_url.strip()
    if not portal_url:
        return None
    return portal_url.replace("{leadId}", quote(lead_id, safe=""))


# --- personal data, masked --------------------------------------------------------------------


def initials(lead: Lead) -> str | None:
    """``S. O.`` for Some One."""
    names = [part for name in (lead.first_name, lead.last_name) if name for part in name.split()]
    return " ".join(f"{name[0].upper()}." for name in names) or None


def mask_email(value: str | None) -> str | None:
    """``j***@contoso.com``: the first character and the domain."""
    if not value:
        return None
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        return "***"
    return f"{local[0]}***@{domain}"


def mask_phone(value: str | None) -> str | None:
    """``+1 *** *** 5555``: the country code and the last four digits."""
    if not value:
        return None
    digits = re.sub(r"\D", "", value)
    if len(digits) < 7:
        return "***"
    if value.startswith("+"):
        import phonenumbers

        try:
            parsed = phonenumbers.parse(value, None)
        except phonenumbers.NumberParseException:
            parsed = None
        if parsed is not None and parsed.country_code:
            return f"+{parsed.country_code} *** *** {str(parsed.national_number)[-4:]}"
    return f"*** *** {digits[-4:]}"


def phone_display(value: str) -> str:
    """``+1 617-555-5555`` for ``+16175555555``: how people read a number."""
    import phonenumbers

    try:
        return phonenumbers.format_number(phonenumbers.parse(value, None), phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    except phonenumbers.NumberParseException:
        return value


def country_name(code: str | None) -> str | None:
    """``United States (US)`` for an ISO alpha-2 code; anything else as it is."""
    if not code:
        return None
    if len(code) == 2 and code.isalpha():
        import pycountry

        country = pycountry.countries.get(alpha_2=code.upper())
        if country is not None:
            return f"{getattr(country, 'common_name', None) or country.name} ({country.alpha_2})"
    return code


def campaign_text(campaign: dict[str, Any]) -> str | None:
    lines = []
    for key, value in campaign.items():
        if value in (None, "", [], {}):
            continue
        if isinstance(value, list):
            value = ", ".join(str(item) for item in value)
        elif isinstance(value, dict):
            value = json.dumps(value, ensure_ascii=False)
        lines.append(f"{key}: {value}")
    return "\n".join(lines) or None
