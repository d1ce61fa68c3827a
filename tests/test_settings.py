"""The settings model (leads/core/settings.py), the sample settings a newcomer copies
(local.settings.sample.json) and the settings reference name the same settings. The reference is
docs/settings.md for the app's own, and each destination's docs page (its Settings table) for the
destination's: a destination added is documented on its own page only.

A setting added in one place only fails here, with the names missing from each of the others.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from leads.core.settings import Settings
from leads.local.azurite import connection_string

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "local.settings.sample.json"
REFERENCE = ROOT / "docs" / "settings.md"

# Read by the Functions host, not the app: in the sample (Core Tools needs them), not in the model.
HOST_SETTINGS = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsFeatureFlags"}
# Sample values that differ from the model's default on purpose: a local run needs storage (make
# run's Azurite on its default ports) and someone to mail.
LOCAL_VALUES = {"AzureWebJobsStorage": connection_string(10000, 10001, 10002), "EMAIL_TO": "sales@contoso.example"}


def model_names() -> set[str]:
    return {field.alias or name for name, field in Settings.model_fields.items()}


def sample_values() -> dict[str, str]:
    return json.loads(SAMPLE.read_text(encoding="utf-8"))["Values"]


def table_names(page: Path, section: str | None = None) -> set[str]:
    """The backticked names in the first column of a page's tables (under the heading ``section``
    only, when given: up to the next heading of its level)."""
    names, inside = set(), section is None
    for line in page.read_text(encoding="utf-8").splitlines():
        if section is not None and line.startswith("## "):
            inside = line == f"## {section}"
        cells = line.split("|")
        if inside and line.startswith("|") and len(cells) > 2 and "`" in cells[1]:
            names |= set(re.findall(r"`([^`]+)`", cells[1]))
    return names


def destination_page(name: str) -> Path:
    """The docs page of a destination: salesforce.md for salesforce and salesforce-w2l."""
    return ROOT / "docs" / f"{name.split('-')[0]}.md"


def reference_names() -> set[str]:
    """Every setting the docs name in a settings table: docs/settings.md's, and each destination
    page's Settings table."""
    from leads.destinations import REGISTRY

    return table_names(REFERENCE).union(*(table_names(destination_page(name), "Settings") for name in REGISTRY))


def differences(expected: set[str], **others: set[str]) -> dict[str, dict[str, list[str]]]:
    return {
        where: {"missing": sorted(expected - names), "not in the model": sorted(names - expected)}
        for where, names in others.items()
        if names != expected
    }


def test_model_sample_and_reference_name_the_same_settings():
    sample = set(sample_values()) - HOST_SETTINGS
    drift = differences(model_names(), **{SAMPLE.name: sample, "the docs' settings tables": reference_names()})
    assert not drift, "settings named in one place only:\n" + json.dumps(drift, indent=2)


def test_the_sample_holds_the_host_settings_core_tools_needs():
    assert HOST_SETTINGS <= set(sample_values())


def test_sample_values_are_the_defaults_except_what_a_local_run_needs():
    values = {name: value for name, value in sample_values().items() if name not in HOST_SETTINGS}
    from_sample = Settings.model_validate(values)  # each value is one the app accepts
    changed = {
        field.alias: getattr(from_sample, name)
        for name, field in Settings.model_fields.items()
        if getattr(from_sample, name) != field.get_default(call_default_factory=True)
    }
    assert changed == LOCAL_VALUES


def test_differences_name_what_is_missing_where():
    # The helper must see drift both ways, or the test above could pass on anything.
    assert differences({"A", "B"}, sample={"A", "C"}) == {"sample": {"missing": ["B"], "not in the model": ["C"]}}
    assert differences({"A"}, sample={"A"}) == {}


def test_each_destinations_declared_settings_are_in_the_sample_and_on_its_page_only():
    """What a destination declares it reads (its class's setting_fields, tests/test_registry.py)
    a newcomer finds in the sample and in the Settings table of the destination's own docs page,
    and not in docs/settings.md's: one place for each setting's meaning."""
    from .test_registry import declared_settings

    sample, general = set(sample_values()), table_names(REFERENCE)
    for name, (aliases, _) in declared_settings().items():
        page = destination_page(name)
        assert page.is_file(), f"{name} has no docs page"
        documented = table_names(page, "Settings")
        assert not aliases - sample, f"{name}: settings missing from {SAMPLE.name}: {sorted(aliases - sample)}"
        assert not aliases - documented, (
            f"{name}: settings missing from {page.name}'s Settings table: {sorted(aliases - documented)}"
        )
        assert not aliases & general, f"{name}: settings also in docs/settings.md's table: {sorted(aliases & general)}"


def test_table_names_reads_only_the_section_asked(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# P\n\n| `A` | x |\n\n## Settings\n\n| setting |\n|---|\n| `B`, `C` | y |\n\n## Next\n\n| `D` | z |\n"
    )
    assert table_names(page) == {"A", "B", "C", "D"}
    assert table_names(page, "Settings") == {"B", "C"}
