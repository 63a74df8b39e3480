//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package poller

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudwego/netpoll"
	"golang.org/x/sys/unix"
)

// The netpoll backend keeps the poller's contract on top of cloudwego/netpoll,
// whose callbacks run on a pool of goroutines rather than on a loop:
//
//   - A loop is a mutex (exec) plus a goroutine for posted jobs and ticks.
//     Every callback for a connection of the loop, every job and every tick
//     runs holding exec, so they run one at a time, as on an epoll loop.
//   - Reads take all of netpoll's buffered input with Next(Len()), hand it to
//     OnData, keep the unconsumed tail in a pooled buffer and Release, so
//     OnRequest is never left with input it will be called for again.
//   - Writes never block a loop. A write outside the connection's own request
//     with nothing already queued goes straight to the socket; what the socket
//     does not take, and every reply written while OnRequest handles input, goes
//     to the connection's own queue. A flusher (the connection's OnRequest
//     goroutine when the write came from its own input, otherwise a goroutine
//     started for the burst) hands the queued bytes to netpoll's writer with
//     WriteBinary (which references pieces over 4 KiB and copies smaller
//     ones) and calls Flush, which may block until the socket drains or the
//     write timeout passes. A shared frame is released only after Flush
//     returns, when its bytes are in the kernel; if Flush fails the connection
//     is closed and the references are dropped without returning the frame to
//     its pool, since netpoll may still hold its bytes.
//
// netpoll sizes each connection's input buffer from process-wide settings, so
// the first netpoll poller's Options.NetpollBufferSize applies to all of them.

// npPoller is the netpoll backend's state.
type npPoller struct {
	ln     net.Listener
	acc    sync.WaitGroup // the accept goroutine
	loopWG sync.WaitGroup // the loops' goroutines
	flush  sync.WaitGroup // flushers started for bursts
}

// npLoop is one netpoll loop: a lock standing in for the loop goroutine.
type npLoop struct {
	exec   sync.Mutex
	wakeCh chan struct{}
	stopCh chan struct{}
}

func (n *npLoop) wake() {
	select {
	case n.wakeCh <- struct{}{}:
	default:
	}
}

// npConn is a netpoll connection's writing state. It lives in the Conn's out
// field for the connection's whole life.
type npConn struct {
	conn netpoll.Connection

	mu       sync.Mutex
	queue    []segment // guarded by mu: written, not yet handed to netpoll
	spare    []segment // owned by the flusher
	pending  int       // guarded by mu: queued plus in flight
	flushing bool      // guarded by mu: someone owns flushing the queue
	// byRequest, with flushing, says the owner is the connection's running
	// OnRequest, which flushes when its handler returns; otherwise the owner is
	// a goroutine started for the burst. There is never more than one.
	byRequest bool // guarded by mu
	refused   bool // guarded by mu: a write was refused for MaxPending
	shutdown  bool // guarded by mu: shut the write side once drained
	// closeAfter asks the flushing goroutine to close the connection when its
	// Flush returns: netpoll's Close racing a Flush on another goroutine can
	// touch the descriptor after it is closed and reused.
	closeAfter bool // guarded by mu

	inRequest atomic.Bool // its OnRequest is running and will flush on return
	closing   atomic.Bool // the poller is closing it
}

// DefaultNetpollBufferSize is netpoll's first input buffer per connection as
// throng configures it: netpoll's own default is a page, allocated at accept
// and kept while the connection lives.
const DefaultNetpollBufferSize = 1024

var netpollConfig sync.Once

func newNetpoll(h Handler, o Options) (*Poller, error) {
	netpollConfig.Do(func() {
		size := o.NetpollBufferSize
		if size <= 0 {
			size = DefaultNetpollBufferSize
		}
		netpoll.Configure(netpoll.Config{BufferSize: size})
		// netpoll rounds every buffer node up to LinkBufferCap (a 4 KiB page),
		// so BufferSize alone cannot make the input buffer smaller.
		netpoll.LinkBufferCap = size
	})
	p := &Poller{h: h, opts: o, lnFD: -1, np: &npPoller{}}
	p.fds.init()
	for i := 0; i < o.Loops; i++ {
		l := &Loop{p: p, idx: i, lnfd: -1, np: &npLoop{wakeCh: make(chan struct{}, 1), stopCh: make(chan struct{})}}
		p.loops = append(p.loops, l)
	}
	for _, l := range p.loops {
		p.np.loopWG.Add(1)
		go l.runNetpoll()
	}
	return p, nil
}

func (l *Loop) runNetpoll() {
	defer l.p.np.loopWG.Done()
	t := time.NewTicker(l.p.opts.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-l.np.wakeCh:
			l.np.exec.Lock()
			l.runJobs()
			l.np.exec.Unlock()
		case now := <-t.C:
			l.np.exec.Lock()
			l.p.h.OnTick(l, now)
			l.np.exec.Unlock()
		case <-l.np.stopCh:
			l.np.exec.Lock()
			l.finish()
			l.np.exec.Unlock()
			return
		}
	}
}

func (p *Poller) listenNetpoll(addr string) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	if p.np.ln != nil {
		ln.Close()
		return nil, errors.New("poller: already listening")
	}
	p.np.ln, p.lnAddr = ln, ln.Addr()
	p.np.acc.Add(1)
	go p.acceptNetpoll(ln)
	return ln.Addr(), nil
}

// acceptNetpoll accepts with the standard library and gives each socket to
// netpoll: netpoll's own server closes every idle connection when it stops
// listening, and a draining server must keep them.
func (p *Poller) acceptNetpoll(ln net.Listener) {
	defer p.np.acc.Done()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			p.acceptErrors.Add(1)
			time.Sleep(10 * time.Millisecond) // out of descriptors: let some close
			continue
		}
		fd, err := detachFD(nc)
		if err != nil {
			p.acceptErrors.Add(1)
			continue
		}
		p.accepted.Add(1)
		p.adoptNetpoll(fd, nil)
	}
}

// detachFD takes a duplicate of a net.Conn's descriptor and closes the
// original, so only netpoll watches the socket.
func detachFD(nc net.Conn) (int, error) {
	defer nc.Close()
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1, errors.New("poller: not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.Dup(int(s)) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	unix.CloseOnExec(fd)
	return fd, nil
}

// adoptNetpoll makes a Conn for a connected socket on the next loop and
// registers it with netpoll.
func (p *Poller) adoptNetpoll(fd int, ctx any) {
	if p.opts.NoDelay {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	fd = freshFD(fd)
	l := p.loops[int(p.nextDial.Add(1))%len(p.loops)]
	np := &npConn{}
	c := &Conn{loop: l, ctx: ctx, fd: int32(fd), out: &outQueue{np: np}}
	// Registered under exec, so OnRequest cannot run before OnOpen has.
	l.np.exec.Lock()
	defer l.np.exec.Unlock()
	conn, err := netpoll.NewFDConnection(fd)
	if err != nil {
		unix.Close(fd)
		p.h.OnClose(c, err)
		return
	}
	np.conn = conn
	if p.opts.WriteTimeout > 0 {
		conn.SetWriteTimeout(p.opts.WriteTimeout)
	}
	l.add(c)
	// Close callbacks run newest first, so this one runs before netpoll's own,
	// which closes the descriptor.
	conn.AddCloseCallback(func(netpoll.Connection) error {
		noteClosedFD(fd)
		if !np.closing.Load() {
			// netpoll has already read the socket's error, if any: a reset and
			// an orderly close look the same from here.
			l.np.exec.Lock()
			l.closeConnNetpoll(c, ErrPeerClosed)
			l.np.exec.Unlock()
		}
		return nil
	})
	p.h.OnOpen(c)
	conn.SetOnRequest(func(context.Context, netpoll.Connection) error {
		l.requestNetpoll(c)
		return nil
	})
}

// requestNetpoll reads everything netpoll has buffered for c.
func (l *Loop) requestNetpoll(c *Conn) {
	np := c.out.np
	np.inRequest.Store(true)
	l.np.exec.Lock()
	if c.flags&flagClosed == 0 {
		r := np.conn.Reader()
		if n := r.Len(); n > 0 {
			data, err := r.Next(n)
			if err == nil {
				l.deliver(c, data)
			}
		}
		r.Release()
	}
	l.np.exec.Unlock()
	np.inRequest.Store(false)
	// Replies written while handling this input are flushed here, on the
	// connection's own goroutine, where blocking stalls nobody else.
	np.mu.Lock()
	mine := np.flushing && np.byRequest
	np.mu.Unlock()
	if mine {
		c.flushNetpoll()
	}
}

func (p *Poller) stopAcceptingNetpoll() {
	p.lnMu.Lock()
	ln := p.np.ln
	p.np.ln = nil
	p.lnMu.Unlock()
	if ln != nil {
		ln.Close()
		p.np.acc.Wait()
	}
}

func (p *Poller) dialNetpoll(raddr netip.AddrPort, laddr netip.Addr, ctx any) error {
	d := net.Dialer{Timeout: 10 * time.Second}
	if laddr.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(laddr, 0))
	}
	p.np.flush.Add(1)
	go func() {
		defer p.np.flush.Done()
		nc, err := d.Dial("tcp", raddr.String())
		if err == nil {
			var fd int
			if fd, err = detachFD(nc); err == nil {
				p.dialed.Add(1)
				p.adoptNetpoll(fd, ctx)
				return
			}
		}
		l := p.loops[int(p.nextDial.Add(1))%len(p.loops)]
		l.Post(FuncJob(func() { p.h.OnClose(&Conn{loop: l, ctx: ctx, fd: -1, flags: flagClosed}, err) }))
	}()
	return nil
}

func (p *Poller) closeNetpoll() error {
	p.stopAcceptingNetpoll()
	for _, l := range p.loops {
		close(l.np.stopCh)
	}
	p.np.loopWG.Wait()
	p.np.flush.Wait()
	return nil
}

func (c *Conn) write2Netpoll(a, b []byte) error {
	if c.flags&(flagClosed|flagShutdown) != 0 {
		return ErrClosed
	}
	if len(a)+len(b) == 0 {
		return nil
	}
	buf := inPool.Get()
	buf.Write(a)
	buf.Write(b)
	queued, err := c.writeNetpoll(segment{buf: buf})
	if !queued {
		inPool.Put(buf)
	}
	return err
}

func (c *Conn) writeFrameNetpoll(f *Frame) error {
	if c.flags&(flagClosed|flagShutdown) != 0 {
		return ErrClosed
	}
	_, err := c.writeNetpoll(segment{frame: f})
	return err
}

// writeNetpoll writes s straight to the socket if it can (see
// writeDirect) and queues what the socket does not take, reporting
// whether the queue kept s. A queued frame gets the queue's own reference; a
// buffer the queue did not keep is the caller's.
func (c *Conn) writeNetpoll(s segment) (queued bool, err error) {
	np := c.out.np
	b := s.bytes()
	// Nothing queued or in netpoll's writer, and no OnRequest gathering
	// replies: write from the loop. Only the loop adds to the queue, and the
	// caller is the loop, so the state read here holds through the write
	// without the lock.
	np.mu.Lock()
	direct := !np.flushing && !np.inRequest.Load()
	np.mu.Unlock()
	if direct {
		if s.off, err = c.writeDirect(b); err != nil || s.off == len(b) {
			return false, err
		}
	}
	np.mu.Lock()
	// What was partly written must be finished, whatever the limit.
	if err := c.checkPendingLocked(np, len(b)-s.off); err != nil && s.off == 0 {
		np.mu.Unlock()
		return false, err
	}
	if s.frame != nil {
		s.frame.Retain()
	}
	np.queue = append(np.queue, s)
	np.pending += len(b) - s.off
	start := c.claimFlushLocked(np)
	np.mu.Unlock()
	if start {
		c.startFlusher()
	}
	return true, nil
}

// writeDirect writes b to the socket from the loop and reports how much the
// socket took. Most writes outside a request (broadcasts, pings, closes) fit
// the socket buffer, so they cost one system call and no goroutine; netpoll
// carries only what the socket does not take at once. The descriptor is safe
// to use: netpoll closes it only after the close callback, which needs the
// loop's lock that the caller holds.
func (c *Conn) writeDirect(b []byte) (int, error) {
	n, err := unix.Write(int(c.fd), b)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return 0, nil
	case err != nil:
		return 0, err
	}
	return n, nil
}

func (c *Conn) checkPendingLocked(np *npConn, add int) error {
	if limit := c.loop.p.opts.MaxPending; limit > 0 && np.pending+add > limit {
		np.refused = true
		return ErrPendingLimit
	}
	return nil
}

// claimFlushLocked makes sure someone will flush what was just queued: the
// connection's OnRequest if it is running (it flushes on return), otherwise a
// goroutine, which the caller must start when this reports true.
func (c *Conn) claimFlushLocked(np *npConn) bool {
	if np.flushing {
		return false
	}
	np.flushing = true
	np.byRequest = np.inRequest.Load()
	return !np.byRequest
}

func (c *Conn) startFlusher() {
	p := c.loop.p
	p.np.flush.Add(1)
	go func() {
		defer p.np.flush.Done()
		c.flushNetpoll()
	}()
}

// flushNetpoll hands queued segments to netpoll until the queue is empty. Only
// the owner of the flush (see claimFlushLocked) calls it.
func (c *Conn) flushNetpoll() {
	np := c.out.np
	np.mu.Lock()
	np.byRequest = false
	for {
		segs := np.queue
		if len(segs) == 0 || np.closeAfter {
			np.flushing = false
			shut, refused, closeNow := np.shutdown, np.refused, np.closeAfter
			np.refused = false
			np.mu.Unlock()
			if closeNow {
				clear(segs)
				np.conn.Close()
				return
			}
			if shut {
				// On the loop, where a closed connection is known to be closed:
				// from here the descriptor may already belong to another socket.
				c.loop.Post(shutdownJob{c})
			}
			if refused {
				c.loop.Post(writableJob{c})
			}
			return
		}
		np.queue, np.spare = np.spare[:0], nil // the two arrays never alias
		np.mu.Unlock()

		w := np.conn.Writer()
		n := 0
		var err error
		for i := range segs {
			b := segs[i].bytes()
			n += len(b)
			if _, err = w.WriteBinary(b); err != nil {
				break
			}
		}
		if err == nil {
			err = w.Flush()
		}
		if err != nil {
			// netpoll may still point at these bytes: let the collector have
			// them rather than the pools, and close the connection.
			clear(segs)
			np.mu.Lock()
			np.flushing = false
			closeNow := np.closeAfter
			np.mu.Unlock()
			if closeNow {
				np.conn.Close()
				return
			}
			c.loop.Post(closeJob{c, err})
			return
		}
		for i := range segs {
			segs[i].release()
		}
		np.mu.Lock()
		np.pending -= n
		np.spare = segs[:0]
	}
}

type shutdownJob struct{ c *Conn }

func (j shutdownJob) Run(*Loop) {
	if j.c.flags&flagClosed == 0 {
		unix.Shutdown(int(j.c.fd), unix.SHUT_WR)
	}
}

type writableJob struct{ c *Conn }

func (j writableJob) Run(*Loop) {
	if j.c.flags&flagClosed == 0 {
		j.c.loop.p.h.OnWritable(j.c)
	}
}

type closeJob struct {
	c   *Conn
	err error
}

func (j closeJob) Run(l *Loop) { l.closeConn(j.c, j.err) }

func (c *Conn) closeWriteNetpoll() {
	if c.flags&(flagClosed|flagShutdown) != 0 {
		return
	}
	c.flags |= flagShutdown
	np := c.out.np
	np.mu.Lock()
	if np.flushing || len(np.queue) > 0 {
		np.shutdown = true
		np.mu.Unlock()
		return
	}
	np.mu.Unlock()
	unix.Shutdown(int(c.fd), unix.SHUT_WR)
}

func (l *Loop) closeConnNetpoll(c *Conn, cause error) {
	if c.flags&flagClosed != 0 {
		return
	}
	c.flags |= flagClosed
	if c.fd < 0 || c.out == nil || c.out.np == nil {
		l.p.h.OnClose(c, cause) // a dial that never connected
		return
	}
	np := c.out.np
	np.closing.Store(true)
	l.p.fds.set(int(c.fd), nil)
	np.mu.Lock()
	for i := range np.queue {
		np.queue[i].release()
	}
	np.queue = nil
	deferClose := np.flushing && !np.byRequest
	np.closeAfter = deferClose
	np.mu.Unlock()
	switch {
	case deferClose:
		// A goroutine is in Flush: break the socket so the Flush returns, and
		// let that goroutine close it (the descriptor is still ours: netpoll
		// has not closed it).
		unix.Shutdown(int(c.fd), unix.SHUT_RDWR)
	case np.conn != nil:
		np.conn.Close()
	}
	l.forget(c, cause)
}

func (c *Conn) pendingNetpoll() int {
	np := c.out.np
	np.mu.Lock()
	defer np.mu.Unlock()
	return np.pending
}

func (c *Conn) dropQueuedNetpoll() {
	np := c.out.np
	np.mu.Lock()
	defer np.mu.Unlock()
	for i := range np.queue {
		np.pending -= len(np.queue[i].bytes())
		np.queue[i].release()
	}
	np.queue = np.queue[:0]
}
