//go:build linux

package floor

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/throng-ws/throng/internal/wstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func start(t *testing.T, loops int) *Server {
	t.Helper()
	return startOpts(t, Options{Loops: loops})
}

func startOpts(t *testing.T, o Options) *Server {
	t.Helper()
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dial(t *testing.T, s *Server, path string) *websocket.Conn {
	t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial("ws://"+s.Addr()+path+"?token=ignored", nil)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	resp.Body.Close()
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c
}

func TestEcho(t *testing.T) {
	for _, goSyscalls := range []bool{false, true} {
		t.Run(fmt.Sprintf("go-syscalls=%v", goSyscalls), func(t *testing.T) {
			testEcho(t, startOpts(t, Options{Loops: 2, GoSyscalls: goSyscalls}))
		})
	}
}

func testEcho(t *testing.T, s *Server) {
	c := dial(t, s, "/echo")
	for _, tc := range []struct {
		op   int
		size int
	}{
		{websocket.BinaryMessage, 0},
		{websocket.BinaryMessage, 64},
		{websocket.TextMessage, 125},
		{websocket.TextMessage, 126},       // 16-bit length
		{websocket.BinaryMessage, 70_000},  // 64-bit length
		{websocket.BinaryMessage, 1 << 19}, // many reads
	} {
		msg := bytes.Repeat([]byte("0123456789abcdef"), tc.size/16+1)[:tc.size]
		if err := c.WriteMessage(tc.op, msg); err != nil {
			t.Fatal(err)
		}
		op, got, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("size %d: %v", tc.size, err)
		}
		if op != tc.op || !bytes.Equal(got, msg) {
			t.Fatalf("size %d: got op %d, %d bytes; want op %d, the same %d bytes", tc.size, op, len(got), tc.op, len(msg))
		}
	}
	// gorilla sends the large messages as fragments of its write buffer's
	// size; the floor echoes frame by frame, which gorilla reassembles.
	if st := s.Stats(); st.Frames < 6 || st.Replies != st.Frames || st.Conns != 1 {
		t.Fatalf("stats %+v: want a reply per frame, at least 6, on 1 connection", st)
	}
}

func TestPingAndClose(t *testing.T) {
	s := start(t, 1)
	c := dial(t, s, "/echo")
	pong := make(chan string, 1)
	c.SetPongHandler(func(p string) error { pong <- p; return nil })
	if err := c.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte("after the ping")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.ReadMessage(); err != nil || string(p) != "after the ping" {
		t.Fatalf("echo after ping: %q, %v", p, err)
	}
	if p := <-pong; p != "are you there" {
		t.Fatalf("pong %q", p)
	}
	if err := c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "bye")); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Fatalf("after our close: %v, want the server's close 1000", err)
	}
	wstest.WaitFor(t, "the connection to be closed", func() bool { return s.Stats().Conns == 0 })
}

// rawConn is an upgraded connection spoken byte by byte, to control how
// frames are split over writes.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, s *Server, path string) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", path)
	r := bufio.NewReader(nc)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("upgrade: %s, accept %q", resp.Status, resp.Header.Get("Sec-WebSocket-Accept"))
	}
	return &rawConn{Conn: nc, r: r}
}

// clientFrame is a masked, final client frame.
func clientFrame(op byte, p []byte) []byte {
	b := []byte{0x80 | op}
	switch n := len(p); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	b = append(b, mask[:]...)
	for i, c := range p {
		b = append(b, c^mask[i&3])
	}
	return b
}

// readFrame reads one unmasked server frame.
func (c *rawConn) readFrame(t *testing.T) (op byte, p []byte) {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(c.r, h[:]); err != nil {
		t.Fatal(err)
	}
	if h[1]&0x80 != 0 {
		t.Fatal("server frame is masked")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		io.ReadFull(c.r, l[:])
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		io.ReadFull(c.r, l[:])
		n = binary.BigEndian.Uint64(l[:])
	}
	p = make([]byte, n)
	if _, err := io.ReadFull(c.r, p); err != nil {
		t.Fatal(err)
	}
	return h[0], p
}

func TestFramesSplitAcrossReads(t *testing.T) {
	for _, cut := range []int{1, 2, 5, 6, 7, 40} {
		t.Run(fmt.Sprintf("cut=%d", cut), func(t *testing.T) {
			s := start(t, 1)
			c := dialRaw(t, s, "/echo")
			msg := bytes.Repeat([]byte{'x'}, 200) // 16-bit length: an 8-byte header
			f := clientFrame(2, msg)
			reads := s.Stats().Reads
			if _, err := c.Write(f[:cut]); err != nil {
				t.Fatal(err)
			}
			// The server has read the first part before the rest is sent.
			wstest.WaitFor(t, "the first part to be read", func() bool { return s.Stats().Reads > reads })
			if st := s.Stats(); st.Frames != 0 || st.Replies != 0 {
				t.Fatalf("after %d of %d bytes: %+v, want no frame and no reply", cut, len(f), st)
			}
			if _, err := c.Write(f[cut:]); err != nil {
				t.Fatal(err)
			}
			op, p := c.readFrame(t)
			if op != 0x82 || !bytes.Equal(p, msg) {
				t.Fatalf("reply op %#x, %d bytes", op, len(p))
			}
			if st := s.Stats(); st.Frames != 1 || st.Replies != 1 {
				t.Fatalf("stats %+v, want one frame and one reply", st)
			}
		})
	}
}

func TestSeveralFramesInOneWrite(t *testing.T) {
	s := start(t, 1)
	c := dialRaw(t, s, "/echo")
	var batch []byte
	var want [][]byte
	for i := range 5 {
		m := []byte(strings.Repeat(fmt.Sprint(i), 10*i+1))
		want = append(want, m)
		batch = append(batch, clientFrame(1, m)...)
	}
	// A partial sixth frame rides along; its rest comes later.
	last := clientFrame(1, []byte("sixth"))
	batch = append(batch, last[:3]...)
	if _, err := c.Write(batch); err != nil {
		t.Fatal(err)
	}
	for i, m := range want {
		op, p := c.readFrame(t)
		if op != 0x81 || !bytes.Equal(p, m) {
			t.Fatalf("reply %d: op %#x %q, want %q", i, op, p, m)
		}
	}
	if _, err := c.Write(last[3:]); err != nil {
		t.Fatal(err)
	}
	if _, p := c.readFrame(t); string(p) != "sixth" {
		t.Fatalf("sixth reply %q", p)
	}
	if st := s.Stats(); st.Frames != 6 || st.Replies != 6 {
		t.Fatalf("stats %+v, want 6 frames and 6 replies", st)
	}
}

func TestRefused(t *testing.T) {
	s := start(t, 1)
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"path", "GET /nowhere HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: a2V5a2V5a2V5a2V5a2V5aw==\r\n\r\n", 404},
		{"no key", "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"method", "POST /echo HTTP/1.1\r\nHost: x\r\n\r\n", 405},
		{"too large", "GET /echo HTTP/1.1\r\nX: " + strings.Repeat("y", 9000), 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", s.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(nc, tc.req)
			resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || !strings.HasPrefix(string(body), "floor: ") {
				t.Fatalf("%s %q, want %d and a reason", resp.Status, body, tc.status)
			}
		})
	}
	for _, tc := range []struct {
		name  string
		frame []byte
		code  int
	}{
		{"unmasked", []byte{0x82, 0x01, 'x'}, websocket.CloseProtocolError},
		{"reserved opcode", clientFrame(3, nil), websocket.CloseProtocolError},
		{"long ping", clientFrame(9, make([]byte, 126)), websocket.CloseProtocolError},
		{"too big", []byte{0x82, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4}, websocket.CloseMessageTooBig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, s, "/echo")
			c.Write(tc.frame)
			op, p := c.readFrame(t)
			if op != 0x88 || len(p) < 2 || int(binary.BigEndian.Uint16(p)) != tc.code || !strings.HasPrefix(string(p[2:]), "floor: ") {
				t.Fatalf("got op %#x %q, want close %d with a reason", op, p, tc.code)
			}
			if _, err := c.r.ReadByte(); err != io.EOF {
				t.Fatalf("after the close frame: %v, want EOF", err)
			}
		})
	}
}

func TestBroadcastFanOut(t *testing.T) {
	for _, tc := range []struct {
		loops            int
		goSyscalls, lock bool
	}{{1, false, false}, {2, false, false}, {3, false, false}, {2, true, false}, {2, false, true}, {2, true, true}} {
		loops := tc.loops
		t.Run(fmt.Sprintf("loops=%d/go-syscalls=%v/lock=%v", loops, tc.goSyscalls, tc.lock), func(t *testing.T) {
			s := startOpts(t, Options{Loops: loops, GoSyscalls: tc.goSyscalls, LockOSThread: tc.lock})
			const n = 30
			var cs []*websocket.Conn
			for range n {
				cs = append(cs, dial(t, s, "/shootout"))
			}
			wstest.WaitFor(t, "every upgrade", func() bool { return s.Stats().Conns == n })
			const msg = `{"type":"broadcast","payload":{"id":"0001","at":12345}}`
			if err := cs[7].WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			for i, c := range cs {
				op, p, err := c.ReadMessage()
				if err != nil || op != websocket.TextMessage || string(p) != msg {
					t.Fatalf("client %d: op %d %q, %v; want the broadcast", i, op, p, err)
				}
			}
			_, p, err := cs[7].ReadMessage()
			if err != nil {
				t.Fatal(err)
			}
			var res struct {
				Type          string          `json:"type"`
				Payload       json.RawMessage `json:"payload"`
				ListenerCount int             `json:"listenerCount"`
			}
			if err := json.Unmarshal(p, &res); err != nil {
				t.Fatalf("result %q: %v", p, err)
			}
			if res.Type != "broadcastResult" || string(res.Payload) != `{"id":"0001","at":12345}` || res.ListenerCount != n {
				t.Fatalf("result %q: want broadcastResult, the payload, listenerCount %d", p, n)
			}
			if st := s.Stats(); st.Broadcasts != 1 || st.Deliveries != n {
				t.Fatalf("stats %+v: want 1 broadcast, %d deliveries", st, n)
			}
			// A shootout echo comes back to its sender only.
			const echo = `{"type":"echo","payload":"x"}`
			cs[3].WriteMessage(websocket.TextMessage, []byte(echo))
			if _, p, err := cs[3].ReadMessage(); err != nil || string(p) != echo {
				t.Fatalf("shootout echo: %q, %v", p, err)
			}
		})
	}
}

func TestBroadcastBinary(t *testing.T) {
	s := start(t, 2)
	a, b := dial(t, s, "/shootout"), dial(t, s, "/shootout")
	wstest.WaitFor(t, "both upgrades", func() bool { return s.Stats().Conns == 2 })
	msg := append([]byte{'b', 0, 0, 0, 4}, "ping"...)
	a.WriteMessage(websocket.BinaryMessage, msg)
	for _, c := range []*websocket.Conn{a, b} {
		if op, p, err := c.ReadMessage(); err != nil || op != websocket.BinaryMessage || !bytes.Equal(p, msg) {
			t.Fatalf("broadcast: op %d %q, %v", op, p, err)
		}
	}
	want := append([]byte{'r'}, msg[1:]...)
	if _, p, err := a.ReadMessage(); err != nil || !bytes.Equal(p, want) {
		t.Fatalf("result %q, %v; want %q", p, err, want)
	}
}

func TestBroadcastBadMessage(t *testing.T) {
	s := start(t, 1)
	c := dial(t, s, "/shootout")
	c.WriteMessage(websocket.TextMessage, []byte(`{"kind":"broadcast"}`))
	_, _, err := c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseUnsupportedData) {
		t.Fatalf("got %v, want close 1003", err)
	}
}

func TestClientThatDoesNotReadIsDropped(t *testing.T) {
	s := start(t, 1)
	c := dialRaw(t, s, "/echo")
	frame := clientFrame(2, make([]byte, 512<<10))
	// The floor reads on while its replies pile up unread: past 4 MiB
	// waiting, on top of what the sockets' buffers hold, it drops us.
	for sent := 0; s.Stats().Dropped == 0; sent += len(frame) {
		if sent > 256<<20 {
			t.Fatalf("sent %d MiB unread and still connected: %+v", sent>>20, s.Stats())
		}
		if _, err := c.Write(frame); err != nil {
			break // dropped while we wrote
		}
	}
	wstest.WaitFor(t, "the drop", func() bool { return s.Stats().Dropped == 1 && s.Stats().Conns == 0 })
}
