// The innkt-analytics dashboard. Plain ES modules, no build step, nothing fetched from
// elsewhere. The read key lives in sessionStorage and goes to this server only: in the
// Authorization header for the REST API and as the `bearer.<key>` WebSocket subprotocol.
// All user data is rendered with textContent, never parsed as HTML.

import { formatCount, sparkline, timeSeries } from "./charts.js";
import { h } from "./dom.js";
import { drawInsight, insightTitle, loadInsight, openInsightEditor, useApi } from "./insights.js";

const KEY_STORE = "innkt.readKey";
const DASH_STORE = "innkt.dashboard";
const LIVE_MINUTES = 30;
const STREAM_ROWS = 60;

const PANELS = {
  events_per_minute: { title: "Events per minute", width: 2 },
  active_sessions: { title: "Active sessions", width: 1 },
  ingest_health: { title: "Ingest & health", width: 1 },
  top_event_types: { title: "Top event types", width: 1 },
  alerts: { title: "Alerts", width: 1 },
  event_stream: { title: "Live event stream", width: 2 },
  stats_range: { title: "Time range", width: 2 },
};
// Insight panels are added from the insight editor; the built-in Overview has none.
const ALL_PANELS = { ...PANELS, insight: { title: "Insight", width: 1 } };
const DEFAULT_LAYOUT = () => ({
  name: "",
  title: "Overview",
  version: 0,
  panels: Object.entries(PANELS).map(([kind, p]) => ({ kind, width: p.width })),
});
const RANGES = { "15m": 15, "1h": 60, "6h": 360, "24h": 1440, "7d": 10080, "30d": 43200 };
const BUCKET_MS = { minute: 60e3, hour: 3600e3, day: 86400e3 };

// -- small helpers ------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function timeOf(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "—" : d.toLocaleTimeString([], { hourCycle: "h23" });
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

function bytes(n) {
  if (!(n >= 0)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function preview(event) {
  const props = event.properties || {};
  const text = JSON.stringify(props);
  return text === "{}" ? "" : text.length > 120 ? text.slice(0, 117) + "…" : text;
}

function uuid() {
  return crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
}

// -- the API ------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

const session = {
  key: sessionStorage.getItem(KEY_STORE),
};

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: { Authorization: `Bearer ${session.key}`, ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    if (response.status === 401) signOut("Your key was not accepted (revoked or wrong). Sign in again.");
    throw new ApiError(response.status, data);
  }
  return data;
}

function iso(ms) {
  return new Date(ms).toISOString();
}

// -- live state, fed by the API at start and by the WebSocket afterwards -------------

const live = {
  minutes: new Map(), // minute start (ms) -> events counted in it
  update: null, // the last analytics_update payload
  sessions: [], // recent activeSessions values for the sparkline
  top: [], // [{eventType, count}]
  topWindow: null,
  events: [], // newest first
  fresh: new Set(),
  alerts: [], // newest first
  firing: new Map(), // ruleId -> payload
  health: null,
  conn: { state: "connecting", messages: 0, lastAt: null, dropped: 0, reconnects: 0, error: "" },
  streamPaused: false,
};

function countMinute(ms, n = 1) {
  const minute = Math.floor(ms / 60e3) * 60e3;
  live.minutes.set(minute, (live.minutes.get(minute) || 0) + n);
}

function trimMinutes() {
  const oldest = Math.floor(Date.now() / 60e3) * 60e3 - (LIVE_MINUTES - 1) * 60e3;
  for (const m of live.minutes.keys()) if (m < oldest) live.minutes.delete(m);
}

async function loadMinutes() {
  const now = Date.now();
  const since = Math.floor(now / 60e3) * 60e3 - (LIVE_MINUTES - 1) * 60e3;
  const stats = await api(`/v1/stats?since=${encodeURIComponent(iso(since))}&bucket=minute`);
  live.minutes.clear();
  for (const p of stats.series) live.minutes.set(new Date(p.t).getTime(), p.count);
  if (!live.update) {
    live.top = Object.entries(stats.byEventType).map(([eventType, count]) => ({ eventType, count }));
    live.topWindow = `last ${LIVE_MINUTES} min`;
  }
  refresh("events_per_minute", "top_event_types");
}

async function loadRecentEvents() {
  const since = iso(Date.now() - 10 * 60e3);
  let page = await api(`/v1/events?since=${encodeURIComponent(since)}&limit=1000`);
  let rows = page.events;
  for (let i = 0; i < 4 && page.nextCursor; i++) {
    page = await api(`/v1/events?since=${encodeURIComponent(since)}&limit=1000&cursor=${encodeURIComponent(page.nextCursor)}`);
    rows = rows.concat(page.events).slice(-STREAM_ROWS);
  }
  const known = new Set(live.events.map((e) => e.eventId));
  const older = rows.filter((e) => !known.has(e.eventId)).reverse();
  live.events = live.events.concat(older).slice(0, STREAM_ROWS);
  refresh("event_stream");
}

async function loadHealth() {
  try {
    live.health = await api("/v1/health");
    $("footer-version").textContent = live.health.version ? `innkt-analytics ${live.health.version}` : "";
  } catch (err) {
    live.health = { status: "unreachable", error: err.message };
  }
  refresh("ingest_health");
}

// The time-range panels and the health figures (stored events, ingest rate) come from the
// REST API, so an event arriving on the WebSocket means they are out of date: re-read them
// then. One request in flight per kind and a second's pause after it, so a burst of events
// costs a request a second, not one per event, and a slow query never piles up.
function coalesced(load, gap = 1000) {
  let busy = false;
  let again = false;
  const run = async () => {
    busy = true;
    again = false;
    try { if (session.key) await load(); } catch { /* each loader shows its own failure */ }
    setTimeout(() => { busy = false; if (again) run(); }, gap);
  };
  return () => { if (busy) again = true; else run(); };
}

function loadRanges() {
  return Promise.all(panels.filter((p) => p.spec.kind === "stats_range").map((p) => loadRange(p)));
}

function loadInsights() {
  return Promise.all(panels.filter((p) => p.spec.kind === "insight").map((p) => loadInsight(p)));
}

// Insight queries cost more than the stats API: at most one round every 5 s.
const reload = { health: coalesced(loadHealth), ranges: coalesced(loadRanges), insights: coalesced(loadInsights, 5000) };

function eventsChanged() {
  reload.health();
  reload.ranges();
  reload.insights();
}

async function loadAlerts() {
  const data = await api("/v1/alerts");
  live.alerts = data.recent.slice(0, 20);
  live.firing = new Map(data.firing.map((a) => [a.ruleId, a]));
  refresh("alerts");
}

// -- the WebSocket --------------------------------------------------------------------

let socket = null;
let reconnectTimer = null;
let attempt = 0;

function setConn(state, label, error = "") {
  live.conn.state = state;
  live.conn.error = error;
  const el = $("conn");
  el.dataset.state = state;
  el.title = error;
  $("conn-label").textContent = label;
  refresh("ingest_health");
}

function send(type, payload) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type, id: uuid(), timestamp: new Date().toISOString(), payload }));
  }
}

function connect() {
  clearTimeout(reconnectTimer);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let ws;
  try {
    // The key travels as a subprotocol: browsers cannot set headers on a WebSocket.
    ws = new WebSocket(`${scheme}//${location.host}/v1/realtime`, ["innkt.v1", `bearer.${session.key}`]);
  } catch (err) {
    scheduleReconnect(String(err));
    return;
  }
  socket = ws;
  ws.onopen = () => {
    attempt = 0;
    setConn("live", "Live");
    send("subscribe", { streams: ["analytics_update", "event"], eventTypes: null });
    // Catch up on what happened while disconnected.
    loadMinutes().catch(() => {});
    loadRecentEvents().catch(() => {});
    eventsChanged();
  };
  ws.onmessage = (message) => {
    let envelope;
    try { envelope = JSON.parse(message.data); } catch { return; }
    live.conn.messages += 1;
    live.conn.lastAt = Date.now();
    handle(envelope);
  };
  ws.onclose = (event) => {
    if (socket !== ws) return;
    socket = null;
    if (!session.key) return;
    scheduleReconnect(event.reason || `closed (${event.code})`);
  };
}

function scheduleReconnect(reason) {
  attempt += 1;
  live.conn.reconnects += 1;
  // Exponential backoff with full jitter, 0.5 s doubling up to 30 s.
  const delay = Math.random() * Math.min(30e3, 500 * 2 ** Math.min(attempt - 1, 8));
  setConn(attempt > 5 ? "offline" : "reconnecting", attempt > 5 ? "Offline — retrying" : "Reconnecting…", reason);
  reconnectTimer = setTimeout(connect, delay);
}

function handle(envelope) {
  const payload = envelope.payload || {};
  switch (envelope.type) {
    case "analytics_update":
      live.update = payload;
      live.top = payload.topEventTypes || [];
      live.topWindow = payload.windowSeconds ? `last ${Math.round(payload.windowSeconds / 60)} min` : "live";
      live.sessions.push(payload.activeSessions || 0);
      if (live.sessions.length > 120) live.sessions.shift();
      refresh("active_sessions", "top_event_types", "ingest_health", "events_per_minute");
      break;
    case "event": {
      const events = Array.isArray(payload.events) ? payload.events : [payload];
      const received = new Date(envelope.timestamp || Date.now()).getTime();
      for (const event of events) {
        event.receivedAt = envelope.timestamp;
        countMinute(received);
        if (!live.streamPaused) {
          live.events.unshift(event);
          live.fresh.add(event.eventId);
        }
      }
      live.events.length = Math.min(live.events.length, STREAM_ROWS);
      trimMinutes();
      refresh("event_stream", "events_per_minute");
      eventsChanged();
      break;
    }
    case "alert":
      live.alerts.unshift(payload);
      live.alerts.length = Math.min(live.alerts.length, 20);
      if (payload.status === "firing") live.firing.set(payload.ruleId, payload);
      else live.firing.delete(payload.ruleId);
      refresh("alerts");
      break;
    case "dropped":
      live.conn.dropped += payload.dropped || 0;
      refresh("ingest_health");
      eventsChanged(); // the skipped messages may have been events
      break;
    case "ping":
      send("pong", {});
      break;
    case "error":
      live.conn.error = payload.message || payload.code || "error";
      refresh("ingest_health");
      break;
    default:
      break;
  }
}

// -- panels -----------------------------------------------------------------------------

const renderers = {
  events_per_minute(panel) {
    trimMinutes();
    const now = Math.floor(Date.now() / 60e3) * 60e3;
    const points = [];
    for (let m = now - (LIVE_MINUTES - 1) * 60e3; m <= now; m += 60e3) {
      points.push({ t: m, v: live.minutes.get(m) || 0 });
    }
    // The hub counts by arrival time; the chart (stats API) by when events happened.
    const lastMinute = live.update ? live.update.eventsPerMinute : points[points.length - 1].v;
    const last5 = live.update ? live.update.eventsLast5Minutes : points.slice(-5).reduce((a, p) => a + p.v, 0);
    panel.sub.textContent = `by event time, last ${LIVE_MINUTES} minutes`;
    panel.body.replaceChildren(
      h("div", { class: "kpi-row" },
        kpi(formatCount(lastMinute), "received in the last minute", "epm-value"),
        kpi(formatCount(last5), "received in the last 5 minutes"),
        kpi(formatCount(Math.max(...points.map((p) => p.v))), "busiest minute")),
      h("div", { class: "chart-box" }));
    timeSeries(panel.body.lastChild, points, { kind: "line", height: 190, label: "events", partialLast: true });
  },

  active_sessions(panel) {
    const update = live.update;
    const value = update ? update.activeSessions : null;
    const perSession = update && update.activeSessions ? update.eventsLast5Minutes / update.activeSessions : null;
    const spark = h("div", { class: "spark-box" });
    panel.sub.textContent = "sessions with events in the last 5 minutes";
    panel.body.replaceChildren(
      h("div", { class: "kpi-row" },
        kpi(value === null ? "—" : formatCount(value), "active now", "sessions-value"),
        kpi(perSession === null ? "—" : perSession.toFixed(1), "events per session")),
      spark);
    sparkline(spark, live.sessions, { width: Math.max(160, panel.body.clientWidth || 300), height: 90 });
  },

  top_event_types(panel) {
    panel.sub.textContent = live.topWindow || "";
    const items = live.top.slice(0, 8);
    if (!items.length) {
      panel.body.replaceChildren(h("div", { class: "empty", text: "No events yet" }));
      return;
    }
    const max = Math.max(...items.map((i) => i.count));
    panel.body.replaceChildren(h("div", { class: "bars" }, items.map((item) =>
      h("div", { class: "bar-row", dataset: { eventType: item.eventType } },
        h("span", { class: "name", title: item.eventType, text: item.eventType }),
        h("div", { class: "bar-track" }, h("div", { class: "bar-fill", style: { width: `${(100 * item.count) / max}%` } })),
        h("span", { class: "count", text: formatCount(item.count) })))));
  },

  event_stream(panel) {
    const filter = (panel.spec.options && panel.spec.options.eventType) || "";
    const rows = live.events.filter((e) => !filter || e.eventType === filter);
    const pause = h("button", {
      class: "small ghost", type: "button", text: live.streamPaused ? "Resume" : "Pause",
      onclick: () => { live.streamPaused = !live.streamPaused; refresh("event_stream"); },
    });
    panel.tools.replaceChildren(pause);
    panel.sub.textContent = filter ? `only ${filter}` : `latest ${STREAM_ROWS}`;
    if (!rows.length) {
      panel.body.replaceChildren(h("div", { class: "empty", text: "Waiting for events…" }));
      return;
    }
    const tbody = h("tbody");
    for (const e of rows) {
      const row = h("tr", { class: "event-row" + (live.fresh.has(e.eventId) ? " fresh" : ""), dataset: { eventId: e.eventId } },
        h("td", { text: timeOf(e.receivedAt || e.timestamp) }),
        h("td", {}, h("span", { class: "badge", title: e.eventType, text: e.eventType })),
        h("td", { text: e.userId || e.anonymousId || "—" }),
        h("td", { text: e.sessionId || "—" }),
        h("td", { class: "props", title: preview(e), text: preview(e) }));
      row.addEventListener("click", () => {
        const next = row.nextSibling;
        if (next && next.classList.contains("detail")) { next.remove(); return; }
        row.after(h("tr", { class: "detail" }, h("td", { colspan: "5" }, h("pre", { text: JSON.stringify(e, null, 2) }))));
      });
      tbody.append(row);
    }
    live.fresh.clear();
    panel.body.replaceChildren(h("div", { class: "stream-wrap" },
      h("table", {}, h("thead", {}, h("tr", {}, ["Received", "Event type", "User", "Session", "Properties"].map((t) => h("th", { text: t })))), tbody)));
  },

  ingest_health(panel) {
    const health = live.health || {};
    const update = live.update || {};
    const lag = update.ingestLagMs || {};
    const storage = health.storage || {};
    const ok = health.status === "ok";
    const statusClass = ok ? "ok" : health.status ? "bad" : "";
    const fact = (label, value, attrs = {}) => h("div", {}, h("dt", { text: label }), h("dd", { ...attrs, text: value }));
    const sec = (ms) => (ms === null || ms === undefined ? "—" : duration(ms / 1000));
    panel.body.replaceChildren(h("dl", { class: "facts" },
      h("div", {}, h("dt", { text: "Server" }),
        h("dd", {}, h("span", { class: `status ${statusClass}`, id: "health-status", text: health.status || "…" }))),
      fact("Real-time", live.conn.state === "live" ? "connected" : live.conn.state),
      fact("Ingest lag p50", sec(lag.p50), { id: "lag-p50" }),
      fact("Ingest lag p95", sec(lag.p95)),
      fact("Ingest rate", health.ingestRatePerSecond !== undefined ? `${health.ingestRatePerSecond.toFixed(2)} /s` : "—"),
      fact("Stored events", storage.events !== undefined ? formatCount(storage.events) : "—"),
      fact("Storage", storage.backend ? `${storage.backend}, ${bytes(storage.sizeBytes)}` : "—"),
      fact("Uptime", health.uptimeSeconds !== undefined ? duration(health.uptimeSeconds) : "—"),
      fact("Messages received", formatCount(live.conn.messages)),
      fact("Skipped (slow link)", formatCount(live.conn.dropped))));
  },

  stats_range(panel) {
    const o = panel.spec.options || (panel.spec.options = {});
    const range = o.range || "24h";
    const bucket = o.bucket || (RANGES[range] <= 360 ? "minute" : RANGES[range] <= 10080 ? "hour" : "day");
    const select = (values, current, onchange, label) =>
      h("select", { "aria-label": label, onchange }, values.map((v) => h("option", { value: v, selected: v === current, text: v })));
    const typeInput = h("input", { type: "text", placeholder: "all event types", value: o.eventType || "", "aria-label": "Event type" });
    typeInput.addEventListener("change", () => { o.eventType = typeInput.value.trim() || null; markDirty(); loadRange(panel); });
    panel.tools.replaceChildren(
      select(Object.keys(RANGES), range, (e) => { o.range = e.target.value; delete o.bucket; markDirty(); refreshPanel(panel); loadRange(panel); }, "Range"),
      select(Object.keys(BUCKET_MS), bucket, (e) => { o.bucket = e.target.value; markDirty(); loadRange(panel); }, "Bucket"),
      typeInput);
    panel.body.replaceChildren(h("div", { class: "empty", text: "Loading…" }));
    if (!panel.loaded) loadRange(panel);
    else drawRange(panel);
  },

  insight(panel) {
    panel.tools.replaceChildren(h("button", {
      class: "small ghost edit-insight", type: "button", text: "Edit",
      onclick: () => editInsight(panel.spec),
    }));
    drawInsight(panel);
    if (!panel.loaded) {
      panel.loaded = true;
      loadInsight(panel);
    }
  },

  alerts(panel) {
    panel.sub.textContent = live.firing.size ? `${live.firing.size} firing` : "all clear";
    if (!live.alerts.length) {
      panel.body.replaceChildren(h("div", { class: "empty", text: "No alerts. Rules are managed with an admin key (POST /v1/alerts/rules)." }));
      return;
    }
    panel.body.replaceChildren(h("ul", { class: "alert-list" }, live.alerts.map((a) =>
      h("li", { class: a.status, dataset: { ruleId: a.ruleId } },
        h("div", {}, h("strong", { text: a.name }), " ", h("span", { class: "muted", text: a.status })),
        h("div", { class: "meta", text: `${a.kind}${a.eventType ? " · " + a.eventType : ""} · value ${a.value} vs ${a.threshold} · ${timeOf(a.at)}` })))));
  },
};

function kpi(value, label, id) {
  return h("div", { class: "kpi" }, h("div", { class: "value", id, text: value }), h("div", { class: "label", text: label }));
}

async function loadRange(panel) {
  const o = panel.spec.options || {};
  const range = o.range || "24h";
  const minutes = RANGES[range] || 1440;
  const bucket = o.bucket || (minutes <= 360 ? "minute" : minutes <= 10080 ? "hour" : "day");
  const step = BUCKET_MS[bucket];
  const until = Math.ceil(Date.now() / step) * step;
  const since = until - Math.ceil((minutes * 60e3) / step) * step;
  const params = new URLSearchParams({ since: iso(since), until: iso(until), bucket });
  if (o.eventType) params.set("eventType", o.eventType);
  // Live reloads and control changes overlap: only the latest request may draw.
  const seq = (panel.rangeSeq = (panel.rangeSeq || 0) + 1);
  let stats;
  try {
    stats = await api(`/v1/stats?${params}`);
  } catch (err) {
    if (seq === panel.rangeSeq) panel.body.replaceChildren(h("div", { class: "error", text: err.message }));
    return;
  }
  if (seq !== panel.rangeSeq) return;
  panel.range = { stats, since, until, step };
  panel.loaded = true;
  drawRange(panel);
}

function drawRange(panel) {
  const { stats, since, until, step } = panel.range;
  const counts = new Map(stats.series.map((p) => [new Date(p.t).getTime(), p.count]));
  const points = [];
  for (let t = since; t < until; t += step) points.push({ t, v: counts.get(t) || 0 });
  const chart = h("div");
  const types = Object.entries(stats.byEventType).slice(0, 8);
  const children = [
    h("div", { class: "range-summary" },
      kpi(formatCount(stats.total), "events", "range-total"),
      kpi(formatCount(stats.uniqueSessions), "unique sessions"),
      kpi(formatCount(stats.uniqueUsers), "unique users")),
    chart,
  ];
  // Appended only when there is one: replaceChildren would render a null as the text "null".
  if (types.length) {
    children.push(h("table", { class: "type-table" },
      h("thead", {}, h("tr", {}, h("th", { text: "Event type" }), h("th", { text: "Events" }), h("th", { text: "Share" }))),
      h("tbody", {}, types.map(([t, n]) => h("tr", {}, h("td", {}, h("span", { class: "badge", text: t })),
        h("td", { text: formatCount(n) }), h("td", { text: `${((100 * n) / Math.max(1, stats.total)).toFixed(1)}%` }))))));
  }
  panel.body.replaceChildren(...children);
  timeSeries(chart, points, { kind: "bar", height: 180, step, label: "events" });
}

// -- the grid ---------------------------------------------------------------------------

let dashboards = [];
let current = DEFAULT_LAYOUT();
let panels = [];
let dirty = false;
const pending = new Set();
let frame = 0;

function refresh(...kinds) {
  for (const k of kinds) pending.add(k);
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
  frame = 0;
  for (const panel of panels) {
    // (the REST-fed panels reload themselves)
    if (pending.has(panel.spec.kind) && !["stats_range", "insight"].includes(panel.spec.kind)) refreshPanel(panel);
  }
  pending.clear();
}

function refreshPanel(panel) {
  renderers[panel.spec.kind](panel);
}

function buildGrid() {
  const grid = $("grid");
  grid.replaceChildren();
  panels = current.panels.filter((spec) => renderers[spec.kind]).map((spec) => {
    const info = ALL_PANELS[spec.kind];
    const sub = h("span", { class: "sub" });
    const tools = h("div", { class: "stream-tools range-controls" });
    const body = h("div", { class: "panel-body" });
    const el = h("section", { class: "panel" + ((spec.width || info.width) === 2 ? " wide" : ""), dataset: { panel: spec.kind } },
      h("div", { class: "panel-head" }, h("div", {}, h("h2", { text: panelTitle(spec) }), " ", sub), tools),
      body);
    grid.append(el);
    return { spec, el, body, sub, tools, loaded: false };
  });
  for (const panel of panels) refreshPanel(panel);
}

function panelTitle(spec) {
  if (spec.title) return spec.title;
  return spec.kind === "insight" && spec.insight ? insightTitle(spec.insight) : ALL_PANELS[spec.kind].title;
}

/** Open the insight editor for a panel of the current dashboard (null: a new one). */
function editInsight(spec) {
  openInsightEditor($("insight-editor"), spec, {
    onApply(out) {
      if (spec) Object.assign(spec, out);
      else current.panels.push(out);
      // the dashboard editor holds Save: show it with the change
      if ($("editor").hidden) openEditor(false);
      else drawEditorList();
      markDirty();
      buildGrid();
    },
    onClose() {},
  });
}

function markDirty() {
  dirty = true;
  $("edit-status").textContent = "Unsaved changes";
}

// -- dashboards: choose, customize, save --------------------------------------------

function fillSelect() {
  const select = $("dashboard-select");
  const options = dashboards.map((d) => h("option", { value: d.name, text: d.title }));
  if (!current.name) options.unshift(h("option", { value: "", text: `${current.title} (default)` }));
  options.push(h("option", { value: "__new__", text: "＋ New dashboard" }));
  select.replaceChildren(...options);
  select.value = current.name;
}

async function loadDashboards() {
  const data = await api("/v1/dashboards");
  dashboards = data.dashboards;
  const wanted = sessionStorage.getItem(DASH_STORE);
  const chosen = dashboards.find((d) => d.name === wanted) || dashboards[0];
  current = chosen ? structuredClone(chosen) : DEFAULT_LAYOUT();
  fillSelect();
  buildGrid();
}

function openEditor(isNew = false) {
  if (isNew) current = { ...DEFAULT_LAYOUT(), title: "New dashboard" };
  $("editor").hidden = false;
  $("edit-title").value = current.title;
  $("edit-name").value = current.name || (isNew ? "" : "overview");
  $("edit-name").disabled = Boolean(current.name);
  $("delete-dashboard").hidden = !current.name;
  $("edit-status").textContent = "";
  const add = $("add-kind");
  add.replaceChildren(...Object.entries(PANELS).map(([kind, p]) => h("option", { value: kind, text: p.title })),
    h("option", { value: "insight", text: "Insight (trends, funnel, retention…)" }));
  drawEditorList();
  if (isNew) buildGrid();
}

function drawEditorList() {
  const list = $("edit-panels");
  list.replaceChildren(...current.panels.map((spec, i) => {
    const title = h("input", { value: spec.title || "", placeholder: panelTitle({ ...spec, title: "" }), maxlength: "100", "aria-label": "Panel title" });
    title.addEventListener("input", () => { spec.title = title.value; markDirty(); });
    const width = h("select", { "aria-label": "Width" },
      h("option", { value: "1", text: "Half width", selected: (spec.width || 1) === 1 }),
      h("option", { value: "2", text: "Full width", selected: spec.width === 2 }));
    width.addEventListener("change", () => { spec.width = Number(width.value); markDirty(); buildGrid(); });
    const move = (delta) => () => {
      const j = i + delta;
      if (j < 0 || j >= current.panels.length) return;
      [current.panels[i], current.panels[j]] = [current.panels[j], current.panels[i]];
      markDirty(); drawEditorList(); buildGrid();
    };
    return h("li", { dataset: { kind: spec.kind } },
      h("span", { class: "kind", text: ALL_PANELS[spec.kind].title }), title, width,
      h("button", { type: "button", class: "small ghost", title: "Move up", text: "↑", onclick: move(-1) }),
      h("button", { type: "button", class: "small ghost", title: "Move down", text: "↓", onclick: move(1) }),
      h("button", { type: "button", class: "small ghost danger remove-panel", title: "Remove", text: "✕",
        onclick: () => { current.panels.splice(i, 1); markDirty(); drawEditorList(); buildGrid(); } }));
  }));
}

function clean(spec) {
  const out = { kind: spec.kind, width: spec.width || ALL_PANELS[spec.kind].width };
  if (spec.title) out.title = spec.title;
  if (spec.insight) out.insight = spec.insight;
  if (spec.options) {
    const options = Object.fromEntries(Object.entries(spec.options).filter(([, v]) => v !== null && v !== undefined && v !== ""));
    if (Object.keys(options).length) out.options = options;
  }
  return out;
}

async function saveDashboard() {
  const name = current.name || $("edit-name").value.trim();
  const status = $("edit-status");
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name)) {
    status.textContent = "Name: letters, digits, '.', '_' or '-' (up to 64)";
    return;
  }
  const body = { title: $("edit-title").value.trim() || "Untitled", panels: current.panels.map(clean) };
  const headers = current.version ? { "If-Match": `"${current.version}"` } : {};
  try {
    const saved = await api(`/v1/dashboards/${encodeURIComponent(name)}`, { method: "PUT", body, headers });
    current = structuredClone(saved);
    sessionStorage.setItem(DASH_STORE, saved.name);
    dashboards = dashboards.filter((d) => d.name !== saved.name).concat([saved]).sort((a, b) => a.name.localeCompare(b.name));
    dirty = false;
    status.textContent = `Saved (version ${saved.version})`;
    $("edit-name").disabled = true;
    $("delete-dashboard").hidden = false;
    fillSelect();
    buildGrid();
  } catch (err) {
    status.textContent = err.status === 412 ? "Someone else saved this dashboard meanwhile; reload to see it." : `Not saved: ${err.message}`;
  }
}

async function deleteDashboard() {
  if (!current.name) return;
  await api(`/v1/dashboards/${encodeURIComponent(current.name)}`, { method: "DELETE" });
  sessionStorage.removeItem(DASH_STORE);
  $("editor").hidden = true;
  await loadDashboards();
}

function wireControls() {
  $("dashboard-select").addEventListener("change", (e) => {
    const value = e.target.value;
    if (value === "__new__") { openEditor(true); fillSelect(); return; }
    const chosen = dashboards.find((d) => d.name === value);
    current = chosen ? structuredClone(chosen) : DEFAULT_LAYOUT();
    sessionStorage.setItem(DASH_STORE, value);
    $("editor").hidden = true;
    buildGrid();
  });
  $("customize").addEventListener("click", () => {
    if ($("editor").hidden) openEditor(false);
    else $("editor").hidden = true;
  });
  $("add-panel").addEventListener("click", () => {
    const kind = $("add-kind").value;
    if (kind === "insight") { editInsight(null); return; }
    current.panels.push({ kind, width: PANELS[kind].width });
    markDirty(); drawEditorList(); buildGrid();
  });
  $("edit-title").addEventListener("input", markDirty);
  $("save-dashboard").addEventListener("click", saveDashboard);
  $("delete-dashboard").addEventListener("click", () => deleteDashboard().catch((err) => { $("edit-status").textContent = err.message; }));
  $("cancel-edit").addEventListener("click", () => {
    $("editor").hidden = true;
    if (dirty) { dirty = false; loadDashboards().catch(() => {}); }
  });
  $("logout").addEventListener("click", () => signOut(""));
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => panels.forEach((p) => {
      if (p.spec.kind === "stats_range" && p.loaded) drawRange(p);
      else if (p.spec.kind === "insight") drawInsight(p);
      else refreshPanel(p);
    }), 150);
  });
}

// -- sign in / out ------------------------------------------------------------------------

const timers = [];

function signOut(message) {
  session.key = null;
  sessionStorage.removeItem(KEY_STORE);
  timers.splice(0).forEach(clearInterval);
  clearTimeout(reconnectTimer);
  if (socket) { const ws = socket; socket = null; ws.close(1000, "signed out"); }
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("key-input").focus();
}

async function start() {
  useApi(api);
  $("login").hidden = true;
  $("app").hidden = false;
  await loadDashboards();
  setConn("connecting", "Connecting…");
  connect();
  await Promise.allSettled([loadMinutes(), loadRecentEvents(), loadHealth(), loadAlerts()]);
  timers.push(
    // Uptime, storage size and a falling ingest rate change without events.
    setInterval(() => loadHealth(), 10e3),
    // The range's window slides with the clock even when nothing arrives.
    setInterval(() => reload.ranges(), 60e3),
    // An insight's range ends with the hour or day under way.
    setInterval(() => reload.insights(), 300e3),
    // The stats API is the durable truth; the live counts drift if messages are skipped.
    setInterval(() => loadMinutes().catch(() => {}), 60e3),
    setInterval(() => refresh("events_per_minute"), 15e3),
  );
}

async function signIn(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  $("login-error").textContent = "";
  session.key = key;
  try {
    await api("/v1/dashboards");
  } catch (err) {
    session.key = null;
    $("login-error").textContent = err.status === 403
      ? "This key cannot read this project's data: use a read key."
      : err.status === 401 ? "Unknown or revoked key." : `Cannot reach the server: ${err.message}`;
    $("login").hidden = false;
    $("app").hidden = true;
    return;
  }
  sessionStorage.setItem(KEY_STORE, key);
  $("key-input").value = "";
  await start();
}

wireControls();
$("login-form").addEventListener("submit", (e) => { signIn(e).catch((err) => { $("login-error").textContent = err.message; }); });
if (session.key) {
  start().catch((err) => signOut(err.message));
} else {
  $("login").hidden = false;
}
