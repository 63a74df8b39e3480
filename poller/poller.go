// Package poller runs many TCP connections on a few event loops, so that an idle
// connection costs a small struct and no goroutine, read buffer or write buffer.
//
// A Poller owns N loops. Each loop owns the connections it accepted or dialed: their
// callbacks run on the loop's goroutine, one at a time, and only that goroutine
// reads, writes or closes them. Other goroutines reach a connection by posting a task
// to its loop (Loop.Post), which wakes the loop.
//
// Two backends implement the loops, chosen by Options.Backend: our own epoll
// loop (epoll_linux.go, Linux only) and cloudwego/netpoll (netpoll.go). Each is
// a pair of types behind the internal interfaces backend (the Poller's half:
// listening, dialing, stopping) and loopBackend (a loop's half: waking it and
// the operations on its connections), so the code in this file never asks
// which one runs.
//
// The package is built for a WebSocket server but knows nothing of WebSocket: it
// moves bytes.
package poller

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/bytebufferpool"
	"golang.org/x/sys/unix"
)

// Errors returned by the poller. They are also the causes handed to
// Handler.OnClose, so a handler can tell why a connection went away.
var (
	// ErrUnsupported is returned by New on systems without the epoll backend.
	ErrUnsupported = errors.New("poller: epoll backend requires linux")
	// ErrClosed is returned for operations on a closed poller or connection.
	ErrClosed = errors.New("poller: closed")
	// ErrPeerClosed is the OnClose cause when the peer closed or reset the socket.
	ErrPeerClosed = errors.New("poller: peer closed")
	// ErrPendingLimit is the OnClose cause when a connection's unsent bytes passed
	// Options.MaxPending and the write was refused.
	ErrPendingLimit = errors.New("poller: pending write limit exceeded")
)

// Handler receives a connection's events. Every method is called on the goroutine
// of the loop that owns the connection and must not block: a blocked callback
// stalls every connection on that loop.
type Handler interface {
	// OnOpen is called once when a connection is accepted or a dial completes.
	OnOpen(c *Conn)
	// OnData is called with the connection's unconsumed input: the tail kept from
	// earlier calls followed by the bytes just read. data may be modified in place
	// but is valid only during the call. OnData returns how many bytes it consumed;
	// the rest is kept in a pooled buffer and presented again, first, on the next
	// call. Returning len(data) leaves the connection holding no input buffer.
	OnData(c *Conn, data []byte) int
	// OnWritable is called when a connection that refused a write for
	// Options.MaxPending has sent everything it had queued, so a handler that
	// dropped messages for it can tell it so.
	OnWritable(c *Conn)
	// OnClose is called once when the connection is closed, with the cause: nil for
	// a local Close, ErrPeerClosed, ErrPendingLimit, or a socket error.
	OnClose(c *Conn, cause error)
	// OnTick is called on each loop every Options.TickInterval. It is where
	// per-connection deadlines are swept, instead of a timer per connection.
	OnTick(l *Loop, now time.Time)
}

// Backend names an event-loop implementation.
type Backend string

// Backends.
const (
	// BackendEpoll is our own epoll loop: the Linux default, as it holds idle
	// connections for a fraction of netpoll's memory.
	BackendEpoll Backend = "epoll"
	// BackendNetpoll runs on cloudwego/netpoll: the default where epoll does not
	// exist (macOS, through netpoll's kqueue).
	BackendNetpoll Backend = "netpoll"
)

// Options configures a Poller. The zero value works.
type Options struct {
	// Backend chooses the event loop. If empty, DefaultBackend is used.
	Backend Backend
	// Loops is the number of event loops. If zero, GOMAXPROCS is used.
	Loops int
	// ReadBufferSize is the size of each loop's shared read buffer. If zero,
	// DefaultReadBufferSize is used.
	ReadBufferSize int
	// MaxPending bounds a connection's queued, unsent bytes, by one of two
	// rules. A write from a job or a tick (a broadcast, another connection's
	// traffic) that would pass it fails with ErrPendingLimit and leaves the
	// queue as it was: the slow-consumer policy is the caller's. A reply,
	// written while the connection's own OnData runs, is never refused:
	// once the replies pass MaxPending the poller stops reading the
	// connection until they drain, so a client that does not read its
	// replies stops being read (on netpoll, which reads the socket anyway,
	// input held past MaxPending more is handed to OnData with its replies
	// refused like broadcasts). If zero, there is no bound.
	MaxPending int
	// TickInterval is how often Handler.OnTick runs on each loop. If zero,
	// DefaultTickInterval is used.
	TickInterval time.Duration
	// NoDelay sets TCP_NODELAY on every connection, as WebSocket traffic is made of
	// small messages that must not wait for Nagle's algorithm.
	NoDelay bool
	// WriteTimeout bounds how long the netpoll backend waits for a connection's
	// socket to drain; past it the connection is closed. The epoll backend never
	// waits. If zero, DefaultWriteTimeout is used.
	WriteTimeout time.Duration
	// NetpollBufferSize is netpoll's first input buffer per connection, and
	// the smallest buffer node netpoll allocates (its Config.BufferSize and
	// LinkBufferCap): process-wide netpoll settings taken from the first netpoll
	// poller. If zero, DefaultNetpollBufferSize is used.
	NetpollBufferSize int
	// NewConn, if set, allocates every Conn the poller makes: accepted,
	// dialed, adopted in a handoff, and the stand-in a failed netpoll dial
	// is reported on. It must return a new zeroed Conn each time. A handler
	// sets it to embed the Conn in a per-connection struct of its own, so
	// that the two are one allocation and need no pointers to each other:
	// with the Conn as that struct's first field, the handler finds its
	// struct from the *Conn it is handed (server.Conn does). The poller
	// writes only the Conn's own fields. It is called on loop goroutines,
	// and on Dial's caller, possibly at once: it must not use shared state
	// unguarded. If nil, the poller allocates a Conn on its own.
	NewConn func() *Conn
	// Logger receives the poller's own warnings: descriptors running out at
	// accept (at most one line a second) and event registrations the kernel
	// refused. If nil, slog.Default() is used, as net/http.Server does with
	// its ErrorLog.
	Logger *slog.Logger
}

// Defaults for Options.
const (
	DefaultReadBufferSize = 64 << 10
	DefaultTickInterval   = time.Second
	DefaultWriteTimeout   = 30 * time.Second
)

// Frame is an immutable, reference-counted byte slice that can be queued on many
// connections at once without a copy: a broadcast encodes its frame once and every
// member's output queue points at the same bytes. The bytes return to a pool when
// the last reference is released.
type Frame struct {
	refs atomic.Int32
	buf  *bytebufferpool.ByteBuffer
}

var (
	frameBufs bytebufferpool.Pool
	frames    = sync.Pool{New: func() any { return new(Frame) }}
)

// NewFrame returns a frame holding one reference, with an empty pooled buffer for
// the caller to fill through Buffer before sharing it. Frames and their bytes
// are pooled, so a broadcast allocates nothing once the pools are warm.
func NewFrame() *Frame {
	f := frames.Get().(*Frame)
	f.buf = frameBufs.Get()
	f.refs.Store(1)
	return f
}

// Buffer is the frame's byte buffer. It may be written only before the frame is
// shared.
func (f *Frame) Buffer() *bytebufferpool.ByteBuffer { return f.buf }

// Bytes returns the frame's contents.
func (f *Frame) Bytes() []byte { return f.buf.B }

// Retain adds a reference.
func (f *Frame) Retain() { f.refs.Add(1) }

// Release drops a reference; the last one returns the bytes to the pool.
func (f *Frame) Release() {
	switch n := f.refs.Add(-1); {
	case n == 0:
		frameBufs.Put(f.buf)
		f.buf = nil
		frames.Put(f)
	case n < 0:
		panic("poller: frame released too many times")
	}
}

// Stats are a poller's counters, read without stopping the loops.
type Stats struct {
	Conns    []int64 // open connections per loop
	Accepted uint64
	Dialed   uint64
	Closed   uint64
	// AcceptErrors counts failed accepts: out of descriptors (EMFILE, ENFILE)
	// or memory, or another error the listener reported. A server exports it
	// as a metric: a rising count means clients are being turned away.
	AcceptErrors uint64
	// Shed counts connections accepted only to be closed at once, because the
	// process was out of descriptors: their clients see the connection closed
	// instead of waiting in the listen queue. Each is also an AcceptError.
	Shed uint64
}

// backend is a Poller's half of an event-loop implementation: epollBackend
// (epoll_linux.go) or npBackend (netpoll.go). Its methods are called once
// the Poller's own checks (closed, options) have passed.
type backend interface {
	// listen opens the listening socket and has the loops accept from it.
	listen(addr string) (net.Addr, error)
	// stopAccepting closes the listening socket; it returns once no loop will
	// accept again.
	stopAccepting()
	// dial connects to raddr on a loop; the outcome arrives on that loop.
	dial(raddr netip.AddrPort, laddr netip.Addr, ctx any) error
	// stop stops the loops, which close their connections, and waits for
	// every goroutine the backend started.
	stop()
}

// loopBackend is a loop's half of an event-loop implementation: *epollLoop
// or *npLoop. wake may be called from any goroutine; every other method is
// called on the loop (inside a callback or a job) for a connection the loop
// owns.
type loopBackend interface {
	wake()
	// write2 is called through Loop.write2 (backend_linux.go,
	// backend_other.go), never through the interface: see there.
	write2(c *Conn, a, b []byte) error
	writeFrame(c *Conn, f *Frame) error
	writeFrames(c *Conn, fs []*Frame) (int, error)
	closeWrite(c *Conn)
	closeConn(c *Conn, cause error)
	// queued is the connection's unsent bytes, as Conn.Pending reports them.
	queued(c *Conn) int
	dropQueued(c *Conn)
}

// Poller is a set of event loops and, optionally, one listening socket shared
// by all of them.
type Poller struct {
	h     Handler
	opts  Options
	log   *slog.Logger
	be    backend
	loops []*Loop

	lnMu   sync.Mutex // guards lnAddr and the backends' listener fields
	lnAddr net.Addr

	nextDial atomic.Uint32
	closed   atomic.Bool

	accepted      atomic.Uint64
	dialed        atomic.Uint64
	closedConns   atomic.Uint64
	acceptErrors  atomic.Uint64
	shed          atomic.Uint64
	lastAcceptLog atomic.Int64 // unix nanoseconds of the last accept warning

	// spare is a descriptor (/dev/null) held in reserve while listening, or
	// -1: when accept fails for lack of descriptors it is closed to accept
	// and close the waiting connection, then reopened (see shedOne).
	spareMu sync.Mutex
	spare   int // guarded by spareMu
}

// Loop is one event loop: the goroutine (or, on netpoll, the lock) that runs
// its connections' callbacks one at a time, and those connections.
type Loop struct {
	p   *Poller
	idx int
	be  loopBackend

	// Owned by the loop.
	conns  []*Conn
	inData *Conn // the connection whose OnData is running

	nconns atomic.Int64

	mu    sync.Mutex
	jobs  []Job // guarded by mu
	dead  bool  // guarded by mu: the loop has exited and runs no more jobs
	spare []Job // owned by the loop: the drained batch, reused
}

// Job is work posted to a loop from another goroutine. Run executes on the loop
// goroutine, where it may use the loop's connections freely.
type Job interface {
	Run(l *Loop)
}

// FuncJob adapts a plain function to Job.
type FuncJob func()

// Run calls f.
func (f FuncJob) Run(*Loop) { f() }

// Conn is one connection owned by a loop. Its methods may be called only on the
// owning loop's goroutine (inside a Handler callback or a Job); other goroutines
// post a Job to Conn.Loop.
//
// It is kept to 56 bytes, as a server holds hundreds of thousands: the input
// kept and the output queued share one pointer (bufs), nil while the
// connection holds neither, as an idle one does; netpoll, whose connections
// cost kilobytes anyway, keeps its per-connection state on the side (npConn).
// A handler may embed it in its own per-connection struct (Options.NewConn).
type Conn struct {
	loop  *Loop
	ctx   any
	bufs  *connBufs // unconsumed input and (epoll) unsent output; nil when there is neither
	stamp int64     // the handler's: a deadline or last-seen time, see SetStamp
	fd    int32
	idx   int32 // position in loop.conns
	flags connFlags
}

type connFlags uint8

const (
	flagClosed          connFlags = 1 << iota
	flagWriteArmed                // epoll: EPOLLOUT is in the connection's event mask
	flagConnecting                // epoll: a dial waiting for connect to complete
	flagShutdownOnFlush           // epoll: shut the write side once the queue drains
	flagShutdown                  // the write side is shut (or will be, once flushed)
	flagRefused                   // a write was refused for MaxPending since OnWritable last ran
	flagReadPaused                // epoll: its own replies passed MaxPending; input waits in the kernel
	flagFrozen                    // epoll: out of the epoll set for a handoff; writes are queued, never sent (handoff_linux.go)
)

// connBufs is what a connection holds only while it is not idle: the input
// OnData left (both backends) and the epoll backend's queue of unsent output.
// A Conn takes one from bufsPool when it first needs either and gives it back
// once it holds neither (tidyBufs), so an idle connection pays one nil
// pointer for both.
type connBufs struct {
	in *bytebufferpool.ByteBuffer // unconsumed input; nil when there is none

	// The epoll backend's output queue, oldest first; empty when nothing is
	// queued, and always on netpoll (npConn has its own).
	segs    []segment
	pending int
	// moved is when the socket last took bytes from the queue, or when the
	// queue began (unix ms): how long a backed-up connection has stalled.
	moved int64
}

// buffers is c's connBufs, taken from the pool if it has none.
func (c *Conn) buffers() *connBufs {
	if c.bufs == nil {
		c.bufs = bufsPool.Get().(*connBufs)
	}
	return c.bufs
}

// queue is c's output queue, or nil when nothing is queued.
func (c *Conn) queue() *connBufs {
	if b := c.bufs; b != nil && len(b.segs) > 0 {
		return b
	}
	return nil
}

// input is c's kept input, or nil.
func (c *Conn) input() *bytebufferpool.ByteBuffer {
	if c.bufs == nil {
		return nil
	}
	return c.bufs.in
}

// freeIn returns c's kept input, if any, to the pool, and its connBufs with
// it once the queue is empty too.
func (c *Conn) freeIn() {
	if b := c.bufs; b != nil {
		if b.in != nil {
			inPool.Put(b.in)
			b.in = nil
		}
		c.tidyBufs()
	}
}

// tidyBufs gives c's connBufs back to the pool once it holds neither input
// nor queued output. A queue's segments are released (and pending zeroed) by
// whoever empties it.
func (c *Conn) tidyBufs() {
	if b := c.bufs; b != nil && b.in == nil && len(b.segs) == 0 {
		c.bufs = nil
		b.pending, b.moved = 0, 0
		bufsPool.Put(b)
	}
}

// segment is one queued write: either a shared frame or an owned copy.
type segment struct {
	frame *Frame
	buf   *bytebufferpool.ByteBuffer
	off   int
}

func (s *segment) bytes() []byte {
	if s.frame != nil {
		return s.frame.buf.B[s.off:]
	}
	return s.buf.B[s.off:]
}

func (s *segment) release() {
	if s.frame != nil {
		s.frame.Release()
	} else if s.buf != nil {
		inPool.Put(s.buf)
	}
	*s = segment{}
}

var (
	inPool   bytebufferpool.Pool
	bufsPool = sync.Pool{New: func() any { return new(connBufs) }}
)

// Loops returns the poller's loops.
func (p *Poller) Loops() []*Loop { return p.loops }

// Addr is the listening address, or nil.
func (p *Poller) Addr() net.Addr {
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	return p.lnAddr
}

// Stats returns the poller's counters.
func (p *Poller) Stats() Stats {
	s := Stats{
		Conns:        make([]int64, len(p.loops)),
		Accepted:     p.accepted.Load(),
		Dialed:       p.dialed.Load(),
		Closed:       p.closedConns.Load(),
		AcceptErrors: p.acceptErrors.Load(),
		Shed:         p.shed.Load(),
	}
	for i, l := range p.loops {
		s.Conns[i] = l.nconns.Load()
	}
	return s
}

// overLimit reports whether n bytes pass Options.MaxPending.
func overLimit(p *Poller, n int) bool {
	return p.opts.MaxPending > 0 && n > p.opts.MaxPending
}

// Index is the loop's position in Poller.Loops.
func (l *Loop) Index() int { return l.idx }

// Len is the number of connections the loop owns. It may be read from any
// goroutine.
func (l *Loop) Len() int { return int(l.nconns.Load()) }

// Post queues j to run on the loop goroutine. It reports false if the loop has
// stopped, in which case j will never run.
func (l *Loop) Post(j Job) bool {
	l.mu.Lock()
	if l.dead {
		l.mu.Unlock()
		return false
	}
	l.jobs = append(l.jobs, j)
	l.mu.Unlock()
	l.wake()
	return true
}

// Range calls fn for each connection of the loop until fn returns false. It must
// be called on the loop goroutine. fn may close the connection it is given.
func (l *Loop) Range(fn func(*Conn) bool) {
	// Backwards, so that closing the current connection (which moves the last one
	// into its slot) skips nobody.
	for i := len(l.conns) - 1; i >= 0; i-- {
		if i >= len(l.conns) {
			continue
		}
		if !fn(l.conns[i]) {
			return
		}
	}
}

func (l *Loop) runJobs() {
	l.mu.Lock()
	jobs := l.jobs
	l.jobs = l.spare[:0]
	l.mu.Unlock()
	for i, j := range jobs {
		j.Run(l)
		jobs[i] = nil
	}
	l.spare = jobs
}

// newConn makes a Conn of l for fd, through Options.NewConn if it is set.
func (p *Poller) newConn(l *Loop, fd int, ctx any, flags connFlags) *Conn {
	var c *Conn
	if p.opts.NewConn != nil {
		c = p.opts.NewConn()
	} else {
		c = new(Conn)
	}
	*c = Conn{loop: l, ctx: ctx, fd: int32(fd), flags: flags}
	return c
}

func (l *Loop) add(c *Conn) {
	c.idx = int32(len(l.conns))
	l.conns = append(l.conns, c)
	l.nconns.Add(1)
}

// Loop is the loop that owns the connection.
func (c *Conn) Loop() *Loop { return c.loop }

// Context returns the value set by SetContext or given to Dial.
func (c *Conn) Context() any { return c.ctx }

// SetContext attaches a value to the connection.
func (c *Conn) SetContext(v any) { c.ctx = v }

// Stamp returns the value set by SetStamp.
func (c *Conn) Stamp() int64 { return c.stamp }

// SetStamp stores one number for the handler, typically a deadline or the time
// the connection was last heard from, so that a sweep in OnTick needs no other
// per-connection state to find the ones whose time is up.
func (c *Conn) SetStamp(v int64) { c.stamp = v }

// Closed reports whether the connection has been closed.
func (c *Conn) Closed() bool { return c.flags&flagClosed != 0 }

// Fd is the socket's descriptor, for logging.
func (c *Conn) Fd() int { return int(c.fd) }

// Pending is the number of queued, unsent bytes.
func (c *Conn) Pending() int { return c.loop.be.queued(c) }

// Stalled reports whether c's own replies have paused its reading (see
// Options.MaxPending) and the socket has taken none of its queued output
// since before now-d: a client that does not read. The handler closes it
// as a slow consumer. It is always false on netpoll, which applies its
// WriteTimeout itself. Call it on c's loop.
func (c *Conn) Stalled(now time.Time, d time.Duration) bool {
	q := c.queue()
	return c.flags&flagReadPaused != 0 && q != nil && now.UnixMilli()-q.moved >= d.Milliseconds()
}

// Buffered is the number of input bytes kept from earlier reads.
func (c *Conn) Buffered() int {
	if in := c.input(); in != nil {
		return len(in.B)
	}
	return 0
}

// DropQueued discards the queued output except the segment being sent, whose
// tail must still go out so the peer's stream stays framed. Every queued segment
// is one whole write, so what remains ends on a message boundary. A server uses
// it to put a close frame right behind a slow consumer's current message.
func (c *Conn) DropQueued() {
	if c.flags&flagClosed == 0 {
		c.loop.be.dropQueued(c)
	}
}

// forget removes a closed connection from the loop, frees its input buffer
// and tells the handler. The backend has already let go of the socket and the
// output.
func (l *Loop) forget(c *Conn, cause error) {
	l.unlist(c)
	l.p.closedConns.Add(1)
	l.p.h.OnClose(c, cause)
}

// unlist removes c from the loop's list and frees its input buffer.
func (l *Loop) unlist(c *Conn) {
	last := l.conns[len(l.conns)-1]
	l.conns[c.idx] = last
	last.idx = c.idx
	l.conns[len(l.conns)-1] = nil
	l.conns = l.conns[:len(l.conns)-1]
	l.nconns.Add(-1)
	if l.inData != c {
		c.freeIn()
	}
}

// fdTable maps descriptors to a backend's per-connection state (the epoll
// backend's Conn, netpoll's npConn) without a map's per-entry cost: pages of
// 64Ki pointers are allocated as descriptor numbers reach them. An entry is
// written only by the loop that owns that descriptor.
type fdTable[T any] struct {
	pages []atomic.Pointer[fdPage[T]]
}

type fdPage[T any] [fdPageSize]atomic.Pointer[T]

const (
	fdPageBits = 16
	fdPageSize = 1 << fdPageBits
)

func (t *fdTable[T]) init() {
	var rl unix.Rlimit
	limit := uint64(1 << 20)
	// rl.Max is signed on FreeBSD.
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && rl.Max > 0 && rl.Max < 1<<31 {
		limit = uint64(rl.Max)
	}
	t.pages = make([]atomic.Pointer[fdPage[T]], limit>>fdPageBits+1)
}

func (t *fdTable[T]) get(fd int) *T {
	pi := fd >> fdPageBits
	if pi >= len(t.pages) {
		return nil
	}
	pg := t.pages[pi].Load()
	if pg == nil {
		return nil
	}
	return pg[fd&(fdPageSize-1)].Load()
}

func (t *fdTable[T]) set(fd int, c *T) {
	pi := fd >> fdPageBits
	if pi >= len(t.pages) {
		panic("poller: descriptor beyond RLIMIT_NOFILE")
	}
	pg := t.pages[pi].Load()
	if pg == nil {
		if c == nil {
			return
		}
		pg = new(fdPage[T])
		if !t.pages[pi].CompareAndSwap(nil, pg) {
			pg = t.pages[pi].Load()
		}
	}
	pg[fd&(fdPageSize-1)].Store(c)
}

// New creates a poller and starts its loops. Call Close to stop them.
func New(h Handler, o Options) (*Poller, error) {
	if h == nil {
		return nil, errors.New("poller: nil handler")
	}
	if o.Loops <= 0 {
		o.Loops = runtime.GOMAXPROCS(0)
	}
	if o.ReadBufferSize <= 0 {
		o.ReadBufferSize = DefaultReadBufferSize
	}
	if o.TickInterval <= 0 {
		o.TickInterval = DefaultTickInterval
	}
	if o.Backend == "" {
		o.Backend = DefaultBackend
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	p := &Poller{h: h, opts: o, log: o.Logger, spare: -1}
	if p.log == nil {
		p.log = slog.Default()
	}
	var err error
	switch o.Backend {
	case BackendEpoll:
		err = newEpoll(p)
	case BackendNetpoll:
		err = newNetpoll(p)
	default:
		err = errors.New("poller: unknown backend " + string(o.Backend))
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Backend is the poller's event-loop implementation.
func (p *Poller) Backend() Backend { return p.opts.Backend }

// Listen opens a listening TCP socket on addr (as net.Listen does) and has every
// loop accept from it. A poller listens on at most one address.
func (p *Poller) Listen(addr string) (net.Addr, error) {
	if p.closed.Load() {
		return nil, ErrClosed
	}
	p.openSpare()
	return p.be.listen(addr)
}

// StopAccepting closes the listening socket. Open connections are not touched. It
// returns once no loop will accept again.
func (p *Poller) StopAccepting() { p.be.stopAccepting() }

// Dial connects to raddr from the loop chosen round-robin, optionally binding the
// local address laddr (the zero Addr lets the kernel choose). ctx becomes the
// connection's Context. The outcome arrives on the loop: OnOpen once connected, or
// OnClose with the error.
func (p *Poller) Dial(raddr netip.AddrPort, laddr netip.Addr, ctx any) error {
	if p.closed.Load() {
		return ErrClosed
	}
	return p.be.dial(raddr, laddr, ctx)
}

// Close stops every loop. Open connections are closed at once, each reported to
// OnClose with ErrClosed. Close waits for the loops to exit.
func (p *Poller) Close() error {
	if p.closed.Swap(true) {
		return ErrClosed
	}
	p.be.stop()
	p.spareMu.Lock()
	if p.spare >= 0 {
		unix.Close(p.spare)
		p.spare = -1
	}
	p.spareMu.Unlock()
	return nil
}

func (p *Poller) openSpare() {
	p.spareMu.Lock()
	defer p.spareMu.Unlock()
	if p.spare < 0 {
		p.spare, _ = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
}

// isOutOfFDs reports whether an accept error means the process or the system
// has no descriptor left.
func isOutOfFDs(err error) bool {
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE)
}

// acceptFailed counts a failed accept and warns, at most once a second, so a
// storm of them shows in the log without flooding it.
func (p *Poller) acceptFailed(err error) {
	n := p.acceptErrors.Add(1)
	now := time.Now().UnixNano()
	last := p.lastAcceptLog.Load()
	if now-last < int64(time.Second) || !p.lastAcceptLog.CompareAndSwap(last, now) {
		return
	}
	p.log.Warn("poller: accept failed; shedding connections", "err", err,
		"accept_errors", n, "shed", p.shed.Load())
}

// shedResult is what shedOne did.
type shedResult uint8

const (
	shedDone    shedResult = iota // a waiting connection was accepted and closed
	shedNone                      // nothing was waiting: accept fails for lack of descriptors even then
	shedNoSpare                   // no spare descriptor to give up
)

// shedOne turns away one connection waiting in the listen queue when the
// process is out of descriptors: it gives up the spare descriptor, accepts
// the connection with accept (which returns the new descriptor, or false),
// closes it at once, and takes the spare back. The client sees its
// connection closed rather than waiting for an accept that will not come,
// and the listener stops being readable for it, so the loop does not spin.
func (p *Poller) shedOne(accept func() (int, bool)) shedResult {
	p.spareMu.Lock()
	defer p.spareMu.Unlock()
	if p.spare < 0 {
		// Lost to another thread last time: try again now.
		if p.spare, _ = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); p.spare < 0 {
			return shedNoSpare
		}
	}
	unix.Close(p.spare)
	fd, ok := accept()
	if ok {
		unix.Close(fd)
		p.shed.Add(1)
	}
	p.spare, _ = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if !ok {
		return shedNone
	}
	return shedDone
}

func (l *Loop) wake() { l.be.wake() }

// RemoteAddr asks the kernel for the peer's address. It is not stored, as idle
// connections should cost as little as possible.
func (c *Conn) RemoteAddr() netip.AddrPort {
	if c.flags&flagClosed != 0 {
		return netip.AddrPort{}
	}
	sa, err := unix.Getpeername(int(c.fd))
	if err != nil {
		return netip.AddrPort{}
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// Write sends b, queueing what the socket does not take at once. b is copied if
// queued, so the caller may reuse it. It fails with ErrPendingLimit, queueing
// nothing, if the queue would pass Options.MaxPending.
func (c *Conn) Write(b []byte) error {
	return c.Write2(b, nil)
}

// Write2 sends a followed by b, in one system call where possible.
func (c *Conn) Write2(a, b []byte) error {
	if c.flags&(flagClosed|flagShutdown) != 0 {
		return ErrClosed
	}
	if len(a) == 0 {
		a, b = b, nil
	}
	if len(a) == 0 {
		return nil
	}
	return c.loop.write2(c, a, b)
}

// WriteFrame sends a shared frame. If the socket does not take all of it, the
// queue keeps a reference to the frame instead of a copy.
func (c *Conn) WriteFrame(f *Frame) error {
	if c.flags&(flagClosed|flagShutdown) != 0 {
		return ErrClosed
	}
	return c.loop.be.writeFrame(c, f)
}

// WriteFrames sends shared frames in order, as WriteFrame does each, but in
// one system call where the backend can: a member with several broadcasts
// waiting gets them in one write. It returns how many it accepted (sent or
// queued): on epoll all or none, as one write; on netpoll, which writes them
// one by one, a refusal may come after the first were accepted, and the rest
// are not written.
func (c *Conn) WriteFrames(fs []*Frame) (int, error) {
	if c.flags&(flagClosed|flagShutdown) != 0 {
		return 0, ErrClosed
	}
	switch len(fs) {
	case 0:
		return 0, nil
	case 1:
		if err := c.loop.be.writeFrame(c, fs[0]); err != nil {
			return 0, err
		}
		return 1, nil
	}
	return c.loop.be.writeFrames(c, fs)
}

// CloseWrite shuts down the sending side once the queued output is flushed. The
// connection stays open for reading until the peer closes it or Close is called;
// a WebSocket server does this after its close frame, so the peer reads the frame
// before it sees the end of the stream rather than a reset.
func (c *Conn) CloseWrite() {
	if c.flags&(flagClosed|flagShutdown) != 0 {
		return
	}
	c.loop.be.closeWrite(c)
}

// Close closes the connection at once, dropping queued output, and calls
// OnClose with a nil cause.
func (c *Conn) Close() {
	c.loop.closeConn(c, nil)
}

func (l *Loop) closeConn(c *Conn, cause error) {
	if c.flags&flagClosed != 0 {
		return
	}
	l.be.closeConn(c, cause)
}

// finish is a stopping loop's last work: it refuses further jobs, runs those
// already posted (so a waiter on one is released) and closes every connection.
func (l *Loop) finish() {
	l.mu.Lock()
	jobs := l.jobs
	l.jobs = nil
	l.dead = true
	l.mu.Unlock()
	for _, j := range jobs {
		j.Run(l)
	}
	for len(l.conns) > 0 {
		l.closeConn(l.conns[len(l.conns)-1], ErrClosed)
	}
}

// deliver hands the connection's kept input plus data to OnData and keeps what
// OnData leaves.
func (l *Loop) deliver(c *Conn, data []byte) {
	if in := c.input(); in != nil {
		in.Write(data)
		data = in.B
	}
	l.inData = c
	used := l.p.h.OnData(c, data)
	l.inData = nil
	if c.flags&flagClosed != 0 {
		// Close left the input buffer for us, as data pointed into it.
		c.freeIn()
		return
	}
	// c.bufs may have come or gone while OnData wrote: read it afresh.
	rest := data[min(max(used, 0), len(data)):]
	switch in := c.input(); {
	case len(rest) == 0:
		c.freeIn()
	case in != nil:
		in.B = in.B[:copy(in.B, rest)]
	default:
		in = inPool.Get()
		in.Write(rest)
		c.buffers().in = in
	}
}

// startLoops makes backend loops the Poller's and runs each on a goroutine
// that wg waits for; each loop's run calls wg.Done as it returns.
func startLoops[L interface {
	loop() *Loop
	run()
}](p *Poller, be backend, wg *sync.WaitGroup, loops []L) {
	for _, bl := range loops {
		p.loops = append(p.loops, bl.loop())
	}
	p.be = be
	for _, bl := range loops {
		wg.Add(1)
		go bl.run()
	}
}
