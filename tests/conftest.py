"""Shared fixtures: one Azurite per test session on free ports, fresh tables per test."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from leads.azurite import Azurite
from leads.settings import get_settings

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def azurite():
    with Azurite() as server:
        yield server


@pytest.fixture
def env(monkeypatch):
    """Set app settings for one test; the cached settings are read again afterwards."""

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield set_env
    get_settings.cache_clear()


@pytest.fixture
def storage(azurite, env, tmp_path):
    """The app's storage in Azurite, with table names unique to this test (and mails, if any,
    in the test's own outbox)."""
    suffix = uuid.uuid4().hex[:8]
    env(
        EMAIL_OUTBOX_DIR=str(tmp_path / "outbox"),
        AzureWebJobsStorage=azurite.connection_string,
        MARKETPLACE_TABLE_CONNECTION="",
        MARKETPLACE_TABLE_NAME=f"Marketplace{suffix}",
        LEADS_TABLE_PREFIX=f"t{suffix}",
    )
    return azurite


from tests.fake_acs import fake_acs, fake_tls_ca  # noqa: E402,F401  (fixtures)
