package floor

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Server is a running floor server. Close stops it.
type Server struct {
	opts  Options
	addr  netip.AddrPort
	loops []*loop
	conns atomic.Int64 // upgraded connections open
	stop  atomic.Bool
	wg    sync.WaitGroup
}

// loop is one event loop: its own epoll instance, listening socket and
// connections, all touched only by its goroutine, locked to one OS thread.
type loop struct {
	s    *Server
	idx  int
	epfd int
	lfd  int
	efd  int // eventfd: posted jobs and Close
	// spare is a descriptor held in reserve, given up to accept and close a
	// connection when the process is out of descriptors, so the listener's
	// backlog does not spin the loop.
	spare int

	// Owned by the loop.
	slots []*conn // a connection's index is its epoll event's Pad
	free  []int32
	buf   []byte // what one read(2) brings
	out   []byte // replies to one read, written at once
	gen   uint32

	mu   sync.Mutex
	jobs []job // guarded by mu

	st loopStats
}

// loopStats are a loop's counters, written by the loop only.
type loopStats struct {
	accepted, frames, replies, broadcasts, deliveries, reads, writes, refused atomic.Uint64
	_                                                                         [64]byte
}

type connMode uint8

const (
	modeUpgrading connMode = iota
	modeEcho
	modeShootout
)

// conn is one accepted connection. Owned by its loop.
type conn struct {
	fd   int
	slot int32
	gen  uint32
	mode connMode
	// in holds what was read but not yet a complete request or frame.
	in []byte
	// pending is output the socket did not take; EPOLLOUT is armed while it
	// is not empty.
	pending []byte
	// closing: a close frame or an error response is queued; the
	// connection ends once it is written, and input is ignored.
	closing bool
	since   int64 // unix ns of accept, for the handshake timeout
}

// job is work posted to a loop from another.
type job struct {
	bc *broadcast
	// result: send bc's result to the sender, a connection of this loop.
	result bool
}

// broadcast is one shootout broadcast being fanned out over the loops.
type broadcast struct {
	frame   []byte // the server frame every receiver gets
	binary  bool
	msg     []byte // the sender's message, for its result
	left    atomic.Int32
	reached atomic.Int64
	from    *loop
	slot    int32
	gen     uint32
}

// New listens on o.Addr and starts the loops.
func New(o Options) (*Server, error) {
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if o.Loops <= 0 {
		o.Loops = runtime.GOMAXPROCS(0)
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.MaxFrameSize <= 0 {
		o.MaxFrameSize = DefaultMaxFrameSize
	}
	ap, err := resolve(o.Addr)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: o}
	for i := range o.Loops {
		l, err := s.newLoop(i, ap)
		if err != nil {
			s.closeLoops()
			return nil, err
		}
		s.loops = append(s.loops, l)
		if ap.Port() == 0 {
			// The first listener chose the port; the others share it.
			sa, err := unix.Getsockname(l.lfd)
			if err != nil {
				s.closeLoops()
				return nil, fmt.Errorf("floor: getsockname: %w", err)
			}
			ap = netip.AddrPortFrom(ap.Addr(), uint16(sa.(*unix.SockaddrInet4).Port))
		}
	}
	s.addr = ap
	for _, l := range s.loops {
		s.wg.Add(1)
		go l.run()
	}
	return s, nil
}

func resolve(addr string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("floor: address %q: %w", addr, err)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.Unmap().Is4() {
		return netip.AddrPort{}, fmt.Errorf("floor: address %q: need an IPv4 address", addr)
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("floor: address %q: bad port", addr)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(pn)), nil
}

func (s *Server) newLoop(idx int, ap netip.AddrPort) (l *loop, err error) {
	l = &loop{s: s, idx: idx, epfd: -1, lfd: -1, efd: -1, spare: -1, buf: make([]byte, 64<<10)}
	defer func() {
		if err != nil {
			l.closeFDs()
		}
	}()
	if l.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("floor: epoll_create: %w", err)
	}
	if l.efd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("floor: eventfd: %w", err)
	}
	if l.lfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("floor: socket: %w", err)
	}
	unix.SetsockoptInt(l.lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err = unix.SetsockoptInt(l.lfd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return nil, fmt.Errorf("floor: SO_REUSEPORT: %w", err)
	}
	if err = unix.Bind(l.lfd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		return nil, fmt.Errorf("floor: bind %s: %w", ap, err)
	}
	if err = unix.Listen(l.lfd, 4096); err != nil {
		return nil, fmt.Errorf("floor: listen: %w", err)
	}
	if l.spare, err = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("floor: open /dev/null: %w", err)
	}
	for _, fd := range []int{l.lfd, l.efd} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd), Pad: -1}
		if err = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return nil, fmt.Errorf("floor: epoll_ctl: %w", err)
		}
	}
	return l, nil
}

func (l *loop) closeFDs() {
	for _, fd := range []int{l.lfd, l.efd, l.epfd, l.spare} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

func (s *Server) closeLoops() {
	for _, l := range s.loops {
		l.closeFDs()
	}
}

// Addr is the address the server listens on, such as 127.0.0.1:23000.
func (s *Server) Addr() string { return s.addr.String() }

// Close stops the loops and closes every connection and the listeners.
func (s *Server) Close() error {
	if s.stop.Swap(true) {
		return nil
	}
	for _, l := range s.loops {
		l.wake()
	}
	s.wg.Wait()
	return nil
}

// Stats sums the loops' counters.
func (s *Server) Stats() Stats {
	st := Stats{Conns: s.conns.Load()}
	for _, l := range s.loops {
		st.Accepted += l.st.accepted.Load()
		st.Frames += l.st.frames.Load()
		st.Replies += l.st.replies.Load()
		st.Broadcasts += l.st.broadcasts.Load()
		st.Deliveries += l.st.deliveries.Load()
		st.Reads += l.st.reads.Load()
		st.Writes += l.st.writes.Load()
		st.Refused += l.st.refused.Load()
	}
	return st
}

func (l *loop) wake() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(l.efd, one[:])
}

func (l *loop) post(j job) {
	l.mu.Lock()
	l.jobs = append(l.jobs, j)
	l.mu.Unlock()
	l.wake()
}

const maxEvents = 256

func (l *loop) run() {
	defer l.s.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	events := make([]unix.EpollEvent, maxEvents)
	var jobs []job
	nextSweep := time.Now().Add(time.Second)
	for !l.s.stop.Load() {
		// The one-second timeout only drives the handshake sweep; a
		// busy loop never waits that long.
		n, err := unix.EpollWait(l.epfd, events, 1000)
		if err != nil && err != unix.EINTR {
			panic(fmt.Sprintf("floor: epoll_wait: %v", err))
		}
		for i := range n {
			ev := &events[i]
			switch {
			case ev.Pad >= 0:
				c := l.slots[ev.Pad]
				if c == nil || c.fd != int(ev.Fd) {
					continue // closed earlier in this batch
				}
				l.handle(c, ev.Events)
			case int(ev.Fd) == l.lfd:
				l.accept()
			case int(ev.Fd) == l.efd:
				var b [8]byte
				unix.Read(l.efd, b[:])
				l.mu.Lock()
				jobs, l.jobs = l.jobs, jobs[:0]
				l.mu.Unlock()
				for _, j := range jobs {
					l.runJob(j)
				}
				clear(jobs)
			}
		}
		if now := time.Now(); now.After(nextSweep) {
			nextSweep = now.Add(time.Second)
			l.sweep(now.UnixNano())
		}
	}
	for _, c := range l.slots {
		if c != nil {
			l.closeConn(c)
		}
	}
	l.closeFDs()
}

// sweep closes connections whose upgrade request did not come in time.
func (l *loop) sweep(now int64) {
	limit := int64(l.s.opts.HandshakeTimeout)
	for _, c := range l.slots {
		if c != nil && c.mode == modeUpgrading && now-c.since > limit {
			l.st.refused.Add(1)
			l.closeConn(c)
		}
	}
}

func (l *loop) accept() {
	for range 64 {
		fd, _, err := unix.Accept4(l.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR || err == unix.ECONNABORTED:
			return
		case err == unix.EMFILE || err == unix.ENFILE:
			// Out of descriptors: refuse one waiting connection with the
			// spare, so the level-triggered listener does not spin.
			if l.spare >= 0 {
				unix.Close(l.spare)
				if nfd, _, err := unix.Accept4(l.lfd, unix.SOCK_CLOEXEC); err == nil {
					unix.Close(nfd)
				}
				l.spare, _ = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			}
			return
		case err != nil:
			return
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c := &conn{fd: fd, since: time.Now().UnixNano()}
		l.gen++
		c.gen = l.gen
		if k := len(l.free); k > 0 {
			c.slot = l.free[k-1]
			l.free = l.free[:k-1]
			l.slots[c.slot] = c
		} else {
			c.slot = int32(len(l.slots))
			l.slots = append(l.slots, c)
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd), Pad: c.slot}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			l.slots[c.slot] = nil
			l.free = append(l.free, c.slot)
			unix.Close(fd)
			continue
		}
		l.st.accepted.Add(1)
	}
}

func (l *loop) closeConn(c *conn) {
	if c.fd < 0 {
		return
	}
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	unix.Close(c.fd)
	c.fd = -1
	if c.mode != modeUpgrading {
		l.s.conns.Add(-1)
	}
	l.slots[c.slot] = nil
	l.free = append(l.free, c.slot)
	c.in, c.pending = nil, nil
}

func (l *loop) handle(c *conn, events uint32) {
	if events&unix.EPOLLOUT != 0 {
		l.flushPending(c)
		if c.fd < 0 {
			return
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) == 0 {
		return
	}
	n, err := unix.Read(c.fd, l.buf)
	l.st.reads.Add(1)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return
	case err != nil || n == 0:
		l.closeConn(c)
		return
	}
	if c.closing {
		return // what comes after our close frame is not answered
	}
	data := l.buf[:n]
	fromIn := len(c.in) > 0
	if fromIn {
		c.in = append(c.in, data...)
		data = c.in
	}
	l.out = l.out[:0]
	var used int
	if c.mode == modeUpgrading {
		used = l.upgrade(c, data)
		if c.mode != modeUpgrading && !c.closing && used < len(data) {
			used += l.frames(c, data[used:])
		}
	} else {
		used = l.frames(c, data)
	}
	if c.fd < 0 {
		return
	}
	rest := data[used:]
	switch {
	case len(rest) == 0:
		c.in = c.in[:0]
		if cap(c.in) > 4<<10 {
			c.in = nil
		}
	case fromIn:
		c.in = c.in[:copy(c.in, rest)]
	default:
		c.in = append(c.in[:0], rest...)
	}
	l.write(c, l.out)
}

// write sends b to c in one write(2), queueing what the socket does not
// take; a connection closing is closed once its output is out.
func (l *loop) write(c *conn, b []byte) {
	if c.fd < 0 {
		return
	}
	if len(c.pending) > 0 {
		c.pending = append(c.pending, b...)
		return
	}
	if len(b) > 0 {
		n, err := unix.Write(c.fd, b)
		l.st.writes.Add(1)
		switch {
		case err == nil && n == len(b):
		case err == nil || err == unix.EAGAIN || err == unix.EINTR:
			c.pending = append(c.pending, b[max(n, 0):]...)
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLOUT, Fd: int32(c.fd), Pad: c.slot}
			unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, c.fd, &ev)
			return
		default:
			l.closeConn(c)
			return
		}
	}
	if c.closing {
		l.closeConn(c)
	}
}

func (l *loop) flushPending(c *conn) {
	for len(c.pending) > 0 {
		n, err := unix.Write(c.fd, c.pending)
		l.st.writes.Add(1)
		switch {
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
			continue
		case err != nil:
			l.closeConn(c)
			return
		}
		c.pending = c.pending[:copy(c.pending, c.pending[n:])]
	}
	if cap(c.pending) > 64<<10 {
		c.pending = nil
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(c.fd), Pad: c.slot}
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, c.fd, &ev)
	if c.closing {
		l.closeConn(c)
	}
}

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// upgrade answers a complete upgrade request in data with the fixed 101, or
// with an HTTP error. It returns the bytes used: 0 until the request is whole.
func (l *loop) upgrade(c *conn, data []byte) int {
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		if len(data) > maxRequestSize {
			l.refuseHTTP(c, "431 Request Header Fields Too Large", "upgrade request larger than 8 KiB")
			return len(data)
		}
		return 0
	}
	head := data[:end]
	line, head, _ := bytes.Cut(head, []byte("\r\n"))
	method, rest, _ := bytes.Cut(line, []byte(" "))
	target, _, _ := bytes.Cut(rest, []byte(" "))
	path, _, _ := bytes.Cut(target, []byte("?"))
	if string(method) != "GET" {
		l.refuseHTTP(c, "405 Method Not Allowed", "only GET upgrades")
		return len(data)
	}
	var mode connMode
	switch string(path) {
	case "/echo", "/":
		mode = modeEcho
	case "/shootout":
		mode = modeShootout
	default:
		l.refuseHTTP(c, "404 Not Found", "paths: /echo, /shootout")
		return len(data)
	}
	var key []byte
	for len(head) > 0 {
		var h []byte
		h, head, _ = bytes.Cut(head, []byte("\r\n"))
		k, v, ok := bytes.Cut(h, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(k), []byte("Sec-WebSocket-Key")) {
			key = bytes.TrimSpace(v)
		}
	}
	if len(key) == 0 {
		l.refuseHTTP(c, "400 Bad Request", "no Sec-WebSocket-Key: not a WebSocket upgrade")
		return len(data)
	}
	h := sha1.New()
	h.Write(key)
	h.Write([]byte(wsGUID))
	var sum [sha1.Size]byte
	var accept [28]byte
	base64.StdEncoding.Encode(accept[:], h.Sum(sum[:0]))
	l.out = append(l.out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	l.out = append(l.out, accept[:]...)
	l.out = append(l.out, "\r\n\r\n"...)
	c.mode = mode
	l.s.conns.Add(1)
	return end + 4
}

func (l *loop) refuseHTTP(c *conn, status, reason string) {
	l.st.refused.Add(1)
	body := "floor: " + reason + "\n"
	l.out = append(l.out, "HTTP/1.1 "+status+"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: "+
		strconv.Itoa(len(body))+"\r\n\r\n"+body...)
	c.closing = true
}

// Close codes the floor sends.
const (
	closeNormal      = 1000
	closeProtocol    = 1002
	closeUnsupported = 1003
	closeTooBig      = 1009
)

// refuse queues a close frame with code and reason; the connection ends
// once it is written.
func (l *loop) refuse(c *conn, code uint16, reason string) {
	l.st.refused.Add(1)
	l.closeFrame(c, code, "floor: "+reason)
}

func (l *loop) closeFrame(c *conn, code uint16, reason string) {
	reason = reason[:min(len(reason), 123)]
	l.out = append(l.out, 0x88, byte(2+len(reason)))
	l.out = binary.BigEndian.AppendUint16(l.out, code)
	l.out = append(l.out, reason...)
	c.closing = true
}

// frames answers every complete frame in data and returns the bytes used; a
// partial frame waits for the next read.
func (l *loop) frames(c *conn, data []byte) int {
	off := 0
	for !c.closing && c.fd >= 0 {
		p := data[off:]
		if len(p) < 2 {
			break
		}
		b0, b1 := p[0], p[1]
		if b1&0x80 == 0 {
			l.refuse(c, closeProtocol, "client frame not masked")
			return len(data)
		}
		hl := 6
		size := uint64(b1 & 0x7f)
		switch size {
		case 126:
			hl = 8
		case 127:
			hl = 14
		}
		if len(p) < hl {
			break
		}
		switch size {
		case 126:
			size = uint64(binary.BigEndian.Uint16(p[2:]))
		case 127:
			size = binary.BigEndian.Uint64(p[2:])
		}
		op := b0 & 0x0f
		fin := b0&0x80 != 0
		switch {
		case b0&0x70 != 0:
			l.refuse(c, closeProtocol, "reserved bits set (no extension was agreed)")
			return len(data)
		case op >= 8 && (size > 125 || !fin):
			l.refuse(c, closeProtocol, "bad control frame")
			return len(data)
		case op > 2 && op != 8 && op != 9 && op != 10:
			l.refuse(c, closeProtocol, "reserved opcode")
			return len(data)
		case size > uint64(l.s.opts.MaxFrameSize):
			l.refuse(c, closeTooBig, "frame larger than "+strconv.Itoa(l.s.opts.MaxFrameSize)+" bytes")
			return len(data)
		}
		if uint64(len(p)-hl) < size {
			break
		}
		n := int(size)
		mask := binary.LittleEndian.Uint32(p[hl-4:])
		payload := p[hl : hl+n]
		off += hl + n
		switch op {
		case 8:
			// Answer a close with a fixed 1000 and end the connection.
			l.closeFrame(c, closeNormal, "")
			l.st.replies.Add(1)
		case 9:
			l.out = appendHeader(l.out, 0x8a, n)
			l.out = appendUnmasked(l.out, payload, mask)
			l.st.replies.Add(1)
		case 10:
		default:
			l.st.frames.Add(1)
			if c.mode == modeEcho {
				l.out = appendHeader(l.out, b0, n)
				l.out = appendUnmasked(l.out, payload, mask)
				l.st.replies.Add(1)
				continue
			}
			if !fin || op == 0 {
				l.refuse(c, closeUnsupported, "fragmented shootout messages are not supported")
				return len(data)
			}
			l.shootout(c, op, payload, mask)
		}
	}
	return off
}

// appendHeader appends an unmasked server frame header.
func appendHeader(b []byte, b0 byte, n int) []byte {
	switch {
	case n < 126:
		return append(b, b0, byte(n))
	case n <= 0xffff:
		return append(b, b0, 126, byte(n>>8), byte(n))
	}
	b = append(b, b0, 127)
	return binary.BigEndian.AppendUint64(b, uint64(n))
}

// appendUnmasked appends p unmasked with the frame's mask key (read little
// endian, so that byte i of the key XORs byte i of every word).
func appendUnmasked(b, p []byte, mask uint32) []byte {
	start := len(b)
	b = append(b, p...)
	q := b[start:]
	m := uint64(mask) | uint64(mask)<<32
	i := 0
	for ; i+8 <= len(q); i += 8 {
		binary.LittleEndian.PutUint64(q[i:], binary.LittleEndian.Uint64(q[i:])^m)
	}
	for ; i < len(q); i++ {
		q[i] ^= byte(mask >> (8 * (i & 3)))
	}
	return b
}

// Shootout message prefixes: the floor tells a broadcast from an echo by
// these bytes, not by parsing JSON.
const (
	jsonBroadcast = `{"type":"broadcast"`
	jsonEcho      = `{"type":"echo"`
	jsonResult    = `{"type":"broadcastResult"`
)

// shootout answers one websocket-shootout message: an echo comes back, a
// broadcast is fanned out.
func (l *loop) shootout(c *conn, op byte, payload []byte, mask uint32) {
	start := len(l.out)
	l.out = appendHeader(l.out, 0x80|op, len(payload))
	hdr := len(l.out) - start
	l.out = appendUnmasked(l.out, payload, mask)
	msg := l.out[start+hdr:]
	var isEcho, isBroadcast bool
	if op == 2 {
		ok := len(msg) >= 5 && int(binary.BigEndian.Uint32(msg[1:5])) == len(msg)-5
		isEcho = ok && msg[0] == 'e'
		isBroadcast = ok && msg[0] == 'b'
	} else {
		isEcho = bytes.HasPrefix(msg, []byte(jsonEcho))
		isBroadcast = bytes.HasPrefix(msg, []byte(jsonBroadcast)) && msg[len(msg)-1] == '}'
	}
	switch {
	case isEcho:
		l.st.replies.Add(1)
	case isBroadcast:
		bc := &broadcast{frame: bytes.Clone(l.out[start:]), binary: op == 2, from: l, slot: c.slot, gen: c.gen}
		bc.msg = bc.frame[hdr:]
		l.out = l.out[:start]
		// The sender's earlier replies go out before its own copy of the
		// broadcast.
		l.write(c, l.out)
		l.out = l.out[:0]
		l.st.broadcasts.Add(1)
		bc.left.Store(int32(len(l.s.loops)))
		for _, o := range l.s.loops {
			if o != l {
				o.post(job{bc: bc})
			}
		}
		l.fanOut(bc)
	default:
		l.out = l.out[:start]
		l.refuse(c, closeUnsupported, "not a shootout echo or broadcast")
	}
}

func (l *loop) runJob(j job) {
	if j.result {
		l.sendResult(j.bc)
		return
	}
	l.fanOut(j.bc)
}

// fanOut writes the broadcast to each of the loop's shootout connections,
// one write(2) each; the last loop to finish has the result sent.
func (l *loop) fanOut(bc *broadcast) {
	var n int64
	for _, c := range l.slots {
		if c == nil || c.mode != modeShootout || c.closing {
			continue
		}
		l.write(c, bc.frame)
		n++
	}
	l.st.deliveries.Add(uint64(n))
	bc.reached.Add(n)
	if bc.left.Add(-1) != 0 {
		return
	}
	if bc.from == l {
		l.sendResult(bc)
	} else {
		bc.from.post(job{bc: bc, result: true})
	}
}

// sendResult writes the broadcastResult to the sender, if it is still
// connected.
func (l *loop) sendResult(bc *broadcast) {
	c := l.slots[bc.slot]
	if c == nil || c.gen != bc.gen || c.closing {
		return
	}
	msg := bc.msg
	b := l.out[:0]
	if bc.binary {
		b = appendHeader(b, 0x82, len(msg))
		b = append(b, 'r')
		b = append(b, msg[1:]...)
	} else {
		// {"type":"broadcastResult" then the message's ,"payload":…
		// without its closing brace, then ,"listenerCount":N}
		var num [20]byte
		count := strconv.AppendInt(num[:0], bc.reached.Load(), 10)
		rest := msg[len(jsonBroadcast) : len(msg)-1]
		const tail = `,"listenerCount":`
		b = appendHeader(b, 0x81, len(jsonResult)+len(rest)+len(tail)+len(count)+1)
		b = append(b, jsonResult...)
		b = append(b, rest...)
		b = append(b, tail...)
		b = append(b, count...)
		b = append(b, '}')
	}
	l.out = b[:0]
	l.st.replies.Add(1)
	l.write(c, b)
}
