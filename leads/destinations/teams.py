"""Teams: a card in a channel, posted to a Teams *Workflows* webhook ("When a Teams webhook request
is received"; the Office 365 connectors' incoming webhooks are retired).

The body is a message with one Adaptive Card attachment (version 1.5, ``Action.OpenUrl`` only),
showing what the mail shows (:mod:`leads.destinations.notice`): who, company, offer, source and
action in words, campaign, lead id, the ``[TEST]`` and do-not-contact marks, with ``EMAIL_PII``'s
personal-data mode. Card text is Markdown, so every lead value is escaped: a company called
``**Free** [money](https://x)`` shows as typed. The workflow answers ``202`` with an empty body;
any 2xx is delivered. Cards are kept well under Teams' 28 KB message limit (long descriptions are
cut, and say so), and sends are paced to Teams' 4 requests a second; leads that wait for the same
channel meanwhile are listed together in one card.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from leads.destinations.base import Refusal
from leads.destinations.chat import ChatDestination, cut
from leads.destinations.notice import headline, lead_view, portal_link

if TYPE_CHECKING:
    import requests

    from leads.core.model import Lead
    from leads.destinations.base import Route

CARD_VERSION = "1.5"
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
# Backslash-escapes every ASCII punctuation mark that card Markdown could read as formatting
# (CommonMark allows escaping any of them).
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!~<>|&])")
_ATTENTION = ("DO NOT CONTACT", "[TEST]")
REFUSED_FIX = (
    "the workflow refused the post: in its trigger, set 'Who can trigger the flow' to Anyone "
    "(the URL's signature is what protects it)"
)


def escape(text: str) -> str:
    """A lead value as card Markdown that shows exactly that text."""
    return _MARKDOWN.sub(r"\\\1", text)


class TeamsDestination(ChatDestination):
    name = "teams"
    service = "Teams"
    needs_recipients = "no Teams channel: set TEAMS_WEBHOOK_URL, or a teams channel in the matching routing rule"
    setting_fields = secret_fields = ("teams_webhook_url", "teams_channels")  # their URLs carry their secret
    max_bytes = 28 * 1024
    rate_limit = 4  # Teams throttles a webhook above 4 requests a second
    rate_period = 1.0
    statuses = {
        401: Refusal(fix=REFUSED_FIX),
        403: Refusal(fix=REFUSED_FIX),
        404: Refusal(
            fix="the workflow was deleted or turned off: create it again and update the channel's URL setting"
        ),
        400: Refusal(fix="the workflow does not take the card: use the 'Send webhook alerts to a channel' template"),
    }

    def render(self, leads: list[Lead], route: Route) -> dict[str, Any]:
        card = adaptive_card(leads, route, self.settings.email_pii, self.settings.leads_portal_url)
        return {"type": "message", "attachments": [{"contentType": CARD_CONTENT_TYPE, "content": card}]}

    def refusal(self, response: requests.Response) -> tuple[str, str | None]:
        # A workflow's error names the trigger and its schema, not the card: keep only its code.
        try:
            code = str((response.json().get("error") or {}).get("code") or "")
        except (ValueError, AttributeError):
            code = ""
        return code[:80], None


def adaptive_card(leads: list[Lead], route: Route, pii: str, portal_url: str, budget: int = 24 * 1024) -> dict:
    """The card for one lead or several, within ``budget`` bytes of JSON: descriptions are cut
    shorter, and a long digest shows fewer facts per lead, until it fits."""
    for description_max, detail in ((1500, "full"), (500, "full"), (300, "compact"), (0, "compact"), (0, "line")):
        if detail == "full" and len(leads) > 10:
            continue
        card = _card(leads, route, pii, portal_url, description_max, detail)
        if len(json.dumps(card, ensure_ascii=False).encode()) <= budget:
            break
    return card


def _card(leads: list[Lead], route: Route, pii: str, portal_url: str, description_max: int, detail: str) -> dict:
    """``detail``: ``full`` (what the mail shows), ``compact`` (the main facts of each lead) or
    ``line`` (a line per lead: its headline and id)."""
    compact = detail != "full"
    test = route.test or all(lead.is_test for lead in leads)
    body: list[dict[str, Any]] = []
    actions: list[dict[str, Any]] = []
    if len(leads) > 1:
        dnc = sum(lead.do_not_contact for lead in leads)
        title = ("[TEST] " if test else "") + f"{len(leads)} new leads" + (f" ({dnc} do not contact)" if dnc else "")
        body.append(_text(escape(title), weight="Bolder", size="Large"))
        body.append(
            _text(
                escape(
                    f"{len(leads)} leads arrived while Teams' sending limit was reached, so they are "
                    "listed together in this one card."
                ),
                isSubtle=True,
            )
        )
    for index, lead in enumerate(leads):
        lead_test = lead.is_test or route.test
        view = lead_view(lead, pii, portal_url, lead_test, heading=headline(lead, pii))
        container: list[dict[str, Any]] = []
        heading = ("[TEST] " if lead_test and (len(leads) == 1 or not test) else "") + view["heading"]
        if detail == "line":
            body.append(_text(f"{escape(heading)} · {escape(lead.lead_id)}", separator=index > 0))
            continue
        container.append(_text(escape(heading), weight="Bolder", size="Medium" if len(leads) == 1 else "Default"))
        for banner in view["banners"]:
            attention = any(mark in banner["text"] for mark in _ATTENTION)
            container.append(_text(escape(banner["text"]), color="Attention" if attention else "Warning"))
        facts, notes = [], []
        for row in view["rows"]:
            if compact and row["label"] not in ("Name", "Company", "Email", "Offer", "Action", "Campaign", "Lead id"):
                continue
            if row["multiline"]:
                if row["label"] == "Description":
                    if not description_max:
                        continue
                    value = cut(row["value"], description_max)
                else:
                    value = row["value"]
                notes.append(
                    _text(
                        f"**{escape(row['label'])}**\n\n"
                        + "\n\n".join(escape(line) for line in value.splitlines() if line.strip())
                    )
                )
            else:
                facts.append({"title": escape(row["label"]), "value": escape(row["value"])})
        if facts:
            container.append({"type": "FactSet", "facts": facts})
        container.extend(notes)
        if not compact:
            container.append(_text(f"**Next step:** {escape(view['next_step'])}"))
        link = portal_link(portal_url, lead.lead_id)
        if link and len(actions) < 5:
            actions.append(
                {
                    "type": "Action.OpenUrl",
                    "url": link,
                    "title": "Open the lead" if len(leads) == 1 else f"Open lead {index + 1}",
                }
            )
        if view["find"] and not view["find"]["href"] and not compact:
            container.append(_text(escape(f"{view['find']['text']} {view['find']['link']}"), isSubtle=True))
        body.append({"type": "Container", "items": container, "separator": index > 0, "spacing": "Medium"})
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": body,
    }
    if actions:
        card["actions"] = actions
    return card


def _text(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **style}
