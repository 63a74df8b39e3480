package poller

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/valyala/bytebufferpool"
	"golang.org/x/sys/unix"
)

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
	lnfd      int  // the listener while it is in this loop's epoll set, else -1
	acceptOff bool // accepting paused after EMFILE until the next tick
	inData    *Conn

	nconns atomic.Int64

	mu      sync.Mutex
	jobs    []Job // guarded by mu
	dead    bool  // guarded by mu: the loop has exited and runs no more jobs
	spare   []Job // owned by the loop goroutine: the drained batch, reused
	wakeups atomic.Bool
	stop    atomic.Bool
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
)

type outQueue struct {
	segs    []segment
	pending int
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

const (
	epollIn   = unix.EPOLLIN | unix.EPOLLRDHUP
	epollOut  = unix.EPOLLOUT
	maxEvents = 256
	maxIov    = 64
	// acceptBatch bounds how many connections one loop accepts per wakeup, so a
	// burst spreads over the loops instead of landing on the first one awake.
	acceptBatch = 32
)

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
	p := &Poller{h: h, opts: o, lnFD: -1}
	p.fds.init()
	for i := 0; i < o.Loops; i++ {
		l, err := newLoop(p, i)
		if err != nil {
			for _, l := range p.loops {
				l.closeFDs()
			}
			return nil, err
		}
		p.loops = append(p.loops, l)
	}
	for _, l := range p.loops {
		p.wg.Add(1)
		go l.run()
	}
	return p, nil
}

func newLoop(p *Poller, idx int) (*Loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("poller: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("poller: eventfd: %w", err)
	}
	l := &Loop{p: p, idx: idx, epfd: epfd, evfd: evfd, lnfd: -1,
		buf: make([]byte, p.opts.ReadBufferSize), iov: make([]unix.Iovec, 0, maxIov)}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		l.closeFDs()
		return nil, fmt.Errorf("poller: epoll_ctl eventfd: %w", err)
	}
	return l, nil
}

func (l *Loop) closeFDs() {
	unix.Close(l.evfd)
	unix.Close(l.epfd)
}

// Loops returns the poller's loops.
func (p *Poller) Loops() []*Loop { return p.loops }

// Listen opens a listening TCP socket on addr (as net.Listen does) and has every
// loop accept from it. A poller listens on at most one address.
func (p *Poller) Listen(addr string) (net.Addr, error) {
	if p.closed.Load() {
		return nil, ErrClosed
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	// The poller takes its own copy of the descriptor and the net.Listener goes
	// away: the runtime's netpoller must not also watch it.
	f, err := ln.(*net.TCPListener).File()
	laddr := ln.Addr()
	ln.Close()
	if err != nil {
		return nil, fmt.Errorf("poller: listener fd: %w", err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("poller: dup listener: %w", err)
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("poller: listener nonblock: %w", err)
	}
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	if p.lnFD >= 0 {
		unix.Close(fd)
		return nil, errors.New("poller: already listening")
	}
	p.lnFD, p.lnAddr = fd, laddr
	for _, l := range p.loops {
		// EPOLLEXCLUSIVE wakes one loop per incoming connection, not all of them.
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(fd)}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return nil, fmt.Errorf("poller: epoll_ctl listener: %w", err)
		}
	}
	for _, l := range p.loops {
		l.Post(FuncJob(func() { l.lnfd = fd }))
	}
	return laddr, nil
}

// Addr is the listening address, or nil.
func (p *Poller) Addr() net.Addr {
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	return p.lnAddr
}

// StopAccepting closes the listening socket. Open connections are not touched. It
// returns once no loop will accept again.
func (p *Poller) StopAccepting() {
	p.lnMu.Lock()
	fd := p.lnFD
	p.lnFD = -1
	p.lnMu.Unlock()
	if fd < 0 {
		return
	}
	// Each loop takes the listener out of its own epoll set, so no loop can be in
	// accept4 on a descriptor number that has been closed and reused.
	var wg sync.WaitGroup
	for _, l := range p.loops {
		wg.Add(1)
		if !l.Post(FuncJob(func() {
			defer wg.Done()
			l.lnfd = -1
			unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		})) {
			wg.Done()
		}
	}
	wg.Wait()
	unix.Close(fd)
}

// Dial connects to raddr from the loop chosen round-robin, optionally binding the
// local address laddr (the zero Addr lets the kernel choose). ctx becomes the
// connection's Context. The outcome arrives on the loop: OnOpen once connected, or
// OnClose with the error.
func (p *Poller) Dial(raddr netip.AddrPort, laddr netip.Addr, ctx any) error {
	if p.closed.Load() {
		return ErrClosed
	}
	domain := unix.AF_INET
	if raddr.Addr().Is6() && !raddr.Addr().Is4In6() {
		domain = unix.AF_INET6
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("poller: socket: %w", err)
	}
	if laddr.IsValid() {
		// Let the kernel pick the port at connect time, so many source addresses
		// can share the ephemeral range.
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(laddr, 0))); err != nil {
			unix.Close(fd)
			return fmt.Errorf("poller: bind %v: %w", laddr, err)
		}
	}
	if err := unix.Connect(fd, sockaddr(raddr)); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return fmt.Errorf("poller: connect %v: %w", raddr, err)
	}
	l := p.loops[int(p.nextDial.Add(1))%len(p.loops)]
	c := &Conn{loop: l, ctx: ctx, fd: int32(fd), flags: flagConnecting}
	if !l.Post(dialJob{c}) {
		unix.Close(fd)
		return ErrClosed
	}
	return nil
}

type dialJob struct{ c *Conn }

func (j dialJob) Run(l *Loop) {
	c := j.c
	l.add(c)
	ev := unix.EpollEvent{Events: epollIn | epollOut, Fd: c.fd}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, int(c.fd), &ev); err != nil {
		l.closeConn(c, err)
		return
	}
	c.flags |= flagWriteArmed
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() || ap.Addr().Is4In6() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// Close stops every loop. Open connections are closed at once, each reported to
// OnClose with ErrClosed. Close waits for the loops to exit.
func (p *Poller) Close() error {
	if p.closed.Swap(true) {
		return ErrClosed
	}
	p.StopAccepting()
	for _, l := range p.loops {
		l.stop.Store(true)
		l.wake()
	}
	p.wg.Wait()
	return nil
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

func (l *Loop) wake() {
	// Only the first post since the loop last drained pays for the write.
	if l.wakeups.Swap(true) {
		return
	}
	var one = [8]byte{1}
	unix.Write(l.evfd, one[:])
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

func (l *Loop) run() {
	defer l.p.wg.Done()
	events := make([]unix.EpollEvent, maxEvents)
	tick := l.p.opts.TickInterval
	next := time.Now().Add(tick)
	for !l.stop.Load() {
		wait := time.Until(next)
		if wait < 0 {
			wait = 0
		}
		msec := int((wait + time.Millisecond - 1) / time.Millisecond)
		n, err := unix.EpollWait(l.epfd, events, msec)
		if err != nil && err != unix.EINTR {
			panic(fmt.Sprintf("poller: epoll_wait: %v", err))
		}
		for i := 0; i < n; i++ {
			ev := &events[i]
			fd := int(ev.Fd)
			switch {
			case fd == l.evfd:
				l.runJobs()
			case fd == l.lnfd:
				l.accept(fd)
			default:
				c := l.p.fds.get(fd)
				if c == nil || c.loop != l {
					continue // stale event for a descriptor closed in this batch
				}
				l.handle(c, ev.Events)
			}
		}
		if now := time.Now(); !now.Before(next) {
			next = now.Add(tick)
			if l.acceptOff {
				l.acceptOff = false
				l.resumeAccept()
			}
			l.p.h.OnTick(l, now)
		}
	}
	l.shutdown()
}

func (l *Loop) runJobs() {
	var b [8]byte
	unix.Read(l.evfd, b[:])
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

func (l *Loop) shutdown() {
	l.mu.Lock()
	jobs := l.jobs
	l.jobs = nil
	l.dead = true
	l.mu.Unlock()
	// Jobs posted before the stop still run, so a waiter on one is released.
	for _, j := range jobs {
		j.Run(l)
	}
	for len(l.conns) > 0 {
		l.closeConn(l.conns[len(l.conns)-1], ErrClosed)
	}
	l.closeFDs()
}

func (l *Loop) accept(lnfd int) {
	p := l.p
	for i := 0; i < acceptBatch; i++ {
		nfd, _, err := unix.Accept4(lnfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			switch err {
			case unix.EAGAIN, unix.EINTR, unix.ECONNABORTED:
			case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
				// Out of descriptors or memory: the listener stays readable, so
				// stop watching it until the next tick instead of spinning.
				p.acceptErrors.Add(1)
				l.acceptOff = true
				unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, lnfd, nil)
			default:
				p.acceptErrors.Add(1)
			}
			return
		}
		if p.opts.NoDelay {
			unix.SetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		}
		c := &Conn{loop: l, fd: int32(nfd)}
		l.add(c)
		ev := unix.EpollEvent{Events: epollIn, Fd: int32(nfd)}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, nfd, &ev); err != nil {
			l.closeConn(c, err)
			continue
		}
		p.accepted.Add(1)
		p.h.OnOpen(c)
	}
}

func (l *Loop) resumeAccept() {
	fd := l.lnfd
	if fd < 0 {
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(fd)}
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
}

func (l *Loop) add(c *Conn) {
	c.idx = int32(len(l.conns))
	l.conns = append(l.conns, c)
	l.p.fds.set(int(c.fd), c)
	l.nconns.Add(1)
}

func (l *Loop) handle(c *Conn, events uint32) {
	if c.flags&flagConnecting != 0 {
		if events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		l.finishConnect(c)
		return
	}
	if events&unix.EPOLLOUT != 0 {
		if err := c.flush(); err != nil {
			l.closeConn(c, err)
			return
		}
	}
	if c.flags&flagClosed != 0 {
		return
	}
	// Errors and hang-ups are not trusted from the event mask alone: the read
	// reports them, and a stale event for a reused descriptor reads EAGAIN.
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		l.read(c)
	}
}

func (l *Loop) finishConnect(c *Conn) {
	errno, err := unix.GetsockoptInt(int(c.fd), unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && errno != 0 {
		err = syscall.Errno(errno)
	}
	if err != nil {
		l.closeConn(c, err)
		return
	}
	c.flags &^= flagConnecting
	c.disarmWrite()
	if l.p.opts.NoDelay {
		unix.SetsockoptInt(int(c.fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	l.p.dialed.Add(1)
	l.p.h.OnOpen(c)
}

func (l *Loop) read(c *Conn) {
	n, err := unix.Read(int(c.fd), l.buf)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return
	case err != nil:
		l.closeConn(c, err)
		return
	case n == 0:
		l.closeConn(c, ErrPeerClosed)
		return
	}
	data := l.buf[:n]
	if c.in != nil {
		c.in.Write(data)
		data = c.in.B
	}
	l.inData = c
	used := l.p.h.OnData(c, data)
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
	if c.out == nil {
		return 0
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
	return c.write2(b, nil)
}

// Write2 sends a followed by b, in one system call where possible.
func (c *Conn) Write2(a, b []byte) error {
	return c.write2(a, b)
}

func (c *Conn) write2(a, b []byte) error {
	if c.flags&(flagClosed|flagShutdown) != 0 {
		return ErrClosed
	}
	if len(a) == 0 {
		a, b = b, nil
	}
	total := len(a) + len(b)
	if total == 0 {
		return nil
	}
	if c.out != nil {
		if err := c.checkPending(total); err != nil {
			return err
		}
		c.queueCopy(a, b)
		return nil
	}
	var n int
	var err error
	if len(b) == 0 {
		n, err = unix.Write(int(c.fd), a)
	} else {
		n, err = writev2(int(c.fd), a, b)
	}
	if err != nil && err != unix.EAGAIN && err != unix.EINTR {
		return err
	}
	n = max(n, 0)
	if n == total {
		return nil
	}
	if err := c.checkPending(total - n); err != nil {
		return err
	}
	if n < len(a) {
		c.queueCopy(a[n:], b)
	} else {
		c.queueCopy(b[n-len(a):], nil)
	}
	return nil
}

// WriteFrame sends a shared frame. If the socket does not take all of it, the
// queue keeps a reference to the frame instead of a copy.
func (c *Conn) WriteFrame(f *Frame) error {
	if c.flags&(flagClosed|flagShutdown) != 0 {
		return ErrClosed
	}
	b := f.buf.B
	if c.out != nil {
		if err := c.checkPending(len(b)); err != nil {
			return err
		}
		f.Retain()
		c.enqueue(segment{frame: f}, len(b))
		return nil
	}
	n, err := unix.Write(int(c.fd), b)
	if err != nil && err != unix.EAGAIN && err != unix.EINTR {
		return err
	}
	n = max(n, 0)
	if n == len(b) {
		return nil
	}
	if err := c.checkPending(len(b) - n); err != nil {
		return err
	}
	f.Retain()
	c.enqueue(segment{frame: f, off: n}, len(b)-n)
	return nil
}

func (c *Conn) checkPending(add int) error {
	limit := c.loop.p.opts.MaxPending
	if limit > 0 && c.Pending()+add > limit {
		return ErrPendingLimit
	}
	return nil
}

func (c *Conn) queueCopy(a, b []byte) {
	buf := inPool.Get()
	buf.Write(a)
	buf.Write(b)
	c.enqueue(segment{buf: buf}, len(buf.B))
}

func (c *Conn) enqueue(s segment, n int) {
	if c.out == nil {
		c.out = queuePool.Get().(*outQueue)
	}
	c.out.segs = append(c.out.segs, s)
	c.out.pending += n
	c.armWrite()
}

func (c *Conn) armWrite() {
	if c.flags&flagWriteArmed != 0 {
		return
	}
	c.flags |= flagWriteArmed
	ev := unix.EpollEvent{Events: epollIn | epollOut, Fd: c.fd}
	unix.EpollCtl(c.loop.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &ev)
}

func (c *Conn) disarmWrite() {
	if c.flags&flagWriteArmed == 0 {
		return
	}
	c.flags &^= flagWriteArmed
	ev := unix.EpollEvent{Events: epollIn, Fd: c.fd}
	unix.EpollCtl(c.loop.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &ev)
}

// flush writes as much of the queue as the socket takes.
func (c *Conn) flush() error {
	q := c.out
	if q == nil {
		c.disarmWrite()
		return nil
	}
	l := c.loop
	for len(q.segs) > 0 {
		iov := l.iov[:0]
		for i := range q.segs {
			if len(iov) == maxIov {
				break
			}
			b := q.segs[i].bytes()
			var v unix.Iovec
			v.Base = &b[0]
			v.SetLen(len(b))
			iov = append(iov, v)
		}
		n, err := writev(int(c.fd), iov)
		if err == unix.EAGAIN || err == unix.EINTR {
			return nil
		}
		if err != nil {
			return err
		}
		q.pending -= n
		i := 0
		for ; i < len(q.segs) && n > 0; i++ {
			s := &q.segs[i]
			left := len(s.bytes())
			if n < left {
				s.off += n
				n = 0
				break
			}
			n -= left
			s.release()
		}
		// Drop the released prefix, keeping the backing array.
		k := copy(q.segs, q.segs[i:])
		clear(q.segs[k:])
		q.segs = q.segs[:k]
		if len(iov) < maxIov && k > 0 {
			return nil // the socket is full
		}
	}
	c.out = nil
	q.segs = q.segs[:0]
	q.pending = 0
	queuePool.Put(q)
	c.disarmWrite()
	if c.flags&flagShutdownOnFlush != 0 {
		c.flags |= flagShutdown
		unix.Shutdown(int(c.fd), unix.SHUT_WR)
	}
	c.loop.p.h.OnWritable(c)
	return nil
}

// DropQueued discards the queued output except the segment being sent, whose
// tail must still go out so the peer's stream stays framed. Every queued segment
// is one whole write, so what remains ends on a message boundary. A server uses
// it to put a close frame right behind a slow consumer's current message.
func (c *Conn) DropQueued() {
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

// CloseWrite shuts down the sending side once the queued output is flushed. The
// connection stays open for reading until the peer closes it or Close is called;
// a WebSocket server does this after its close frame, so the peer reads the frame
// before it sees the end of the stream rather than a reset.
func (c *Conn) CloseWrite() {
	if c.flags&(flagClosed|flagShutdown) != 0 {
		return
	}
	if c.out != nil {
		c.flags |= flagShutdownOnFlush
		return
	}
	c.flags |= flagShutdown
	unix.Shutdown(int(c.fd), unix.SHUT_WR)
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
	c.flags |= flagClosed
	// Clear the table before the descriptor number can be reused.
	l.p.fds.set(int(c.fd), nil)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(c.fd), nil)
	unix.Close(int(c.fd))
	last := l.conns[len(l.conns)-1]
	l.conns[c.idx] = last
	last.idx = c.idx
	l.conns[len(l.conns)-1] = nil
	l.conns = l.conns[:len(l.conns)-1]
	l.nconns.Add(-1)
	if q := c.out; q != nil {
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

func writev2(fd int, a, b []byte) (int, error) {
	var iov [2]unix.Iovec
	iov[0].Base = &a[0]
	iov[0].SetLen(len(a))
	iov[1].Base = &b[0]
	iov[1].SetLen(len(b))
	n, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), 2)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func writev(fd int, iov []unix.Iovec) (int, error) {
	n, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
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
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && rl.Max > 0 && rl.Max < 1<<31 {
		limit = rl.Max
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
