package server

import (
	"encoding/binary"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

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
