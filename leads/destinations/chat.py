"""What the Teams and Slack destinations share: a channel webhook that takes one JSON message.

A channel is a name routing rules use (``"teams": "sales-emea"``); its URL is in a setting
(``TEAMS_WEBHOOK_URL`` for the default channel, ``TEAMS_CHANNELS`` for the named ones), because
such URLs carry their secret and belong in Key Vault, not in the routing document. The
delivery's recipients hold the channel name, so a delivery keeps its channel across retries and
leads waiting for the same channel are folded into one message when the service's rate is reached.

Neither service takes an idempotency key: a post whose answer is lost (sent, then the connection
dropped) is retried and can show twice. Everything else sends once, as for every destination.

Plain ``requests`` rather than a vendor SDK: one POST is all there is, and the Slack and Teams SDKs
would add their weight to cold start for nothing.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from leads.core.settings import DEFAULT_CHANNEL
from leads.destinations.base import Check, HttpDestination, PermanentError, Route, Sent
from leads.destinations.notice import one_line

if TYPE_CHECKING:
    import requests

    from leads.core.model import Lead
    from leads.core.settings import Settings

DESCRIPTION_MAX = 1500  # characters of a lead's description shown in a card; the rest is cut, and says so


class ChatDestination(HttpDestination):
    """A channel webhook. Subclasses name the service and render leads as its message format."""

    notifies = True
    channels = True
    service: ClassVar[str]  # "Teams"
    # The largest message body the service takes, and how far under it messages are kept.
    max_bytes: ClassVar[int]

    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        super().__init__((min(10.0, settings.http_timeout_seconds), settings.http_timeout_seconds), session)
        self.settings = settings

    @classmethod
    def is_enabled(cls, settings: Settings) -> bool:
        return bool(
            settings.channel_webhook(cls.name)
            or getattr(settings, f"{cls.name}_channels").strip()
            or cls.routed_channels(settings)
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ChatDestination | None:
        return cls(settings) if cls.is_enabled(settings) else None

    @classmethod
    def routed_channels(cls, settings: Settings) -> list[str]:
        """The channels of this destination that routing rules name."""
        from leads.destinations.routing import RoutingError, load_rules

        try:
            rules = load_rules(settings.routing)
        except RoutingError:
            return []
        return list(dict.fromkeys(rule.channels[cls.name] for rule in rules if cls.name in rule.channels))

    # --- rendering, per service ---------------------------------------------------------------

    def render(self, leads: list[Lead], route: Route) -> dict[str, Any]:
        """The message body for one lead, or a digest of several."""
        raise NotImplementedError

    def accepted(self, response: requests.Response) -> bool:
        """Whether the service's answer means the message was posted."""
        return 200 <= response.status_code < 300

    def refusal(self, response: requests.Response) -> tuple[str, str | None]:
        """What a refused post says (the service's error code, never the message) and the code's
        fix; a status's fix is in ``statuses``."""
        return one_line(response.text or "", 120), None

    # --- sending --------------------------------------------------------------------------------

    def send(self, lead: Lead, route: Route) -> Sent:
        return self._post([lead], route)

    def send_digest(self, leads: list[Lead], route: Route) -> Sent:
        return self._post(leads, route)

    def _post(self, leads: list[Lead], route: Route) -> Sent:
        channel = route.recipients[0] if route.recipients else None
        url = self._url(channel)
        body = json.dumps(self.render(leads, route), ensure_ascii=False).encode()
        response = self.session.post(
            url, data=body, timeout=self.timeout, allow_redirects=False, headers={"Content-Type": "application/json"}
        )
        if self.accepted(response):
            return Sent(detail={"channel": channel or ""})
        code, fix = self.refusal(response)
        where = f"the {self.service} channel {channel!r}"
        error = self.refused(response.status_code, response.reason or "", response.headers, fix=fix)
        raise type(error)(
            f"{where}: {error}" + (f" ({code})" if code else ""), fix=error.fix, retry_after=error.retry_after
        )

    def _url(self, channel: str | None) -> str:
        default, named = f"{self.name.upper()}_WEBHOOK_URL", f"{self.name.upper()}_CHANNELS"
        replay = f"python -m leads replay --destination {self.name}"
        if not channel:
            raise PermanentError(
                f"the delivery names no {self.service} channel",
                fix=f"set {default}, or a {self.name} channel in the routing rule, then: {replay}",
            )
        try:
            self.settings.named_channels(self.name)
        except ValueError as exc:
            raise PermanentError(str(exc), fix=f"correct {named}, then: {replay}") from None
        url = self.settings.channel_webhook(self.name, channel)
        if not url:
            setting = default if channel == DEFAULT_CHANNEL else named
            raise PermanentError(
                f"the {self.service} channel {channel!r} has no webhook URL in {setting}",
                fix=f"add the channel's webhook URL to {setting}, then: {replay}",
            )
        return url

    def check(self) -> Check:
        """Every channel has a URL of the right shape. Nothing is posted: a post would show in the
        channel (``python -m leads test-lead`` does that on purpose)."""
        try:
            named = self.settings.named_channels(self.name)
        except ValueError as exc:
            return Check(False, str(exc), f"see docs/{self.name}.md")
        channels = list(
            dict.fromkeys(
                ([DEFAULT_CHANNEL] if self.settings.channel_webhook(self.name) else [])
                + list(named)
                + self.routed_channels(self.settings)
            )
        )
        problems = []
        for channel in channels:
            url = self.settings.channel_webhook(self.name, channel)
            if not url:
                problems.append(
                    f"routing names the {self.service} channel {channel!r}, which "
                    f"{self.name.upper()}_CHANNELS does not hold"
                )
            elif urlsplit(url).scheme != "https":
                problems.append(f"the {self.service} channel {channel!r} has a URL that is not https")
        if problems:
            return Check(
                False,
                "; ".join(problems),
                f"add each channel's webhook URL (a Key Vault reference in Azure); see docs/{self.name}.md",
            )
        plural = "s" if len(channels) != 1 else ""
        return Check(
            True,
            f"{len(channels)} channel{plural} configured ({', '.join(channels)}); nothing was "
            "posted: python -m leads test-lead posts a test card",
        )


def cut(text: str, limit: int = DESCRIPTION_MAX) -> str:
    """``text`` within ``limit`` characters, saying so when it was cut."""
    if len(text) <= limit:
        return text
    return text[:limit].rstrip() + f"… (cut: {len(text) - limit} more characters; see the lead)"
