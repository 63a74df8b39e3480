// dashboard.js: the operator's page. It polls GET /api/dashboard every
// sample interval with the API key as a bearer header, keeps the samples of
// the last ten minutes, derives the rates from consecutive counters and draws
// the charts as plain SVG. The key lives in this tab's sessionStorage only,
// and is never put in a URL. Everything from the server is set as text or
// SVG attributes, never as HTML.

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const KEY = "throng.apiKey";

const palette = ["#3657d6", "#1f8a4c", "#b26b00", "#b3261e", "#7a3fc4", "#0f7f8c", "#8c5a2b", "#c2417a"];

let key = sessionStorage.getItem(KEY) || "";
let info = null; // the last reply, less its samples
let samples = []; // oldest first
let seq = 0;
let timer = null;
let rangeSec = 300;
let failures = 0;
let openRoom = "";

// ---- formatting ----

function fmtBytes(n) {
  if (!Number.isFinite(n)) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${u[i]}`;
}

function fmtNum(n) {
  if (!Number.isFinite(n)) return "–";
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "G";
  if (a >= 1e6) return (n / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e4) return (n / 1e3).toFixed(a >= 1e5 ? 0 : 1) + "k";
  if (a >= 100 || Number.isInteger(n)) return String(Math.round(n));
  return n.toFixed(a >= 10 ? 1 : 2);
}

function fmtMS(ms) {
  if (!Number.isFinite(ms)) return "–";
  if (ms < 1) return `${Math.round(ms * 1000)} µs`;
  if (ms < 1000) return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
}

function fmtAge(sec) {
  if (sec < 120) return `${Math.round(sec)} s`;
  if (sec < 7200) return `${Math.round(sec / 60)} min`;
  if (sec < 172800) return `${(sec / 3600).toFixed(1)} h`;
  return `${(sec / 86400).toFixed(1)} d`;
}

// ---- banner and status ----

function showBanner(text, kind = "error") {
  $("banner-text").textContent = text;
  $("banner").className = "banner banner-" + kind;
  $("banner").hidden = false;
}

function clearBanner() {
  $("banner").hidden = true;
}

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").className = "status status-" + kind;
}

// ---- the API ----

class Unauthorized extends Error {}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + key }, cache: "no-store" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const j = await r.json().catch(() => ({}));
  if (r.status === 401) throw new Unauthorized(j.error?.message || "unauthorized");
  if (r.status === 429) {
    throw new Error(`${j.error?.message || "too many requests"} (wait ${r.headers.get("Retry-After") || "a few"} s)`);
  }
  if (!r.ok) throw new Error(j.error?.message || `HTTP ${r.status}`);
  return j;
}

// ---- sign in and out ----

async function signIn(event) {
  event.preventDefault();
  const typed = $("key").value.trim();
  if (!typed) return;
  $("login").disabled = true;
  key = typed;
  try {
    await poll(true);
    sessionStorage.setItem(KEY, key);
    $("key").value = "";
  } catch (err) {
    key = "";
    if (err instanceof Unauthorized) showBanner("Wrong key: the server refused it.");
    else showBanner(`Could not sign in: ${err.message}`);
  } finally {
    $("login").disabled = false;
  }
}

function signOut(text) {
  clearTimeout(timer);
  timer = null;
  key = "";
  sessionStorage.removeItem(KEY);
  samples = [];
  seq = 0;
  info = null;
  $("board").hidden = true;
  $("signout").hidden = true;
  $("login-panel").hidden = false;
  $("node").textContent = "";
  $("build").textContent = "";
  setStatus("Signed out", "idle");
  document.body.dataset.signedIn = "false";
  if (text) showBanner(text);
  else clearBanner();
  $("key").focus();
}

// ---- polling ----

async function poll(first) {
  const j = await api("GET", `/api/dashboard?since=${first ? 0 : seq}`);
  if (first) {
    samples = [];
    clearBanner();
    $("login-panel").hidden = true;
    $("board").hidden = false;
    $("signout").hidden = false;
    document.body.dataset.signedIn = "true";
  }
  if (j.seq < seq) samples = []; // the server restarted
  const cap = Math.max(2, Math.round(j.history_ms / j.interval_ms));
  samples.push(...j.samples);
  if (samples.length > cap) samples.splice(0, samples.length - cap);
  seq = j.seq;
  info = j;
  render();
  failures = 0;
  setStatus(j.ready ? "Live" : "Live · draining", j.ready ? "ok" : "busy");
  document.body.dataset.seq = String(seq);
  schedule(j.interval_ms);
}

function schedule(ms) {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    try {
      await poll(false);
    } catch (err) {
      if (err instanceof Unauthorized) {
        signOut("The server no longer accepts this key.");
        return;
      }
      failures++;
      setStatus("Reconnecting…", "busy");
      showBanner(`Lost the server (${err.message}); showing the last figures, retrying.`, "warn");
      schedule(Math.min(30000, (info?.interval_ms || 1000) * 2 ** Math.min(failures, 5)));
      return;
    }
    if ($("banner").classList.contains("banner-warn") && failures === 0) clearBanner();
  }, ms);
}

// ---- derived series ----

// rate turns a cumulative counter into per-second points between samples.
function rate(get, list = samples) {
  const out = [];
  for (let i = 1; i < list.length; i++) {
    const a = list[i - 1];
    const b = list[i];
    const dt = (b.t - a.t) / 1000;
    const va = get(a);
    const vb = get(b);
    if (dt <= 0 || va === undefined || vb === undefined) continue;
    out.push([b.t, vb >= va ? (vb - va) / dt : 0]);
  }
  return out;
}

function gauge(get, list = samples) {
  return list.map((s) => [s.t, get(s)]);
}

function last(points) {
  return points.length ? points[points.length - 1][1] : NaN;
}

// ---- charts ----

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

// niceMax rounds a chart's top up to 1, 2 or 5 times a power of ten.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// chart draws series ([{name, points: [[t, v]…]}]) and horizontal lines
// ([{name, value}]) over the chosen range into the figure with the id.
function chart(id, series, opts = {}) {
  const fig = $(id);
  const W = 460;
  const H = 170;
  const L = 52;
  const R = 8;
  const T = 10;
  const B = 22;
  const now = samples.length ? samples[samples.length - 1].t : Date.now();
  // The range asked for, or less while the history is shorter, so that a
  // page opened on a young node does not squeeze its data into a corner.
  const from = Math.max(now - rangeSec * 1000, samples.length ? Math.min(samples[0].t, now - 10000) : 0);
  const span = (now - from) / 1000;
  const fmt = opts.fmt || fmtNum;
  const shown = series.map((s) => ({ ...s, points: s.points.filter(([t]) => t >= from) }));
  const lines = (opts.lines || []).filter((l) => l.value > 0);
  let top = 0;
  for (const s of shown) for (const [, v] of s.points) top = Math.max(top, v);
  for (const l of lines) top = Math.max(top, l.value);
  top = niceMax(top * 1.05);
  const x = (t) => L + ((t - from) / (now - from || 1)) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);

  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img", "aria-label": fig.querySelector("figcaption").textContent });
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    svg.append(el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }));
    svg.append(el("text", { x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, fmt(v)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = from + (i * (now - from)) / 4;
    const ago = Math.round((span * (4 - i)) / 4);
    const label = ago === 0 ? "now" : ago >= 90 ? `−${+(ago / 60).toFixed(1)} min` : `−${ago} s`;
    svg.append(el("text", { x: x(t), y: H - 6, class: "axis", "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, label));
  }
  lines.forEach((l, i) => {
    svg.append(el("line", { x1: L, x2: W - R, y1: y(l.value), y2: y(l.value), class: "limit", stroke: l.color || "#b3261e" }));
    // Side by side, as the marks are often close together.
    const lx = W - R - 2 - i * 120;
    const label = el("text", { x: lx, y: y(l.value) - 3, class: "axis limit-label", "text-anchor": "end" }, `${l.name} ${fmt(l.value)}`);
    label.style.fill = l.color || "#b3261e"; // through the CSSOM: the CSP allows no style attribute
    svg.append(label);
  });
  shown.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map(([t, v], j) => `${j ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join("");
    svg.append(el("path", { d, class: "series", stroke: s.color || palette[i % palette.length], "data-series": s.name }));
  });
  const legend = document.createElement("div");
  legend.className = "legend";
  shown.forEach((s, i) => {
    const item = document.createElement("span");
    const sw = document.createElement("i");
    sw.className = "swatch sw" + (i % palette.length);
    const v = last(s.points);
    item.append(sw, `${s.name} ${Number.isFinite(v) ? fmt(v) : "–"}`);
    legend.append(item);
  });
  if (!shown.length || shown.every((s) => !s.points.length)) {
    const none = document.createElement("span");
    none.className = "note";
    none.textContent = opts.empty || "nothing yet";
    legend.append(none);
  }
  const cap = fig.querySelector("figcaption");
  fig.replaceChildren(cap, svg, legend);
}

// ---- the page ----

function render() {
  const s = samples[samples.length - 1];
  if (!s || !info) return;
  const up = fmtAge(info.uptime_seconds);
  $("node").textContent = info.node ? `node ${info.node}` : "single node";
  $("build").textContent = `${info.build.version || "(devel)"} ${(info.build.revision || "").slice(0, 12)} · up ${up}`;

  $("t-conns").textContent = fmtNum(s.conns);
  $("t-conns-sub").textContent = info.max_conns ? `of ${fmtNum(info.max_conns)} (--max-conns)` : `${fmtNum(s.sockets)} sockets`;
  $("t-rss").textContent = fmtBytes(s.rss);
  $("t-rss-sub").textContent = info.memory_limit
    ? `${Math.round((100 * s.rss) / info.memory_limit)}% of ${fmtBytes(info.memory_limit)}${s.memory_refusing ? " · refusing" : ""}`
    : `heap ${fmtBytes(s.heap)} · ${fmtNum(s.goroutines)} goroutines`;
  $("t-bpc").textContent = s.conns ? fmtBytes(s.bytes_per_conn) : "–";
  // What the high-water mark leaves room for, at today's cost per connection.
  $("t-bpc-sub").textContent =
    info.memory_high_water && s.conns && s.bytes_per_conn
      ? `room for about ${fmtNum(s.conns + Math.max(0, info.memory_high_water - s.rss) / s.bytes_per_conn)} below the high-water mark`
      : "(RSS − baseline) / connections";
  const recent = samples.slice(-6);
  $("t-in").textContent = fmtNum(last(rate((x) => x.messages_in, recent)));
  $("t-out").textContent = fmtNum(last(rate((x) => x.deliveries, recent)));
  $("t-rooms").textContent = fmtNum(s.rooms);
  $("t-rooms-sub").textContent = `${fmtNum(s.room_members)} memberships`;

  chart("c-conns", [{ name: "connections", points: gauge((x) => x.conns) }, { name: "sockets", points: gauge((x) => x.sockets) }], {
    lines: [{ name: "--max-conns", value: info.max_conns }],
  });
  const reasons = new Set();
  for (const x of samples) for (const r of Object.keys(x.refused || {})) reasons.add(r);
  chart(
    "c-refused",
    [...reasons].sort().map((r) => ({ name: r, points: rate((x) => (x.refused || {})[r] || 0) })),
    { empty: "no upgrade refused" },
  );
  chart("c-rss", [{ name: "RSS", points: gauge((x) => x.rss) }, { name: "heap", points: gauge((x) => x.heap) }], {
    fmt: fmtBytes,
    lines: [
      { name: "limit", value: info.memory_limit, color: "#b3261e" },
      { name: "high water", value: info.memory_high_water, color: "#b26b00" },
      { name: "low water", value: info.memory_low_water, color: "#1f8a4c" },
    ],
  });
  chart("c-bpc", [{ name: "bytes/conn", points: gauge((x) => x.bytes_per_conn).filter((p, i) => samples[i]?.conns > 0) }], {
    fmt: fmtBytes,
    empty: "no connections",
  });
  chart("c-msgs", [
    { name: "in", points: rate((x) => x.messages_in) },
    { name: "broadcasts", points: rate((x) => x.broadcasts) },
    { name: "deliveries", points: rate((x) => x.deliveries) },
  ]);
  const trouble = [
    { name: "rate-limited msgs", points: rate((x) => x.rate_limited) },
    { name: "bans", points: rate((x) => x.bans) },
    { name: "slow closed", points: rate((x) => x.slow_closed) },
    { name: "slow dropped", points: rate((x) => x.slow_dropped) },
  ];
  if (info.nodes) {
    trouble.push({ name: "cluster lost", points: rate((x) => x.cluster_lost || 0) });
    trouble.push({ name: "cluster dropped", points: rate((x) => x.cluster_dropped || 0) });
  }
  chart("c-trouble", trouble);
  const loops = info.loops;
  const perLoop = (f) => Array.from({ length: loops }, (_, i) => f(i));
  if (loops <= 8) {
    chart("c-lag", perLoop((i) => ({ name: `loop ${i}`, points: gauge((x) => (x.loop_lag_us?.[i] ?? 0) / 1000) })), { fmt: fmtMS });
    chart("c-loopmsgs", perLoop((i) => ({ name: `loop ${i}`, points: rate((x) => (x.loop_in?.[i] ?? 0) + (x.loop_out?.[i] ?? 0)) })));
  } else {
    // Many loops: the spread rather than a line each.
    const spread = (get) => [
      { name: "max", points: gauge((x) => Math.max(...get(x))) },
      { name: "median", points: gauge((x) => get(x).slice().sort((a, b) => a - b)[Math.floor(get(x).length / 2)]) },
      { name: "min", points: gauge((x) => Math.min(...get(x))) },
    ];
    chart("c-lag", spread((x) => (x.loop_lag_us || [0]).map((v) => v / 1000)), { fmt: fmtMS });
    const loopRates = samples.map((b, i) => {
      const a = samples[i - 1];
      const dt = a ? (b.t - a.t) / 1000 : 0;
      return perLoop((j) => (a && dt > 0 ? Math.max(0, b.loop_in[j] + b.loop_out[j] - a.loop_in[j] - a.loop_out[j]) / dt : 0));
    });
    const withRates = samples.map((x, i) => ({ ...x, rates: loopRates[i] })).slice(1);
    chart("c-loopmsgs", [
      { name: "max", points: withRates.map((x) => [x.t, Math.max(...x.rates)]) },
      { name: "min", points: withRates.map((x) => [x.t, Math.min(...x.rates)]) },
    ]);
  }
  renderLoops();
  renderNodes();
  renderRooms();
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.append(c);
    else td.textContent = c;
    tr.append(td);
  }
  return tr;
}

function renderLoops() {
  const s = samples[samples.length - 1];
  const prev = samples[samples.length - 2];
  const dt = prev ? (s.t - prev.t) / 1000 : 0;
  const per = (a, b) => (prev && dt > 0 ? fmtNum(Math.max(0, a - b) / dt) : "–");
  const rows = [];
  for (let i = 0; i < info.loops; i++) {
    rows.push(
      row([
        String(i),
        fmtNum(s.loop_conns[i]),
        per(s.loop_in[i], prev?.loop_in[i]),
        per(s.loop_out[i], prev?.loop_out[i]),
        fmtMS(s.loop_lag_us[i] / 1000),
      ]),
    );
  }
  $("loops").tBodies[0].replaceChildren(...rows);
}

function renderNodes() {
  const nodes = info.nodes;
  $("cluster-panel").hidden = !nodes;
  if (!nodes) return;
  $("cluster-note").textContent = "as this node hears its peers";
  const rows = nodes.map((n) => {
    const state = document.createElement("span");
    let text = n.live ? (n.synced ? "live" : "live, syncing") : "silent";
    if (n.self) text = n.broker ? "this node · broker up" : "this node · broker down";
    state.textContent = text;
    state.className = "pill " + (n.self ? (n.broker ? "ok" : "bad") : n.live && n.synced ? "ok" : n.live ? "warn" : "bad");
    const total = n.received + n.lost;
    return row([
      n.id,
      state,
      fmtNum(n.conns),
      fmtNum(n.rooms),
      fmtNum(n.members),
      n.self ? "–" : fmtMS(n.silence_ms),
      n.self ? "–" : fmtMS(n.lag_us / 1000),
      n.self ? "–" : total ? `${((100 * n.lost) / total).toFixed(2)}% (${fmtNum(n.lost)} of ${fmtNum(total)})` : "0%",
    ]);
  });
  $("nodes").tBodies[0].replaceChildren(...rows);
}

function renderRooms() {
  const rooms = info.rooms || [];
  $("rooms-note").textContent = info.rooms_approx ? "(across the cluster; approximate)" : "";
  const top = rooms.length ? rooms[0].members : 1;
  const rows = rooms.map((r) => {
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("i");
    // A width from a number the page computed, set through the CSSOM (the
    // page's CSP allows no inline style attribute).
    fill.style.width = `${Math.max(2, (100 * r.members) / top)}%`;
    bar.append(fill);
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "ghost small";
    btn.textContent = "Members";
    btn.addEventListener("click", () => showRoom(r.id));
    const tr = row([r.id, fmtNum(r.members), bar]);
    tr.lastChild.append(btn);
    return tr;
  });
  if (!rows.length) rows.push(row(["no rooms", "", ""]));
  $("rooms").tBodies[0].replaceChildren(...rows);
}

// ---- a room's members ----

const MAX_LISTED = 200;

async function showRoom(id) {
  openRoom = id;
  for (const f of ["f-remove", "f-close"]) $(f).elements.room.value = id;
  $("room-panel").hidden = false;
  $("room-title").textContent = "# " + id;
  $("room-note").textContent = "Loading…";
  let j;
  try {
    j = await api("GET", `/api/rooms/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err instanceof Unauthorized) return signOut("The server no longer accepts this key.");
    $("room-note").textContent = `Could not list the members: ${err.message}`;
    $("members").tBodies[0].replaceChildren();
    return;
  }
  if (openRoom !== id) return;
  const shown = j.members.slice(0, MAX_LISTED);
  $("room-note").textContent =
    `${fmtNum(j.count)} members` + (j.count > shown.length ? `, the first ${shown.length} shown` : "") + (j.partial ? " (a node did not answer)" : "");
  const rows = shown.map((m) => {
    const actions = document.createElement("span");
    actions.className = "row-actions";
    actions.append(
      confirmButton("Remove", () => act("DELETE", `/api/rooms/${encodeURIComponent(id)}/members/${encodeURIComponent(m.userId)}`, {}, `remove ${m.userId} from #${id}`)),
      confirmButton("Disconnect", () => act("POST", `/api/users/${encodeURIComponent(m.userId)}/disconnect`, {}, `disconnect ${m.userId}`)),
    );
    return row([m.userId, m.userName, actions]);
  });
  $("members").tBodies[0].replaceChildren(...rows);
}

// confirmButton asks for a second click before it acts.
function confirmButton(label, fn) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "ghost small";
  b.textContent = label;
  let armed = null;
  b.addEventListener("click", () => {
    if (!armed) {
      b.textContent = "Sure?";
      b.classList.add("armed");
      armed = setTimeout(() => {
        armed = null;
        b.textContent = label;
        b.classList.remove("armed");
      }, 4000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    b.textContent = label;
    b.classList.remove("armed");
    fn();
  });
  return b;
}

// ---- actions ----

async function act(method, path, body, what) {
  const out = $("action-result");
  out.className = "result";
  out.textContent = `Working: ${what}…`;
  try {
    const j = await api(method, path, body);
    let text = `Done: ${what}. ${j.affected} ${j.action === "disconnect" ? "connection" : "membership"}${j.affected === 1 ? "" : "s"} ended`;
    if (j.nodes !== undefined) text += ` on this node and ${j.nodes} other node${j.nodes === 1 ? "" : "s"}`;
    if (j.partial) text += "; a node did not answer, so its part is unknown";
    out.textContent = text + ".";
    out.className = "result ok";
    if (openRoom) showRoom(openRoom);
  } catch (err) {
    if (err instanceof Unauthorized) return signOut("The server no longer accepts this key.");
    out.textContent = `Failed: ${what}: ${err.message}`;
    out.className = "result bad";
  }
}

function wireActions() {
  $("f-disconnect").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = e.target.elements;
    const body = {};
    if (f.code.value) body.code = Number(f.code.value);
    if (f.reason.value.trim()) body.reason = f.reason.value.trim();
    const user = f.user.value.trim();
    act("POST", `/api/users/${encodeURIComponent(user)}/disconnect`, body, `disconnect ${user}`);
  });
  $("f-remove").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = e.target.elements;
    const body = f.reason.value.trim() ? { reason: f.reason.value.trim() } : {};
    const room = f.room.value.trim();
    const user = f.user.value.trim();
    act("DELETE", `/api/rooms/${encodeURIComponent(room)}/members/${encodeURIComponent(user)}`, body, `remove ${user} from #${room}`);
  });
  $("f-close").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = e.target.elements;
    const body = f.reason.value.trim() ? { reason: f.reason.value.trim() } : {};
    const room = f.room.value.trim();
    act("DELETE", `/api/rooms/${encodeURIComponent(room)}`, body, `close #${room}`);
  });
}

async function start() {
  $("login-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
  $("banner-close").addEventListener("click", clearBanner);
  for (const b of document.querySelectorAll("[data-range]")) {
    b.addEventListener("click", () => {
      rangeSec = Number(b.dataset.range);
      for (const o of document.querySelectorAll("[data-range]")) o.classList.toggle("on", o === b);
      render();
    });
  }
  wireActions();
  document.body.dataset.ready = "true";
  if (key) {
    try {
      await poll(true);
    } catch (err) {
      signOut(err instanceof Unauthorized ? "The server no longer accepts the saved key." : `Could not reach the API: ${err.message}`);
    }
  } else {
    signOut();
  }
}

start();
