// client.js: a browser client for throng's chat protocol (/ws), as an ES
// module that needs no build step:
//
//   import { WebSocketClient } from "/client.js";
//   const client = new WebSocketClient("ws://127.0.0.1:8080/ws", token);
//   client.onMessage = (m) => console.log(m.userName, m.content);
//   await client.connect();
//   client.send({ type: "join", roomId: "general", userName: "Alice" });
//
// It keeps the seed's WebSocketClient API (connect, send, onMessage,
// onUserJoined, onUserLeft, onError, disconnect) and adds:
//   - reconnects with exponential backoff and full jitter, and none after a
//     close the server would repeat (1008: a bad or expired token, abuse);
//   - rooms joined again, under the same names, after a reconnect;
//   - the token sent as a "bearer.<token>" subprotocol, out of the URL;
//   - token refresh ahead of expiry with the protocol's refresh message, and
//     a reconnect with a fresh token after token_expired;
//   - a "statechange" event (and onStateChange) for connecting, open,
//     reconnecting and closed, with the close code, reason and next delay;
//   - recovery: it remembers each room's last offset and epoch, and a rejoin
//     after a reconnect asks for what was missed ("since"); the missed
//     messages reach onMessage before onJoined, whose data.recovered says
//     whether they all came back (false: some may be missing);
//   - history(roomId, {before, limit, epoch}): a page of a room's history.

/** Connection states, as reported by statechange events. */
export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

/**
 * The chat protocol's vocabulary, as the server's Go package protocol defines
 * it; a test (web/web_test.go) checks these against it.
 */
export const Types = Object.freeze({
  JOIN: "join",
  CHAT: "chat",
  LEAVE: "leave",
  PING: "ping",
  REFRESH: "refresh",
  HISTORY: "history",
  MEMBERS: "members",
  CONNECTED: "connected",
  JOINED: "joined",
  USER_JOINED: "user-joined",
  MESSAGE: "message",
  LEFT: "left",
  USER_LEFT: "user-left",
  PONG: "pong",
  REFRESHED: "refreshed",
  ERROR: "error",
  HISTORY_PAGE: "history-page",
});

/** Error codes of the protocol's error messages. */
export const Codes = Object.freeze({
  INVALID_JSON: "invalid_json",
  INVALID_MESSAGE: "invalid_message",
  UNKNOWN_TYPE: "unknown_type",
  NOT_IN_ROOM: "not_in_room",
  ALREADY_IN_ROOM: "already_in_room",
  TOO_MANY_ROOMS: "too_many_rooms",
  ROOM_FULL: "room_full",
  RATE_LIMITED: "rate_limited",
  INVALID_TOKEN: "invalid_token",
  TOKEN_EXPIRED: "token_expired",
  MESSAGES_DROPPED: "messages_dropped",
  UNAVAILABLE: "unavailable",
  UNKNOWN_EPOCH: "unknown_epoch",
});

/** Limits on fields: room ids in bytes, names and content in characters. */
export const Limits = Object.freeze({
  MAX_ROOM_ID: 128,
  MAX_USER_NAME: 50,
  DEFAULT_MAX_CONTENT: 500,
  MAX_HISTORY_LIMIT: 100,
  DEFAULT_HISTORY_LIMIT: 50,
  MAX_EPOCH: 64,
});

/** The subprotocol throng selects; offered alongside the token. */
export const PROTOCOL = "throng.v1";

// setTimeout takes at most a signed 32-bit count of milliseconds.
const MAX_TIMEOUT = 2 ** 31 - 1;

/**
 * The longest wait before reconnect attempt n (from 1): base·2^(n-1), capped.
 */
export function backoffCeiling(attempt, base, max) {
  return Math.min(max, base * 2 ** Math.max(0, attempt - 1));
}

/**
 * Full jitter: a uniformly random wait in [0, ceiling]. random() is in [0, 1),
 * as Math.random is; 1 is accepted too, to pin the top in tests.
 */
export function backoffDelay(attempt, base, max, random = Math.random) {
  const r = Math.min(1, Math.max(0, Number(random()) || 0));
  return Math.round(r * backoffCeiling(attempt, base, max));
}

/**
 * Whether a close code is worth reconnecting after: going away (1001), a
 * dropped connection (1005, 1006) and the server's trouble codes
 * (1011–1014). A policy violation (1008), a normal close the server chose
 * (1000) or a complaint about what the client sent would only recur.
 */
export function retryable(code) {
  return [1001, 1005, 1006, 1011, 1012, 1013, 1014].includes(code);
}

/** The exp of a JWT in milliseconds since the epoch, or 0. Not verified. */
export function tokenExpiry(token) {
  try {
    const part = String(token).split(".")[1];
    if (!part) return 0;
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" && exp > 0 ? exp * 1000 : 0;
  } catch {
    return 0;
  }
}

export class WebSocketClient extends EventTarget {
  /**
   * @param {string} url the /ws URL
   * @param {string} [token] a JWT
   * @param {object} [options]
   * @param {"subprotocol"|"query"} [options.tokenVia="subprotocol"]
   * @param {string[]} [options.protocols=["throng.v1"]]
   * @param {number} [options.maxReconnectAttempts=10] failures in a row before
   *   giving up; 0 turns reconnecting off
   * @param {number} [options.reconnectDelay=500] first ceiling, ms
   * @param {number} [options.maxReconnectDelay=30000] cap, ms
   * @param {() => number} [options.random=Math.random] jitter source
   * @param {() => Promise<string>} [options.refreshToken] a fresh token for
   *   the same user
   * @param {number} [options.refreshBefore] ms before exp to refresh; default
   *   a tenth of the token's lifetime, at most a minute
   * @param {number} [options.history=0] recent messages a join asks for,
   *   delivered before onJoined (0: none); also the context a rejoin that
   *   cannot recover gets
   * @param {typeof WebSocket} [options.WebSocket=globalThis.WebSocket]
   */
  constructor(url, token, options = {}) {
    super();
    this.url = url;
    this.token = token;
    this.tokenVia = options.tokenVia ?? "subprotocol";
    this.protocols = options.protocols ?? [PROTOCOL];
    this.maxReconnectAttempts = options.maxReconnectAttempts ?? 10;
    this.reconnectDelay = options.reconnectDelay ?? 500;
    this.maxReconnectDelay = options.maxReconnectDelay ?? 30000;
    this.random = options.random ?? Math.random;
    this.refreshToken = options.refreshToken ?? null;
    this.refreshBefore = options.refreshBefore ?? null;
    this.WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    this.historySize = options.history ?? 0;

    this.ws = null;
    this.state = State.IDLE;
    this.userId = null;
    this.reconnectAttempts = 0;
    /** Joined rooms → the name used, joined again after a reconnect. */
    this.rooms = new Map();
    this._pendingJoins = new Map(); // sent, not yet answered
    /** Rooms → { offset, epoch } of the last message had, for recovery. */
    this.positions = new Map();
    this._pendingHistory = []; // history requests: { roomId, resolve, reject }
    this._stopped = false; // disconnect() was called
    this._expired = false; // this connection was told token_expired
    this._greeted = false; // this connection got its "connected"
    this._needsToken = false; // reconnect with a fresh token from refreshToken
    this._refreshing = null; // the token sent in a refresh, awaiting refreshed
    this._reconnectTimer = null;
    this._refreshTimer = null;
    this._firstConnect = null; // connect()'s resolve and reject
    this._tokenExp = tokenExpiry(token);
    this._tokenSetAt = Date.now();

    // Handlers, as in the seed; null ones are skipped.
    this.onMessage = null;
    this.onUserJoined = null;
    this.onUserLeft = null;
    this.onError = null;
    this.onConnected = null;
    this.onJoined = null;
    this.onLeft = null;
    this.onPong = null;
    this.onRefreshed = null;
    this.onHistory = null;
    this.onStateChange = null;
  }

  /**
   * Opens the connection. Resolves when the server greets it (so the token
   * was accepted), rejects if the first attempt fails; reconnecting goes on
   * in the background unless the failure was final.
   */
  connect() {
    this._stopped = false;
    clearTimeout(this._reconnectTimer);
    return new Promise((resolve, reject) => {
      this._firstConnect = { resolve, reject };
      this._setState(State.CONNECTING, {});
      this._open();
    });
  }

  /** Sends one protocol message (an object). Returns whether it was sent. */
  send(data) {
    if (!this.ws || this.ws.readyState !== 1 /* OPEN */) {
      console.error("WebSocket is not connected");
      return false;
    }
    if (data && data.type === Types.JOIN && typeof data.roomId === "string") {
      this._pendingJoins.set(data.roomId, data.userName);
    } else if (data && data.type === Types.LEAVE) {
      this.rooms.delete(data.roomId);
      this._pendingJoins.delete(data.roomId);
      this.positions.delete(data.roomId);
    }
    this.ws.send(JSON.stringify(data));
    return true;
  }

  join(roomId, userName) {
    const msg = { type: Types.JOIN, roomId, userName };
    const pos = this.positions.get(roomId);
    if (pos) msg.since = { offset: pos.offset, epoch: pos.epoch };
    if (this.historySize > 0) msg.history = this.historySize;
    return this.send(msg);
  }

  /**
   * Asks for a page of a room's history: up to limit messages before the
   * offset before (default: the newest), oldest first. Resolves with the
   * history-page ({ epoch, offset, messages, more }); rejects with the
   * server's error, or if the connection drops first.
   */
  history(roomId, { before, limit, epoch } = {}) {
    return new Promise((resolve, reject) => {
      const msg = { type: Types.HISTORY, roomId };
      if (before !== undefined) msg.before = before;
      if (limit !== undefined) msg.limit = limit;
      if (epoch !== undefined) msg.epoch = epoch;
      if (!this.send(msg)) {
        reject(new Error("not connected"));
        return;
      }
      this._pendingHistory.push({ roomId, resolve, reject });
    });
  }

  leave(roomId) {
    return this.send({ type: Types.LEAVE, roomId });
  }

  chat(roomId, content) {
    return this.send({ type: Types.CHAT, roomId, content });
  }

  ping() {
    return this.send({ type: Types.PING });
  }

  /**
   * Asks for the members of a room this client is in; the answer comes to
   * onMembers as { roomId, members: [{ userId, userName }…], userCount }, at
   * most 100 listed (one per connection) while userCount counts them all.
   */
  members(roomId) {
    return this.send({ type: Types.MEMBERS, roomId });
  }

  /** Closes for good: no reconnect. */
  disconnect(code = 1000, reason = "") {
    this._stopped = true;
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._refreshTimer);
    if (this.ws) {
      this.ws.close(code, reason);
    } else if (this.state !== State.CLOSED) {
      this._setState(State.CLOSED, { code, reason });
    }
  }

  _open() {
    const WS = this.WebSocketImpl;
    let url = this.url;
    let protocols = [...this.protocols];
    if (this.token) {
      if (this.tokenVia === "query") {
        url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this.token);
      } else {
        protocols.push("bearer." + this.token);
      }
    }
    let ws;
    try {
      ws = protocols.length ? new WS(url, protocols) : new WS(url);
    } catch (error) {
      // A malformed URL or token: no socket, so no close event to wait for.
      this._fail({ code: 0, reason: String(error && error.message ? error.message : error), error });
      return;
    }
    this.ws = ws;
    this._greeted = false;
    this._expired = false;
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (error) {
        console.error("Failed to parse message:", error);
        return;
      }
      this._handleMessage(data);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this._handleClose(event.code, event.reason);
    };
    // An error is always followed by a close, which decides what comes next.
    ws.onerror = () => {};
  }

  _handleMessage(data) {
    switch (data.type) {
      case Types.CONNECTED: {
        this._greeted = true;
        this.userId = data.userId;
        const again = this.reconnectAttempts > 0 || this.rooms.size > 0;
        this.reconnectAttempts = 0;
        this._setState(State.OPEN, { userId: data.userId, reconnected: again });
        if (this._firstConnect) {
          this._firstConnect.resolve();
          this._firstConnect = null;
        }
        // Rejoin confirmed rooms and those whose join went unanswered.
        const rejoin = new Map([...this.rooms, ...this._pendingJoins]);
        this._pendingJoins.clear();
        for (const [roomId, userName] of rejoin) this.join(roomId, userName);
        this._scheduleRefresh();
        this.onConnected?.(data);
        break;
      }
      case Types.JOINED:
        if (this._pendingJoins.has(data.roomId)) {
          this.rooms.set(data.roomId, this._pendingJoins.get(data.roomId));
          this._pendingJoins.delete(data.roomId);
        }
        // Everything up to the room's newest offset came before joined, or
        // is lost for good (recovered: false).
        if (data.epoch) this.positions.set(data.roomId, { offset: data.offset ?? 0, epoch: data.epoch });
        else this.positions.delete(data.roomId);
        this.onJoined?.(data);
        break;
      case Types.LEFT:
        this.rooms.delete(data.roomId);
        this.positions.delete(data.roomId);
        this.onLeft?.(data);
        break;
      case Types.MESSAGE:
        if (data.offset) {
          const pos = this.positions.get(data.roomId);
          if (!pos || pos.epoch !== data.epoch || data.offset > pos.offset) {
            this.positions.set(data.roomId, { offset: data.offset, epoch: data.epoch });
          }
        }
        this.onMessage?.(data);
        break;
      case Types.USER_JOINED:
        this.onUserJoined?.(data);
        break;
      case Types.USER_LEFT:
        this.onUserLeft?.(data);
        break;
      case Types.PONG:
        this.onPong?.(data);
        break;
      case Types.MEMBERS:
        this.onMembers?.(data);
        break;
      case Types.REFRESHED:
        if (this._refreshing) this._setToken(this._refreshing);
        this._refreshing = null;
        this._scheduleRefresh();
        this.onRefreshed?.(data);
        break;
      case Types.HISTORY_PAGE: {
        const i = this._pendingHistory.findIndex((h) => h.roomId === data.roomId);
        if (i >= 0) this._pendingHistory.splice(i, 1)[0].resolve(data);
        this.onHistory?.(data);
        break;
      }
      case Types.ERROR:
        if (data.code === Codes.TOKEN_EXPIRED) this._expired = true;
        if (data.code === Codes.UNKNOWN_EPOCH || (data.code === Codes.UNAVAILABLE && this._pendingHistory.length)) {
          const err = new Error(data.message || data.code);
          err.code = data.code;
          this._pendingHistory.shift()?.reject(err);
        }
        if (data.code === Codes.INVALID_TOKEN && this._refreshing) this._refreshing = null;
        this.onError?.(data);
        break;
    }
  }

  _handleClose(code, reason) {
    this.ws = null;
    for (const h of this._pendingHistory.splice(0)) h.reject(new Error("disconnected"));
    clearTimeout(this._refreshTimer);
    const detail = { code, reason, greeted: this._greeted };
    if (this._stopped) {
      this._setState(State.CLOSED, detail);
      this._rejectFirst(detail);
      return;
    }
    if (code === 1008 && this._expired && this.refreshToken) {
      // The same user comes back with a fresh token.
      this._needsToken = true;
    } else if (!retryable(code)) {
      this._fail({ ...detail, final: true });
      return;
    }
    this._rejectFirst(detail);
    this._scheduleReconnect(detail);
  }

  _scheduleReconnect(detail) {
    if (this.reconnectAttempts >= this.maxReconnectAttempts) {
      this._fail({ ...detail, gaveUp: true, attempts: this.reconnectAttempts });
      return;
    }
    this.reconnectAttempts++;
    const delay = backoffDelay(this.reconnectAttempts, this.reconnectDelay, this.maxReconnectDelay, this.random);
    this._setState(State.RECONNECTING, {
      ...detail,
      attempt: this.reconnectAttempts,
      maxAttempts: this.maxReconnectAttempts,
      delay,
    });
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => this._reconnect(detail), delay);
  }

  async _reconnect(detail) {
    if (this._stopped) return;
    if (this._needsToken) {
      try {
        this._setToken(await this.refreshToken());
        this._needsToken = false;
      } catch (error) {
        this._scheduleReconnect({ ...detail, error });
        return;
      }
      if (this._stopped) return;
    }
    this._open();
  }

  _fail(detail) {
    this._stopped = true;
    this._setState(State.CLOSED, detail);
    this._rejectFirst(detail);
  }

  _rejectFirst(detail) {
    if (!this._firstConnect) return;
    const err = new Error(
      detail.code ? `connection closed (${detail.code}${detail.reason ? " " + detail.reason : ""})` : "connection failed",
    );
    err.code = detail.code;
    err.reason = detail.reason;
    this._firstConnect.reject(err);
    this._firstConnect = null;
  }

  _setToken(token) {
    this.token = token;
    this._tokenExp = tokenExpiry(token);
    this._tokenSetAt = Date.now();
  }

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    if (!this.refreshToken || !this._tokenExp) return;
    const life = this._tokenExp - this._tokenSetAt;
    const lead = this.refreshBefore ?? Math.min(60000, life / 10);
    const wait = Math.min(MAX_TIMEOUT, Math.max(0, this._tokenExp - lead - Date.now()));
    this._refreshTimer = setTimeout(() => this._refresh(), wait);
  }

  async _refresh() {
    if (this._stopped || !this.ws) return;
    let token;
    try {
      token = await this.refreshToken();
    } catch (error) {
      // Try again shortly while the token lasts; after that the server's
      // token_expired brings a reconnect with a fresh one.
      if (Date.now() < this._tokenExp) this._refreshTimer = setTimeout(() => this._refresh(), 1000);
      return;
    }
    this._refreshing = token;
    if (!this.send({ type: Types.REFRESH, token })) {
      // Not connected: the next connection uses it.
      this._setToken(token);
      this._refreshing = null;
    }
  }

  _setState(state, detail) {
    this.state = state;
    const d = { state, ...detail };
    this.onStateChange?.(state, d);
    this.dispatchEvent(new CustomEvent("statechange", { detail: d }));
  }
}
