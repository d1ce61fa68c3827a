"""README.md and docs/ link to files and sections that exist, and name files that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"\]\((?!https?:|mailto:)([^)#\s]*)(?:#([^)\s]+))?\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    headings = re.findall(r"^#+\s+(.+?)\s*$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_and_their_sections_exist(page):
    broken = []
    for target, anchor in LINK.findall(page.read_text(encoding="utf-8")):
        linked = (page.parent / target).resolve() if target else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{page.name} links to what does not exist: {broken}"


def test_docs_files_named_in_code_and_templates_exist():
    named = set()
    for path in [*ROOT.glob("leads/**/*.py"), *ROOT.glob("infra/**/*.bicep"), ROOT / "Makefile"]:
        named |= set(re.findall(r"\bdocs/[\w-]+\.md\b", path.read_text(encoding="utf-8")))
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert named and not missing, missing


@pytest.mark.parametrize("page", ["README.md", "docs/contract.md"])
def test_the_example_table_row_is_a_lead_the_poll_takes_in(page):
    from leads.normalise import from_table_entity

    blocks = re.findall(r"```json\n(.*?)```", (ROOT / page).read_text(encoding="utf-8"), re.DOTALL)
    rows = [row for row in map(json.loads, blocks) if isinstance(row, dict) and "CustomerInfo" in row]
    assert rows, f"{page} shows no marketplace table row"
    for row in rows:
        lead = from_table_entity(row, "MarketplaceLeads")
        assert lead.email and lead.first_name and lead.source == "AzureMarketplace"
