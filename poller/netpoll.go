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

// npBackend is the netpoll backend's Poller half.
type npBackend struct {
	p     *Poller
	loops []*npLoop
	// conns finds a connection's npConn from its Conn, which has no room for
	// it; an entry is checked against its Conn, as a closed Conn's descriptor
	// number may belong to another connection by now.
	conns fdTable[npConn]

	ln     net.Listener   // guarded by p.lnMu
	acc    sync.WaitGroup // the accept goroutine
	loopWG sync.WaitGroup // the loops' goroutines
	flush  sync.WaitGroup // flushers started for bursts, and dials
}

// npLoop is one netpoll loop: a lock standing in for the loop goroutine.
type npLoop struct {
	l      *Loop
	be     *npBackend
	exec   sync.Mutex
	wakeCh chan struct{}
	stopCh chan struct{}
}

func (nl *npLoop) wake() {
	select {
	case nl.wakeCh <- struct{}{}:
	default:
	}
}

// npConn is a netpoll connection's state beside its Conn, for the
// connection's whole life: its netpoll.Connection and its writing state.
type npConn struct {
	c    *Conn
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

func newNetpoll(p *Poller) error {
	o := p.opts
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
	be := &npBackend{p: p}
	be.conns.init()
	for i := 0; i < o.Loops; i++ {
		nl := &npLoop{be: be, wakeCh: make(chan struct{}, 1), stopCh: make(chan struct{})}
		nl.l = &Loop{p: p, idx: i, be: nl}
		be.loops = append(be.loops, nl)
		p.loops = append(p.loops, nl.l)
	}
	p.be = be
	for _, nl := range be.loops {
		be.loopWG.Add(1)
		go nl.run()
	}
	return nil
}

func (nl *npLoop) run() {
	l := nl.l
	defer nl.be.loopWG.Done()
	t := time.NewTicker(l.p.opts.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-nl.wakeCh:
			nl.exec.Lock()
			l.runJobs()
			nl.exec.Unlock()
		case now := <-t.C:
			nl.exec.Lock()
			l.p.h.OnTick(l, now)
			nl.exec.Unlock()
		case <-nl.stopCh:
			nl.exec.Lock()
			l.finish()
			nl.exec.Unlock()
			return
		}
	}
}

func (be *npBackend) listen(addr string) (net.Addr, error) {
	p := be.p
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p.lnMu.Lock()
	defer p.lnMu.Unlock()
	if be.ln != nil {
		ln.Close()
		return nil, errors.New("poller: already listening")
	}
	be.ln, p.lnAddr = ln, ln.Addr()
	be.acc.Add(1)
	go be.accept(ln)
	return ln.Addr(), nil
}

// accept accepts with the standard library and gives each socket to
// netpoll: netpoll's own server closes every idle connection when it stops
// listening, and a draining server must keep them.
func (be *npBackend) accept(ln net.Listener) {
	p := be.p
	defer be.acc.Done()
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
		be.adopt(fd, nil)
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

// adopt makes a Conn for a connected socket on the next loop and registers
// it with netpoll.
func (be *npBackend) adopt(fd int, ctx any) {
	p := be.p
	if p.opts.NoDelay {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	fd = freshFD(fd)
	nl := be.loops[int(p.nextDial.Add(1))%len(be.loops)]
	l := nl.l
	c := &Conn{loop: l, ctx: ctx, fd: int32(fd)}
	np := &npConn{c: c}
	// Registered under exec, so OnRequest cannot run before OnOpen has.
	nl.exec.Lock()
	defer nl.exec.Unlock()
	conn, err := netpoll.NewFDConnection(fd)
	if err != nil {
		unix.Close(fd)
		c.flags |= flagClosed
		p.h.OnClose(c, err)
		return
	}
	np.conn = conn
	if p.opts.WriteTimeout > 0 {
		conn.SetWriteTimeout(p.opts.WriteTimeout)
	}
	l.add(c)
	be.conns.set(fd, np)
	// Close callbacks run newest first, so this one runs before netpoll's own,
	// which closes the descriptor.
	conn.AddCloseCallback(func(netpoll.Connection) error {
		noteClosedFD(fd)
		if !np.closing.Load() {
			// netpoll has already read the socket's error, if any: a reset and
			// an orderly close look the same from here.
			nl.exec.Lock()
			nl.closeConn(c, ErrPeerClosed)
			nl.exec.Unlock()
		}
		return nil
	})
	p.h.OnOpen(c)
	conn.SetOnRequest(func(context.Context, netpoll.Connection) error {
		nl.request(np)
		return nil
	})
}

// state is c's npConn, or nil once c is closed.
func (nl *npLoop) state(c *Conn) *npConn {
	if c.fd < 0 {
		return nil // a dial that never connected
	}
	if np := nl.be.conns.get(int(c.fd)); np != nil && np.c == c {
		return np
	}
	return nil
}

// request reads everything netpoll has buffered for the connection.
func (nl *npLoop) request(np *npConn) {
	c := np.c
	np.inRequest.Store(true)
	nl.exec.Lock()
	if c.flags&flagClosed == 0 {
		r := np.conn.Reader()
		if n := r.Len(); n > 0 {
			data, err := r.Next(n)
			if err == nil {
				nl.l.deliver(c, data)
			}
		}
		r.Release()
	}
	nl.exec.Unlock()
	np.inRequest.Store(false)
	// Replies written while handling this input are flushed here, on the
	// connection's own goroutine, where blocking stalls nobody else.
	np.mu.Lock()
	mine := np.flushing && np.byRequest
	np.mu.Unlock()
	if mine {
		nl.flush(np)
	}
}

func (be *npBackend) stopAccepting() {
	p := be.p
	p.lnMu.Lock()
	ln := be.ln
	be.ln = nil
	p.lnMu.Unlock()
	if ln != nil {
		ln.Close()
		be.acc.Wait()
	}
}

func (be *npBackend) dial(raddr netip.AddrPort, laddr netip.Addr, ctx any) error {
	p := be.p
	d := net.Dialer{Timeout: 10 * time.Second}
	if laddr.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(laddr, 0))
	}
	be.flush.Add(1)
	go func() {
		defer be.flush.Done()
		nc, err := d.Dial("tcp", raddr.String())
		if err == nil {
			var fd int
			if fd, err = detachFD(nc); err == nil {
				p.dialed.Add(1)
				be.adopt(fd, ctx)
				return
			}
		}
		l := p.loops[int(p.nextDial.Add(1))%len(p.loops)]
		l.Post(FuncJob(func() { p.h.OnClose(&Conn{loop: l, ctx: ctx, fd: -1, flags: flagClosed}, err) }))
	}()
	return nil
}

func (be *npBackend) stop() {
	be.stopAccepting()
	for _, nl := range be.loops {
		close(nl.stopCh)
	}
	be.loopWG.Wait()
	be.flush.Wait()
}

func (nl *npLoop) write2(c *Conn, a, b []byte) error {
	np := nl.state(c)
	if np == nil {
		return ErrClosed
	}
	buf := inPool.Get()
	buf.Write(a)
	buf.Write(b)
	queued, err := nl.write(np, segment{buf: buf})
	if !queued {
		inPool.Put(buf)
	}
	return err
}

func (nl *npLoop) writeFrame(c *Conn, f *Frame) error {
	np := nl.state(c)
	if np == nil {
		return ErrClosed
	}
	_, err := nl.write(np, segment{frame: f})
	return err
}

// write writes s straight to the socket if it can (see writeDirect) and
// queues what the socket does not take, reporting whether the queue kept s.
// A queued frame gets the queue's own reference; a buffer the queue did not
// keep is the caller's.
func (nl *npLoop) write(np *npConn, s segment) (queued bool, err error) {
	c := np.c
	b := s.bytes()
	// Nothing queued or in netpoll's writer, and no OnRequest gathering
	// replies: write from the loop. Only the loop adds to the queue, and the
	// caller is the loop, so the state read here holds through the write
	// without the lock.
	np.mu.Lock()
	direct := !np.flushing && !np.inRequest.Load()
	np.mu.Unlock()
	if direct {
		if s.off, err = writeDirect(c, b); err != nil || s.off == len(b) {
			return false, err
		}
	}
	np.mu.Lock()
	// What was partly written must be finished, whatever the limit.
	if err := nl.checkPendingLocked(np, len(b)-s.off); err != nil && s.off == 0 {
		np.mu.Unlock()
		return false, err
	}
	if s.frame != nil {
		s.frame.Retain()
	}
	np.queue = append(np.queue, s)
	np.pending += len(b) - s.off
	start := np.claimFlushLocked()
	np.mu.Unlock()
	if start {
		nl.startFlusher(np)
	}
	return true, nil
}

// writeDirect writes b to the socket from the loop and reports how much the
// socket took. Most writes outside a request (broadcasts, pings, closes) fit
// the socket buffer, so they cost one system call and no goroutine; netpoll
// carries only what the socket does not take at once. The descriptor is safe
// to use: netpoll closes it only after the close callback, which needs the
// loop's lock that the caller holds.
func writeDirect(c *Conn, b []byte) (int, error) {
	n, err := unix.Write(int(c.fd), b)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return 0, nil
	case err != nil:
		return 0, err
	}
	return n, nil
}

func (nl *npLoop) checkPendingLocked(np *npConn, add int) error {
	if limit := nl.l.p.opts.MaxPending; limit > 0 && np.pending+add > limit {
		np.refused = true
		return ErrPendingLimit
	}
	return nil
}

// claimFlushLocked makes sure someone will flush what was just queued: the
// connection's OnRequest if it is running (it flushes on return), otherwise a
// goroutine, which the caller must start when this reports true.
func (np *npConn) claimFlushLocked() bool {
	if np.flushing {
		return false
	}
	np.flushing = true
	np.byRequest = np.inRequest.Load()
	return !np.byRequest
}

func (nl *npLoop) startFlusher(np *npConn) {
	nl.be.flush.Add(1)
	go func() {
		defer nl.be.flush.Done()
		nl.flush(np)
	}()
}

// flush hands queued segments to netpoll until the queue is empty. Only the
// owner of the flush (see claimFlushLocked) calls it, on its own goroutine.
func (nl *npLoop) flush(np *npConn) {
	c := np.c
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
				nl.l.Post(shutdownJob{c})
			}
			if refused {
				nl.l.Post(writableJob{c})
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
			nl.l.Post(closeJob{c, err})
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

func (nl *npLoop) closeWrite(c *Conn) {
	np := nl.state(c)
	if np == nil {
		return
	}
	c.flags |= flagShutdown
	np.mu.Lock()
	if np.flushing || len(np.queue) > 0 {
		np.shutdown = true
		np.mu.Unlock()
		return
	}
	np.mu.Unlock()
	unix.Shutdown(int(c.fd), unix.SHUT_WR)
}

func (nl *npLoop) closeConn(c *Conn, cause error) {
	if c.flags&flagClosed != 0 {
		return
	}
	np := nl.state(c)
	c.flags |= flagClosed
	if np == nil {
		nl.l.p.h.OnClose(c, cause) // a dial that never connected
		return
	}
	np.closing.Store(true)
	// Clear the table before the descriptor number can be reused.
	nl.be.conns.set(int(c.fd), nil)
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
	nl.l.forget(c, cause)
}

func (nl *npLoop) queued(c *Conn) int {
	np := nl.state(c)
	if np == nil {
		return 0
	}
	np.mu.Lock()
	defer np.mu.Unlock()
	return np.pending
}

func (nl *npLoop) dropQueued(c *Conn) {
	np := nl.state(c)
	if np == nil {
		return
	}
	np.mu.Lock()
	defer np.mu.Unlock()
	for i := range np.queue {
		np.pending -= len(np.queue[i].bytes())
		np.queue[i].release()
	}
	np.queue = np.queue[:0]
}
