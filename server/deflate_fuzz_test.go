package server

import (
	"bytes"
	"compress/flate"
	"testing"

	"github.com/gobwas/httphead"
)

// FuzzDeflateOffers checks the offer parser on any header value: it never
// panics, picks a window of 8 to 15 bits or none, fails only where the header
// is not valid syntax, and gives the answer of the first acceptable offer:
// the same as the offers one at a time, in order.
func FuzzDeflateOffers(f *testing.F) {
	for _, s := range []string{
		"permessage-deflate", "permessage-deflate; client_max_window_bits",
		"permessage-deflate; server_max_window_bits=10, permessage-deflate",
		`permessage-deflate; server_max_window_bits="9"; client_no_context_takeover`,
		"x, permessage-deflate; server_no_context_takeover; server_no_context_takeover, permessage-deflate; server_max_window_bits=8",
		"permessage-deflate; =", "permessage-deflate;;", ",,,", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		bits, ok := parseDeflateOffers(v)
		if bits != 0 && (bits < 8 || bits > 15) {
			t.Fatalf("%q: window bits %d", v, bits)
		}
		var opts []httphead.Option
		index := -1
		syntax := httphead.ScanOptions(v, func(i int, name, attr, val []byte) httphead.Control {
			if i != index {
				index = i
				opts = append(opts, httphead.Option{Name: bytes.Clone(name)})
			}
			if attr != nil {
				opts[len(opts)-1].Parameters.Set(bytes.Clone(attr), bytes.Clone(val))
			}
			return httphead.ControlContinue
		})
		if ok != syntax {
			t.Fatalf("%q: parsed %v, httphead says %v", v, ok, syntax)
		}
		if !ok {
			return
		}
		// Each offer on its own, written back out: the first accepted one
		// must be the answer.
		var want uint8
		for _, o := range opts {
			var b bytes.Buffer
			if _, err := httphead.WriteOptions(&b, []httphead.Option{o}); err != nil {
				continue
			}
			if got, ok := parseDeflateOffers(b.Bytes()); ok && got != 0 {
				want = got
				break
			}
		}
		if bits != want {
			t.Fatalf("%q: window bits %d, offers one by one give %d", v, bits, want)
		}
	})
}

// FuzzDeflateMessages sends a message compressed by the standard library at
// any level, cut into up to three fragments, and the same stream with one
// byte changed: the first must come back exactly (or close 1009 past the
// limit), and the second either come back as whatever it inflates to or close
// the connection with 1007 or 1009, never anything else.
func FuzzDeflateMessages(f *testing.F) {
	addr := fuzzServer(f, Options{MaxMessageSize: fuzzMaxMessage, Compression: CompressionOn, CompressionMinSize: 1})
	f.Add([]byte("hello, hello, hello"), int8(6), uint16(3), uint16(9), uint16(0), byte(0))
	f.Add(bytes.Repeat([]byte("z"), fuzzMaxMessage+1), int8(9), uint16(1), uint16(2), uint16(5), byte(1))
	f.Add([]byte{}, int8(0), uint16(0), uint16(0), uint16(0), byte(0x80))
	f.Add([]byte("stored and huffman-only"), int8(-2), uint16(4), uint16(4), uint16(3), byte(0xff))
	f.Fuzz(func(t *testing.T, msg []byte, level int8, i, j, k uint16, flip byte) {
		deflateRoundTrips(t, addr, msg, level, i, j, k, flip)
	})
}

func deflateRoundTrips(t *testing.T, addr string, msg []byte, level int8, i, j, k uint16, flip byte) {
	{
		if len(msg) > 4*fuzzMaxMessage || level < -2 || level > 9 {
			return
		}
		var b bytes.Buffer
		w, err := flate.NewWriter(&b, int(level))
		if err != nil {
			return
		}
		w.Write(msg)
		w.Flush()
		z := b.Bytes()[:b.Len()-4]
		for round, data := range [][]byte{z, mangle(z, k, flip)} {
			c := rawDial(t, addr, "/echo", "Sec-WebSocket-Extensions: permessage-deflate")
			parts := fuzzCuts(data, i, j)
			for n, p := range parts {
				rsv, op := byte(0), byte(0x0)
				if n == 0 {
					rsv, op = 4, 0x2
				}
				c.Write(frame(n == len(parts)-1, rsv, op, p, true))
			}
			b0, p := c.readFrameRSV()
			switch {
			case b0&0x0f == 0x8:
				code := 0
				if len(p) >= 2 {
					code = int(p[0])<<8 | int(p[1])
				}
				if round == 0 && !(code == 1009 && len(msg) > fuzzMaxMessage) || round == 1 && code != 1007 && code != 1009 {
					t.Fatalf("round %d, message of %d: close %d %q", round, len(msg), code, p[2:])
				}
			case b0&0x0f == 0x2:
				if b0&0x40 != 0 {
					p = inflateRaw(t, p)
				}
				if round == 0 && !bytes.Equal(p, msg) || len(p) > fuzzMaxMessage {
					t.Fatalf("round %d: echo of %d bytes for a message of %d", round, len(p), len(msg))
				}
			default:
				t.Fatalf("round %d: frame %#x", round, b0)
			}
			c.Close()
		}
	}
}

// mangle returns a copy of z with byte k (mod its length) XORed with flip.
func mangle(z []byte, k uint16, flip byte) []byte {
	z = bytes.Clone(z)
	if len(z) > 0 {
		z[int(k)%len(z)] ^= flip
	}
	return z
}
