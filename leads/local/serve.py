"""Run the function app on this machine without Azure Functions Core Tools: ``python -m leads serve``.

Core Tools cannot always be installed (it needs .NET and a download), yet the app should run
locally as it runs in Azure. This module plays the Functions host for one developer machine:

- **HTTP triggers** answer at ``/<routePrefix>/<route>`` on a threading HTTP/1.1 server, with a
  real ``func.HttpRequest`` in and the function's ``func.HttpResponse`` out;
- **timer triggers** fire on their NCRONTAB schedule, one invocation at a time (the host's
  singleton lock);
- **queue triggers** poll Azure Storage like the queue extension: batches and ``newBatchThreshold``,
  base64 bodies, a retry after ``visibilityTimeout``, the ``<queue>-poison`` queue after
  ``maxDequeueCount``, and the extension's back-off between empty reads up to
  ``maxPollingInterval``, so that a local run waits for a message as long as Azure does.

Functions are found only through what ``azure.functions`` reports (``get_functions()``, their
bindings and user functions): the metadata the Python worker hands the real host. A function added
to function_app.py is therefore served with no change here. Settings come from
``local.settings.json`` (never overriding the environment) and ``host.json``, as with Core Tools.
Auth levels are modelled as Azure applies them, keyed by one local key: with ``function_key``
(``serve --function-key KEY``) a ``function`` or ``admin`` route answers 401 unless the request
carries that key as ``?code=`` or ``x-functions-key``, and ``anonymous`` routes answer anyone.
Without a key, keys are not checked, as with Core Tools, and so only a loopback address is
served: a host reachable from elsewhere must have a key.

This is the one module of ``leads`` that imports ``azure.functions``: it is the host, not the core.
Its logs carry no request or message bodies and no query strings (they hold the function key).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import importlib
import inspect
import json
import logging
import os
import random
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from croniter import croniter

from leads.core.http import is_loopback
from leads.core.local_settings import load_local_settings
from leads.core.settings import Settings, get_settings
from leads.core.storage import queue_service

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient
    from azure.storage.queue import QueueMessage as StoredMessage

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 100 * 1024 * 1024  # the largest request body Azure Functions accepts
IDLE_CONNECTION_SECONDS = 130  # how long Kestrel, the host's web server, keeps an idle connection
PAST_DUE_AFTER = timedelta(seconds=1)  # a timer firing this late is past due
QUEUE_PROCESSING_SECONDS = 600  # a message stays hidden this long while its function runs (as the host)
# The queue extension's shortest pause between polls (QueuePollingIntervals.Minimum); the longest is
# host.json's maxPollingInterval, so that local runs wait as long as Azure does.
QUEUE_POLL_MINIMUM = timedelta(milliseconds=100)
# Queue calls are not retried by the SDK: its back-off (15 s, 18 s, 24 s) would stall polling and
# shutdown, while the listener polls again within maxPollingInterval and an unsettled message comes back anyway.
NO_SDK_RETRIES = {"retry_total": 0}


class FunctionNotServed(Exception):
    """A function this local host cannot run. It is skipped with this reason; the others run."""


# --- Settings: %NAME% binding expressions and host.json ---------------------------------------

_APP_SETTING_REFERENCE = re.compile(r"%([^%]+)%")


def resolve_app_settings(expression: str) -> str:
    """Replace each ``%NAME%`` with the app setting NAME, as the host resolves binding expressions.

    A name the environment does not set falls back to the default the app gives it in
    :class:`leads.core.settings.Settings`, so that, say, the poll schedule works out of the box; a name
    with neither is an error, as on the host.
    """
    return _APP_SETTING_REFERENCE.sub(lambda reference: _app_setting(reference.group(1)), expression)


def _app_setting(name: str) -> str:
    if name in os.environ:
        return os.environ[name]
    for setting in Settings.model_fields.values():
        if setting.alias == name and not setting.is_required():
            return str(setting.default)
    raise FunctionNotServed(f"the app setting {name} is not set (in the environment or local.settings.json)")


@dataclass(frozen=True)
class QueueOptions:
    """``extensions.queues`` of host.json, with the queue extension's defaults (its QueuesOptions)."""

    batch_size: int = 16
    new_batch_threshold: int = 8  # HostOptions.read gives the extension's default: batchSize / 2 per core
    max_polling_interval: timedelta = timedelta(minutes=1)
    max_dequeue_count: int = 5
    visibility_timeout: timedelta = timedelta(0)
    message_encoding: str = "base64"


@dataclass(frozen=True)
class HostOptions:
    """What this local host reads from host.json."""

    route_prefix: str = "api"
    queues: QueueOptions = field(default_factory=QueueOptions)

    @classmethod
    def read(cls, path: Path) -> HostOptions:
        """The options of a host.json file; the defaults when there is none."""
        if not path.is_file():
            return cls()
        extensions = json.loads(path.read_text(encoding="utf-8")).get("extensions") or {}
        http, queues = extensions.get("http") or {}, extensions.get("queues") or {}
        defaults = QueueOptions()
        batch_size = min(int(queues.get("batchSize", defaults.batch_size)), 32)  # the service's cap
        max_polling_interval = _timespan(queues.get("maxPollingInterval", "00:01:00"))
        if max_polling_interval < QUEUE_POLL_MINIMUM:  # the host refuses to start with it, too
            raise ValueError(
                f"host.json: extensions.queues.maxPollingInterval {queues['maxPollingInterval']!r} "
                f"must be at least 00:00:00.100"
            )
        return cls(
            route_prefix=str(http.get("routePrefix", cls.route_prefix)).strip("/"),
            queues=QueueOptions(
                batch_size=batch_size,
                new_batch_threshold=int(queues.get("newBatchThreshold", batch_size // 2 * _cores_counted())),
                max_polling_interval=max_polling_interval,
                max_dequeue_count=int(queues.get("maxDequeueCount", defaults.max_dequeue_count)),
                visibility_timeout=_timespan(queues.get("visibilityTimeout", "00:00:00")),
                message_encoding=str(queues.get("messageEncoding", defaults.message_encoding)).lower(),
            ),
        )


def _cores_counted() -> int:
    """The cores the queue extension multiplies newBatchThreshold by: one on the Consumption plan
    (WEBSITE_SKU "Dynamic"), the machine's count elsewhere (its SkuUtility.ProcessorCount)."""
    return 1 if os.environ.get("WEBSITE_SKU", "").lower() == "dynamic" else os.cpu_count() or 1


_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)")


def _timespan(text: str) -> timedelta:
    """A .NET TimeSpan as host.json writes it: ``[d.]hh:mm:ss[.fff]``."""
    match = _TIMESPAN.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"host.json: {text!r} is not a TimeSpan such as 00:00:30")
    days, hours, minutes, seconds = match.groups()
    return timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes), seconds=float(seconds))


# --- The app's functions ------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalFunction:
    """One function of the app as the worker indexes it: its name, its trigger binding (the JSON
    the host receives) and the Python function, called with the trigger under the binding's name."""

    name: str
    trigger: dict[str, Any]
    user_function: Callable[..., Any]

    @classmethod
    def index(cls, function: func.Function) -> LocalFunction:
        """Read one function; :class:`FunctionNotServed` if it needs a binding served here lacks."""
        name = function.get_function_name()
        bindings = json.loads(function.get_function_json())["bindings"]
        trigger = next(binding for binding in bindings if binding["name"] == function.get_trigger().name)
        for binding in bindings:
            if binding is not trigger and (binding["type"], binding["name"]) != ("http", "$return"):
                raise FunctionNotServed(f"its {binding['type']} binding '{binding['name']}' is not supplied locally")
        user_function = function.get_user_function()
        for parameter in inspect.signature(user_function).parameters.values():
            variadic = parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            if parameter.name != trigger["name"] and not variadic and parameter.default is parameter.empty:
                raise FunctionNotServed(f"its parameter '{parameter.name}' is not supplied locally")
        return cls(name, trigger, user_function)

    def invoke(self, trigger_value: Any, detail: str = "") -> Any:
        """Call the function, log one line as the host does ("Executed 'Functions.x' (Succeeded,
        Id=..., Duration=...ms)") and return its result. An exception is logged with its traceback
        and raised again."""
        invocation_id = uuid.uuid4()
        started = time.perf_counter()

        def executed(outcome: str, more: str) -> str:
            duration = (time.perf_counter() - started) * 1000
            line = f"Executed 'Functions.{self.name}' ({outcome}, Id={invocation_id}, Duration={duration:.0f}ms)"
            return f"{line} {more}" if more else line

        try:
            result = self.user_function(**{self.trigger["name"]: trigger_value})
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
        except Exception:
            log.exception(executed("Failed", detail))
            raise
        status = getattr(result, "status_code", "")
        log.info(executed("Succeeded", f"{detail} {status}".strip()))
        return result


@functools.cache
def _functions_of(app: func.FunctionRegister) -> list[func.Function]:
    """The app's functions. The worker indexes an app once per process and ``get_functions()``
    refuses a second call on the same app, so a second LocalHost in a process (tests) reuses this."""
    return app.get_functions()


def _function_app(module: ModuleType) -> func.FunctionRegister:
    """The module's one function app, found as the Python worker finds it."""
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionRegister)]
    if len(apps) != 1:
        raise RuntimeError(f"{module.__name__} must define exactly one FunctionApp; it defines {len(apps)}")
    return apps[0]


# --- HTTP triggers ------------------------------------------------------------------------------

_ROUTE_PARAMETER = re.compile(
    r"\{(?P<catch_all>\*{1,2})?(?P<name>\w+)(?P<constraints>(?::[^:{}?=]+)*)(?P<optional>\?)?(?:=(?P<default>[^{}]*))?\}"
)
_CONSTRAINT_PATTERNS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "float": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "decimal": r"-?\d+(?:\.\d+)?",
    "bool": r"true|false",
    "alpha": r"[a-z]+",
    "guid": r"[0-9a-f]{8}-?(?:[0-9a-f]{4}-?){3}[0-9a-f]{12}",
}


@dataclass(frozen=True)
class RouteTemplate:
    """An ASP.NET Core route template as Functions uses them: literal segments, ``{name}``,
    ``{name:int}`` (and the other type constraints; others match any segment), ``{name?}``,
    ``{name=default}`` and a catch-all ``{*rest}``. Matching ignores case and a trailing slash,
    as ASP.NET does."""

    text: str
    pattern: re.Pattern[str]
    names: tuple[str, ...]
    defaults: dict[str, str]
    precedence: tuple[int, ...]  # per segment: literal 0, constrained 1, plain 2, optional 3, catch-all 4

    @classmethod
    def parse(cls, text: str) -> RouteTemplate:
        regex, names, defaults, precedence = "", [], {}, []
        for segment in filter(None, text.split("/")):
            parameters = list(_ROUTE_PARAMETER.finditer(segment))
            for parameter in parameters:
                names.append(parameter["name"])
                if parameter["default"] is not None:
                    defaults[parameter["name"]] = parameter["default"]
            whole = _ROUTE_PARAMETER.fullmatch(segment)
            if whole and (whole["catch_all"] or whole["optional"] or whole["default"] is not None):
                regex += f"(?:/({'.*' if whole['catch_all'] else _parameter_pattern(whole)}))?"
                precedence.append(4 if whole["catch_all"] else 3)
                continue
            regex += "/"
            position = 0
            for parameter in parameters:
                regex += re.escape(segment[position : parameter.start()]) + f"({_parameter_pattern(parameter)})"
                position = parameter.end()
            regex += re.escape(segment[position:])
            precedence.append(0 if not parameters else 1 if any(p["constraints"] for p in parameters) else 2)
        return cls(text, re.compile(regex + "/?", re.IGNORECASE), tuple(names), defaults, tuple(precedence))

    def match(self, path: str) -> dict[str, str] | None:
        """The route parameters of a URL path (still percent-encoded), or None if it does not match."""
        matched = self.pattern.fullmatch(path)
        if not matched:
            return None
        found = zip(self.names, matched.groups(), strict=True)
        return self.defaults | {name: unquote(value) for name, value in found if value is not None}


def _parameter_pattern(parameter: re.Match[str]) -> str:
    for constraint in parameter["constraints"].split(":")[1:]:
        if constraint.lower() in _CONSTRAINT_PATTERNS:
            return f"(?:{_CONSTRAINT_PATTERNS[constraint.lower()]})"
    return "[^/]+"


@dataclass(frozen=True)
class HttpRoute:
    """An HTTP-triggered function at its URL; ``methods`` None accepts every method."""

    function: LocalFunction
    template: RouteTemplate
    methods: frozenset[str] | None
    needs_key: bool = True  # authLevel function (the default) or admin; anonymous needs none

    @classmethod
    def of(cls, function: LocalFunction, route_prefix: str) -> HttpRoute:
        route = (function.trigger.get("route") or function.name).strip("/")
        methods = function.trigger.get("methods")
        return cls(
            function,
            RouteTemplate.parse("/" + "/".join(part for part in (route_prefix, route) if part)),
            frozenset(method.upper() for method in methods) if methods else None,
            str(function.trigger.get("authLevel") or "function").lower() != "anonymous",
        )

    def accepts(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def describe(self, base_url: str) -> str:
        methods = ",".join(sorted(self.methods)) if self.methods else "*"
        return f"{self.function.name}: [{methods}] {base_url}{self.template.text}"


class HttpError(Exception):
    """An answer the server gives itself, without (or instead of) the function's."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None, close: bool = False):
        super().__init__(message)
        self.status, self.headers, self.close = status, headers or {}, close

    def answer(self) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = [("Content-Type", "application/json"), *self.headers.items()]
        if self.close:
            headers.append(("Connection", "close"))
        return self.status, headers, json.dumps({"error": str(self)}).encode()


class HttpGateway(ThreadingHTTPServer):
    """The HTTP side of the local host: a thread per connection, HTTP/1.1 keep-alive, and a stop
    that lets requests in progress answer before the connections close."""

    daemon_threads = True
    request_queue_size = 1024  # bursts of connections from benchmarks and retrying clients

    def __init__(self, address: tuple[str, int], routes: list[HttpRoute], function_key: str | None = None) -> None:
        super().__init__(address, _FunctionRequestHandler)
        self.routes = sorted(routes, key=lambda route: route.template.precedence)
        self.function_key = function_key
        self.stopping = False
        self._connections: set[socket.socket] = set()
        self._busy: set[socket.socket] = set()
        self._changed = threading.Condition()

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the address: local only, and instant."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def find_route(self, path: str, method: str) -> tuple[HttpRoute, dict[str, str]]:
        """The function for a path and method, with its route parameters; HttpError 404 or 405."""
        allowed: set[str] = set()
        for route in self.routes:
            params = route.template.match(path)
            if params is None:
                continue
            if route.accepts(method):
                return route, params
            allowed |= route.methods or set()
        if allowed:
            raise HttpError(405, f"{method} is not allowed here", headers={"Allow": ", ".join(sorted(allowed))})
        raise HttpError(404, f"no function answers at {path}")

    def authorize(self, route: HttpRoute, query: str, headers: Any) -> None:
        """HttpError 401 when the route needs the function key and the request lacks it (Azure
        takes it as ``?code=`` or in the ``x-functions-key`` header)."""
        if not route.needs_key or self.function_key is None:
            return
        import hmac

        given = headers.get("x-functions-key") or dict(parse_qsl(query)).get("code") or ""
        if not hmac.compare_digest(given.encode(), self.function_key.encode()):
            raise HttpError(401, "this function needs its key: ?code=KEY or the x-functions-key header")

    @contextlib.contextmanager
    def handling(self, connection: socket.socket) -> Iterator[None]:
        """Mark a connection busy while it handles a request, for :meth:`stop` to wait on."""
        with self._changed:
            self._busy.add(connection)
        try:
            yield
        finally:
            with self._changed:
                self._busy.discard(connection)
                self._changed.notify_all()

    def stop(self) -> None:
        """Stop accepting, let the requests in progress answer, then close idle connections."""
        self.stopping = True
        self.shutdown()
        self.server_close()
        with self._changed:
            self._changed.wait_for(lambda: not self._busy)
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self._changed:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._changed:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("a client closed its connection early")
        else:
            log.exception("an HTTP connection failed")


class _FunctionRequestHandler(BaseHTTPRequestHandler):
    """Turns one HTTP request into a ``func.HttpRequest`` for the function the route names, and
    the function's ``func.HttpResponse`` into the HTTP answer."""

    server: HttpGateway
    protocol_version = "HTTP/1.1"
    server_version = "leads-serve"
    disable_nagle_algorithm = True  # headers and body leave as separate writes: do not hold them back
    timeout = IDLE_CONNECTION_SECONDS

    def answer_request(self) -> None:
        with self.server.handling(self.connection):
            try:
                answer = self._call_function()
            except HttpError as error:
                answer = error.answer()
            self._send(*answer)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = answer_request

    def _call_function(self) -> tuple[int, list[tuple[str, str]], bytes]:
        body = self._read_body()  # first, so that a 404 leaves a kept-alive connection in step
        if self.server.stopping:
            raise HttpError(503, "the server is stopping", close=True)
        url = urlsplit(self.path)
        route, route_params = self.server.find_route(url.path, self.command)
        self.server.authorize(route, url.query, self.headers)
        host, port = self.server.server_address[:2]
        authority = self.headers.get("Host") or f"{host}:{port}"
        request = func.HttpRequest(
            method=self.command,
            url=f"http://{authority}{self.path}",
            headers={name: ", ".join(self.headers.get_all(name, [])) for name in self.headers.keys()},
            params=_query_params(url.query),
            route_params=route_params,
            body=body,
        )
        failed = HttpError(500, f"the function '{route.function.name}' failed: see the server log")
        try:
            result = route.function.invoke(request, detail=f"{self.command} {url.path}")
        except Exception:  # invoke logged it with its traceback
            raise failed from None
        try:
            return _http_answer(result)
        except TypeError as error:
            log.error("Function '%s': %s", route.function.name, error)
            raise failed from None

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "Content-Length is not a number", close=True) from None
        if length > MAX_REQUEST_BYTES:
            raise HttpError(413, f"the body is over {MAX_REQUEST_BYTES} bytes", close=True)
        body = self.rfile.read(length)
        if len(body) < length:
            raise HttpError(400, "the body ended before its Content-Length", close=True)
        return body

    def _read_chunked_body(self) -> bytes:
        body = bytearray()
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";", 1)[0], 16)
            except ValueError:
                raise HttpError(400, "the chunked body is malformed", close=True) from None
            if size == 0:
                break
            if len(body) + size > MAX_REQUEST_BYTES:
                raise HttpError(413, f"the body is over {MAX_REQUEST_BYTES} bytes", close=True)
            body += self.rfile.read(size)
            self.rfile.readline(1024)  # the CRLF closing the chunk
        while self.rfile.readline(1024).strip():  # trailer fields, up to the blank line
            pass
        return bytes(body)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "keep-alive"):
                self.send_header(name, value)  # a "Connection: close" here also ends the connection
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        if self.server.stopping and not self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.address_string(), *args)  # invocations are logged by invoke


def _query_params(query: str) -> dict[str, str]:
    """The query string as the host passes it: a repeated name's values joined by commas."""
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, []).append(value)
    return {name: ",".join(values) for name, values in params.items()}


def _http_answer(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of what an HTTP function returned, as the Python worker encodes
    it (a str is a 200 text answer; nothing at all, a 204). TypeError for anything else."""
    if result is None:
        result = func.HttpResponse(status_code=204)
    elif isinstance(result, str | bytes):
        result = func.HttpResponse(result)
    elif not isinstance(result, func.HttpResponse):
        raise TypeError(f"an HTTP function returned a {type(result).__name__}, not an HttpResponse")
    headers = list(result.headers.items())
    if not any(name.lower() == "content-type" for name, _ in headers):
        text = result.mimetype.startswith("text/")
        headers.append(("Content-Type", f"{result.mimetype}; charset={result.charset}" if text else result.mimetype))
    return result.status_code, headers, result.get_body()


# --- Timer triggers -----------------------------------------------------------------------------


class TimerTrigger(threading.Thread):
    """Fires a function on its NCRONTAB schedule (six fields, seconds first, in UTC) and, with
    ``runOnStartup``, once at start. One invocation at a time, as the host's singleton lock ensures:
    an invocation that overruns skips the occurrences it covered rather than stacking them."""

    def __init__(self, function: LocalFunction, stopping: threading.Event) -> None:
        super().__init__(name=f"timer-{function.name}", daemon=True)
        self.function, self._stopping = function, stopping
        self.schedule = resolve_app_settings(function.trigger["schedule"])
        if len(self.schedule.split()) != 6 or not croniter.is_valid(self.schedule, second_at_beginning=True):
            raise FunctionNotServed(f"its schedule {self.schedule!r} is not an NCRONTAB expression (6 fields)")
        self.run_on_startup = bool(function.trigger.get("runOnStartup"))

    def describe(self) -> str:
        return f"{self.function.name}: timerTrigger ({self.schedule})"

    def run(self) -> None:
        due = datetime.now(UTC)
        if self.run_on_startup:
            self._fire(due)
        while True:
            due = croniter(self.schedule, max(datetime.now(UTC), due), second_at_beginning=True).get_next(datetime)
            if self._stopping.wait((due - datetime.now(UTC)).total_seconds()):
                return
            self._fire(due)

    def _fire(self, due: datetime) -> None:
        timer = TimerRequest(past_due=datetime.now(UTC) - due > PAST_DUE_AFTER)
        with contextlib.suppress(Exception):  # invoke logged it; the schedule goes on, as on the host
            self.function.invoke(timer)


# --- Queue triggers -----------------------------------------------------------------------------


class PollingBackoff:
    """The pause after an empty queue read, as the queue extension's RandomizedExponentialBackoffStrategy
    computes it: the minimum after a read that found messages (and at first), then the minimum plus
    about (±20 %) the minimum times 1, 2, 4, 8... until it reaches the maximum, which it then keeps."""

    RANDOMIZATION = 0.2

    def __init__(self, minimum: timedelta, maximum: timedelta) -> None:
        self.minimum, self.maximum = minimum, maximum
        self._current = timedelta(0)
        self._exponent = 0

    def next_pause(self, found_messages: bool) -> timedelta:
        if found_messages:
            self._current, self._exponent = self.minimum, 1
        elif self._current != self.maximum:
            pause = self.minimum
            if self._exponent > 0:
                factor = random.uniform(1 - self.RANDOMIZATION, 1 + self.RANDOMIZATION)
                pause += self.minimum * factor * 2 ** (self._exponent - 1)
            if pause < self.maximum:
                self._current, self._exponent = pause, self._exponent + 1
            else:
                self._current = self.maximum
        return self._current


class QueueListener(threading.Thread):
    """Feeds a function the messages of an Azure Storage queue, as the Functions queue extension
    does: it reads ``batchSize`` messages at a time, and reads again at once while no more than
    ``newBatchThreshold`` are still running; each message is hidden while its function runs,
    deleted when it succeeds, visible again after ``visibilityTimeout`` when it fails, and moved
    to ``<queue>-poison`` once it has failed ``maxDequeueCount`` times. After an empty read it
    pauses, 100 ms at first and then longer (randomized exponential back-off) up to
    ``maxPollingInterval``. Storage being down is logged and retried; it never stops the listener."""

    def __init__(self, function: LocalFunction, options: QueueOptions, stopping: threading.Event) -> None:
        super().__init__(name=f"queue-{function.name}", daemon=True)
        self.function, self.options, self._stopping = function, options, stopping
        self.queue_name = resolve_app_settings(function.trigger["queueName"])
        self.connection = function.trigger.get("connection") or "AzureWebJobsStorage"
        self._running = 0  # invocations in flight
        self._changed = threading.Condition()
        self._queue: QueueClient | None = None
        self._storage_down = False

    def describe(self) -> str:
        return f"{self.function.name}: queueTrigger ({self.queue_name} in {self.connection})"

    def run(self) -> None:
        backoff = PollingBackoff(QUEUE_POLL_MINIMUM, self.options.max_polling_interval)
        found_since_pause = False
        workers = self.options.batch_size + self.options.new_batch_threshold  # the most ever in flight
        with ThreadPoolExecutor(workers, thread_name_prefix=self.name) as deliveries:
            while not self._stopping.is_set():
                queue, messages = self._receive(self.options.batch_size)
                with self._changed:
                    self._running += len(messages)
                for message in messages:
                    deliveries.submit(self._deliver, queue, message)
                if messages:
                    found_since_pause = True
                    self._wait_for_new_batch_threshold()
                    continue
                pause = backoff.next_pause(found_messages=found_since_pause)
                found_since_pause = False
                log.debug("Queue '%s' is empty; next poll in %d ms", self.queue_name, pause.total_seconds() * 1000)
                if self._stopping.wait(pause.total_seconds()):
                    return  # leaving the with block waits for the deliveries in flight

    def _wait_for_new_batch_threshold(self) -> None:
        with self._changed:
            while self._running > self.options.new_batch_threshold and not self._stopping.is_set():
                self._changed.wait(0.1)  # wakes when an invocation ends; the timeout notices a stop

    def _receive(self, count: int) -> tuple[QueueClient | None, list[StoredMessage]]:
        try:
            queue = self._connect()
            pages = queue.receive_messages(
                messages_per_page=count, visibility_timeout=QUEUE_PROCESSING_SECONDS, **NO_SDK_RETRIES
            )
            messages = list(next(pages.by_page(), []))  # one call to the service, not one per message
        except Exception as error:  # storage down, queue deleted, settings wrong: say so once, retry
            self._queue = None
            if not self._storage_down:
                log.warning("Queue '%s' cannot be read (%s); retrying", self.queue_name, _explain(error))
                self._storage_down = True
            return None, []
        if self._storage_down:
            log.info("Queue '%s' can be read again", self.queue_name)
            self._storage_down = False
        return queue, messages

    def _connect(self) -> QueueClient:
        if self._queue is None:
            service = queue_service(os.environ.get(self.connection, ""), self.connection)
            self._queue = _existing_queue(service.get_queue_client(self.queue_name))
        return self._queue

    def _deliver(self, queue: QueueClient, message: StoredMessage) -> None:
        """Run the function on one message, then delete it, or leave it to come back, or poison it."""
        try:
            if self._invoke(message):
                queue.delete_message(message, **NO_SDK_RETRIES)
            elif message.dequeue_count >= self.options.max_dequeue_count:
                self._move_to_poison(queue, message)
            else:
                retry_after = int(self.options.visibility_timeout.total_seconds())
                queue.update_message(message, visibility_timeout=retry_after, **NO_SDK_RETRIES)
        except Exception as error:  # the message reappears when its processing visibility ends
            log.warning("Queue '%s': message %s was not settled (%s)", self.queue_name, message.id, _explain(error))
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def _invoke(self, message: StoredMessage) -> bool:
        """Whether the function took the message (False: its body did not decode, or it raised)."""
        try:
            body = _message_body(message.content, self.options.message_encoding)
        except ValueError:
            log.error(
                "Queue '%s': message %s is not %s-encoded (host.json extensions.queues.messageEncoding)",
                self.queue_name,
                message.id,
                self.options.message_encoding,
            )
            return False
        trigger = QueueMessage(
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            insertion_time=message.inserted_on,
            expiration_time=message.expires_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        try:
            self.function.invoke(trigger, detail=f"message {message.id} try {message.dequeue_count}")
        except Exception:  # logged by invoke
            return False
        return True

    def _move_to_poison(self, queue: QueueClient, message: StoredMessage) -> None:
        poison_name = f"{self.queue_name}-poison"
        log.warning(
            "Message has reached MaxDequeueCount of %d. Moving message %s to queue '%s'.",
            self.options.max_dequeue_count,
            message.id,
            poison_name,
        )
        poison = queue_service(os.environ.get(self.connection, ""), self.connection).get_queue_client(poison_name)
        _existing_queue(poison).send_message(message.content, **NO_SDK_RETRIES)
        queue.delete_message(message, **NO_SDK_RETRIES)


def _explain(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def _existing_queue(queue: QueueClient) -> QueueClient:
    """The queue, created if it does not exist yet (as the host creates trigger and poison queues)."""
    from azure.core.exceptions import ResourceExistsError

    with contextlib.suppress(ResourceExistsError):
        queue.create_queue(**NO_SDK_RETRIES)
    return queue


def _message_body(content: str | None, encoding: str) -> bytes:
    """The bytes a queue function sees: base64-decoded, unless host.json sets messageEncoding "none"."""
    if encoding == "none":
        return (content or "").encode()
    return base64.b64decode(content or "", validate=True)  # binascii.Error is a ValueError


# --- The host -----------------------------------------------------------------------------------


class LocalHost:
    """The function app served on this machine. ``start()`` returns once it listens; ``stop()``
    stops taking work, lets running invocations finish and returns when all is quiet. A context
    manager too, for tests. Port 0 picks a free port (see :attr:`port`)."""

    def __init__(
        self,
        app_module: str = "function_app",
        port: int = 7071,
        host: str = "127.0.0.1",
        settings_file: str | Path | None = "local.settings.json",
        host_file: str | Path | None = None,
        function_key: str | None = None,
    ) -> None:
        self.app_module, self.host, self.settings_file = app_module, host, settings_file
        self.function_key = function_key or None
        self.host_file = Path(host_file) if host_file else None  # default: host.json beside the app module
        self._requested_port = port
        self._stopping = threading.Event()
        self._workers: list[TimerTrigger | QueueListener] = []
        self._gateway: HttpGateway | None = None
        self._http_thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._gateway.server_address[1] if self._gateway else self._requested_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalHost:
        if self.function_key is None and not is_loopback(self.host):
            raise ValueError(
                f"serving on {self.host} exposes the app beyond this machine: "
                "give it a key with --function-key, or serve on 127.0.0.1"
            )
        load_local_settings(self.settings_file)
        get_settings.cache_clear()  # the app reads its settings afresh, with the file's values
        get_settings()  # a refused setting (one out of its range) stops the host here, named, before it serves
        module = importlib.import_module(self.app_module)
        options = HostOptions.read(self.host_file or Path(module.__file__).with_name("host.json"))
        routes = self._index(_function_app(module), options)
        self._gateway = HttpGateway((self.host, self._requested_port), routes, self.function_key)
        self._http_thread = threading.Thread(
            target=self._gateway.serve_forever, kwargs={"poll_interval": 0.05}, name="http", daemon=True
        )  # the poll interval is how soon stop() is noticed
        self._http_thread.start()
        for route in routes:
            log.info("Functions: %s", route.describe(self.url))
        for worker in self._workers:
            log.info("Functions: %s", worker.describe())
        for worker in self._workers:
            worker.start()
        log.info(
            "Function keys: %s",
            "required on function and admin routes"
            if self.function_key
            else "not checked (as with Core Tools; loopback only)",
        )
        log.info("Serving %s at %s (Ctrl+C to stop)", self.app_module, self.url)
        return self

    def _index(self, app: func.FunctionRegister, options: HostOptions) -> list[HttpRoute]:
        """The HTTP routes of the app; its timers and queue listeners go to ``self._workers``."""
        routes = []
        for function in _functions_of(app):
            try:
                local = LocalFunction.index(function)
                trigger_type = local.trigger["type"]
                if trigger_type == "httpTrigger":
                    routes.append(HttpRoute.of(local, options.route_prefix))
                elif trigger_type == "timerTrigger":
                    self._workers.append(TimerTrigger(local, self._stopping))
                elif trigger_type == "queueTrigger":
                    self._workers.append(QueueListener(local, options.queues, self._stopping))
                else:
                    raise FunctionNotServed(f"{trigger_type} triggers are not served locally")
            except FunctionNotServed as reason:
                log.warning("Function '%s' is not served: %s", function.get_function_name(), reason)
        return routes

    def stop(self) -> None:
        self._stopping.set()  # timers and queue listeners take no more work
        if self._gateway:
            self._gateway.stop()
        for worker in self._workers:
            if worker.is_alive():
                worker.join()
        if self._http_thread:
            self._http_thread.join()
        log.info("Stopped")

    def __enter__(self) -> LocalHost:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    port: int = 7071,
    host: str = "127.0.0.1",
    app_module: str = "function_app",
    settings_file: str | Path | None = "local.settings.json",
    function_key: str | None = None,
) -> None:
    """Serve the function app until SIGINT or SIGTERM, then stop gracefully: no new requests or
    messages, running invocations finish. A second signal ends the process at once."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s", stream=sys.stderr)
    logging.getLogger("azure").setLevel(logging.WARNING)  # one line per storage call would drown the invocations
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        log.info("Stopping (%s): running invocations finish first; signal again to quit now", signal.strsignal(signum))
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, signal.SIG_DFL)
        stop_requested.set()

    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, request_stop)
    with LocalHost(app_module, port, host, settings_file, function_key=function_key):
        stop_requested.wait()
