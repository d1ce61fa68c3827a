"""A model-based test of the store: intake (HTTP, and held-back leads as a first poll or an import
takes them in), delivery by two workers, the sweep, ``status``, ``replay``, ``replay --skipped``,
``forget`` and the maintenance run, in random interleavings at every storage call
(tests/scheduler.py), each schedule with a process dying at one storage call, before it was sent
or after it committed with its answer lost; then recovery as Azure would run it (claims running
out, sweeps, the queue drained), against Azurite and a real webhook receiver.

At the quiet point after recovery: no delivery is left open, every failed one has its failed
entry, every held one its held entry and the held tally counts them; after one maintenance run
``verify`` finds nothing; and once the receiver is fixed and everything replayed, every lead not
erased is delivered, each stored once by the receiver, and sent at most once more than that per
crash. Deterministic: a schedule is its seed, and a failure names it. ``MODEL_SCHEDULES`` runs
more (CI runs the default, 100; explore with 1,000), ``MODEL_FIRST_SEED`` others, ``MODEL_SEED`` one schedule.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from leads.core.normalise import from_http_body
from leads.core.settings import get_settings
from leads.delivery.deliver import deliver, handle_message
from leads.delivery.queue import delivery_queue
from leads.destinations.routing import hold_backfill, plan
from leads.intake.ingest import accept_http
from leads.ops.operations import STALE, maintain, replay, status, sweep
from leads.store.derived import GRACE
from leads.store.erasure import forget_lead
from leads.store.index import kind_of, shards
from leads.store.lead_store import LeadStore
from leads.store.rows import FINAL, delivery_from_entity, is_delivery_row
from leads.store.verify import verify

from .conftest import EXAMPLE
from .fake_webhook import FakeWebhook
from .plant import plant
from .scheduler import Scheduler, scheduling

SCHEDULES = int(os.environ.get("MODEL_SCHEDULES", "100"))
# Crash points cycle through the first CRASH_SPAN storage calls of a schedule, before and after
# (even seeds before, odd ones after): the default schedules cross each point both ways once.
CRASH_SPAN = 50
PLANT_EVERY = 10  # seeds whose quiet point also gets differences planted (tests/plant.py)
PEOPLE = 4  # distinct HTTP bodies: intake draws among them, so repeats happen


@pytest.fixture(scope="module")
def receiver():
    with FakeWebhook() as fake:
        yield fake


def body(person: int) -> bytes:
    details = {**EXAMPLE["UserDetails"], "Email": f"model{person}@contoso.example", "LastName": f"Model{person}"}
    return json.dumps({**EXAMPLE, "UserDetails": details}).encode()


class Run:
    """One schedule's store, receiver and what the test knows of its leads."""

    def __init__(self, receiver: FakeWebhook) -> None:
        self.settings = get_settings()
        self.store = LeadStore.from_settings(self.settings)
        self.store.ensure_tables()
        delivery_queue(self.settings)._ensure()  # as the Functions host does for its trigger
        self.receiver = receiver
        self.erased: set[str] = set()
        self.posted: set[str] = set()  # leads taken in by HTTP (today's)
        self.rows: list[str] = []  # held-back rows the model's marketplace table holds
        self.taken_in: set[str] = set()  # those stored: the poll moves past no other

    # --- the operations ----------------------------------------------------------------------

    def intake(self, person: int):
        answer = accept_http(body(person), self.settings)
        if answer.status in (200, 202):
            self.posted.add(answer.body["leadId"])
        return answer.status

    def held(self, tag: str):
        details = {**EXAMPLE["UserDetails"], "Email": f"held-{tag}@contoso.example"}
        lead = from_http_body({**EXAMPLE, "UserDetails": details}, received_at=datetime.now(UTC) - timedelta(days=30))
        stored = self.store.add(lead, hold_backfill(lead, plan(lead, self.settings), self.settings)).lead_id
        self.taken_in.add(tag)
        return stored

    def work(self):
        """A worker: one message off the queue, handled, deleted (as the Functions host does)."""
        client = delivery_queue(self.settings).client
        for message in client.receive_messages(messages_per_page=1, max_messages=1, visibility_timeout=60):
            outcome = handle_message(message.content, self.settings)
            client.delete_message(message)
            return outcome.state
        return None

    def forget(self, person: int):
        lead_id = self._lead_of(person)
        if lead_id is None:
            return None
        self.erased.add(lead_id)  # an erasure cut short still erased something: not counted as owed
        return forget_lead(lead_id, self.settings) is not None

    def _lead_of(self, person: int) -> str | None:
        from leads.core.normalise import http_lead_id

        return http_lead_id(from_http_body(json.loads(body(person))))

    def retry_rows(self) -> None:
        """What the table poll does after a crash: a row not stored is read again (its checkpoint
        never moved past it), so a take-in that died is done again."""
        for tag in self.rows:
            if tag not in self.taken_in:
                self.held(tag)

    def operations(self, draw: random.Random, count: int):
        kinds = [
            "intake",
            "intake",
            "intake",
            "held",
            "work",
            "work",
            "work",
            "sweep",
            "status",
            "replay",
            "replay_skipped",
            "forget",
            "maintain",
            "break",
        ]
        chosen = []
        for number in range(count):
            kind = draw.choice(kinds)
            if kind == "intake":
                person = draw.randrange(PEOPLE)
                chosen.append((f"intake{person}", lambda person=person: self.intake(person)))
            elif kind == "held":
                self.rows.append(f"{number}")
                chosen.append(("held", lambda number=number: self.held(f"{number}")))
            elif kind == "work":
                chosen.append(("work", self.work))
            elif kind == "sweep":
                chosen.append(("sweep", lambda: sweep(self.settings)))
            elif kind == "status":
                chosen.append(("status", lambda: status(self.settings)))
            elif kind == "replay":
                chosen.append(("replay", lambda: replay(settings=self.settings)))
            elif kind == "replay_skipped":
                chosen.append(("replay --skipped", lambda: replay(settings=self.settings, skipped=True)))
            elif kind == "forget":
                person = draw.randrange(PEOPLE)
                chosen.append((f"forget{person}", lambda person=person: self.forget(person)))
            elif kind == "maintain":
                chosen.append(("maintain", lambda: maintain(self.settings)))
            else:
                chosen.append(("break", self._break))
        return chosen

    def _break(self):
        self.receiver.faults = ["400"]  # the receiver refuses the next lead for good (until replayed)

    # --- recovery and what must hold ---------------------------------------------------------

    def recover(self, now: datetime, rounds: int = 6) -> datetime:
        """Claims run out, the sweep queues what is stuck, workers drain the queue."""
        client = delivery_queue(self.settings).client
        for _ in range(rounds):
            now += self.settings.claim + GRACE + STALE
            sweep(self.settings, now=now)
            while batch := list(client.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=60)):
                for message in batch:
                    content = json.loads(message.content)
                    if content.get("sent"):
                        handle_message(message.content, self.settings)
                    else:
                        deliver(content["leadId"], content["destination"], self.settings, now=now)
                    client.delete_message(message)
            if not any(d.state not in FINAL for d in self.deliveries()):
                break
        return now

    def deliveries(self):
        rows = self.store.leads.query_entities("RowKey ge 'delivery|' and RowKey lt 'delivery}'")
        return [delivery_from_entity(row) for row in rows if is_delivery_row(row["RowKey"])]

    def check_entries(self) -> list[str]:
        """What the protocol promises with no repair: every delivery findable by its index."""
        problems = []
        for delivery in self.deliveries():
            kind = kind_of(delivery)
            if delivery.state not in FINAL:
                problems.append(f"{delivery.lead_id}/{delivery.destination} still {delivery.state}")
            if kind and self.store.index.entry(kind, delivery) is None:
                problems.append(f"{delivery.lead_id}/{delivery.destination} {delivery.state} without its entry")
        return problems

    def check_tally(self) -> list[str]:
        """The held tally counts the held deliveries: exact once the maintenance run has removed
        the entries a take-in left when it died before its lead was stored."""
        held = Counter(d.destination for d in self.deliveries() if d.held)
        tally, complete = self.store.index.held_tally.counts(shards())
        return [] if complete and tally == dict(held) else [f"held tally {tally} ({complete}) for {dict(held)}"]


@pytest.mark.timeout(1200)  # some 2 to 4 minutes: one schedule is a few hundred storage calls
def test_the_store_keeps_its_promises_in_every_interleaving_and_crash(storage, env, receiver, capsys):
    first = int(os.environ.get("MODEL_FIRST_SEED", "0"))
    seeds = [int(os.environ["MODEL_SEED"])] if "MODEL_SEED" in os.environ else range(first, first + SCHEDULES)
    crashed, calls, plants = Counter(), [], 0
    for seed in seeds:
        suffix = uuid.uuid4().hex[:12]
        env(
            **receiver.settings(),
            EMAIL_TO="",
            LEADS_RETRY_BASE_SECONDS="1",
            LEADS_TABLE_PREFIX=f"m{suffix}",
            LEADS_DELIVERY_QUEUE=f"m{suffix}",
            LEADS_HTTP_TIMEOUT_SECONDS="2",
        )
        receiver.leads.clear(), receiver.received.clear(), receiver.confirmed.clear()
        receiver.faults = []
        run = Run(receiver)
        draw = random.Random(seed)
        mode = "before" if seed % 2 == 0 else "after"
        scheduler = Scheduler(seed, crash_at=(seed // 2) % CRASH_SPAN + 1, crash_mode=mode)
        with scheduling(scheduler):
            outcomes = scheduler.run(run.operations(draw, draw.randrange(5, 9)), concurrency=2)
        calls.append(scheduler.calls)
        errors = [(o.name, repr(o.error)) for o in outcomes if o.error is not None]
        assert not errors, f"seed {seed}: {errors}"
        if scheduler.crashed:
            operation, call, mode = scheduler.crashed
            crashed[(operation.rstrip("0123456789"), call, mode)] += 1
        label = f"seed {seed} ({', '.join(o.name for o in outcomes)}; crash {scheduler.crashed})"

        receiver.faults = []
        run.retry_rows()
        now = run.recover(datetime.now(UTC))
        assert run.check_entries() == [], label
        maintain(run.settings, now=now)
        assert run.check_tally() == [], label
        report = verify(run.settings, since_days=None, now=now)
        assert report.by_kind() == {}, f"{label}: {report.to_dict()['details']}"

        replay(settings=run.settings, now=now)
        replay(settings=run.settings, skipped=True, now=now)
        now = run.recover(now)
        undelivered = [
            f"{d.lead_id}/{d.state}" for d in run.deliveries() if d.state != "delivered" and d.lead_id not in run.erased
        ]
        assert undelivered == [], label
        owed = {d.lead_id for d in run.deliveries() if d.lead_id not in run.erased}
        assert owed <= set(receiver.leads), label  # each stored once by its Idempotency-Key
        assert sum(receiver.received.values()) - len(receiver.leads) <= (1 if scheduler.crashed else 0), label
        assert verify(run.settings, since_days=None, now=now).by_kind() == {}, label
        if seed % PLANT_EVERY == 0:  # and what is planted in that store is found, exactly
            for person in (100, 101):  # two finished leads of today to plant around, whatever ran
                run.intake(person)
            now = run.recover(now)
            planted = plant(run.store, now=now)
            assert Counter(verify(run.settings, now=now, repair=True).by_kind()) == planted, label
            assert verify(run.settings, now=now).by_kind() == {}, label
            plants += 1
    assert plants >= len(seeds) // PLANT_EVERY // 2, plants  # most planting seeds had leads to plant around
    with capsys.disabled():
        print(
            f"\nmodel: {len(calls)} schedules, {sum(calls)} scheduled storage calls "
            f"({min(calls)}-{max(calls)} a schedule), {sum(crashed.values())} crashes at {len(crashed)} distinct "
            f"points (operation, its n-th storage call, before it was sent or after it committed); "
            f"differences planted and found in {plants}"
        )
