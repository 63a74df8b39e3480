package poller

import (
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The epoll backend's half of a handoff (handoff.go).

func (c *Conn) epoll() (*epollLoop, error) {
	el, ok := c.loop.be.(*epollLoop)
	if !ok {
		return nil, ErrHandoffUnsupported
	}
	return el, nil
}

// Freeze takes c out of its loop's epoll set: from now on the loop neither
// reads it nor writes its socket, and writes to it are queued. Call it on
// c's loop, outside c's OnData.
func (c *Conn) Freeze() error {
	el, err := c.epoll()
	if err != nil {
		return err
	}
	switch {
	case c.flags&flagClosed != 0:
		return ErrClosed
	case c.flags&flagFrozen != 0:
		return nil
	case c.flags&flagConnecting != 0:
		return fmt.Errorf("poller: fd %d: cannot freeze a dial in progress", c.fd)
	}
	if len(el.cork) > 0 && el.l.inData == c {
		el.uncork(c)
	}
	// ENOENT cannot happen for an open connection; any error still leaves
	// it out of the set, which is what freezing asks.
	unix.EpollCtl(el.epfd, unix.EPOLL_CTL_DEL, int(c.fd), nil)
	c.flags |= flagFrozen
	return nil
}

// Thaw puts a frozen connection back in its loop's epoll set: its queued
// output is sent, a shutdown asked for while frozen is applied once it is,
// and input that waited in the kernel is read. An error closes it. Call it
// on c's loop.
func (c *Conn) Thaw() error {
	el, err := c.epoll()
	if err != nil {
		return err
	}
	if c.flags&flagClosed != 0 {
		return ErrClosed
	}
	if c.flags&flagFrozen == 0 {
		return nil
	}
	c.flags &^= flagFrozen | flagWriteArmed | flagReadPaused
	if q := c.queue(); q != nil {
		c.flags |= flagWriteArmed
		if overLimit(el.l.p, q.pending) {
			c.flags |= flagReadPaused
		}
		q.moved = time.Now().UnixMilli()
	} else if c.flags&flagShutdownOnFlush != 0 {
		c.flags |= flagShutdown
		unix.Shutdown(int(c.fd), unix.SHUT_WR)
	}
	if err := el.ctl(unix.EPOLL_CTL_ADD, c, el.events(c)); err != nil {
		el.closeConn(c, err)
		return err
	}
	return nil
}

// Export returns a frozen connection's descriptor and state. The state's
// slices point into the connection's buffers: copy them before the loop
// goes on. The connection is unchanged, so a failed handoff thaws it and
// goes on. Call it on c's loop.
func (c *Conn) Export() (fd int, st HandoffState, err error) {
	if _, err := c.epoll(); err != nil {
		return -1, st, err
	}
	if c.flags&flagClosed != 0 {
		return -1, st, ErrClosed
	}
	if c.flags&flagFrozen == 0 {
		return -1, st, fmt.Errorf("poller: fd %d: export of a connection not frozen", c.fd)
	}
	if in := c.input(); in != nil {
		st.In = in.B
	}
	if q := c.queue(); q != nil {
		for i := range q.segs {
			st.Out = append(st.Out, q.segs[i].bytes())
		}
	}
	st.ShutdownWrite = c.flags&(flagShutdownOnFlush|flagShutdown) != 0
	st.Refused = c.flags&flagRefused != 0
	st.Stamp = c.stamp
	return int(c.fd), st, nil
}

// Detach lets go of a frozen connection that another process now owns: it
// closes this process's descriptor, which neither shuts the socket down nor
// ends the connection while the other process holds it, frees the queue and
// the input, and forgets the connection without calling OnClose. Call it on
// c's loop.
func (c *Conn) Detach() error {
	el, err := c.epoll()
	if err != nil {
		return err
	}
	if c.flags&flagClosed != 0 {
		return ErrClosed
	}
	if c.flags&flagFrozen == 0 {
		return fmt.Errorf("poller: fd %d: detach of a connection not frozen", c.fd)
	}
	c.flags |= flagClosed
	el.be.fds.set(int(c.fd), nil)
	unix.Close(int(c.fd))
	c.dropQueue()
	el.l.unlist(c)
	return nil
}

// Adopt makes the connected socket fd one of the loop's connections, frozen,
// with the state another process exported: st.In becomes its kept input and
// st.Out (copied) its queued output. Nothing is read or written until Thaw.
// The loop owns fd from now on, even when Adopt fails (it closes it then).
// ctx becomes the connection's context; OnOpen is not called. Call it on l.
func (l *Loop) Adopt(fd int, st HandoffState, ctx any) (*Conn, error) {
	el, ok := l.be.(*epollLoop)
	if !ok {
		unix.Close(fd)
		return nil, ErrHandoffUnsupported
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("poller: adopt fd %d: %w", fd, err)
	}
	unix.CloseOnExec(fd)
	c := l.p.newConn(l, fd, ctx, flagFrozen)
	c.stamp = st.Stamp
	if len(st.In) > 0 {
		in := inPool.Get()
		in.Write(st.In)
		c.buffers().in = in
	}
	if n := st.OutLen(); n > 0 {
		buf := inPool.Get()
		for _, b := range st.Out {
			buf.Write(b)
		}
		q := c.buffers()
		q.moved = time.Now().UnixMilli()
		q.segs = append(q.segs, segment{buf: buf})
		q.pending = n
		c.flags |= flagWriteArmed
	}
	if st.ShutdownWrite {
		c.flags |= flagShutdownOnFlush
	}
	if st.Refused {
		c.flags |= flagRefused
	}
	el.add(c)
	l.p.accepted.Add(1)
	return c, nil
}

// epollListener is the epoll backend and its listening socket's descriptor
// (-1 when there is none), or ErrHandoffUnsupported on another backend.
func (p *Poller) epollListener() (*epollBackend, int, error) {
	be, ok := p.be.(*epollBackend)
	if !ok {
		return nil, -1, ErrHandoffUnsupported
	}
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	return be, be.lnFD, nil
}

// PauseAccept stops every loop accepting from the listener, which stays
// open: connections wait in its backlog until ResumeAccept, or until the
// process a handoff gave the listener to accepts them. It returns once no
// loop will accept.
func (p *Poller) PauseAccept() error {
	be, fd, err := p.epollListener()
	if err != nil || fd < 0 {
		return err
	}
	var wg sync.WaitGroup
	for _, el := range be.loops {
		wg.Add(1)
		if !el.l.Post(FuncJob(func() {
			defer wg.Done()
			el.lnfd = -1
			el.acceptOff = false
			unix.EpollCtl(el.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		})) {
			wg.Done()
		}
	}
	wg.Wait()
	return nil
}

// ResumeAccept has every loop accept from the listener again, after
// PauseAccept or ListenFD.
func (p *Poller) ResumeAccept() error {
	be, fd, err := p.epollListener()
	if err != nil || fd < 0 {
		return err
	}
	for _, el := range be.loops {
		el.l.Post(FuncJob(func() {
			el.lnfd = fd
			el.resumeAccept()
		}))
	}
	return nil
}

// ListenerFD returns a duplicate of the listening socket's descriptor, for
// handing to another process; the caller closes it.
func (p *Poller) ListenerFD() (int, error) {
	be, ok := p.be.(*epollBackend)
	if !ok {
		return -1, ErrHandoffUnsupported
	}
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	if be.lnFD < 0 {
		return -1, fmt.Errorf("poller: not listening")
	}
	fd, err := unix.FcntlInt(uintptr(be.lnFD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("poller: dup listener: %w", err)
	}
	return fd, nil
}

// ListenFD makes fd, a listening TCP socket another process handed over,
// the poller's listener, with accepting paused until ResumeAccept. The
// poller owns fd from now on, even when ListenFD fails.
func (p *Poller) ListenFD(fd int) (net.Addr, error) {
	be, ok := p.be.(*epollBackend)
	if !ok {
		unix.Close(fd)
		return nil, ErrHandoffUnsupported
	}
	if p.closed.Load() {
		unix.Close(fd)
		return nil, ErrClosed
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("poller: listener nonblock: %w", err)
	}
	unix.CloseOnExec(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("poller: listener address: %w", err)
	}
	var laddr net.Addr
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		laddr = &net.TCPAddr{IP: net.IP(sa.Addr[:]).To16(), Port: sa.Port}
	case *unix.SockaddrInet6:
		laddr = &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
	default:
		unix.Close(fd)
		return nil, fmt.Errorf("poller: listener fd %d is not TCP", fd)
	}
	p.openSpare()
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	if be.lnFD >= 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("poller: already listening")
	}
	be.lnFD, p.lnAddr = fd, laddr
	return laddr, nil
}
