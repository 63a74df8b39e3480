package server

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"time"
	"unicode/utf8"
	"unsafe"

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
// held while the connection is idle, and the poller's Conn is part of it, so
// that a connection is one allocation of 112 bytes (docs/ARCHITECTURE.md,
// "Where the bytes of a joined member go"). The poller makes every one of the
// server's sockets a Conn from the moment it is accepted (Options.NewConn is
// newPollerConn); until the upgrade its state says it is in the handshake,
// and only the poller's part is used.
type Conn struct {
	// pc is the poller's part, and must stay the first field: connOf finds
	// the Conn from the *poller.Conn the poller hands over, at the same
	// address. Its context (Context, SetContext) is the handler's Data.
	pc    poller.Conn
	route *route
	user  string
	msg   *bytebufferpool.ByteBuffer // a fragmented message being assembled
	// timer is, while open, when the last ping was sent, and once closing,
	// the deadline for the peer's close frame: unix ms. One field for both
	// keeps the struct in the 112-byte size class.
	timer int64
	exp   uint32 // token deadline (exp + leeway), unix seconds (at most 2106); 0 if none
	// dropped counts messages refused under SlowDrop since the handler was last
	// told.
	dropped uint32
	utf8    utf8Stream
	state   connState
	fragOp  ws.OpCode // the opcode of the fragmented message in progress, or 0
	flags   connFlags

	// deflate is the LZ77 window bits (8 to 15) the server may use towards
	// the peer under permessage-deflate, or 0 if it was not negotiated: all
	// the compression state a connection keeps.
	deflate uint8
}

// connFlags are a Conn's yes-or-no state, in one byte.
type connFlags uint8

const (
	flagTold    connFlags = 1 << iota // the handler's OnClose has run
	flagCounted                       // holds one of the user's MaxConnsPerUser
	flagInflate                       // the fragmented message in progress is compressed
)

func (c *Conn) is(f connFlags) bool { return c.flags&f != 0 }

func (c *Conn) setFlag(f connFlags, on bool) {
	if on {
		c.flags |= f
	} else {
		c.flags &^= f
	}
}

type connState uint8

const (
	// The states of an upgraded connection, the only ones its handler sees.
	// Their numbers are in the handoff format.
	stateOpen connState = iota
	stateClosing
	stateClosed
	// stateHandshake: the socket's upgrade request is still being read; the
	// Conn has only its poller part. Every Conn starts here (newPollerConn).
	stateHandshake
	// stateRejected: the socket's handshake was refused; its response is
	// being flushed and any further input is discarded.
	stateRejected
)

// upgraded reports whether c is a WebSocket connection, open or not, rather
// than a socket in or refused at the handshake.
func (c *Conn) upgraded() bool { return c.state <= stateClosed }

// newPollerConn is the server's poller.Options.NewConn: every socket the
// server's poller accepts or adopts is the poller part of a Conn, in the
// handshake until it is upgraded.
func newPollerConn() *poller.Conn {
	c := &Conn{state: stateHandshake}
	return &c.pc
}

// connOf is the Conn of one of the server's sockets. Every poller.Conn of the
// server's poller was made by newPollerConn as the first field of a Conn, so
// the Conn is at the same address: a pointer to the field is a pointer to the
// struct. A poller.Conn from anywhere else would make this read past its
// allocation; under -race (checkptr) the conversion panics instead.
func connOf(pc *poller.Conn) *Conn { return (*Conn)(unsafe.Pointer(pc)) }

// connOf needs pc at offset 0: this does not compile otherwise.
var _ = [1]struct{}{}[unsafe.Offsetof(Conn{}.pc)]

// ConnOf is the WebSocket connection whose socket is pc, as a job sees the
// sockets of a loop with Loop.Range; it is nil for a socket still in its
// handshake or refused, and for another poller's. The Conn may be closed.
// Call it on pc's loop.
func (s *Server) ConnOf(pc *poller.Conn) *Conn {
	if loops := s.p.Loops(); pc == nil || pc.Loop() == nil || pc.Loop().Index() >= len(loops) || loops[pc.Loop().Index()] != pc.Loop() {
		return nil
	}
	if c := connOf(pc); c.upgraded() {
		return c
	}
	return nil
}

// UserID is the token's subject, or a random id for an anonymous connection.
func (c *Conn) UserID() string { return c.user }

// Path is the endpoint path the connection was upgraded on.
func (c *Conn) Path() string { return c.route.path }

// Data returns the handler's value for this connection.
func (c *Conn) Data() any { return c.pc.Context() }

// SetData stores a value for the handler.
func (c *Conn) SetData(v any) { c.pc.SetContext(v) }

// TokenDeadline is when the connection's token stops being valid: its exp
// plus the verifier's leeway (auth.Claims.Deadline), the same instant from
// which the handshake would refuse it. The loop's sweep closes the connection
// then (within a second). It is zero if the token does not expire.
func (c *Conn) TokenDeadline() time.Time {
	if c.exp == 0 {
		return time.Time{}
	}
	return time.Unix(int64(c.exp), 0)
}

// SetTokenDeadline replaces the token deadline, after a token refresh. It is
// kept in whole seconds, rounded up, so the connection never ends before the
// token would be refused; a deadline past 2106 (the end of 32-bit seconds) is
// kept as 2106.
func (c *Conn) SetTokenDeadline(t time.Time) {
	switch {
	case t.IsZero():
		c.exp = 0
	case t.Nanosecond() == 0:
		c.exp = clampSeconds(t.Unix())
	default:
		c.exp = clampSeconds(t.Unix() + 1)
	}
}

// clampSeconds fits unix seconds into the 32 bits a Conn keeps them in; a
// time before 1970 is 1 (long expired, never "none").
func clampSeconds(sec int64) uint32 {
	return uint32(min(max(sec, 1), math.MaxUint32))
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
// pending limit closes the connection as a slow consumer. Under
// permessage-deflate a message of at least Options.CompressionMinSize bytes is
// sent compressed if that makes it shorter.
func (c *Conn) WriteMessage(op ws.OpCode, p []byte) error {
	if c.state != stateOpen {
		return poller.ErrClosed
	}
	var h [ws.MaxHeaderSize]byte
	if c.deflate != 0 && len(p) >= c.srv().deflater.minSize {
		z := bytebufferpool.Get()
		defer bytebufferpool.Put(z)
		out, ok := appendDeflated(z.B[:0], p, c.deflate)
		z.B = out
		if ok {
			n := putHeaderRSV(h[:], op, len(out), true)
			err := c.checkWrite(c.pc.Write2(h[:n], out), len(out))
			if err == nil {
				c.ctr().deflateOut.Add(1)
			}
			return err
		}
	}
	n := putHeader(h[:], op, len(p))
	return c.checkWrite(c.pc.Write2(h[:n], p), len(p))
}

// WriteFrame sends a frame already encoded and shared between connections
// (see AppendFrame and Deflater.Frame), without copying it. A compressed frame
// may go only to a connection that takes it (SharesDeflated).
func (c *Conn) WriteFrame(f *poller.Frame) error {
	if c.state != stateOpen {
		return poller.ErrClosed
	}
	b := f.Bytes()
	err := c.checkWrite(c.pc.WriteFrame(f), framePayloadLen(b))
	if err == nil && len(b) > 0 && b[0]&0x40 != 0 {
		c.ctr().deflateOut.Add(1)
	}
	return err
}

// WriteFrames sends several shared frames in order, as WriteFrame does each,
// in one write where the backend can (a member with broadcasts waiting gets
// them at once). Under SlowDrop the frames the poller refused are dropped and
// counted; the error is about the first of them.
func (c *Conn) WriteFrames(fs []*poller.Frame) error {
	if c.state != stateOpen {
		return poller.ErrClosed
	}
	sent, err := c.pc.WriteFrames(fs)
	n := 0
	for _, f := range fs[:sent] {
		b := f.Bytes()
		n += framePayloadLen(b)
		if len(b) > 0 && b[0]&0x40 != 0 {
			c.ctr().deflateOut.Add(1)
		}
	}
	if sent > 0 {
		ctr := c.ctr()
		ctr.msgsOut.Add(uint64(sent))
		ctr.bytesOut.Add(uint64(n))
	}
	if err == nil {
		return nil
	}
	err = c.checkWrite(err, 0)
	if left := len(fs) - sent - 1; left > 0 && errors.Is(err, ErrDropped) {
		c.dropped += uint32(left) // checkWrite counted the first
		c.ctr().slow[SlowDrop].Add(uint64(left))
	}
	return err
}

// Deflate reports whether the connection negotiated permessage-deflate.
func (c *Conn) Deflate() bool { return c.deflate != 0 }

// SharesDeflated reports whether the connection takes a Deflater's shared
// compressed frames: it negotiated permessage-deflate with the full window
// they are compressed with. A peer that limited the server's window gets the
// plain frame of a broadcast, and its own messages compressed to its window.
func (c *Conn) SharesDeflated() bool { return c.deflate == 15 }

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
	if c.state == stateOpen && !c.is(flagTold) {
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
	c.timer = s.nowMillis() + s.opts.CloseTimeout.Milliseconds()
	c.tell(code, text)
	if r == CloseAbnormal {
		c.pc.Close()
	}
}

func (c *Conn) tell(code ws.StatusCode, text string) {
	if c.is(flagTold) {
		return
	}
	c.setFlag(flagTold, true)
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
	c.setFlag(flagInflate, false)
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

// newConn makes pc's Conn an upgraded connection.
func (s *Server) newConn(pc *poller.Conn, r *route, user string, deadline time.Time) *Conn {
	c := connOf(pc)
	c.route, c.user, c.state = r, user, stateOpen
	c.SetTokenDeadline(deadline)
	c.timer = s.nowMillis()
	pc.SetStamp(c.timer)
	s.stats(pc.Loop().Index()).open.Add(1)
	return c
}

func anonymousID() string {
	var b [8]byte
	rand.Read(b[:])
	return "anon-" + hex.EncodeToString(b[:])
}

// Post runs fn on the connection's loop. It reports false if the server has
// stopped.
func (c *Conn) Post(fn func()) bool { return c.pc.Loop().Post(poller.FuncJob(fn)) }

func (c *Conn) String() string { return fmt.Sprintf("conn(fd=%d user=%s)", c.pc.Fd(), c.user) }
