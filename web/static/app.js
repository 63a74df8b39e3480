// app.js: the demo chat page. It asks /config.json where the WebSocket
// listener is and how to get a token, then talks to one room through
// client.js. Everything shown to the person is set as text, never as HTML.
import { WebSocketClient, State } from "/client.js";

const $ = (id) => document.getElementById(id);

let config = { wsUrl: "", wsPort: "", wsPath: "/ws", auth: "none" };
let client = null;
let session = null; // { room, name, joined, leaving, roster, sent, bannedUntil }

// A dev token's subject stays with the tab, so a reload is the same user.
let devSub = sessionStorage.getItem("throng.sub") || "";

const tokenReasons = {
  missing: "no token was given",
  malformed: "it is not a valid JWT",
  expired: "it has expired",
  not_yet_valid: "it is not valid yet",
  bad_signature: "its signature does not match this server's key",
  bad_algorithm: "its signing algorithm is not accepted",
  bad_issuer: "its issuer is not accepted",
  bad_audience: "its audience is not accepted",
  no_subject: "it names no user (sub)",
};

class UserError extends Error {}

function showBanner(text, kind = "error") {
  $("banner-text").textContent = text;
  $("banner").className = "banner banner-" + kind;
  $("banner").hidden = false;
}

function clearBanner() {
  $("banner").hidden = true;
  $("banner-text").textContent = "";
}

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.className = "status status-" + kind;
}

function members(n) {
  $("members").textContent = n === 1 ? "1 member" : `${n} members`;
  if (session) {
    session.count = n;
    renderRoster();
  }
}

// The member list: the server's list (a members reply) kept up to date with
// user-joined and user-left. It is keyed by user id with a count of
// connections, so a user in two tabs is one entry marked "2 tabs", and two
// users who chose the same name are told apart by their ids.
function rosterAdd(userId, userName) {
  const r = session.roster;
  const e = r.get(userId) || { name: userName, conns: 0 };
  e.name = userName;
  e.conns++;
  r.set(userId, e);
}

function rosterRemove(userId) {
  const r = session.roster;
  const e = r.get(userId);
  if (!e) return;
  if (--e.conns <= 0) r.delete(userId);
}

function renderRoster() {
  const s = session;
  if (!s || !s.roster) return;
  const me = client?.userId;
  const names = new Map();
  for (const e of s.roster.values()) names.set(e.name, (names.get(e.name) || 0) + 1);
  const entries = [...s.roster.entries()].sort(([ia, a], [ib, b]) =>
    ia === me ? -1 : ib === me ? 1 : a.name.localeCompare(b.name) || ia.localeCompare(ib),
  );
  const items = entries.map(([id, e]) => {
    const li = document.createElement("li");
    li.dataset.userId = id;
    const name = document.createElement("span");
    name.textContent = e.name;
    li.append(name);
    const tags = [];
    if (id === me) {
      li.className = "me";
      tags.push(e.conns > 1 ? `you, ${e.conns} tabs` : "you");
    } else if (e.conns > 1) {
      tags.push(`${e.conns} tabs`);
    }
    if (names.get(e.name) > 1) tags.push(id);
    if (tags.length) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = `(${tags.join(", ")})`;
      li.append(tag);
    }
    return li;
  });
  $("member-list").replaceChildren(...items);
  let listed = 0;
  for (const e of s.roster.values()) listed += e.conns;
  const more = (s.count || 0) - listed;
  $("member-more").hidden = more <= 0;
  $("member-more").textContent = more > 0 ? `and ${more} more not listed` : "";
}

// A ban: the server ignores what this connection sends until it ends, so the
// page says for how long and holds the composer until then.
function startBan(seconds) {
  const s = session;
  if (!s) return;
  s.bannedUntil = Date.now() + seconds * 1000;
  clearInterval(s.banTimer);
  const tick = () => {
    const left = Math.ceil((s.bannedUntil - Date.now()) / 1000);
    if (left <= 0 || session !== s) {
      endBan(s);
      return;
    }
    const m = Math.floor(left / 60);
    const sec = String(left % 60).padStart(2, "0");
    showBanner(`Rate limited: you sent too much too fast, so the server ignores you for ${fmtBan(seconds)}. You can send again in ${m}:${sec}.`, "warn");
  };
  $("message").disabled = true;
  $("send").disabled = true;
  $("send-form").classList.add("banned");
  tick();
  s.banTimer = setInterval(tick, 1000);
}

function endBan(s) {
  clearInterval(s.banTimer);
  s.banTimer = null;
  if (!s.bannedUntil) return;
  s.bannedUntil = 0;
  $("send-form").classList.remove("banned");
  if (session === s && client && client.state === State.OPEN) {
    $("message").disabled = false;
    $("send").disabled = false;
    clearBanner();
  }
}

function fmtBan(seconds) {
  if (seconds % 60 === 0) return seconds === 60 ? "1 minute" : `${seconds / 60} minutes`;
  return `${seconds} seconds`;
}

function closeText(code, reason) {
  switch (code) {
    case 1000:
      return "closed normally";
    case 1001:
      return reason ? `server going away: ${reason}` : "server going away";
    case 1006:
      return "connection lost";
    case 1008:
      return reason || "policy violation";
    case 0:
    case undefined:
      return reason || "could not connect";
    default:
      return reason ? `${code}: ${reason}` : `code ${code}`;
  }
}

function addLine(kind, parts) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const li = document.createElement("li");
  li.className = kind;
  if (kind === "sys") {
    li.textContent = parts.text;
  } else {
    const head = document.createElement("div");
    head.className = "head";
    const who = document.createElement("span");
    who.className = "who-name";
    who.textContent = parts.name;
    head.append(who);
    if (parts.tag) {
      const tag = document.createElement("span");
      tag.className = "who-tag";
      tag.textContent = parts.tag;
      head.append(tag);
    }
    const time = document.createElement("time");
    const at = new Date(parts.timestamp);
    time.dateTime = at.toISOString();
    time.textContent = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    head.append(time);
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = parts.text;
    li.append(head, text);
  }
  list.append(li);
  if (atBottom || kind === "msg mine") list.scrollTop = list.scrollHeight;
}

function showJoin() {
  $("chat-panel").hidden = true;
  $("join-panel").hidden = false;
  $("join").disabled = false;
  $("join").textContent = "Join";
}

function showChat() {
  $("join-panel").hidden = true;
  $("chat-panel").hidden = false;
  const banned = session && session.bannedUntil > Date.now();
  $("message").disabled = banned;
  $("send").disabled = banned;
  $("message").focus();
}

// wsUrl is the chat endpoint: the server's URL if it gave one, else this
// page's own host (never a name the server read from a request header), on
// the port and path it gave.
function wsUrl(c) {
  if (c.wsUrl) return c.wsUrl;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const port = c.wsPort || location.port;
  return `${scheme}//${location.hostname}${port ? ":" + port : ""}${c.wsPath || "/ws"}`;
}

async function getToken(name) {
  if (config.auth === "none") return "";
  if (config.auth === "dev") {
    const q = new URLSearchParams({ name });
    if (devSub) q.set("sub", devSub);
    const r = await fetch("/dev/token?" + q);
    if (!r.ok) throw new UserError(`Could not get a dev token (HTTP ${r.status}).`);
    const t = await r.json();
    devSub = t.userId;
    sessionStorage.setItem("throng.sub", devSub);
    return t.token;
  }
  const token = $("token").value.trim();
  if (!token) throw new UserError("Bad token: enter a token to connect.");
  // A browser cannot see why a handshake was refused, so ask first.
  const r = await fetch("/token/verify", { method: "POST", body: token });
  if (r.status === 401) {
    // The reason comes only from a --dev server; others say no more than
    // the WebSocket listener's 401 does.
    const j = await r.json().catch(() => ({}));
    throw new UserError(`Bad token: ${tokenReasons[j.error?.reason] || "the server refuses it"}.`);
  }
  if (r.status === 429) {
    const wait = r.headers.get("Retry-After") || "a few";
    throw new UserError(`Too many token checks from here: try again in ${wait} s.`);
  }
  if (!r.ok) throw new UserError(`Could not check the token (HTTP ${r.status}).`);
  return token;
}

async function join(event) {
  event.preventDefault();
  clearBanner();
  const name = $("name").value.trim();
  const room = $("room").value.trim();
  if (!name || !room) return;
  $("join").disabled = true;
  $("join").textContent = "Joining…";
  let token;
  try {
    token = await getToken(name);
  } catch (err) {
    showBanner(err instanceof UserError ? err.message : `Could not get a token: ${err.message}`);
    showJoin();
    return;
  }
  if (client) client.disconnect();
  $("messages").replaceChildren();
  $("room-title").textContent = "# " + room;
  $("me").textContent = name;
  members(0);
  if (session) clearInterval(session.banTimer);
  session = { room, name, joined: false, joinSent: false, leaving: false, lostBecause: null, roster: new Map(), sent: [], count: 0, bannedUntil: 0 };
  const c = new WebSocketClient(wsUrl(config), token, {
    refreshToken: config.auth === "dev" ? () => getToken(name) : undefined,
    history: 50, // recent messages shown on join
  });
  client = c;
  wire(c, session);
  try {
    await c.connect();
  } catch (err) {
    // The state handler has said what happens next (retrying or stopped).
  }
}

function wire(c, s) {
  const mine = () => client === c;
  c.onConnected = () => {
    if (!mine()) return;
    // The first join; after a reconnect the client rejoins by itself.
    if (!s.joinSent) {
      s.joinSent = true;
      c.join(s.room, s.name);
    }
  };
  c.onJoined = (d) => {
    if (!mine() || d.roomId !== s.room) return;
    // The list comes in a members reply; until then, just us.
    s.roster = new Map();
    rosterAdd(c.userId, s.name);
    members(d.userCount);
    // Recent history, or what was missed, came just before this.
    if (!s.joined && d.replayed) addLine("sys", { text: `↑ recent history (${d.replayed} messages)` });
    c.members(s.room);
    addLine("sys", { text: s.joined ? `Rejoined #${s.room}` : `You joined #${s.room} as ${s.name}` });
    if (s.joined && d.recovered === true) {
      addLine("sys", { text: `Recovered ${d.replayed ?? 0} messages` });
    } else if (s.joined && d.recovered === false) {
      addLine("sys", { text: "Some messages may be missing" });
    }
    s.joined = true;
    showChat();
  };
  c.onMembers = (d) => {
    if (!mine() || d.roomId !== s.room) return;
    s.roster = new Map();
    for (const m of d.members || []) rosterAdd(m.userId, m.userName);
    members(d.userCount);
  };
  c.onLeft = (d) => {
    if (!mine() || d.roomId !== s.room || !d.reason) return;
    // An operator took us out of the room (or closed it).
    s.leaving = true;
    c.disconnect();
    showBanner(`You were removed from #${s.room}: ${d.reason}.`);
    setStatus("Not connected", "idle");
    showJoin();
  };
  c.onUserJoined = (d) => {
    if (!mine() || d.roomId !== s.room) return;
    rosterAdd(d.userId, d.userName);
    members(d.userCount);
    addLine("sys", { text: `${d.userName} joined` });
  };
  c.onUserLeft = (d) => {
    if (!mine() || d.roomId !== s.room) return;
    rosterRemove(d.userId);
    members(d.userCount);
    addLine("sys", { text: `${d.userName} left` });
  };
  c.onMessage = (d) => {
    if (!mine() || d.roomId !== s.room) return;
    // Ours only if this tab sent it: the same user in another tab (or on
    // another device) is shown apart.
    let kind = "msg";
    let tag = "";
    if (d.userId === c.userId) {
      const i = s.sent.indexOf(d.content);
      if (i >= 0) {
        s.sent.splice(i, 1);
        kind = "msg mine";
      } else {
        kind = "msg twin";
        tag = "you, in another tab";
      }
    }
    addLine(kind, { name: d.userName, text: d.content, timestamp: d.timestamp, tag });
  };
  c.onError = (d) => {
    if (!mine()) return;
    switch (d.code) {
      case "rate_limited":
        // What was sent since is dropped, not echoed.
        s.sent = [];
        if (d.retryAfter > 0) startBan(d.retryAfter);
        else showBanner("Rate limited: you sent too much too fast, so the server ignores you for a while.", "warn");
        break;
      case "token_expired":
        showBanner("Your token expired.");
        break;
      case "messages_dropped":
        showBanner(`You missed ${d.count} messages: the connection was too slow.`, "warn");
        break;
      default:
        showBanner(d.message || d.code);
        if (!s.joined) {
          // The join itself was refused: back to the form.
          c.disconnect();
          showJoin();
        }
    }
  };
  c.onStateChange = (state, d) => {
    if (!mine()) return;
    switch (state) {
      case State.CONNECTING:
        setStatus("Connecting…", "busy");
        break;
      case State.OPEN:
        setStatus("Connected", "ok");
        s.lostBecause = null;
        // A new connection starts with no ban.
        endBan(s);
        if (d.reconnected) {
          clearBanner();
          if (s.joined) addLine("sys", { text: "Reconnected" });
        }
        break;
      case State.RECONNECTING: {
        setStatus("Reconnecting…", "busy");
        // Later attempts fail as "connection lost"; the first close says why.
        s.lostBecause ??= closeText(d.code, d.reason);
        const secs = (d.delay / 1000).toFixed(1);
        showBanner(
          `Disconnected (${s.lostBecause}). Reconnecting in ${secs} s, attempt ${d.attempt} of ${d.maxAttempts}…`,
          "warn",
        );
        $("message").disabled = true;
        $("send").disabled = true;
        break;
      }
      case State.CLOSED:
        setStatus("Disconnected", "off");
        if (s.leaving) break;
        if (d.gaveUp) {
          showBanner(`Disconnected (${closeText(d.code, d.reason)}). Gave up after ${d.attempts} attempts.`);
        } else if (d.code === 1008 && /token|auth/i.test(d.reason || "")) {
          showBanner(`Bad token: ${d.reason}.`);
        } else {
          showBanner(`Disconnected: ${closeText(d.code, d.reason)}.`);
        }
        showJoin();
        break;
    }
  };
}

function leave() {
  if (!client || !session) return;
  session.leaving = true;
  clearInterval(session.banTimer);
  client.leave(session.room);
  client.disconnect();
  client = null;
  clearBanner();
  setStatus("Not connected", "idle");
  showJoin();
}

function send(event) {
  event.preventDefault();
  const input = $("message");
  const content = input.value.trim();
  if (!content || !client || !session) return;
  if (session.bannedUntil > Date.now()) return;
  if (!client.chat(session.room, content)) {
    showBanner("Not connected: the message was not sent.", "warn");
    return;
  }
  session.sent.push(content);
  if (session.sent.length > 100) session.sent.shift();
  input.value = "";
  input.focus();
}

async function start() {
  const params = new URLSearchParams(location.search);
  $("name").value = params.get("name") || "";
  $("room").value = params.get("room") || "general";
  $("join-form").addEventListener("submit", join);
  $("send-form").addEventListener("submit", send);
  $("leave").addEventListener("click", leave);
  $("banner-close").addEventListener("click", clearBanner);
  try {
    const r = await fetch("/config.json");
    config = await r.json();
  } catch (err) {
    showBanner("Could not load the page's settings (/config.json).");
    return;
  }
  $("token-field").hidden = config.auth !== "token";
  $("auth-note").textContent = {
    dev: "Dev mode: a token is made for you.",
    token: "This server needs a token for you.",
    none: "This server lets anyone in without a token.",
  }[config.auth];
  document.body.dataset.ready = "true";
}

start();
