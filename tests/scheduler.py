"""A deterministic scheduler of the app's operations at storage-call granularity, with crashes.

Each operation runs in a thread of its own, but only one runs at a time: before each storage request
(the Azure SDKs' HTTP transport, for tables and queues alike) the thread stops at a gate, and the
scheduler, drawing from a seeded random generator, picks which waiting thread goes on to its next
gate. So a seed is one interleaving of the operations, the same on every run, and every storage call
is a point where another operation can cut in. Threads an operation starts itself (a pool reading
pages) pass the gate freely while their operation holds the turn.

A crash is planted at the ``n``-th storage call of the run: ``before`` (the request is never sent)
or ``after`` (it was sent and committed, and its answer lost), as a process dying there: the
operation's thread ends with :class:`Crash`, which the app's code does not catch (a BaseException,
as a process's death is no error the code can handle).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field


class Crash(BaseException):
    """The process running the operation died at this storage call."""


@dataclass
class Outcome:
    name: str
    result: object = None
    crashed: str | None = None  # "before" / "after" the call it died at
    error: BaseException | None = None


@dataclass
class _Task:
    name: str
    run: Callable[[], object]
    thread: threading.Thread | None = None
    go: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None
    calls: int = 0


class Scheduler:
    def __init__(self, seed: int, crash_at: int | None = None, crash_mode: str = "before") -> None:
        self.random = random.Random(seed)
        self.crash_at, self.crash_mode = crash_at, crash_mode
        self.calls = 0  # storage calls made by scheduled operations
        # (operation, which of its own storage calls, mode) of the crash, if one happened
        self.crashed: tuple[str, int, str] | None = None
        self._local = threading.local()
        self._parked = threading.Condition()
        self._waiting: set[int] = set()  # ids of tasks parked at a gate or at their start

    # --- the gate, called before each storage request --------------------------------------------

    def gate(self, send: Callable[[], object]) -> object:
        task: _Task | None = getattr(self._local, "task", None)
        if task is None:
            return send()  # not a scheduled thread (a pool of one, or the test itself)
        self._park(task)
        self.calls += 1
        task.calls += 1
        here = self.calls == self.crash_at
        if here and self.crash_mode == "before":
            self.crashed = (task.name, task.calls, "before")
            raise Crash(f"{task.name} died before its storage call {task.calls}")
        answer = send()
        if here and self.crash_mode == "after":
            self.crashed = (task.name, task.calls, "after")
            raise Crash(f"{task.name} died after its storage call {task.calls} committed")
        return answer

    def _park(self, task: _Task) -> None:
        with self._parked:
            task.go.clear()
            self._waiting.add(id(task))
            self._parked.notify_all()
        task.go.wait()

    # --- running operations ------------------------------------------------------------------

    def run(self, operations: list[tuple[str, Callable[[], object]]], concurrency: int = 2) -> list[Outcome]:
        """Run ``operations`` (name, function), at most ``concurrency`` at once, interleaved at
        their storage calls as the seed draws; their outcomes, in the order given."""
        tasks = [_Task(name, run) for name, run in operations]
        pending, running = list(tasks), []
        while pending or running:
            while pending and len(running) < concurrency:
                task = pending.pop(0)
                self._start(task)
                running.append(task)
            task = self.random.choice(running)
            self._step(task)
            if task.outcome is not None:
                running.remove(task)
        return [task.outcome for task in tasks]

    def _start(self, task: _Task) -> None:
        def body() -> None:
            self._local.task = task
            self._park(task)  # wait for the first turn
            outcome = Outcome(task.name)
            try:
                outcome.result = task.run()
            except Crash:
                outcome.crashed = self.crash_mode
            except Exception as exc:  # noqa: BLE001 - an operation's error is its outcome (a 503, say)
                outcome.error = exc
            with self._parked:
                task.outcome = outcome
                self._waiting.discard(id(task))
                self._parked.notify_all()

        task.thread = threading.Thread(target=body, name=f"op-{task.name}", daemon=True)
        with self._parked:
            task.thread.start()
            self._parked.wait_for(lambda: id(task) in self._waiting)

    def _step(self, task: _Task) -> None:
        """Let ``task`` run to its next gate, or to its end."""
        with self._parked:
            self._waiting.discard(id(task))
            task.go.set()
            finished = self._parked.wait_for(lambda: id(task) in self._waiting or task.outcome is not None, timeout=120)
        if not finished:
            raise TimeoutError(f"{task.name} neither reached a storage call nor ended within 120 s")
        if task.outcome is None:
            return


@contextmanager
def scheduling(scheduler: Scheduler):
    """Route every storage request of this process through ``scheduler``'s gate."""
    from azure.core.pipeline.transport import RequestsTransport

    original = RequestsTransport.send

    def send(transport, request, **kwargs):
        return scheduler.gate(lambda: original(transport, request, **kwargs))

    RequestsTransport.send = send
    try:
        yield scheduler
    finally:
        RequestsTransport.send = original
