package httplimit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

// net/http lingers up to half a second after closing a connection it answered
// with an error (closeWriteAndWait), so the client can read the answer; that
// is bounded by net/http itself, not a leak of ours.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("net/http.(*conn).closeWriteAndWait"))
}

// syncBuffer is a log sink the server's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// start serves h with o on a loopback listener until the test ends.
func start(t *testing.T, o Options, h http.Handler) (*Server, string) {
	t.Helper()
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	}
	s, err := New(h, o)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	// Serve has taken its reserve descriptor once it has answered.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(c, bufio.NewReader(c), 5*time.Second); err != nil {
		t.Fatalf("server not answering: %v", err)
	}
	c.Close()
	waitFor(t, "the first connection to close", func() bool { return s.Stats().Conns == 0 })
	return s, ln.Addr().String()
}

// dial opens a raw connection, closed when the test ends.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends a keep-alive GET on c and reads the response within d.
func roundTrip(c net.Conn, br *bufio.Reader, d time.Duration) (*http.Response, error) {
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// closedWithin reports whether the server closes c within d: a read ends in
// EOF or a reset rather than the deadline.
func closedWithin(c net.Conn, br io.Reader, d time.Duration) (bool, error) {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, br)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return false, err
	}
	return true, err
}

func TestDefaults(t *testing.T) {
	s, err := New(http.NotFoundHandler(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	o := s.Options()
	if o.ReadHeaderTimeout != DefaultReadHeaderTimeout || o.ReadTimeout != DefaultReadTimeout ||
		o.WriteTimeout != DefaultWriteTimeout || o.IdleTimeout != DefaultIdleTimeout ||
		o.MaxConns != DefaultMaxConns || o.MaxBodyBytes != DefaultMaxBodyBytes {
		t.Errorf("defaults %+v", o)
	}
	if s.hs.ReadTimeout == 0 || s.hs.WriteTimeout == 0 || s.hs.IdleTimeout == 0 || s.hs.ReadHeaderTimeout == 0 {
		t.Errorf("http.Server has an unbounded timeout: %+v", s.hs)
	}
	for _, bad := range []Options{{ReadTimeout: -1}, {IdleTimeout: -1}, {MaxConns: -1}, {MaxBodyBytes: -1}} {
		if _, err := New(http.NotFoundHandler(), bad); err == nil {
			t.Errorf("New(%+v) accepted", bad)
		}
	}
}

// TestIdleKeepAliveClosed: a keep-alive connection that sends no second
// request is closed after IdleTimeout, not held forever.
func TestIdleKeepAliveClosed(t *testing.T) {
	s, addr := start(t, Options{IdleTimeout: 200 * time.Millisecond}, nil)
	c := dial(t, addr)
	br := bufio.NewReader(c)
	if resp, err := roundTrip(c, br, 2*time.Second); err != nil || resp.StatusCode != 200 {
		t.Fatalf("request: %v %v", resp, err)
	}
	began := time.Now()
	if closed, err := closedWithin(c, br, 3*time.Second); !closed {
		t.Fatalf("idle keep-alive connection still open after 3s: %v", err)
	}
	if d := time.Since(began); d < 150*time.Millisecond {
		t.Errorf("closed after %v, before the 200ms idle timeout", d)
	}
	waitFor(t, "the connection gauge to drop", func() bool { return s.Stats().Conns == 0 })
}

// TestTrickleBodyCutOff: a body sent a byte at a time is cut off by
// ReadTimeout; the handler's read fails instead of waiting for the rest.
func TestTrickleBodyCutOff(t *testing.T) {
	readErr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			_, err := io.ReadAll(r.Body)
			readErr <- err
		}
	})
	_, addr := start(t, Options{ReadTimeout: 300 * time.Millisecond}, h)
	c := dial(t, addr)
	if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for range 100 { // 5s, far past the timeout
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := c.Write([]byte{'x'}); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-trickled }()
	select {
	case err := <-readErr:
		if err == nil {
			t.Fatal("the handler read a whole body that was never sent")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a trickling body pinned the handler past 3s with a 300ms read timeout")
	}
	if closed, err := closedWithin(c, c, 3*time.Second); !closed {
		t.Fatalf("trickling connection still open: %v", err)
	}
}

// TestMaxConns: past MaxConns a connection gets no answer until another
// closes, and the gauge never exceeds the cap.
func TestMaxConns(t *testing.T) {
	s, addr := start(t, Options{MaxConns: 2}, nil)
	var held []net.Conn
	for range 2 {
		c := dial(t, addr)
		if resp, err := roundTrip(c, bufio.NewReader(c), 2*time.Second); err != nil || resp.StatusCode != 200 {
			t.Fatalf("request within the cap: %v %v", resp, err)
		}
		held = append(held, c)
	}
	third := dial(t, addr)
	br := bufio.NewReader(third)
	if resp, err := roundTrip(third, br, 300*time.Millisecond); err == nil {
		t.Fatalf("third connection answered %v past a cap of 2", resp.Status)
	}
	if n := s.Stats().Conns; n != 2 {
		t.Errorf("open connections %d, want 2", n)
	}
	held[0].Close()
	third.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("third connection after one closed: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestMaxBody: a body over MaxBodyBytes fails the handler's read.
func TestMaxBody(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				w.WriteHeader(http.StatusRequestEntityTooLarge)
				return
			}
			w.WriteHeader(http.StatusBadRequest)
		}
	})
	_, addr := start(t, Options{MaxBodyBytes: 10}, h)
	for _, tc := range []struct {
		body string
		want int
	}{{strings.Repeat("x", 10), 200}, {strings.Repeat("x", 11), 413}, {strings.Repeat("x", 1<<20), 413}} {
		resp, err := http.Post("http://"+addr+"/", "text/plain", strings.NewReader(tc.body))
		if err != nil {
			t.Fatalf("%d bytes: %v", len(tc.body), err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%d bytes: %d, want %d", len(tc.body), resp.StatusCode, tc.want)
		}
	}
	http.DefaultClient.CloseIdleConnections()
}

// TestShedOnEMFILE runs the server out of descriptors: a new connection is
// then accepted on the reserve descriptor and closed at once, rather than
// left unanswered in the backlog; the shedding is counted and logged once
// for many connections; and the server serves again once descriptors free up.
func TestShedOnEMFILE(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts descriptors in /proc/self/fd")
	}
	logs := new(syncBuffer)
	s, addr := start(t, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))}, nil)

	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := orig
	low.Cur = uint64(len(fds) + 16)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("cannot lower RLIMIT_NOFILE: %v", err)
	}
	var hogs []*os.File
	release := func() {
		for _, f := range hogs {
			f.Close()
		}
		hogs = nil
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
			t.Errorf("restoring RLIMIT_NOFILE: %v", err)
		}
	}
	defer release()
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !isFDExhausted(err) {
				t.Fatal(err)
			}
			break
		}
		hogs = append(hogs, f)
	}
	// One descriptor for the client's socket; the server has none left.
	hogs[len(hogs)-1].Close()
	hogs = hogs[:len(hogs)-1]

	const attempts = 5
	for i := range attempts {
		// The one free descriptor is the client's, but a goroutine another
		// test left behind (a keep-alive closing, a late accept) can hold it
		// for a moment: wait for it rather than fail the dial.
		var c net.Conn
		var err error
		for end := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if c, err = net.Dial("tcp", addr); err == nil || !isFDExhausted(err) || time.Now().After(end) {
				break
			}
		}
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		closed, err := closedWithin(c, c, 3*time.Second)
		if !closed {
			c.Close()
			t.Fatalf("connection %d left unanswered while out of descriptors: %v", i, err)
		}
		// The client's descriptor is the only free one: keep it until the
		// listener has its reserve back.
		waitFor(t, "the shed to be counted", func() bool { return s.Stats().Shed == uint64(i+1) })
		c.Close()
	}
	st := s.Stats()
	if st.Shed != attempts {
		t.Errorf("shed %d connections, want %d: %+v", st.Shed, attempts, st)
	}
	if st.FDErrors < attempts || st.FDErrors > 2*attempts {
		t.Errorf("%d accept errors for %d connections: want one each, no busy loop", st.FDErrors, attempts)
	}
	if n := strings.Count(logs.String(), "out of file descriptors"); n != 1 {
		t.Errorf("%d log lines about shedding for %d connections, want 1:\n%s", n, attempts, logs)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(s.Collector())
	want := fmt.Sprintf("# HELP throng_http_shed_connections_total HTTP connections closed unanswered because the process was out of file descriptors.\n"+
		"# TYPE throng_http_shed_connections_total counter\nthrong_http_shed_connections_total %d\n", attempts)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "throng_http_shed_connections_total"); err != nil {
		t.Error(err)
	}

	release()
	resp, err := http.Get("http://" + addr + "/")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after descriptors freed: %v %v", resp, err)
	}
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestJSONErrors: the mux's 404 and 405 and http.Error answers become the one
// JSON error shape, with their status and the 405's Allow; JSON answers and
// successes pass untouched.
func TestJSONErrors(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /thing", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	mux.HandleFunc("GET /broken", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) })
	mux.HandleFunc("GET /own", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusTeapot, "teapot", "short and stout")
	})
	srv := httptest.NewServer(JSONErrors(mux))
	defer srv.Close()
	for _, tc := range []struct {
		method, path string
		status       int
		code, allow  string
	}{
		{"GET", "/nowhere", 404, "not_found", ""},
		{"POST", "/thing", 405, "method_not_allowed", "GET, HEAD"},
		{"DELETE", "/thing", 405, "method_not_allowed", "GET, HEAD"},
		{"GET", "/broken", 500, "internal", ""},
		{"GET", "/own", 418, "teapot", ""},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e ErrorBody
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tc.status || e.Error.Code != tc.code || e.Error.Message == "" ||
			resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d %+v %v, Content-Type %q, Allow %q", tc.method, tc.path, resp.StatusCode, e, err,
				resp.Header.Get("Content-Type"), resp.Header.Get("Allow"))
		}
	}
	resp, err := srv.Client().Get(srv.URL + "/thing")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" {
		t.Errorf("success changed: %d %q", resp.StatusCode, b)
	}
}
