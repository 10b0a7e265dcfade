// Small SVG charts drawn from scratch: a time series (line or bars) and a sparkline.
// Everything is built with createElementNS and textContent, never from HTML strings,
// so event types and other user data cannot inject markup.

const NS = "http://www.w3.org/2000/svg";
let gradientSeq = 0;

function node(tag, attrs = {}, parent = null) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

/**
 * A "nice" upper bound for a count axis: four times a round quarter, so the five labels
 * 0, ¼, ½, ¾ and the top are distinct whole numbers (0 1 2 3 4, 0 3 6 9 12, 0 25 50 75 100).
 */
export function niceMax(value) {
  const quarter = Math.max(1, value / 4);
  const power = 10 ** Math.floor(Math.log10(quarter));
  for (const step of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) {
    // Half steps are whole only from 10 up: 1.5 would print as "2" next to "3".
    if (step % 1 && power < 10) continue;
    if (step * power >= quarter) return 4 * step * power;
  }
  return 40 * power;
}

export function formatCount(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(n >= 1e5 ? 0 : 1) + "k";
  return String(Math.round(n));
}

function timeLabel(ms, spanMs) {
  const d = new Date(ms);
  if (spanMs > 2 * 86400e3) {
    return d.toLocaleDateString([], { month: "short", day: "numeric" });
  }
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
}

/**
 * Draw a time series into `container` (replacing its content).
 * points: [{t: epoch ms, v: number}], sorted by t; step: bucket width in ms.
 */
export function timeSeries(
  container, points, { kind = "line", height = 200, step = 60e3, label = "events", partialLast = false } = {},
) {
  container.textContent = "";
  const width = Math.max(240, container.clientWidth || 600);
  const pad = { left: 40, right: 12, top: 10, bottom: 24 };
  const svg = node("svg", {
    class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${label} over time`,
  }, container);
  if (!points.length) {
    const t = node("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, svg);
    t.textContent = "No data in this range";
    return svg;
  }
  const t0 = points[0].t;
  const t1 = points[points.length - 1].t + (kind === "bar" ? step : 0);
  const span = Math.max(t1 - t0, step);
  const top = niceMax(Math.max(...points.map((p) => p.v)));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const x = (t) => pad.left + ((t - t0) / span) * plotW;
  const y = (v) => pad.top + plotH - (v / top) * plotH;

  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    node("line", { class: "grid-line", x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }, svg);
    const tx = node("text", { class: "axis-y", x: pad.left - 6, y: y(v) + 4, "text-anchor": "end" }, svg);
    tx.textContent = formatCount(v);
  }
  const ticks = Math.max(2, Math.min(6, Math.floor(plotW / 110)));
  for (let i = 0; i <= ticks; i++) {
    const t = t0 + (span * i) / ticks;
    const tx = node("text", {
      x: x(t), y: height - 6, "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle",
    }, svg);
    tx.textContent = timeLabel(t, span);
  }

  const gid = `chart-gradient-${++gradientSeq}`;
  if (kind === "bar") {
    const bw = Math.max(1, (plotW * step) / span - 2);
    for (const p of points) {
      const bar = node("rect", {
        x: x(p.t) + 1, y: y(p.v), width: bw, height: Math.max(0, y(0) - y(p.v)), rx: Math.min(3, bw / 2),
        fill: `url(#${gid})`,
      }, svg);
      node("title", {}, bar).textContent = `${new Date(p.t).toLocaleString()}: ${p.v} ${label}`;
    }
    const defs = node("defs", {}, svg);
    const grad = node("linearGradient", { id: gid, x1: 0, x2: 0, y1: 0, y2: 1 }, defs);
    node("stop", { offset: "0%", "stop-color": "#6366f1" }, grad);
    node("stop", { offset: "100%", "stop-color": "#818cf8" }, grad);
    return svg;
  }

  const defs = node("defs", {}, svg);
  const grad = node("linearGradient", { id: gid, x1: 0, x2: 0, y1: 0, y2: 1 }, defs);
  node("stop", { offset: "0%", "stop-color": "#4f46e5", "stop-opacity": 0.25 }, grad);
  node("stop", { offset: "100%", "stop-color": "#4f46e5", "stop-opacity": 0 }, grad);
  // A bucket still filling up (the current minute) is drawn dashed, so it does not
  // read as a drop in traffic.
  const solid = partialLast && points.length > 1 ? points.slice(0, -1) : points;
  const line = solid.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join("");
  const end = solid[solid.length - 1];
  const last = points[points.length - 1];
  node("path", {
    d: `${line}L${x(end.t).toFixed(1)},${y(0)}L${x(t0).toFixed(1)},${y(0)}Z`, fill: `url(#${gid})`,
  }, svg);
  node("path", {
    d: line, fill: "none", stroke: "#4f46e5", "stroke-width": 2, "stroke-linejoin": "round",
  }, svg);
  if (solid !== points) {
    const tail = node("path", {
      d: `M${x(end.t).toFixed(1)},${y(end.v).toFixed(1)}L${x(last.t).toFixed(1)},${y(last.v).toFixed(1)}`,
      fill: "none", stroke: "#a5b4fc", "stroke-width": 2, "stroke-dasharray": "4 4",
    }, svg);
    node("title", {}, tail).textContent = "this minute so far";
  }
  node("circle", { cx: x(end.t), cy: y(end.v), r: 4, fill: "#4f46e5", stroke: "#fff", "stroke-width": 2 }, svg);
  // Invisible hover targets give each point a native tooltip.
  const slot = plotW / Math.max(1, points.length - 1);
  for (const p of points) {
    const hit = node("rect", {
      x: x(p.t) - slot / 2, y: pad.top, width: slot, height: plotH, fill: "transparent",
    }, svg);
    node("title", {}, hit).textContent = `${new Date(p.t).toLocaleTimeString([], { hourCycle: "h23" })}: ${p.v} ${label}`;
  }
  return svg;
}

/** A tiny trend line without axes. */
export function sparkline(container, values, { width = 160, height = 40, color = "#0ea5e9" } = {}) {
  container.textContent = "";
  const svg = node("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true" }, container);
  if (values.length < 2) return svg;
  const max = Math.max(1, ...values);
  const step = width / (values.length - 1);
  const d = values
    .map((v, i) => `${i ? "L" : "M"}${(i * step).toFixed(1)},${(height - 3 - (v / max) * (height - 6)).toFixed(1)}`)
    .join("");
  node("path", { d, fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round" }, svg);
  return svg;
}
