// Building DOM and SVG nodes without HTML strings: user data only ever becomes text.

const NS = "http://www.w3.org/2000/svg";

/** An HTML element: props are attributes, except class, text, on*, dataset and style. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    // CSSOM, not a style attribute: the Content-Security-Policy forbids inline styles.
    else if (k === "style") Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c);
  }
  return el;
}

/** An SVG element with attributes, appended to `parent` when given; `text` sets its text. */
export function svg(tag, attrs = {}, parent = null) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") el.textContent = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, String(v));
  }
  if (parent) parent.appendChild(el);
  return el;
}
