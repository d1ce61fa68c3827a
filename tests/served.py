"""The local host (``leads serve``) as a process of its own, for tests that talk to it over HTTP.

It listens on port 0: it takes a free port itself and names it in its "Serving ... at URL" line,
so no other process can take the port between a probe and the host's bind. Its log is read as it
comes, into :attr:`Served.log`: a pipe nobody reads fills (64 KiB, a few minutes of a poll timer's
lines) and the next log line stalls the app.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time

_SERVING = re.compile(r"Serving \S+ at (http://\S+)")


class Served:
    """``command`` (which ends in a port of 0) running; :attr:`url` once it serves."""

    def __init__(self, command: list[str], timeout: float = 60, **popen) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)
        self.log: list[str] = []
        self._reader = threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True)
        self._reader.start()
        self.url = self._wait_for_url(timeout)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.log):
                if found := _SERVING.search(line):
                    return found.group(1)
            if self.process.poll() is not None:
                self._reader.join(5)
                raise RuntimeError(f"the app exited ({self.process.returncode}) before it served:\n{self.text}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"the app did not serve within {timeout:g} s:\n{self.text}")

    @property
    def text(self) -> str:
        return "".join(self.log)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (a graceful stop), then its exit code once it and its log have ended."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        return code
