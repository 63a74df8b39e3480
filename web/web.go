// Package web is throng's browser side, served on the HTTP listener: the chat
// client library as an ES module (/client.js) that browsers load as is, with
// no build step, and a demo chat page (/) built on it. The WebSocket listener
// is a separate port, so the page learns where to connect from /config.json.
// In dev mode /dev/token mints tokens so the page works with no setup.
package web

import (
	"crypto/rand"
	"embed"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"math"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/httplimit"
)

//go:embed static
var static embed.FS

// Options configures Handler. The zero value serves a page that connects to
// /ws on the host and port it was loaded from, without a token.
type Options struct {
	// WSAddr is the WebSocket listener's address as bound, such as [::]:8080.
	// If its host is an address the page can dial (10.1.2.3:8080), the page
	// connects to ws://HOST:PORT/ws. If the host is empty or unspecified
	// (0.0.0.0, ::), the page connects to the host it was loaded from, on
	// PORT: the browser fills that in from its own location, never the
	// server from the request's Host header, which the client chooses. If
	// WSAddr is empty, the page's own host and port are used.
	WSAddr string
	// WSURL, if set, is given to the page as the WebSocket URL as is: the
	// public URL (--public-ws-url), for a server behind a proxy or with a
	// public name. It overrides WSAddr and Path.
	WSURL string
	// Path is the chat endpoint's path. If empty, "/ws" is used.
	Path string
	// Auth is the server's token verifier. If nil the server is anonymous and
	// the page connects without a token; otherwise the page asks for one and
	// checks it with POST /token/verify before connecting, because a browser
	// cannot read why a handshake was refused.
	Auth *auth.Verifier
	// Reasons makes POST /token/verify say why a token was refused (expired,
	// bad_signature, ...). Only --dev sets it: otherwise the endpoint answers
	// as the WebSocket listener's 401 does, "invalid_token" and nothing more,
	// so that it is no oracle for someone forging or replaying tokens.
	Reasons bool
	// VerifyRate is how many POST /token/verify requests per second one client
	// address may make, VerifyBurst how many at once; past them it is
	// answered 429 with Retry-After. Each costs a signature check, which is
	// expensive with RSA keys. If zero, DefaultVerifyRate and
	// DefaultVerifyBurst.
	VerifyRate  float64
	VerifyBurst int
	// DevSecret, if set, serves GET /dev/token?sub=ID&name=NAME: an HS256
	// token signed with it, for any subject. Only --dev sets it: anyone who can
	// reach the page can then be anyone.
	DevSecret []byte
	// DevTokenTTL is the lifetime of a dev token. If zero, DefaultDevTokenTTL.
	DevTokenTTL time.Duration
	// Now is the clock for dev tokens. If nil, time.Now is used.
	Now func() time.Time
	// Dashboard serves the operator's page at /dashboard. It reads the API
	// (GET /api/dashboard and the actions) with a key the person types in,
	// so it is useful only where the API is on (--api-key). If false,
	// /dashboard answers 404 saying so.
	Dashboard bool
}

// DefaultDevTokenTTL is how long a dev token lasts; the page refreshes it.
const DefaultDevTokenTTL = time.Hour

// maxTokenBody bounds a POST /token/verify body.
const maxTokenBody = 16 << 10

// Defaults for the POST /token/verify throttle: a person pasting tokens into
// the page checks one every few seconds.
const (
	DefaultVerifyRate  = 1.0
	DefaultVerifyBurst = 5
)

// maxThrottled bounds the table of client addresses the verify throttle
// tracks; when it is full of addresses still throttled, new addresses are
// refused too rather than let the table grow.
const maxThrottled = 4096

// Config is what /config.json tells the page. It never depends on the
// request, so that a forged Host header cannot point a cached page elsewhere.
type Config struct {
	// WSURL is the chat endpoint's URL, when the server knows it. If empty,
	// the page connects to its own host (location.hostname), on WSPort if
	// set or its own port if not, at WSPath, with wss: if it was loaded over
	// https:.
	WSURL  string `json:"wsUrl,omitempty"`
	WSPort string `json:"wsPort,omitempty"`
	WSPath string `json:"wsPath,omitempty"`
	// Auth is "dev" (get a token from /dev/token), "token" (ask the person for
	// one) or "none" (anonymous server).
	Auth string `json:"auth"`
}

// subPattern is what a dev token's subject may be: what a person would type.
var subPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

type handler struct {
	o      Options
	assets http.Handler

	mu       sync.Mutex
	limiters map[string]*rate.Limiter // by client IP; guarded by mu
}

// Handler serves the page, its assets and settings:
//
//	GET  /              the demo chat page
//	GET  /client.js     the browser client library (an ES module)
//	GET  /app.js, /style.css   the page's code and style
//	GET  /config.json   Config: where the WebSocket listener is, never cached
//	POST /token/verify  checks a token (the body): 200 {"userId","expiresAt"}
//	                    or 401 {"error":{"code":"invalid_token",…}} (and
//	                    "reason" with Options.Reasons), httplimit's error shape;
//	                    429 past the per-address throttle; 404 without Options.Auth
//	GET  /dev/token     mints a token; 404 without Options.DevSecret
//	GET  /dashboard     the operator's page (with dashboard.js, dashboard.css);
//	                    404 without Options.Dashboard
//	GET  /favicon.svg   the pages' icon
//
// Other paths are 404, so it can be mounted at "/" beside other routes.
func Handler(o Options) http.Handler {
	if o.Path == "" {
		o.Path = "/ws"
	}
	if o.DevTokenTTL <= 0 {
		o.DevTokenTTL = DefaultDevTokenTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.VerifyRate <= 0 {
		o.VerifyRate = DefaultVerifyRate
	}
	if o.VerifyBurst <= 0 {
		o.VerifyBurst = DefaultVerifyBurst
	}
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	h := &handler{o: o, assets: http.FileServerFS(sub), limiters: map[string]*rate.Limiter{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", h.serveAsset)
	for _, name := range []string{"client.js", "app.js", "style.css", "favicon.svg", "dashboard.js", "dashboard.css"} {
		mux.HandleFunc("GET /"+name, h.serveAsset)
	}
	mux.HandleFunc("GET /dashboard", h.serveDashboard)
	mux.HandleFunc("GET /config.json", h.serveConfig)
	mux.HandleFunc("POST /token/verify", h.serveVerify)
	mux.HandleFunc("GET /dev/token", h.serveDevToken)
	return mux
}

// pageCSP keeps the page to its own scripts and styles; it may connect to any
// WebSocket listener, as that is on another port.
const pageCSP = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; " +
	"style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func (h *handler) serveAsset(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("X-Content-Type-Options", "nosniff")
	// Assets change with the binary; revalidate (by Last-Modified) rather than
	// keep a stale client.
	hd.Set("Cache-Control", "no-cache")
	if r.URL.Path == "/client.js" {
		// The library is for any page to import (the README's cross-origin
		// import): module scripts are fetched with CORS. It carries no
		// credentials and reads none.
		hd.Set("Access-Control-Allow-Origin", "*")
		hd.Set("Cross-Origin-Resource-Policy", "cross-origin")
	}
	if r.URL.Path == "/" {
		hd.Set("Content-Security-Policy", pageCSP)
		hd.Set("Referrer-Policy", "no-referrer")
	}
	h.assets.ServeHTTP(w, r)
}

// serveDashboard serves the operator's page. The page holds no secret: it
// asks for the API key and sends it as a bearer header to /api, never in a
// URL, so the key stays out of logs, history and Referer headers.
func (h *handler) serveDashboard(w http.ResponseWriter, r *http.Request) {
	if !h.o.Dashboard {
		httplimit.WriteError(w, http.StatusNotFound, "not_found", "the dashboard is served only with the API on (--api-key)")
		return
	}
	hd := w.Header()
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("Content-Security-Policy", pageCSP)
	hd.Set("Referrer-Policy", "no-referrer")
	sub, _ := fs.Sub(static, "static")
	http.ServeFileFS(w, r, sub, "dashboard.html")
}

func (h *handler) serveConfig(w http.ResponseWriter, r *http.Request) {
	c := h.wsConfig(r.TLS != nil)
	c.Auth = "none"
	switch {
	case len(h.o.DevSecret) > 0:
		c.Auth = "dev"
	case h.o.Auth != nil:
		c.Auth = "token"
	}
	// The answer depends on the server's flags only, but a shared cache must
	// never keep one across a restart with other flags.
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, c)
}

// wsConfig is where the page finds the chat endpoint: an absolute URL when
// the server knows one, else the same-host rule Config describes. tls is
// whether this listener itself served the page over TLS.
func (h *handler) wsConfig(tls bool) Config {
	if h.o.WSURL != "" {
		return Config{WSURL: h.o.WSURL}
	}
	if h.o.WSAddr == "" {
		return Config{WSPath: h.o.Path}
	}
	host, port, err := net.SplitHostPort(h.o.WSAddr)
	if err != nil {
		return Config{WSPath: h.o.Path}
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return Config{WSPort: port, WSPath: h.o.Path}
	}
	scheme := "ws"
	if tls {
		scheme = "wss"
	}
	return Config{WSURL: scheme + "://" + net.JoinHostPort(host, port) + h.o.Path}
}

type verifyReply struct {
	UserID    string     `json:"userId,omitempty"`
	Name      string     `json:"name,omitempty"`
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
}

// serveVerify tells the page whether a token would be accepted: the browser
// gets no status from a refused handshake. Why it was refused is said only
// with Options.Reasons (--dev); otherwise the answer is the WebSocket 401's.
// Each client address is throttled, as each request costs a signature check.
func (h *handler) serveVerify(w http.ResponseWriter, r *http.Request) {
	if h.o.Auth == nil {
		http.NotFound(w, r)
		return
	}
	if wait, ok := h.allow(r); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		httplimit.WriteError(w, http.StatusTooManyRequests, "rate_limited", "too many token checks from this address; try again later")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxTokenBody))
	if err != nil {
		httplimit.WriteError(w, http.StatusRequestEntityTooLarge, "too_large", "a token is at most "+strconv.Itoa(maxTokenBody)+" bytes")
		return
	}
	tok := strings.TrimSpace(string(body))
	tok = strings.TrimPrefix(tok, "Bearer ")
	claims, err := h.o.Auth.Verify(tok)
	if err != nil {
		e := httplimit.ErrorBody{Error: httplimit.ErrorDetail{Code: "invalid_token", Message: "the server refuses this token"}}
		if h.o.Reasons {
			e.Error.Reason = auth.ReasonOf(err).String()
		}
		httplimit.WriteErrorBody(w, http.StatusUnauthorized, e)
		return
	}
	rep := verifyReply{UserID: claims.Subject, Name: claims.Name}
	if !claims.ExpiresAt.IsZero() {
		exp := claims.ExpiresAt.UTC()
		rep.ExpiresAt = &exp
	}
	writeJSON(w, http.StatusOK, rep)
}

// allow takes one request from the client address's allowance, or says how
// long until there is one.
func (h *handler) allow(r *http.Request) (time.Duration, bool) {
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = r.RemoteAddr
	}
	now := h.o.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	lim := h.limiters[ip]
	if lim == nil {
		if len(h.limiters) >= maxThrottled {
			h.pruneLocked(now)
		}
		if len(h.limiters) >= maxThrottled {
			return time.Second, false
		}
		lim = rate.NewLimiter(rate.Limit(h.o.VerifyRate), h.o.VerifyBurst)
		h.limiters[ip] = lim
	}
	res := lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return d, false
	}
	return 0, true
}

// pruneLocked forgets addresses whose allowance is full again: they are no
// different from addresses never seen.
func (h *handler) pruneLocked(now time.Time) {
	for ip, lim := range h.limiters {
		if lim.TokensAt(now) >= float64(h.o.VerifyBurst) {
			delete(h.limiters, ip)
		}
	}
}

type devToken struct {
	Token     string    `json:"token"`
	UserID    string    `json:"userId"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// serveDevToken mints a token for ?sub (a random guest id if absent) with the
// dev secret.
func (h *handler) serveDevToken(w http.ResponseWriter, r *http.Request) {
	if len(h.o.DevSecret) == 0 {
		http.NotFound(w, r)
		return
	}
	sub := r.URL.Query().Get("sub")
	if sub == "" {
		var b [4]byte
		rand.Read(b[:])
		sub = "guest-" + hex.EncodeToString(b[:])
	}
	if !subPattern.MatchString(sub) {
		httplimit.WriteError(w, http.StatusBadRequest, "invalid_sub", "sub must be 1 to 64 of A-Z a-z 0-9 . _ -")
		return
	}
	name := r.URL.Query().Get("name")
	if len(name) > 100 {
		name = name[:100]
	}
	now := h.o.Now()
	tok, err := auth.Mint(h.o.DevSecret, "HS256", sub, h.o.DevTokenTTL, name, now)
	if err != nil {
		httplimit.WriteError(w, http.StatusInternalServerError, "mint_failed", "the token could not be signed")
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, devToken{Token: tok, UserID: sub, ExpiresAt: now.Add(h.o.DevTokenTTL).Truncate(time.Second).UTC()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
