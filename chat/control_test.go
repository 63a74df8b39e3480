package chat

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/server"
)

// startControlAPI serves the API, with its log in logs, for a chat that
// requires tokens, so that several connections can share a user id.
func startControlAPI(t *testing.T, logs *opsLog) *apiServer {
	t.Helper()
	ts := startAuthServer(t, server.Options{}, unlimitedChat)
	mux := ts.HTTPHandler()
	api := &API{Key: testAPIKey, Chat: ts.Chat, Rooms: ts.Rooms, Server: ts.Server,
		Logger: slog.New(slog.NewTextHandler(logs, nil))}
	if err := api.Register(mux); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return &apiServer{Server: hs, ts: ts}
}

// dialUser connects as user (with a token) and reads the greeting.
func dialUser(t *testing.T, ts *testServer, user string) *chatPeer {
	t.Helper()
	p := &chatPeer{t: t, c: dial(t, ts.URL("/ws?token="+ts.token(user, time.Hour)), nil)}
	p.id = p.expect("connected").UserID
	return p
}

type actionBody struct {
	Action   string `json:"action"`
	User     string `json:"user"`
	Room     string `json:"room"`
	Affected int    `json:"affected"`
	Partial  *bool  `json:"partial"`
}

func TestAPIDisconnectUser(t *testing.T) {
	var logs opsLog
	as := startControlAPI(t, &logs)
	a1, a2 := dialUser(t, as.ts, "alice"), dialUser(t, as.ts, "alice")
	bob := dialUser(t, as.ts, "bob")
	bob.join("r", "Bob", 1)
	a1.join("r", "Alice", 2)
	bob.expect("user-joined")

	var res actionBody
	resp := as.do(t, "POST", "/api/users/alice/disconnect", testAPIKey, `{"code":4001,"reason":"banned for spam"}`, &res)
	if resp.StatusCode != http.StatusOK || res.Affected != 2 || res.Action != "disconnect" || res.User != "alice" || res.Partial != nil {
		t.Fatalf("disconnect: %d %+v", resp.StatusCode, res)
	}
	// Both of alice's connections see the operator's code and reason.
	for _, p := range []*chatPeer{a1, a2} {
		if ce := expectClose(t, p.c, 4001); ce.Text != "banned for spam" {
			t.Fatalf("close reason %q", ce.Text)
		}
	}
	// Bob stays, and hears that alice left the room.
	if m := bob.expect("user-left"); m.UserID != "alice" || m.UserCount != 1 {
		t.Fatalf("bob got %s", m.raw)
	}
	bob.send(`{"type":"ping"}`)
	bob.expect("pong")
	if got := as.ts.Stats().Closes["operator"]; got != 2 {
		t.Errorf("closes[operator] = %d, want 2", got)
	}
	// The action is logged with the caller's key id, and never the key.
	log := logs.String()
	if !strings.Contains(log, "operator action") || !strings.Contains(log, "key_id="+KeyID(testAPIKey)) ||
		!strings.Contains(log, "user=alice") || !strings.Contains(log, "affected=2") || strings.Contains(log, testAPIKey) {
		t.Errorf("log: %s", log)
	}

	// The defaults: 1008 with a reason; a user with no connection is 0.
	a3 := dialUser(t, as.ts, "alice")
	as.do(t, "POST", "/api/users/alice/disconnect", testAPIKey, "", &res)
	if ce := expectClose(t, a3.c, 1008); ce.Text != DefaultDisconnectReason || res.Affected != 1 {
		t.Fatalf("default close %q, affected %d", ce.Text, res.Affected)
	}
	if as.do(t, "POST", "/api/users/nobody/disconnect", testAPIKey, "", &res); res.Affected != 0 {
		t.Fatalf("nobody: affected %d", res.Affected)
	}
}

func TestAPIActionsRefuseBadInput(t *testing.T) {
	var logs opsLog
	as := startControlAPI(t, &logs)
	p := dialUser(t, as.ts, "carol")
	cases := []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"POST", "/api/users/carol/disconnect", `{"code":1006}`, 400, "invalid_message"},
		{"POST", "/api/users/carol/disconnect", `{"code":1002}`, 400, "invalid_message"},
		{"POST", "/api/users/carol/disconnect", `{"code":0}`, 400, "invalid_message"},
		{"POST", "/api/users/carol/disconnect", `{"code":5000}`, 400, "invalid_message"},
		{"POST", "/api/users/carol/disconnect", `{"reason":"` + strings.Repeat("x", 124) + `"}`, 400, "invalid_message"},
		{"POST", "/api/users/carol/disconnect", `{"code":`, 400, "invalid_json"},
		{"DELETE", "/api/rooms/r/members/carol", `{"code":4000}`, 400, "invalid_message"},
		{"DELETE", "/api/rooms/" + strings.Repeat("r", 129), "", 400, "invalid_room"},
		{"POST", "/api/users/" + strings.Repeat("u", 257) + "/disconnect", "", 400, "invalid_user"},
		{"POST", "/api/users/carol/disconnect", "", 401, "unauthorized"}, // no key: below
	}
	for i, tc := range cases {
		key := testAPIKey
		if tc.status == 401 {
			key = "wrong"
		}
		var e apiErrorBody
		resp := as.do(t, tc.method, tc.path, key, tc.body, &e)
		if resp.StatusCode != tc.status || e.Error.Code != tc.code {
			t.Errorf("case %d %s %s %s: %d %+v, want %d %s", i, tc.method, tc.path, tc.body, resp.StatusCode, e, tc.status, tc.code)
		}
	}
	// carol is still connected after all that.
	p.send(`{"type":"ping"}`)
	p.expect("pong")
	if strings.Contains(logs.String(), "operator action") {
		t.Errorf("a refused action was logged as done: %s", logs.String())
	}
}

func TestAPIRemoveMember(t *testing.T) {
	var logs opsLog
	as := startControlAPI(t, &logs)
	d1, d2 := dialUser(t, as.ts, "dave"), dialUser(t, as.ts, "dave")
	erin := dialUser(t, as.ts, "erin")
	erin.join("r", "Erin", 1)
	d1.join("r", "Dave", 2)
	erin.expect("user-joined")
	d2.join("other", "Dave", 1)
	d1.join("other", "Dave", 2)
	d2.expect("user-joined")

	var res actionBody
	resp := as.do(t, "DELETE", "/api/rooms/r/members/dave", testAPIKey, `{"reason":"off topic"}`, &res)
	if resp.StatusCode != http.StatusOK || res.Affected != 1 || res.Room != "r" {
		t.Fatalf("remove: %d %+v", resp.StatusCode, res)
	}
	if m := d1.expect("left"); m.RoomID != "r" || !strings.Contains(m.raw, `"reason":"off topic"`) {
		t.Fatalf("dave got %s", m.raw)
	}
	if m := erin.expect("user-left"); m.UserID != "dave" || m.UserCount != 1 {
		t.Fatalf("erin got %s", m.raw)
	}
	// dave is still connected and still in "other"; sending to "r" is refused.
	d1.send(`{"type":"chat","roomId":"r","content":"hi"}`)
	if m := d1.expect("error"); m.Code != "not_in_room" {
		t.Fatalf("chat after removal: %s", m.raw)
	}
	d1.send(`{"type":"chat","roomId":"other","content":"still here"}`)
	d1.expect("message")
	d2.expect("message")
	// Removing someone not in the room affects nobody; an unknown room too.
	if as.do(t, "DELETE", "/api/rooms/r/members/dave", testAPIKey, "", &res); res.Affected != 0 {
		t.Fatalf("second removal affected %d", res.Affected)
	}
	if as.do(t, "DELETE", "/api/rooms/nowhere/members/dave", testAPIKey, "", &res); res.Affected != 0 {
		t.Fatalf("removal from no room affected %d", res.Affected)
	}
	if !strings.Contains(logs.String(), "action=remove") {
		t.Errorf("log: %s", logs.String())
	}
}

func TestAPICloseRoom(t *testing.T) {
	var logs opsLog
	as := startControlAPI(t, &logs)
	var ps []*chatPeer
	for i, u := range []string{"f1", "f2", "f3", "f4"} {
		p := dialUser(t, as.ts, u)
		p.join("doomed", u, i+1)
		for _, q := range ps {
			q.expect("user-joined")
		}
		ps = append(ps, p)
	}
	ps[0].join("safe", "f1", 1)

	var res actionBody
	if resp := as.do(t, "DELETE", "/api/rooms/doomed", testAPIKey, "", &res); resp.StatusCode != http.StatusOK || res.Affected != 4 {
		t.Fatalf("close: %d %+v", resp.StatusCode, res)
	}
	for _, p := range ps {
		// Each is told once, with the reason, and hears no user-left storm.
		if m := p.expect("left"); m.RoomID != "doomed" || !strings.Contains(m.raw, ReasonRoomClosed) {
			t.Fatalf("%s got %s", p.id, m.raw)
		}
		p.send(`{"type":"ping"}`)
		p.expect("pong")
	}
	if n := as.ts.Rooms.Count("doomed"); n != 0 {
		t.Fatalf("room still has %d members", n)
	}
	if n := as.ts.Rooms.Count("safe"); n != 1 {
		t.Fatalf("another room lost its member: %d", n)
	}
	var e apiErrorBody
	if resp := as.do(t, "GET", "/api/rooms/doomed", testAPIKey, "", &e); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("closed room still listed: %d", resp.StatusCode)
	}
	// Members may join again.
	ps[1].join("doomed", "f2", 1)
}

// TestCloseUserRefusesTransportCodes checks server.CloseUser refuses codes
// that describe the transport rather than a decision, and that an allowed one
// reaches an independent client.
func TestCloseUserRefusesTransportCodes(t *testing.T) {
	ts := startAuthServer(t, server.Options{}, unlimitedChat)
	p := dialUser(t, ts, "gina")
	for _, code := range []int{999, 1002, 1005, 1006, 1015, 2999, 5000} {
		if _, err := ts.CloseUser(t.Context(), "gina", code, "x"); err == nil {
			t.Errorf("CloseUser accepted code %d", code)
		}
	}
	n, err := ts.CloseUser(t.Context(), "gina", 1000, "bye")
	if err != nil || n != 1 {
		t.Fatalf("CloseUser = %d, %v", n, err)
	}
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = p.c.ReadMessage()
	if !websocket.IsCloseError(err, 1000) {
		t.Fatalf("read after CloseUser: %v", err)
	}
}
