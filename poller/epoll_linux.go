package poller

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
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

func newEpoll(h Handler, o Options) (*Poller, error) {
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

func (p *Poller) listenEpoll(addr string) (net.Addr, error) {
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

func (p *Poller) stopAcceptingEpoll() {
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

func (p *Poller) dialEpoll(raddr netip.AddrPort, laddr netip.Addr, ctx any) error {
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

func (p *Poller) closeEpoll() error {
	p.stopAcceptingEpoll()
	for _, l := range p.loops {
		l.stop.Store(true)
		l.wake()
	}
	p.wg.Wait()
	return nil
}

func (l *Loop) wakeEpoll() {
	// Only the first post since the loop last drained pays for the write.
	if l.wakeups.Swap(true) {
		return
	}
	var one = [8]byte{1}
	unix.Write(l.evfd, one[:])
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
				l.runJobsEpoll()
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

func (l *Loop) runJobsEpoll() {
	var b [8]byte
	unix.Read(l.evfd, b[:])
	l.runJobs()
}

func (l *Loop) shutdown() {
	l.finish()
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
		p.accepted.Add(1)
		// The kernel wakes whichever loop is waiting first, which under a burst is
		// mostly the same one; the connection goes to the least loaded loop, so
		// every core carries its share of reads and fan-out.
		target := p.leastLoaded(l)
		c := &Conn{loop: target, fd: int32(nfd)}
		if target == l {
			l.adopt(c)
			continue
		}
		target.incoming.Add(1)
		if !target.Post(adoptJob{c}) {
			target.incoming.Add(-1)
			unix.Close(nfd)
		}
	}
}

// leastLoaded picks the loop with the fewest connections, counting those handed
// to it and not yet adopted; l wins ties.
func (p *Poller) leastLoaded(l *Loop) *Loop {
	best, load := l, l.nconns.Load()+l.incoming.Load()
	for _, o := range p.loops {
		if n := o.nconns.Load() + o.incoming.Load(); n < load {
			best, load = o, n
		}
	}
	return best
}

type adoptJob struct{ c *Conn }

func (j adoptJob) Run(l *Loop) {
	l.incoming.Add(-1)
	l.adopt(j.c)
}

// adopt registers an accepted connection with this loop.
func (l *Loop) adopt(c *Conn) {
	l.add(c)
	ev := unix.EpollEvent{Events: epollIn, Fd: c.fd}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, int(c.fd), &ev); err != nil {
		l.closeConn(c, err)
		return
	}
	l.p.h.OnOpen(c)
}

func (l *Loop) resumeAccept() {
	fd := l.lnfd
	if fd < 0 {
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(fd)}
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
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
	l.deliver(c, l.buf[:n])
}

// maxCork bounds the replies a loop gathers for the connection whose input it
// is handling.
const maxCork = 64 << 10

func (c *Conn) write2Epoll(a, b []byte) error {
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
	// Replies to input being handled are gathered and sent in one write when
	// OnData returns: a read that carried many frames costs one system call.
	if l := c.loop; l.inData == c && c.out == nil {
		if len(l.cork)+total <= maxCork {
			l.cork = append(append(l.cork, a...), b...)
			return nil
		}
		l.uncork(c)
		if c.flags&flagClosed != 0 {
			return ErrClosed
		}
	}
	return c.writeNow(a, b, true)
}

// writeNow writes a and b to the socket, queueing what it does not take; with
// limit, a queue that would pass MaxPending refuses the write.
func (c *Conn) writeNow(a, b []byte, limit bool) error {
	total := len(a) + len(b)
	if c.out != nil {
		if err := c.checkPendingIf(limit, total); err != nil {
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
	// What was partly written must be finished, whatever the limit.
	if err := c.checkPendingIf(limit, total-n); err != nil && n == 0 {
		return err
	}
	if n < len(a) {
		c.queueCopy(a[n:], b)
	} else {
		c.queueCopy(b[n-len(a):], nil)
	}
	return nil
}

func (c *Conn) writeFrameEpoll(f *Frame) error {
	if c.flags&(flagClosed|flagShutdown) != 0 {
		return ErrClosed
	}
	if l := c.loop; l.inData == c && len(l.cork) > 0 {
		l.uncork(c) // keep the order of what was written
		if c.flags&flagClosed != 0 {
			return ErrClosed
		}
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
	// A frame partly written must be finished, whatever the limit: dropping
	// its tail would break the stream.
	if err := c.checkPending(len(b) - n); err != nil && n == 0 {
		return err
	}
	f.Retain()
	c.enqueue(segment{frame: f, off: n}, len(b)-n)
	return nil
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
	if c.flags&flagRefused != 0 {
		c.flags &^= flagRefused
		c.loop.p.h.OnWritable(c)
	}
	return nil
}

func (c *Conn) closeWriteEpoll() {
	if c.flags&(flagClosed|flagShutdown) != 0 {
		return
	}
	if l := c.loop; l.inData == c && len(l.cork) > 0 {
		l.uncork(c)
		if c.flags&flagClosed != 0 {
			return
		}
	}
	if c.out != nil {
		c.flags |= flagShutdownOnFlush
		return
	}
	c.flags |= flagShutdown
	unix.Shutdown(int(c.fd), unix.SHUT_WR)
}

func (l *Loop) closeConnEpoll(c *Conn, cause error) {
	if c.flags&flagClosed != 0 {
		return
	}
	c.flags |= flagClosed
	// Clear the table before the descriptor number can be reused.
	l.p.fds.set(int(c.fd), nil)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(c.fd), nil)
	unix.Close(int(c.fd))
	l.forget(c, cause)
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

// uncork writes the replies gathered for c. They were accepted when written,
// so they are queued past MaxPending rather than dropped from the stream.
func (l *Loop) uncork(c *Conn) {
	b := l.cork
	l.cork = l.cork[:0]
	if c.flags&flagClosed != 0 || len(b) == 0 {
		return
	}
	if err := c.writeNow(b, nil, false); err != nil {
		l.closeConn(c, err)
	}
}
