"""HTTP for destinations and storage: a requests session whose every call ends by a total deadline.

requests' ``timeout`` bounds each wait for the next byte, not the call: a service that answers one
byte a second keeps a call going as long as it likes, past the claim of the delivery it belongs
to, and the sweep then hands that delivery to a second worker, which sends it again. So every
session from :func:`session` cuts each call at its total deadline, connect to last byte: the call's
own timeout (``LEADS_HTTP_TIMEOUT_SECONDS``), and never later than the end of the send it is part
of (:func:`deadline`, which the delivery worker sets around each send). One watchdog thread shuts
the call's socket down at that moment, which ends a blocked read at once; the call then raises
:class:`DeadlineExceeded` (a ``requests.Timeout``), which every destination reads as a timeout.

Every destination's HTTP goes through such a session: the webhook's, the CRMs' (MSAL and
simple-salesforce get the destination's session) and the ACS SDK's (its requests transport). So do
the storage clients and their identity's (``leads/core/storage.py``): a path a caller waits on (the
marketplace's POST, ``/api/health``, a timer's run: ``leads/core/deadlines.py``) sets a deadline, and
every storage call inside it, retries and the SDKs' waits between them included, ends by then.
"""

from __future__ import annotations

import heapq
import itertools
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import Timeout

_local = threading.local()  # .send_ends: when the current send must end; .call: the call running


class DeadlineExceeded(requests.exceptions.ReadTimeout):
    """A call that had no complete answer by its total deadline."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every call made by this thread inside the block ends within ``seconds`` from now."""
    outer = getattr(_local, "send_ends", math.inf)
    _local.send_ends = min(outer, time.monotonic() + seconds)
    try:
        yield
    finally:
        _local.send_ends = outer


def remaining() -> float:
    """Seconds left of the innermost :func:`deadline` of this thread (``inf`` outside any): how
    long a retry policy may still wait before its next try."""
    return max(0.0, getattr(_local, "send_ends", math.inf) - time.monotonic())


def carried[T](function: Callable[..., T]) -> Callable[..., T]:
    """``function`` run, in whatever thread calls it, under the deadline of the thread that
    wraps it here (a worker pool's tasks under the deadline of the run that hands them out)."""
    ends = getattr(_local, "send_ends", math.inf)

    def run(*args: Any, **kwargs: Any) -> T:
        with deadline(ends - time.monotonic()):
            return function(*args, **kwargs)

    return run


def session(pool_maxsize: int = 10, *, pool_connections: int = 10, remember: bool = True) -> requests.Session:
    """A requests session whose calls end by their total deadline. ``remember=False``: its answers'
    ``Retry-After`` is not kept for :func:`last_retry_after` (storage's, so that a storage call never
    hides a destination's)."""
    http = requests.Session()
    adapter = DeadlineAdapter(pool_connections=pool_connections, pool_maxsize=pool_maxsize, remember=remember)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


class _Call:
    """One call in flight: its deadline and the sockets it uses (the watchdog shuts them down)."""

    def __init__(self, ends: float) -> None:
        self.ends = ends
        self.sockets: list[socket.socket] = []
        self.fired = False
        self.lock = threading.Lock()

    def watch(self, sock) -> None:
        sock = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)
        if sock is None:
            return
        with self.lock:
            if self.fired:
                _shut(sock)
            else:
                self.sockets.append(sock)

    def fire(self) -> None:
        with self.lock:
            self.fired = True
            for sock in self.sockets:
                _shut(sock)

    def remaining(self) -> float:
        return max(0.001, self.ends - time.monotonic())


def _shut(sock: socket.socket) -> None:
    try:
        # The plain socket's shutdown, also for TLS: it ends the read blocked in another thread
        # without touching the TLS object that thread is using.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    """One thread for every call's deadline."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, _Call]] = []
        self.counter = itertools.count()
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None

    def add(self, call: _Call) -> None:
        with self.wake:
            heapq.heappush(self.heap, (call.ends, next(self.counter), call))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self.thread.start()
            self.wake.notify()

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.heap:
                    self.wake.wait()
                ends, _, call = self.heap[0]
                wait = ends - time.monotonic()
                if wait > 0:
                    self.wake.wait(wait)
                    continue
                heapq.heappop(self.heap)
            if call.ends is not None:
                call.fire()

    @staticmethod
    def cancel(call: _Call) -> None:
        call.ends = None  # left in the heap, ignored when it comes up


_watchdog = _Watchdog()


class _DeadlineConnection(HTTPConnection):
    def connect(self) -> None:
        call = getattr(_local, "call", None)
        if call is not None and self.timeout is not None:
            self.timeout = (
                min(self.timeout, call.remaining()) if isinstance(self.timeout, float | int) else call.remaining()
            )
        super().connect()
        if call is not None:
            call.watch(self.sock)

    def request(self, *args, **kwargs) -> None:
        call = getattr(_local, "call", None)
        if call is not None and self.sock is not None:
            call.watch(self.sock)
        super().request(*args, **kwargs)


class _DeadlineHTTPSConnection(_DeadlineConnection, HTTPSConnection):
    pass


class _DeadlinePool(HTTPConnectionPool):
    ConnectionCls = _DeadlineConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """An adapter whose calls end by their total deadline: the longest of the call's timeouts,
    and never after the end of the current send."""

    def __init__(self, *args: Any, remember: bool = True, **kwargs: Any) -> None:
        self.remember = remember  # set before the base class builds the pool manager
        super().__init__(*args, **kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _DeadlinePool, "https": _DeadlineHTTPSPool}

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        now = time.monotonic()
        total = _total(timeout)
        ends = min(now + total, getattr(_local, "send_ends", math.inf))
        parts = urlsplit(request.url)
        host = (parts.hostname or "the service") + (f":{parts.port}" if parts.port else "")
        said = f"no complete answer from {host} within {ends - now:.3g} s (connect to last byte)"
        if ends == math.inf:
            return self._remember(
                super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
            )
        if ends <= now:
            raise DeadlineExceeded(f"the deadline had passed before a call to {host}", request=request)
        call = _Call(ends)
        _local.call = call
        _watchdog.add(call)
        try:
            response = super().send(
                request, stream=stream, timeout=_within(timeout, ends - now), verify=verify, cert=cert, proxies=proxies
            )
            if not stream:
                response.content  # noqa: B018 - read the body while the deadline holds
        except Exception as exc:
            if call.fired:
                raise DeadlineExceeded(said, request=request) from exc
            raise
        finally:
            _watchdog.cancel(call)
            _local.call = None
        if call.fired:  # cut mid-answer: what was read may look whole (headers end at the cut) but is not
            raise DeadlineExceeded(said, request=request)
        return self._remember(response)

    def _remember(self, response: requests.Response) -> requests.Response:
        if self.remember:
            _local.retry_after = response.headers.get("Retry-After")
        return response


def last_retry_after() -> str | None:
    """The ``Retry-After`` of the last answer this thread received through a deadline session:
    for clients that raise without the response (simple-salesforce's exceptions keep only the
    status and the body)."""
    return getattr(_local, "retry_after", None)


def _total(timeout) -> float:
    """The total deadline of a call from its requests timeout (seconds, (connect, read) or a
    urllib3 Timeout): the longest of them; none is no deadline of its own."""
    if isinstance(timeout, Timeout):
        values = (timeout.total, timeout.connect_timeout, timeout.read_timeout)
    elif isinstance(timeout, tuple):
        values = timeout
    else:
        values = (timeout,)
    numbers = [float(value) for value in values if isinstance(value, int | float)]
    return max(numbers) if numbers else math.inf


def _within(timeout, seconds: float):
    """``timeout`` with no part longer than ``seconds``."""
    if isinstance(timeout, Timeout):
        return timeout
    if isinstance(timeout, tuple):
        return tuple(seconds if value is None else min(float(value), seconds) for value in timeout)
    return seconds if timeout is None else min(float(timeout), seconds)


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine's loopback."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
