package server

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"

	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/wsframe"
)

// Conn is an upgraded WebSocket connection. Its methods must be called on the
// goroutine of the loop that owns it: inside a Handler method, or in a job posted
// with Post.
//
// It is kept small, as a server holds hundreds of thousands of them: no buffer is
// held while the connection is idle.
type Conn struct {
	pc    *poller.Conn
	route *route
	user  string
	data  any
	msg   *bytebufferpool.ByteBuffer // a fragmented message being assembled
	exp   int64                      // token expiry, unix seconds; 0 if none
	ping  int64                      // when the last ping was sent, unix ms
	// closeAt is the deadline for the peer's close frame once ours is sent, unix ms.
	closeAt int64
	utf8    utf8Stream
	state   connState
	fragOp  ws.OpCode // the opcode of the fragmented message in progress, or 0
	told    bool      // the handler's OnClose has run
	counted bool      // holds one of the user's MaxConnsPerUser
	// dropped counts messages refused under SlowDrop since the handler was last
	// told.
	dropped uint32
}

type connState uint8

const (
	stateOpen connState = iota
	stateClosing
	stateClosed
)

// rejected marks a socket whose handshake was refused: its response is being
// flushed and any further input is discarded.
type rejected struct{}

// UserID is the token's subject, or a random id for an anonymous connection.
func (c *Conn) UserID() string { return c.user }

// Path is the endpoint path the connection was upgraded on.
func (c *Conn) Path() string { return c.route.path }

// Data returns the handler's value for this connection.
func (c *Conn) Data() any { return c.data }

// SetData stores a value for the handler.
func (c *Conn) SetData(v any) { c.data = v }

// ExpiresAt is when the connection's token expires; zero if it does not.
func (c *Conn) ExpiresAt() time.Time {
	if c.exp == 0 {
		return time.Time{}
	}
	return time.Unix(c.exp, 0)
}

// SetExpiresAt replaces the token expiry, after a token refresh.
func (c *Conn) SetExpiresAt(t time.Time) {
	if t.IsZero() {
		c.exp = 0
	} else {
		c.exp = t.Unix()
	}
}

// Loop is the loop that owns the connection.
func (c *Conn) Loop() *poller.Loop { return c.pc.Loop() }

// Now is the server's clock, which tests inject.
func (c *Conn) Now() time.Time { return c.srv().now() }

// Open reports whether messages can still be sent.
func (c *Conn) Open() bool { return c.state == stateOpen }

// Pending is the number of bytes queued but not yet sent.
func (c *Conn) Pending() int { return c.pc.Pending() }

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() netip.AddrPort { return c.pc.RemoteAddr() }

// WriteText sends a text message.
func (c *Conn) WriteText(p []byte) error { return c.WriteMessage(ws.OpText, p) }

// WriteMessage sends one unfragmented message. A write that would pass the
// pending limit closes the connection as a slow consumer.
func (c *Conn) WriteMessage(op ws.OpCode, p []byte) error {
	if c.state != stateOpen {
		return poller.ErrClosed
	}
	var h [ws.MaxHeaderSize]byte
	n := putHeader(h[:], op, len(p))
	return c.checkWrite(c.pc.Write2(h[:n], p), len(p))
}

// WriteFrame sends a frame already encoded (see AppendFrame) and shared between
// connections, without copying it.
func (c *Conn) WriteFrame(f *poller.Frame) error {
	if c.state != stateOpen {
		return poller.ErrClosed
	}
	return c.checkWrite(c.pc.WriteFrame(f), framePayloadLen(f.Bytes()))
}

// framePayloadLen is the payload length of an encoded frame, for the sent-bytes
// counter, which counts payloads as the received one does.
func framePayloadLen(b []byte) int {
	if h, _, ok, _ := wsframe.ParseHeader(b); ok {
		return int(h.Length)
	}
	return 0
}

// checkWrite counts a sent message of n payload bytes, or handles the error.
func (c *Conn) checkWrite(err error, n int) error {
	switch {
	case err == nil:
		ctr := c.ctr()
		ctr.msgsOut.Add(1)
		ctr.bytesOut.Add(uint64(n))
		return nil
	case errors.Is(err, poller.ErrPendingLimit):
		if c.srv().opts.SlowConsumer == SlowDrop {
			c.dropped++
			c.ctr().slow[SlowDrop].Add(1)
			return ErrDropped
		}
		c.ctr().slow[SlowClose].Add(1)
		c.fail(CloseSlowConsumer, ErrSlowConsumer)
		return ErrSlowConsumer
	default:
		c.fail(CloseAbnormal, err)
		return err
	}
}

// Close starts the close handshake with the reason's code and text.
func (c *Conn) Close(r CloseReason) { c.closeWith(r, r.Code(), r.Text()) }

// CloseWith starts the close handshake with an application code and text, the
// text cut to fit a control frame.
func (c *Conn) CloseWith(code ws.StatusCode, text string) { c.closeWith(ClosePolicy, code, text) }

func (c *Conn) srv() *Server { return c.route.srv }

func (c *Conn) ctr() *counters { return c.route.srv.stats(c.pc.Loop().Index()) }

// fail reports err to the handler and closes with r.
func (c *Conn) fail(r CloseReason, err error) {
	if c.state == stateOpen && !c.told {
		c.route.h.OnError(c, err)
	}
	c.Close(r)
}

func (c *Conn) closeWith(r CloseReason, code ws.StatusCode, text string) {
	if c.state != stateOpen {
		return
	}
	s := c.srv()
	c.state = stateClosing
	c.releaseMsg()
	c.ctr().closes[r].Add(1)
	if r != CloseAbnormal {
		var buf [2 + ws.MaxControlFramePayloadSize]byte
		body := closeBody(buf[:], code, text)
		var h [ws.MaxHeaderSize]byte
		n := putHeader(h[:], ws.OpClose, len(body))
		if r == CloseSlowConsumer {
			// Whatever it has not read is dropped, so the close frame is next.
			c.pc.DropQueued()
		}
		if c.pc.Write2(h[:n], body) != nil {
			c.pc.Close()
			c.tell(code, text)
			return
		}
		c.pc.CloseWrite()
	}
	c.closeAt = s.nowMillis() + s.opts.CloseTimeout.Milliseconds()
	c.tell(code, text)
	if r == CloseAbnormal {
		c.pc.Close()
	}
}

func (c *Conn) tell(code ws.StatusCode, text string) {
	if c.told {
		return
	}
	c.told = true
	if log := c.srv().log; log.Enabled(context.Background(), slog.LevelDebug) {
		log.LogAttrs(context.Background(), slog.LevelDebug, "connection closed",
			slog.String("user", c.user), slog.Int("code", int(code)), slog.String("reason", text))
	}
	c.route.h.OnClose(c, code, text)
}

func (c *Conn) releaseMsg() {
	if c.msg != nil {
		bytebufferpool.Put(c.msg)
		c.msg = nil
	}
	c.fragOp = 0
	c.utf8.reset()
}

// closeBody writes a close frame body into buf: the code and as much of text as
// fits in a control frame without splitting a character.
func closeBody(buf []byte, code ws.StatusCode, text string) []byte {
	if code == 0 || code == ws.StatusNoStatusRcvd {
		return buf[:0]
	}
	binary.BigEndian.PutUint16(buf, uint16(code))
	max := ws.MaxControlFramePayloadSize - 2
	if len(text) > max {
		text = text[:max]
		for len(text) > 0 && !utf8.ValidString(text) {
			text = text[:len(text)-1]
		}
	}
	return buf[:2+copy(buf[2:], text)]
}

// loopState is the server's per-loop scratch: everything here is used only by
// that loop's goroutine, so handshakes and frames need no allocation and no lock.
type loopState struct {
	s  *Server
	l  *poller.Loop
	hs handshake
	c  counters

	draining  []*poller.Conn // snapshot taken when Shutdown starts
	drainLeft atomic.Int64
}

func newLoopState(s *Server, l *poller.Loop) *loopState {
	ls := &loopState{s: s, l: l}
	ls.hs.init(s, l.Index())
	return ls
}

func (s *Server) loopOf(pc *poller.Conn) *loopState { return s.loops[pc.Loop().Index()] }

// OnOpen implements poller.Handler: a new socket starts in the handshake.
func (s *Server) OnOpen(pc *poller.Conn) {
	pc.SetStamp(s.nowMillis() + s.opts.HandshakeTimeout.Milliseconds())
	s.stats(pc.Loop().Index()).accepted.Add(1)
}

// OnData implements poller.Handler.
func (s *Server) OnData(pc *poller.Conn, data []byte) int {
	switch ctx := pc.Context().(type) {
	case *Conn:
		return s.frames(ctx, data)
	case nil:
		ls := s.loopOf(pc)
		n, c := ls.hs.serve(pc, data)
		if c == nil || n == len(data) {
			return n
		}
		// Frames sent right behind the request are read now.
		return n + s.frames(c, data[n:])
	default: // rejected: discard
		return len(data)
	}
}

// OnWritable implements poller.Handler: a connection that had messages dropped
// has caught up, and its handler is told how many it missed.
func (s *Server) OnWritable(pc *poller.Conn) {
	c, ok := pc.Context().(*Conn)
	if !ok || c.dropped == 0 || c.state != stateOpen {
		return
	}
	n := c.dropped
	c.dropped = 0
	if d, ok := c.route.h.(DropNotifier); ok {
		d.Dropped(c, int(n))
	}
}

// DropNotifier is implemented by handlers that want to tell a client how many
// messages it missed under SlowDrop.
type DropNotifier interface {
	Dropped(c *Conn, n int)
}

// OnClose implements poller.Handler.
func (s *Server) OnClose(pc *poller.Conn, cause error) {
	c, ok := pc.Context().(*Conn)
	if !ok {
		return
	}
	if c.state == stateOpen {
		// The peer went without a close frame.
		c.ctr().closes[CloseAbnormal].Add(1)
		if cause != nil && !errors.Is(cause, poller.ErrPeerClosed) && !errors.Is(cause, poller.ErrClosed) {
			c.route.h.OnError(c, cause)
		}
		c.releaseMsg()
		c.tell(ws.StatusAbnormalClosure, "")
	}
	c.state = stateClosed
	c.releaseMsg()
	c.ctr().open.Add(-1)
	if c.counted {
		s.perUser.Release(c.user)
		c.counted = false
	}
	if s.opts.MaxConns > 0 {
		s.admitted.Add(-1) // every Conn holds one of MaxConns (see onBeforeUpgrade)
	}
}

// OnTick implements poller.Handler: the loop's sweep for handshake, idle, ping,
// close and token deadlines.
func (s *Server) OnTick(l *poller.Loop, now time.Time) {
	ms := s.now().UnixMilli()
	sec := ms / 1000
	if s.ipLimit != nil && l.Index() == 0 && ms-s.lastPrune >= 30_000 {
		s.lastPrune = ms // owned by loop 0
		s.ipLimit.prune(ms)
	}
	idle := s.opts.IdleTimeout.Milliseconds()
	ping := s.opts.PingInterval.Milliseconds()
	l.Range(func(pc *poller.Conn) bool {
		switch c := pc.Context().(type) {
		case nil: // in the handshake: the stamp is its deadline
			if ms >= pc.Stamp() {
				s.stats(l.Index()).handshakes[HandshakeTimeout].Add(1)
				pc.Close()
			}
		case *Conn: // the stamp is when it was last heard from
			switch c.state {
			case stateOpen:
				switch quiet := ms - pc.Stamp(); {
				case quiet >= idle:
					c.Close(CloseIdle)
				case c.exp != 0 && sec >= c.exp:
					c.route.srv.tokenExpired(c)
				case quiet >= ping && ms-c.ping >= ping:
					c.ping = ms
					var h [2]byte
					putHeader(h[:], ws.OpPing, 0)
					c.pc.Write(h[:])
				}
			case stateClosing:
				if ms >= c.closeAt {
					pc.Close()
				}
			}
		default: // rejected: the stamp is when to give up flushing
			if ms >= pc.Stamp() {
				pc.Close()
			}
		}
		return true
	})
}

// tokenExpired tells the client why and closes with 1008. Handlers that speak
// JSON get an error message first.
func (s *Server) tokenExpired(c *Conn) {
	if te, ok := c.route.h.(interface{ TokenExpired(*Conn) }); ok {
		te.TokenExpired(c)
	}
	c.Close(CloseTokenExpired)
}

// frames parses and handles every complete frame in data and returns how many
// bytes it used; a partial frame is left for the next read.
func (s *Server) frames(c *Conn, data []byte) int {
	off := 0
	for c.state != stateClosed && off < len(data) {
		if c.pc.Closed() {
			return len(data)
		}
		h, size, ok, err := wsframe.ParseHeader(data[off:])
		if err != nil {
			c.fail(CloseProtocol, err)
			return len(data)
		}
		if !ok {
			break
		}
		st := ws.StateServerSide
		if c.fragOp != 0 {
			st |= ws.StateFragmented
		}
		if err := ws.CheckHeader(h, st); err != nil {
			c.fail(CloseProtocol, err)
			return len(data)
		}
		if h.OpCode.IsData() || h.OpCode == ws.OpContinuation {
			have := 0
			if c.msg != nil {
				have = len(c.msg.B)
			}
			if h.Length > int64(s.opts.MaxMessageSize-have) {
				c.fail(CloseTooBig, ErrMessageTooBig)
				return len(data)
			}
		}
		end := off + size + int(h.Length)
		if end > len(data) {
			break
		}
		payload := data[off+size : end]
		off = end
		ws.Cipher(payload, h.Mask, 0)
		c.pc.SetStamp(s.nowMillis())
		s.frame(c, h, payload)
	}
	if c.state != stateOpen {
		// After our close frame only the peer's close matters; data is dropped.
		if off < len(data) && c.state == stateClosing {
			return off
		}
		return len(data)
	}
	return off
}

func (s *Server) frame(c *Conn, h ws.Header, p []byte) {
	switch h.OpCode {
	case ws.OpClose:
		s.closeFrame(c, p)
		return
	case ws.OpPing:
		if c.state == stateOpen {
			var hb [2]byte
			putHeader(hb[:], ws.OpPong, len(p))
			if err := c.pc.Write2(hb[:], p); err != nil {
				c.checkWrite(err, 0)
			}
		}
		return
	case ws.OpPong:
		return
	}
	if c.state != stateOpen {
		return
	}
	ctr := c.ctr()
	ctr.msgsIn.Add(1)
	ctr.bytesIn.Add(uint64(len(p)))
	if h.OpCode != ws.OpContinuation && h.Fin {
		if h.OpCode == ws.OpText && !utf8.Valid(p) {
			c.fail(CloseInvalidUTF8, ErrInvalidUTF8)
			return
		}
		c.route.h.OnMessage(c, h.OpCode, p)
		return
	}
	if h.OpCode != ws.OpContinuation {
		c.fragOp = h.OpCode
		c.msg = bytebufferpool.Get()
	}
	if c.fragOp == ws.OpText && !c.utf8.write(p) {
		c.fail(CloseInvalidUTF8, ErrInvalidUTF8)
		return
	}
	c.msg.Write(p)
	if !h.Fin {
		return
	}
	if c.fragOp == ws.OpText && !c.utf8.end() {
		c.fail(CloseInvalidUTF8, ErrInvalidUTF8)
		return
	}
	op, msg := c.fragOp, c.msg
	c.msg, c.fragOp = nil, 0
	c.utf8.reset()
	c.route.h.OnMessage(c, op, msg.B)
	bytebufferpool.Put(msg)
}

// closeFrame handles the peer's close: it answers with the peer's own code
// unless the frame is malformed, and ends the connection once both sides have
// sent theirs.
func (s *Server) closeFrame(c *Conn, p []byte) {
	if c.state == stateClosing {
		// The peer answered our close: the handshake is complete. If our close
		// frame is still queued the peer's crossed it, and closing now would cut
		// the stream; CloseWrite ends it once flushed, and closeAt bounds the wait.
		if c.pc.Pending() == 0 {
			c.pc.Close()
		}
		return
	}
	code, reason := ws.StatusNoStatusRcvd, ""
	switch {
	case len(p) == 1:
		c.fail(CloseProtocol, errors.New("server: close frame body of one byte"))
		return
	case len(p) >= 2:
		code = ws.StatusCode(binary.BigEndian.Uint16(p))
		reason = string(p[2:])
		if !utf8.ValidString(reason) {
			c.fail(CloseInvalidUTF8, ErrInvalidUTF8)
			return
		}
		if err := ws.CheckCloseFrameData(code, ""); err != nil {
			c.fail(CloseProtocol, err)
			return
		}
		// gobwas/ws accepts codes past 4999, which RFC 6455 section 7.4.2 leaves
		// undefined: answering with one would echo an invalid code.
		if code > 4999 {
			c.fail(CloseProtocol, errors.New("server: close code above 4999"))
			return
		}
	}
	c.state = stateClosing
	c.releaseMsg()
	ctr := c.ctr()
	ctr.closes[ClosePeer].Add(1)
	ctr.peerCodes[peerCodeIndex(uint16(code))].Add(1)
	var buf [2]byte
	body := closeBody(buf[:], code, "")
	var h [2]byte
	putHeader(h[:], ws.OpClose, len(body))
	c.pc.Write2(h[:], body)
	c.pc.CloseWrite()
	c.closeAt = s.nowMillis() + s.opts.CloseTimeout.Milliseconds()
	c.tell(code, reason)
}

// newConn creates the Conn for an upgraded socket.
func (s *Server) newConn(pc *poller.Conn, r *route, user string, exp time.Time) *Conn {
	c := &Conn{pc: pc, route: r, user: user}
	c.SetExpiresAt(exp)
	c.ping = s.nowMillis()
	pc.SetContext(c)
	pc.SetStamp(c.ping)
	s.stats(pc.Loop().Index()).open.Add(1)
	return c
}

func anonymousID() string {
	var b [8]byte
	rand.Read(b[:])
	return "anon-" + hex.EncodeToString(b[:])
}

// beginDrain snapshots the loop's open connections for Shutdown to close at its
// pace.
func (ls *loopState) beginDrain() {
	ls.draining = ls.draining[:0]
	ls.l.Range(func(pc *poller.Conn) bool {
		ls.draining = append(ls.draining, pc)
		return true
	})
	ls.drainLeft.Store(int64(len(ls.draining)))
}

type drainJob struct {
	ls *loopState
	n  int
}

func (j drainJob) Run(*poller.Loop) {
	ls := j.ls
	for ; j.n > 0 && len(ls.draining) > 0; j.n-- {
		pc := ls.draining[len(ls.draining)-1]
		ls.draining[len(ls.draining)-1] = nil
		ls.draining = ls.draining[:len(ls.draining)-1]
		if pc.Closed() {
			continue
		}
		switch c := pc.Context().(type) {
		case *Conn:
			c.Close(CloseShutdown)
		default:
			pc.Close() // still in the handshake, or refused
		}
	}
	ls.drainLeft.Store(int64(len(ls.draining)))
}

// Post runs fn on the connection's loop. It reports false if the server has
// stopped.
func (c *Conn) Post(fn func()) bool { return c.pc.Loop().Post(poller.FuncJob(fn)) }

func (c *Conn) String() string { return fmt.Sprintf("conn(fd=%d user=%s)", c.pc.Fd(), c.user) }
