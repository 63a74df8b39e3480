package web

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/httplimit"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

const dashKey = "dashboard-test-key-0123456789abcdef"

// dashStack is throng with the API and the dashboard on, as `throng serve
// --api-key` wires them, recording every URL the HTTP listener is asked for.
type dashStack struct {
	URL   string // the HTTP listener
	WS    string // ws://…/ws
	v     *auth.Verifier
	mu    sync.Mutex
	paths []string // request URIs, in order
}

func newDashStack(t *testing.T) *dashStack {
	t.Helper()
	v, err := auth.New(auth.Options{Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	var srv *server.Server
	var addr net.Addr
	var rooms *room.Table
	var ch *chat.Handler
	for range 20 {
		if srv, err = server.New(server.Options{Loops: 2, TickInterval: 10 * time.Millisecond, Auth: v, Subprotocols: []string{"throng.v1"}}); err != nil {
			t.Fatal(err)
		}
		rooms = room.New(srv.Loops(), room.Options{})
		ch = &chat.Handler{Rooms: rooms, Auth: v}
		ch.Rate = -1
		srv.Handle("/ws", ch)
		if addr, err = srv.Listen("127.0.0.1:0"); err == nil && browserSafe(addr) {
			break
		}
		srv.Close()
		srv = nil
	}
	if srv == nil {
		t.Fatalf("no browser-safe port: %v", err)
	}
	t.Cleanup(func() { srv.Close() })

	api := &chat.API{Key: dashKey, Chat: ch, Rooms: rooms, Server: srv}
	api.Dashboard = &chat.Dashboard{API: api, Interval: 250 * time.Millisecond}
	if err := api.Dashboard.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Dashboard.Close)
	mux := srv.HTTPHandler()
	if err := api.Register(mux); err != nil {
		t.Fatal(err)
	}
	mux.Handle("/", Handler(Options{WSAddr: addr.String(), Auth: v, Dashboard: true}))
	ds := &dashStack{WS: "ws://" + addr.String() + "/ws", v: v}
	rec := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ds.mu.Lock()
		ds.paths = append(ds.paths, r.URL.RequestURI())
		ds.mu.Unlock()
		httplimit.JSONErrors(mux).ServeHTTP(w, r)
	})
	hs := httptest.NewUnstartedServer(rec)
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
	ds.URL = hs.URL
	return ds
}

// dialChat connects user with gorilla/websocket, joins roomID and reads up to
// its joined.
func (ds *dashStack) dialChat(t *testing.T, user, roomID string) *websocket.Conn {
	t.Helper()
	tok, err := auth.Mint(testSecret, "", user, time.Hour, "", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := websocket.DefaultDialer.Dial(ds.WS+"?token="+tok, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	c.WriteJSON(map[string]string{"type": "join", "roomId": roomID, "userName": strings.ToUpper(user[:1]) + user[1:]})
	readUntil(t, c, "joined")
	return c
}

// readUntil reads messages until one of type typ, and returns it.
func readUntil(t *testing.T, c *websocket.Conn, typ string) map[string]any {
	t.Helper()
	for {
		_, b, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("waiting for %s: %v", typ, err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if m["type"] == typ {
			return m
		}
	}
}

func TestDashboard(t *testing.T) {
	browser := newBrowser(t)
	ds := newDashStack(t)
	p := open(t, browser, ds.URL+"/dashboard")
	p.wait(`!document.getElementById("login-panel").hidden && document.getElementById("board").hidden`, "the sign-in form")
	p.wait(`document.querySelector('link[rel=icon]').href.endsWith("/favicon.svg")`, "the favicon link")

	// A wrong key is refused, and nothing is kept.
	p.run(chromedp.SetValue("#key", "not-the-key", chromedp.ByQuery), chromedp.Click("#login", chromedp.ByQuery))
	p.waitText("#banner", "Wrong key: the server refused it.")
	p.wait(`document.getElementById("board").hidden && sessionStorage.getItem("throng.apiKey") === null`, "still signed out")
	p.screenshot("dashboard-wrong-key")

	// Two users in a room before signing in; more come after.
	alice := ds.dialChat(t, "alice", "ops")
	bob1 := ds.dialChat(t, "bob", "ops")

	p.run(chromedp.SetValue("#key", dashKey, chromedp.ByQuery), chromedp.Click("#login", chromedp.ByQuery))
	p.wait(`document.body.dataset.signedIn === "true" && !document.getElementById("board").hidden`, "signed in")
	p.waitText("#status", "Live")
	// It renders: every chart has its SVG, the live ones a line.
	p.wait(`document.querySelectorAll("figure.chart svg.plot").length === 8`, "eight charts")
	p.wait(`document.querySelectorAll("#c-conns path.series").length === 2 && document.querySelectorAll("#c-lag path.series").length === 2`, "lines")
	p.waitText("#t-conns", "2")
	p.waitText("#rooms", "ops")

	// It updates: new connections, a refused upgrade and traffic show up.
	var seq0 int
	p.eval(`Number(document.body.dataset.seq)`, &seq0)
	bob2 := ds.dialChat(t, "bob", "ops")
	ds.dialChat(t, "carol", "lobby")
	if _, resp, err := websocket.DefaultDialer.Dial(ds.WS, nil); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("dial without a token: %v", err)
	}
	for i := range 20 {
		alice.WriteJSON(map[string]string{"type": "chat", "roomId": "ops", "content": "tick " + string(rune('a'+i))})
	}
	p.waitText("#t-conns", "4")
	p.wait(fmt.Sprintf(`Number(document.body.dataset.seq) > %d`, seq0+2), "newer samples")
	var seq1 int
	p.eval(`Number(document.body.dataset.seq)`, &seq1)
	if seq1 <= seq0 {
		t.Fatalf("seq did not move: %d then %d", seq0, seq1)
	}
	p.wait(`[...document.querySelectorAll("#c-refused path.series")].some((e) => e.dataset.series === "unauthorized")`, "unauthorized among the refusals")
	p.wait(`[...document.querySelectorAll("#rooms tbody tr")].map((r) => r.cells[0].textContent + "=" + r.cells[1].textContent).join(",") === "ops=3,lobby=1"`, "largest rooms")
	p.wait(`document.getElementById("c-msgs").innerText.includes("deliveries")`, "the messages chart")
	p.screenshot("dashboard")

	// A room's members, and an action from there: remove alice from ops.
	p.run(chromedp.Click(`#rooms tbody tr:first-child button`, chromedp.ByQuery))
	p.waitText("#room-note", "3 members")
	p.waitText("#members", "alice")
	p.run(chromedp.Click(`#members tbody tr:first-child .row-actions button:first-child`, chromedp.ByQuery))
	p.waitText(`#members tbody tr:first-child .row-actions`, "Sure?")
	var first string
	p.eval(`document.querySelector("#members tbody tr:first-child td").textContent`, &first)
	p.run(chromedp.Click(`#members tbody tr:first-child .row-actions button:first-child`, chromedp.ByQuery))
	p.waitText("#action-result", "Done: remove "+first+" from #ops. ")
	p.screenshot("dashboard-room")

	// Disconnect bob with a code and reason of the operator's: both of his
	// connections see them.
	p.run(
		chromedp.SetValue(`#f-disconnect input[name=user]`, "bob", chromedp.ByQuery),
		chromedp.SetValue(`#f-disconnect input[name=code]`, "4001", chromedp.ByQuery),
		chromedp.SetValue(`#f-disconnect input[name=reason]`, "see you later", chromedp.ByQuery),
		chromedp.Click(`#f-disconnect button`, chromedp.ByQuery),
	)
	p.waitText("#action-result", "Done: disconnect bob. 2 connections ended.")
	for _, c := range []*websocket.Conn{bob1, bob2} {
		for {
			_, _, err := c.ReadMessage()
			if err == nil {
				continue
			}
			if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 4001 || ce.Text != "see you later" {
				t.Fatalf("bob's close: %v", err)
			}
			break
		}
	}
	p.waitText("#t-conns", "2")

	// Close a room: carol is told why, and so is a person on the chat page.
	tok, err := auth.Mint(testSecret, "", "dora", time.Hour, "", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	dora := open(t, browser, ds.URL+"/?room=lobby")
	dora.run(
		chromedp.SetValue("#name", "Dora", chromedp.ByQuery),
		chromedp.SetValue("#token", tok, chromedp.ByQuery),
		chromedp.Click("#join", chromedp.ByQuery),
	)
	dora.waitText("#members", "2 members")
	p.run(
		chromedp.SetValue(`#f-close input[name=room]`, "lobby", chromedp.ByQuery),
		chromedp.SetValue(`#f-close input[name=reason]`, "maintenance", chromedp.ByQuery),
		chromedp.Click(`#f-close button`, chromedp.ByQuery),
	)
	p.waitText("#action-result", "Done: close #lobby. 2 memberships ended.")
	dora.waitText("#banner", "You were removed from #lobby: maintenance.")
	dora.wait(`!document.getElementById("join-panel").hidden`, "Dora back at the form")

	// A reload keeps the tab signed in; signing out forgets the key.
	p.run(chromedp.Reload())
	p.wait(`document.body.dataset.signedIn === "true"`, "still signed in after a reload")
	p.run(chromedp.Click("#signout", chromedp.ByQuery))
	p.wait(`document.body.dataset.signedIn === "false" && sessionStorage.getItem("throng.apiKey") === null`, "signed out")

	// The key was never in a URL: not the page's, not any request's.
	var href string
	p.eval(`location.href`, &href)
	ds.mu.Lock()
	defer ds.mu.Unlock()
	for _, u := range append(ds.paths, href) {
		if strings.Contains(u, dashKey) {
			t.Fatalf("the key is in a URL: %s", u)
		}
	}
	if len(ds.paths) < 5 {
		t.Fatalf("requests: %v", ds.paths)
	}
}

// Without the API the page is not served, and says why.
func TestDashboardOff(t *testing.T) {
	rec := httptest.NewRecorder()
	Handler(Options{}).ServeHTTP(rec, httptest.NewRequest("GET", "/dashboard", nil))
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "--api-key") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	Handler(Options{Dashboard: true}).ServeHTTP(rec, httptest.NewRequest("GET", "/dashboard", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `id="login-form"`) ||
		!strings.Contains(rec.Header().Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("%d %v", rec.Code, rec.Header())
	}
}
