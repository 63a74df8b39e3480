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

	mu      sync.Mutex
	queue   []segment // guarded by mu: written, not yet handed to netpoll
	spare   []segment // owned by the flusher
	pending int       // guarded by mu: queued plus in flight
	// flushing says a flusher goroutine owns handing the queue to netpoll;
	// there is never more than one.
	flushing bool // guarded by mu
	refused  bool // guarded by mu: a write was refused for MaxPending
	shutdown bool // guarded by mu: shut the write side once drained
	// paused says its own replies passed MaxPending: its input is taken off
	// netpoll's buffer but held, not handed to OnData, until the flusher
	// drains the queue (see request).
	paused bool // guarded by mu
	// closeAfter asks the flushing goroutine to close the connection when its
	// Flush returns: netpoll's Close racing a Flush on another goroutine can
	// touch the descriptor after it is closed and reused.
	closeAfter bool // guarded by mu

	held    int  // owned by the loop: input held while paused
	limited bool // owned by the loop: OnData is handed held input past the bound; its replies are limited

	closing atomic.Bool // the poller is closing it
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
	}
	startLoops(p, be, &be.loopWG, be.loops)
	return nil
}

func (nl *npLoop) loop() *Loop { return nl.l }

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
			r := shedNoSpare
			if isOutOfFDs(err) {
				r = p.shedOne(func() (int, bool) { return acceptRaw(ln) })
			}
			switch r {
			case shedNone:
				// accept fails for lack of descriptors even with nobody
				// waiting: wait for someone instead of calling it again.
				waitReadable(ln)
			case shedDone:
				p.acceptFailed(err)
			default:
				p.acceptFailed(err)
				time.Sleep(100 * time.Millisecond) // let some descriptors close
			}
			continue
		}
		fd, err := detachFD(nc)
		if err != nil {
			// Out of descriptors for the duplicate: nc is closed, so its
			// client sees the connection closed.
			p.acceptFailed(err)
			if isOutOfFDs(err) {
				p.shed.Add(1)
			}
			continue
		}
		p.accepted.Add(1)
		be.adopt(fd, nil)
	}
}

// acceptRaw accepts one connection from ln's descriptor without the runtime's
// poller, for shed: it does not wait, and the caller closes what it returns.
func acceptRaw(ln net.Listener) (int, bool) {
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		return -1, false
	}
	fd := -1
	rc.Control(func(s uintptr) { fd, _, err = unix.Accept(int(s)) })
	return fd, err == nil && fd >= 0
}

// waitReadable waits until ln has a connection waiting or is closed.
func waitReadable(ln net.Listener) {
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		return
	}
	waited := false
	rc.Read(func(uintptr) bool {
		done := waited
		waited = true
		return done
	})
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
	c := p.newConn(l, fd, ctx, 0)
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

// request takes everything netpoll has buffered for the connection and hands
// it to OnData, or holds it while the connection is paused. It never blocks
// but for the loop's lock: netpoll reads the socket whatever we do, so a
// request that waited (as in a Flush) would let netpoll buffer a client's
// input without bound while its replies back up.
//
// Pausing is how a client's own traffic is bounded on netpoll, as leaving
// input in the kernel bounds it on epoll. When the replies to a client's
// input pass MaxPending, its further input is held in the connection's input
// buffer until the flusher drains the queue (resume). If the held input
// itself passes MaxPending (a client that writes and never reads), it is
// handed to OnData with its replies limited like broadcasts, so the handler
// sees ErrPendingLimit and treats the client as a slow consumer.
func (nl *npLoop) request(np *npConn) {
	c := np.c
	nl.exec.Lock()
	defer nl.exec.Unlock()
	if c.flags&flagClosed != 0 {
		return
	}
	r := np.conn.Reader()
	defer r.Release()
	n := r.Len()
	if n == 0 {
		return
	}
	data, err := r.Next(n)
	if err != nil {
		return
	}
	// netpoll reads as much as the socket has, megabytes at a time; OnData
	// gets at most a read buffer's worth at once, as on epoll, so that the
	// replies to one call are bounded and pausing can step in between.
	chunk := nl.l.p.opts.ReadBufferSize
	for len(data) > 0 && c.flags&flagClosed == 0 {
		np.mu.Lock()
		paused := np.paused
		np.mu.Unlock()
		if paused {
			break
		}
		k := min(len(data), chunk)
		nl.deliver(np, data[:k])
		data = data[k:]
	}
	if len(data) == 0 || c.flags&flagClosed != 0 {
		return
	}
	b := c.buffers()
	if b.in == nil {
		b.in = inPool.Get()
	}
	b.in.Write(data)
	np.held += len(data)
	if overLimit(nl.l.p, np.held) {
		np.limited = true
		nl.deliver(np, nil)
		np.limited = false
	}
}

// deliver hands data, after any input kept or held, to OnData, then writes the
// replies and pauses the connection if they are more than MaxPending behind.
func (nl *npLoop) deliver(np *npConn, data []byte) {
	c := np.c
	np.held = 0
	nl.l.deliver(c, data)
	if c.flags&flagClosed != 0 {
		return
	}
	np.mu.Lock()
	if np.flushing || len(np.queue) == 0 {
		np.paused = overLimit(nl.l.p, np.pending)
		np.mu.Unlock()
		return
	}
	// The replies, gathered while OnData ran, go out in one write from here
	// when the socket takes them, as on epoll; a flusher takes the rest.
	segs := np.queue
	np.mu.Unlock()
	sent, err := writevDirect(c, segs)
	if err != nil {
		nl.closeConn(c, err)
		return
	}
	np.mu.Lock()
	np.pending -= sent
	i := 0
	for ; i < len(segs) && sent > 0; i++ {
		left := len(segs[i].bytes())
		if sent < left {
			segs[i].off += sent
			break
		}
		sent -= left
		segs[i].release()
	}
	k := copy(segs, segs[i:])
	clear(segs[k:])
	np.queue = segs[:k]
	start := len(np.queue) > 0 && np.claimFlushLocked()
	shut := len(np.queue) == 0 && np.shutdown
	np.paused = overLimit(nl.l.p, np.pending)
	np.mu.Unlock()
	switch {
	case start:
		nl.startFlusher(np)
	case shut: // CloseWrite ran in OnData, behind the replies just sent
		unix.Shutdown(int(c.fd), unix.SHUT_WR)
	}
}

// resumeJob hands a paused connection its held input once its queue has
// drained.
type resumeJob struct {
	nl *npLoop
	np *npConn
}

func (j resumeJob) Run(*Loop) {
	np, c := j.np, j.np.c
	if c.flags&flagClosed != 0 {
		return
	}
	np.mu.Lock()
	if !np.paused || np.flushing {
		np.mu.Unlock()
		return
	}
	np.paused = false
	np.mu.Unlock()
	if c.input() != nil {
		j.nl.deliver(np, nil)
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
		l.Post(FuncJob(func() { p.h.OnClose(p.newConn(l, -1, ctx, flagClosed), err) }))
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

// writeFrames writes the frames one after the other: netpoll takes one
// buffer at a time.
func (nl *npLoop) writeFrames(c *Conn, fs []*Frame) (int, error) {
	for i, f := range fs {
		if err := nl.writeFrame(c, f); err != nil {
			return i, err
		}
	}
	return len(fs), nil
}

// write writes s straight to the socket if it can (see writeDirect) and
// queues what the socket does not take, reporting whether the queue kept s.
// A queued frame gets the queue's own reference; a buffer the queue did not
// keep is the caller's.
//
// A reply to the connection's own input (written while its OnData runs) is
// queued, to go out in one write when OnData returns (see deliver), and is
// never refused for MaxPending: it pauses the connection instead.
func (nl *npLoop) write(np *npConn, s segment) (queued bool, err error) {
	c := np.c
	b := s.bytes()
	reply := nl.l.inData == c && !np.limited
	// Nothing queued or in netpoll's writer: write from the loop. Only the
	// loop adds to the queue, and the caller is the loop, so the state read
	// here holds through the write without the lock.
	np.mu.Lock()
	direct := !np.flushing && len(np.queue) == 0 && nl.l.inData != c
	np.mu.Unlock()
	if direct {
		if s.off, err = writeDirect(c, b); err != nil || s.off == len(b) {
			return false, err
		}
	}
	np.mu.Lock()
	// What was partly written must be finished, whatever the limit.
	if !reply {
		if err := nl.checkPendingLocked(np, len(b)-s.off); err != nil && s.off == 0 {
			np.mu.Unlock()
			return false, err
		}
	}
	if s.frame != nil {
		s.frame.Retain()
	}
	np.queue = append(np.queue, s)
	np.pending += len(b) - s.off
	start := nl.l.inData != c && np.claimFlushLocked()
	np.mu.Unlock()
	if start {
		nl.startFlusher(np)
	}
	return true, nil
}

// writevDirect writes the segments' bytes to the socket from the loop, as
// writeDirect does, until one is not taken whole, and reports how many bytes
// the socket took. (A write per segment: x/sys/unix has writev only on Linux,
// and a read mostly earns one reply.)
func writevDirect(c *Conn, segs []segment) (int, error) {
	sent := 0
	for i := range segs {
		b := segs[i].bytes()
		n, err := writeDirect(c, b)
		sent += n
		if err != nil {
			return sent, err
		}
		if n < len(b) {
			break
		}
	}
	return sent, nil
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

// claimFlushLocked makes sure a flusher will hand what was just queued to
// netpoll: it reports true if the caller must start one.
func (np *npConn) claimFlushLocked() bool {
	if np.flushing {
		return false
	}
	np.flushing = true
	return true
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
	for {
		segs := np.queue
		if len(segs) == 0 || np.closeAfter {
			np.flushing = false
			shut, refused, closeNow, paused := np.shutdown, np.refused, np.closeAfter, np.paused
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
			if paused {
				nl.l.Post(resumeJob{nl, np})
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
	deferClose := np.flushing
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
	// A segment the socket took part of must be finished, so the stream
	// stays framed.
	keep := 0
	if len(np.queue) > 0 && np.queue[0].off > 0 {
		keep = 1
	}
	for i := keep; i < len(np.queue); i++ {
		np.pending -= len(np.queue[i].bytes())
		np.queue[i].release()
	}
	clear(np.queue[keep:])
	np.queue = np.queue[:keep]
}
