"""Load ``local.settings.json`` into the environment, as Azure Functions Core Tools does; and read
its ``Host.LocalHttpPort``, the port a local run serves on (``make run`` writes the one it uses)."""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_PORT = 7071  # Core Tools' own default
_loaded: dict[str, str] = {}  # setting → the file the last load took it from


def load_local_settings(path: str | Path | None = "local.settings.json") -> dict[str, str]:
    """Set each of the file's ``Values`` that the environment does not already set (a variable
    set in the shell wins, as with Core Tools). Returns what was set; a missing file sets nothing."""
    from leads.core.settings import get_settings

    if path is None or not Path(path).is_file():
        return {}
    values = json.loads(Path(path).read_text(encoding="utf-8")).get("Values") or {}
    applied = {}
    for name, value in values.items():
        if name not in os.environ and value is not None:
            os.environ[name] = applied[name] = str(value)
            _loaded[name] = str(path)
    get_settings.cache_clear()
    return applied


def where_set(name: str) -> str:
    """Where a setting's value came from, for a message: the settings file that set it, or the environment."""
    if name in _loaded and os.environ.get(name) is not None:
        return f"set in {_loaded[name]}"
    return "set in the environment" if os.environ.get(name) is not None else "not set: its default"


def local_http_port(path: str | Path | None = "local.settings.json") -> int:
    """``Host.LocalHttpPort`` of the settings file (Core Tools' default port for ``func start``;
    ``make run`` writes the port it serves on), or 7071."""
    if path is None:
        return DEFAULT_PORT
    try:
        host = json.loads(Path(path).read_text(encoding="utf-8")).get("Host") or {}
        port = int(host.get("LocalHttpPort") or DEFAULT_PORT)
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_PORT
    return port if 0 < port < 65536 else DEFAULT_PORT


def local_intake_url(path: str | Path | None = "local.settings.json") -> str:
    """The intake of the app a local run serves, by the settings file's port."""
    return f"http://127.0.0.1:{local_http_port(path)}/api/leads"
