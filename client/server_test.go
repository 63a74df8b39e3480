package client

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testSecret signs the tokens of servers started with auth.
var testSecret = []byte("client-test-secret-0123456789abcdef")

// fakeClock is a clock the test moves by hand; the server's sweeps read it, so
// a token expires on the server as soon as the clock passes its exp.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// serverConfig says how to build a test server.
type serverConfig struct {
	auth      bool                // require tokens signed with testSecret
	clock     *fakeClock          // with auth: the server's clock; nil for real time
	failClose bool                // refused tokens: upgrade then close 1008, not 401
	chat      func(*chat.Handler) // adjusts the /ws handler
	// compression: the server negotiates permessage-deflate
	compression bool
}

// testServer is a throng server on loopback that a test can stop and start
// again on the same port, as a restart in production would.
type testServer struct {
	t    *testing.T
	cfg  serverConfig
	Addr string // host:port, fixed across restarts

	mu  sync.Mutex
	srv *server.Server
}

func startServer(t *testing.T, cfg serverConfig) *testServer {
	t.Helper()
	ts := &testServer{t: t, cfg: cfg}
	ts.start("127.0.0.1:0")
	t.Cleanup(func() {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		if ts.srv != nil {
			ts.srv.Close()
		}
	})
	return ts
}

func (ts *testServer) start(addr string) {
	ts.t.Helper()
	o := server.Options{Loops: 2, TickInterval: 10 * time.Millisecond, Subprotocols: []string{"throng.v1"}}
	var v *auth.Verifier
	if ts.cfg.auth {
		ao := auth.Options{Secret: testSecret}
		if ts.cfg.clock != nil {
			ao.Now = ts.cfg.clock.Now
			o.Now = ts.cfg.clock.Now
		}
		var err error
		if v, err = auth.New(ao); err != nil {
			ts.t.Fatal(err)
		}
		o.Auth = v
		if ts.cfg.failClose {
			o.AuthFailure = server.AuthFailClose
		}
	}
	if ts.cfg.compression {
		o.Compression = server.CompressionOn
	}
	s, err := server.New(o)
	if err != nil {
		ts.t.Fatal(err)
	}
	chat := &chat.Handler{Rooms: room.New(s.Loops(), room.Options{}), Auth: v, Deflater: s.Deflater()}
	if ts.cfg.chat != nil {
		ts.cfg.chat(chat)
	}
	s.Handle("/ws", chat)
	var a net.Addr
	// The port was just released by the previous server; a client's reconnect
	// cannot hold it, so a retry only covers the kernel's own bookkeeping.
	for i := 0; ; i++ {
		if a, err = s.Listen(addr); err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		s.Close()
		ts.t.Fatalf("Listen %s: %v", addr, err)
	}
	ts.mu.Lock()
	ts.srv, ts.Addr = s, a.String()
	ts.mu.Unlock()
}

// stats is the server's counters.
func (ts *testServer) stats() server.Stats {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.srv.Stats()
}

// URL is the chat endpoint's ws:// URL.
func (ts *testServer) URL() string { return "ws://" + ts.Addr + "/ws" }

// stop shuts the server down: graceful sends every client close 1001, abrupt
// drops the TCP connections without a close frame (1006).
func (ts *testServer) stop(graceful bool) {
	ts.mu.Lock()
	s := ts.srv
	ts.srv = nil
	ts.mu.Unlock()
	if graceful {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		return
	}
	s.Close()
}

// restart stops the server and starts a new one on the same port.
func (ts *testServer) restart(graceful bool) {
	ts.t.Helper()
	ts.stop(graceful)
	ts.start(ts.Addr)
}

// accepted is the number of sockets the current server has accepted.
func (ts *testServer) accepted() uint64 {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.srv.Stats().Accepted
}

// token mints a token for sub, valid for ttl from the server's clock.
func (ts *testServer) token(sub string, ttl time.Duration) string {
	ts.t.Helper()
	var now time.Time
	if ts.cfg.clock != nil {
		now = ts.cfg.clock.Now()
	}
	tok, err := auth.Mint(testSecret, "HS256", sub, ttl, "", now)
	if err != nil {
		ts.t.Fatal(err)
	}
	return tok
}

// events records what a client's handlers are told, for tests to wait on.
type events struct {
	ch chan any
}

func newEvents() *events { return &events{ch: make(chan any, 256)} }

// stateEvent is an OnState call.
type stateEvent struct {
	s   State
	err error
}

// options returns o with every handler feeding the recorder.
func (e *events) options(o Options) Options {
	o.OnConnected = func(m Connected) { e.ch <- m }
	o.OnJoined = func(m Joined) { e.ch <- m }
	o.OnLeft = func(m Left) { e.ch <- m }
	o.OnMessage = func(m Message) { e.ch <- m }
	o.OnUserJoined = func(m UserJoined) { e.ch <- m }
	o.OnUserLeft = func(m UserLeft) { e.ch <- m }
	o.OnError = func(m *ServerError) { e.ch <- m }
	o.OnState = func(s State, err error) { e.ch <- stateEvent{s, err} }
	return o
}

// wait returns the first recorded event that match accepts, skipping others.
func (e *events) wait(t *testing.T, what string, match func(any) bool) any {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-e.ch:
			if match(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
			return nil
		}
	}
}

// waitFor is wait for the first event of type T that match accepts.
func waitFor[T any](t *testing.T, e *events, what string, match func(T) bool) T {
	t.Helper()
	return e.wait(t, what, func(ev any) bool {
		v, ok := ev.(T)
		return ok && (match == nil || match(v))
	}).(T)
}

// dialT dials and closes the client when the test ends.
func dialT(t *testing.T, url string, o Options) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, url, o)
	if err != nil {
		t.Fatalf("Dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}
