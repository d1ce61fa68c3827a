"""Slack: a message in a channel, posted to an incoming webhook (``SLACK_WEBHOOK_URL``).

The message is Block Kit ``blocks`` plus a ``text`` fallback (what notifications and screen
readers show), with what the mail shows (:mod:`leads.destinations.notice`) and ``EMAIL_PII``'s
personal-data mode. Slack reads ``&``, ``<`` and ``>`` as control characters (``<!channel>``,
``<https://x|a link>``), so every lead value has them escaped as Slack asks: a lead cannot mention
anyone or hide a link. Slack answers ``200 ok``; its errors are plain codes (``invalid_payload``,
``channel_not_found``, ``channel_is_archived``, ...); a ``429`` carries ``Retry-After``. Sends are
paced to about one message a second, Slack's posting rate; leads that wait for the same channel
meanwhile are listed together in one message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from leads.destinations.chat import ChatDestination, cut
from leads.destinations.notice import headline, lead_view, within

if TYPE_CHECKING:
    import requests

    from leads.core.model import Lead
    from leads.destinations.base import Route

BLOCKS_MAX = 50  # Slack takes at most 50 blocks a message
SECTION_MAX = 3000  # characters of a section's text
FALLBACK_MAX = 3000
# What a digest shows of each lead.
DIGEST_ROWS = ("Name", "Company", "Email", "Phone", "Offer", "Action", "Campaign", "Lead id")

# Slack's error codes for an incoming webhook, and what to do about them.
FIXES = {
    "invalid_payload": "Slack refused the message's shape: report it, with the lead id, as a bug",
    "channel_not_found": "the channel was deleted or renamed: create a new incoming webhook for it and update the URL",
    "channel_is_archived": "the channel is archived: unarchive it, or create a webhook for another channel",
    "action_prohibited": "a workspace admin restricts posting to this channel: ask them, or pick another channel",
    "no_service": "the incoming webhook was removed: create a new one and update the URL",
    "no_service_id": "the webhook URL is incomplete: copy it again from the Slack app's Incoming Webhooks page",
    "no_team": "the workspace of this webhook is gone: create a new webhook and update the URL",
    "team_disabled": "the workspace of this webhook is disabled: create a new webhook and update the URL",
    "invalid_token": "the webhook URL is not valid any more: create a new one and update the URL",
}


def escape(text: str) -> str:
    """A lead value as Slack text: ``&``, ``<`` and ``>`` escaped, as Slack's formatting asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackDestination(ChatDestination):
    name = "slack"
    service = "Slack"
    needs_recipients = "no Slack channel: set SLACK_WEBHOOK_URL, or a slack channel in the matching routing rule"
    setting_fields = secret_fields = ("slack_webhook_url", "slack_channels")  # their URLs carry their secret
    max_bytes = 40_000
    rate_limit = 1  # about one message a second per channel
    rate_period = 1.0

    def render(self, leads: list[Lead], route: Route) -> dict[str, Any]:
        return slack_message(leads, route, self.settings.email_pii, self.settings.leads_portal_url)

    def accepted(self, response: requests.Response) -> bool:
        return response.status_code == 200

    def refusal(self, response: requests.Response) -> tuple[str, str | None]:
        code = (response.text or "").strip()[:80]
        return code, FIXES.get(code)


def slack_message(leads: list[Lead], route: Route, pii: str, portal_url: str) -> dict[str, Any]:
    test = route.test or all(lead.is_test for lead in leads)
    blocks: list[dict[str, Any]] = []
    sections: list[str] = []
    if len(leads) > 1:
        dnc = sum(lead.do_not_contact for lead in leads)
        title = ("[TEST] " if test else "") + f"{len(leads)} new leads" + (f" ({dnc} do not contact)" if dnc else "")
        blocks.append({"type": "header", "text": {"type": "plain_text", "text": title[:150]}})
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": escape(
                            f"{len(leads)} leads arrived while Slack's posting rate was reached, "
                            "so they are listed together."
                        ),
                    }
                ],
            }
        )
    fallback = []
    for lead in leads:
        lead_test = lead.is_test or route.test
        view = lead_view(lead, pii, portal_url, lead_test, heading=headline(lead, pii))
        heading = ("[TEST] " if lead_test and (len(leads) == 1 or not test) else "") + view["heading"]
        fallback.append(heading)
        lines = [f"*{escape(heading)}*"]
        lines += [f":warning: {escape(banner['text'])}" for banner in view["banners"]]
        for row in view["rows"]:
            if len(leads) > 1 and row["label"] not in DIGEST_ROWS:
                continue
            value = cut(row["value"]) if row["label"] == "Description" else row["value"]
            lines.append(f"*{escape(row['label'])}:* {escape(value)}")
        if len(leads) == 1:
            lines.append(f"*Next step:* {escape(view['next_step'])}")
        if view["find"]:
            find = view["find"]
            target = f"<{find['href']}|{escape(find['link'])}>" if find["href"] else f"`{escape(find['link'])}`"
            lines.append(f"{escape(find['text'])} {target}")
        sections.append(within("\n".join(lines), SECTION_MAX))
    # Pack the leads' sections into at most the blocks Slack allows.
    room = BLOCKS_MAX - len(blocks)
    per_block = -(-len(sections) // room)
    for start in range(0, len(sections), per_block):
        text = within("\n\n".join(sections[start : start + per_block]), SECTION_MAX)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    text = ("[TEST] " if test and len(leads) > 1 else "") + (
        fallback[0] if len(leads) == 1 else f"{len(leads)} new leads: " + "; ".join(fallback)
    )
    return {"text": within(escape(text), FALLBACK_MAX), "blocks": blocks}
