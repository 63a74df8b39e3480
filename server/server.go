// Package server speaks WebSocket (RFC 6455) on the poller's event loops: it
// upgrades HTTP requests with gobwas/ws, verifies a JWT before the upgrade,
// validates every frame, runs the close handshake, pings and reaps idle peers
// from one sweep per loop, and drains connections on shutdown.
//
// Applications plug in per path through Handler, whose four methods are the
// lifecycle events open, message, close and error.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/internal/bg"
	"github.com/throng-ws/throng/poller"
)

// Handler receives one endpoint's connection events. The methods run on the loop
// goroutine that owns the connection and must not block.
type Handler interface {
	// OnOpen is called after the upgrade.
	OnOpen(c *Conn)
	// OnMessage is called with each complete message: ws.OpText or ws.OpBinary.
	// data is valid only during the call.
	OnMessage(c *Conn, op ws.OpCode, data []byte)
	// OnClose is called once, when the close handshake starts (from either side) or
	// the connection drops without one (code 1006).
	OnClose(c *Conn, code ws.StatusCode, reason string)
	// OnError is called when the connection fails: a protocol violation, a socket
	// error or a refused write. OnClose follows.
	OnError(c *Conn, err error)
}

// SlowConsumerPolicy says what happens to a connection that does not read fast
// enough.
type SlowConsumerPolicy uint8

const (
	// SlowClose closes the connection with 1008 "slow consumer".
	SlowClose SlowConsumerPolicy = iota
	// SlowDrop drops the messages that do not fit; the handler's Dropped method,
	// if it has one, is told how many once the connection has caught up.
	SlowDrop

	numSlowPolicies
)

func (p SlowConsumerPolicy) String() string {
	if p == SlowDrop {
		return "drop"
	}
	return "close"
}

// AuthFailure says what happens to a handshake whose token is missing or bad.
type AuthFailure uint8

const (
	// AuthFailReject answers 401 before the upgrade.
	AuthFailReject AuthFailure = iota
	// AuthFailClose upgrades, then closes with 1008 and the reason, for browser
	// applications, which cannot read a refused handshake's status.
	AuthFailClose
)

// Options configures a Server. The zero value, with Handlers set, gives an
// anonymous server with the documented defaults.
type Options struct {
	// Handlers maps WebSocket paths (such as "/ws") to their handlers. Requests
	// for other paths are answered 404.
	Handlers map[string]Handler
	// Auth verifies tokens. If nil, connections are anonymous and each gets a
	// random user id.
	Auth *auth.Verifier
	// AuthFailure chooses between a 401 and an upgrade followed by close 1008.
	AuthFailure AuthFailure
	// Origins is an allowlist of Origin patterns ("https://*.example.com", with
	// path.Match syntax). If empty, any origin is accepted. Requests without an
	// Origin header (not from a browser) are always accepted.
	Origins []string
	// SlowConsumer chooses what happens to a connection whose unsent bytes pass
	// MaxPending: SlowClose (the default) closes it with 1008, SlowDrop drops the
	// messages it cannot take and tells it how many once it catches up.
	SlowConsumer SlowConsumerPolicy
	// HandshakeRate limits upgrades per client IP, per second; past it a request
	// is answered 429 with Retry-After. If zero, there is no limit.
	HandshakeRate float64
	// HandshakeBurst is the number of upgrades an IP may make at once. If zero,
	// it is twice HandshakeRate, at least 1.
	HandshakeBurst int
	// MaxConnsPerUser limits open connections per user id; past it an upgrade is
	// answered 429. If zero, there is no limit.
	MaxConnsPerUser int
	// UserConns counts the connections MaxConnsPerUser limits. If nil, the
	// server counts its own, and the limit holds per node; package cluster's
	// count adds the other nodes' connections.
	UserConns UserConns
	// MaxConns is a hard cap on open connections; past it an upgrade is answered
	// 503 with Retry-After (OverloadRetryAfter). If zero, there is no cap.
	MaxConns int

	// MemoryLimit is the process's memory budget in bytes, measured as its
	// resident set size (RSS). When RSS reaches MemoryHighWater of it, upgrades
	// are answered 503 with Retry-After until RSS falls below MemoryLowWater of
	// it; open connections are never closed for it. If zero, memory does not
	// limit admission. The server does not set the Go runtime's limit
	// (debug.SetMemoryLimit, GOMEMLIMIT): that is process-wide, for the caller.
	MemoryLimit uint64
	// MemoryHighWater is the fraction of MemoryLimit at which admission stops. If
	// zero, DefaultMemoryHighWater is used.
	MemoryHighWater float64
	// MemoryLowWater is the fraction of MemoryLimit below which admission resumes.
	// It must be below MemoryHighWater. If zero, DefaultMemoryLowWater is used.
	MemoryLowWater float64
	// MemoryInterval is how often RSS is read, for admission and for the
	// baseline of bytes per connection. If zero, DefaultMemoryInterval is used.
	MemoryInterval time.Duration
	// MemoryReader returns the process's RSS in bytes, 0 if unknown. If nil,
	// ReadRSS is used. Tests inject readings.
	MemoryReader func() uint64
	// TrimIdleMemory has the server give the heap's free memory back to the
	// operating system once allocation goes quiet after a burst (a ramp of
	// connections and joins, then silence): a collection and a scavenge
	// (debug.FreeOSMemory), at most once per MemoryInterval and only after
	// a quarter of the live heap has been allocated since the last trim.
	// Without it an idle server keeps the heap's growth headroom (up to the
	// GC's heap goal) resident until traffic resumes. It is process-wide. If
	// false, the Go runtime alone decides.
	TrimIdleMemory bool
	// StatsInterval is how often a line with the connections, RSS and bytes per
	// connection is logged, with a warning when bytes per connection rise
	// steadily while the count holds: a leak signal (leakWatch defines it). If
	// zero, no line is logged.
	StatsInterval time.Duration
	// Compression chooses whether permessage-deflate (RFC 7692) is
	// negotiated. If zero (CompressionOff), it is left out of every
	// handshake. The server compresses and inflates each message on its own
	// (no context takeover), so a connection keeps no compression state
	// between messages.
	Compression Compression
	// CompressionMinSize is the shortest message sent compressed to a
	// connection that negotiated permessage-deflate; shorter ones go plain.
	// If zero, DefaultCompressionMinSize is used.
	CompressionMinSize int
	// Subprotocols are the subprotocols the server may select, in preference
	// order. A "bearer.<token>" entry carries a token and is never selected.
	Subprotocols []string

	// Loops is the number of event loops. If zero, GOMAXPROCS is used.
	Loops int
	// Backend is the event-loop implementation. If empty,
	// poller.DefaultBackend is used: epoll on Linux, netpoll elsewhere.
	Backend poller.Backend
	// NetpollBufferSize is the netpoll backend's input buffer per connection
	// (see poller.Options.NetpollBufferSize). If zero, the poller's default.
	NetpollBufferSize int
	// MaxMessageSize bounds a message, fragments summed. If zero,
	// DefaultMaxMessageSize is used.
	MaxMessageSize int
	// MaxPending bounds a connection's unsent bytes; past it the connection is a
	// slow consumer and is closed with 1008. If zero, DefaultMaxPending is used.
	MaxPending int
	// StallTimeout closes, as a slow consumer (1008), a connection whose own
	// replies are more than MaxPending behind, so that it is no longer read,
	// and that has taken none of them for this long: a client that sends and
	// never reads. A client that reads, however slowly, is not closed for it.
	// If zero, DefaultStallTimeout is used.
	StallTimeout time.Duration
	// HandshakeTimeout bounds the time to receive the whole upgrade request. If
	// zero, DefaultHandshakeTimeout is used.
	HandshakeTimeout time.Duration
	// PingInterval is how long a connection may be silent before the server pings
	// it. If zero, DefaultPingInterval is used.
	PingInterval time.Duration
	// IdleTimeout closes a connection from which no frame arrived for this long.
	// If zero, DefaultIdleTimeout is used.
	IdleTimeout time.Duration
	// CloseTimeout bounds the wait for the peer's answer to a close frame. If zero,
	// DefaultCloseTimeout is used.
	CloseTimeout time.Duration
	// DrainRate is how many connections per second Shutdown sends close 1001, so
	// that clients do not all reconnect at once. If zero, DefaultDrainRate is used.
	DrainRate int
	// TickInterval is how often each loop sweeps its connections for deadlines. If
	// zero, it is a fifth of the shortest timeout, at most a second.
	TickInterval time.Duration

	// Logger receives the server's logs. If nil, logs are discarded.
	Logger *slog.Logger
	// Now is the clock. If nil, time.Now is used. Tests inject one to move time.
	Now func() time.Time
}

// Defaults for Options.
const (
	DefaultMaxMessageSize   = 64 << 10
	DefaultMaxPending       = 1 << 20
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultPingInterval     = 30 * time.Second
	DefaultIdleTimeout      = 75 * time.Second
	DefaultCloseTimeout     = 5 * time.Second
	DefaultStallTimeout     = 10 * time.Second
	DefaultDrainRate        = 10000
	DefaultMemoryHighWater  = 0.9
	DefaultMemoryLowWater   = 0.8
	DefaultMemoryInterval   = time.Second
	// MaxRequestSize bounds an upgrade request; a longer one is answered 431.
	MaxRequestSize = 8 << 10
)

// Errors.
var (
	// ErrServerClosed is returned by Listen after Shutdown or Close.
	ErrServerClosed = errors.New("server: closed")
	// ErrMessageTooBig is the OnError cause for a message over MaxMessageSize.
	ErrMessageTooBig = errors.New("server: message too big")
	// ErrInvalidUTF8 is the OnError cause for a text message that is not UTF-8.
	ErrInvalidUTF8 = errors.New("server: invalid UTF-8")
	// ErrSlowConsumer is the OnError cause when a write passes MaxPending.
	ErrSlowConsumer = errors.New("server: slow consumer")
	// ErrDropped is returned by a write refused under SlowDrop.
	ErrDropped = errors.New("server: message dropped for a slow consumer")
)

// Server is a WebSocket server on a poller.
type Server struct {
	opts   Options
	log    *slog.Logger
	now    func() time.Time
	p      *poller.Poller
	loops  []*loopState
	routes map[string]*route

	draining atomic.Bool
	closed   atomic.Bool
	closeMu  sync.Mutex

	deflater Deflater                // minSize is 0 while Options.Compression is off
	ipLimit  *KeyedLimit[netip.Addr] // nil without Options.HandshakeRate
	perUser  UserConns               // nil without Options.MaxConnsPerUser
	admitted atomic.Int64            // connections holding one of Options.MaxConns
	mem      *memMonitor             // nil without Options.MemoryLimit
	trim     *memTrim                // nil without Options.TrimIdleMemory
	listened atomic.Bool
	started  time.Time
	// baseline is the RSS the last time the server had no socket open (first
	// read when Listen is called): what the process costs with no connections,
	// subtracted to estimate bytes per connection.
	baseline atomic.Uint64

	// bg holds the background goroutines (the memory and stats monitor);
	// Close stops them and waits.
	bg bg.Group
	// lastPrune is when loop 0 last pruned ipLimit; owned by loop 0.
	lastPrune int64
	// ho is the state of a connection handoff (handoff.go).
	ho handoffState
}

type route struct {
	srv  *Server
	path string
	h    Handler
}

// New validates o and starts the event loops. Call Listen to accept connections
// and Shutdown or Close to stop.
func New(o Options) (*Server, error) {
	s := &Server{opts: o, routes: make(map[string]*route)}
	for p, h := range o.Handlers {
		if err := s.Handle(p, h); err != nil {
			return nil, err
		}
	}
	for _, pat := range o.Origins {
		if _, err := path.Match(pat, ""); err != nil {
			return nil, fmt.Errorf("server: bad origin pattern %q: %w", pat, err)
		}
	}
	o = s.opts
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.PingInterval <= 0 {
		o.PingInterval = DefaultPingInterval
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = DefaultCloseTimeout
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = DefaultStallTimeout
	}
	if o.DrainRate <= 0 {
		o.DrainRate = DefaultDrainRate
	}
	if o.TickInterval <= 0 {
		o.TickInterval = min(time.Second, o.HandshakeTimeout/5, o.PingInterval/5, o.CloseTimeout/5)
	}
	if o.HandshakeRate < 0 || o.HandshakeBurst < 0 || o.MaxConnsPerUser < 0 {
		return nil, errors.New("server: negative limit")
	}
	if o.HandshakeRate > 0 {
		if o.HandshakeBurst == 0 {
			o.HandshakeBurst = max(1, int(2*o.HandshakeRate))
		}
		s.ipLimit = NewKeyedLimit[netip.Addr](o.HandshakeRate, o.HandshakeBurst)
	}
	if o.MaxConnsPerUser > 0 {
		s.perUser = o.UserConns
		if s.perUser == nil {
			s.perUser = NewUserCounts()
		}
	}
	if o.CompressionMinSize < 0 || o.Compression > CompressionOn {
		return nil, errors.New("server: bad compression options")
	}
	if o.CompressionMinSize == 0 {
		o.CompressionMinSize = DefaultCompressionMinSize
	}
	s.deflater.minSize = o.CompressionMinSize
	if o.IdleTimeout <= o.PingInterval {
		return nil, fmt.Errorf("server: idle timeout %v must exceed ping interval %v", o.IdleTimeout, o.PingInterval)
	}
	if o.MaxConns < 0 || o.StatsInterval < 0 {
		return nil, errors.New("server: negative limit")
	}
	if o.MemoryHighWater == 0 {
		o.MemoryHighWater = DefaultMemoryHighWater
	}
	if o.MemoryLowWater == 0 {
		o.MemoryLowWater = DefaultMemoryLowWater
	}
	if !(o.MemoryHighWater > 0 && o.MemoryHighWater <= 1) || !(o.MemoryLowWater > 0 && o.MemoryLowWater < o.MemoryHighWater) {
		return nil, fmt.Errorf("server: memory marks must satisfy 0 < low (%v) < high (%v) <= 1", o.MemoryLowWater, o.MemoryHighWater)
	}
	if o.MemoryInterval <= 0 {
		o.MemoryInterval = DefaultMemoryInterval
	}
	if o.MemoryReader == nil {
		o.MemoryReader = ReadRSS
	}
	if o.MemoryLimit > 0 {
		s.mem = newMemMonitor(o.MemoryLimit, o.MemoryHighWater, o.MemoryLowWater)
	}
	if o.TrimIdleMemory {
		s.trim = newMemTrim()
	}
	s.opts = o
	s.log = o.Logger
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.now = o.Now
	if s.now == nil {
		s.now = time.Now
	}
	p, err := poller.New(s, poller.Options{
		Backend:      o.Backend,
		Loops:        o.Loops,
		MaxPending:   o.MaxPending,
		TickInterval: o.TickInterval,
		NoDelay:      true,
		Logger:       s.log,
		NewConn:      newPollerConn,

		NetpollBufferSize: o.NetpollBufferSize,
	})
	if err != nil {
		return nil, err
	}
	s.p = p
	for _, l := range p.Loops() {
		s.loops = append(s.loops, newLoopState(s, l))
	}
	s.started = s.now()
	if s.mem != nil {
		s.mem.update(o.MemoryReader(), s.log) // admission is decided from the start
	}
	s.bg.Go(s.monitor)
	return s, nil
}

// Handle registers the handler for a WebSocket path. It must be called before
// Listen, so handlers that need the server's loops (a room table) can be built
// between New and Listen.
func (s *Server) Handle(path string, h Handler) error {
	if !strings.HasPrefix(path, "/") || h == nil {
		return fmt.Errorf("server: bad handler path %q", path)
	}
	if s.listened.Load() {
		return errors.New("server: Handle after Listen")
	}
	if _, dup := s.routes[path]; dup {
		return fmt.Errorf("server: path %q registered twice", path)
	}
	s.routes[path] = &route{srv: s, path: path, h: h}
	return nil
}

// Listen starts accepting WebSocket connections on addr and returns the bound
// address.
func (s *Server) Listen(addr string) (net.Addr, error) {
	if s.closed.Load() || s.draining.Load() {
		return nil, ErrServerClosed
	}
	if len(s.routes) == 0 {
		return nil, errors.New("server: no handlers")
	}
	if !s.listened.Swap(true) {
		s.baseline.Store(s.opts.MemoryReader())
	}
	return s.p.Listen(addr)
}

// Deflater compresses messages shared between connections, such as a room's
// broadcasts, for those that negotiated permessage-deflate; see
// Conn.WriteShared. It is nil when Options.Compression is off.
func (s *Server) Deflater() *Deflater {
	if s.opts.Compression != CompressionOn {
		return nil
	}
	return &s.deflater
}

// Now is the server's clock.
func (s *Server) Now() time.Time { return s.now() }

// Addr is the listening address, or nil.
func (s *Server) Addr() net.Addr { return s.p.Addr() }

// Options returns the options in force, defaults filled in.
func (s *Server) Options() Options { return s.opts }

// Ready reports whether the server accepts new connections: false once Shutdown
// has begun.
func (s *Server) Ready() bool { return !s.draining.Load() && !s.closed.Load() }

// Conns is the number of open sockets, including those still in the handshake.
func (s *Server) Conns() int {
	n := 0
	for _, l := range s.p.Loops() {
		n += l.Len()
	}
	return n
}

// Loops returns the poller loops, so callers can post work to a connection's loop.
func (s *Server) Loops() []*poller.Loop { return s.p.Loops() }

// Shutdown stops accepting, sends close 1001 "server shutting down" to every
// connection at Options.DrainRate per second, and waits for the peers' close
// acknowledgements until ctx ends. Then it closes what is left and stops the
// loops. It returns ctx.Err() if connections were still open at the deadline.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.draining.Swap(true) {
		return ErrServerClosed
	}
	s.p.StopAccepting()
	s.log.Info("draining", "conns", s.Conns(), "rate", s.opts.DrainRate)

	// Each loop snapshots its connections once; a pacing tick then tells every
	// loop how many of its snapshot to close, in proportion to its share.
	var wg sync.WaitGroup
	for _, ls := range s.loops {
		wg.Add(1)
		if !ls.l.Post(poller.FuncJob(func() { defer wg.Done(); ls.beginDrain() })) {
			wg.Done()
		}
	}
	wg.Wait()

	const pace = 10 * time.Millisecond
	perTick := max(1, s.opts.DrainRate*int(pace)/int(time.Second))
	t := time.NewTicker(pace)
	defer t.Stop()
	var err error
	for s.Conns() > 0 {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-t.C:
			remaining := 0
			for _, ls := range s.loops {
				remaining += int(ls.drainLeft.Load())
			}
			if remaining == 0 {
				continue
			}
			for _, ls := range s.loops {
				left := int(ls.drainLeft.Load())
				if left == 0 {
					continue
				}
				n := max(1, perTick*left/remaining)
				ls.l.Post(drainJob{ls, n})
			}
			continue
		}
		break
	}
	if n := s.Conns(); n > 0 {
		s.log.Warn("drain deadline passed", "conns", n)
	} else {
		s.log.Info("drained")
	}
	s.Close()
	return err
}

// beginDrain snapshots the loop's open connections for Shutdown to close at its
// pace.
func (ls *loopState) beginDrain() {
	ls.draining = ls.draining[:0]
	ls.l.Range(func(pc *poller.Conn) bool {
		ls.draining = append(ls.draining, pc)
		return true
	})
	ls.drainLeft.Store(int64(len(ls.draining)))
}

type drainJob struct {
	ls *loopState
	n  int
}

func (j drainJob) Run(*poller.Loop) {
	ls := j.ls
	for ; j.n > 0 && len(ls.draining) > 0; j.n-- {
		pc := ls.draining[len(ls.draining)-1]
		ls.draining[len(ls.draining)-1] = nil
		ls.draining = ls.draining[:len(ls.draining)-1]
		if pc.Closed() {
			continue
		}
		if c := connOf(pc); c.upgraded() {
			c.Close(CloseShutdown)
		} else {
			pc.Close() // still in the handshake, or refused
		}
	}
	ls.drainLeft.Store(int64(len(ls.draining)))
}

// Close closes every connection at once, without close frames, and stops the
// loops.
func (s *Server) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	s.draining.Store(true)
	s.bg.Stop()
	return s.p.Close()
}

// route looks up the handler for a request URI, ignoring its query.
func (s *Server) route(uri []byte) *route {
	p := uri
	for i, c := range uri {
		if c == '?' {
			p = uri[:i]
			break
		}
	}
	return s.routes[string(p)]
}

func (s *Server) originAllowed(origin []byte) bool {
	if len(s.opts.Origins) == 0 {
		return true
	}
	o := strings.ToLower(string(origin))
	for _, pat := range s.opts.Origins {
		if ok, _ := path.Match(strings.ToLower(pat), o); ok {
			return true
		}
	}
	return false
}

func (s *Server) nowMillis() int64 { return s.now().UnixMilli() }
