package server

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/internal/wstest"
	"github.com/throng-ws/throng/poller"
)

// testBackend is the event-loop backend the suite is running on. TestMain runs
// the suite once per backend in THRONG_TEST_BACKENDS (comma-separated; by
// default every backend this platform has).
var testBackend poller.Backend

// newTestServer is New on the backend under test.
func newTestServer(o Options) (*Server, error) {
	if o.Backend == "" {
		o.Backend = testBackend
	}
	return New(o)
}

// testSecret signs the tokens of servers started with auth.
var testSecret = []byte("0123456789abcdef0123456789abcdef")

type testServer struct {
	*Server
	t     testing.TB
	Addr  string // host:port
	Clock *fakeClock
}

// greeter is the suite's stand-in for an application at /ws: it greets each
// connection with {"type":"connected","userId":ID}, as the chat does, so a
// test can see who the server took the client for; it echoes text and, like
// the chat, closes a binary message with 1003.
type greeter struct{ echoHandler }

func (greeter) OnMessage(c *Conn, op ws.OpCode, p []byte) {
	if op != ws.OpText {
		c.Close(CloseUnsupported)
		return
	}
	c.WriteMessage(op, p)
}

func (greeter) OnOpen(c *Conn) {
	c.WriteText(fmt.Appendf(nil, `{"type":"connected","userId":%q}`, c.UserID()))
}

// echoHandler is /echo: every message back as it came.
type echoHandler struct{}

func (echoHandler) OnOpen(*Conn)                              {}
func (echoHandler) OnMessage(c *Conn, op ws.OpCode, p []byte) { c.WriteMessage(op, p) }
func (echoHandler) OnClose(*Conn, ws.StatusCode, string)      {}
func (echoHandler) OnError(*Conn, error)                      {}

// URL is the ws:// URL of path on the test server.
func (ts *testServer) URL(path string) string { return "ws://" + ts.Addr + path }

// startServer starts a server on 127.0.0.1 with /ws (greeter) and /echo
// unless o.Handlers is set, two loops, and a short sweep tick. It is closed when
// the test ends.
func startServer(t testing.TB, o Options) *testServer {
	t.Helper()
	if o.Loops == 0 {
		o.Loops = 2
	}
	if o.TickInterval == 0 {
		o.TickInterval = 10 * time.Millisecond
	}
	s, err := newTestServer(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := &testServer{Server: s, t: t}
	if o.Handlers == nil {
		s.Handle("/ws", greeter{})
		s.Handle("/echo", echoHandler{})
	}
	addr, err := s.Listen("127.0.0.1:0")
	if err != nil {
		s.Close()
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	ts.Addr = addr.String()
	return ts
}

// startAuthServer starts a server that requires HS256 tokens signed with
// testSecret, on an injected clock.
func startAuthServer(t testing.TB, o Options) *testServer {
	t.Helper()
	clock := newFakeClock()
	v, err := auth.New(auth.Options{Secret: testSecret, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	o.Auth = v
	o.Now = clock.Now
	ts := startServer(t, o)
	ts.Clock = clock
	return ts
}

// token mints a token for sub valid for ttl from the server's clock.
func (ts *testServer) token(sub string, ttl time.Duration) string {
	ts.t.Helper()
	now := time.Now()
	if ts.Clock != nil {
		now = ts.Clock.Now()
	}
	tok, err := auth.Mint(testSecret, "HS256", sub, ttl, "", now)
	if err != nil {
		ts.t.Fatal(err)
	}
	return tok
}

// readJSON reads one text message and returns it as a string.
func readText(t *testing.T, c *websocket.Conn) string {
	t.Helper()
	op, b, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if op != websocket.TextMessage {
		t.Fatalf("read: opcode %d, want text", op)
	}
	return string(b)
}

// rawConn is a hand-driven client for sending what a well-behaved library will
// not: unmasked frames, reserved bits, bad UTF-8, split writes.
type rawConn struct {
	t testing.TB
	net.Conn
	br *bufio.Reader
}

// rawDial connects and completes a handshake for path with the given extra
// request header lines ("Key: value").
func rawDial(t *testing.T, addr, path string, headers ...string) *rawConn {
	t.Helper()
	return rawDialB(t, addr, path, headers...)
}

// rawDialB is rawDial for tests and benchmarks alike; the caller closes it.
func rawDialB(t testing.TB, addr, path string, headers ...string) *rawConn {
	t.Helper()
	c := rawConnectB(t, addr)
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	for _, h := range headers {
		req += h + "\r\n"
	}
	c.Write([]byte(req + "\r\n"))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: status %d", resp.StatusCode)
	}
	return c
}

func rawConnect(t *testing.T, addr string) *rawConn {
	t.Helper()
	return rawConnectB(t, addr)
}

func rawConnectB(t testing.TB, addr string) *rawConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if _, ok := t.(*testing.T); ok {
		nc.SetDeadline(time.Now().Add(10 * time.Second))
	}
	return &rawConn{t: t, Conn: nc, br: bufio.NewReader(nc)}
}

// frame encodes a client frame. masked=false makes an illegal unmasked one.
func frame(fin bool, rsv byte, op byte, payload []byte, masked bool) []byte {
	b0 := rsv<<4 | op
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	var mbit byte
	if masked {
		mbit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		out = append(out, mbit|byte(n))
	case n <= 0xffff:
		out = append(out, mbit|126, byte(n>>8), byte(n))
	default:
		out = append(out, mbit|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	if !masked {
		return append(out, payload...)
	}
	var key [4]byte
	rand.Read(key[:])
	out = append(out, key[:]...)
	for i, c := range payload {
		out = append(out, c^key[i%4])
	}
	return out
}

// send writes a masked final frame.
func (c *rawConn) send(op byte, payload []byte) {
	c.t.Helper()
	if _, err := c.Write(frame(true, 0, op, payload, true)); err != nil {
		c.t.Fatal(err)
	}
}

// readFrame reads one server frame: its opcode, fin bit and payload.
func (c *rawConn) readFrame() (op byte, fin bool, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(c.br, h[:]); err != nil {
		return
	}
	if h[1]&0x80 != 0 {
		return 0, false, nil, fmt.Errorf("server frame is masked")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		if _, err = io.ReadFull(c.br, e[:]); err != nil {
			return
		}
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		if _, err = io.ReadFull(c.br, e[:]); err != nil {
			return
		}
		n = binary.BigEndian.Uint64(e[:])
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(c.br, payload)
	return h[0] & 0x0f, h[0]&0x80 != 0, payload, err
}

// expectClose reads frames until a close frame and returns its code and reason;
// the server must then end the TCP stream.
func (c *rawConn) expectClose(code int) string {
	c.t.Helper()
	for {
		op, _, p, err := c.readFrame()
		if err != nil {
			c.t.Fatalf("want close %d: %v", code, err)
		}
		if op != 0x8 {
			continue
		}
		got := 1005
		reason := ""
		if len(p) >= 2 {
			got = int(binary.BigEndian.Uint16(p))
			reason = string(p[2:])
		}
		if got != code {
			c.t.Fatalf("close code %d (%q), want %d", got, reason, code)
		}
		return reason
	}
}

// expectEOF checks that the server ends the stream.
func (c *rawConn) expectEOF() {
	c.t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c.br)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		c.t.Fatalf("want EOF: %v (read %d bytes)", err, len(b))
	}
}

// httpGet sends a raw request to the WebSocket listener and returns the response.
func httpRequest(t *testing.T, addr, req string) *http.Response {
	t.Helper()
	c := rawConnect(t, addr)
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("response: %v", err)
	}
	return resp
}

// The suite's shared pieces (package wstest).
type fakeClock = wstest.Clock

var (
	newFakeClock = wstest.NewClock
	dial         = wstest.Dial
	expectClose  = wstest.ExpectClose
	waitFor      = wstest.WaitFor
)

func TestMain(m *testing.M) {
	wstest.RunBackends(m, "server", func(b poller.Backend) { testBackend = b })
}
