// Pylon's dashboard: one page, no dependencies. Figures arrive every second over
// /dashboard/stream; actions go through the admin API with the session's CSRF token.
"use strict";

const state = { csrf: null, source: null, last: 0, view: "overview", history: {} };
const HISTORY = 120;

const $ = (id) => document.getElementById(id);

function text(el, value) {
  if (el && el.textContent !== value) el.textContent = value;
}

const fmt = {
  num: (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits)),
  pct: (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(2) + " %"),
  ms: (v) => (v === null || v === undefined ? "–" : Math.round(v) + " ms"),
  usd: (v) => (v === null || v === undefined ? "–" : "$" + Number(v).toFixed(v >= 100 ? 0 : 4)),
  int: (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en")),
  time: (ms) => (ms ? new Date(ms).toLocaleString() : "–"),
};

function cell(value, cls) {
  const td = document.createElement("td");
  td.textContent = value;
  if (cls) td.className = cls;
  return td;
}

function button(label, onClick, testid) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (testid) b.dataset.testid = testid;
  b.addEventListener("click", onClick);
  return b;
}

// Redraws a table's rows only when its data changed, and keeps the keyboard focus (and what
// was being typed) on the control it was on: pushes arrive every second.
function rows(tableId, items, render) {
  const body = document.querySelector("#" + tableId + " tbody");
  const sig = JSON.stringify(items);
  if (body.dataset.sig === sig) return;
  body.dataset.sig = sig;
  const active = document.activeElement;
  const focused = active && body.contains(active) ? active.dataset.testid : null;
  const typed = focused && active.tagName === "INPUT" ? active.value : null;
  const fresh = document.createDocumentFragment();
  for (const item of items) {
    const tr = document.createElement("tr");
    for (const td of render(item)) tr.appendChild(td);
    fresh.appendChild(tr);
  }
  body.replaceChildren(fresh);
  if (focused) {
    const again = body.querySelector('[data-testid="' + CSS.escape(focused) + '"]');
    if (again) {
      if (typed !== null) again.value = typed;
      again.focus();
    }
  }
}

async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (method !== "GET") headers["x-pylon-csrf"] = state.csrf || "";
  const resp = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (!resp.ok) {
    const msg = (data && data.error && data.error.message) || resp.statusText;
    throw new Error(resp.status + ": " + msg);
  }
  return data;
}

async function act(method, path, body) {
  try {
    await api(method, path, body);
    text($("status"), "Done: " + method + " " + path);
  } catch (e) {
    text($("status"), "Failed: " + e.message);
  }
}

function spark(id, key, value) {
  const series = (state.history[key] = state.history[key] || []);
  series.push(value === null || value === undefined ? 0 : value);
  if (series.length > HISTORY) series.shift();
  const svg = $(id);
  if (!svg) return;
  const max = Math.max(...series, 1e-9);
  const step = 120 / (HISTORY - 1);
  const points = series
    .map((v, i) => ((HISTORY - series.length + i) * step).toFixed(1) + "," + (29 - (v / max) * 27).toFixed(1))
    .join(" ");
  let line = svg.querySelector("polyline");
  if (!line) {
    line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    svg.appendChild(line);
  }
  line.setAttribute("points", points);
}

function renderOverview(s) {
  const o = s.overview;
  text($("v-rps"), fmt.num(o.rps, 2));
  text($("v-error_rate"), fmt.pct(o.error_rate));
  text($("v-p50_ms"), fmt.ms(o.p50_ms));
  text($("v-p95_ms"), fmt.ms(o.p95_ms));
  text($("v-ttft_p95_ms"), fmt.ms(o.ttft_p95_ms));
  text($("v-tokens_per_s"), fmt.num(o.tokens_per_s, 1));
  text($("v-cost_per_hour"), fmt.usd(o.cost_per_hour));
  text($("v-cache_hit_rate"), fmt.pct(o.cache_hit_rate));
  text($("v-cache_saved_usd"), fmt.usd(o.cache_saved_usd));
  text($("v-open_streams"), fmt.int(o.open_streams));
  text($("v-requests_total"), fmt.int(o.requests_total));
  spark("s-rps", "rps", o.rps);
  spark("s-error_rate", "error_rate", o.error_rate);
  spark("s-p95_ms", "p95", o.p95_ms);
  rows("models", s.models, (m) => [
    cell(m.model), cell(fmt.num(m.rps, 2)), cell(fmt.pct(m.error_rate)),
    cell(fmt.ms(m.p95_ms)), cell(fmt.ms(m.ttft_p95_ms)), cell(fmt.usd(m.cost_per_hour)),
  ]);
  rows("breakers", s.breakers, (b) => [cell(b.model), cell(b.target), cell(b.state, "state-" + b.state)]);
}

function renderExecutive(s) {
  const x = s.executive || {};
  text($("x-spent"), fmt.usd(x.spent_month_usd));
  text($("x-projected"), fmt.usd(x.projected_month_usd));
  text($("x-active"), fmt.int(x.active_keys_today));
  const spend = (r) => [cell(r.id || "–"), cell(fmt.usd(r.spent_usd)), cell(fmt.usd(r.projected_usd)), cell(fmt.usd(r.cost_per_request_usd))];
  rows("slos", (s.alerts || []).filter((a) => a.kind === "burn-rate"), (a) => [
    cell(a.name), cell(a.labels.model ? "model " + a.labels.model : "all traffic"),
    cell(a.budget_left === null || a.budget_left === undefined ? "–" : fmt.pct(a.budget_left)),
    cell(a.state, "state-" + a.state),
  ]);
  rows("teams", x.teams || [], spend);
  rows("keys", x.keys || [], spend);
  rows("daily", x.daily || [], (d) => [
    cell(new Date(d.day * 1000).toISOString().slice(0, 10)), cell(fmt.int(d.requests)),
    cell(fmt.pct(d.availability)), cell(fmt.usd(d.cost_usd)), cell(fmt.usd(d.cost_per_request_usd)),
  ]);
}

function renderDelivery(s) {
  rows("rollouts", s.rollouts, (r) => {
    const actions = document.createElement("td");
    for (const cmd of ["pause", "resume", "promote", "abort"]) {
      actions.appendChild(
        button(cmd, () => act("POST", "/admin/v1/rollouts/" + encodeURIComponent(r.name) + "/" + cmd), "rollout-" + r.name + "-" + cmd),
      );
    }
    return [cell(r.name), cell(r.strategy), cell(r.state, "state-" + r.state), cell(fmt.num(r.weight, 0) + " %"),
      cell(String(r.step + 1) + "/" + r.steps.length), actions];
  });
  const arms = [];
  const verdicts = [];
  for (const r of s.rollouts) {
    for (const arm of ["stable", "candidate"]) {
      const a = (r.arms || {})[arm];
      if (a) arms.push([r.name, arm, a]);
    }
    for (const v of r.verdicts || []) verdicts.push([r.name, v]);
  }
  rows("arms", arms, ([name, arm, a]) => [
    cell(name), cell(arm), cell(fmt.int(a.requests)), cell(fmt.pct(a.error_rate)),
    cell(fmt.ms(a.latency_p95_ms)), cell(fmt.ms(a.ttft_p95_ms)), cell(fmt.usd(a.cost_per_request_usd)),
  ]);
  rows("verdicts", verdicts, ([name, v]) => [
    cell(name), cell(fmt.time(v.at)), cell(v.outcome, v.outcome === "fail" ? "state-firing" : ""),
    cell(fmt.num(v.weight, 0) + " %"), cell((v.detail && v.detail.reason) || "–"),
  ]);
  rows("flags", s.flags, (f) => {
    const actions = document.createElement("td");
    const on = f.state !== "DISABLED";
    actions.appendChild(
      button(on ? "disable" : "enable", () => act("POST", "/admin/v1/flags/" + encodeURIComponent(f.key) + "/" + (on ? "disable" : "enable")), "flag-" + f.key),
    );
    const split = twoWay(f.definition);
    if (split) {
      // A two-way percentage rollout: its first variant's share can be set here.
      const input = document.createElement("input");
      input.type = "number";
      input.min = "0";
      input.max = "100";
      input.size = 4;
      input.value = String(split.share);
      input.setAttribute("aria-label", "Share of " + split.first + " for " + f.key + ", percent");
      input.dataset.testid = "flag-pct-input-" + f.key;
      actions.appendChild(input);
      actions.appendChild(button("set %", () => setShare(f, Number(input.value)), "flag-pct-" + f.key));
    }
    const splitText = split ? split.first + " " + split.share + " % / " + split.second + " " + (100 - split.share) + " %" : "–";
    return [cell(f.key), cell(f.state, on ? "state-closed" : "state-paused"), cell(f.default), cell(splitText), cell(f.source), actions];
  });
}

// A flag whose targeting is a fractional split between two variants: its parts and shares.
function twoWay(def) {
  const frac = def && def.targeting && def.targeting.fractional;
  if (!Array.isArray(frac)) return null;
  const parts = frac.filter(Array.isArray);
  if (parts.length !== 2) return null;
  const total = parts[0][1] + parts[1][1];
  if (!(total > 0)) return null;
  return { first: parts[0][0], second: parts[1][0], share: Math.round((parts[0][1] / total) * 100), prefix: frac.filter((p) => !Array.isArray(p)) };
}

function setShare(f, pct) {
  const split = twoWay(f.definition);
  if (!split || !(pct >= 0 && pct <= 100)) {
    text($("status"), "A share is a percentage from 0 to 100");
    return;
  }
  const p = Math.round(pct);
  const definition = Object.assign({}, f.definition, {
    targeting: { fractional: [...split.prefix, [split.first, p], [split.second, 100 - p]] },
  });
  act("PUT", "/admin/v1/flags/" + encodeURIComponent(f.key), definition);
}

function renderAlerts(s) {
  rows("alert-list", s.alerts, (a) => {
    const actions = document.createElement("td");
    if (a.state === "firing") {
      actions.appendChild(button("ack 1h", () => act("POST", "/admin/v1/alerts/" + encodeURIComponent(a.name) + "/ack", { for: "1h" }), "ack-" + a.name));
    }
    actions.appendChild(
      button("silence 1h", () => act("POST", "/admin/v1/alerts/silences", { matchers: { alertname: a.name }, for: "1h", comment: "from the dashboard" }), "silence-" + a.name),
    );
    return [cell(a.name), cell(a.severity), cell(a.state, "state-" + a.state), cell(a.value === null ? "–" : fmt.num(a.value, 3)),
      cell(fmt.time(a.firing_since || a.active_since)), cell(a.acked ? "by " + a.acked_by : "no"), actions];
  });
}

async function refreshHistory() {
  try {
    const events = await api("GET", "/admin/v1/alerts/history?limit=30");
    const list = $("alert-history");
    const fresh = document.createDocumentFragment();
    for (const e of events) {
      const li = document.createElement("li");
      li.textContent = fmt.time(e.at) + " — " + e.alert + ": " + e.kind + (e.detail && e.detail.receiver ? " → " + e.detail.receiver : "");
      fresh.appendChild(li);
    }
    list.replaceChildren(fresh);
  } catch (e) {
    text($("status"), "History: " + e.message);
  }
}

async function refreshRequests() {
  const form = new FormData($("request-filter"));
  const q = new URLSearchParams({ limit: "50" });
  if (form.get("model")) q.set("model", form.get("model"));
  if (form.get("status")) q.set("status", form.get("status"));
  try {
    const page = await api("GET", "/admin/v1/requests?" + q.toString());
    const items = page.data || [];
    rows("request-log", items, (r) => [
      cell(fmt.time(r.at_ms)), cell(r.model), cell(r.key_id || "–"), cell(String(r.status), r.status >= 500 ? "state-firing" : ""),
      cell(fmt.ms(r.latency_ms)), cell(fmt.int((r.input_tokens || 0) + (r.output_tokens || 0))), cell(fmt.usd(r.cost_usd)),
    ]);
    const groups = await api("GET", "/admin/v1/errors");
    rows("error-groups", groups.data || [], (g) => [
      cell(g.error_class), cell(g.route), cell(fmt.int(g.count)), cell(g.last_message || "–"),
    ]);
  } catch (e) {
    text($("status"), "Requests: " + e.message);
  }
}

function render(s) {
  state.last = Date.now();
  renderOverview(s);
  renderExecutive(s);
  renderDelivery(s);
  renderAlerts(s);
}

function show(view) {
  state.view = view;
  for (const b of document.querySelectorAll("nav button")) {
    if (b.dataset.view === view) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  for (const sec of document.querySelectorAll("section.view")) sec.hidden = sec.id !== view;
  if (view === "alerts") refreshHistory();
  if (view === "requests") refreshRequests();
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource("/dashboard/stream");
  state.source = source;
  source.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  source.addEventListener("error", () => text($("status"), "Reconnecting…"));
}

function loggedIn(csrf) {
  state.csrf = csrf;
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  show(state.view);
  connect();
}

function tick() {
  if (!state.last) return;
  const age = Math.round((Date.now() - state.last) / 1000);
  text($("status"), age <= 2 ? "Live" : "Last update " + age + " s ago");
  if (state.view === "alerts" && age <= 2 && Date.now() % 5000 < 1000) refreshHistory();
}

document.addEventListener("DOMContentLoaded", async () => {
  for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => show(b.dataset.view));
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    text($("login-error"), "");
    try {
      const r = await api("POST", "/dashboard/login", { token: $("token").value });
      $("token").value = "";
      loggedIn(r.csrf);
    } catch (err) {
      text($("login-error"), err.message);
    }
  });
  $("logout").addEventListener("click", async () => {
    await act("POST", "/dashboard/logout");
    if (state.source) state.source.close();
    location.reload();
  });
  $("request-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    refreshRequests();
  });
  setInterval(tick, 1000);
  const s = await api("GET", "/dashboard/session").catch(() => ({ csrf: null }));
  if (s.csrf) loggedIn(s.csrf);
  else $("token").focus();
});
