package chat

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/history"
	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/server"
)

// withHistory turns history on with size messages per room and no rate limit.
func withHistory(size int) func(*Handler) {
	return func(h *Handler) {
		unlimitedChat(h)
		h.History = history.New(history.Options{Size: size, Live: func(id string) bool { return h.Rooms.Count(id) > 0 }})
	}
}

// wire is any server message, as JSON, with the fields these tests read.
type wire struct {
	Type      string          `json:"type"`
	RoomID    string          `json:"roomId"`
	Content   string          `json:"content"`
	Offset    uint64          `json:"offset"`
	Epoch     string          `json:"epoch"`
	Recovered *bool           `json:"recovered"`
	Replayed  int             `json:"replayed"`
	Code      string          `json:"code"`
	Field     string          `json:"field"`
	More      bool            `json:"more"`
	Messages  []wire          `json:"messages"`
	Raw       json.RawMessage `json:"-"`
}

func readWire(t *testing.T, c *websocket.Conn) wire {
	t.Helper()
	s := readText(t, c)
	var w wire
	if err := json.Unmarshal([]byte(s), &w); err != nil {
		t.Fatalf("not JSON: %q: %v", s, err)
	}
	w.Raw = json.RawMessage(s)
	return w
}

// readUntil reads messages until one of type typ, and returns the chat
// messages read before it.
func readUntil(t *testing.T, c *websocket.Conn, typ string) (before []wire, got wire) {
	t.Helper()
	for {
		w := readWire(t, c)
		switch w.Type {
		case typ:
			return before, w
		case protocol.TypeMessage:
			before = append(before, w)
		}
	}
}

func sendJSON(t *testing.T, c *websocket.Conn, v any) {
	t.Helper()
	var b []byte
	switch v := v.(type) {
	case string:
		b = []byte(v)
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatal(err)
	}
}

// joinWith connects, joins room with the extra join fields, and returns the
// messages sent before joined and joined.
func joinWith(t *testing.T, ts *testServer, room string, extra string) (*websocket.Conn, []wire, wire) {
	t.Helper()
	c := dial(t, ts.URL("/ws"), nil)
	readText(t, c) // connected
	sendJSON(t, c, `{"type":"join","roomId":"`+room+`","userName":"u"`+extra+`}`)
	before, j := readUntil(t, c, protocol.TypeJoined)
	return c, before, j
}

func contents(ws []wire) string {
	var out []string
	for _, w := range ws {
		out = append(out, fmt.Sprintf("%d:%s", w.Offset, w.Content))
	}
	return strings.Join(out, " ")
}

func chatN(t *testing.T, c *websocket.Conn, room string, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		sendJSON(t, c, map[string]string{"type": "chat", "roomId": room, "content": fmt.Sprint("m", i)})
	}
}

func TestHistoryOffsetsAndRecovery(t *testing.T) {
	ts := startChatServer(t, server.Options{}, withHistory(100))
	a, before, ja := joinWith(t, ts, "r", "")
	if len(before) != 0 || ja.Epoch == "" || ja.Offset != 0 || ja.Recovered != nil {
		t.Fatalf("first join: %d messages before, joined %s; want none, an epoch, offset 0, no recovered", len(before), ja.Raw)
	}
	b, _, jb := joinWith(t, ts, "r", "")
	if jb.Epoch != ja.Epoch {
		t.Fatalf("epochs %q and %q for one room", ja.Epoch, jb.Epoch)
	}
	chatN(t, a, "r", 1, 3)
	var last wire
	for i := 1; i <= 3; i++ {
		_, m := readUntil(t, b, protocol.TypeMessage)
		if m.Offset != uint64(i) || m.Epoch != ja.Epoch || m.Content != fmt.Sprint("m", i) {
			t.Fatalf("message %d: %s", i, m.Raw)
		}
		last = m
	}
	b.Close()
	chatN(t, a, "r", 4, 5)
	for range 5 {
		readUntil(t, a, protocol.TypeMessage)
	}

	// b comes back from offset 3: exactly 4 to 8, in order, then joined.
	b2, got, j := joinWith(t, ts, "r", fmt.Sprintf(`,"since":{"offset":%d,"epoch":%q}`, last.Offset, last.Epoch))
	if contents(got) != "4:m4 5:m5 6:m6 7:m7 8:m8" {
		t.Fatalf("recovered %q", contents(got))
	}
	if j.Recovered == nil || !*j.Recovered || j.Replayed != 5 || j.Offset != 8 || j.Epoch != ja.Epoch {
		t.Fatalf("joined %s; want recovered true, replayed 5, offset 8", j.Raw)
	}
	// And live from there.
	chatN(t, a, "r", 9, 1)
	if _, m := readUntil(t, b2, protocol.TypeMessage); m.Offset != 9 {
		t.Fatalf("live after recovery: %s", m.Raw)
	}
	// At the newest offset: recovered, nothing to replay.
	_, got, j = joinWith(t, ts, "r", fmt.Sprintf(`,"since":{"offset":9,"epoch":%q}`, ja.Epoch))
	if len(got) != 0 || j.Recovered == nil || !*j.Recovered {
		t.Fatalf("since the newest: %q, %s", contents(got), j.Raw)
	}
	st := ts.Chat.Stats()
	if st.Recovered != 2 || st.Unrecovered != 0 || st.Replayed != 5 {
		t.Errorf("stats %+v", st)
	}
}

func TestHistoryNotRecovered(t *testing.T) {
	ts := startChatServer(t, server.Options{}, withHistory(4))
	a, _, ja := joinWith(t, ts, "r", "")
	chatN(t, a, "r", 1, 7) // the history keeps 4 to 7
	for range 7 {
		readUntil(t, a, protocol.TypeMessage)
	}
	for _, c := range []struct {
		name, extra, want string
	}{
		{"gap evicted", fmt.Sprintf(`,"since":{"offset":2,"epoch":%q}`, ja.Epoch), "4:m4 5:m5 6:m6 7:m7"},
		{"other epoch", `,"since":{"offset":6,"epoch":"old-epoch"}`, "4:m4 5:m5 6:m6 7:m7"},
		{"future offset", fmt.Sprintf(`,"since":{"offset":99,"epoch":%q}`, ja.Epoch), "4:m4 5:m5 6:m6 7:m7"},
		{"context asked", `,"since":{"offset":1,"epoch":"x"},"history":2`, "6:m6 7:m7"},
		{"no context", `,"since":{"offset":1,"epoch":"x"},"history":0`, ""},
	} {
		_, got, j := joinWith(t, ts, "r", c.extra)
		if j.Recovered == nil || *j.Recovered || contents(got) != c.want || j.Offset != 7 {
			t.Errorf("%s: got %q then %s; want %q then recovered false at offset 7", c.name, contents(got), j.Raw, c.want)
		}
	}
	if st := ts.Chat.Stats(); st.Unrecovered != 5 {
		t.Errorf("unrecovered %d, want 5", st.Unrecovered)
	}
}

// A plain join gets no history, as the seed's server sends none; one that asks
// gets the recent messages before joined.
func TestHistoryOnJoin(t *testing.T) {
	ts := startChatServer(t, server.Options{}, withHistory(100))
	a, _, _ := joinWith(t, ts, "r", "")
	chatN(t, a, "r", 1, 3)
	for range 3 {
		readUntil(t, a, protocol.TypeMessage)
	}
	if _, got, j := joinWith(t, ts, "r", ""); len(got) != 0 || j.Recovered != nil || j.Replayed != 0 {
		t.Errorf("plain join got %q, %s", contents(got), j.Raw)
	}
	if _, got, j := joinWith(t, ts, "r", `,"history":2`); contents(got) != "2:m2 3:m3" || j.Replayed != 2 {
		t.Errorf("join with history 2 got %q, %s", contents(got), j.Raw)
	}
	ts2 := startChatServer(t, server.Options{}, func(h *Handler) { withHistory(100)(h); h.JoinHistory = 10 })
	a2, _, _ := joinWith(t, ts2, "r", "")
	chatN(t, a2, "r", 1, 3)
	for range 3 {
		readUntil(t, a2, protocol.TypeMessage)
	}
	if _, got, _ := joinWith(t, ts2, "r", ""); contents(got) != "1:m1 2:m2 3:m3" {
		t.Errorf("plain join with JoinHistory 10 got %q", contents(got))
	}
}

// While messages flow, a join that recovers gets each message once and in
// order, across the seam between history and live.
func TestHistoryRecoverUnderTraffic(t *testing.T) {
	ts := startChatServer(t, server.Options{Loops: 2}, withHistory(10000))
	a, _, ja := joinWith(t, ts, "r", "")
	_ = a
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			ts.Chat.Publish("r", "server", "pub", fmt.Sprint("p", i), time.Now())
			if i%5 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()
	pos := uint64(0)
	for round := range 20 {
		c, got, j := joinWith(t, ts, "r", fmt.Sprintf(`,"since":{"offset":%d,"epoch":%q}`, pos, ja.Epoch))
		if j.Recovered == nil || !*j.Recovered {
			t.Fatalf("round %d: not recovered: %s", round, j.Raw)
		}
		for _, m := range got {
			if m.Offset != pos+1 {
				t.Fatalf("round %d: replayed offset %d after %d", round, m.Offset, pos)
			}
			pos = m.Offset
		}
		if pos != j.Offset {
			t.Fatalf("round %d: replay ended at %d, joined says %d", round, pos, j.Offset)
		}
		for range 20 {
			_, m := readUntil(t, c, protocol.TypeMessage)
			if m.Offset != pos+1 {
				t.Fatalf("round %d: live offset %d after %d", round, m.Offset, pos)
			}
			pos = m.Offset
		}
		c.Close()
	}
}

func TestHistoryRequest(t *testing.T) {
	ts := startChatServer(t, server.Options{}, withHistory(100))
	a, _, ja := joinWith(t, ts, "r", "")
	chatN(t, a, "r", 1, 5)
	for range 5 {
		readUntil(t, a, protocol.TypeMessage)
	}
	page := func(req string) wire {
		t.Helper()
		sendJSON(t, a, req)
		_, p := readUntil(t, a, protocol.TypeHistoryPage)
		return p
	}
	p := page(`{"type":"history","roomId":"r","limit":2}`)
	if contents(p.Messages) != "4:m4 5:m5" || !p.More || p.Epoch != ja.Epoch || p.Offset != 5 {
		t.Fatalf("newest page: %s", p.Raw)
	}
	p = page(fmt.Sprintf(`{"type":"history","roomId":"r","before":4,"limit":10,"epoch":%q}`, ja.Epoch))
	if contents(p.Messages) != "1:m1 2:m2 3:m3" || p.More {
		t.Fatalf("older page: %s", p.Raw)
	}
	p = page(`{"type":"history","roomId":"r"}`)
	if len(p.Messages) != 5 {
		t.Fatalf("default limit page: %s", p.Raw)
	}
	if st := ts.Chat.Stats(); st.HistoryPages != 3 {
		t.Errorf("pages %d, want 3", st.HistoryPages)
	}
}

// Bad input gets an error with a code, and the connection goes on.
func TestHistoryBadInput(t *testing.T) {
	ts := startChatServer(t, server.Options{}, withHistory(100))
	a, _, _ := joinWith(t, ts, "r", "")
	for _, c := range []struct{ msg, code, field string }{
		{`{"type":"join","roomId":"s","userName":"u","since":5}`, protocol.CodeInvalidMessage, "since"},
		{`{"type":"join","roomId":"s","userName":"u","since":{"offset":-1,"epoch":"e"}}`, protocol.CodeInvalidMessage, "since"},
		{`{"type":"join","roomId":"s","userName":"u","since":{"offset":1.5,"epoch":"e"}}`, protocol.CodeInvalidMessage, "since"},
		{`{"type":"join","roomId":"s","userName":"u","since":{"offset":"1","epoch":"e"}}`, protocol.CodeInvalidMessage, "since"},
		{`{"type":"join","roomId":"s","userName":"u","since":{"offset":1}}`, protocol.CodeInvalidMessage, "since"},
		{`{"type":"join","roomId":"s","userName":"u","since":{"offset":1,"epoch":""}}`, protocol.CodeInvalidMessage, "since"},
		{`{"type":"join","roomId":"s","userName":"u","since":{"offset":1,"epoch":"a b"}}`, protocol.CodeInvalidMessage, "since"},
		{`{"type":"join","roomId":"s","userName":"u","since":{"offset":1,"epoch":"` + strings.Repeat("e", protocol.MaxEpoch+1) + `"}}`, protocol.CodeInvalidMessage, "since"},
		{`{"type":"join","roomId":"s","userName":"u","history":-1}`, protocol.CodeInvalidMessage, "history"},
		{`{"type":"join","roomId":"s","userName":"u","history":1000000}`, protocol.CodeInvalidMessage, "history"},
		{`{"type":"history","roomId":"r","limit":-1}`, protocol.CodeInvalidMessage, "limit"},
		{`{"type":"history","roomId":"r","limit":0}`, protocol.CodeInvalidMessage, "limit"},
		{`{"type":"history","roomId":"r","limit":99999999999}`, protocol.CodeInvalidMessage, "limit"},
		{`{"type":"history","roomId":"r","limit":"5"}`, protocol.CodeInvalidMessage, "limit"},
		{`{"type":"history","roomId":"r","before":-3}`, protocol.CodeInvalidMessage, "before"},
		{`{"type":"history","roomId":"r","epoch":7}`, protocol.CodeInvalidMessage, "epoch"},
		{`{"type":"history","roomId":"r","epoch":"unknown-epoch"}`, protocol.CodeUnknownEpoch, ""},
		{`{"type":"history","roomId":"elsewhere"}`, protocol.CodeNotInRoom, ""},
		{`{"type":"history"}`, protocol.CodeInvalidMessage, "roomId"},
	} {
		sendJSON(t, a, c.msg)
		_, e := readUntil(t, a, protocol.TypeError)
		if e.Code != c.code || e.Field != c.field {
			t.Errorf("%s: got %s; want code %s field %q", c.msg, e.Raw, c.code, c.field)
		}
	}
	// The refused joins joined nothing; the connection still works.
	sendJSON(t, a, `{"type":"ping"}`)
	if _, p := readUntil(t, a, protocol.TypePong); p.Type != protocol.TypePong {
		t.Fatal("no pong")
	}
	if n := ts.Rooms.Count("s"); n != 0 {
		t.Errorf("room s has %d members after refused joins", n)
	}
}

// With history off, messages carry no offset and history is unavailable.
func TestHistoryOff(t *testing.T) {
	ts := startChatServer(t, server.Options{}, unlimitedChat)
	a, _, j := joinWith(t, ts, "r", `,"since":{"offset":3,"epoch":"e"}`)
	if j.Epoch != "" || j.Recovered == nil || *j.Recovered {
		t.Errorf("joined with history off: %s; want no epoch, recovered false", j.Raw)
	}
	chatN(t, a, "r", 1, 1)
	if _, m := readUntil(t, a, protocol.TypeMessage); strings.Contains(string(m.Raw), "offset") {
		t.Errorf("message with history off: %s", m.Raw)
	}
	sendJSON(t, a, `{"type":"history","roomId":"r"}`)
	if _, e := readUntil(t, a, protocol.TypeError); e.Code != protocol.CodeUnavailable {
		t.Errorf("history request with history off: %s", e.Raw)
	}
}

func TestAPIHistory(t *testing.T) {
	as := startAPIWith(t, withHistory(100))
	for i := 1; i <= 3; i++ {
		var out struct{ Recipients int }
		as.do(t, "POST", "/api/rooms/lobby/messages", testAPIKey, fmt.Sprintf(`{"content":"c%d"}`, i), &out)
	}
	var p struct {
		Epoch    string `json:"epoch"`
		Offset   uint64 `json:"offset"`
		Messages []wire `json:"messages"`
		More     bool   `json:"more"`
	}
	if r := as.do(t, "GET", "/api/rooms/lobby/history?limit=2", testAPIKey, "", &p); r.StatusCode != http.StatusOK ||
		contents(p.Messages) != "2:c2 3:c3" || !p.More || p.Offset != 3 || p.Epoch == "" {
		t.Fatalf("history: %d %+v", r.StatusCode, p)
	}
	if as.do(t, "GET", "/api/rooms/lobby/history?before=2", testAPIKey, "", &p); contents(p.Messages) != "1:c1" || p.More {
		t.Fatalf("history before 2: %+v", p)
	}
	for _, c := range []struct {
		q      string
		status int
		code   string
	}{
		{"?limit=-1", 400, "invalid_limit"},
		{"?limit=100000", 400, "invalid_limit"},
		{"?before=x", 400, protocol.CodeInvalidMessage},
		{"?epoch=nope", 409, protocol.CodeUnknownEpoch},
	} {
		var e apiErrorBody
		if r := as.do(t, "GET", "/api/rooms/lobby/history"+c.q, testAPIKey, "", &e); r.StatusCode != c.status || e.Error.Code != c.code {
			t.Errorf("%s: %d %+v; want %d %s", c.q, r.StatusCode, e, c.status, c.code)
		}
	}
	if r := as.do(t, "GET", "/api/rooms/lobby/history", "", "", nil); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("without key: %d", r.StatusCode)
	}
}
