// The insight panels' charts, drawn as inline SVG (and one HTML table): several lines
// with a shared axis, funnel bars with the drop-off between steps, the retention
// triangle as a heat map, paths as columns of nodes with links as wide as their flow,
// and stacked or plain bars. Text always goes in with textContent.

import { formatCount, niceMax } from "./charts.js";
import { h, svg } from "./dom.js";

/** Colours for series, in order; enough for ten series and a breakdown's "Other". */
export const PALETTE = [
  "#4f46e5", "#0ea5e9", "#f59e0b", "#10b981", "#e5484d",
  "#8b5cf6", "#14b8a6", "#f97316", "#64748b", "#db2777", "#84cc16",
];

function frame(container, height, label) {
  container.textContent = "";
  const width = Math.max(280, container.clientWidth || 560);
  const root = svg("svg", {
    class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label,
  }, container);
  return { root, width };
}

function shortLabel(label) {
  // "2026-03-02T00:00:00" -> "Mar 2"; with a time of day: "Mar 2 14:00"
  const [date, time = "00:00:00"] = label.split("T");
  const [y, m, d] = date.split("-").map(Number);
  const day = new Date(Date.UTC(y, m - 1, d)).toLocaleDateString([], { month: "short", day: "numeric", timeZone: "UTC" });
  return time.startsWith("00:00") ? day : `${day} ${time.slice(0, 5)}`;
}

function yAxis(root, { left, right, top, plotH, width, max, min = 0 }) {
  const y = (v) => top + plotH - ((v - min) / (max - min)) * plotH;
  const steps = 4;
  for (let i = 0; i <= steps; i++) {
    const v = min + ((max - min) * i) / steps;
    svg("line", { class: "grid-line", x1: left, x2: width - right, y1: y(v), y2: y(v) }, root);
    svg("text", { class: "axis-y", x: left - 6, y: y(v) + 4, "text-anchor": "end", text: formatCount(v) }, root);
  }
  return y;
}

function xLabels(root, labels, x, baseline, format = shortLabel) {
  const every = Math.max(1, Math.ceil(labels.length / 7));
  labels.forEach((label, i) => {
    if (i % every) return;
    svg("text", { class: "axis-x", x: x(i), y: baseline, "text-anchor": "middle", text: format(label) }, root);
  });
}

/** Lines over `labels` (bucket starts): series = [{name, values, color}]. */
export function lineChart(container, labels, series, { height = 220 } = {}) {
  const { root, width } = frame(container, height, "trend");
  const pad = { left: 44, right: 16, top: 12, bottom: 26 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const max = niceMax(Math.max(1, ...series.flatMap((s) => s.values.map((v) => v || 0))));
  const y = yAxis(root, { ...pad, plotH, width, max });
  const x = (i) => pad.left + (labels.length > 1 ? (i / (labels.length - 1)) * plotW : plotW / 2);
  xLabels(root, labels, x, height - 8);
  for (const s of series) {
    const d = s.values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v || 0).toFixed(1)}`).join("");
    svg("path", { d, fill: "none", stroke: s.color, "stroke-width": 2, "stroke-linejoin": "round", class: "series-line" }, root);
    s.values.forEach((v, i) => {
      const dot = svg("circle", { cx: x(i), cy: y(v || 0), r: labels.length > 40 ? 1.5 : 3, fill: s.color }, root);
      svg("title", { text: `${s.name} · ${labels[i]}: ${v ?? "—"}` }, dot);
    });
  }
  return root;
}

function pct(rate) {
  return `${(100 * rate).toFixed(rate > 0 && rate < 0.1 ? 1 : 0)}%`;
}

/** Funnel bars: steps = [{name, count, conversionRate, stepConversionRate, droppedOff}]. */
export function funnelChart(container, steps, { height = 240 } = {}) {
  const { root, width } = frame(container, height, "funnel");
  const pad = { left: 12, right: 12, top: 34, bottom: 44 };
  const slot = (width - pad.left - pad.right) / steps.length;
  const barW = Math.min(120, slot * 0.56);
  const plotH = height - pad.top - pad.bottom;
  const base = pad.top + plotH;
  const top = Math.max(1, steps[0] ? steps[0].count : 1);
  steps.forEach((step, i) => {
    const cx = pad.left + slot * i + slot / 2;
    const g = svg("g", { class: "funnel-step", dataset: { step: String(i + 1) } }, root);
    svg("rect", { x: cx - barW / 2, y: pad.top, width: barW, height: plotH, rx: 4, class: "funnel-track" }, g);
    const hgt = (step.count / top) * plotH;
    svg("rect", { x: cx - barW / 2, y: base - hgt, width: barW, height: hgt, rx: 4, fill: PALETTE[0] }, g);
    svg("text", { class: "funnel-count", x: cx, y: pad.top - 16, "text-anchor": "middle", text: formatCount(step.count) }, g);
    svg("text", { class: "funnel-rate muted-text", x: cx, y: pad.top - 3, "text-anchor": "middle", text: pct(step.conversionRate) }, g);
    svg("text", { class: "funnel-name", x: cx, y: base + 16, "text-anchor": "middle", text: `${i + 1}. ${step.name}` }, g);
    if (i > 0) {
      // what was lost on the way from the previous step, between the two bars
      const lx = cx - slot / 2;
      const drop = svg("g", { class: "funnel-drop", dataset: { step: String(i + 1) } }, root);
      svg("text", { class: "drop-count", x: lx, y: base - plotH / 2, "text-anchor": "middle", text: `−${formatCount(step.droppedOff)}` }, drop);
      svg("text", { class: "drop-rate", x: lx, y: base - plotH / 2 + 15, "text-anchor": "middle", text: pct(1 - step.stepConversionRate) }, drop);
    }
  });
  svg("text", { class: "muted-text", x: pad.left, y: height - 6, text: "Bars: reached the step · between bars: dropped off" }, root);
  return root;
}

/** The retention triangle as a table whose cells are shaded by the share retained. */
export function retentionTable(container, cohorts, period) {
  const periods = Math.max(0, ...cohorts.map((c) => c.values.length));
  const head = h("tr", {}, h("th", { text: "Cohort" }), h("th", { text: "Users" }),
    Array.from({ length: periods }, (_, i) => h("th", { text: `${period[0].toUpperCase()}${i}` })));
  const rows = cohorts.map((c) => h("tr", { dataset: { cohort: c.start } },
    h("td", { class: "cohort", text: shortLabel(c.start) }),
    h("td", { class: "size", text: formatCount(c.size) }),
    Array.from({ length: periods }, (_, i) => {
      if (i >= c.values.length) return h("td", { class: "empty-cell" });
      const share = c.size ? c.values[i] / c.size : 0;
      return h("td", {
        class: "heat", dataset: { period: String(i), count: String(c.values[i]) },
        title: `${c.values[i]} of ${c.size}`,
        // CSSOM (allowed by the page's policy): the shade is the share retained
        style: { backgroundColor: `rgba(79, 70, 229, ${(0.08 + 0.82 * share).toFixed(3)})`, color: share > 0.55 ? "#fff" : "" },
        text: c.size ? `${Math.round(100 * share)}%` : "—",
      });
    })));
  container.replaceChildren(h("div", { class: "retention-wrap" },
    h("table", { class: "retention" }, h("thead", {}, head), h("tbody", {}, rows))));
}

/** Paths as columns of nodes (one per depth) and links as wide as the users they carry. */
export function pathsChart(container, edges, starts, { height = 280 } = {}) {
  const { root, width } = frame(container, height, "paths");
  const nodes = new Map(); // "depth:type" -> {depth, name, count}
  const add = (key, n) => {
    const [depth, ...rest] = key.split(":");
    const node = nodes.get(key) || { key, depth: Number(depth), name: rest.join(":"), count: 0 };
    node.count += n;
    nodes.set(key, node);
  };
  for (const e of edges) {
    if (!nodes.has(e.source)) add(e.source, 0);
    add(e.target, e.count);
  }
  for (const node of nodes.values()) if (node.depth === 0) node.count = Math.max(node.count, starts);
  const depths = Math.max(1, ...[...nodes.values()].map((n) => n.depth + 1));
  const pad = { left: 8, right: 110, top: 8, bottom: 8 };
  const colW = (width - pad.left - pad.right) / Math.max(1, depths - 1);
  const nodeW = 10;
  const gap = 8;
  const plotH = height - pad.top - pad.bottom;
  const columns = Array.from({ length: depths }, () => []);
  for (const n of nodes.values()) columns[n.depth].push(n);
  const scale = Math.min(...columns.filter((c) => c.length).map((c) =>
    (plotH - gap * (c.length - 1)) / Math.max(1, c.reduce((a, n) => a + n.count, 0))));
  columns.forEach((col, depth) => {
    col.sort((a, b) => b.count - a.count || a.name.localeCompare(b.name));
    let y = pad.top;
    for (const n of col) {
      n.x = pad.left + depth * colW - (depth === depths - 1 && depths > 1 ? nodeW : 0);
      n.y = y;
      n.h = Math.max(2, n.count * scale);
      n.out = n.y; // where the next outgoing and incoming links attach
      n.in = n.y;
      y += n.h + gap;
    }
  });
  const links = svg("g", { class: "links" }, root);
  for (const e of [...edges].sort((a, b) => b.count - a.count)) {
    const s = nodes.get(e.source);
    const t = nodes.get(e.target);
    const w = Math.max(1, e.count * scale);
    const x0 = s.x + nodeW;
    const x1 = t.x;
    const y0 = s.out + w / 2;
    const y1 = t.in + w / 2;
    s.out += w;
    t.in += w;
    const mx = (x0 + x1) / 2;
    const link = svg("path", {
      class: "path-link", d: `M${x0},${y0}C${mx},${y0} ${mx},${y1} ${x1},${y1}`, "stroke-width": w,
      dataset: { source: e.source, target: e.target, count: String(e.count) },
    }, links);
    svg("title", { text: `${s.name} → ${t.name}: ${e.count}` }, link);
  }
  for (const n of nodes.values()) {
    const g = svg("g", { class: "path-node", dataset: { node: n.key, count: String(n.count) } }, root);
    svg("rect", { x: n.x, y: n.y, width: nodeW, height: n.h, rx: 2, fill: PALETTE[n.depth % PALETTE.length] }, g);
    // to the right of its node: the last column's labels go in the right margin
    svg("text", {
      class: "node-label", x: n.x + nodeW + 4, y: n.y + Math.min(n.h / 2, 14) + 4,
      text: `${n.name} ${formatCount(n.count)}`,
    }, g);
  }
  return root;
}

/**
 * Bars per label, stacked: groups = [{name, values, color}]; negative values stack
 * downwards from zero (lifecycle's dormant users).
 */
export function barChart(container, labels, groups, { height = 220, label = "bars", format = shortLabel } = {}) {
  const { root, width } = frame(container, height, label);
  const pad = { left: 44, right: 12, top: 12, bottom: 26 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const ups = labels.map((_, i) => groups.reduce((a, g) => a + Math.max(0, g.values[i] || 0), 0));
  const downs = labels.map((_, i) => groups.reduce((a, g) => a + Math.min(0, g.values[i] || 0), 0));
  const hiRaw = Math.max(1, ...ups);
  const loRaw = Math.min(0, ...downs);
  const max = niceMax(hiRaw);
  const min = loRaw < 0 ? -niceMax(-loRaw) : 0;
  const y = yAxis(root, { ...pad, plotH, width, max, min });
  const slot = plotW / Math.max(1, labels.length);
  const barW = Math.max(2, Math.min(40, slot * 0.7));
  const x = (i) => pad.left + slot * i + slot / 2;
  xLabels(root, labels, x, height - 8, format);
  labels.forEach((lab, i) => {
    let up = 0;
    let down = 0;
    for (const g of groups) {
      const v = g.values[i] || 0;
      if (!v) continue;
      const from = v > 0 ? up : down;
      const to = from + v;
      if (v > 0) up = to; else down = to;
      const rect = svg("rect", {
        x: x(i) - barW / 2, y: Math.min(y(from), y(to)), width: barW, height: Math.abs(y(to) - y(from)),
        fill: g.color, class: "bar", dataset: { group: g.name, index: String(i) },
      }, root);
      svg("title", { text: `${format(lab)} · ${g.name}: ${v}` }, rect);
    }
  });
  return root;
}
