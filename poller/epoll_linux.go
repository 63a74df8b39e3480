package poller

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
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

// The epoll backend: each loop is a goroutine waiting in epoll_wait on its own
// epoll instance, woken for posted jobs through an eventfd. The listening
// socket is in every loop's set (EPOLLEXCLUSIVE); a loop that accepts hands the
// connection to the least loaded loop. A connection's output goes straight to
// the socket; what the socket does not take is queued in Conn.bufs and EPOLLOUT
// is armed until it drains.

// epollBackend is the epoll backend's Poller half.
type epollBackend struct {
	p     *Poller
	loops []*epollLoop
	fds   fdTable[Conn] // descriptor → connection, for events
	wg    sync.WaitGroup

	lnFD int // the listener, or -1; guarded by p.lnMu
}

// epollLoop is one epoll loop. Every field not marked otherwise is owned by
// its goroutine (run).
type epollLoop struct {
	l    *Loop
	be   *epollBackend
	epfd int
	evfd int
	// epf is epfd registered with the runtime's netpoller: the loop blocks
	// there, parked like any goroutine waiting for a socket, instead of in an
	// epoll_wait system call (see run).
	epf *os.File
	epc syscall.RawConn
	// evs is what the last epoll_wait returned, ready of them; poll is
	// the function epc.Read calls, made once so that parking allocates
	// nothing.
	evs   []unix.EpollEvent
	ready int
	poll  func(fd uintptr) bool

	buf       []byte // the shared read buffer
	iov       []unix.Iovec
	fiov      []unix.Iovec // writeFrames' scratch
	lnfd      int          // the listener while it is in this loop's epoll set, else -1
	acceptOff bool         // accepting paused after EMFILE until the next tick
	cork      []byte       // replies to l.inData's input, sent when OnData returns

	incoming atomic.Int64 // accepted connections posted to this loop, not yet adopted
	wakeups  atomic.Bool  // the eventfd has been written since the loop last drained jobs
	stop     atomic.Bool
}

func newEpoll(p *Poller) error {
	be := &epollBackend{p: p, lnFD: -1}
	be.fds.init()
	for i := 0; i < p.opts.Loops; i++ {
		el, err := be.newLoop(i)
		if err != nil {
			for _, el := range be.loops {
				el.closeFDs()
			}
			return err
		}
		be.loops = append(be.loops, el)
	}
	startLoops(p, be, &be.wg, be.loops)
	return nil
}

func (be *epollBackend) newLoop(idx int) (*epollLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("poller: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("poller: eventfd: %w", err)
	}
	el := &epollLoop{be: be, epfd: epfd, evfd: evfd, lnfd: -1,
		buf: make([]byte, be.p.opts.ReadBufferSize), iov: make([]unix.Iovec, 0, maxIov),
		fiov: make([]unix.Iovec, 0, maxIov)}
	el.l = &Loop{p: be.p, idx: idx, be: el}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		el.closeFDs()
		return nil, fmt.Errorf("poller: epoll_ctl eventfd: %w", err)
	}
	// An epoll descriptor is itself pollable: readable while its ready list
	// holds an event. Non-blocking, os.NewFile puts it in the runtime's
	// netpoller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		el.closeFDs()
		return nil, fmt.Errorf("poller: epoll nonblock: %w", err)
	}
	el.epf = os.NewFile(uintptr(epfd), "epoll")
	// A descriptor the netpoller did not take refuses deadlines; waiting on
	// it would spin.
	if err := el.epf.SetReadDeadline(time.Time{}); err != nil {
		el.closeFDs()
		return nil, fmt.Errorf("poller: epoll descriptor not in the runtime's netpoller: %w", err)
	}
	epc, err := el.epf.SyscallConn()
	if err != nil {
		el.closeFDs()
		return nil, fmt.Errorf("poller: epoll descriptor not in the runtime's netpoller: %w", err)
	}
	el.epc = epc
	el.evs = make([]unix.EpollEvent, maxEvents)
	el.poll = func(uintptr) bool {
		el.ready = epollWaitNow(el.epfd, el.evs)
		return el.ready != 0
	}
	return el, nil
}

func (el *epollLoop) closeFDs() {
	unix.Close(el.evfd)
	if el.epf != nil {
		el.epf.Close() // out of the runtime's netpoller, then closed
		return
	}
	unix.Close(el.epfd)
}

func (be *epollBackend) listen(addr string) (net.Addr, error) {
	p := be.p
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
	if be.lnFD >= 0 {
		unix.Close(fd)
		return nil, errors.New("poller: already listening")
	}
	for i, el := range be.loops {
		// EPOLLEXCLUSIVE wakes one loop per incoming connection, not all of them.
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(fd)}
		if err := unix.EpollCtl(el.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			for _, el := range be.loops[:i] {
				unix.EpollCtl(el.epfd, unix.EPOLL_CTL_DEL, fd, nil)
			}
			unix.Close(fd)
			return nil, fmt.Errorf("poller: epoll_ctl listener: %w", err)
		}
	}
	be.lnFD, p.lnAddr = fd, laddr
	for _, el := range be.loops {
		el.l.Post(FuncJob(func() { el.lnfd = fd }))
	}
	return laddr, nil
}

func (be *epollBackend) stopAccepting() {
	p := be.p
	p.lnMu.Lock()
	fd := be.lnFD
	be.lnFD = -1
	p.lnMu.Unlock()
	if fd < 0 {
		return
	}
	// Each loop takes the listener out of its own epoll set, so no loop can be in
	// accept4 on a descriptor number that has been closed and reused.
	var wg sync.WaitGroup
	for _, el := range be.loops {
		wg.Add(1)
		if !el.l.Post(FuncJob(func() {
			defer wg.Done()
			el.lnfd = -1
			// ENOENT when accepting was paused (see accept): nothing to undo.
			unix.EpollCtl(el.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		})) {
			wg.Done()
		}
	}
	wg.Wait()
	unix.Close(fd)
}

func (be *epollBackend) dial(raddr netip.AddrPort, laddr netip.Addr, ctx any) error {
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
	el := be.loops[int(be.p.nextDial.Add(1))%len(be.loops)]
	c := be.p.newConn(el.l, fd, ctx, flagConnecting)
	if !el.l.Post(dialJob{el, c}) {
		unix.Close(fd)
		return ErrClosed
	}
	return nil
}

type dialJob struct {
	el *epollLoop
	c  *Conn
}

func (j dialJob) Run(*Loop) {
	el, c := j.el, j.c
	el.add(c)
	if err := el.ctl(unix.EPOLL_CTL_ADD, c, epollIn|epollOut); err != nil {
		el.closeConn(c, err)
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

func (be *epollBackend) stop() {
	be.stopAccepting()
	for _, el := range be.loops {
		el.stop.Store(true)
		el.wake()
	}
	be.wg.Wait()
}

func (el *epollLoop) wake() {
	// Only the first post since the loop last drained pays for the write.
	if el.wakeups.Swap(true) {
		return
	}
	var one = [8]byte{1}
	unix.Write(el.evfd, one[:])
}

// add registers c as the loop's, for the loop's list and for events.
func (el *epollLoop) add(c *Conn) {
	el.l.add(c)
	el.be.fds.set(int(c.fd), c)
}

// ctl sets c's event mask (EPOLL_CTL_ADD or EPOLL_CTL_MOD). An error means
// the kernel will not report the connection's events as asked, so the caller
// must close it: left open, it would stall until a deadline reaps it.
func (el *epollLoop) ctl(op int, c *Conn, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: c.fd}
	if err := unix.EpollCtl(el.epfd, op, int(c.fd), &ev); err != nil {
		err = fmt.Errorf("poller: epoll_ctl fd %d: %w", c.fd, err)
		el.be.p.log.Warn("poller: closing connection", "fd", c.fd, "err", err)
		return err
	}
	return nil
}

func (el *epollLoop) loop() *Loop { return el.l }

func (el *epollLoop) run() {
	l := el.l
	defer el.be.wg.Done()
	tick := l.p.opts.TickInterval
	next := time.Now().Add(tick)
	var deadline time.Time
	for !el.stop.Load() {
		// Whatever is ready is taken without blocking and without entering
		// the scheduler. Only when nothing is does the loop park in the
		// runtime's netpoller until the epoll descriptor is readable or the
		// next tick is due. A blocking epoll_wait would hold the loop's P in
		// a system call: the runtime's sysmon retakes a P held that way after
		// 20 µs and hands it to another thread, and under a load of one
		// message in flight per connection that hand-off, sysmon's own
		// wake-ups every 20 µs and the thread switches cost more than the
		// WebSocket work.
		if !deadline.Equal(next) {
			deadline = next
			el.epf.SetReadDeadline(next)
		}
		// Read calls poll first and parks only if it finds nothing. An
		// error is the deadline: the tick is due, see below.
		el.ready = 0
		el.epc.Read(el.poll)
		events := el.evs[:el.ready]
		for i := range events {
			ev := &events[i]
			fd := int(ev.Fd)
			switch {
			case fd == el.evfd:
				el.runJobs()
			case fd == el.lnfd:
				el.accept(fd)
			default:
				c := el.be.fds.get(fd)
				if c == nil || c.loop != l {
					continue // stale event for a descriptor closed in this batch
				}
				el.handle(c, ev.Events)
			}
		}
		if now := time.Now(); !now.Before(next) {
			next = now.Add(tick)
			if el.acceptOff {
				el.acceptOff = false
				el.resumeAccept()
			}
			l.p.h.OnTick(l, now)
		}
	}
	l.finish()
	el.closeFDs()
}

// epollWaitNow is epoll_wait with a zero timeout: it never blocks, so it is
// made as a raw system call, which the scheduler does not see. It returns the
// number of events, 0 for none or an interrupted call.
func epollWaitNow(epfd int, events []unix.EpollEvent) int {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		if e != unix.EINTR {
			panic(fmt.Sprintf("poller: epoll_wait: %v", e))
		}
		return 0
	}
	return int(n)
}

func (el *epollLoop) runJobs() {
	var b [8]byte
	unix.Read(el.evfd, b[:])
	el.wakeups.Store(false)
	el.l.runJobs()
}

func (el *epollLoop) accept(lnfd int) {
	l := el.l
	p := l.p
	for i := 0; i < acceptBatch; i++ {
		nfd, _, err := unix.Accept4(lnfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			switch err {
			case unix.EAGAIN, unix.EINTR, unix.ECONNABORTED:
			case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
				r := shedNoSpare
				if isOutOfFDs(err) {
					r = p.shedOne(func() (int, bool) {
						fd, _, err := unix.Accept4(lnfd, unix.SOCK_CLOEXEC)
						return fd, err == nil
					})
				}
				switch r {
				case shedNone: // nothing waiting: the listener is not readable
					return
				case shedDone:
					p.acceptFailed(err)
					continue
				}
				// No spare, or out of memory: the listener stays readable, so
				// stop watching it until the next tick instead of spinning.
				p.acceptFailed(err)
				el.acceptOff = true
				unix.EpollCtl(el.epfd, unix.EPOLL_CTL_DEL, lnfd, nil)
			default:
				p.acceptFailed(err)
			}
			return
		}
		if p.opts.NoDelay {
			unix.SetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		}
		p.accepted.Add(1)
		// The kernel wakes whichever loop is waiting first, which under a burst is
		// mostly the same one; the connection goes to the least loaded loop, so
		// every core carries its share of reads and fan-out.
		target := el.be.leastLoaded(el)
		c := p.newConn(target.l, nfd, nil, 0)
		if target == el {
			el.adopt(c)
			continue
		}
		target.incoming.Add(1)
		if !target.l.Post(adoptJob{target, c}) {
			target.incoming.Add(-1)
			unix.Close(nfd)
		}
	}
}

// leastLoaded picks the loop with the fewest connections, counting those handed
// to it and not yet adopted; el wins ties.
func (be *epollBackend) leastLoaded(el *epollLoop) *epollLoop {
	best, load := el, el.l.nconns.Load()+el.incoming.Load()
	for _, o := range be.loops {
		if n := o.l.nconns.Load() + o.incoming.Load(); n < load {
			best, load = o, n
		}
	}
	return best
}

type adoptJob struct {
	el *epollLoop
	c  *Conn
}

func (j adoptJob) Run(*Loop) {
	j.el.incoming.Add(-1)
	j.el.adopt(j.c)
}

// adopt registers an accepted connection with this loop.
func (el *epollLoop) adopt(c *Conn) {
	el.add(c)
	if err := el.ctl(unix.EPOLL_CTL_ADD, c, epollIn); err != nil {
		el.closeConn(c, err)
		return
	}
	el.l.p.h.OnOpen(c)
}

func (el *epollLoop) resumeAccept() {
	fd := el.lnfd
	if fd < 0 {
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(fd)}
	if err := unix.EpollCtl(el.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil && err != unix.EEXIST {
		// Not a connection's: this loop stops accepting, the others go on, and
		// the next tick tries again.
		el.acceptOff = true
		el.be.p.log.Warn("poller: listener not watched, retrying next tick", "loop", el.l.idx, "err", err)
	}
}

func (el *epollLoop) handle(c *Conn, events uint32) {
	if c.flags&flagConnecting != 0 {
		if events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		el.finishConnect(c)
		return
	}
	if events&unix.EPOLLOUT != 0 {
		if err := el.flush(c); err != nil {
			el.closeConn(c, err)
			return
		}
	}
	if c.flags&flagClosed != 0 {
		return
	}
	// Errors and hang-ups are not trusted from the event mask alone: the read
	// reports them, and a stale event for a reused descriptor reads EAGAIN.
	// A paused connection reads only to learn of an error or hang-up.
	mask := uint32(unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR)
	if c.flags&flagReadPaused != 0 {
		mask = unix.EPOLLHUP | unix.EPOLLERR
	}
	if events&mask != 0 {
		el.read(c)
	}
}

func (el *epollLoop) finishConnect(c *Conn) {
	p := el.l.p
	errno, err := unix.GetsockoptInt(int(c.fd), unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && errno != 0 {
		err = syscall.Errno(errno)
	}
	if err == nil {
		c.flags &^= flagConnecting
		err = el.disarmWrite(c)
	}
	if err != nil {
		el.closeConn(c, err)
		return
	}
	if p.opts.NoDelay {
		unix.SetsockoptInt(int(c.fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	p.dialed.Add(1)
	p.h.OnOpen(c)
}

func (el *epollLoop) read(c *Conn) {
	n, err := rawRead(int(c.fd), el.buf)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return
	case err != nil:
		el.closeConn(c, err)
		return
	case n == 0:
		el.closeConn(c, ErrPeerClosed)
		return
	}
	el.l.deliver(c, el.buf[:n])
	if len(el.cork) > 0 {
		el.uncork(c)
	}
	if q := c.queue(); c.flags&(flagClosed|flagReadPaused) == 0 && q != nil && overLimit(el.l.p, q.pending) {
		// Its own replies are more than MaxPending behind: leave its input
		// in the kernel until they drain (see flush), so a client that does
		// not read cannot make us buffer without end.
		c.flags |= flagReadPaused
		if err := el.ctl(unix.EPOLL_CTL_MOD, c, el.events(c)); err != nil {
			el.closeConn(c, err)
		}
	}
}

// events is c's epoll event mask for its flags.
func (el *epollLoop) events(c *Conn) uint32 {
	var ev uint32
	if c.flags&flagReadPaused == 0 {
		ev |= epollIn
	}
	if c.flags&flagWriteArmed != 0 {
		ev |= epollOut
	}
	return ev
}

// maxCork bounds the replies a loop gathers for the connection whose input it
// is handling.
const maxCork = 64 << 10

func (el *epollLoop) write2(c *Conn, a, b []byte) error {
	total := len(a) + len(b)
	// Replies to input being handled are gathered and sent in one write when
	// OnData returns: a read that carried many frames costs one system call.
	if el.l.inData == c && c.queue() == nil {
		if len(el.cork)+total <= maxCork {
			el.cork = append(append(el.cork, a...), b...)
			return nil
		}
		el.uncork(c)
		if c.flags&flagClosed != 0 {
			return ErrClosed
		}
	}
	// A reply to the connection's own input is its own traffic: never
	// refused, it pauses reading instead (see read). MaxPending refuses
	// the rest: broadcasts, and anything else written from a job.
	return el.writeNow(c, a, b, el.l.inData != c)
}

// queued counts the replies corked for c as queued, as they will be sent
// before anything written after them.
func (el *epollLoop) queued(c *Conn) int {
	n := 0
	if el.l.inData == c {
		n = len(el.cork)
	}
	if q := c.queue(); q != nil {
		n += q.pending
	}
	return n
}

// writeNow writes a and b to the socket, queueing what it does not take; with
// limit, a queue that would pass MaxPending refuses the write.
func (el *epollLoop) writeNow(c *Conn, a, b []byte, limit bool) error {
	total := len(a) + len(b)
	if c.queue() != nil || c.flags&flagFrozen != 0 {
		if err := c.checkPendingIf(limit, total); err != nil {
			return err
		}
		return el.queueCopy(c, a, b)
	}
	var n int
	var err error
	if len(b) == 0 {
		n, err = rawWrite(int(c.fd), a)
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
	// What was partly written must be finished, whatever the limit.
	if err := c.checkPendingIf(limit, total-n); err != nil && n == 0 {
		return err
	}
	if n < len(a) {
		return el.queueCopy(c, a[n:], b)
	}
	return el.queueCopy(c, b[n-len(a):], nil)
}

func (el *epollLoop) writeFrame(c *Conn, f *Frame) error {
	if el.l.inData == c && len(el.cork) > 0 {
		el.uncork(c) // keep the order of what was written
		if c.flags&flagClosed != 0 {
			return ErrClosed
		}
	}
	b := f.buf.B
	limit := el.l.inData != c // as in write2
	if c.queue() != nil || c.flags&flagFrozen != 0 {
		if err := c.checkPendingIf(limit, len(b)); err != nil {
			return err
		}
		f.Retain()
		return el.enqueue(c, segment{frame: f}, len(b))
	}
	n, err := rawWrite(int(c.fd), b)
	if err != nil && err != unix.EAGAIN && err != unix.EINTR {
		return err
	}
	n = max(n, 0)
	if n == len(b) {
		return nil
	}
	// A frame partly written must be finished, whatever the limit: dropping
	// its tail would break the stream.
	if err := c.checkPendingIf(limit, len(b)-n); err != nil && n == 0 {
		return err
	}
	f.Retain()
	return el.enqueue(c, segment{frame: f, off: n}, len(b)-n)
}

// writeFrames is writeFrame for several frames in one writev; what the
// socket does not take is queued as references to the frames.
func (el *epollLoop) writeFrames(c *Conn, fs []*Frame) (int, error) {
	if el.l.inData == c && len(el.cork) > 0 {
		el.uncork(c) // keep the order of what was written
		if c.flags&flagClosed != 0 {
			return 0, ErrClosed
		}
	}
	limit := el.l.inData != c // as in write2
	total := 0
	for _, f := range fs {
		total += len(f.buf.B)
	}
	n := 0
	if c.queue() == nil && c.flags&flagFrozen == 0 {
		iov := el.fiov[:0]
		for _, f := range fs {
			if b := f.buf.B; len(b) > 0 && len(iov) < maxIov {
				var v unix.Iovec
				v.Base = &b[0]
				v.SetLen(len(b))
				iov = append(iov, v)
			}
		}
		el.fiov = iov
		if len(iov) == 0 {
			return len(fs), nil
		}
		w, err := writev(int(c.fd), iov)
		clear(el.fiov) // hold no frame's bytes
		if err != nil && err != unix.EAGAIN && err != unix.EINTR {
			return 0, err
		}
		n = max(w, 0)
		if n == total {
			return len(fs), nil
		}
	}
	// A frame partly written must be finished, whatever the limit: dropping
	// its tail would break the stream.
	if err := c.checkPendingIf(limit, total-n); err != nil && n == 0 {
		return 0, err
	}
	for _, f := range fs {
		b := len(f.buf.B)
		if n >= b {
			n -= b
			continue
		}
		f.Retain()
		if err := el.enqueue(c, segment{frame: f, off: n}, b-n); err != nil {
			return 0, err // the connection is closed
		}
		n = 0
	}
	return len(fs), nil
}

func (c *Conn) checkPendingIf(limit bool, add int) error {
	if !limit {
		return nil
	}
	return c.checkPending(add)
}

func (c *Conn) checkPending(add int) error {
	limit := c.loop.p.opts.MaxPending
	if limit > 0 && c.Pending()+add > limit {
		c.flags |= flagRefused
		return ErrPendingLimit
	}
	return nil
}

func (el *epollLoop) queueCopy(c *Conn, a, b []byte) error {
	buf := inPool.Get()
	buf.Write(a)
	buf.Write(b)
	return el.enqueue(c, segment{buf: buf}, len(buf.B))
}

// enqueue adds s to c's queue and arms EPOLLOUT. The queue keeps s even when
// arming fails: the write was accepted, and the error closes the connection,
// which releases the queue.
func (el *epollLoop) enqueue(c *Conn, s segment, n int) error {
	q := c.buffers()
	if len(q.segs) == 0 {
		q.moved = time.Now().UnixMilli()
	}
	q.segs = append(q.segs, s)
	q.pending += n
	if err := el.armWrite(c); err != nil {
		el.closeConn(c, err)
		return err
	}
	return nil
}

func (el *epollLoop) armWrite(c *Conn) error {
	if c.flags&flagWriteArmed != 0 {
		return nil
	}
	c.flags |= flagWriteArmed
	if c.flags&flagFrozen != 0 {
		return nil // out of the epoll set: thaw arms it
	}
	return el.ctl(unix.EPOLL_CTL_MOD, c, el.events(c))
}

func (el *epollLoop) disarmWrite(c *Conn) error {
	if c.flags&flagWriteArmed == 0 {
		return nil
	}
	c.flags &^= flagWriteArmed
	if c.flags&flagFrozen != 0 {
		return nil
	}
	return el.ctl(unix.EPOLL_CTL_MOD, c, el.events(c))
}

// flush writes as much of the queue as the socket takes.
func (el *epollLoop) flush(c *Conn) error {
	q := c.queue()
	if q == nil {
		return el.disarmWrite(c)
	}
	for len(q.segs) > 0 {
		iov := el.iov[:0]
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
		if n > 0 {
			q.moved = time.Now().UnixMilli()
		}
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
	q.segs = q.segs[:0]
	q.pending = 0
	c.tidyBufs() // q is not to be used from here
	// Drained: read again, in the same epoll_ctl.
	c.flags &^= flagReadPaused
	if err := el.disarmWrite(c); err != nil {
		return err
	}
	if c.flags&flagShutdownOnFlush != 0 {
		c.flags |= flagShutdown
		unix.Shutdown(int(c.fd), unix.SHUT_WR)
	}
	if c.flags&flagRefused != 0 {
		c.flags &^= flagRefused
		el.l.p.h.OnWritable(c)
	}
	return nil
}

func (el *epollLoop) closeWrite(c *Conn) {
	if el.l.inData == c && len(el.cork) > 0 {
		el.uncork(c)
		if c.flags&flagClosed != 0 {
			return
		}
	}
	if c.queue() != nil || c.flags&flagFrozen != 0 {
		// A frozen socket is not touched: thaw shuts it once it is flushed.
		c.flags |= flagShutdownOnFlush
		return
	}
	c.flags |= flagShutdown
	unix.Shutdown(int(c.fd), unix.SHUT_WR)
}

func (el *epollLoop) dropQueued(c *Conn) {
	q := c.queue()
	if q == nil || len(q.segs) < 2 {
		return
	}
	for i := 1; i < len(q.segs); i++ {
		q.segs[i].release()
	}
	q.segs = q.segs[:1]
	q.pending = len(q.segs[0].bytes())
}

func (el *epollLoop) closeConn(c *Conn, cause error) {
	if c.flags&flagClosed != 0 {
		return
	}
	c.flags |= flagClosed
	// Clear the table before the descriptor number can be reused.
	el.be.fds.set(int(c.fd), nil)
	// ENOENT when a failed EPOLL_CTL_ADD is why we are closing; the close
	// removes the descriptor from the set in any case.
	unix.EpollCtl(el.epfd, unix.EPOLL_CTL_DEL, int(c.fd), nil)
	unix.Close(int(c.fd))
	c.dropQueue()
	el.l.forget(c, cause)
}

// dropQueue releases everything queued for c, for a closed or detached
// connection; the loop's unlist then frees the input and c.bufs.
func (c *Conn) dropQueue() {
	if q := c.queue(); q != nil {
		for i := range q.segs {
			q.segs[i].release()
		}
		q.segs = q.segs[:0]
		q.pending = 0
	}
}

// The connections' reads and writes are raw system calls, which the
// scheduler does not see: the sockets are non-blocking, so a call never
// waits, and made the ordinary way each one would leave the loop's P marked
// as in a system call. When the kernel deschedules the loop's thread inside
// a write (the write wakes the peer, and on a busy machine the peer runs
// first), sysmon finds the P held past 20 µs, hands it to another thread and
// the loop has to get one back: two thread wake-ups for nothing.

func rawRead(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

func rawWrite(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

func writev2(fd int, a, b []byte) (int, error) {
	var iov [2]unix.Iovec
	iov[0].Base = &a[0]
	iov[0].SetLen(len(a))
	iov[1].Base = &b[0]
	iov[1].SetLen(len(b))
	n, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), 2)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func writev(fd int, iov []unix.Iovec) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// uncork writes the replies gathered for c. They were accepted when written,
// so they are queued past MaxPending rather than dropped from the stream.
func (el *epollLoop) uncork(c *Conn) {
	b := el.cork
	el.cork = el.cork[:0]
	if c.flags&flagClosed != 0 || len(b) == 0 {
		return
	}
	if err := el.writeNow(c, b, nil, false); err != nil {
		el.closeConn(c, err)
	}
}
