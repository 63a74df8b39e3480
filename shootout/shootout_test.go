package shootout

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/internal/wstest"
	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// startShootout starts a server with only /shootout, on its own room table.
func startShootout(t *testing.T, o server.Options) (*testServer, *Handler) {
	t.Helper()
	return startShootoutLimited(t, o, server.RateLimit{Rate: -1})
}

// startShootoutLimited is startShootout with an inbound rate limit.
func startShootoutLimited(t *testing.T, o server.Options, rl server.RateLimit) (*testServer, *Handler) {
	t.Helper()
	if o.Loops == 0 {
		o.Loops = 2
	}
	if o.TickInterval == 0 {
		o.TickInterval = 10 * time.Millisecond
	}
	if o.Backend == "" {
		o.Backend = testBackend
	}
	s, err := server.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	h := &Handler{Rooms: room.New(s.Loops(), room.Options{Shards: 1}), RateLimit: rl}
	if err := s.Handle("/shootout", h); err != nil {
		t.Fatal(err)
	}
	addr, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &testServer{Server: s, Addr: addr.String(), Rooms: h.Rooms}, h
}

type testServer struct {
	*server.Server
	Addr  string
	Rooms *room.Table
}

// URL is the ws:// URL of path on the test server.
func (ts *testServer) URL(path string) string { return "ws://" + ts.Addr + path }

// testBackend is the event-loop backend the suite is running on: TestMain
// runs the suite once per backend in THRONG_TEST_BACKENDS (comma-separated;
// by default every backend this platform has).
var testBackend poller.Backend

// expectClose reads until the connection closes and checks the close code.
func expectClose(t *testing.T, c *websocket.Conn, code int) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		ce, ok := err.(*websocket.CloseError)
		if !ok || ce.Code != code {
			t.Fatalf("want close %d, got %v", code, err)
		}
		return
	}
}

// dialShootout connects n clients and waits until all are in the broadcast
// room, so a broadcast reaches each.
func dialShootout(t *testing.T, ts *testServer, n int) []*websocket.Conn {
	t.Helper()
	cs := make([]*websocket.Conn, n)
	for i := range cs {
		cs[i] = dial(t, ts.URL("/shootout"), nil)
	}
	waitFor(t, "every client to be in the room", func() bool { return ts.Rooms.Count(shootoutRoom) == n })
	return cs
}

func readOp(t *testing.T, c *websocket.Conn) (int, []byte) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	op, b, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return op, b
}

// jsonEqual reports whether a and b are the same JSON value.
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("%q: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	ja, _ := json.Marshal(va)
	jb, _ := json.Marshal(vb)
	return bytes.Equal(ja, jb)
}

// shootoutFrame is the binary form: kind, big-endian length, payload.
func shootoutFrame(kind byte, payload []byte) []byte {
	b := []byte{kind, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

// syncShootout echoes a marker and expects it as the very next message, so
// nothing else was on its way.
func syncShootout(t *testing.T, c *websocket.Conn) {
	t.Helper()
	marker := []byte(`{"type":"echo","payload":"sync"}`)
	c.WriteMessage(websocket.TextMessage, marker)
	if op, b := readOp(t, c); op != websocket.TextMessage || !bytes.Equal(b, marker) {
		t.Fatalf("got %d %q, want the sync echo", op, b)
	}
}

func TestShootoutJSONEcho(t *testing.T) {
	ts, _ := startShootout(t, server.Options{})
	cs := dialShootout(t, ts, 2)
	for _, msg := range []string{
		`{"type":"echo","payload":{"sendTime":1700000000000,"text":"hi"}}`,
		`{"type":"echo","payload":"plain"}`,
		`{ "type" : "echo" , "payload" : [1, 2.5, null, true] }`,
		`{"type":"echo"}`,
	} {
		cs[0].WriteMessage(websocket.TextMessage, []byte(msg))
		if op, b := readOp(t, cs[0]); op != websocket.TextMessage || string(b) != msg {
			t.Fatalf("echo of %s: %d %s", msg, op, b)
		}
	}
	// An echo is for the sender only.
	syncShootout(t, cs[1])
}

func TestShootoutJSONBroadcast(t *testing.T) {
	ts, _ := startShootout(t, server.Options{Loops: 3})
	cs := dialShootout(t, ts, 3)
	for _, payload := range []string{`{"sendTime":1700000000000,"n":1}`, `"text"`, `42`, `[1,{"a":null}]`, `null`} {
		for from := range cs {
			t.Run(fmt.Sprintf("%s from %d", payload, from), func(t *testing.T) {
				msg := `{"type":"broadcast","payload":` + payload + `}`
				cs[from].WriteMessage(websocket.TextMessage, []byte(msg))
				for i, c := range cs {
					op, b := readOp(t, c)
					if op != websocket.TextMessage || !jsonEqual(t, b, []byte(msg)) {
						t.Fatalf("client %d got %d %s, want %s", i, op, b, msg)
					}
				}
				// The sender's result follows its own copy.
				op, b := readOp(t, cs[from])
				want := `{"type":"broadcastResult","payload":` + payload + `,"listenerCount":3}`
				if op != websocket.TextMessage || !jsonEqual(t, b, []byte(want)) {
					t.Fatalf("sender got %d %s, want %s", op, b, want)
				}
				// And each client got the broadcast exactly once.
				for _, c := range cs {
					syncShootout(t, c)
				}
			})
		}
	}
	// A broadcast without a payload carries null.
	cs[0].WriteMessage(websocket.TextMessage, []byte(`{"type":"broadcast"}`))
	for _, c := range cs {
		if _, b := readOp(t, c); !jsonEqual(t, b, []byte(`{"type":"broadcast","payload":null}`)) {
			t.Fatalf("got %s", b)
		}
	}
	if _, b := readOp(t, cs[0]); !jsonEqual(t, b, []byte(`{"type":"broadcastResult","payload":null,"listenerCount":3}`)) {
		t.Fatalf("got %s", b)
	}
}

// TestShootoutConcurrentBroadcasts has every client broadcast at once and
// checks each gets each broadcast exactly once, and its result after its own.
func TestShootoutConcurrentBroadcasts(t *testing.T) {
	const clients, rounds = 4, 25
	ts, _ := startShootout(t, server.Options{Loops: 2})
	cs := dialShootout(t, ts, clients)
	for i, c := range cs {
		for r := range rounds {
			c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"type":"broadcast","payload":{"from":%d,"round":%d}}`, i, r))
		}
	}
	type payload struct{ From, Round int }
	for i, c := range cs {
		seen := map[payload]int{}
		results := 0
		for range clients*rounds + rounds {
			_, b := readOp(t, c)
			var m struct {
				Type          string
				Payload       payload
				ListenerCount int
			}
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			switch m.Type {
			case "broadcast":
				seen[m.Payload]++
			case "broadcastResult":
				if m.Payload.From != i || m.ListenerCount != clients || seen[m.Payload] != 1 {
					t.Fatalf("client %d: result %s before its own broadcast or with the wrong count", i, b)
				}
				results++
			default:
				t.Fatalf("client %d: %s", i, b)
			}
		}
		if len(seen) != clients*rounds || results != rounds {
			t.Fatalf("client %d: %d distinct broadcasts and %d results, want %d and %d", i, len(seen), results, clients*rounds, rounds)
		}
		for p, n := range seen {
			if n != 1 {
				t.Fatalf("client %d got %+v %d times", i, p, n)
			}
		}
		syncShootout(t, c)
	}
}

func TestShootoutBinary(t *testing.T) {
	ts, _ := startShootout(t, server.Options{Loops: 3})
	cs := dialShootout(t, ts, 3)
	for _, payload := range [][]byte{{}, []byte("hello"), bytes.Repeat([]byte{0, 0xff, 'b'}, 1000)} {
		echo := shootoutFrame('e', payload)
		cs[1].WriteMessage(websocket.BinaryMessage, echo)
		if op, b := readOp(t, cs[1]); op != websocket.BinaryMessage || !bytes.Equal(b, echo) {
			t.Fatalf("echo: %d %q, want %q", op, b, echo)
		}

		bc := shootoutFrame('b', payload)
		cs[2].WriteMessage(websocket.BinaryMessage, bc)
		for i, c := range cs {
			if op, b := readOp(t, c); op != websocket.BinaryMessage || !bytes.Equal(b, bc) {
				t.Fatalf("client %d got %d %.40q, want the broadcast unchanged", i, op, b)
			}
		}
		want := append([]byte{'r'}, bc[1:]...)
		if op, b := readOp(t, cs[2]); op != websocket.BinaryMessage || !bytes.Equal(b, want) {
			t.Fatalf("sender got %d %.40q, want the result %.40q", op, b, want)
		}
		for _, c := range cs {
			syncShootout(t, c)
		}
	}
}

func TestShootoutMalformedCloses1003(t *testing.T) {
	cases := []struct {
		name string
		op   int
		msg  []byte
	}{
		{"binary shorter than a header", websocket.BinaryMessage, []byte{'b', 0, 0}},
		{"binary empty", websocket.BinaryMessage, []byte{}},
		{"binary length too long", websocket.BinaryMessage, append([]byte{'b', 0, 0, 0, 10}, "short"...)},
		{"binary length too short", websocket.BinaryMessage, append([]byte{'e', 0, 0, 0, 2}, "longer"...)},
		{"binary unknown kind", websocket.BinaryMessage, shootoutFrame('x', []byte("hi"))},
		{"binary result kind from a client", websocket.BinaryMessage, shootoutFrame('r', []byte("hi"))},
		{"invalid JSON", websocket.TextMessage, []byte(`{"type":`)},
		{"JSON array", websocket.TextMessage, []byte(`["echo"]`)},
		{"unknown type", websocket.TextMessage, []byte(`{"type":"dance"}`)},
		{"no type", websocket.TextMessage, []byte(`{"payload":1}`)},
	}
	ts, _ := startShootout(t, server.Options{})
	other := dialShootout(t, ts, 1)[0]
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts.URL("/shootout"), nil)
			c.WriteMessage(tc.op, tc.msg)
			expectClose(t, c, websocket.CloseUnsupportedData)
			// The others carry on, and the closed client leaves the room.
			syncShootout(t, other)
			waitFor(t, "the client to leave the room", func() bool { return ts.Rooms.Count(shootoutRoom) == 1 })
		})
	}
}

// TestShootoutListenerCount checks the count follows clients leaving.
func TestShootoutListenerCount(t *testing.T) {
	ts, _ := startShootout(t, server.Options{})
	cs := dialShootout(t, ts, 3)
	cs[2].Close()
	waitFor(t, "the closed client to leave", func() bool { return ts.Rooms.Count(shootoutRoom) == 2 })
	cs[0].WriteMessage(websocket.TextMessage, []byte(`{"type":"broadcast","payload":1}`))
	readOp(t, cs[0])
	readOp(t, cs[1])
	if _, b := readOp(t, cs[0]); !jsonEqual(t, b, []byte(`{"type":"broadcastResult","payload":1,"listenerCount":2}`)) {
		t.Fatalf("got %s", b)
	}
}

// TestShootoutRateLimit: /shootout applies the inbound rate limit, so one
// connection cannot make the server broadcast at will: past its burst it is
// closed with 1008 "rate limited", and the others get only the broadcasts
// within the burst.
func TestShootoutRateLimit(t *testing.T) {
	ts, _ := startShootoutLimited(t, server.Options{}, server.RateLimit{Rate: 0.001, Burst: 3})
	cs := dialShootout(t, ts, 2)
	sender, other := cs[0], cs[1]
	for range 50 {
		sender.WriteMessage(websocket.TextMessage, []byte(`{"type":"broadcast","payload":"x"}`))
	}
	for {
		_, _, err := sender.ReadMessage()
		if err == nil {
			continue
		}
		if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.ClosePolicyViolation || ce.Text != "rate limited" {
			t.Fatalf("sender: %v, want close 1008 rate limited", err)
		}
		break
	}
	// The other connection got the three broadcasts within the burst, then
	// nothing more: an echo of its own comes next.
	for i := range 3 {
		if _, p, err := other.ReadMessage(); err != nil || !bytes.Contains(p, []byte(`"broadcast"`)) {
			t.Fatalf("broadcast %d: %s %v", i, p, err)
		}
	}
	other.WriteMessage(websocket.TextMessage, []byte(`{"type":"echo","payload":"mine"}`))
	if _, p, err := other.ReadMessage(); err != nil || !bytes.Contains(p, []byte("mine")) {
		t.Fatalf("after the limited sender: %s %v, want my echo", p, err)
	}
}

// The suite's shared pieces (package wstest).
var (
	dial    = wstest.Dial
	waitFor = wstest.WaitFor
)

func TestMain(m *testing.M) {
	wstest.RunBackends(m, "shootout", func(b poller.Backend) { testBackend = b })
}
