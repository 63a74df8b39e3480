// Package poller runs many TCP connections on a few event loops, so that an idle
// connection costs a small struct and no goroutine, read buffer or write buffer.
//
// A Poller owns N loops. Each loop owns the connections it accepted or dialed: their
// callbacks run on the loop's goroutine, one at a time, and only that goroutine
// reads, writes or closes them. Other goroutines reach a connection by posting a task
// to its loop (Loop.Post, Loop.PostWrite), which wakes the loop through an eventfd.
//
// The package is built for a WebSocket server but knows nothing of WebSocket: it
// moves bytes. The epoll backend is Linux only; on other systems New returns
// ErrUnsupported.
package poller

import (
	"errors"
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
	// MaxPending bounds a connection's queued, unsent bytes. A write that would pass
	// it fails with ErrPendingLimit and leaves the queue as it was. If zero, there
	// is no bound.
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
}

// Poller is a set of epoll loops and, optionally, one listening socket shared by
// all of them.
type Poller struct {
	h     Handler
	opts  Options
	loops []*Loop
	fds   fdTable

	lnMu   sync.Mutex
	lnFD   int // -1 when not listening; guarded by lnMu
	lnAddr net.Addr

	nextDial atomic.Uint32
	closed   atomic.Bool
	wg       sync.WaitGroup

	accepted     atomic.Uint64
	dialed       atomic.Uint64
	closedConns  atomic.Uint64
	acceptErrors atomic.Uint64

	np *npPoller // the netpoll backend's state; nil for epoll
}

// Loop is one event loop: an epoll instance, the goroutine that waits on it, and
// the connections it owns.
type Loop struct {
	p    *Poller
	idx  int
	epfd int
	evfd int

	// Owned by the loop goroutine.
	buf       []byte
	iov       []unix.Iovec
	conns     []*Conn
	lnfd      int    // the listener while it is in this loop's epoll set, else -1
	acceptOff bool   // accepting paused after EMFILE until the next tick
	inData    *Conn  // the connection whose OnData is running
	cork      []byte // replies to inData's input, sent when OnData returns

	nconns   atomic.Int64
	incoming atomic.Int64 // accepted connections posted to this loop, not yet adopted

	mu      sync.Mutex
	jobs    []Job // guarded by mu
	dead    bool  // guarded by mu: the loop has exited and runs no more jobs
	spare   []Job // owned by the loop goroutine: the drained batch, reused
	wakeups atomic.Bool
	stop    atomic.Bool

	np *npLoop // the netpoll backend's state; nil for epoll
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
type Conn struct {
	loop  *Loop
	ctx   any
	in    *bytebufferpool.ByteBuffer // unconsumed input; nil when there is none
	out   *outQueue                  // unsent output; nil when there is none
	stamp int64                      // the handler's: a deadline or last-seen time, see SetStamp
	fd    int32
	idx   int32 // position in loop.conns
	flags connFlags
}

type connFlags uint8

const (
	flagClosed connFlags = 1 << iota
	flagWriteArmed
	flagConnecting
	flagShutdownOnFlush
	flagShutdown
	flagRefused // a write was refused for MaxPending since OnWritable last ran
)

type outQueue struct {
	segs    []segment
	pending int
	// np is set for the netpoll backend, whose connections keep their out field
	// for life and queue in it instead.
	np *npConn
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
	inPool    bytebufferpool.Pool
	queuePool = sync.Pool{New: func() any { return new(outQueue) }}
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
		Conns:    make([]int64, len(p.loops)),
		Accepted: p.accepted.Load(),
		Dialed:   p.dialed.Load(),
		Closed:   p.closedConns.Load(),
	}
	for i, l := range p.loops {
		s.Conns[i] = l.nconns.Load()
	}
	return s
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
	l.wakeups.Store(false)
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

func (l *Loop) add(c *Conn) {
	c.idx = int32(len(l.conns))
	l.conns = append(l.conns, c)
	l.p.fds.set(int(c.fd), c)
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
func (c *Conn) Pending() int {
	if c.loop.inData == c && len(c.loop.cork) > 0 {
		return len(c.loop.cork) + c.queued()
	}
	return c.queued()
}

func (c *Conn) queued() int {
	if c.out == nil {
		return 0
	}
	if c.out.np != nil {
		return c.pendingNetpoll()
	}
	return c.out.pending
}

// Buffered is the number of input bytes kept from earlier reads.
func (c *Conn) Buffered() int {
	if c.in == nil {
		return 0
	}
	return len(c.in.B)
}

// DropQueued discards the queued output except the segment being sent, whose
// tail must still go out so the peer's stream stays framed. Every queued segment
// is one whole write, so what remains ends on a message boundary. A server uses
// it to put a close frame right behind a slow consumer's current message.
func (c *Conn) DropQueued() {
	if c.out != nil && c.out.np != nil {
		c.dropQueuedNetpoll()
		return
	}
	q := c.out
	if q == nil || len(q.segs) < 2 {
		return
	}
	for i := 1; i < len(q.segs); i++ {
		q.segs[i].release()
	}
	q.segs = q.segs[:1]
	q.pending = len(q.segs[0].bytes())
}

// forget removes a closed connection from the loop, frees its buffers and tells
// the handler.
func (l *Loop) forget(c *Conn, cause error) {
	last := l.conns[len(l.conns)-1]
	l.conns[c.idx] = last
	last.idx = c.idx
	l.conns[len(l.conns)-1] = nil
	l.conns = l.conns[:len(l.conns)-1]
	l.nconns.Add(-1)
	if q := c.out; q != nil && q.np == nil {
		for i := range q.segs {
			q.segs[i].release()
		}
		q.segs = q.segs[:0]
		q.pending = 0
		queuePool.Put(q)
		c.out = nil
	}
	if c.in != nil && l.inData != c {
		inPool.Put(c.in)
		c.in = nil
	}
	l.p.closedConns.Add(1)
	l.p.h.OnClose(c, cause)
}

// fdTable maps descriptors to connections without a map's per-entry cost: pages
// of 64Ki pointers are allocated as descriptor numbers reach them. An entry is
// written only by the loop that owns that descriptor.
type fdTable struct {
	pages []atomic.Pointer[fdPage]
}

type fdPage [fdPageSize]atomic.Pointer[Conn]

const (
	fdPageBits = 16
	fdPageSize = 1 << fdPageBits
)

func (t *fdTable) init() {
	var rl unix.Rlimit
	limit := uint64(1 << 20)
	// rl.Max is signed on FreeBSD.
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && rl.Max > 0 && rl.Max < 1<<31 {
		limit = uint64(rl.Max)
	}
	t.pages = make([]atomic.Pointer[fdPage], limit>>fdPageBits+1)
}

func (t *fdTable) get(fd int) *Conn {
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

func (t *fdTable) set(fd int, c *Conn) {
	pi := fd >> fdPageBits
	if pi >= len(t.pages) {
		panic("poller: descriptor beyond RLIMIT_NOFILE")
	}
	pg := t.pages[pi].Load()
	if pg == nil {
		if c == nil {
			return
		}
		pg = new(fdPage)
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
	switch o.Backend {
	case BackendEpoll:
		return newEpoll(h, o)
	case BackendNetpoll:
		return newNetpoll(h, o)
	}
	return nil, errors.New("poller: unknown backend " + string(o.Backend))
}

// Backend is the poller's event-loop implementation.
func (p *Poller) Backend() Backend { return p.opts.Backend }

// Listen opens a listening TCP socket on addr (as net.Listen does) and has every
// loop accept from it. A poller listens on at most one address.
func (p *Poller) Listen(addr string) (net.Addr, error) {
	if p.closed.Load() {
		return nil, ErrClosed
	}
	if p.np != nil {
		return p.listenNetpoll(addr)
	}
	return p.listenEpoll(addr)
}

// StopAccepting closes the listening socket. Open connections are not touched. It
// returns once no loop will accept again.
func (p *Poller) StopAccepting() {
	if p.np != nil {
		p.stopAcceptingNetpoll()
		return
	}
	p.stopAcceptingEpoll()
}

// Dial connects to raddr from the loop chosen round-robin, optionally binding the
// local address laddr (the zero Addr lets the kernel choose). ctx becomes the
// connection's Context. The outcome arrives on the loop: OnOpen once connected, or
// OnClose with the error.
func (p *Poller) Dial(raddr netip.AddrPort, laddr netip.Addr, ctx any) error {
	if p.closed.Load() {
		return ErrClosed
	}
	if p.np != nil {
		return p.dialNetpoll(raddr, laddr, ctx)
	}
	return p.dialEpoll(raddr, laddr, ctx)
}

// Close stops every loop. Open connections are closed at once, each reported to
// OnClose with ErrClosed. Close waits for the loops to exit.
func (p *Poller) Close() error {
	if p.closed.Swap(true) {
		return ErrClosed
	}
	if p.np != nil {
		return p.closeNetpoll()
	}
	return p.closeEpoll()
}

func (l *Loop) wake() {
	if l.np != nil {
		l.np.wake()
		return
	}
	l.wakeEpoll()
}

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
	if c.loop.np != nil {
		return c.write2Netpoll(a, b)
	}
	return c.write2Epoll(a, b)
}

// WriteFrame sends a shared frame. If the socket does not take all of it, the
// queue keeps a reference to the frame instead of a copy.
func (c *Conn) WriteFrame(f *Frame) error {
	if c.loop.np != nil {
		return c.writeFrameNetpoll(f)
	}
	return c.writeFrameEpoll(f)
}

// CloseWrite shuts down the sending side once the queued output is flushed. The
// connection stays open for reading until the peer closes it or Close is called;
// a WebSocket server does this after its close frame, so the peer reads the frame
// before it sees the end of the stream rather than a reset.
func (c *Conn) CloseWrite() {
	if c.loop.np != nil {
		c.closeWriteNetpoll()
		return
	}
	c.closeWriteEpoll()
}

// Close closes the connection at once, dropping queued output, and calls
// OnClose with a nil cause.
func (c *Conn) Close() {
	c.loop.closeConn(c, nil)
}

func (l *Loop) closeConn(c *Conn, cause error) {
	if l.np != nil {
		l.closeConnNetpoll(c, cause)
		return
	}
	l.closeConnEpoll(c, cause)
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
	if c.in != nil {
		c.in.Write(data)
		data = c.in.B
	}
	l.inData = c
	used := l.p.h.OnData(c, data)
	if len(l.cork) > 0 {
		l.uncork(c)
	}
	l.inData = nil
	if c.flags&flagClosed != 0 {
		// Close left the input buffer for us, as data pointed into it.
		if c.in != nil {
			inPool.Put(c.in)
			c.in = nil
		}
		return
	}
	rest := data[min(max(used, 0), len(data)):]
	switch {
	case len(rest) == 0:
		if c.in != nil {
			inPool.Put(c.in)
			c.in = nil
		}
	case c.in != nil:
		c.in.B = c.in.B[:copy(c.in.B, rest)]
	default:
		c.in = inPool.Get()
		c.in.Write(rest)
	}
}
