// Package wstest is what the suites that talk to a throng server share: the
// run of a package's tests once per event-loop backend, an injected clock,
// and the independent client's (gorilla/websocket) dial and close checks.
// Only tests import it.
package wstest

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/throng-ws/throng/poller"
)

// RunBackends runs m once per backend in THRONG_TEST_BACKENDS
// (comma-separated; by default every backend this platform has), calling use
// with each before its run, then checks for leaked goroutines, and exits.
func RunBackends(m *testing.M, pkg string, use func(poller.Backend)) {
	backends := poller.Backends()
	if list := os.Getenv("THRONG_TEST_BACKENDS"); list != "" {
		backends = backends[:0]
		for _, b := range strings.Split(list, ",") {
			backends = append(backends, poller.Backend(strings.TrimSpace(b)))
		}
	}
	for _, b := range backends {
		use(b)
		if code := m.Run(); code != 0 {
			fmt.Fprintf(os.Stderr, "%s: tests failed on the %s backend\n", pkg, b)
			os.Exit(code)
		}
	}
	// netpoll's pollers are process-wide and never stop.
	if err := goleak.Find(goleak.IgnoreAnyFunction("github.com/cloudwego/netpoll.(*defaultPoll).Wait")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Clock is an injected clock that tests move by hand; the loops' sweeps run
// on real time but read this clock, so a deadline passes as soon as the
// clock is advanced past it.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock at a fixed instant.
func NewClock() *Clock { return &Clock{t: time.Unix(1_800_000_000, 0)} }

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock on by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Dial connects with gorilla/websocket, the independent client, and closes
// the connection when the test ends.
func Dial(t *testing.T, url string, h http.Header) *websocket.Conn {
	t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial(url, h)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return c
}

// ExpectClose reads until the connection closes and checks the close code.
func ExpectClose(t *testing.T, c *websocket.Conn, code int) *websocket.CloseError {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		ce, ok := err.(*websocket.CloseError)
		if !ok {
			t.Fatalf("want close %d, got %v", code, err)
		}
		if ce.Code != code {
			t.Fatalf("close code %d (%q), want %d", ce.Code, ce.Text, code)
		}
		return ce
	}
}

// WaitFor polls cond until it holds; it is how a test waits for the server
// to reach a state without timing anything. The deadline only bounds a
// failing test.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
