package server

import (
	"bytes"
	"strconv"
	"sync"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"github.com/klauspost/compress/flate"
	"github.com/valyala/bytebufferpool"

	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/wsframe"
)

// permessage-deflate (RFC 7692), always without context takeover in both
// directions: every message is compressed and inflated on its own, so a
// connection keeps no compression state between messages. The response to
// every accepted offer carries server_no_context_takeover and
// client_no_context_takeover (a server may add both to any offer). A
// compressor is taken from a pool for one message and put back; an inflater
// (wsframe.Inflater) is the loop's, used inside one OnData call. An idle
// connection holds one byte: the window it negotiated.

// Compression says whether the server negotiates permessage-deflate.
type Compression uint8

const (
	// CompressionOff leaves the extension out of every handshake.
	CompressionOff Compression = iota
	// CompressionOn accepts permessage-deflate offers (RFC 7692).
	CompressionOn
)

func (c Compression) String() string {
	if c == CompressionOn {
		return "on"
	}
	return "off"
}

// DefaultCompressionMinSize is Options.CompressionMinSize's default: below it
// a message is sent plain, as deflate's block headers and the frame bit cost
// more than a short JSON message saves (docs/BENCHMARKS.md).
const DefaultCompressionMinSize = 128

// DeflateLevel is the compression level of every message: the fastest of
// klauspost/compress's levels, as the server compresses each broadcast once
// but on its loops.
const DeflateLevel = flate.BestSpeed

// ErrBadDeflate is the OnError cause for a compressed message that does not
// inflate: the connection is closed with 1007.
var ErrBadDeflate = wsframe.ErrBadDeflate

// deflateOffer is the outcome of reading a Sec-WebSocket-Extensions header:
// bits is the server's LZ77 window (8 to 15) of the first acceptable
// permessage-deflate offer, 0 while there is none.
//
// parseDeflateOffers reads one header line's offers in order and returns the
// first acceptable one's window bits, or 0. An offer is declined, and the next
// one tried, if it has a parameter RFC 7692 does not define, a parameter
// twice, or a value out of place (section 7.1); ok is false only when the
// header is not valid syntax, which the handshake answers with 400.
func parseDeflateOffers(v []byte) (bits uint8, ok bool) {
	const (
		seenSNCT = 1 << iota
		seenCNCT
		seenSMWB
		seenCMWB
	)
	var (
		index   = -1
		inOffer bool // the current option is a permessage-deflate offer
		bad     bool // the current offer is declined
		seen    uint8
		window  uint8
	)
	finish := func() {
		if inOffer && !bad && bits == 0 {
			bits = window
		}
	}
	ok = httphead.ScanOptions(v, func(i int, name, attr, val []byte) httphead.Control {
		if i != index {
			finish()
			index, bad, seen, window = i, false, 0, 15
			// Not ControlSkip for other extensions: httphead would skip the
			// option after one without parameters too.
			inOffer = bytes.Equal(name, []byte("permessage-deflate"))
		}
		if !inOffer || attr == nil || bad {
			return httphead.ControlContinue
		}
		var flag uint8
		switch string(attr) {
		case "server_no_context_takeover":
			flag, bad = seenSNCT, len(val) > 0
		case "client_no_context_takeover":
			flag, bad = seenCNCT, len(val) > 0
		case "server_max_window_bits":
			flag = seenSMWB
			var b uint8
			b, bad = windowBits(val)
			bad = bad || len(val) == 0
			window = b
		case "client_max_window_bits":
			// Valueless: the client can take a limit we do not need to set.
			// With a value, it limits itself; any window inflates here.
			flag = seenCMWB
			if len(val) > 0 {
				_, bad = windowBits(val)
			}
		default:
			bad = true
		}
		if seen&flag != 0 {
			bad = true
		}
		seen |= flag
		return httphead.ControlContinue
	})
	finish()
	if !ok {
		return 0, false
	}
	return bits, true
}

// windowBits parses a window-bits value: a decimal 8 to 15 without leading
// zeros (RFC 7692 section 7.1.2). bad is true for anything else.
func windowBits(v []byte) (bits uint8, bad bool) {
	switch {
	case len(v) == 1 && v[0] >= '8' && v[0] <= '9':
		return v[0] - '0', false
	case len(v) == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5':
		return 10 + v[1] - '0', false
	}
	return 0, true
}

// deflateResponses[b-8] is the response header accepting an offer with
// server window bits b: server_max_window_bits is echoed only when the offer
// limited it, as RFC 7692 section 7.1.2.1 requires.
var deflateResponses = func() (r [8]ws.HandshakeHeader) {
	for b := 8; b <= 15; b++ {
		h := "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
		if b < 15 {
			h += "; server_max_window_bits=" + strconv.Itoa(b)
		}
		r[b-8] = ws.HandshakeHeaderString(h + "\r\n")
	}
	return r
}()

// deflater is one pooled compressor and the buffer it writes into.
type deflater struct {
	w   *flate.Writer
	out []byte
}

func (d *deflater) Write(p []byte) (int, error) {
	d.out = append(d.out, p...)
	return len(p), nil
}

// deflaters[b-8] pools compressors with an LZ77 window of 1<<b bytes. Pools,
// not one per connection: a compressor is hundreds of kilobytes, held only
// while one message is compressed.
var deflaters [8]sync.Pool

// appendDeflated appends payload compressed for permessage-deflate with a
// window of 1<<bits bytes to dst. If the result is not shorter than payload,
// ok is false and out is dst (its array perhaps grown): the message is better
// sent plain.
func appendDeflated(dst, payload []byte, bits uint8) (out []byte, ok bool) {
	d, _ := deflaters[bits-8].Get().(*deflater)
	if d == nil {
		d = new(deflater)
		var err error
		if bits == 15 {
			d.w, err = flate.NewWriter(d, DeflateLevel)
		} else {
			d.w, err = flate.NewWriterWindow(d, 1<<bits)
		}
		if err != nil {
			panic("server: " + err.Error()) // the level and windows are constants
		}
	}
	d.out = dst
	d.w.Reset(d)
	d.w.Write(payload)
	d.w.Flush()
	out = d.out
	d.out = nil
	deflaters[bits-8].Put(d)
	if len(out)-len(dst)-len(wsframe.DeflateTail) >= len(payload) || !bytes.HasSuffix(out, wsframe.DeflateTail) {
		return out[:len(dst)], false
	}
	return out[:len(out)-len(wsframe.DeflateTail)], true
}

// Deflater encodes messages shared between connections (a room's broadcast)
// compressed for those that negotiated permessage-deflate. Server.Deflater
// returns the server's, or nil when compression is off.
type Deflater struct {
	minSize int
}

// Frame returns a shared frame holding payload compressed as one final frame
// of op with the RSV1 bit set, for the connections that take it
// (Conn.SharesDeflated). It returns nil if payload is shorter than
// Options.CompressionMinSize or does not compress smaller: the plain frame
// then serves every connection. A nil Deflater returns nil.
func (d *Deflater) Frame(op ws.OpCode, payload []byte) *poller.Frame {
	if d == nil || len(payload) < d.minSize {
		return nil
	}
	z := bytebufferpool.Get()
	defer bytebufferpool.Put(z)
	out, ok := appendDeflated(z.B[:0], payload, 15)
	z.B = out
	if !ok {
		return nil
	}
	f := poller.NewFrame()
	b := f.Buffer()
	var h [ws.MaxHeaderSize]byte
	hn := putHeaderRSV(h[:], op, len(out), true)
	b.B = append(append(b.B, h[:hn]...), out...)
	return f
}

// putHeaderRSV is putHeader with the RSV1 bit (permessage-deflate's
// "compressed") set when compressed is true.
func putHeaderRSV(dst []byte, op ws.OpCode, n int, compressed bool) int {
	hn := putHeader(dst, op, n)
	if compressed {
		dst[0] |= 0x40
	}
	return hn
}
