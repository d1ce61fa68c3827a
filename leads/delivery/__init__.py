"""Getting a stored lead to its destinations exactly once: the queue, the worker, email digests,
and the alerts to operators when a destination fails."""
