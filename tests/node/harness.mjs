// Sends calls through a real Node SDK, as an app would, and reports what happened.
//
//   node harness.mjs SPEC.json RESULT.json
//
// SPEC: {"sdk": "segment" | "rudder", "host": "http://127.0.0.1:PORT", "writeKey": "ik_…",
//        "options": {…SDK options…}, "calls": [["track", {…}], ["identify", {…}], …]}
// RESULT: {"errors": [{"status": 401, "message": "…"}], "requests": [{"url", "headers"}]}
//
// Each SDK is used with its README's setup plus a short flush interval; nothing of the
// SDKs is patched. The request headers are read from Node's own diagnostics channels
// (RudderStack's SDK posts through axios on node:http) or from the SDK's 'http_request'
// event (Segment's SDK posts through fetch), so the tests can show what was really sent.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import diagnostics from "node:diagnostics_channel";

const require = createRequire(import.meta.url);
const [specPath, resultPath] = process.argv.slice(2);
const spec = JSON.parse(readFileSync(specPath, "utf8"));
const errors = [];
const requests = [];

function revive(args) {
  // JSON has no Date: {"$date": "…"} in a spec becomes one, as an app would pass it.
  const out = {};
  for (const [name, value] of Object.entries(args)) {
    out[name] = value && typeof value === "object" && "$date" in value ? new Date(value.$date) : value;
  }
  return out;
}

async function runRudder() {
  diagnostics.subscribe("http.client.request.start", ({ request }) => {
    requests.push({ url: request.path, headers: request.getHeaders() });
  });
  const Analytics = require("@rudderstack/rudder-sdk-node");
  const client = new Analytics(spec.writeKey, {
    dataPlaneUrl: spec.host,
    logLevel: "error",
    errorHandler: (err) => {
      errors.push({ status: err.response ? err.response.status : null, message: String(err) });
    },
    ...spec.options,
  });
  for (const [method, args] of spec.calls) {
    client[method](revive(args));
  }
  // The first call flushes at once; the rest wait in the queue until flushed.
  while (client.queue.length > 0) {
    await client.flush();
  }
  await client.pendingFlush;
}

async function runSegment() {
  const { Analytics } = require("@segment/analytics-node");
  const client = new Analytics({ writeKey: spec.writeKey, host: spec.host, ...spec.options });
  client.on("http_request", ({ url, headers }) => requests.push({ url, headers }));
  client.on("error", (err) => {
    errors.push({ status: null, message: String(err.reason ?? err.code) });
  });
  for (const [method, args] of spec.calls) {
    client[method](revive(args));
  }
  await client.closeAndFlush({ timeout: 30000 });
}

await (spec.sdk === "rudder" ? runRudder() : runSegment());
writeFileSync(resultPath, JSON.stringify({ errors, requests }));
// Timers of the SDKs (flush intervals) would keep the process alive.
process.exit(0);
