package web

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/gobwas/ws"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/history"
	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// The browser tests run the page and the client library in Debian's headless
// Chromium, driven over the DevTools protocol by chromedp, against a real
// throng server on loopback. Without Chromium they skip, except under CI,
// where .ci/run installs it and a skip would hide a regression.

// chromiumPath finds the browser: $CHROMIUM, then Debian's paths.
func chromiumPath() string {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	return ""
}

// missing skips the test, or fails it under CI, for a tool the test needs.
func missing(t *testing.T, what, install string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed; .ci/run installs it (%s)", what, install)
	}
	t.Skipf("%s is not installed, so the browser tests cannot run: %s", what, install)
}

// chromeUnsafePorts are ports Chromium refuses to connect to; a test server
// that lands on one (the CI widens the ephemeral range) listens again.
var chromeUnsafePorts = []int{1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566,
	6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080}

func browserSafe(addr net.Addr) bool {
	return !slices.Contains(chromeUnsafePorts, addr.(*net.TCPAddr).Port)
}

// wsServer is a throng server that a test can stop and start again on the
// same port, as a restart in production would.
type wsServer struct {
	t    *testing.T
	v    *auth.Verifier
	cfg  stackConfig
	Addr string

	mu  sync.Mutex
	srv *server.Server
}

func (w *wsServer) start(addr string) {
	w.t.Helper()
	for range 20 {
		// Compression on, as throng serve's default.
		o := server.Options{Loops: 2, TickInterval: 10 * time.Millisecond, Auth: w.v, Subprotocols: []string{"throng.v1"}, Compression: server.CompressionOn}
		if w.cfg.failClose {
			o.AuthFailure = server.AuthFailClose
		}
		s, err := server.New(o)
		if err != nil {
			w.t.Fatal(err)
		}
		chat := &chat.Handler{Rooms: room.New(s.Loops(), room.Options{}), Auth: w.v, Deflater: s.Deflater()}
		if w.cfg.chat != nil {
			w.cfg.chat(chat)
		}
		if w.cfg.gate != nil {
			w.cfg.gate.Handler = chat
			s.Handle("/ws", w.cfg.gate)
		} else {
			s.Handle("/ws", chat)
		}
		a, err := s.Listen(addr)
		if err == nil && addr == "127.0.0.1:0" && !browserSafe(a) {
			s.Close()
			continue
		}
		if err != nil {
			s.Close()
			if addr != "127.0.0.1:0" {
				time.Sleep(20 * time.Millisecond) // the old socket is still going away
				continue
			}
			w.t.Fatal(err)
		}
		w.mu.Lock()
		w.srv, w.Addr = s, a.String()
		w.mu.Unlock()
		return
	}
	w.t.Fatalf("could not listen on %s", addr)
}

// stop shuts the server down with close 1001 to every client.
func (w *wsServer) stop() {
	w.mu.Lock()
	s := w.srv
	w.srv = nil
	w.mu.Unlock()
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Shutdown(ctx)
}

// gate wraps the chat handler: it remembers the open connections, can close
// them from the server's side, and can turn new ones away (close 1013 before
// the greeting), so a test decides when a page gets back in.
type gate struct {
	*chat.Handler
	mu     sync.Mutex
	conns  []*server.Conn
	closed bool
}

func (g *gate) OnOpen(c *server.Conn) {
	g.mu.Lock()
	shut := g.closed
	if !shut {
		g.conns = append(g.conns, c)
	}
	g.mu.Unlock()
	if shut {
		c.CloseWith(1013, "try again later")
		return
	}
	g.Handler.OnOpen(c)
}

func (g *gate) OnClose(c *server.Conn, code ws.StatusCode, reason string) {
	g.mu.Lock()
	g.conns = slices.DeleteFunc(g.conns, func(o *server.Conn) bool { return o == c })
	g.mu.Unlock()
	g.Handler.OnClose(c, code, reason)
}

// kick closes, from the server, the connections opened after the first skip
// ones (1012, which a client retries), and shuts the gate or opens it.
func (g *gate) kick(skip int, shut bool) {
	g.mu.Lock()
	g.closed = shut
	conns := slices.Clone(g.conns[min(skip, len(g.conns)):])
	g.mu.Unlock()
	for _, c := range conns {
		c.Loop().Post(poller.FuncJob(func() { c.CloseWith(1012, "kicked by the test") }))
	}
}

func (g *gate) open() {
	g.mu.Lock()
	g.closed = false
	g.mu.Unlock()
}

// stackConfig says how to build a stack.
type stackConfig struct {
	auth      string              // "dev" (as make run), "token" or "none"
	reasons   bool                // /token/verify says why, as under --dev
	failClose bool                // refused tokens: upgrade, then close 1008
	chat      func(*chat.Handler) // adjusts the /ws handler
	gate      *gate               // if set, wraps the /ws handler
	routes    map[string]http.Handler
}

// stack is throng as `throng serve` wires it: the WebSocket listener and, on
// its own port, the HTTP listener with web's Handler at /.
type stack struct {
	ws  *wsServer
	URL string // the HTTP listener's base URL
}

func newStack(t *testing.T, cfg stackConfig) *stack {
	t.Helper()
	ws := &wsServer{t: t, cfg: cfg}
	o := Options{}
	if cfg.auth != "none" {
		// A short leeway, so a token minted to expire does so within the
		// test: the live connection lasts until exp + leeway.
		v, err := auth.New(auth.Options{Secret: testSecret, Leeway: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ws.v = v
		o.Auth = ws.v
	}
	if cfg.auth == "dev" {
		o.DevSecret = testSecret
	}
	o.Reasons = cfg.reasons || cfg.auth == "dev"
	ws.start("127.0.0.1:0")
	t.Cleanup(ws.stop)
	o.WSAddr = ws.Addr

	mux := http.NewServeMux()
	mux.Handle("/", Handler(o))
	for p, h := range cfg.routes {
		mux.Handle(p, h)
	}
	hs := httptest.NewUnstartedServer(mux)
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if browserSafe(ln.Addr()) {
			hs.Listener.Close()
			hs.Listener = ln
			break
		}
		ln.Close()
	}
	hs.Start()
	t.Cleanup(hs.Close)
	return &stack{ws: ws, URL: hs.URL}
}

// wsURL is the chat endpoint.
func (s *stack) wsURL() string { return "ws://" + s.ws.Addr + "/ws" }

func (s *stack) token(t *testing.T, sub string, ttl time.Duration) string {
	t.Helper()
	tok, err := auth.Mint(testSecret, "", sub, ttl, "", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// newBrowser starts one headless Chromium for a test and its subtests.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		missing(t, "chromium", "apt-get install -y chromium")
	}
	// A fresh profile, removed by hand: Chromium's helper processes may still
	// be writing to it for a moment after the browser exits, which would fail
	// t.TempDir's cleanup.
	profile, err := os.MkdirTemp("", "throng-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1000, 760),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc() // waits for the browser process to exit
		for i := 0; os.RemoveAll(profile) != nil && i < 50; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	})
	if err := chromedp.Run(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return bctx
}

// page is one browser tab.
type page struct {
	t   *testing.T
	ctx context.Context

	mu   sync.Mutex
	errs []string // uncaught exceptions in the page
}

// open loads url in a new tab, which closes when the test ends. Uncaught
// exceptions in it fail the test.
func open(t *testing.T, browser context.Context, url string) *page {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	// The first Run creates the tab, tied to the context it is given: that
	// must be the tab's own, not a timeout derived from it.
	if err := chromedp.Run(ctx); err != nil {
		cancel()
		t.Fatalf("new tab: %v", err)
	}
	p := &page{t: t, ctx: ctx}
	chromedp.ListenTarget(ctx, func(ev any) {
		if e, ok := ev.(*runtime.EventExceptionThrown); ok {
			p.mu.Lock()
			p.errs = append(p.errs, e.ExceptionDetails.Error())
			p.mu.Unlock()
		}
	})
	t.Cleanup(func() {
		cancel()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, e := range p.errs {
			t.Errorf("uncaught exception in %s: %s", url, e)
		}
	})
	p.run(chromedp.Navigate(url))
	p.wait(`document.body && document.body.dataset.ready === "true"`, "page ready")
	return p
}

func (p *page) run(actions ...chromedp.Action) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Run(ctx, actions...); err != nil {
		p.t.Fatalf("browser: %v", err)
	}
}

// wait polls a JavaScript expression until it is truthy.
func (p *page) wait(expr, what string) {
	p.t.Helper()
	var ok bool
	ctx, cancel := context.WithTimeout(p.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Run(ctx, chromedp.Poll(expr, &ok, chromedp.WithPollingInterval(20*time.Millisecond))); err != nil {
		p.t.Fatalf("waiting for %s (%s): %v\npage text:\n%s", what, expr, err, p.text("body"))
	}
}

// eval runs JavaScript, awaiting a promise, and decodes its JSON result.
func (p *page) eval(expr string, res any) {
	p.t.Helper()
	p.run(chromedp.Evaluate(expr, res, func(ep *runtime.EvaluateParams) *runtime.EvaluateParams {
		return ep.WithAwaitPromise(true)
	}))
}

func (p *page) text(sel string) string {
	var s string
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	chromedp.Run(ctx, chromedp.Evaluate(fmt.Sprintf(`document.querySelector(%s)?.innerText ?? ""`, js(sel)), &s))
	return s
}

// waitText waits until the element's visible text contains want.
func (p *page) waitText(sel, want string) {
	p.t.Helper()
	p.wait(fmt.Sprintf(`(document.querySelector(%s)?.innerText ?? "").includes(%s)`, js(sel), js(want)),
		fmt.Sprintf("%q in %s", want, sel))
}

// js quotes s as a JavaScript string literal.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// screenshot saves the tab as a PNG under the artifacts directory:
// $ARTIFACTS_DIR/web, or throng-artifacts/web in the temporary directory.
func (p *page) screenshot(name string) {
	p.t.Helper()
	var png []byte
	p.run(chromedp.FullScreenshot(&png, 100))
	dir := os.Getenv("ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "throng-artifacts")
	}
	dir = filepath.Join(dir, "web")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.t.Fatal(err)
	}
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot: %s", path)
}

// joinRoom fills in the join form as a person would and waits for the room.
func (p *page) joinRoom(name, roomID string) {
	p.t.Helper()
	p.run(
		chromedp.WaitVisible("#join-form", chromedp.ByQuery),
		chromedp.SetValue("#name", name, chromedp.ByQuery),
		chromedp.SetValue("#room", roomID, chromedp.ByQuery),
		chromedp.Click("#join", chromedp.ByQuery),
	)
	p.wait(`!document.getElementById("chat-panel").hidden`, name+" in the room")
	p.waitText("#status", "Connected")
}

// say types a message and sends it.
func (p *page) say(text string) {
	p.t.Helper()
	p.run(
		chromedp.WaitEnabled("#message", chromedp.ByQuery),
		chromedp.SendKeys("#message", text, chromedp.ByQuery),
		chromedp.Click("#send", chromedp.ByQuery),
	)
}

// TestBrowser runs the demo page and client.js in headless Chromium. One
// browser serves every subtest; each opens its own tabs and servers.
func TestBrowser(t *testing.T) {
	browser := newBrowser(t)

	t.Run("two pages chat", func(t *testing.T) {
		s := newStack(t, stackConfig{auth: "dev"})
		alice := open(t, browser, s.URL+"/")
		bob := open(t, browser, s.URL+"/")
		alice.waitText("#auth-note", "Dev mode")
		alice.screenshot("join-form")
		alice.joinRoom("Alice", "lobby")
		alice.waitText("#members", "1 member")
		alice.waitText("#messages", "You joined #lobby as Alice")

		bob.joinRoom("Bob", "lobby")
		bob.waitText("#members", "2 members")
		alice.waitText("#messages", "Bob joined")
		alice.waitText("#members", "2 members")

		bob.say("Hello Alice, it is Bob.")
		alice.waitText("#messages", "Hello Alice, it is Bob.")
		bob.waitText("#messages", "Hello Alice, it is Bob.")
		alice.say("Hi Bob! <b>not bold</b>")
		bob.waitText("#messages", "Hi Bob! <b>not bold</b>") // shown as text, not markup
		alice.waitText("#messages", "Hi Bob!")
		alice.screenshot("chat-two-pages")

		bob.run(chromedp.Click("#leave", chromedp.ByQuery))
		alice.waitText("#messages", "Bob left")
		alice.waitText("#members", "1 member")
		bob.wait(`!document.getElementById("join-panel").hidden`, "Bob back at the form")
		bob.waitText("#status", "Not connected")
		alice.screenshot("chat-after-leave")
	})

	t.Run("compression with Chromium's offer", func(t *testing.T) {
		s := newStack(t, stackConfig{auth: "dev"})
		alice := open(t, browser, s.URL+"/")
		bob := open(t, browser, s.URL+"/")
		alice.joinRoom("Alice", "deflate")
		bob.joinRoom("Bob", "deflate")
		alice.waitText("#members", "2 members")
		s.ws.mu.Lock()
		srv := s.ws.srv
		s.ws.mu.Unlock()
		if st := srv.Stats(); st.DeflateOpen != 2 {
			t.Fatalf("%d of %d pages negotiated permessage-deflate, want 2", st.DeflateOpen, st.Open)
		}
		long := strings.TrimSpace(strings.Repeat("Chromium inflates what the server compressed once. ", 8))
		alice.say(long)
		bob.waitText("#messages", long)
		alice.waitText("#messages", long)
		// The server counts a message after writing it, perhaps after the
		// page showed it.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			st := srv.Stats()
			if st.DeflateMsgsOut >= 2 && st.DeflateMsgsIn >= 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("compressed: %d sent, %d received; want the message compressed both ways", st.DeflateMsgsOut, st.DeflateMsgsIn)
			}
		}
		// What the browser itself reports for its own offer.
		tok, err := auth.Mint(testSecret, "", "probe", time.Hour, "", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		var ext string
		alice.eval(fmt.Sprintf(`new Promise(r => { const w = new WebSocket(%s); w.onopen = () => { r(w.extensions); w.close(); }; w.onerror = () => r("error"); })`,
			js("ws://"+s.ws.Addr+"/ws?token="+tok)), &ext)
		if ext != "permessage-deflate; server_no_context_takeover; client_no_context_takeover" {
			t.Fatalf("WebSocket.extensions = %q", ext)
		}
	})

	t.Run("server restart: pages reconnect and rejoin", func(t *testing.T) {
		s := newStack(t, stackConfig{auth: "dev"})
		alice := open(t, browser, s.URL+"/")
		bob := open(t, browser, s.URL+"/")
		alice.joinRoom("Alice", "restart")
		bob.joinRoom("Bob", "restart")
		alice.waitText("#members", "2 members")

		addr := s.ws.Addr
		s.ws.stop() // close 1001 "server shutting down" to both pages
		for _, p := range []*page{alice, bob} {
			p.waitText("#banner", "Disconnected (server going away: server shutting down). Reconnecting in")
			p.waitText("#status", "Reconnecting")
		}
		alice.screenshot("restart-reconnecting")
		s.ws.start(addr)

		for _, p := range []*page{alice, bob} {
			p.waitText("#messages", "Rejoined #restart")
			p.waitText("#messages", "Reconnected")
			p.waitText("#status", "Connected")
			p.wait(`document.getElementById("banner").hidden`, "banner cleared")
		}
		alice.waitText("#members", "2 members")
		alice.say("Still here after the restart")
		bob.waitText("#messages", "Still here after the restart")
		alice.screenshot("restart-rejoined")
	})

	t.Run("a page that was offline recovers what it missed", func(t *testing.T) {
		g := &gate{}
		s := newStack(t, stackConfig{auth: "dev", gate: g, chat: func(h *chat.Handler) {
			h.History = history.New(history.Options{})
		}})
		alice := open(t, browser, s.URL+"/")
		alice.joinRoom("Alice", "blip")
		alice.say("said before Bob came")
		alice.waitText("#messages", "said before Bob came")
		bob := open(t, browser, s.URL+"/")
		bob.joinRoom("Bob", "blip")
		// The room's recent history is shown on join.
		bob.waitText("#messages", "said before Bob came")
		bob.waitText("#messages", "recent history (1 messages)")
		alice.say("hello Bob")
		bob.waitText("#messages", "hello Bob")

		g.kick(1, true) // Bob's connection, and Bob is kept out
		bob.waitText("#status", "Reconnecting")
		alice.waitText("#messages", "Bob left")
		for i := 1; i <= 5; i++ {
			alice.say(fmt.Sprintf("missed %d", i))
		}
		alice.waitText("#messages", "missed 5")
		g.open()
		bob.waitText("#messages", "Recovered 5 messages")
		bob.waitText("#status", "Connected")
		var texts []string
		bob.eval(`[...document.querySelectorAll("#messages li.msg .text")].map((e) => e.textContent)`, &texts)
		want := []string{"said before Bob came", "hello Bob", "missed 1", "missed 2", "missed 3", "missed 4", "missed 5"}
		if !slices.Equal(texts, want) {
			t.Fatalf("Bob's page shows %q, want %q", texts, want)
		}
		bob.screenshot("recovered-after-offline")
	})

	t.Run("invalid token shows an error", func(t *testing.T) {
		// Without --dev the server does not say why.
		quiet := newStack(t, stackConfig{auth: "token"})
		q := open(t, browser, quiet.URL+"/?room=private")
		q.wait(`!document.getElementById("token-field").hidden`, "token field")
		q.run(
			chromedp.SetValue("#name", "Eve", chromedp.ByQuery),
			chromedp.SetValue("#token", "not-a-token", chromedp.ByQuery),
			chromedp.Click("#join", chromedp.ByQuery),
		)
		q.waitText("#banner", "Bad token: the server refuses it.")

		s := newStack(t, stackConfig{auth: "token", reasons: true})
		p := open(t, browser, s.URL+"/?room=private")
		p.wait(`!document.getElementById("token-field").hidden`, "token field")
		expired, _ := auth.Mint(testSecret, "", "eve", time.Second, "", time.Now().Add(-time.Hour))
		wrongKey, _ := auth.Mint([]byte("some-other-secret-0123456789abcd"), "", "eve", time.Hour, "", time.Time{})
		for _, c := range []struct{ token, want string }{
			{"not-a-token", "Bad token: it is not a valid JWT."},
			{expired, "Bad token: it has expired."},
			{wrongKey, "Bad token: its signature does not match this server's key."},
		} {
			p.run(
				chromedp.SetValue("#name", "Eve", chromedp.ByQuery),
				chromedp.SetValue("#token", c.token, chromedp.ByQuery),
				chromedp.Click("#join", chromedp.ByQuery),
			)
			p.waitText("#banner", c.want)
			p.wait(`document.getElementById("chat-panel").hidden && !document.getElementById("join").disabled`, "form back")
		}
		p.screenshot("invalid-token")

		// The right token gets in.
		p.run(chromedp.SetValue("#token", s.token(t, "eve", time.Hour), chromedp.ByQuery), chromedp.Click("#join", chromedp.ByQuery))
		p.wait(`!document.getElementById("chat-panel").hidden`, "joined with a good token")
		p.wait(`document.getElementById("banner").hidden`, "banner cleared")
	})

	t.Run("rate limited shows an error", func(t *testing.T) {
		s := newStack(t, stackConfig{auth: "dev", chat: func(h *chat.Handler) { h.Rate, h.Burst, h.Ban = 0.01, 3, time.Minute }})
		p := open(t, browser, s.URL+"/")
		p.joinRoom("Speedy", "fast")
		// The join and the page's members request spend two of the burst.
		for i := range 2 {
			p.say(fmt.Sprintf("message %d", i))
		}
		p.waitText("#banner", "Rate limited")
		p.screenshot("rate-limited")
	})

	t.Run("client.js", func(t *testing.T) {
		s := newStack(t, stackConfig{auth: "dev"})
		p := open(t, browser, s.URL+"/")

		// Full jitter: the lowest draw waits nothing, the highest the ceiling,
		// and Math.random's stay within [0, ceiling].
		var got struct {
			Low, High []int
			InBounds  bool
			Retry     []bool
		}
		p.eval(`(async () => {
			const m = await import("/client.js");
			const attempts = [1, 2, 3, 4, 7, 12];
			let inBounds = true;
			for (let i = 0; i < 5000; i++) {
				const a = 1 + (i % 10), d = m.backoffDelay(a, 100, 5000);
				if (d < 0 || d > m.backoffCeiling(a, 100, 5000)) inBounds = false;
			}
			return {
				Low: attempts.map((a) => m.backoffDelay(a, 500, 30000, () => 0)),
				High: attempts.map((a) => m.backoffDelay(a, 500, 30000, () => 1)),
				InBounds: inBounds,
				Retry: [1000, 1001, 1006, 1008, 1011, 1012].map(m.retryable),
			};
		})()`, &got)
		if !slices.Equal(got.Low, []int{0, 0, 0, 0, 0, 0}) || !slices.Equal(got.High, []int{500, 1000, 2000, 4000, 30000, 30000}) || !got.InBounds {
			t.Fatalf("jitter: %+v", got)
		}
		if !slices.Equal(got.Retry, []bool{false, true, true, false, true, true}) {
			t.Fatalf("retryable: %v", got.Retry)
		}

		// Refresh ahead of exp: a token with 3 s left is replaced through the
		// refresh message well before it runs out.
		short := s.token(t, "rita", 3*time.Second)
		var refreshed bool
		p.eval(fmt.Sprintf(`(async () => {
			const m = await import("/client.js");
			const c = new m.WebSocketClient(%s, %s, {
				refreshBefore: 2500,
				refreshToken: async () => (await (await fetch("/dev/token?sub=rita")).json()).token,
			});
			const done = new Promise((resolve) => { c.onRefreshed = () => resolve(c.token !== %[2]s); });
			await c.connect();
			const ok = await done;
			c.disconnect();
			return ok;
		})()`, js(s.wsURL()), js(short)), &refreshed)
		if !refreshed {
			t.Fatal("client.js did not install the refreshed token")
		}

		// token_expired: the server closes 1008, and with a refreshToken hook
		// the client comes back as the same user with a new token and rejoins.
		expiring := s.token(t, "tess", time.Second)
		var back struct {
			States []string
			Joined int
			Same   bool
		}
		p.eval(fmt.Sprintf(`(async () => {
			const m = await import("/client.js");
			const c = new m.WebSocketClient(%s, %s, {
				refreshBefore: -60000, // never ahead of time: let it expire
				reconnectDelay: 50,
				refreshToken: async () => (await (await fetch("/dev/token?sub=tess")).json()).token,
			});
			const states = [];
			let joined = 0;
			const rejoined = new Promise((resolve) => {
				c.onJoined = () => { if (++joined === 2) resolve(); };
			});
			c.addEventListener("statechange", (e) => states.push(e.detail.state + (e.detail.code ? ":" + e.detail.code : "")));
			await c.connect();
			c.join("night", "Tess");
			await rejoined;
			const same = c.userId === "tess" && c.token !== %[2]s;
			c.disconnect();
			return { States: states, Joined: joined, Same: same };
		})()`, js(s.wsURL()), js(expiring)), &back)
		if !slices.Contains(back.States, "reconnecting:1008") || back.Joined != 2 || !back.Same {
			t.Fatalf("after token_expired: %+v", back)
		}

		// A close 1008 without a way to get a new token is final: no reconnect.
		fc := newStack(t, stackConfig{auth: "token", failClose: true})
		var final struct {
			States []string
			Err    string
		}
		p.eval(fmt.Sprintf(`(async () => {
			const m = await import("/client.js");
			const c = new m.WebSocketClient(%s, "not-a-token", { reconnectDelay: 10 });
			const states = [];
			c.addEventListener("statechange", (e) => states.push(e.detail.state + (e.detail.code ? ":" + e.detail.code + " " + e.detail.reason : "")));
			let err = "";
			try { await c.connect(); } catch (e) { err = e.message; }
			await new Promise((r) => setTimeout(r, 300));
			return { States: states, Err: err };
		})()`, js(fc.wsURL())), &final)
		if !slices.Equal(final.States, []string{"connecting", "closed:1008 Invalid token"}) || !strings.Contains(final.Err, "1008") {
			t.Fatalf("after a 1008: %+v", final)
		}
	})

	t.Run("seed client works unchanged", func(t *testing.T) {
		compiled := compileSeed(t)
		s := newStack(t, stackConfig{auth: "dev", routes: map[string]http.Handler{
			"GET /seed.js": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/javascript")
				w.Write(compiled)
			}),
			"GET /seed.html": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				w.Write([]byte(seedPage))
			}),
		}})
		p := open(t, browser, s.URL+"/seed.html")
		for _, who := range []string{"Alice", "Bob"} {
			var ok bool
			p.eval(fmt.Sprintf(`seedRun(%s, %s, %s)`, js(who), js(s.wsURL()), js(s.token(t, strings.ToLower(who), time.Hour))), &ok)
			if !ok {
				t.Fatalf("seed client %s did not connect", who)
			}
		}
		p.wait(`seedLog.some(([who, ev, d]) => who === "Alice" && ev === "user-joined" && d.userName === "Bob" && d.userCount === 2)`,
			"Alice's onUserJoined for Bob")
		p.eval(`seedClients.Bob.send({ type: "chat", roomId: "general", content: "hello from the seed client" }), true`, nil)
		for _, who := range []string{"Alice", "Bob"} {
			p.wait(fmt.Sprintf(`seedLog.some(([who, ev, d]) => who === %s && ev === "message" && d.userName === "Bob" && d.content === "hello from the seed client")`, js(who)),
				who+"'s onMessage")
		}
		p.eval(`seedClients.Alice.send({ type: "chat", roomId: "nowhere", content: "x" }), true`, nil)
		p.wait(`seedLog.some(([who, ev, d]) => who === "Alice" && ev === "error" && d.code === "not_in_room" && d.message === "Not in this room")`,
			"Alice's onError")
		p.eval(`seedClients.Bob.disconnect(), true`, nil)
		p.wait(`seedLog.some(([who, ev, d]) => who === "Alice" && ev === "user-left" && d.userName === "Bob" && d.userCount === 1)`,
			"Alice's onUserLeft for Bob")
		p.eval(`seedClients.Alice.disconnect(), true`, nil)
	})
}

// seedPage runs the seed's client the way its own usage example does.
const seedPage = `<!doctype html>
<meta charset="utf-8">
<title>seed client</title>
<script type="module">
import { WebSocketClient } from "/seed.js";
window.seedLog = [];
window.seedClients = {};
window.seedRun = async (who, url, token) => {
  const client = new WebSocketClient(url, token);
  client.onMessage = (data) => seedLog.push([who, "message", data]);
  client.onUserJoined = (data) => seedLog.push([who, "user-joined", data]);
  client.onUserLeft = (data) => seedLog.push([who, "user-left", data]);
  client.onError = (data) => seedLog.push([who, "error", data]);
  await client.connect();
  client.send({ type: "join", roomId: "general", userName: who });
  seedClients[who] = client;
  return true;
};
document.body.dataset.ready = "true";
</script>
`

// compileSeed compiles the seed's WebSocketClient with esbuild, as it stands.
// The seed's code block ends with a usage example that connects to a fixed
// ws://localhost:3000 at import time; the class is compiled without it, and
// seedPage repeats that example against the test server.
func compileSeed(t *testing.T) []byte {
	t.Helper()
	esbuild := filepath.Join("testdata", "node_modules", ".bin", "esbuild")
	if _, err := os.Stat(esbuild); err != nil {
		if esbuild, err = exec.LookPath("esbuild"); err != nil {
			missing(t, "esbuild", "npm ci --prefix web/testdata")
		}
	}
	src := seedClientSource(t)
	i := strings.Index(src, "\n// Usage\n")
	if i < 0 {
		t.Fatal("the seed client's usage example is gone; update compileSeed")
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "websocket.ts")
	if err := os.WriteFile(in, []byte(src[:i+1]), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "websocket.js")
	cmd := exec.Command(esbuild, in, "--format=esm", "--target=es2020", "--outfile="+out, "--log-level=warning")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("esbuild: %v\n%s", err, b)
	}
	js, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(js), "WebSocketClient") {
		t.Fatalf("esbuild output lacks the class:\n%s", js)
	}
	return js
}
