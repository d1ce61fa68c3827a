"""What operators run: sweep, replay, status and the maintenance run, ``check``, ``test-lead``,
the health endpoints, and the advice a command gives."""
