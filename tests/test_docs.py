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
    from leads.core.normalise import from_table_entity

    blocks = re.findall(r"```json\n(.*?)```", (ROOT / page).read_text(encoding="utf-8"), re.DOTALL)
    rows = [row for row in map(json.loads, blocks) if isinstance(row, dict) and "CustomerInfo" in row]
    assert rows, f"{page} shows no marketplace table row"
    for row in rows:
        lead = from_table_entity(row, "MarketplaceLeads")
        assert lead.email and lead.first_name and lead.source == "AzureMarketplace"


# --- the README's and docs/cli.md's commands, run as written against a `make run` ----------------

RUN_PORTS = ("PORT", "AZURITE_BLOB_PORT", "AZURITE_QUEUE_PORT", "AZURITE_TABLE_PORT")


def shell_commands(page: str, heading: str | None = None) -> list[tuple[str, str | None]]:
    """The commands of a page's ```sh blocks (under ``heading``, if given) that a reader runs in
    another terminal while `make run` runs: each with the comment line that follows it, if any."""
    text = (ROOT / page).read_text(encoding="utf-8")
    if heading:
        text = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    commands: list[tuple[str, str | None]] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("# ") and commands:
                commands[-1] = (commands[-1][0], line[2:])
            elif line.startswith((".venv/bin/python -m leads", "curl ", "echo ")):
                commands.append((re.sub(r"\s+#\s.*$", "", line).strip(), None))
    return commands


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A fresh clone's `make run` on other ports than the default ones: the Makefile's own recipe
    (`make -n`, installs taken as done), in a folder of its own that holds what a clone holds,
    with local.settings.json copied from the sample as `make run` does (its poll every 2 s rather
    than 30, to keep the test short). Yields the folder, the ports and the run's output file."""
    import os
    import signal
    import subprocess
    import time

    from leads.local.azurite import free_ports

    home = tmp_path_factory.mktemp("clone")
    for name in ("leads", "function_app.py", "host.json", "tests", ".venv"):
        (home / name).symlink_to(ROOT / name)
    settings = json.loads((ROOT / "local.settings.sample.json").read_text())
    settings["Values"]["LEADS_POLL_SCHEDULE"] = "*/2 * * * * *"
    (home / "local.settings.json").write_text(json.dumps(settings))
    ports = dict(zip(RUN_PORTS, free_ports(4), strict=True))
    make = ["make", "-s", "-n", "-o", "install", "-o", "local.settings.json", "-f", str(ROOT / "Makefile"), "run"]
    recipe = subprocess.run(
        [*make, *(f"{name}={port}" for name, port in ports.items())],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    env = terminal_env()
    log = home / "make-run.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-c", recipe], cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while "Serving function_app" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield home, ports, log
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl+C
        try:
            process.wait(60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def terminal_env() -> dict[str, str]:
    """The environment of a newcomer's terminal: none of the app's settings set in it."""
    import os

    from leads.core.settings import Settings

    names = {field.alias or name for name, field in Settings.model_fields.items()}
    return {
        name: value
        for name, value in os.environ.items()
        if name not in names and not name.startswith(("AzureWebJobsStorage", "MARKETPLACE_"))
    }


def run_as_written(home: Path, command: str, env: dict[str, str] | None = None):
    import subprocess

    return subprocess.run(
        ["bash", "-c", command], cwd=home, env=env or terminal_env(), capture_output=True, text=True, timeout=120
    )


def test_the_readme_and_cli_commands_work_as_written_after_make_run_on_other_ports(first_run):
    home, ports, log = first_run
    banner = log.read_text()
    assert "Leads go to: email (sales@contoso.example)." in banner  # the README: it says where leads go
    readme = shell_commands("README.md", "## Try it locally")
    names = [command.split()[0] if command.startswith("curl") else command.split()[3] for command, _ in readme]
    assert names == ["curl", "list", "show", "check", "test-lead"], readme
    lead_id = None
    for command, expected in readme:
        if command.startswith("curl"):  # the port make run printed
            assert f"curl -s -X POST http://127.0.0.1:{ports['PORT']}/api/leads" in banner
            command = command.replace("127.0.0.1:7071", f"127.0.0.1:{ports['PORT']}")
        done = run_as_written(home, command)
        told = done.stdout + done.stderr
        assert done.returncode == 0 and "Traceback" not in told, (command, told)
        if expected and expected.startswith("{"):  # "h…": the id is keyed with this clone's own LEADS_ID_KEY
            answered, documented = json.loads(done.stdout), json.loads(expected)
            assert answered.keys() == documented.keys(), (command, done.stdout)
            for name, value in documented.items():
                if isinstance(value, str) and value.endswith("…"):
                    assert re.fullmatch(rf"{value[:-1]}[0-9a-f]{{24}}", answered[name]), (command, done.stdout)
                else:
                    assert answered[name] == value, (command, done.stdout)
            lead_id = answered.get("leadId", lead_id)
        if "show latest" in command:  # the lead the curl above stored
            assert f"Lead:         {lead_id}" in done.stdout, told
        if "test-lead --via table" in command:  # the poll took the row in, and the mail went out
            assert re.search(r"^  email\s+delivered", done.stdout, re.M), told
    assert lead_id in run_as_written(home, ".venv/bin/python -m leads list").stdout

    examples = shell_commands("docs/cli.md", "## Examples")
    assert len(examples) >= 8, examples
    env_only = {
        **terminal_env(),
        "AzureWebJobsStorage": json.loads((home / "local.settings.json").read_text())["Values"]["AzureWebJobsStorage"],
    }  # as `export AzureWebJobsStorage=...` names it
    for command, _ in examples:
        done = run_as_written(home, command, env_only if "--settings none" in command else None)
        told = done.stdout + done.stderr
        assert done.returncode == 0 and "Traceback" not in told, (command, told)
        if command.endswith("list --limit 1"):  # its last line is the next page's command: pasted, it works
            pasted = re.search(r"^Next page: (.+)$", done.stdout, re.M).group(1)
            following = run_as_written(home, pasted)
            assert following.returncode == 0 and following.stdout.split("\n", 2)[1] != done.stdout.split("\n", 2)[1]
        if "--dry-run" in command:  # the README's lead, posted above: the real run would find it
            assert re.search(r"^  already received:\s+1$", done.stdout, re.M), told
        if command.endswith("leads test-lead"):  # posted to the app make run started, on its port
            assert f"Posted a test lead to http://127.0.0.1:{ports['PORT']}/api/leads" in done.stderr
    assert len((home / "leads.jsonl").read_text().splitlines()) >= 3  # list --all > leads.jsonl


def test_a_body_over_100_mb_is_refused_as_the_functions_host_does_and_the_contract_says_why(first_run):
    import socket

    home, ports, _ = first_run
    contract = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    assert "One refused body is not kept: one over 100 MB (104,857,600 bytes)" in contract
    with socket.create_connection(("127.0.0.1", ports["PORT"]), timeout=30) as connection:
        connection.sendall(
            b"POST /api/leads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857601\r\n\r\n{"
        )
        answer = connection.makefile("rb").read().decode()
    assert answer.startswith("HTTP/1.1 413") and "rejectedId" not in answer
    assert "REJECTED" not in run_as_written(home, ".venv/bin/python -m leads list").stdout


def test_the_readme_table_row_is_taken_in_when_and_as_the_readme_says(storage, env):
    """Dated today, the README's row is taken in by the routine poll (the 30-second one) and
    delivered; as it stands (2018-09-28) that poll does not read it and says why, and `poll
    --full-scan` takes it in at once, and delivers it."""
    import os
    import subprocess
    import sys
    import uuid
    from datetime import UTC, datetime

    from leads.core.settings import get_settings
    from leads.intake.poll import marketplace_table
    from leads.store.lead_store import LeadStore

    [row] = [
        json.loads(block)
        for block in re.findall(r"```json\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
        if "CustomerInfo" in block
    ]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "taken in by the next\npoll, within 30 s, and delivered" in readme and "poll --full-scan" in readme
    env(EMAIL_TO="sales@contoso.com", WEBHOOK_URL="")
    table = marketplace_table(get_settings())
    table.create_table()

    def poll(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "leads", "--settings", "none", "poll", *args],
            cwd=ROOT,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def today(row: dict) -> dict:
        now = datetime.now(UTC)
        return {**row, "PartitionKey": f"{now:%Y-%m-%d}", "RowKey": str(uuid.uuid4()), "CreatedTime": now.isoformat()}

    table.create_entity(today(row))
    assert "stored 1" in poll()  # the first poll of a table reads it whole
    table.create_entity(today(row))
    routine = poll()
    assert re.match(r"read \d, stored 1, ", routine) and "(days)" in routine, routine
    store = LeadStore.from_settings()
    newest = store.list(limit=1)[0]
    assert {d.state for d in store.deliveries.for_lead(newest.lead_id)} == {"pending"}  # queued, not held

    table.create_entity(row)  # as the README shows it
    routine = poll()
    # What it read again (the overlap window) it says it took in before: never the README's row.
    assert ", stored 0, " in routine and "read again: taken in by an earlier poll" in routine
    assert "read by the hourly safety scan, or now by: python -m leads poll --full-scan" in routine
    scan = poll("--full-scan")
    assert ", stored 1, " in scan and "held 0" in scan, scan  # written now: a lead of now, delivered
    newest = store.list(limit=1)[0]
    assert newest.raw["RowKey"] == row["RowKey"]
    assert {d.state for d in store.deliveries.for_lead(newest.lead_id)} == {"pending"}
