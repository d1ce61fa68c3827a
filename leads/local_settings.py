"""Load ``local.settings.json`` into the environment, as Azure Functions Core Tools does."""

from __future__ import annotations

import json
import os
from pathlib import Path


def load_local_settings(path: str | Path | None = "local.settings.json") -> dict[str, str]:
    """Set each of the file's ``Values`` that the environment does not already set (a variable
    set in the shell wins, as with Core Tools). Returns what was set; a missing file sets nothing."""
    from .settings import get_settings

    if path is None or not Path(path).is_file():
        return {}
    values = json.loads(Path(path).read_text(encoding="utf-8")).get("Values") or {}
    applied = {}
    for name, value in values.items():
        if name not in os.environ and value is not None:
            os.environ[name] = applied[name] = str(value)
    get_settings.cache_clear()
    return applied
