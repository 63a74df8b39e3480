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
	"net"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/throng-ws/throng/auth"
)

//go:embed static
var static embed.FS

// Options configures Handler. The zero value serves a page that connects to
// /ws on the host and port it was loaded from, without a token.
type Options struct {
	// WSAddr is the WebSocket listener's address as bound, such as [::]:8080.
	// The page connects to ws://HOST:PORT/ws, where HOST is the host the page
	// was loaded from when WSAddr's is empty or unspecified (0.0.0.0, ::), so
	// the page works from another machine. If empty, the page's own host and
	// port are used.
	WSAddr string
	// WSURL, if set, is given to the page as the WebSocket URL as is, for a
	// server behind a proxy that maps paths. It overrides WSAddr and Path.
	WSURL string
	// Path is the chat endpoint's path. If empty, "/ws" is used.
	Path string
	// Auth is the server's token verifier. If nil the server is anonymous and
	// the page connects without a token; otherwise the page asks for one and
	// checks it with POST /token/verify before connecting, because a browser
	// cannot read why a handshake was refused.
	Auth *auth.Verifier
	// DevSecret, if set, serves GET /dev/token?sub=ID&name=NAME: an HS256
	// token signed with it, for any subject. Only --dev sets it: anyone who can
	// reach the page can then be anyone.
	DevSecret []byte
	// DevTokenTTL is the lifetime of a dev token. If zero, DefaultDevTokenTTL.
	DevTokenTTL time.Duration
	// Now is the clock for dev tokens. If nil, time.Now is used.
	Now func() time.Time
}

// DefaultDevTokenTTL is how long a dev token lasts; the page refreshes it.
const DefaultDevTokenTTL = time.Hour

// maxTokenBody bounds a POST /token/verify body.
const maxTokenBody = 16 << 10

// Config is what /config.json tells the page.
type Config struct {
	// WSURL is the chat endpoint's URL.
	WSURL string `json:"wsUrl"`
	// Auth is "dev" (get a token from /dev/token), "token" (ask the person for
	// one) or "none" (anonymous server).
	Auth string `json:"auth"`
}

// subPattern is what a dev token's subject may be: what a person would type.
var subPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

type handler struct {
	o      Options
	assets http.Handler
}

// Handler serves the page, its assets and settings:
//
//	GET  /              the demo chat page
//	GET  /client.js     the browser client library (an ES module)
//	GET  /app.js, /style.css   the page's code and style
//	GET  /config.json   Config for the request's host
//	POST /token/verify  checks a token (the body): 200 {"userId","expiresAt"}
//	                    or 401 {"error","reason"}; 404 without Options.Auth
//	GET  /dev/token     mints a token; 404 without Options.DevSecret
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
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	h := &handler{o: o, assets: http.FileServerFS(sub)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", h.serveAsset)
	for _, name := range []string{"client.js", "app.js", "style.css"} {
		mux.HandleFunc("GET /"+name, h.serveAsset)
	}
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
	if r.URL.Path == "/" {
		hd.Set("Content-Security-Policy", pageCSP)
		hd.Set("Referrer-Policy", "no-referrer")
	}
	h.assets.ServeHTTP(w, r)
}

func (h *handler) serveConfig(w http.ResponseWriter, r *http.Request) {
	c := Config{WSURL: h.wsURL(r), Auth: "none"}
	switch {
	case len(h.o.DevSecret) > 0:
		c.Auth = "dev"
	case h.o.Auth != nil:
		c.Auth = "token"
	}
	writeJSON(w, http.StatusOK, c)
}

// wsURL is the chat endpoint as seen from the client that sent r.
func (h *handler) wsURL(r *http.Request) string {
	if h.o.WSURL != "" {
		return h.o.WSURL
	}
	scheme := "ws"
	if r.TLS != nil {
		scheme = "wss"
	}
	reqHost := r.Host
	if reqHost == "" {
		reqHost = "localhost"
	}
	if h.o.WSAddr == "" {
		return scheme + "://" + reqHost + h.o.Path
	}
	host, port, err := net.SplitHostPort(h.o.WSAddr)
	if err != nil {
		return scheme + "://" + h.o.WSAddr + h.o.Path
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = reqHost
		if hh, _, err := net.SplitHostPort(reqHost); err == nil {
			host = hh
		}
	}
	return scheme + "://" + net.JoinHostPort(host, port) + h.o.Path
}

type verifyReply struct {
	UserID    string     `json:"userId,omitempty"`
	Name      string     `json:"name,omitempty"`
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
	Error     string     `json:"error,omitempty"`
	Reason    string     `json:"reason,omitempty"`
}

// serveVerify tells the page whether a token would be accepted, and if not
// why: the browser gets no status or reason from a refused handshake. It
// reveals nothing the WebSocket listener's 401 does not.
func (h *handler) serveVerify(w http.ResponseWriter, r *http.Request) {
	if h.o.Auth == nil {
		http.NotFound(w, r)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxTokenBody))
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, verifyReply{Error: "too_large"})
		return
	}
	tok := strings.TrimSpace(string(body))
	tok = strings.TrimPrefix(tok, "Bearer ")
	claims, err := h.o.Auth.Verify(tok)
	if err != nil {
		writeJSON(w, http.StatusUnauthorized, verifyReply{Error: "invalid_token", Reason: auth.ReasonOf(err).String()})
		return
	}
	rep := verifyReply{UserID: claims.Subject, Name: claims.Name}
	if !claims.ExpiresAt.IsZero() {
		exp := claims.ExpiresAt.UTC()
		rep.ExpiresAt = &exp
	}
	writeJSON(w, http.StatusOK, rep)
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
		writeJSON(w, http.StatusBadRequest, verifyReply{Error: "invalid_sub", Reason: "sub must be 1 to 64 of A-Z a-z 0-9 . _ -"})
		return
	}
	name := r.URL.Query().Get("name")
	if len(name) > 100 {
		name = name[:100]
	}
	now := h.o.Now()
	tok, err := auth.Mint(h.o.DevSecret, "HS256", sub, h.o.DevTokenTTL, name, now)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, verifyReply{Error: "mint_failed"})
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
