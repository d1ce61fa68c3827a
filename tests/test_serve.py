"""``leads.local.serve``, the local Functions host: HTTP routes, timers and queue triggers, served for
real (a threading HTTP server, Azurite queues) and talked to over loopback."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import azure.functions as func
import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import BinaryBase64EncodePolicy, QueueClient

from leads.local.azurite import connection_string, free_port
from leads.local.serve import FunctionNotServed, HostOptions, LocalHost, resolve_app_settings
from tests import serve_app
from tests.served import Served

REPO = Path(__file__).resolve().parent.parent
APP_SETTINGS = ("SERVE_TEST_SCHEDULE", "SERVE_TEST_QUEUE", "SERVE_TEST_STORAGE", "SERVE_TEST_FROM_FILE")


def wait_for(condition, timeout: float = 10.0, what: str = "the condition"):
    """Poll until ``condition()`` is truthy and return it; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return result


def write_host_json(path: Path, route_prefix: str = "api", **queues: object) -> Path:
    """A host.json whose queue settings make retries, poison messages and idle polls quick to see
    (``queues`` overrides them)."""
    queues = {
        "batchSize": 4,
        "maxDequeueCount": 2,
        "visibilityTimeout": "00:00:00",
        "maxPollingInterval": "00:00:00.200",
        **queues,
    }
    extensions = {"http": {"routePrefix": route_prefix}, "queues": queues}
    path.write_text(json.dumps({"version": "2.0", "extensions": extensions}))
    return path


@pytest.fixture
def toy(env, monkeypatch, tmp_path):
    """Start tests/serve_app.py in this process with the given app settings; stopped afterwards.
    Its timer and queue trigger stay off unless a test sets their settings."""
    for name in APP_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    serve_app.reset()
    hosts: list[LocalHost] = []

    def start(
        route_prefix: str = "api", settings_file: Path | None = None, queues: dict | None = None, **settings: str
    ) -> LocalHost:
        env(**settings)
        host_json = write_host_json(tmp_path / f"host-{len(hosts)}.json", route_prefix, **(queues or {}))
        hosts.append(LocalHost("tests.serve_app", port=0, settings_file=settings_file, host_file=host_json))
        return hosts[-1].start()

    yield start
    serve_app.release_held.set()  # held queue invocations end, so that stop() can return
    for host in hosts:
        host.stop()


# --- HTTP ---------------------------------------------------------------------------------------


def test_http_function_gets_method_url_query_headers_route_params_and_body(toy):
    host = toy()
    url = f"{host.url}/api/echo/ali%20ce/42?x=1&x=2&code=some-function-key"

    answer = requests.post(url, data=b'{"lead": 1}', headers={"X-Test": "yes"})

    assert answer.status_code == 201
    assert answer.headers["X-Served-By"] == "echo"
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {
        "method": "POST",
        "url": url,
        "params": {"x": "1,2", "code": "some-function-key"},
        "route": {"name": "ali ce", "number": "42"},
        "header": "yes",
        "body": '{"lead": 1}',
    }


def test_routes_follow_aspnet_templates(toy):
    host = toy()

    assert requests.get(f"{host.url}/api/echo/bob").json()["route"] == {"name": "bob"}
    assert requests.put(f"{host.url}/API/Echo/bob/7/").json()["route"] == {"name": "bob", "number": "7"}
    assert requests.get(f"{host.url}/api/echo/bob/seven").status_code == 404
    assert requests.get(f"{host.url}/echo/bob").status_code == 404


def test_route_prefix_comes_from_host_json(toy):
    host = toy(route_prefix="local")

    assert requests.get(f"{host.url}/local/echo/bob").status_code == 201
    assert requests.get(f"{host.url}/api/echo/bob").status_code == 404


def test_chunked_bodies_and_plain_text_answers(toy):
    host = toy()

    echoed = requests.post(f"{host.url}/api/echo/chunks", data=iter([b"ab", b"cd"]))
    text = requests.post(f"{host.url}/api/slow", data=b"")

    assert echoed.json()["body"] == "abcd"
    assert (text.status_code, text.text, text.headers["Content-Type"]) == (200, "done", "text/plain; charset=utf-8")


def test_unknown_path_is_404_and_wrong_method_405_both_in_json(toy):
    host = toy()

    missing = requests.get(f"{host.url}/api/nothing-here")
    wrong = requests.delete(f"{host.url}/api/echo/bob")

    assert missing.status_code == 404 and "/api/nothing-here" in missing.json()["error"]
    assert wrong.status_code == 405 and "DELETE" in wrong.json()["error"]
    assert wrong.headers["Allow"] == "GET, POST, PUT"


def test_a_function_that_raises_answers_500_and_the_server_keeps_serving(toy, caplog):
    host = toy()

    with requests.Session() as session:
        failed = session.get(f"{host.url}/api/boom")
        after = session.post(f"{host.url}/api/echo/still-here", data=b"{}")

    assert failed.status_code == 500 and "boom" in failed.json()["error"]
    assert after.status_code == 201
    assert "Executed 'Functions.boom' (Failed" in caplog.text and "RuntimeError: boom" in caplog.text


def test_concurrent_requests_run_in_parallel(toy):
    host = toy()

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: requests.post(f"{host.url}/api/together?count=32", data=b"{}"), range(32)))

    assert [answer.text for answer in answers] == ["met"] * 32  # all 32 were running at one moment


def test_connections_are_kept_alive(toy):
    host = toy()
    connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=5)
    sockets = []

    for _ in range(3):
        connection.request("POST", "/api/echo/again", body=b"{}", headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        assert response.status == 201
        sockets.append(connection.sock)
    connection.close()

    assert sockets[0] is not None and sockets.count(sockets[0]) == 3


def test_stop_lets_running_requests_answer(toy, caplog):
    caplog.set_level(logging.INFO, logger=serve_app.__name__)
    host = toy()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(requests.get, f"{host.url}/api/slow?seconds=0.5")
        wait_for(lambda: "slow started" in caplog.text, what="the slow function")
        host.stop()

        assert running.result().text == "done"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{host.url}/api/echo/bob", timeout=2)


# --- Settings and what is not served ------------------------------------------------------------


def test_app_settings_in_bindings_come_from_the_environment_then_the_apps_defaults(monkeypatch):
    monkeypatch.delenv("LEADS_POLL_SCHEDULE", raising=False)
    monkeypatch.setenv("SERVE_TEST_QUEUE", "deliveries")

    assert resolve_app_settings("%LEADS_POLL_SCHEDULE%") == "*/30 * * * * *"
    assert resolve_app_settings("leads-%SERVE_TEST_QUEUE%") == "leads-deliveries"
    with pytest.raises(FunctionNotServed, match="SERVE_TEST_NOT_SET"):
        resolve_app_settings("%SERVE_TEST_NOT_SET%")


def test_functions_that_cannot_be_served_are_named_and_the_rest_is_served(toy, caplog):
    host = toy()

    assert requests.get(f"{host.url}/api/echo/bob").status_code == 201
    assert "Function 'tick' is not served: the app setting SERVE_TEST_SCHEDULE is not set" in caplog.text
    assert "Function 'on_blob' is not served: blobTrigger triggers are not served locally" in caplog.text


def test_a_missing_local_settings_file_is_fine(toy, tmp_path):
    host = toy(settings_file=tmp_path / "local.settings.json")

    assert requests.get(f"{host.url}/api/echo/bob").status_code == 201


def test_serve_loads_local_settings_without_overriding_the_environment_and_stops_on_sigterm(tmp_path):
    values = {"SERVE_TEST_FROM_FILE": "file", "SERVE_TEST_BOTH": "file"}
    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    environment = {name: value for name, value in os.environ.items() if name not in APP_SETTINGS}
    environment |= {"PYTHONPATH": str(REPO), "SERVE_TEST_BOTH": "environment"}
    served = Served(
        [sys.executable, "-c", "from leads.local.serve import serve; serve(0, app_module='tests.serve_app')"],
        cwd=tmp_path,
        env=environment,
    )
    url = served.url
    try:
        assert requests.get(f"{url}/api/settings/SERVE_TEST_FROM_FILE").text == "file"
        assert requests.get(f"{url}/api/settings/SERVE_TEST_BOTH").text == "environment"
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(requests.get, f"{url}/api/slow?seconds=0.5")
            wait_for(lambda: "slow started" in served.text, what="the slow function")
            served.process.send_signal(signal.SIGTERM)

            assert running.result().text == "done"
        assert served.process.wait(60) == 0
    finally:
        served.stop()  # its log read to the end
    output = served.text
    assert f"Functions: echo: [GET,POST,PUT] {url}/api/echo/{{name}}/{{number:int?}}" in output
    assert "Stopped" in output


# --- Timers -------------------------------------------------------------------------------------


def test_timer_runs_on_startup(toy):
    toy(SERVE_TEST_SCHEDULE="0 0 0 1 1 *")  # next on New Year's Day

    (_, timer), *_ = wait_for(lambda: serve_app.seen["tick"], what="the startup run")

    assert isinstance(timer, func.TimerRequest) and timer.past_due is False


def test_timer_fires_on_a_schedule_read_from_an_app_setting(toy):
    toy(SERVE_TEST_SCHEDULE="*/1 * * * * *")

    ticks = wait_for(lambda: len(serve_app.seen["tick"]) >= 3 and serve_app.seen["tick"], what="3 ticks")

    # In consecutive seconds of the clock: a run is never early, and the next one is due at the whole
    # second after it, so however late a busy machine starts the first, only a second run a whole
    # second late would fail this (comparing the gap to 1 s failed whenever either was half a second late).
    seconds = [int(at) for at, _ in ticks[1:3]]
    assert seconds[1] - seconds[0] == 1


def test_timer_never_overlaps_itself_and_goes_on_after_a_failure(toy, monkeypatch, caplog):
    monkeypatch.setattr(serve_app, "tick_seconds", 1.2)
    monkeypatch.setattr(serve_app, "tick_raises", True)
    toy(SERVE_TEST_SCHEDULE="*/1 * * * * *")

    wait_for(lambda: len(serve_app.seen["tick"]) >= 2, what="a run after the failed one")

    assert serve_app.most_ticks_running == 1
    assert "Executed 'Functions.tick' (Failed" in caplog.text


# --- Queues -------------------------------------------------------------------------------------


@pytest.fixture
def queue(azurite):
    """A new queue's name and a client that puts base64 messages on it, as the app would."""
    name = f"q{uuid.uuid4().hex[:12]}"
    client = QueueClient.from_connection_string(
        azurite.connection_string, name, message_encode_policy=BinaryBase64EncodePolicy()
    )
    return name, client


def serve_queue(toy, azurite, queue, **queues: object) -> QueueClient:
    """Serve the toy app's queue trigger on ``queue`` (host.json ``queues`` settings overridden by
    ``queues``); return its client once the host made it."""
    name, client = queue
    toy(SERVE_TEST_QUEUE=name, SERVE_TEST_STORAGE=azurite.connection_string, queues=queues)
    wait_for(lambda: _exists(client), what=f"the host to create queue {name}")
    return client


def _exists(client: QueueClient) -> bool:
    try:
        client.get_queue_properties()
    except ResourceNotFoundError:
        return False
    return True


def _empty(client: QueueClient) -> bool:
    return client.get_queue_properties().approximate_message_count == 0


def test_queue_trigger_gets_base64_messages_as_queue_messages_and_deletes_them(toy, azurite, queue):
    client = serve_queue(toy, azurite, queue)
    sent = {client.send_message(f"lead {number}".encode()).id: f"lead {number}".encode() for number in range(6)}

    got = wait_for(lambda: len(serve_app.seen["consume"]) >= 6 and serve_app.seen["consume"], what="6 messages")

    assert {message.id: message.get_body() for message in got} == sent
    assert all(isinstance(message, func.QueueMessage) and message.dequeue_count == 1 for message in got)
    assert all(message.insertion_time and message.expiration_time and message.pop_receipt for message in got)
    wait_for(lambda: _empty(client), what="the messages to be deleted")


def test_a_failed_message_is_delivered_again(toy, azurite, queue):
    client = serve_queue(toy, azurite, queue)
    client.send_message(b"fail-once")

    wait_for(lambda: len(serve_app.seen["consume"]) >= 2, what="the second delivery")

    assert [message.dequeue_count for message in serve_app.seen["consume"]] == [1, 2]
    wait_for(lambda: _empty(client), what="the message to be deleted")


def test_messages_failing_max_dequeue_count_times_go_to_the_poison_queue(toy, azurite, queue):
    client = serve_queue(toy, azurite, queue)
    client.send_message(b"fail-always")
    QueueClient.from_connection_string(azurite.connection_string, queue[0]).send_message("not base64!")
    poison = QueueClient.from_connection_string(azurite.connection_string, f"{queue[0]}-poison")

    wait_for(lambda: _exists(poison) and len(poison.peek_messages(max_messages=2)) == 2, what="two poison messages")

    assert [message.dequeue_count for message in serve_app.seen["consume"]] == [1, 2]
    wait_for(lambda: _empty(client), what="both gone from the queue")  # deleted once its poison copy is written
    assert {message.content for message in poison.peek_messages(max_messages=2)} == {
        "ZmFpbC1hbHdheXM=",  # b"fail-always" as it was sent, base64
        "not base64!",
    }


def _pauses(caplog, queue_name: str) -> list[float]:
    """The pauses (ms) the listener of ``queue_name`` took after empty polls, in order."""
    prefix = f"Queue '{queue_name}' is empty; next poll in "
    messages = [record.getMessage() for record in caplog.records]
    return [float(message[len(prefix) :].split()[0]) for message in messages if message.startswith(prefix)]


def test_idle_polling_backs_off_to_max_polling_interval_from_host_json_and_restarts_after_a_message(
    toy, azurite, queue, caplog
):
    # The queue extension's randomized exponential back-off: 100 ms after a message, then about
    # 200, 300, 500, 900 ms..., capped at host.json's maxPollingInterval.
    caplog.set_level(logging.DEBUG, logger="leads.local.serve")
    client = serve_queue(toy, azurite, queue, maxPollingInterval="00:00:00.700")

    wait_for(lambda: 700 in _pauses(caplog, queue[0]), what="the pause to reach maxPollingInterval")
    client.send_message(b"lead")
    wait_for(lambda: serve_app.seen["consume"], what="the message")

    def after_the_longest() -> list[float]:
        pauses = _pauses(caplog, queue[0])
        return pauses[len(pauses) - pauses[::-1].index(700) :]

    wait_for(after_the_longest, what="an empty poll after the message")
    pauses = _pauses(caplog, queue[0])
    assert max(pauses) == 700, "never longer than maxPollingInterval"
    assert pauses[0] == 100 and after_the_longest()[0] == 100, "the shortest pause at first and after a message"
    growing = pauses[1 : pauses.index(700)]
    assert growing == sorted(growing) and len(growing) >= 3, pauses


def test_a_max_polling_interval_below_the_hosts_minimum_is_refused(tmp_path):
    host_json = write_host_json(tmp_path / "host.json", maxPollingInterval="00:00:00.050")

    with pytest.raises(ValueError, match=r"maxPollingInterval .*00:00:00\.050.* at least 00:00:00\.100"):
        HostOptions.read(host_json)


def test_host_json_without_queue_settings_gets_the_extensions_defaults(tmp_path):
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0"}))

    queues = HostOptions.read(tmp_path / "host.json").queues

    assert queues.max_polling_interval == timedelta(minutes=1)
    assert (queues.batch_size, queues.max_dequeue_count, queues.visibility_timeout) == (16, 5, timedelta(0))
    assert queues.new_batch_threshold == 8 * (os.cpu_count() or 1)  # batchSize / 2 per core, off Consumption


def test_a_new_batch_is_fetched_once_in_flight_messages_fall_to_new_batch_threshold(toy, azurite, queue):
    # batchSize 2, newBatchThreshold 2: two messages, then (2 <= 2) two more, then (4 > 2) it waits
    # for invocations to finish before it reads again, as the queue extension does.
    name, client = queue
    client.create_queue()
    for _ in range(6):  # all there before the first read, so that each read gets a whole batch
        client.send_message(b"hold")
    toy(
        SERVE_TEST_QUEUE=name,
        SERVE_TEST_STORAGE=azurite.connection_string,
        queues={"batchSize": 2, "newBatchThreshold": 2},
    )

    wait_for(lambda: len(serve_app.seen["held"]) >= 4, what="four messages in flight")

    assert len(client.peek_messages(max_messages=32)) == 2, "the last two wait until the in-flight ones end"
    serve_app.release_held.set()
    wait_for(lambda: len(serve_app.seen["held"]) == 6, what="the last two")
    wait_for(lambda: _empty(client), what="every message deleted")


def test_unreachable_storage_is_logged_and_the_rest_keeps_serving(toy, caplog):
    unreachable = connection_string(free_port(), free_port(), free_port())  # nothing listens there
    caplog.set_level(logging.WARNING, logger="leads.local.serve")
    host = toy(SERVE_TEST_QUEUE="unreachable", SERVE_TEST_STORAGE=unreachable)

    wait_for(lambda: "Queue 'unreachable' cannot be read" in caplog.text, what="the storage warning")

    assert requests.get(f"{host.url}/api/echo/bob").status_code == 201


# --- The real app -------------------------------------------------------------------------------


def test_serves_the_real_function_app(storage, env):
    env(LEADS_POLL_SCHEDULE="0 0 0 1 1 *")  # no poll during the test

    with LocalHost("function_app", port=0, settings_file=None) as host:
        health = requests.get(f"{host.url}/api/health")

    assert health.status_code == 200
    assert health.headers["Content-Type"] == "application/json" and isinstance(health.json(), dict)
