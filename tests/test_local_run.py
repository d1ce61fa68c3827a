"""``make run`` (leads/local/local_run.py) with its ports taken, and with another Azurite about: a clear
message and nothing started, or an app that talks only to the Azurite it started."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from leads.core.settings import Settings
from leads.core.storage import table_service
from leads.local import azurite as azurite_module
from leads.local.azurite import Azurite, connection_string, free_ports, port_is_free
from leads.local.local_run import RunError, lock_data_folder, start_azurite
from leads.store.lead_store import LeadStore

from .conftest import FIXTURES

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = (FIXTURES / "marketplace" / "https-documented-example.json").read_bytes()


@contextlib.contextmanager
def held_port():
    """A port someone else listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def run_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a terminal on this machine: no storage settings but the file's."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AzureWebJobsStorage", "MARKETPLACE_"))
    }
    env["EMAIL_OUTBOX_DIR"] = str(tmp_path / "outbox")
    return env


def cli(tmp_path: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """``python -m leads ARGS`` in another terminal, reading the settings file make run was given."""
    command = [sys.executable, "-m", "leads", "--settings", str(tmp_path / "local.settings.json"), *args]
    return subprocess.run(command, cwd=REPO, env=run_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def make_run(tmp_path: Path, port: int, blob: int, queue: int, table: int, **popen) -> subprocess.Popen:
    """What `make run` runs, with its data and settings in ``tmp_path``."""
    env = run_env(tmp_path)
    command = [
        sys.executable,
        "-m",
        "leads.local.local_run",
        "--port",
        str(port),
        "--location",
        str(tmp_path / "azurite"),
        "--settings",
        str(tmp_path / "local.settings.json"),
        "--blob-port",
        str(blob),
        "--queue-port",
        str(queue),
        "--table-port",
        str(table),
    ]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def finished(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()  # a hung run fails this test, and leaves no app on its ports for the next one
        process.communicate()
        raise
    return process.returncode, out, err


def test_a_taken_app_port_is_named_with_the_way_to_choose_another(tmp_path):
    with held_port() as port:
        code, out, err = finished(make_run(tmp_path, port, *free_ports(3)))
    assert code == 1
    assert f"port {port} is already in use" in err
    # The suggestion is the next port free at that moment: port + 1 unless another test holds it.
    suggested = re.search(r"make run PORT=(\d+)", err)
    assert suggested and port < int(suggested.group(1)) <= port + 100
    assert "Traceback" not in out + err
    assert "curl" not in out  # no banner for an app that cannot start
    assert not (tmp_path / "azurite").exists()  # nor an Azurite for it


def test_taken_azurite_ports_stop_the_run_naming_them_and_the_variables_that_move_them(tmp_path):
    with held_port() as table:
        app_port, blob, queue = free_ports(3)  # chosen while the table's port is held: four different ports
        code, out, err = finished(make_run(tmp_path, app_port, blob, queue, table))
    assert code == 1
    assert f"port {table} (table, AZURITE_TABLE_PORT)" in err
    assert "AZURITE_BLOB_PORT=" in err and "AZURITE_QUEUE_PORT=" in err and "nothing is started" in err
    assert "Traceback" not in out + err and "curl" not in out
    assert port_is_free(app_port) and port_is_free(blob) and port_is_free(queue)


def test_an_azurite_that_cannot_take_its_port_is_reported_with_the_port(tmp_path):
    # The port is taken after the check: Azurite's own EADDRINUSE is read, not a traceback.
    with held_port() as queue:
        blob, table = free_ports(2)
        ports = {"blob": blob, "queue": queue, "table": table}
        with pytest.raises(RunError, match=rf"port {queue} \(queue, AZURITE_QUEUE_PORT\)"):
            start_azurite(tmp_path / "azurite", ports)
    assert port_is_free(ports["blob"]) and port_is_free(ports["table"])  # the half-started Azurite is gone


def test_an_azurite_given_no_ports_takes_free_ones_itself(monkeypatch):
    # A port probed free and bound later can be taken in between (or handed out twice by the
    # kernel): here every probe names a port someone listens on by the time Azurite starts.
    with held_port() as taken:
        monkeypatch.setattr(azurite_module, "free_port", lambda: taken)
        with Azurite() as server:
            ports = {server.blob_port, server.queue_port, server.table_port}
            assert len(ports) == 3 and taken not in ports and not any(port_is_free(port) for port in ports)
            table = f"Ports{uuid.uuid4().hex[:8]}"
            assert table_service(server.connection_string).create_table(table).table_name == table


def test_a_second_make_run_of_the_same_clone_on_other_ports_is_refused(tmp_path):
    # Ports apart, both would run an Azurite on the one data folder, and corrupt it.
    lock = lock_data_folder(tmp_path / "azurite")  # as the first `make run` holds it
    try:
        ports = free_ports(4)
        code, out, err = finished(make_run(tmp_path, *ports))
    finally:
        lock.close()
    assert code == 1 and f"another `make run` (process {os.getpid()}) is using" in err
    assert "Traceback" not in out + err and all(port_is_free(port) for port in ports)
    lock_data_folder(tmp_path / "azurite").close()  # free again once the first one ends


def test_serve_on_a_taken_port_says_so_without_a_traceback(tmp_path):
    with held_port() as port:
        serve = [sys.executable, "-m", "leads", "--settings", "/nonexistent", "serve", "--port", str(port)]
        result = subprocess.run(serve, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"port {port} is already in use" in result.stderr and "Traceback" not in result.stderr


def test_make_run_passes_its_port_variables_on():
    ports = ["PORT=7072", "AZURITE_BLOB_PORT=10010", "AZURITE_QUEUE_PORT=10011", "AZURITE_TABLE_PORT=10012"]
    dry = subprocess.run(["make", "-n", "run", *ports], cwd=REPO, capture_output=True, text=True, timeout=60)
    command = " ".join(dry.stdout.replace("\\\n", " ").split())
    assert "-m leads.local.local_run --port 7072" in command
    assert "--blob-port 10010 --queue-port 10011 --table-port 10012" in command


def test_the_app_uses_only_the_azurite_make_run_started(tmp_path, azurite):
    """Another Azurite (the session's) is running, and local.settings.json names it, for the app
    and for the marketplace table: the app stores leads in its own, and the settings file
    follows, with the app's port, so that the CLI in another terminal reads the same leads and
    posts to the same app (make run PORT=... on other ports than the defaults)."""
    prefix = f"Run{uuid.uuid4().hex[:8]}"
    settings_file = tmp_path / "local.settings.json"
    values = {
        "AzureWebJobsStorage": azurite.connection_string,
        "MARKETPLACE_TABLE_CONNECTION": azurite.connection_string,
        "LEADS_TABLE_PREFIX": prefix,
        "EMAIL_TO": "a@b.com",
    }
    settings_file.write_text(json.dumps({"Values": values, "Host": {"LocalHttpPort": 7071}}))
    app_port, *ports = free_ports(4)
    process = make_run(tmp_path, app_port, *ports, start_new_session=True)
    try:
        lead_id = _post_when_up(f"http://127.0.0.1:{app_port}/api/leads", process)
        ours = connection_string(*ports)
        assert LeadStore.from_settings(_settings(ours, prefix)).get(lead_id) is not None
        assert LeadStore.from_settings(_settings(azurite.connection_string, prefix)).get(lead_id) is None
        written = json.loads(settings_file.read_text())
        assert written["Values"]["AzureWebJobsStorage"] == written["Values"]["MARKETPLACE_TABLE_CONNECTION"] == ours
        assert written["Host"]["LocalHttpPort"] == app_port
        # test-lead, with no --url, posts to the app make run started, wherever it listens.
        sent = cli(tmp_path, "test-lead", "--json", "--timeout", "60")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert f"Posted a test lead to http://127.0.0.1:{app_port}/api/leads" in sent.stderr
        test_lead = json.loads(sent.stdout)["leadId"]
        assert LeadStore.from_settings(_settings(ours, prefix)).get(test_lead) is not None
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl+C in the terminal
        code, out, err = finished(process)
    assert code == 0, err
    assert f"{settings_file} now names this run (AzureWebJobsStorage: this Azurite;" in out
    assert f"Host.LocalHttpPort: {app_port})" in out
    assert "Leads go to: email (a@b.com)." in out  # the banner names the enabled destinations
    assert "LEADS_ALERT_TO is not set: a delivery that fails for good alerts nobody" in out
    assert "had no LEADS_ID_KEY" in out and len(json.loads(settings_file.read_text())["Values"]["LEADS_ID_KEY"]) >= 32
    assert f"{tmp_path / 'outbox'}/ as .eml files" in out and "Ctrl+C" in out
    assert all(port_is_free(port) for port in ports)  # Azurite stopped with the app

    # make run stopped: every command says the emulator does not answer and to start make run.
    commands = [
        ["list"],
        ["show", lead_id],
        ["status"],
        ["replay"],
        ["poll"],
        ["reindex"],
        ["check"],
        ["forget", "--lead", lead_id],
        ["test-lead", "--via", "table", "--timeout", "5"],
        ["test-lead"],
        ["import", str(FIXTURES / "marketplace" / "https-documented-example.json")],
    ]
    results = _in_parallel(tmp_path, commands)
    for args, result in results.items():
        told = result.stdout + result.stderr
        assert result.returncode == 1 and "Traceback" not in told, (args, told)
        assert "make run" in told, (args, told)
        if args[0] not in ("check", "test-lead") or "table" in args:
            assert result.stderr.startswith(f"{args[0]}: the local storage emulator that AzureWebJobsStorage")
            assert f"could not reach 127.0.0.1:{ports[2]}: connection refused" in result.stderr, (args, told)
            assert len(result.stderr.splitlines()) <= 3, (args, told)
    check = results[("check",)].stdout
    assert re.search(r"^problem\s+storage\s+the app's storage cannot be used: could not reach", check, re.M)
    assert f"could not be posted to http://127.0.0.1:{app_port}/api/leads" in results[("test-lead",)].stderr


def _in_parallel(tmp_path: Path, commands: list[list[str]]) -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """Each command run by :func:`cli`, a few at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(map(tuple, commands), pool.map(lambda args: cli(tmp_path, *args), commands), strict=True))


def test_make_run_gives_a_settings_file_without_an_id_key_a_random_one_and_keeps_it(tmp_path, monkeypatch):
    from leads.local.local_run import give_an_id_key

    monkeypatch.delenv("LEADS_ID_KEY", raising=False)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for path in (first, second):
        path.write_text(json.dumps({"Values": {"LEADS_ID_KEY": "", "EMAIL_TO": "a@b.com"}}))
    assert "had no LEADS_ID_KEY" in give_an_id_key(first) and give_an_id_key(second)
    keys = [json.loads(path.read_text())["Values"]["LEADS_ID_KEY"] for path in (first, second)]
    assert len(keys[0]) >= 32 and keys[0] != keys[1]  # random, one per clone
    assert give_an_id_key(first) is None  # kept from then on
    assert json.loads(first.read_text())["Values"] == {"LEADS_ID_KEY": keys[0], "EMAIL_TO": "a@b.com"}


def _settings(storage: str, prefix: str) -> Settings:
    return Settings.model_validate({"AzureWebJobsStorage": storage, "LEADS_TABLE_PREFIX": prefix})


def _post_when_up(url: str, process: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            response = requests.post(url, data=EXAMPLE, headers={"Content-Type": "application/json"}, timeout=10)
        except requests.ConnectionError:
            time.sleep(0.2)
            continue
        assert response.status_code == 202, response.text
        return response.json()["leadId"]
    raise TimeoutError(f"nothing answered at {url}")
