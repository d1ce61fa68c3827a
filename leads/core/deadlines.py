"""How long each path someone waits on may spend on storage, and the timers bounded by their schedules.

Every storage call inside a :func:`leads.core.http.deadline` block, its retries and the SDKs' waits
between them included, ends by the block's end (``leads/core/http.py``, ``leads/core/retries.py``): after it,
a call fails at once (``ServiceResponseTimeoutError``) without a request. The paths:

- ``POST /api/leads``: the lead's writes up to its transaction get :data:`COMMIT_SECONDS`; a lead
  not committed by then is answered 503, and keeping its body (or a refused body) as a rejected
  record gets :data:`KEEP_SECONDS` more. Once committed, the enqueue gets one try of at most
  :data:`ENQUEUE_SECONDS` (the sweep queues what it missed: the delivery row is durable).
- ``/api/health``, ``/api/status`` and ``check``: the storage probe gets :data:`PROBE_SECONDS`;
  ``/api/status`` reads the deliveries in :data:`STATUS_SECONDS`.
- ``list``, ``show`` and ``status`` on the command line: :data:`COMMAND_SECONDS` each.
- The timers (poll, sweep, retention): :func:`run_timer`, within their schedule's period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from leads.core.http import deadline, remaining

log = logging.getLogger(__name__)

COMMIT_SECONDS = 6.0
KEEP_SECONDS = 3.0
ENQUEUE_SECONDS = 1.0
PROBE_SECONDS = 5.0
STATUS_SECONDS = 10.0
COMMAND_SECONDS = 30.0
# What a timer's run leaves of its period, for the host to start the next on time.
TIMER_MARGIN = 0.1


def period_of(schedule: str, now: datetime | None = None) -> float:
    """Seconds between the next two occurrences of an NCRONTAB schedule (seconds first)."""
    from croniter import croniter

    occurrences = croniter(schedule, now or datetime.now(UTC), second_at_beginning=True)
    first = occurrences.get_next(datetime)
    return (occurrences.get_next(datetime) - first).total_seconds()


def run_timer[T](name: str, schedule: str, run: Callable[[], T]) -> T | None:
    """``run()`` under a deadline of its schedule's period (less :data:`TIMER_MARGIN` of it), so
    that a run whose storage calls keep failing or hanging ends before the next is due. A run cut
    by it is logged as such (an error: the work it did not do waits for the next run) and returns
    None; anything else it raises is raised."""
    seconds = period_of(schedule) * (1 - TIMER_MARGIN)
    with deadline(seconds):
        try:
            return run()
        except Exception as exc:
            if remaining() > 0:
                raise
            log.error(
                "%s stopped %.3g s in, at its deadline (its schedule %s: every %g s, less %d%%), with its "
                "calls unanswered (%s: storage failing or slow); the next run goes on from where it left off",
                name,
                seconds,
                schedule,
                seconds / (1 - TIMER_MARGIN),
                TIMER_MARGIN * 100,
                type(exc).__name__,
            )
            return None
