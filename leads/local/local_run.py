"""``make run``: Azurite and the app on this machine, talking only to each other.

Before anything is printed or started, the app's port and Azurite's three ports are checked; a
taken port ends the run with what holds it and the variable that moves it (``make run PORT=7072``,
``AZURITE_TABLE_PORT=...``), never a traceback. Azurite is then started on its ports, and the app
is served with that Azurite's connection string in ``AzureWebJobsStorage`` (the environment wins
over ``local.settings.json``), so it can never poll another emulator's queue and tables. When the
ports are not the ones ``local.settings.json`` names, the file is brought in step (its
``AzureWebJobsStorage``, a ``MARKETPLACE_TABLE_CONNECTION`` naming a local emulator, and
``Host.LocalHttpPort``, the app's port as Core Tools reads it), so that ``python -m leads ...`` in
another terminal reads the same leads and posts to the same app. A lock on Azurite's data folder
keeps a second ``make run`` of the same clone, on other ports, from sharing (and corrupting) it.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from leads.local.azurite import Azurite, AzuriteError, port_is_free
from leads.ops.advice import is_local_emulator

# The `make` variable that sets each of Azurite's ports, named in every message about that port.
PORT_VARIABLES = {"blob": "AZURITE_BLOB_PORT", "queue": "AZURITE_QUEUE_PORT", "table": "AZURITE_TABLE_PORT"}


class RunError(Exception):
    """Why ``make run`` cannot start, in words meant for the terminal."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description="Azurite and the app, locally.")
    parser.add_argument("--port", type=tcp_port, default=7071, help="the app's port (make run PORT=...)")
    parser.add_argument("--blob-port", type=tcp_port, default=10000)
    parser.add_argument("--queue-port", type=tcp_port, default=10001)
    parser.add_argument("--table-port", type=tcp_port, default=10002)
    parser.add_argument("--location", default=".azurite", help="Azurite's data folder")
    parser.add_argument("--settings", default="local.settings.json")
    args = parser.parse_args(argv)
    azurite_ports = {"blob": args.blob_port, "queue": args.queue_port, "table": args.table_port}
    data_lock = None
    try:
        check_ports(args.port, azurite_ports)
        data_lock = lock_data_folder(Path(args.location))
        azurite = start_azurite(Path(args.location), azurite_ports)
    except RunError as problem:
        if data_lock:
            data_lock.close()
        print(f"\nmake run: {problem}", file=sys.stderr)
        return 1
    try:
        notes = use_only(azurite, Path(args.settings), args.port)
        print(banner(args.port, azurite, args.location, notes), flush=True)
        from leads.local.serve import serve

        try:
            serve(port=args.port, settings_file=args.settings)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            print(f"\nmake run: {app_port_message(args.port)}", file=sys.stderr)  # taken since the check
            return 1
    finally:
        azurite.stop()
        data_lock.close()
    return 0


def tcp_port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1 to 65535)")
    return port


def use_only(azurite: Azurite, settings_file: Path, port: int = 7071) -> list[str]:
    """Point the app's storage settings at ``azurite`` (the environment wins over the settings
    file, as with Core Tools); returns what the terminal should be told about it."""
    from leads.core.local_settings import load_local_settings

    storage = os.environ["AzureWebJobsStorage"] = azurite.connection_string
    notes = keep_local_settings_in_step(settings_file, storage, port)
    notes += [note] if (note := give_an_id_key(settings_file)) else []
    load_local_settings(settings_file)
    marketplace = os.environ.get("MARKETPLACE_TABLE_CONNECTION", "")
    if is_local_emulator(marketplace) and marketplace != storage:
        os.environ["MARKETPLACE_TABLE_CONNECTION"] = storage
        notes.append("MARKETPLACE_TABLE_CONNECTION named another local emulator: the app polls this Azurite's table.")
    return notes


def check_ports(app_port: int, azurite_ports: dict[str, int]) -> None:
    """RunError naming every taken port and how to choose another."""
    problems = [app_port_message(app_port)] if not port_is_free(app_port) else []
    taken = {service: port for service, port in azurite_ports.items() if not port_is_free(port)}
    if taken:
        problems.append(azurite_ports_message(taken, azurite_ports))
    if problems:
        raise RunError("\n\n".join(problems))


def app_port_message(port: int) -> str:
    return (
        f"port {port} is already in use (another `make run`, `func start` or another server?).\n"
        f"Stop it, or choose another port: make run PORT={_suggest(port)}"
    )


def azurite_ports_message(taken: dict[str, int], ports: dict[str, int]) -> str:
    """Which of Azurite's ports are taken, and the variables that move all three (moving one
    alone would leave the next clash to be found on the next run)."""
    held = ", ".join(f"{port} ({service}, {PORT_VARIABLES[service]})" for service, port in taken.items())
    moved = " ".join(f"{PORT_VARIABLES[service]}={_suggest(port, 10)}" for service, port in ports.items())
    ports_word = "ports" if len(taken) > 1 else "port"
    return (
        f"Azurite, the storage emulator, cannot listen on {ports_word} {held}: in use, most likely by "
        f"another Azurite (a second `make run`, the VS Code extension, Docker).\n"
        f"The app would then read and write that emulator's leads and queue, so nothing is started.\n"
        f"Stop the other one, or move this one: make run {moved}"
    )


def _suggest(port: int, step: int = 1) -> int:
    """A nearby port that is free now, for the message."""
    candidate = port + step
    while not port_is_free(candidate) and candidate < port + 100 * step:
        candidate += step
    return candidate


def lock_data_folder(location: Path):
    """Two Azurites on one data folder would corrupt it: hold a lock on it while this run lasts
    (another ``make run`` of the same clone on other ports is refused)."""
    import fcntl

    location.mkdir(parents=True, exist_ok=True)
    lock = (location / "make-run.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise RunError(
            f"another `make run` (process {holder}) is using {location}/, Azurite's data: stop it "
            "first (Ctrl+C in its terminal); two emulators on one folder would corrupt it."
        ) from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def start_azurite(location: Path, ports: dict[str, int]) -> Azurite:
    azurite = Azurite(
        location=location,
        blob_port=ports["blob"],
        queue_port=ports["queue"],
        table_port=ports["table"],
        own_session=True,
    )
    try:
        return azurite.start()
    except FileNotFoundError as exc:
        raise RunError(f"{exc} (make run installs it: is npm on the PATH?)") from None
    except AzuriteError as exc:
        service = next((name for name, port in ports.items() if port == exc.port_in_use), None)
        if service:
            raise RunError(azurite_ports_message({service: exc.port_in_use}, ports)) from None
        raise RunError(f"Azurite, the storage emulator, did not start: {exc}") from None
    except TimeoutError as exc:
        raise RunError(f"Azurite, the storage emulator, did not start: {exc}") from None


def keep_local_settings_in_step(path: Path, storage: str, port: int = 7071) -> list[str]:
    """Point ``local.settings.json`` at this run: ``AzureWebJobsStorage`` (and a
    ``MARKETPLACE_TABLE_CONNECTION`` naming a local emulator) at this Azurite when they name a
    local emulator on other ports, and ``Host.LocalHttpPort`` at the app's port, so that the CLI
    reads what the app writes and posts where it listens. Says what it changed, or why the CLI
    will read other storage; nothing when the file already agrees."""
    if not path.is_file():
        return []
    document = json.loads(path.read_text(encoding="utf-8"))
    values, host = document.setdefault("Values", {}), document.setdefault("Host", {})
    notes, changed = [], []
    for name in ("AzureWebJobsStorage", "MARKETPLACE_TABLE_CONNECTION"):
        current = str(values.get(name) or "")
        if current == storage or (name != "AzureWebJobsStorage" and not current):
            continue  # an empty MARKETPLACE_TABLE_CONNECTION is the app's storage already
        if current and not is_local_emulator(current):
            notes.append(
                f"{path} sets {name} to other storage: the app uses this Azurite, but "
                f"`python -m leads ...` reads what {path} names."
            )
            continue
        values[name] = storage
        changed.append(f"{name}: this Azurite")
    if host.get("LocalHttpPort") != port:
        host["LocalHttpPort"] = port
        changed.append(f"Host.LocalHttpPort: {port}")
    if changed:
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        notes.insert(
            0,
            f"{path} now names this run ({'; '.join(changed)}), so that `python -m leads ...` reaches "
            "the same app and reads the same leads.",
        )
    return notes


def give_an_id_key(path: Path) -> str | None:
    """Write a fresh random ``LEADS_ID_KEY`` into ``local.settings.json`` when it has none (every
    digest of personal data is keyed with it, leads/core/pseudonyms.py); what the terminal is told, or
    None when it had one. The file is the developer's own and never committed."""
    import secrets

    if not path.is_file():
        return None
    document = json.loads(path.read_text(encoding="utf-8"))
    values = document.setdefault("Values", {})
    if str(values.get("LEADS_ID_KEY") or "").strip() or os.environ.get("LEADS_ID_KEY", "").strip():
        return None
    values["LEADS_ID_KEY"] = secrets.token_urlsafe(32)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return (
        f"{path} had no LEADS_ID_KEY: a random one is written into it. Keep it: the ids of the leads stored "
        "here are made with it."
    )


def banner(port: int, azurite: Azurite, location: str, notes: list[str]) -> str:
    from leads.core.settings import get_settings

    settings = get_settings()
    base = f"http://127.0.0.1:{port}"
    lines = [
        "",
        f"Azurite (storage emulator) listens on 127.0.0.1:{azurite.blob_port}, {azurite.queue_port}, "
        f"{azurite.table_port}; it keeps its data in {location}/.",
        *notes,
        f"The app starts at {base}. In another terminal, send a test lead:",
        f"  curl -s -X POST {base}/api/leads -H 'Content-Type: application/json' "
        "-d @tests/fixtures/marketplace/https-documented-example.json",
        "  .venv/bin/python -m leads list",
    ]
    lines.append(destinations_line(settings))
    if settings.email_to and not (settings.email_connection_string or settings.email_endpoint):
        lines.append(f"Mails are written to {settings.email_outbox_dir}/ as .eml files (ACS is not configured).")
    if not settings.alert_to:
        lines.append(
            "LEADS_ALERT_TO is not set: a delivery that fails for good alerts nobody (see python -m leads status)."
        )
    lines += ["Stop with Ctrl+C: the app finishes what it is doing, then Azurite stops; leads stay.", ""]
    return "\n".join(lines)


def destinations_line(settings) -> str:
    """Where leads go with these settings: each enabled destination, with where it sends."""
    from leads.core.telemetry import mask_urls
    from leads.destinations import enabled_names
    from leads.destinations.routing import split_addresses

    where = {"email": "; ".join(split_addresses(settings.email_to)), "webhook": mask_urls(settings.webhook_url)}
    names = enabled_names(settings)
    if not names:
        return (
            "No destination is enabled: leads are stored and sent nowhere (set EMAIL_TO or WEBHOOK_URL in "
            "local.settings.json, docs/settings.md)."
        )
    return "Leads go to: " + ", ".join(f"{name} ({where[name]})" if where.get(name) else name for name in names) + "."


if __name__ == "__main__":
    sys.exit(main())
