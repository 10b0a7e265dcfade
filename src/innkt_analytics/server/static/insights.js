// Insight panels: a saved query (POST /v1/insights/<kind> without its dates) over a
// range relative to now, drawn by kind; and the editor that builds such a query.
// A panel spec: {kind: "insight", title, width, insight: {kind, range, query}}.

import { formatCount } from "./charts.js";
import { h } from "./dom.js";
import { PALETTE, barChart, funnelChart, lineChart, pathsChart, retentionTable } from "./insight_charts.js";

export const INSIGHT_TYPES = {
  trends: "Trends",
  funnels: "Funnel",
  retention: "Retention",
  paths: "Paths",
  lifecycle: "Lifecycle",
  stickiness: "Stickiness",
};
/** range -> [unit, count]: the last `count` hours or days, the one under way included */
const RANGE_SPAN = { "24h": ["hour", 24], "7d": ["day", 7], "14d": ["day", 14], "30d": ["day", 30], "90d": ["day", 90] };
const RANGE_LABEL = { "24h": "last 24 hours", "7d": "last 7 days", "14d": "last 14 days", "30d": "last 30 days", "90d": "last 90 days" };
const MATHS = {
  total: "Events", unique_users: "Unique users", unique_sessions: "Unique sessions",
  sum: "Sum of", avg: "Average of", min: "Minimum of", max: "Maximum of", median: "Median of", p90: "90th percentile of",
};
const LIFECYCLE = [
  ["new", "New", "#10b981"], ["returning", "Returning", "#4f46e5"],
  ["resurrecting", "Resurrecting", "#f59e0b"], ["dormant", "Dormant", "#e5484d"],
];
const OTHER = "$other";

let api = null;

/** The page's API function (app.js): fetch with the key, JSON in and out, ApiError. */
export function useApi(fn) {
  api = fn;
}

// -- the query a panel sends ----------------------------------------------------------

function browserZone() {
  try { return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch { return "UTC"; }
}

/** Now on the wall clock of `zone`, as naive epoch ms (the hour, rounded down). */
function wallHour(zone, date) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en-US", {
    timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
  }).formatToParts(date).map((p) => [p.type, p.value]));
  return Date.UTC(Number(parts.year), Number(parts.month) - 1, Number(parts.day), Number(parts.hour) % 24);
}

const naive = (ms) => new Date(ms).toISOString().slice(0, 19);

/** dateFrom/dateTo of a spec shown now: whole hours (24h) or whole days of its zone. */
export function insightDates(spec, now = new Date()) {
  const zone = spec.query.timezone || "UTC";
  const [unit, count] = RANGE_SPAN[spec.range] || RANGE_SPAN["30d"];
  const wall = wallHour(zone, now);
  if (unit === "hour") {
    const end = wall + 3600e3;
    return { dateFrom: naive(end - count * 3600e3), dateTo: naive(end) };
  }
  const end = Math.floor(wall / 86400e3) * 86400e3 + 86400e3;
  return { dateFrom: naive(end - count * 86400e3).slice(0, 10), dateTo: naive(end).slice(0, 10) };
}

function eventName(spec) {
  return spec && spec.event ? spec.event : "any event";
}

/** A title for a panel without one: "Trends: view, buy". */
export function insightTitle(spec) {
  const q = spec.query || {};
  const what = {
    trends: () => (q.series || []).map(eventName).join(", "),
    funnels: () => (q.steps || []).map(eventName).join(" → "),
    retention: () => `${eventName(q.target)} → ${eventName(q.returning)}`,
    paths: () => `${q.direction === "previous" ? "before" : "after"} ${eventName(q.start)}`,
    lifecycle: () => eventName(q.event),
    stickiness: () => eventName(q.event),
  }[spec.kind];
  return `${INSIGHT_TYPES[spec.kind]}: ${what ? what() : ""}`;
}

// -- running and drawing ----------------------------------------------------------------

/** Run the panel's query and draw it; only the latest of overlapping runs draws. */
export async function loadInsight(panel) {
  const spec = panel.spec.insight;
  const seq = (panel.insightSeq = (panel.insightSeq || 0) + 1);
  const body = { ...spec.query, ...insightDates(spec) };
  let result;
  try {
    result = await api(`/v1/insights/${spec.kind}`, { method: "POST", body });
  } catch (err) {
    if (seq === panel.insightSeq) {
      panel.result = null;
      panel.body.replaceChildren(h("div", { class: "error insight-error", text: err.message }));
    }
    return;
  }
  if (seq !== panel.insightSeq) return;
  panel.result = result;
  drawInsight(panel);
}

/** Draw the panel from its last answer (panel.result). */
export function drawInsight(panel) {
  const spec = panel.spec.insight;
  panel.sub.textContent = RANGE_LABEL[spec.range] || "";
  if (!panel.result) {
    if (!panel.body.querySelector(".error")) panel.body.replaceChildren(h("div", { class: "empty", text: "Loading…" }));
    return;
  }
  const box = h("div", { class: "insight", dataset: { insight: spec.kind } });
  panel.body.replaceChildren(box);
  DRAW[spec.kind](box, spec.query, panel.result);
}

function legend(items) {
  return h("ul", { class: "legend" }, items.map((item) =>
    h("li", { class: "legend-item", dataset: item.dataset },
      h("span", { class: "swatch", style: { backgroundColor: item.color } }),
      h("span", { class: "legend-name", text: item.name }),
      h("span", { class: "legend-total", title: item.hint || "", text: item.total }))));
}

function seriesName(query, s) {
  const series = query.series[s.index] || {};
  let name = eventName(series);
  if (series.math && series.math !== "total") {
    name = `${MATHS[series.math] || series.math}${series.mathProperty ? " " + series.mathProperty : ""} · ${name}`;
  }
  if (query.breakdown) {
    const value = s.breakdownValue === OTHER ? "Other" : s.breakdownValue === null ? "(not set)" : s.breakdownValue;
    name += ` · ${value}`;
  }
  return name;
}

function number(v) {
  if (v === null || v === undefined) return "—";
  return Number.isInteger(v) ? formatCount(v) : v.toFixed(Math.abs(v) < 10 ? 2 : 1);
}

function seconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

const DRAW = {
  trends(box, query, r) {
    const series = r.series.map((s, i) => ({
      name: seriesName(query, s), values: s.values, color: PALETTE[i % PALETTE.length], s,
    }));
    const chart = h("div", { class: "chart-box" });
    box.append(chart, legend(series.map((s, i) => {
      const math = (query.series[s.s.index] || {}).math || "total";
      // a total adds up over buckets; unique users of each day do not (nor do averages)
      const summed = math === "total" || math === "sum";
      const values = s.values.filter((v) => v !== null);
      const total = summed ? values.reduce((a, v) => a + v, 0) : values.length ? Math.max(...values) : null;
      return {
        name: s.name, color: s.color, total: (summed ? "" : "max ") + number(total),
        hint: summed ? "sum over the range" : "the largest value of one bucket",
        dataset: { series: String(i), index: String(s.s.index), breakdown: s.s.breakdownValue ?? "" },
      };
    })));
    lineChart(chart, r.buckets, series);
  },

  funnels(box, query, r) {
    const steps = r.steps.map((s, i) => ({ ...s, name: eventName(query.steps[i]) }));
    const chart = h("div", { class: "chart-box" });
    const table = h("table", { class: "insight-table funnel-table" },
      h("thead", {}, h("tr", {}, ["Step", "Users", "Conversion", "Dropped", "Median time", "p90 time"].map((t) => h("th", { text: t })))),
      h("tbody", {}, steps.map((s, i) => h("tr", { dataset: { step: String(i + 1) } },
        h("td", { text: `${i + 1}. ${s.name}` }),
        h("td", { class: "count", text: formatCount(s.count) }),
        h("td", { class: "rate", text: `${(100 * s.conversionRate).toFixed(1)}%` }),
        h("td", { class: "dropped", text: i ? formatCount(s.droppedOff) : "—" }),
        h("td", { class: "median", text: i ? seconds(s.medianSeconds) : "—" }),
        h("td", { text: i ? seconds(s.p90Seconds) : "—" })))));
    box.append(chart, table);
    if (r.breakdown && r.breakdown.length) {
      box.append(h("table", { class: "insight-table" },
        h("thead", {}, h("tr", {}, [query.breakdown.property, "Entered", "Converted", "Conversion"].map((t) => h("th", { text: t })))),
        h("tbody", {}, r.breakdown.map((b) => {
          const last = b.steps[b.steps.length - 1];
          return h("tr", { dataset: { breakdown: b.breakdownValue ?? "" } },
            h("td", { text: b.breakdownValue === OTHER ? "Other" : b.breakdownValue ?? "(not set)" }),
            h("td", { text: formatCount(b.steps[0].count) }),
            h("td", { text: formatCount(last.count) }),
            h("td", { text: `${(100 * last.conversionRate).toFixed(1)}%` }));
        }))));
    }
    funnelChart(chart, steps);
  },

  retention(box, query, r) {
    if (!r.cohorts.length) {
      box.append(h("div", { class: "empty", text: "No cohort in this range" }));
      return;
    }
    retentionTable(box, r.cohorts, query.period || "day");
  },

  paths(box, query, r) {
    box.append(h("div", { class: "insight-note muted", text: `${formatCount(r.starts)} users started with ${eventName(query.start)}` }));
    if (!r.edges.length) {
      box.append(h("div", { class: "empty", text: "No path in this range" }));
      return;
    }
    const chart = h("div", { class: "chart-box" });
    box.append(chart);
    pathsChart(chart, r.edges, r.starts);
  },

  lifecycle(box, query, r) {
    const groups = LIFECYCLE.map(([key, name, color]) => ({ key, name, color, values: r[key] }));
    const chart = h("div", { class: "chart-box" });
    box.append(chart, legend(groups.map((g) => ({
      name: g.name, color: g.color, total: formatCount(g.values.reduce((a, v) => a + v, 0)),
      hint: "sum over the range", dataset: { status: g.key },
    }))));
    barChart(chart, r.buckets, groups, { label: "lifecycle" });
  },

  stickiness(box, query, r) {
    const unit = query.interval || "day";
    const labels = r.actors.map((_, i) => `${i + 1} ${unit}${i ? "s" : ""}`);
    const chart = h("div", { class: "chart-box" });
    const total = r.actors.reduce((a, v) => a + v, 0);
    box.append(h("div", { class: "insight-note muted", dataset: { total: String(total) }, text: `${formatCount(total)} users, by the number of ${unit}s they were active in` }), chart);
    barChart(chart, labels, [{ name: "users", color: PALETTE[1], values: r.actors }], { label: "stickiness", format: (l) => l });
  },
};

// -- the editor ---------------------------------------------------------------------------

const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

function input(name, label, value = "", extra = {}) {
  return h("label", {}, label, h("input", { name, value: value ?? "", "aria-label": label, ...extra }));
}

function choice(name, label, options, value) {
  return h("label", {}, label, h("select", { name, "aria-label": label },
    Object.entries(options).map(([v, text]) => h("option", { value: v, text, selected: String(value) === v }))));
}

const INTERVALS = { hour: "hour", day: "day", week: "week", month: "month" };

/** The fields of one insight type, filled from a query. */
function fieldsFor(kind, q) {
  const one = (spec) => (spec && spec.event) || "";
  switch (kind) {
    case "trends": {
      const first = (q.series || [])[0] || {};
      return [
        input("events", "Event types (comma-separated; empty: any)", (q.series || []).map((s) => s.event || "").filter(Boolean).join(", "), { placeholder: "pageview, signup" }),
        choice("math", "Measure", MATHS, first.math || "total"),
        input("mathProperty", "Numeric property (for sum, average…)", first.mathProperty || ""),
        choice("interval", "Interval", INTERVALS, q.interval || "day"),
        input("breakdown", "Breakdown by property", (q.breakdown && q.breakdown.property) || "", { placeholder: "plan" }),
      ];
    }
    case "funnels": {
      const w = q.windowSeconds || 14 * 86400;
      const days = w % 86400 === 0;
      return [
        input("steps", "Steps (2–10, comma-separated)", (q.steps || []).map(one).join(", "), { placeholder: "view, signup, buy" }),
        input("window", "Conversion window", String(days ? w / 86400 : w / 3600), { type: "number", min: "1" }),
        choice("windowUnit", "Unit", { day: "days", hour: "hours" }, days ? "day" : "hour"),
        choice("countBy", "Count by", { user: "user", session: "session" }, q.countBy || "user"),
        input("breakdown", "Breakdown by property", (q.breakdown && q.breakdown.property) || ""),
      ];
    }
    case "retention":
      return [
        input("target", "First event (empty: any)", one(q.target)),
        input("returning", "Returning event (empty: any)", one(q.returning)),
        choice("period", "Period", { day: "day", week: "week", month: "month" }, q.period || "day"),
        input("periods", "Periods", String(q.periods || 8), { type: "number", min: "1", max: "60" }),
      ];
    case "paths":
      return [
        input("start", "Start event", one(q.start)),
        choice("direction", "Direction", { next: "what happens next", previous: "what happened before" }, q.direction || "next"),
        input("depth", "Steps", String(q.steps || 3), { type: "number", min: "1", max: "5" }),
      ];
    default: // lifecycle, stickiness
      return [
        input("event", "Event type (empty: any)", one(q.event)),
        choice("interval", "Interval", INTERVALS, q.interval || "day"),
      ];
  }
}

/** The query the editor's fields describe (validated by the server when run or saved). */
function queryFrom(kind, form, zone) {
  const v = (name) => {
    const el = form.querySelector(`[name="${name}"]`);
    return el ? el.value.trim() : "";
  };
  const spec = (name) => ({ event: v(name) || null });
  const breakdown = v("breakdown") ? { breakdown: { property: v("breakdown") } } : {};
  const base = { timezone: zone };
  switch (kind) {
    case "trends": {
      const math = v("math") || "total";
      const extra = math in { total: 1, unique_users: 1, unique_sessions: 1 } ? { math } : { math, mathProperty: v("mathProperty") || null };
      const events = list(v("events"));
      return { ...base, interval: v("interval"), series: (events.length ? events : [null]).map((event) => ({ event, ...extra })), ...breakdown };
    }
    case "funnels":
      return {
        ...base, steps: list(v("steps")).map((event) => ({ event })),
        windowSeconds: Math.round(Number(v("window")) * (v("windowUnit") === "hour" ? 3600 : 86400)),
        countBy: v("countBy"), ...breakdown,
      };
    case "retention":
      return { ...base, target: spec("target"), returning: spec("returning"), period: v("period"), periods: Number(v("periods")) };
    case "paths":
      return { ...base, start: spec("start"), direction: v("direction"), steps: Number(v("depth")) };
    default:
      return { ...base, event: spec("event"), interval: v("interval") };
  }
}

/**
 * Open the editor in `root` for `panelSpec` (null: a new insight panel).
 * onApply(panelSpec) is called with the finished spec; onClose when it closes.
 */
export function openInsightEditor(root, panelSpec, { onApply, onClose }) {
  const old = panelSpec && panelSpec.insight;
  const state = {
    kind: old ? old.kind : "trends",
    range: old ? old.range : "7d",
    zone: (old && old.query.timezone) || browserZone(),
  };
  const typeSelect = choice("type", "Insight", INSIGHT_TYPES, state.kind);
  const rangeSelect = choice("range", "Range", RANGE_LABEL, state.range);
  const title = input("title", "Panel title (optional)", (panelSpec && panelSpec.title) || "", { maxlength: "100" });
  const fields = h("div", { class: "editor-row insight-fields" });
  const status = h("span", { id: "insight-status", class: "muted", role: "status" });
  const preview = h("div", { id: "insight-preview", class: "insight-preview" });
  const form = h("form", { class: "insight-form", onsubmit: (e) => e.preventDefault() },
    h("div", { class: "editor-row" }, typeSelect, rangeSelect, title), fields);
  let fresh = true;
  const drawFields = () => {
    fields.replaceChildren(...fieldsFor(state.kind, fresh && old ? old.query : {}));
  };
  typeSelect.querySelector("select").addEventListener("change", (e) => {
    state.kind = e.target.value;
    fresh = false;
    drawFields();
  });
  const current = () => ({
    kind: state.kind,
    range: rangeSelect.querySelector("select").value,
    query: queryFrom(state.kind, fields, state.zone),
  });
  const run = async () => {
    const spec = current();
    status.textContent = "Running…";
    const panel = { spec: { kind: "insight", insight: spec }, body: preview, sub: h("span") };
    await loadInsight(panel);
    status.textContent = panel.result ? `${insightTitle(spec)} · ${RANGE_LABEL[spec.range]} · ${spec.query.timezone}` : "The query was refused: see the message below.";
    return panel.result ? spec : null;
  };
  const apply = async () => {
    const spec = await run();
    if (!spec) return;
    const out = { kind: "insight", width: (panelSpec && panelSpec.width) || (spec.kind === "trends" || spec.kind === "paths" || spec.kind === "funnels" ? 2 : 1), insight: spec };
    const t = title.querySelector("input").value.trim();
    if (t) out.title = t;
    root.hidden = true;
    onApply(out);
    onClose();
  };
  root.replaceChildren(
    h("h2", { class: "editor-title", text: old ? "Edit insight" : "Add an insight" }),
    form,
    h("div", { class: "editor-row editor-actions" }, status,
      h("button", { id: "insight-cancel", type: "button", class: "ghost", text: "Cancel", onclick: () => { root.hidden = true; onClose(); } }),
      h("button", { id: "insight-run", type: "button", text: "Run", onclick: () => { run(); } }),
      h("button", { id: "insight-apply", type: "button", class: "primary", text: old ? "Update panel" : "Add to dashboard", onclick: () => { apply(); } })),
    preview);
  drawFields();
  root.hidden = false;
  root.scrollIntoView({ block: "nearest" });
}
