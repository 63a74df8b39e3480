package server

import (
	"encoding/binary"
	"errors"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"

	"github.com/throng-ws/throng/wsframe"
)

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
		// RSV1 is permessage-deflate's "compressed" bit, on the first frame of
		// a data message only (RFC 7692 section 6); without the extension,
		// CheckHeader refuses it with the other RSV bits.
		compressed := false
		if h.Rsv&0x4 != 0 && c.deflate != 0 {
			if h.OpCode != ws.OpText && h.OpCode != ws.OpBinary {
				c.fail(CloseProtocol, errRSV1)
				return len(data)
			}
			h.Rsv &^= 0x4
			compressed = true
		}
		if err := ws.CheckHeader(h, st); err != nil {
			c.fail(CloseProtocol, err)
			return len(data)
		}
		if h.OpCode.IsData() || h.OpCode == ws.OpContinuation {
			have, limit := 0, s.opts.MaxMessageSize
			if c.msg != nil {
				have = len(c.msg.B)
			}
			if compressed || (h.OpCode == ws.OpContinuation && c.is(flagInflate)) {
				// Compressed bytes are bounded too, so an assembled message
				// stays in proportion to what it may inflate to; the inflated
				// size is checked as it inflates.
				limit = maxCompressedSize(limit)
			}
			if h.Length > int64(limit-have) {
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
		s.frame(c, h, payload, compressed)
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

func (s *Server) frame(c *Conn, h ws.Header, p []byte, compressed bool) {
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
	if h.OpCode != ws.OpContinuation && h.Fin {
		if compressed {
			s.inflated(c, h.OpCode, p)
			return
		}
		ctr.msgsIn.Add(1)
		ctr.bytesIn.Add(uint64(len(p)))
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
		c.setFlag(flagInflate, compressed)
	}
	if c.is(flagInflate) {
		// A compressed message is inflated whole once its last fragment is
		// in; until then it is held compressed.
		c.msg.Write(p)
		if !h.Fin {
			return
		}
		op, msg := c.fragOp, c.msg
		c.msg, c.fragOp = nil, 0
		c.setFlag(flagInflate, false)
		s.inflated(c, op, msg.B)
		bytebufferpool.Put(msg)
		return
	}
	ctr.msgsIn.Add(1)
	ctr.bytesIn.Add(uint64(len(p)))
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

// inflated inflates a compressed message with the loop's inflater, at most
// MaxMessageSize bytes of it, and hands it to the handler.
func (s *Server) inflated(c *Conn, op ws.OpCode, src []byte) {
	ls := s.loopOf(&c.pc)
	out := bytebufferpool.Get()
	defer bytebufferpool.Put(out)
	var err error
	out.B, err = ls.inflater.Inflate(out.B[:0], src, s.opts.MaxMessageSize)
	switch {
	case errors.Is(err, wsframe.ErrInflateLimit):
		c.fail(CloseTooBig, ErrMessageTooBig)
		return
	case err != nil:
		c.fail(CloseBadDeflate, err)
		return
	}
	ctr := c.ctr()
	ctr.msgsIn.Add(1)
	ctr.bytesIn.Add(uint64(len(src)))
	ctr.deflateIn.Add(1)
	if op == ws.OpText && !utf8.Valid(out.B) {
		c.fail(CloseInvalidUTF8, ErrInvalidUTF8)
		return
	}
	c.route.h.OnMessage(c, op, out.B)
}

// errRSV1 is the OnError cause for a compressed bit where RFC 7692 forbids it.
var errRSV1 = errors.New("server: RSV1 set on a control frame or a continuation")

// maxCompressedSize bounds a compressed message's bytes for a message limit
// of n inflated bytes: deflate can grow incompressible data by an eighth at
// worst (fixed Huffman codes), plus its block headers.
func maxCompressedSize(n int) int { return n + n/8 + 1024 }

// closeFrame handles the peer's close: it answers with the peer's own code
// unless the frame is malformed, and ends the connection once both sides have
// sent theirs.
func (s *Server) closeFrame(c *Conn, p []byte) {
	if c.state == stateClosing {
		// The peer answered our close: the handshake is complete. If our close
		// frame is still queued the peer's crossed it, and closing now would cut
		// the stream; CloseWrite ends it once flushed, and the close deadline (Conn.timer) bounds the wait.
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
	c.timer = s.nowMillis() + s.opts.CloseTimeout.Milliseconds()
	c.tell(code, reason)
}

// putHeader writes an unmasked server frame header for a final frame of op and
// length n into dst, which must hold ws.MaxHeaderSize bytes, and returns its size.
func putHeader(dst []byte, op ws.OpCode, n int) int {
	dst[0] = 0x80 | byte(op)
	switch {
	case n < 126:
		dst[1] = byte(n)
		return 2
	case n <= 0xffff:
		dst[1] = 126
		binary.BigEndian.PutUint16(dst[2:4], uint16(n))
		return 4
	default:
		dst[1] = 127
		binary.BigEndian.PutUint64(dst[2:10], uint64(n))
		return 10
	}
}

// AppendFrame appends a complete unmasked server frame to dst.
func AppendFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	var h [ws.MaxHeaderSize]byte
	n := putHeader(h[:], op, len(payload))
	dst = append(dst, h[:n]...)
	return append(dst, payload...)
}

// utf8Stream validates UTF-8 that arrives in pieces, as the fragments of a text
// message do, so an invalid message fails at the fragment that breaks it rather
// than when the message ends. It holds at most the three leading bytes of a
// character split between fragments.
type utf8Stream struct {
	part [3]byte
	n    uint8
}

// write validates p as the continuation of the stream; false means the stream is
// not UTF-8, whatever follows.
func (s *utf8Stream) write(p []byte) bool {
	if s.n > 0 {
		need := seqLen(s.part[0])
		var r [4]byte
		k := copy(r[:], s.part[:s.n])
		take := min(need-k, len(p))
		copy(r[k:], p[:take])
		k += take
		p = p[take:]
		if k < need {
			if !validPrefix(r[:k]) {
				return false
			}
			s.n = uint8(copy(s.part[:], r[:k]))
			return true
		}
		if !utf8.Valid(r[:need]) {
			return false
		}
		s.n = 0
	}
	// Find a character cut off at the end: its leading byte is among the last
	// three bytes and it needs more bytes than remain.
	cut := len(p)
	for i := len(p) - 1; i >= 0 && i >= len(p)-3; i-- {
		if c := p[i]; c >= 0xc0 {
			if seqLen(c) > len(p)-i {
				cut = i
			}
			break
		} else if c < 0x80 {
			break
		}
	}
	if !utf8.Valid(p[:cut]) {
		return false
	}
	if tail := p[cut:]; len(tail) > 0 {
		if !validPrefix(tail) {
			return false
		}
		s.n = uint8(copy(s.part[:], tail))
	}
	return true
}

// end reports whether the stream ended on a character boundary.
func (s *utf8Stream) end() bool { return s.n == 0 }

func (s *utf8Stream) reset() { s.n = 0 }

// seqLen is the length of the UTF-8 sequence a leading byte starts, or 5 (never
// satisfiable) for a byte that cannot lead one.
func seqLen(c byte) int {
	switch {
	case c < 0x80:
		return 1
	case c >= 0xc2 && c <= 0xdf:
		return 2
	case c >= 0xe0 && c <= 0xef:
		return 3
	case c >= 0xf0 && c <= 0xf4:
		return 4
	}
	return 5
}

// validPrefix reports whether b, shorter than its sequence, can still become a
// valid character. The second byte's range depends on the first (RFC 3629), which
// is what rules out overlong forms, surrogates and values past U+10FFFF early.
func validPrefix(b []byte) bool {
	if len(b) == 0 || seqLen(b[0]) > 4 || len(b) >= seqLen(b[0]) {
		return false
	}
	if len(b) >= 2 {
		lo, hi := byte(0x80), byte(0xbf)
		switch b[0] {
		case 0xe0:
			lo = 0xa0
		case 0xed:
			hi = 0x9f
		case 0xf0:
			lo = 0x90
		case 0xf4:
			hi = 0x8f
		}
		if b[1] < lo || b[1] > hi {
			return false
		}
	}
	if len(b) == 3 && (b[2] < 0x80 || b[2] > 0xbf) {
		return false
	}
	return true
}
