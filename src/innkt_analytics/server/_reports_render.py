"""A report's results as text and as HTML with inline SVG charts (no I/O, no assets).

``render_text`` and ``render_html`` take the sections of one run — a title, the query
kind and the insights answer as JSON builtins (camelCase, as ``/v1/insights/*`` answers)
— and return a message body. The HTML loads nothing from anywhere: charts are inline
SVG (a line chart for trends, bars for funnels), the retention triangle is a table
whose cells are shaded by their share, and every other answer is a plain table.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["Section", "render_html", "render_text"]

_COLORS: Final = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
_W: Final = 560
_H: Final = 200
_PAD: Final = 36


@dataclasses.dataclass(frozen=True, slots=True)
class Section:
    """One query of a report and its answer (or the error that stopped it)."""

    title: str
    kind: str
    result: dict[str, Any] | None
    error: str | None = None


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _series_label(query: dict[str, Any] | None, entry: dict[str, Any]) -> str:
    label = f"series {entry['index'] + 1}"
    series = (query or {}).get("series") or []
    if entry["index"] < len(series):
        spec = series[entry["index"]]
        label = str(spec.get("event") or "any event")
        if spec.get("math", "total") != "total":
            label += (
                f" ({spec['math']}{' ' + spec['mathProperty'] if spec.get('mathProperty') else ''})"
            )
    if entry.get("breakdownValue") is not None:
        label += f" [{entry['breakdownValue']}]"
    return label


def table(
    section: Section, query: dict[str, Any] | None = None
) -> tuple[list[str], list[list[str]]]:
    """The answer as a header and rows of formatted cells."""
    r = section.result or {}
    if section.kind == "trends":
        series = r.get("series", [])
        head = ["bucket", *(_series_label(query, s) for s in series)]
        rows = [
            [b, *(_num(s["values"][i]) for s in series)] for i, b in enumerate(r.get("buckets", []))
        ]
        return head, rows
    if section.kind == "funnels":
        head = ["step", "count", "conversion", "dropped", "median s"]
        rows = [
            [
                str(i + 1),
                _num(s["count"]),
                f"{s['conversionRate'] * 100:.1f}%",
                _num(s["droppedOff"]),
                _num(s["medianSeconds"]),
            ]
            for i, s in enumerate(r.get("steps", []))
        ]
        return head, rows
    if section.kind == "retention":
        cohorts = r.get("cohorts", [])
        width = max((len(c["values"]) for c in cohorts), default=0)
        head = ["cohort", "size", *(f"+{i}" for i in range(width))]
        rows = [[c["start"], _num(c["size"]), *(_num(v) for v in c["values"])] for c in cohorts]
        return head, rows
    if section.kind == "paths":
        return ["step", "from", "to", "count"], [
            [str(e["step"]), e["source"], e["target"], _num(e["count"])] for e in r.get("edges", [])
        ]
    if section.kind == "lifecycle":
        parts = ("new", "returning", "resurrecting", "dormant")
        return ["bucket", *parts], [
            [b, *(_num(r[p][i]) for p in parts)] for i, b in enumerate(r.get("buckets", []))
        ]
    return ["active periods", "users"], [
        [str(i + 1), _num(n)] for i, n in enumerate(r.get("actors", []))
    ]


def _text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=False)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        )
        for row in (head, *rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def render_text(
    name: str, period: str, sections: Sequence[Section], queries: Sequence[dict[str, Any]]
) -> str:
    """The plain-text body: each section's numbers as an aligned table."""
    out = [f"{name} — {period}", ""]
    for section, query in zip(sections, queries, strict=True):
        out += [section.title, "=" * len(section.title)]
        if section.error is not None:
            out.append(f"error: {section.error}")
        else:
            out.append(_text_table(*table(section, query)))
        out.append("")
    return "\n".join(out)


def _scale(values: Sequence[float], top: float) -> list[float]:
    return [_H - _PAD - (v / top) * (_H - 2 * _PAD) if top else _H - _PAD for v in values]


def _line_chart(r: dict[str, Any], query: dict[str, Any] | None) -> str:
    series = r.get("series", [])
    buckets = r.get("buckets", [])
    data = [[float(v or 0) for v in s["values"]] for s in series]
    top = max((v for values in data for v in values), default=0.0)
    step = (_W - 2 * _PAD) / max(1, len(buckets) - 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img">',
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#999"/>',
        f'<text x="4" y="{_PAD}" font-size="10">{html.escape(_num(top))}</text>',
    ]
    for i, values in enumerate(data):
        ys = _scale(values, top)
        points = " ".join(f"{_PAD + j * step:.1f},{y:.1f}" for j, y in enumerate(ys))
        color = _COLORS[i % len(_COLORS)]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        label = html.escape(_series_label(query, series[i]))
        parts.append(
            f'<text x="{_PAD}" y="{12 + 12 * i}" font-size="10" fill="{color}">{label}</text>'
        )
    if buckets:
        parts.append(
            f'<text x="{_PAD}" y="{_H - 8}" font-size="10">{html.escape(buckets[0])}</text>'
        )
        parts.append(
            f'<text x="{_W - _PAD}" y="{_H - 8}" font-size="10" text-anchor="end">'
            f"{html.escape(buckets[-1])}</text>"
        )
    return "".join(parts) + "</svg>"


def _bar_chart(r: dict[str, Any]) -> str:
    steps = r.get("steps", [])
    top = max((s["count"] for s in steps), default=0)
    width = (_W - 2 * _PAD) / max(1, len(steps))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img">']
    for i, s in enumerate(steps):
        y = _scale([s["count"]], top)[0]
        x = _PAD + i * width
        parts.append(
            f'<rect x="{x + 4:.1f}" y="{y:.1f}" width="{width - 8:.1f}"'
            f' height="{_H - _PAD - y:.1f}" fill="{_COLORS[0]}"/>'
            f'<text x="{x + width / 2:.1f}" y="{y - 4:.1f}" font-size="10" text-anchor="middle">'
            f"{_num(s['count'])} ({s['conversionRate'] * 100:.0f}%)</text>"
        )
    return "".join(parts) + "</svg>"


def _html_table(
    head: list[str], rows: list[list[str]], shades: list[list[float | None]] | None = None
) -> str:
    cell = 'style="padding:2px 6px;border:1px solid #ddd;text-align:right"'
    out = ['<table style="border-collapse:collapse;font:12px sans-serif">']
    out.append("<tr>" + "".join(f"<th {cell}>{html.escape(h)}</th>" for h in head) + "</tr>")
    for i, row in enumerate(rows):
        tds = []
        for j, c in enumerate(row):
            share = shades[i][j] if shades else None
            style = (
                cell if share is None else cell[:-1] + f';background:rgba(37,99,235,{share:.2f})"'
            )
            tds.append(f"<td {style}>{html.escape(c)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    return "".join(out) + "</table>"


def _retention_shades(r: dict[str, Any]) -> list[list[float | None]]:
    return [
        [None, None, *(v / c["size"] if c["size"] else 0.0 for v in c["values"])]
        for c in r.get("cohorts", [])
    ]


def render_html(
    name: str, period: str, sections: Sequence[Section], queries: Sequence[dict[str, Any]]
) -> str:
    """The HTML body: a chart (inline SVG) or heat map per section, and its numbers."""
    out = [
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head>'
        '<body style="font:14px sans-serif">',
        f"<h1>{html.escape(name)}</h1><p>{html.escape(period)}</p>",
    ]
    for section, query in zip(sections, queries, strict=True):
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.error is not None or section.result is None:
            out.append(f"<p>error: {html.escape(section.error or '')}</p>")
            continue
        head, rows = table(section, query)
        if section.kind == "trends":
            out.append(_line_chart(section.result, query))
        elif section.kind == "funnels":
            out.append(_bar_chart(section.result))
        shades = _retention_shades(section.result) if section.kind == "retention" else None
        out.append(_html_table(head, rows, shades))
    out.append("</body></html>")
    return "".join(out)
