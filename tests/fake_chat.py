"""Loopback fakes of the two channel webhooks: a Teams Workflows trigger ("When a Teams webhook
request is received") and a Slack incoming webhook. Each records the messages it accepted, checks
what the real service checks (a JSON body of the right shape and size), answers as the service
does (Teams ``202`` with an empty body; Slack ``200 ok``, or a plain error code), and can be told
to fail: ``429`` with ``Retry-After``, ``5xx``, an error code, or a slow answer (a timeout)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from .loopback import LoopbackHandler, LoopbackServer


@dataclass
class Fault:
    status: int = 500
    body: str = ""
    retry_after: str | None = None
    delay: float = 0.0  # seconds before answering (longer than the client waits: a timeout)


class _Handler(LoopbackHandler):
    def do_POST(self):
        fake: FakeChannel = self.fake
        body = self.read_body()
        with fake.lock:
            fake.requests += 1
            fault = fake.faults.pop(0) if fake.faults else None
        if fault:
            time.sleep(fault.delay)
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return self.answer(fault.status, fault.body, headers)
        if len(body) > fake.max_bytes:
            return self.answer(413, "request_too_large")
        try:
            message = json.loads(body)
        except ValueError:
            return self.answer(400, "invalid_payload")
        parts = urlsplit(self.path)
        channel, _, secret = parts.path.removeprefix("/hook/").partition("/")
        if secret != fake.secret or parts.query != f"sig=sig{fake.secret}":
            return self.answer(404, "no_service")
        refused = fake.refusal(message)
        if refused:
            return self.answer(refused[0], refused[1])
        with fake.lock:
            fake.messages.setdefault(channel, []).append(message)
        self.answer(fake.ok_status, fake.ok_body)


class FakeChannel(LoopbackServer):
    """One webhook URL per channel name (``/hook/<channel>/<secret>``, and ``?sig=<secret>``):
    like the real ones, each URL carries a secret, which the fake checks."""

    handler = _Handler
    max_bytes = 28 * 1024
    ok_status, ok_body = 200, b""

    def __init__(self) -> None:
        super().__init__()
        self.messages: dict[str, list[dict]] = {}  # channel → the messages it shows
        self.requests = 0
        self.faults: list[Fault] = []
        self.secret = uuid.uuid4().hex

    def url(self, channel: str = "general") -> str:
        return f"{self.base_url}/hook/{channel}/{self.secret}?sig=sig{self.secret}"

    def fail_next(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def all_messages(self) -> list[dict]:
        with self.lock:
            return [message for messages in self.messages.values() for message in messages]

    def refusal(self, message) -> tuple[int, str] | None:
        """Why the service would refuse this body, or None."""
        return None


class FakeTeams(FakeChannel):
    """A Teams Workflows trigger: a message with an Adaptive Card attachment, answered 202 with
    an empty body (the workflow posts the card to its channel afterwards)."""

    name = "fake-teams"
    max_bytes = 28 * 1024
    ok_status, ok_body = 202, b""

    def refusal(self, message):
        attachments = message.get("attachments") if isinstance(message, dict) else None
        if message.get("type") != "message" or not isinstance(attachments, list) or not attachments:
            return 400, json.dumps({"error": {"code": "InvalidRequestContent", "message": "no attachments"}})
        if attachments[0].get("contentType") != "application/vnd.microsoft.card.adaptive":
            return 400, json.dumps({"error": {"code": "InvalidRequestContent", "message": "not an Adaptive Card"}})
        return None

    def cards(self, channel: str | None = None) -> list[dict]:
        messages = self.messages.get(channel, []) if channel else self.all_messages()
        return [message["attachments"][0]["content"] for message in messages]


class FakeSlack(FakeChannel):
    """A Slack incoming webhook: ``text`` and/or ``blocks``, answered ``200 ok``."""

    name = "fake-slack"
    max_bytes = 40_000
    ok_status, ok_body = 200, b"ok"

    def refusal(self, message):
        if not isinstance(message, dict) or not (message.get("text") or message.get("blocks")):
            return 400, "no_text"
        blocks = message.get("blocks") or []
        if len(blocks) > 50:
            return 400, "invalid_blocks"
        for block in blocks:
            text = (block.get("text") or {}).get("text", "")
            if block.get("type") == "section" and len(text) > 3000:
                return 400, "invalid_blocks"
            if block.get("type") == "header" and len(text) > 150:
                return 400, "invalid_blocks"
        return None
