"""The KQL of the Azure Monitor alert rules (infra/app/alerts.bicep) and of the workbook
(infra/app/workbook.json), and the names each query relies on: its table, the columns it reads,
the custom events it filters by name and the properties it reads of them.

The queries use the workspace schema of workspace-based Application Insights (``AppEvents`` with
``TimeGenerated``, ``Name``, ``Properties``), which the exporter's envelopes map to: an
``EventData`` envelope's ``time``, ``baseData.name`` and ``baseData.properties``
(https://learn.microsoft.com/azure/azure-monitor/app/convert-classic-resource#table-structure).
Any other word of a query must be KQL's own, or a name the query itself gives (``X = ...``): an
unknown column or a misspelt property fails the check rather than passing unnoticed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

INFRA = Path(__file__).resolve().parents[1] / "infra"

# Workspace tables and the envelope type each holds; the columns the queries may use, as paths
# into an envelope of that type.
TABLES = {
    "AppEvents": "EventData",
    "AppTraces": "MessageData",
    "AppExceptions": "ExceptionData",
    "AppRequests": "RequestData",
    "AppDependencies": "RemoteDependencyData",
}
COLUMNS = {
    "AppEvents": {
        "TimeGenerated": ("time",),
        "Name": ("data", "baseData", "name"),
        "Properties": ("data", "baseData", "properties"),
    },
}
# KQL's operators, functions and words the queries use (extend when a query needs another).
KQL = frozenset(
    """
    where summarize project extend order sort by asc desc render take top union let in and or not
    count countif dcount max maxif min minif sum avg percentile make_set take_any take_anyif arg_max
    tostring toint todouble tolong bin ago now iff isempty isnotempty strcat
    columnchart timechart barchart piechart table true false
""".split()
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_PROPERTY = re.compile(r'Properties(?:\.(\w+)|\[\s*"([^"]+)"\s*\])')
_WORD = re.compile(r"(?<![\w.])[A-Za-z_]\w*")
_ALIAS = re.compile(r"\b(\w+)\s*=(?!=)")


@dataclass
class Names:
    table: str
    columns: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)
    properties: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)  # words that are no column, KQL word or alias


def names_in(query: str) -> Names:
    table = query.strip().split()[0]
    names = Names(table)
    for match in re.finditer(r'\bName\s*==\s*("(?:[^"\\]|\\.)*")', query):
        names.events.add(json.loads(match.group(1)))
    for match in re.finditer(r"\bName\s+in\s*\(([^)]*)\)", query):
        names.events.update(json.loads(literal) for literal in _STRING.findall(match.group(1)))
    for match in _PROPERTY.finditer(query):
        names.properties.add(match.group(1) or match.group(2))
    code = _PROPERTY.sub("Properties", _STRING.sub('""', query))
    aliases = set(_ALIAS.findall(code))
    for word in _WORD.findall(code):
        if word == table or word in KQL or word in aliases:
            continue
        if word in COLUMNS.get(table, {}):
            names.columns.add(word)
        else:
            names.unknown.add(word)
    return names


@cache
def queries() -> tuple[tuple[str, str], ...]:
    """(where, query) for every alert rule's and workbook item's query."""
    import pycep

    alerts = pycep.BicepParser().parse(file_path=INFRA / "app" / "alerts.bicep")
    found = [(f"alert rule {rule['name']}", rule["query"]) for rule in alerts["variables"]["rules"]["value"]]
    workbook = json.loads((INFRA / "app" / "workbook.json").read_text())
    found += [
        (f"workbook item {item['name']}", item["content"]["query"])
        for item in workbook["items"]
        if item.get("type") == 3
    ]
    return tuple(found)


def path_in(envelope: dict, path: tuple[str, ...]) -> bool:
    node = envelope
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True
