"""The delivery queue: one message per (lead, destination), consumed by the ``deliver`` function.

Messages are base64 text, as the Functions queue trigger expects by default. A message only says
which delivery to look at; the delivery row holds the truth, so a duplicated, early or late message
does no harm. A *note of a send* (``sent``: the attempt and the destination's id) also says that
attempt went out, for a worker whose record of it the lead store refused (``leads/delivery/deliver.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

from leads.core.settings import Settings, get_settings
from leads.core.storage import queue_service

# Storage queues hide a message for at most 7 days.
MAX_DELAY_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class DeliveryMessage:
    lead_id: str
    destination: str
    sent: dict | None = None  # a note of a send: {"attempt": n, "externalId": id or None}

    def to_json(self) -> str:
        message = {"leadId": self.lead_id, "destination": self.destination}
        return json.dumps({**message, "sent": self.sent} if self.sent else message)

    @classmethod
    def from_json(cls, text: str | bytes) -> DeliveryMessage:
        """Read a message; raises ValueError naming what is wrong with one that is not ours."""
        data = json.loads(text)
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("leadId"), str)
            or not isinstance(data.get("destination"), str)
        ):
            raise ValueError('a delivery message is {"leadId": ..., "destination": ...}')
        sent = data.get("sent")
        if sent is not None and not (isinstance(sent, dict) and isinstance(sent.get("attempt"), int)):
            raise ValueError('a note of a send is {"sent": {"attempt": n, "externalId": ...}}')
        return cls(data["leadId"], data["destination"], sent)


def delivery_queue(settings: Settings | None = None) -> DeliveryQueue:
    """The delivery queue of these settings (one client per process and queue)."""
    settings = settings or get_settings()
    return _delivery_queue(settings.storage_connection, settings.delivery_queue)


class DeliveryQueue:
    def __init__(self, connection: str, name: str) -> None:
        from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy

        self.client = queue_service(connection).get_queue_client(
            name, message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy()
        )
        self._created = False

    def send(
        self, lead_id: str, destination: str, delay: float = 0, sent: dict | None = None, once: bool = False
    ) -> None:
        """Enqueue a delivery (or, with ``sent``, a note of its send), visible after ``delay``
        seconds; with ``once``, in one try (no retry). Messages never expire: a delivery waiting
        through an outage must still be found."""
        tries = {"retry_total": 0} if once else {}
        self._ensure(**tries)
        self.client.send_message(
            DeliveryMessage(lead_id, destination, sent).to_json(),
            visibility_timeout=math.ceil(min(max(delay, 0), MAX_DELAY_SECONDS)) or None,
            time_to_live=-1,
            **tries,
        )

    def send_text(self, text: str, delay: float = 0) -> None:
        """Enqueue a message of another kind than a delivery (an alert's wake-up: leads/delivery/alerts.py),
        visible after ``delay`` seconds."""
        self._ensure()
        self.client.send_message(
            text, visibility_timeout=math.ceil(min(max(delay, 0), MAX_DELAY_SECONDS)) or None, time_to_live=-1
        )

    def _ensure(self, **options) -> None:
        if self._created:
            return
        from azure.core.exceptions import ResourceExistsError

        try:
            self.client.create_queue(**options)
        except ResourceExistsError:
            pass
        self._created = True


def poison_messages(settings: Settings | None = None) -> int:
    """How many messages the Functions host moved to ``<queue>-poison`` (each failed
    ``maxDequeueCount`` times): the service's approximate count, one request; 0 with no such queue."""
    from azure.core.exceptions import ResourceNotFoundError

    settings = settings or get_settings()
    client = queue_service(settings.storage_connection).get_queue_client(f"{settings.delivery_queue}-poison")
    try:
        return client.get_queue_properties().approximate_message_count or 0
    except ResourceNotFoundError:
        return 0


@lru_cache(maxsize=8)
def _delivery_queue(connection: str, name: str) -> DeliveryQueue:
    return DeliveryQueue(connection, name)
