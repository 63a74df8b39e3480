package chat

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/internal/wstest"
	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// testBackend is the event-loop backend the suite is running on. TestMain runs
// the suite once per backend in THRONG_TEST_BACKENDS (comma-separated; by
// default every backend this platform has).
var testBackend poller.Backend

// testSecret signs the tokens of servers started with auth.
var testSecret = []byte("0123456789abcdef0123456789abcdef")

type testServer struct {
	*server.Server
	t     testing.TB
	Addr  string // host:port
	Clock *fakeClock
	Chat  *Handler    // the /ws handler
	Rooms *room.Table // its room table
}

// URL is the ws:// URL of path on the test server.
func (ts *testServer) URL(path string) string { return "ws://" + ts.Addr + path }

// startChatServer starts a server on 127.0.0.1 on the backend under test, with
// the chat at /ws (configure adjusts it), two loops and a short sweep tick. It
// is closed when the test ends.
func startChatServer(t testing.TB, o server.Options, configure func(*Handler)) *testServer {
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
		t.Fatalf("New: %v", err)
	}
	ts := &testServer{Server: s, t: t}
	ts.Rooms = room.New(s.Loops(), room.Options{})
	ts.Chat = &Handler{Auth: o.Auth, Rooms: ts.Rooms, Deflater: s.Deflater()}
	if configure != nil {
		configure(ts.Chat)
	}
	s.Handle("/ws", ts.Chat)
	addr, err := s.Listen("127.0.0.1:0")
	if err != nil {
		s.Close()
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	ts.Addr = addr.String()
	return ts
}

// startAuthServer is startChatServer with HS256 tokens signed with testSecret
// required, on an injected clock.
func startAuthServer(t testing.TB, o server.Options, configure func(*Handler)) *testServer {
	t.Helper()
	clock := newFakeClock()
	v, err := auth.New(auth.Options{Secret: testSecret, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	o.Auth = v
	o.Now = clock.Now
	ts := startChatServer(t, o, configure)
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

// readText reads one text message and returns it as a string.
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

// expectEOF checks that the server ends the stream.
func (c *rawConn) expectEOF() {
	c.t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c.br)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		c.t.Fatalf("want EOF: %v (read %d bytes)", err, len(b))
	}
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

// opsDialStatus dials and returns the handshake's status and Retry-After.
func opsDialStatus(t *testing.T, url string, h http.Header) (*websocket.Conn, int, string) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	c, resp, err := d.Dial(url, h)
	if err == nil {
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		return c, resp.StatusCode, ""
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	resp.Body.Close()
	return nil, resp.StatusCode, resp.Header.Get("Retry-After")
}

// opsLog is a concurrency-safe buffer for a test's logs.
type opsLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *opsLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *opsLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
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
	wstest.RunBackends(m, "chat", func(b poller.Backend) { testBackend = b })
}
