"""A loopback HTTP proxy in front of one of Azurite's endpoints (tables by default, or queues), for
what only the wire can show: how many requests a call makes, a write that commits while its answer
never reaches the client, a service that refuses or answers slowly.

``lose_next_answer("503")`` passes the next matching request on to Azurite (so it commits) and
answers 503 instead of Azurite's answer, as a front end that lost the back end's answer does (the
SDK retries a POST on 500/503/504); ``"drop"`` closes the connection instead (the SDK does not
retry a POST then: the caller sees ``ServiceResponseError``).

``refuse()`` answers every matching request ``503 Server Busy`` without passing it on (as an account
under throttling does: nothing is written), and ``slow(seconds)`` passes each on only after that
long (Azurite then writes it, whether or not the client is still waiting), until ``heal()``.
``answered`` counts the answers sent, so a test can tell that the app answered its own caller
before storage answered it.
"""

from __future__ import annotations

import http.client
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from leads.local.azurite import ACCOUNT

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True


WRITES = "(POST|PUT|MERGE|PATCH|DELETE)"
BUSY = b'{"odata.error":{"code":"ServerBusy","message":{"value":"The server is busy."}}}'
QUEUE_BUSY = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
    b"<Message>The server is busy.</Message></Error>"
)


class StorageProxy:
    def __init__(self, target_port: int, service: str = "table") -> None:
        self.target_port = target_port
        self.service = service
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request seen
        self.tables: list[str] = []  # the table each of them addressed (a transaction's: its body's)
        self.lost: list[tuple[str, str]] = []  # requests that committed with their answer lost
        self.refused: list[tuple[str, str]] = []  # requests answered 503 by refuse()
        self.answered = 0  # answers sent (or tried: the client may have gone)
        self._faults: list[tuple[str, re.Pattern[str]]] = []
        self._refusing: re.Pattern[str] | None = None
        self._retry_after: int | None = None
        self._slow: tuple[float, re.Pattern[str]] | None = None
        self._stopping = threading.Event()
        # Port 0: the kernel picks a free port as it binds (a port chosen first could be taken,
        # by another run's client or server, before the bind).
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    table_endpoint = endpoint

    def connection_string(self, azurite, base: str | None = None) -> str:
        """Azurite's connection string (or ``base``, another proxy's) with this proxy's service
        through it."""
        name = f"{self.service.capitalize()}Endpoint"
        own = f"{name}=http://127.0.0.1:{getattr(azurite, f'{self.service}_port')}/{ACCOUNT};"
        return (base or azurite.connection_string).replace(own, f"{name}={self.endpoint};")

    def refuse(self, method: str = WRITES, path: str = "", retry_after: int | None = None) -> None:
        """Answer every ``method`` request (a regex; writes by default) whose path matches the
        regex ``path`` with 503 Server Busy (and ``Retry-After``, if given), passing none on,
        until :meth:`heal`."""
        with self.lock:
            self._refusing = re.compile(f"{method} .*{path}")
            self._retry_after = retry_after

    def slow(self, seconds: float, method: str = "[A-Z]+", path: str = "") -> None:
        """Pass every matching request on only after ``seconds``, until :meth:`heal`."""
        with self.lock:
            self._slow = (seconds, re.compile(f"{method} .*{path}"))

    def heal(self) -> None:
        with self.lock:
            self._refusing, self._slow = None, None

    def count(self, method: str = "[A-Z]+", path: str = "") -> int:
        """Requests seen (those matching ``method`` and ``path``, regexes, when given)."""
        pattern = re.compile(f"{method} .*{path}")
        with self.lock:
            return sum(1 for seen in self.requests if pattern.match(" ".join(seen)))

    def lose_next_answer(self, how: str, method: str = "POST", path: str = "") -> None:
        """The next ``method`` request whose path matches the regex ``path`` commits, and its
        answer is replaced by a 503 (``how="503"``) or a dropped connection (``how="drop"``)."""
        with self.lock:
            self._faults.append((how, re.compile(f"{method} .*{path}")))

    def __enter__(self) -> StorageProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()  # slowed requests still waiting give up
        self.server.shutdown()
        self.server.server_close()

    def _take_fault(self, method: str, path: str) -> str | float | None:
        """What to do with this request: "refuse", "503" or "drop" (its answer lost), seconds to
        wait before passing it on, or None."""
        request = f"{method} {path}"
        with self.lock:
            self.requests.append((method, path))
            if self._refusing is not None and self._refusing.match(request):
                self.refused.append((method, path))
                return "refuse"
            if self._slow is not None and self._slow[1].match(request):
                return self._slow[0]
            for index, (how, pattern) in enumerate(self._faults):
                if pattern.match(f"{method} {path}"):
                    del self._faults[index]
                    self.lost.append((method, path))
                    return how
        return None

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _relay(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.tables.append(_table_of(self.path, body))
                fault = proxy._take_fault(self.command, self.path)
                if fault == "refuse":
                    table = proxy.service == "table"
                    reply = [("Content-Type", "application/json" if table else "application/xml")]
                    if proxy._retry_after is not None:
                        reply.append(("Retry-After", str(proxy._retry_after)))
                    return self._answer(503, reply, BUSY if table else QUEUE_BUSY)
                if isinstance(fault, float | int) and proxy._stopping.wait(fault):
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=30)
                headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                status, reply = answer.status, answer.getheaders()
                if fault == "503":
                    status, data = 503, b'{"odata.error":{"code":"ServerBusy","message":{"value":"lost"}}}'
                    reply = [("Content-Type", "application/json")]
                self._answer(status, reply, data)

            def _answer(self, status: int, reply: list[tuple[str, str]], data: bytes) -> None:
                with proxy.lock:
                    proxy.answered += 1
                try:
                    self.send_response(status)
                    for name, value in reply:
                        if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up waiting (its deadline)
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_MERGE = do_HEAD = _relay

        return Handler


def _table_of(path: str, body: bytes) -> str:
    """The table a request addresses (``/account/Table(...)``), or for a transaction (``$batch``)
    the table its body's operations name."""
    where = path.split("?")[0]
    if where.endswith("/$batch"):
        found = re.search(rb"/([A-Za-z][A-Za-z0-9]{2,62})(?:\(| HTTP/)", body)
        return found.group(1).decode() if found else ""
    parts = where.split("/")
    return parts[2].split("(")[0] if len(parts) > 2 else ""
