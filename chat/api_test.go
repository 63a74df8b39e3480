package chat

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/server"
)

const testAPIKey = "test-api-key"

// apiServer serves the API for ts's chat on an httptest server, with a fixed
// clock for published messages.
type apiServer struct {
	*httptest.Server
	ts  *testServer
	now time.Time
}

func startAPI(t *testing.T) *apiServer {
	t.Helper()
	return startAPIWith(t, unlimitedChat)
}

// startAPIWith is startAPI with the chat configured by configure.
func startAPIWith(t *testing.T, configure func(*Handler)) *apiServer {
	t.Helper()
	ts := startChatServer(t, server.Options{}, configure)
	now := time.Date(2030, 1, 2, 3, 4, 5, 678_000_000, time.UTC)
	mux := ts.HTTPHandler()
	// Its clock stands still, so the wrong-key throttle (tested on its own in
	// TestAPIWrongKeysThrottled) is off for the many wrong keys tried here.
	api := &API{Key: testAPIKey, Chat: ts.Chat, Rooms: ts.Rooms, Now: func() time.Time { return now }, KeyFailureBurst: -1}
	if err := api.Register(mux); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return &apiServer{Server: hs, ts: ts, now: now}
}

// do sends a request with key as the bearer token ("" for none) and decodes a
// JSON answer into out, if not nil.
func (as *apiServer) do(t *testing.T, method, path, key, body string, out any) *http.Response {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, as.URL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := as.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusMethodNotAllowed && ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp
}

type apiErrorBody struct {
	Error struct{ Code, Message string }
}

type roomList struct {
	Rooms []struct {
		ID      string `json:"id"`
		Members int    `json:"members"`
	} `json:"rooms"`
	Next *string `json:"next"`
}

func (l roomList) String() string {
	var b strings.Builder
	for _, r := range l.Rooms {
		b.WriteString(r.ID + ":" + strings.Repeat("*", r.Members) + " ")
	}
	if l.Next != nil {
		b.WriteString("next=" + *l.Next)
	}
	return strings.TrimSpace(b.String())
}

func TestAPIListRooms(t *testing.T) {
	as := startAPI(t)
	var empty roomList
	if resp := as.do(t, "GET", "/api/rooms", testAPIKey, "", &empty); resp.StatusCode != http.StatusOK || empty.Rooms == nil || len(empty.Rooms) != 0 {
		t.Fatalf("empty table: %d %v (rooms nil: %v)", resp.StatusCode, empty, empty.Rooms == nil)
	}

	members := map[string]int{"gamma": 3, "alpha": 2, "beta": 1, "a b/c": 1}
	for id, n := range members {
		for i := range n {
			dialPeer(t, as.ts).join(id, "n", i+1)
		}
	}
	cases := []struct{ query, want string }{
		{"", "a b/c:* alpha:** beta:* gamma:***"},
		{"?limit=1", "a b/c:* next=a b/c"},
		{"?limit=1&after=" + url.QueryEscape("a b/c"), "alpha:** next=alpha"},
		{"?limit=1&after=alpha", "beta:* next=beta"},
		{"?limit=1&after=beta", "gamma:***"},
		{"?limit=2", "a b/c:* alpha:** next=alpha"},
		{"?limit=2&after=alpha", "beta:* gamma:***"},
		{"?limit=4", "a b/c:* alpha:** beta:* gamma:***"},
		{"?limit=1000", "a b/c:* alpha:** beta:* gamma:***"},
		{"?after=b", "beta:* gamma:***"},
		{"?after=gamma", ""},
		{"?after=zzz&limit=3", ""},
	}
	for _, tc := range cases {
		var l roomList
		resp := as.do(t, "GET", "/api/rooms"+tc.query, testAPIKey, "", &l)
		if resp.StatusCode != http.StatusOK || l.String() != tc.want || l.Rooms == nil {
			t.Errorf("GET /api/rooms%s: %d %q, want %q", tc.query, resp.StatusCode, l.String(), tc.want)
		}
	}
	// A room id with a slash is one path segment when escaped.
	var got struct {
		ID    string `json:"id"`
		Count int    `json:"count"`
	}
	if resp := as.do(t, "GET", "/api/rooms/"+url.PathEscape("a b/c"), testAPIKey, "", &got); resp.StatusCode != http.StatusOK || got.ID != "a b/c" || got.Count != 1 {
		t.Errorf("GET a b/c: %d %+v", resp.StatusCode, got)
	}
	var pub struct{ Recipients int }
	if resp := as.do(t, "POST", "/api/rooms/"+url.PathEscape("a b/c")+"/messages", testAPIKey, `{"content":"x"}`, &pub); resp.StatusCode != http.StatusAccepted || pub.Recipients != 1 {
		t.Errorf("POST to a b/c: %d %+v", resp.StatusCode, pub)
	}

	// Following next visits every room once.
	var all []string
	after := ""
	for range 10 {
		var l roomList
		as.do(t, "GET", "/api/rooms?limit=1&after="+url.QueryEscape(after), testAPIKey, "", &l)
		for _, r := range l.Rooms {
			all = append(all, r.ID)
		}
		if l.Next == nil {
			break
		}
		after = *l.Next
	}
	if want := []string{"a b/c", "alpha", "beta", "gamma"}; !slices.Equal(all, want) {
		t.Errorf("paging visited %q, want %q", all, want)
	}

	for _, limit := range []string{"0", "-1", "1001", "x", "1.5", ""} {
		if limit == "" {
			continue // absent is the default
		}
		var e apiErrorBody
		resp := as.do(t, "GET", "/api/rooms?limit="+limit, testAPIKey, "", &e)
		if resp.StatusCode != http.StatusBadRequest || e.Error.Code != "invalid_limit" {
			t.Errorf("limit=%s: %d %+v, want 400 invalid_limit", limit, resp.StatusCode, e)
		}
	}
}

func TestAPIGetRoom(t *testing.T) {
	as := startAPI(t)
	a, b := dialPeer(t, as.ts), dialPeer(t, as.ts)
	a.join("lobby", "Al", 1)
	b.join("lobby", "Bo", 2)
	a.expectPresence("user-joined", "lobby", b, "Bo", 2)
	a.join("café ☕", "Al in the café", 1)

	type member struct {
		UserID   string `json:"userId"`
		UserName string `json:"userName"`
	}
	var got struct {
		ID      string   `json:"id"`
		Count   int      `json:"count"`
		Members []member `json:"members"`
	}
	resp := as.do(t, "GET", "/api/rooms/lobby", testAPIKey, "", &got)
	slices.SortFunc(got.Members, func(x, y member) int { return strings.Compare(x.UserName, y.UserName) })
	want := []member{{a.id, "Al"}, {b.id, "Bo"}}
	if resp.StatusCode != http.StatusOK || got.ID != "lobby" || got.Count != 2 || !slices.Equal(got.Members, want) {
		t.Fatalf("GET lobby: %d %+v, want members %+v", resp.StatusCode, got, want)
	}
	resp = as.do(t, "GET", "/api/rooms/"+url.PathEscape("café ☕"), testAPIKey, "", &got)
	if resp.StatusCode != http.StatusOK || got.ID != "café ☕" || got.Count != 1 || got.Members[0] != (member{a.id, "Al in the café"}) {
		t.Fatalf("GET café: %d %+v", resp.StatusCode, got)
	}

	var e apiErrorBody
	if resp := as.do(t, "GET", "/api/rooms/nowhere", testAPIKey, "", &e); resp.StatusCode != http.StatusNotFound || e.Error.Code != "not_found" {
		t.Fatalf("unknown room: %d %+v, want 404 not_found", resp.StatusCode, e)
	}
	if resp := as.do(t, "GET", "/api/rooms/"+strings.Repeat("r", 129), testAPIKey, "", &e); resp.StatusCode != http.StatusBadRequest || e.Error.Code != "invalid_room" {
		t.Fatalf("long room id: %d %+v, want 400 invalid_room", resp.StatusCode, e)
	}

	// A room whose members all left is gone.
	a.send(`{"type":"leave","roomId":"café ☕"}`)
	a.expect("left")
	if resp := as.do(t, "GET", "/api/rooms/"+url.PathEscape("café ☕"), testAPIKey, "", nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("emptied room: %d, want 404", resp.StatusCode)
	}
}

func TestAPIPublish(t *testing.T) {
	as := startAPI(t)
	a, b, outsider := dialPeer(t, as.ts), dialPeer(t, as.ts), dialPeer(t, as.ts)
	a.join("news", "Al", 1)
	b.join("news", "Bo", 2)
	a.expectPresence("user-joined", "news", b, "Bo", 2)
	outsider.join("other", "Out", 1)

	stamp := as.now.Format(protocol.TimeLayout)
	cases := []struct {
		body, name, content string
	}{
		{`{"content":"hi"}`, ServerUserID, "hi"},
		{`{"content":"from ops","userName":"Ops ✓"}`, "Ops ✓", "from ops"},
		{`{"content":"` + strings.Repeat("€", 500) + `","extra":1}`, ServerUserID, strings.Repeat("€", 500)},
		{`{"content":"quote \" and \u0001"}`, ServerUserID, "quote \" and \u0001"},
	}
	for _, tc := range cases {
		var got struct{ Recipients *int }
		resp := as.do(t, "POST", "/api/rooms/news/messages", testAPIKey, tc.body, &got)
		if resp.StatusCode != http.StatusAccepted || got.Recipients == nil || *got.Recipients != 2 {
			t.Fatalf("POST %s: %d, recipients %v; want 202 with 2", tc.body, resp.StatusCode, got.Recipients)
		}
		for _, p := range []*chatPeer{a, b} {
			m := p.expect("message")
			m.hasKeys(t, "type", "roomId", "userId", "userName", "content", "timestamp")
			if m.RoomID != "news" || m.UserID != ServerUserID || m.UserName != tc.name || m.Content != tc.content || m.Timestamp != stamp {
				t.Fatalf("got %.200s, want a message from server named %q at %s", m.raw, tc.name, stamp)
			}
		}
	}
	outsider.sync()

	// No such room: accepted, nobody hears it.
	var got struct{ Recipients *int }
	if resp := as.do(t, "POST", "/api/rooms/empty/messages", testAPIKey, `{"content":"echo?"}`, &got); resp.StatusCode != http.StatusAccepted || got.Recipients == nil || *got.Recipients != 0 {
		t.Fatalf("publish to no room: %d %v", resp.StatusCode, got.Recipients)
	}

	bad := []struct{ body, code string }{
		{``, protocol.CodeInvalidJSON},
		{`not json`, protocol.CodeInvalidJSON},
		{`{"content":`, protocol.CodeInvalidJSON},
		{`{"content":5}`, protocol.CodeInvalidJSON},
		{`["hi"]`, protocol.CodeInvalidJSON},
		{`{}`, protocol.CodeInvalidMessage},
		{`{"content":null}`, protocol.CodeInvalidMessage},
		{`{"content":""}`, protocol.CodeInvalidMessage},
		{`{"content":"` + strings.Repeat("x", 501) + `"}`, protocol.CodeInvalidMessage},
		{`{"content":"hi","userName":""}`, protocol.CodeInvalidMessage},
		{`{"content":"hi","userName":"` + strings.Repeat("n", 51) + `"}`, protocol.CodeInvalidMessage},
		{`{"content":"hi","userName":"tab\there"}`, protocol.CodeInvalidMessage},
		{`{"content":"` + strings.Repeat("x", 70<<10) + `"}`, protocol.CodeInvalidJSON},
	}
	for _, tc := range bad {
		var e apiErrorBody
		resp := as.do(t, "POST", "/api/rooms/news/messages", testAPIKey, tc.body, &e)
		if resp.StatusCode != http.StatusBadRequest || e.Error.Code != tc.code || e.Error.Message == "" {
			t.Errorf("POST %.60s: %d %+v, want 400 %s", tc.body, resp.StatusCode, e, tc.code)
		}
	}
	// None of the refused bodies reached the room.
	a.sync()
	b.sync()
}

func TestAPIAuth(t *testing.T) {
	as := startAPI(t)
	dialPeer(t, as.ts).join("r", "n", 1)
	routes := []struct{ method, path, body string }{
		{"GET", "/api/rooms", ""},
		{"GET", "/api/rooms?limit=1", ""},
		{"GET", "/api/rooms/r", ""},
		{"GET", "/api/rooms/nowhere", ""},
		{"POST", "/api/rooms/r/messages", `{"content":"hi"}`},
		{"POST", "/api/rooms/r/messages", `not json`},
	}
	creds := []struct {
		name   string
		header string
	}{
		{"no header", ""},
		{"wrong key", "Bearer wrong-key"},
		{"key prefix", "Bearer " + testAPIKey[:len(testAPIKey)-1]},
		{"key with suffix", "Bearer " + testAPIKey + "x"},
		{"empty bearer", "Bearer "},
		{"basic scheme", "Basic " + testAPIKey},
		{"bare key", testAPIKey},
	}
	for _, r := range routes {
		for _, c := range creds {
			req, _ := http.NewRequest(r.method, as.URL+r.path, strings.NewReader(r.body))
			if c.header != "" {
				req.Header.Set("Authorization", c.header)
			}
			resp, err := as.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var e apiErrorBody
			json.NewDecoder(resp.Body).Decode(&e)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") || e.Error.Code != "unauthorized" {
				t.Errorf("%s %s with %s: %d, WWW-Authenticate %q, %+v; want 401 with a Bearer challenge",
					r.method, r.path, c.name, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), e)
			}
		}
	}
	// The scheme name is case-insensitive (RFC 9110 section 11.1).
	for _, scheme := range []string{"Bearer", "bearer", "BEARER"} {
		req, _ := http.NewRequest("GET", as.URL+"/api/rooms", nil)
		req.Header.Set("Authorization", scheme+" "+testAPIKey)
		resp, err := as.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("scheme %q: status %d, want 200", scheme, resp.StatusCode)
		}
	}
	// A refused publish reached nobody, and the health routes need no key.
	if resp := as.do(t, "GET", "/api/rooms/r", testAPIKey, "", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("with key: %d", resp.StatusCode)
	}
	resp, err := as.Client().Get(as.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: %d", resp.StatusCode)
	}
}

func TestAPIRegisterNeedsKey(t *testing.T) {
	if err := (&API{}).Register(http.NewServeMux()); err == nil {
		t.Fatal("Register with an empty key succeeded")
	}
}
