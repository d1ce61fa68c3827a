"""A toy function app for tests/test_serve.py: one function per behaviour the local host must serve.

What the functions were given is kept in ``seen`` for the tests to look at. The timer and the
queue trigger read their schedule and queue from app settings, so they run only in the tests that
set them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
log = logging.getLogger(__name__)

seen: defaultdict[str, list] = defaultdict(list)
tick_seconds = 0.0  # how long each timer invocation takes
tick_raises = False  # whether each timer invocation fails
ticks_running = 0
most_ticks_running = 0
_lock = threading.Lock()
release_held = threading.Event()  # a "hold" queue message's invocation runs until this is set
_together = threading.Condition()  # invocations of "together" waiting for each other
together_running, together_gave_up = 0, False


def reset() -> None:
    global tick_seconds, tick_raises, ticks_running, most_ticks_running, together_running, together_gave_up
    seen.clear()
    release_held.clear()
    tick_seconds, tick_raises, ticks_running, most_ticks_running = 0.0, False, 0, 0
    together_running, together_gave_up = 0, False


@app.route(route="echo/{name}/{number:int?}", methods=["GET", "POST", "PUT"])
def echo(req: func.HttpRequest) -> func.HttpResponse:
    request = {
        "method": req.method,
        "url": req.url,
        "params": dict(req.params),
        "route": dict(req.route_params),
        "header": req.headers.get("x-test"),
        "body": req.get_body().decode(),
    }
    return func.HttpResponse(
        json.dumps(request), status_code=201, mimetype="application/json", headers={"X-Served-By": "echo"}
    )


@app.route(route="boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("boom")


@app.route(route="slow")
def slow(req: func.HttpRequest) -> str:
    log.info("slow started")
    time.sleep(float(req.params.get("seconds", "0")))
    return "done"


@app.route(route="together")
def together(req: func.HttpRequest) -> str:
    """Answers "met" once ``count`` invocations of it run at the same time, "alone" if they do not
    within 10 s (a host that runs requests one after another: then every later one gives up at once)."""
    global together_running, together_gave_up
    count = int(req.params["count"])
    with _together:
        together_running += 1
        _together.notify_all()
        met = _together.wait_for(lambda: together_running >= count or together_gave_up, timeout=10)
        together_gave_up = together_gave_up or not met
        return "met" if met and not together_gave_up else "alone"


@app.route(route="settings/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def setting(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(os.environ.get(req.route_params["name"], "<unset>"))


@app.timer_trigger(schedule="%SERVE_TEST_SCHEDULE%", arg_name="timer", run_on_startup=True)
def tick(timer: func.TimerRequest) -> None:
    global ticks_running, most_ticks_running
    with _lock:
        ticks_running += 1
        most_ticks_running = max(most_ticks_running, ticks_running)
    try:
        seen["tick"].append((time.time(), timer))
        time.sleep(tick_seconds)
        if tick_raises:
            raise RuntimeError("tick failed")
    finally:
        with _lock:
            ticks_running -= 1


@app.queue_trigger(arg_name="msg", queue_name="%SERVE_TEST_QUEUE%", connection="SERVE_TEST_STORAGE")
def consume(msg: func.QueueMessage) -> None:
    body = msg.get_body()
    if body == b"hold":
        seen["held"].append(msg)
        release_held.wait(30)
        return
    seen["consume"].append(msg)
    if body == b"fail-always" or (body == b"fail-once" and msg.dequeue_count == 1):
        raise RuntimeError(f"cannot take {body!r}")


@app.blob_trigger(arg_name="blob", path="samples/{name}", connection="SERVE_TEST_STORAGE")
def on_blob(blob: func.InputStream) -> None:
    """Blob triggers are not served locally: the host says so and serves the rest."""
