"""Running the delivery queue in tests as the Functions host would: receive, handle, delete."""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from azure.core.exceptions import AzureError

from leads.core.settings import get_settings
from leads.delivery.deliver import handle_message
from leads.delivery.queue import delivery_queue
from leads.store.lead_store import LeadStore
from leads.store.rows import OPEN


def open_deliveries() -> int:
    """Open deliveries, from the open index (each entry checked against its delivery's row)."""
    store = LeadStore.from_settings()
    rows = (store.deliveries.get(entry.lead_id, entry.destination) for entry in store.index.open())
    return sum(1 for delivery in rows if delivery is not None and delivery.state in OPEN)


def drain(deadline: float = 60.0, workers: int = 4, sweep_every: float | None = None) -> None:
    """Handle queue messages until no delivery is open, or fail after ``deadline`` seconds. A
    message whose handling raises stays on the queue and comes back, as with the Functions host.
    As the host does, a worker that is free takes the next message: one slow send holds up no
    other message (each received message is handled at once, well within its visibility)."""
    from leads.ops.operations import sweep

    settings = get_settings()
    client = delivery_queue(settings).client
    delivery_queue(settings)._ensure()
    end = time.monotonic() + deadline
    last_sweep = time.monotonic()

    def handle(message) -> None:
        try:
            handle_message(message.content, settings)
            client.delete_message(message)
        except AzureError:
            pass  # the host leaves it on the queue; it reappears after its visibility timeout

    running: set[Future] = set()
    with ThreadPoolExecutor(workers) as pool:
        while time.monotonic() < end:
            for future in [future for future in running if future.done()]:
                running.discard(future)
                future.result()  # anything but a storage error fails the test
            idle = workers - len(running)
            batch = (
                list(client.receive_messages(messages_per_page=idle, max_messages=idle, visibility_timeout=5))
                if idle
                else []
            )
            running |= {pool.submit(handle, message) for message in batch}
            if batch:
                continue
            if running:
                wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
                continue
            if open_deliveries() == 0:
                return
            if sweep_every is not None and time.monotonic() - last_sweep > sweep_every:
                sweep(settings)
                last_sweep = time.monotonic()
            time.sleep(0.1)
    raise TimeoutError(f"{open_deliveries()} deliveries still open after {deadline}s")
