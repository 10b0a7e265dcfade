"""docs/operations.md's settings table is ServerSettings: every field has a row, every row
a field, and each default in the table is the class's default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from innkt_analytics.server._settings import ServerSettings

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
_ROW = re.compile(r"^\| `INNKT_([A-Z0-9_]+)` \| ([^|]*) \| [^|]*\S[^|]* \|$")


def _table() -> dict[str, str]:
    """``field name -> default cell`` of the rows under '## All settings'."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## All settings\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if line.startswith("| `INNKT_"):
            match = _ROW.match(line)
            assert match, f"a settings row needs a name, a default and a description: {line}"
            name = match.group(1).lower()
            assert name not in rows, f"INNKT_{name.upper()} has two rows"
            rows[name] = match.group(2).strip()
    return rows


def _fields() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(ServerSettings) if f.name != "extra"}


def _parse(cell: str, default: Any) -> Any:
    """The cell as the setting's type: `value` in backticks, or 'empty'."""
    if cell == "empty":
        return () if isinstance(default, tuple) else ""
    assert re.fullmatch(r"`[^`]*`", cell), f"default {cell!r}: `value` or empty"
    raw = cell[1:-1]
    if isinstance(default, tuple):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    return type(default)(raw)


def test_every_setting_has_a_row_and_every_row_a_setting() -> None:
    documented, fields = set(_table()), set(_fields())
    assert fields - documented == set(), "settings missing from docs/operations.md"
    assert documented - fields == set(), "rows in docs/operations.md for no setting"


def test_the_defaults_in_the_table_are_the_class_defaults() -> None:
    table, fields = _table(), _fields()
    wrong = {
        name: (table[name], default)
        for name, default in fields.items()
        if name in table and _parse(table[name], default) != default
    }
    assert wrong == {}


def test_the_table_reads_as_the_environment_would() -> None:
    # The cells are values INNKT_* accepts: fed back through from_env they give the defaults.
    environ = {
        "INNKT_" + name.upper(): "" if cell == "empty" else cell.strip("`")
        for name, cell in _table().items()
    }
    assert ServerSettings.from_env(environ) == ServerSettings()


def test_the_alert_settings_table_is_alert_settings() -> None:
    # The INNKT_ALERT_* variables are read by their own class; their table is in the
    # dashboard guide, next to the alerts (docs/operations.md links to it).
    from innkt_analytics.server._alerts import AlertSettings

    text = (DOC.parent / "dashboard.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        match = _ROW.match(line)
        if match and match.group(1).startswith("ALERT_"):
            rows[match.group(1).removeprefix("ALERT_").lower()] = match.group(2).strip()
    fields = {f.name: f.default for f in dataclasses.fields(AlertSettings)}
    assert set(rows) == set(fields)
    assert {n: _parse(c, fields[n]) for n, c in rows.items()} == fields
