"""A loopback HTTP proxy in front of Azurite's table endpoint, for what only the wire can show:
how many requests a call makes, and a write that commits while its answer never reaches the client.

``lose_next_answer("503")`` passes the next matching request on to Azurite (so it commits) and
answers 503 instead of Azurite's answer, as a front end that lost the back end's answer does (the
SDK retries a POST on 500/503/504); ``"drop"`` closes the connection instead (the SDK does not
retry a POST then: the caller sees ``ServiceResponseError``).
"""

from __future__ import annotations

import http.client
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from leads.azurite import ACCOUNT

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class StorageProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request seen
        self.lost: list[tuple[str, str]] = []  # requests that committed with their answer lost
        self._faults: list[tuple[str, re.Pattern[str]]] = []
        # Port 0: the kernel picks a free port as it binds (a port chosen first could be taken,
        # by another run's client or server, before the bind).
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]

    @property
    def table_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def connection_string(self, azurite) -> str:
        """Azurite's connection string with the table endpoint through this proxy."""
        own = f"TableEndpoint=http://127.0.0.1:{azurite.table_port}/{ACCOUNT};"
        return azurite.connection_string.replace(own, f"TableEndpoint={self.table_endpoint};")

    def lose_next_answer(self, how: str, method: str = "POST", path: str = "") -> None:
        """The next ``method`` request whose path matches the regex ``path`` commits, and its
        answer is replaced by a 503 (``how="503"``) or a dropped connection (``how="drop"``)."""
        with self.lock:
            self._faults.append((how, re.compile(f"{method} .*{path}")))

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def __enter__(self) -> StorageProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            self.requests.append((method, path))
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
                fault = proxy._take_fault(self.command, self.path)
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
                self.send_response(status)
                for name, value in reply:
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_MERGE = do_HEAD = _relay

        return Handler
