// Package httplimit bounds throng's HTTP listener (/healthz, /metrics, /api,
// the demo page), which shares the process's descriptors with the WebSocket
// listener. Without bounds, idle keep-alive connections and requests whose
// bodies trickle in are held forever, and enough of them use up the open-files
// limit, after which the WebSocket listener cannot accept either.
//
// A Server is a net/http.Server with every timeout set, a cap on concurrent
// connections (golang.org/x/net/netutil.LimitListener: past it, connections
// wait in the kernel's backlog and cost no descriptor), a cap on request
// bodies, and a listener that sheds load when accept fails for lack of
// descriptors instead of leaving the pending connection unanswered.
package httplimit

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/throng-ws/throng/internal/metric"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/netutil"
)

// Defaults for the zero Options fields.
const (
	// DefaultReadHeaderTimeout bounds sending the request line and headers.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultReadTimeout bounds reading a whole request, body included, so a
	// body trickling in a byte a second cannot pin a handler.
	DefaultReadTimeout = 30 * time.Second
	// DefaultWriteTimeout bounds writing a response, from the end of the
	// request headers. A /metrics scrape or an /api answer takes milliseconds.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultIdleTimeout is how long a keep-alive connection may wait for its
	// next request.
	DefaultIdleTimeout = 60 * time.Second
	// DefaultMaxConns caps concurrent HTTP connections. The listener serves
	// probes, scrapes, the API and a demo page: a few dozen connections at
	// most, far below any open-files limit the WebSocket side needs.
	DefaultMaxConns = 512
	// DefaultMaxBodyBytes caps a request body; /api reads at most 64 KiB.
	DefaultMaxBodyBytes = 64 << 10
)

const (
	// shedLogEvery is the least time between two log lines about shedding:
	// a descriptor shortage lasts, and one line per refused connection would
	// flood the log when it can least afford it.
	shedLogEvery = 10 * time.Second
	// minBackoff and maxBackoff bound the pause after an accept that failed
	// for lack of descriptors, so the accept loop never spins.
	minBackoff = 5 * time.Millisecond
	maxBackoff = 500 * time.Millisecond
	// pendingWait bounds the accept of a connection to shed: it is pending
	// already, so it needs no time at all unless it is gone.
	pendingWait = 10 * time.Millisecond
)

// Options configures a Server. The zero value works.
type Options struct {
	// ReadHeaderTimeout; if zero, DefaultReadHeaderTimeout.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request; if zero, DefaultReadTimeout.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing a response; if zero, DefaultWriteTimeout.
	WriteTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a keep-alive
	// connection; if zero, DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxConns caps concurrent connections; if zero, DefaultMaxConns.
	MaxConns int
	// MaxBodyBytes caps every request body; a handler reading past it gets a
	// *http.MaxBytesError and the connection is closed after the response.
	// If zero, DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// Logger receives shedding warnings and net/http's own errors. If nil,
	// slog.Default() is used.
	Logger *slog.Logger
}

// Server is a bounded HTTP server. Create it with New, run it with Serve, stop
// it with Shutdown.
type Server struct {
	o  Options
	hs *http.Server

	conns    atomic.Int64  // open connections, by http.Server's ConnState
	fdErrors atomic.Uint64 // accepts that failed with EMFILE or ENFILE
	shed     atomic.Uint64 // connections accepted on the reserve and closed unanswered
}

// New validates o and returns a Server for h.
func New(h http.Handler, o Options) (*Server, error) {
	if o.ReadHeaderTimeout < 0 || o.ReadTimeout < 0 || o.WriteTimeout < 0 || o.IdleTimeout < 0 {
		return nil, errors.New("httplimit: negative timeout")
	}
	if o.MaxConns < 0 || o.MaxBodyBytes < 0 {
		return nil, errors.New("httplimit: negative MaxConns or MaxBodyBytes")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&o.ReadTimeout, DefaultReadTimeout)
	def(&o.WriteTimeout, DefaultWriteTimeout)
	def(&o.IdleTimeout, DefaultIdleTimeout)
	if o.MaxConns == 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.MaxBodyBytes == 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Server{o: o}
	s.hs = &http.Server{
		Handler:           limitBody(h, o.MaxBodyBytes),
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		ReadTimeout:       o.ReadTimeout,
		WriteTimeout:      o.WriteTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
		ConnState:         s.connState,
	}
	return s, nil
}

// Options returns the options in force, defaults filled in.
func (s *Server) Options() Options { return s.o }

// limitBody caps every request body at n bytes.
func limitBody(h http.Handler, n int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = http.MaxBytesReader(w, r.Body, n)
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) connState(_ net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		s.conns.Add(1)
	case http.StateClosed, http.StateHijacked:
		s.conns.Add(-1)
	}
}

// Serve accepts connections on ln until Shutdown or a listener error. It
// always returns a non-nil error; after Shutdown, http.ErrServerClosed. It
// takes ln over: Shutdown closes it.
func (s *Server) Serve(ln net.Listener) error {
	sl := &shedListener{Listener: ln, s: s, done: make(chan struct{})}
	sl.openReserve()
	return s.hs.Serve(netutil.LimitListener(sl, s.o.MaxConns))
}

// Shutdown stops accepting, closes idle connections and waits for the active
// ones to finish or ctx to end.
func (s *Server) Shutdown(ctx context.Context) error { return s.hs.Shutdown(ctx) }

// Close closes the listener and every connection at once.
func (s *Server) Close() error { return s.hs.Close() }

// Stats are the server's counters.
type Stats struct {
	Conns    int64  // open connections
	FDErrors uint64 // accepts that failed for lack of descriptors
	Shed     uint64 // connections closed unanswered for lack of descriptors
}

// Stats returns the counters now.
func (s *Server) Stats() Stats {
	return Stats{Conns: s.conns.Load(), FDErrors: s.fdErrors.Load(), Shed: s.shed.Load()}
}

// shedListener wraps the TCP listener. When accept fails with EMFILE or
// ENFILE the pending connection stays in the backlog and the same error
// comes back at once, forever: net/http would retry with a log line each
// time, and the client would wait unanswered. Instead the listener keeps a
// reserve descriptor (/dev/null): it closes it, accepts the pending
// connection with the freed descriptor, closes that at once so the client
// learns, reopens the reserve, and pauses before the next accept.
type shedListener struct {
	net.Listener
	s    *Server
	done chan struct{} // closed by Close

	mu      sync.Mutex
	reserve *os.File // guarded by mu; nil when it could not be reopened
	closed  bool     // guarded by mu

	// Owned by Accept, which net/http calls from one goroutine.
	backoff   time.Duration
	lastLog   time.Time
	sinceLog  uint64 // shed connections since the last log line
	errsSince uint64 // descriptor errors since the last log line
}

func (l *shedListener) openReserve() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reserve != nil || l.closed {
		return
	}
	// Best effort: without /dev/null (or a descriptor for it) shedding
	// degrades to backing off, which still does not spin.
	if f, err := os.Open(os.DevNull); err == nil {
		l.reserve = f
	}
}

func (l *shedListener) closeReserve() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reserve != nil {
		l.reserve.Close()
		l.reserve = nil
	}
}

// isFDExhausted reports whether err is accept failing for lack of
// descriptors, in this process (EMFILE) or system-wide (ENFILE).
func isFDExhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

func (l *shedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			l.backoff = 0
			return c, nil
		}
		if !isFDExhausted(err) {
			return nil, err
		}
		l.s.fdErrors.Add(1)
		l.errsSince++
		l.closeReserve()
		c, shedErr := l.acceptPending()
		if shedErr == nil {
			c.Close()
		}
		l.openReserve()
		if shedErr == nil {
			// Counted after the reserve is back, so a client that saw the
			// close also sees the listener ready to shed again.
			l.s.shed.Add(1)
			l.sinceLog++
		}
		if now := time.Now(); now.Sub(l.lastLog) >= shedLogEvery {
			l.s.o.Logger.Warn("http: out of file descriptors; closing new HTTP connections unanswered",
				"shed", l.sinceLog, "accept_errors", l.errsSince, "err", err, "conns", l.s.conns.Load())
			l.lastLog, l.sinceLog, l.errsSince = now, 0, 0
		}
		l.backoff = min(max(2*l.backoff, minBackoff), maxBackoff)
		t := time.NewTimer(l.backoff)
		select {
		case <-l.done:
			t.Stop()
			return nil, net.ErrClosed
		case <-t.C:
		}
	}
}

// acceptPending accepts the connection that failed for lack of a descriptor.
// If something else in the process took the freed reserve, or the client
// left, it gives up after pendingWait rather than block until the next
// connection arrives, which it would then close needlessly.
func (l *shedListener) acceptPending() (net.Conn, error) {
	dl, ok := l.Listener.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return nil, errors.New("httplimit: listener has no deadline")
	}
	dl.SetDeadline(time.Now().Add(pendingWait))
	defer dl.SetDeadline(time.Time{})
	return l.Listener.Accept()
}

func (l *shedListener) Close() error {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.done)
	}
	l.mu.Unlock()
	l.closeReserve()
	return l.Listener.Close()
}

// Collector exports the counters as Prometheus metrics, read at scrape time;
// the caller registers it on its own registry.
func (s *Server) Collector() prometheus.Collector { return &collector{s: s} }

var (
	descConns = prometheus.NewDesc("throng_http_connections",
		"Open connections on the HTTP listener.", nil, nil)
	descMaxConns = prometheus.NewDesc("throng_http_max_connections",
		"The --http-max-conns cap; past it connections wait in the listen backlog.", nil, nil)
	descFDErrors = prometheus.NewDesc("throng_http_accept_fd_errors_total",
		"HTTP accepts that failed for lack of file descriptors (EMFILE, ENFILE).", nil, nil)
	descShed = prometheus.NewDesc("throng_http_shed_connections_total",
		"HTTP connections closed unanswered because the process was out of file descriptors.", nil, nil)
)

type collector struct{ s *Server }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descConns
	ch <- descMaxConns
	ch <- descFDErrors
	ch <- descShed
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	metric.Gauge(ch, descConns, float64(st.Conns))
	metric.Gauge(ch, descMaxConns, float64(c.s.o.MaxConns))
	metric.Counter(ch, descFDErrors, st.FDErrors)
	metric.Counter(ch, descShed, st.Shed)
}
