// Package wsframe parses WebSocket frame headers in place. gobwas/ws reads
// headers from an io.Reader; an event loop already holds the bytes, so the
// server (client frames) and the bench client (server frames) parse them here,
// with no allocation, and check them with ws.CheckHeader.
package wsframe

import (
	"encoding/binary"

	"github.com/gobwas/ws"
)

// ParseHeader parses the frame header at the start of b and returns it with
// its size in bytes, mask included. ok is false while b does not yet hold the
// whole header. A length with its most significant bit set is a protocol
// error.
func ParseHeader(b []byte) (h ws.Header, size int, ok bool, err error) {
	if len(b) < 2 {
		return h, 0, false, nil
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n := 2
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < 4 {
			return h, 0, false, nil
		}
		h.Length = int64(binary.BigEndian.Uint16(b[2:4]))
		n = 4
	case 127:
		if len(b) < 10 {
			return h, 0, false, nil
		}
		v := binary.BigEndian.Uint64(b[2:10])
		if v>>63 != 0 {
			return h, 0, false, ws.ErrHeaderLengthMSB
		}
		h.Length = int64(v)
		n = 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, false, nil
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	return h, n, true, nil
}
