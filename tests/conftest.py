"""Shared fixtures: one Azurite per test session on ports it chose, fresh tables per test; and how
Hypothesis runs here.

Hypothesis: the suite runs as CI runs it, on a fresh machine with no example database, once. So
its examples are the same on every run (``derandomize``: a property either holds for them or fails
every time, never by the luck of the draw), and a slow example on a loaded 2-core machine is no
failure (no ``deadline``, no ``too_slow`` health check): these tests are about correctness, and
speed is measured in ``benchmarks/``. ``HYPOTHESIS_PROFILE=explore`` draws new examples each run
(and keeps the failing ones in ``.hypothesis/``), for hunting bugs rather than gating a change.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from leads.core.settings import get_settings
from leads.local.azurite import Azurite

FIXTURES = Path(__file__).parent / "fixtures"
# The marketplace's documented example lead (Some One, someone@contoso.com): most tests' lead.
EXAMPLE = json.loads((FIXTURES / "marketplace" / "https-documented-example.json").read_text())

settings.register_profile(
    "suite", derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("explore", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


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
    """The app's storage in Azurite, with table and queue names unique to this test (and mails,
    if any, in the test's own outbox): nothing an earlier test left in the session's Azurite is
    seen, whichever tests ran before."""
    suffix = uuid.uuid4().hex[:16]  # with 8 hex digits, two of ~700 tests shared tables once in ~16,000 runs
    env(
        EMAIL_OUTBOX_DIR=str(tmp_path / "outbox"),
        AzureWebJobsStorage=azurite.connection_string,
        MARKETPLACE_TABLE_CONNECTION="",
        MARKETPLACE_TABLE_NAME=f"Marketplace{suffix}",
        LEADS_TABLE_PREFIX=f"t{suffix}",
        LEADS_DELIVERY_QUEUE=f"q{suffix}",
        # Every digest of personal data is keyed with it (leads/core/pseudonyms.py); a test key, not a secret.
        LEADS_ID_KEY="test-key-of-the-suite-0123456789abcdef",
    )
    return azurite


from tests.fake_acs import fake_acs, fake_tls_ca  # noqa: E402,F401  (fixtures)
