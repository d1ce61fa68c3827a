"""The delivery queue: one message per (lead, destination), consumed by the ``deliver`` function.

Messages are base64 text, as the Functions queue trigger expects by default. A message only says
which delivery to look at; the delivery row holds the truth, so a duplicated, early or late message
does no harm.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

from .settings import Settings, get_settings
from .storage import queue_service

# Storage queues hide a message for at most 7 days.
MAX_DELAY_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class DeliveryMessage:
    lead_id: str
    destination: str

    def to_json(self) -> str:
        return json.dumps({"leadId": self.lead_id, "destination": self.destination})

    @classmethod
    def from_json(cls, text: str | bytes) -> DeliveryMessage:
        """Read a message; raises ValueError naming what is wrong with one that is not ours."""
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("leadId"), str) \
                or not isinstance(data.get("destination"), str):  # fmt: skip
            raise ValueError("a delivery message is {\"leadId\": ..., \"destination\": ...}")
        return cls(data["leadId"], data["destination"])


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

    def send(self, lead_id: str, destination: str, delay: float = 0) -> None:
        """Enqueue a delivery, visible after ``delay`` seconds. Messages never expire: a
        delivery waiting through an outage must still be found."""
        self._ensure()
        self.client.send_message(DeliveryMessage(lead_id, destination).to_json(),
                                 visibility_timeout=math.ceil(min(max(delay, 0), MAX_DELAY_SECONDS)) or None,
                                 time_to_live=-1)  # fmt: skip

    def _ensure(self) -> None:
        if self._created:
            return
        from azure.core.exceptions import ResourceExistsError

        try:
            self.client.create_queue()
        except ResourceExistsError:
            pass
        self._created = True


@lru_cache(maxsize=8)
def _delivery_queue(connection: str, name: str) -> DeliveryQueue:
    return DeliveryQueue(connection, name)
