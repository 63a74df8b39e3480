package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/throng-ws/throng/poller"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
)

// lcReader reads a gorilla connection in the background, so that control frames
// (which gorilla handles only while reading) are seen, and records what arrives.
type lcReader struct {
	pings chan string
	msgs  chan string
	done  chan struct{}
	err   error // why reading stopped; set before done is closed
}

// readInBackground starts an lcReader. With answerPings false the client stays
// silent: it records pings but sends no pong.
func readInBackground(t *testing.T, c *websocket.Conn, answerPings bool) *lcReader {
	t.Helper()
	r := &lcReader{pings: make(chan string, 16), msgs: make(chan string, 16), done: make(chan struct{})}
	c.SetPingHandler(func(data string) error {
		select {
		case r.pings <- data:
		default:
		}
		if answerPings {
			return c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		}
		return nil
	})
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	go func() {
		defer close(r.done)
		for {
			_, b, err := c.ReadMessage()
			if err != nil {
				r.err = err
				return
			}
			select {
			case r.msgs <- string(b):
			default:
			}
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-r.done
	})
	return r
}

// closed waits for the reader to stop and returns the close frame it got.
func (r *lcReader) closed(t *testing.T) *websocket.CloseError {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		t.Fatal("connection not closed")
	}
	var ce *websocket.CloseError
	if !errors.As(r.err, &ce) {
		t.Fatalf("read ended with %v, want a close frame", r.err)
	}
	return ce
}

func echoRoundTrip(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if got := readText(t, c); got != msg {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

func TestLifecyclePingThenIdleTimeout(t *testing.T) {
	clock := newFakeClock()
	ts := startServer(t, Options{Now: clock.Now, PingInterval: 30 * time.Second, IdleTimeout: 75 * time.Second})
	c := dial(t, ts.URL("/echo"), nil)
	// The round trip makes sure the server has stamped the connection before the
	// clock moves.
	echoRoundTrip(t, c, "hello")
	r := readInBackground(t, c, false)

	clock.Advance(31 * time.Second)
	select {
	case <-r.pings:
	case <-r.done:
		t.Fatalf("closed before a ping: %v", r.err)
	case <-time.After(5 * time.Second):
		t.Fatal("no ping after the ping interval")
	}

	clock.Advance(45 * time.Second) // 76s of silence
	ce := r.closed(t)
	if ce.Code != websocket.CloseGoingAway || ce.Text != "idle timeout" {
		t.Fatalf("close %d %q, want 1001 %q", ce.Code, ce.Text, "idle timeout")
	}
	if n := ts.Stats().Closes["idle"]; n != 1 {
		t.Errorf("Closes[idle] = %d, want 1", n)
	}
}

func TestLifecycleActiveClientStaysOpen(t *testing.T) {
	clock := newFakeClock()
	// One loop, so the sweep that reaps the silent client has also looked at
	// the active one with the same clock reading.
	ts := startServer(t, Options{Loops: 1, Now: clock.Now, PingInterval: 30 * time.Second, IdleTimeout: 75 * time.Second})
	active := dial(t, ts.URL("/echo"), nil)
	echoRoundTrip(t, active, "hello")
	silent := dial(t, ts.URL("/echo"), nil)
	echoRoundTrip(t, silent, "hello")
	r := readInBackground(t, silent, false)

	// 20s steps keep the active client's silences under the ping interval
	// while the silent one passes the idle timeout. The pause between steps
	// only gives the sweep a chance to run; nothing is asserted on it.
	var moved time.Duration
	for reaped := false; !reaped; {
		if moved > 10*time.Minute {
			t.Fatal("the silent client was never reaped")
		}
		clock.Advance(20 * time.Second)
		moved += 20 * time.Second
		echoRoundTrip(t, active, fmt.Sprint("at ", moved))
		select {
		case <-r.done:
			reaped = true
		case <-time.After(20 * time.Millisecond):
		}
	}
	if ce := r.closed(t); ce.Code != websocket.CloseGoingAway || ce.Text != "idle timeout" {
		t.Errorf("silent client: close %d %q, want 1001 idle timeout", ce.Code, ce.Text)
	}
	echoRoundTrip(t, active, "still here")
	// The silent client has the close frame before its socket is gone.
	waitFor(t, "one connection open", func() bool { return ts.Stats().Open == 1 })
	if st := ts.Stats(); st.Closes["idle"] != 1 {
		t.Errorf("after %v: Closes %v; want only the silent client closed", moved, st.Closes)
	}
}

func TestLifecycleHandshakeTimeout(t *testing.T) {
	clock := newFakeClock()
	// One loop: the sweep that closes the first socket also looks at the second.
	ts := startServer(t, Options{Loops: 1, Now: clock.Now, HandshakeTimeout: 5 * time.Second})
	slow := rawConnect(t, ts.Addr)
	if _, err := slow.Write([]byte("GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first socket to be accepted", func() bool { return ts.Stats().Accepted == 1 })
	clock.Advance(3 * time.Second)

	late := rawConnect(t, ts.Addr)
	rest := "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := late.Write([]byte("GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second socket to be accepted", func() bool { return ts.Stats().Accepted == 2 })
	clock.Advance(3 * time.Second) // first: 6s in the handshake; second: 3s

	slow.expectEOF()
	if n := ts.Stats().Handshakes["timeout"]; n != 1 {
		t.Errorf("Handshakes[timeout] = %d, want 1", n)
	}
	// The second socket is within its deadline and can still finish.
	if _, err := late.Write([]byte(rest)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(late.br, nil)
	if err != nil {
		t.Fatalf("second handshake: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("second handshake: status %d, want 101", resp.StatusCode)
	}
}

func TestLifecycleRequestTooLarge(t *testing.T) {
	pad := strings.Repeat("a", MaxRequestSize+1024)
	for _, tc := range []struct{ name, req string }{
		{"never ends", "GET /echo HTTP/1.1\r\nHost: x\r\nX-Pad: " + pad},
		{"ends past the limit", "GET /echo HTTP/1.1\r\nHost: x\r\nX-Pad: " + pad + "\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, Options{})
			resp := httpRequest(t, ts.Addr, tc.req)
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("status %d, want 431", resp.StatusCode)
			}
			if n := ts.Stats().Handshakes["too_large"]; n != 1 {
				t.Errorf("Handshakes[too_large] = %d, want 1", n)
			}
		})
	}
}

// recorder is a Handler that logs its calls, for checking their order.
type recorder struct {
	mu     sync.Mutex
	events []string
	errs   []error
	closed chan struct{} // closed by the first OnClose
}

func newRecorder() *recorder { return &recorder{closed: make(chan struct{})} }

func (r *recorder) add(e string) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) OnOpen(c *Conn) { r.add("open") }

func (r *recorder) OnMessage(c *Conn, op ws.OpCode, data []byte) {
	r.add(fmt.Sprintf("message %q", data))
	if string(data) == "bye" {
		c.CloseWith(4001, "bye")
	}
}

func (r *recorder) OnClose(c *Conn, code ws.StatusCode, reason string) {
	r.add(fmt.Sprintf("close %d %q", code, reason))
	select {
	case <-r.closed:
	default:
		close(r.closed)
	}
}

func (r *recorder) OnError(c *Conn, err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
	r.add("error")
}

func (r *recorder) snapshot() ([]string, []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...), append([]error(nil), r.errs...)
}

func TestLifecycleHandlerEvents(t *testing.T) {
	cases := []struct {
		name      string
		run       func(t *testing.T, ts *testServer, r *recorder)
		want      []string
		wantErr   error // if set, the OnError cause must match
		wantClose string
		// wantNetpoll, if set, replaces want on the netpoll backend.
		wantNetpoll []string
	}{
		{
			name: "client close 4000",
			run: func(t *testing.T, ts *testServer, r *recorder) {
				c := dial(t, ts.URL("/h"), nil)
				c.WriteMessage(websocket.TextMessage, []byte("hi"))
				c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "x"))
				expectClose(t, c, 4000)
				// The server half-closed after its answer and waits for the
				// client to end the TCP connection.
				c.Close()
			},
			want:      []string{"open", `message "hi"`, `close 4000 "x"`},
			wantClose: "peer",
		},
		{
			name: "handler close 4001",
			run: func(t *testing.T, ts *testServer, r *recorder) {
				c := dial(t, ts.URL("/h"), nil)
				c.WriteMessage(websocket.TextMessage, []byte("bye"))
				if ce := expectClose(t, c, 4001); ce.Text != "bye" {
					t.Errorf("close reason %q, want bye", ce.Text)
				}
			},
			want:      []string{"open", `message "bye"`, `close 4001 "bye"`},
			wantClose: "policy",
		},
		{
			name: "abrupt TCP close",
			run: func(t *testing.T, ts *testServer, r *recorder) {
				c := dial(t, ts.URL("/h"), nil)
				c.WriteMessage(websocket.TextMessage, []byte("hi"))
				waitFor(t, "the message", func() bool { ev, _ := r.snapshot(); return len(ev) == 2 })
				c.NetConn().Close()
			},
			want:      []string{"open", `message "hi"`, `close 1006 ""`},
			wantClose: "abnormal",
		},
		{
			name: "TCP reset",
			run: func(t *testing.T, ts *testServer, r *recorder) {
				c := dial(t, ts.URL("/h"), nil)
				c.WriteMessage(websocket.TextMessage, []byte("hi"))
				waitFor(t, "the message", func() bool { ev, _ := r.snapshot(); return len(ev) == 2 })
				c.NetConn().(*net.TCPConn).SetLinger(0)
				c.NetConn().Close()
			},
			want: []string{"open", `message "hi"`, "error", `close 1006 ""`},
			// netpoll reads the reset itself and reports it as a plain close.
			wantNetpoll: []string{"open", `message "hi"`, `close 1006 ""`},
			wantClose:   "abnormal",
		},
		{
			name: "protocol error",
			run: func(t *testing.T, ts *testServer, r *recorder) {
				c := rawDial(t, ts.Addr, "/h")
				// Clients must mask their frames.
				if _, err := c.Write(frame(true, 0, 0x1, []byte("hi"), false)); err != nil {
					t.Fatal(err)
				}
				if reason := c.expectClose(1002); reason != "protocol error" {
					t.Errorf("close reason %q", reason)
				}
				c.Close()
			},
			want:      []string{"open", "error", `close 1002 "protocol error"`},
			wantErr:   ws.ErrProtocolMaskRequired,
			wantClose: "protocol",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRecorder()
			ts := startServer(t, Options{Handlers: map[string]Handler{"/h": r}})
			before := ts.Stats().Closes
			tc.run(t, ts, r)
			select {
			case <-r.closed:
			case <-time.After(5 * time.Second):
				ev, _ := r.snapshot()
				t.Fatalf("no OnClose; events %q", ev)
			}
			ev, errs := r.snapshot()
			want := tc.want
			if tc.wantNetpoll != nil && testBackend == poller.BackendNetpoll {
				want = tc.wantNetpoll
			}
			if strings.Join(ev, "\n") != strings.Join(want, "\n") {
				t.Errorf("events:\n  %q\nwant\n  %q", ev, want)
			}
			if tc.wantErr != nil && (len(errs) != 1 || !errors.Is(errs[0], tc.wantErr)) {
				t.Errorf("OnError causes %v, want %v", errs, tc.wantErr)
			}
			after := ts.Stats().Closes
			for label, n := range after {
				want := before[label]
				if label == tc.wantClose {
					want++
				}
				if n != want {
					t.Errorf("Closes[%s] = %d, want %d", label, n, want)
				}
			}
			waitFor(t, "the socket to be released", func() bool { return ts.Stats().Sockets == 0 })
		})
	}
}

func TestLifecycleShutdownDrains(t *testing.T) {
	const n = 50
	for _, rate := range []int{0, 100} {
		t.Run(fmt.Sprint("rate=", rate), func(t *testing.T) {
			ts := startServer(t, Options{DrainRate: rate})
			readers := make([]*lcReader, n)
			for i := range readers {
				c := dial(t, ts.URL("/echo"), nil)
				readers[i] = readInBackground(t, c, true)
			}
			waitFor(t, "every connection to open", func() bool { return ts.Stats().Open == n })
			if !ts.Ready() {
				t.Fatal("Ready() false before Shutdown")
			}

			done := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				done <- ts.Shutdown(ctx)
			}()

			// Once the first client is told, the drain has begun.
			waitFor(t, "the first client to be told", func() bool {
				for _, r := range readers {
					select {
					case <-r.done:
						return true
					default:
					}
				}
				return false
			})
			if ts.Ready() {
				t.Error("Ready() true during the drain")
			}
			d := websocket.Dialer{HandshakeTimeout: 2 * time.Second}
			if c, resp, err := d.Dial(ts.URL("/echo"), nil); err == nil {
				c.Close()
				t.Error("handshake accepted during the drain")
			} else if resp != nil && resp.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("handshake during the drain: status %d, want 503 or a refused connection", resp.StatusCode)
			}

			for i, r := range readers {
				ce := r.closed(t)
				if ce.Code != websocket.CloseGoingAway || ce.Text != "server shutting down" {
					t.Errorf("client %d: close %d %q, want 1001 %q", i, ce.Code, ce.Text, "server shutting down")
				}
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Shutdown: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("Shutdown did not return")
			}
			if n := ts.Stats().Closes["shutdown"]; n != 50 {
				t.Errorf("Closes[shutdown] = %d, want 50", n)
			}
			if ts.Ready() {
				t.Error("Ready() true after Shutdown")
			}
			if err := ts.Shutdown(context.Background()); !errors.Is(err, ErrServerClosed) {
				t.Errorf("second Shutdown: %v, want ErrServerClosed", err)
			}
			if _, err := ts.Listen("127.0.0.1:0"); !errors.Is(err, ErrServerClosed) {
				t.Errorf("Listen after Shutdown: %v, want ErrServerClosed", err)
			}
		})
	}
}

// TestLifecycleShutdownWaitsForAck holds one client that does not answer the
// close: on the fake clock its close timeout never passes, so Shutdown can end
// only by the client's answer, by moving the clock, or by its context.
func TestLifecycleShutdownWaitsForAck(t *testing.T) {
	cases := []struct {
		name    string
		ctxWait time.Duration
		finish  func(t *testing.T, c *rawConn, clock *fakeClock, done <-chan error) error
		wantErr error
	}{
		{"client answers", 10 * time.Second, func(t *testing.T, c *rawConn, _ *fakeClock, done <-chan error) error {
			c.send(0x8, []byte{0x03, 0xe9}) // 1001
			return waitShutdown(t, done)
		}, nil},
		{"close timeout passes", 10 * time.Second, func(t *testing.T, c *rawConn, clock *fakeClock, done <-chan error) error {
			// The server stamps the close deadline right after sending the
			// frame, so the clock moves in steps until the sweep gives up on
			// the client, and it must not give up early.
			var moved time.Duration
			for {
				select {
				case err := <-done:
					if moved < DefaultCloseTimeout {
						t.Errorf("connection dropped after %v of the %v close timeout", moved, DefaultCloseTimeout)
					}
					return err
				case <-time.After(20 * time.Millisecond):
				}
				if moved > time.Minute {
					t.Fatal("close timeout never ended the connection")
				}
				clock.Advance(time.Second)
				moved += time.Second
			}
		}, nil},
		{"context ends first", 50 * time.Millisecond, func(t *testing.T, _ *rawConn, _ *fakeClock, done <-chan error) error {
			return waitShutdown(t, done)
		}, context.DeadlineExceeded},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			ts := startServer(t, Options{Now: clock.Now})
			c := rawDial(t, ts.Addr, "/echo")
			waitFor(t, "the connection to open", func() bool { return ts.Stats().Open == 1 })

			done := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), tc.ctxWait)
				defer cancel()
				done <- ts.Shutdown(ctx)
			}()
			if reason := c.expectClose(1001); reason != "server shutting down" {
				t.Errorf("close reason %q", reason)
			}
			if ts.Ready() {
				t.Error("Ready() true while draining")
			}
			if tc.wantErr == nil {
				select {
				case err := <-done:
					t.Fatalf("Shutdown returned %v before the connection ended", err)
				default:
				}
			}
			err := tc.finish(t, c, clock, done)
			if tc.wantErr == nil && err != nil || !errors.Is(err, tc.wantErr) {
				t.Errorf("Shutdown: %v, want %v", err, tc.wantErr)
			}
			c.expectEOF()
			if s := ts.Stats().Sockets; s != 0 {
				t.Errorf("%d sockets left after Shutdown", s)
			}
		})
	}
}

func waitShutdown(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return")
		return nil
	}
}
