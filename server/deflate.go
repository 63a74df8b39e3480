package server

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"sync"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"github.com/klauspost/compress/flate"
	"github.com/valyala/bytebufferpool"

	"github.com/throng-ws/throng/poller"
)

// permessage-deflate (RFC 7692), always without context takeover in both
// directions: every message is compressed and inflated on its own, so a
// connection keeps no compression state between messages. The response to
// every accepted offer carries server_no_context_takeover and
// client_no_context_takeover (a server may add both to any offer). A
// compressor is taken from a pool for one message and put back; an inflater is
// the loop's, used inside one OnData call. An idle connection holds one byte:
// the window it negotiated.

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

// deflateTail is what RFC 7692 section 7.2.1 strips from a compressed message
// (the LEN and NLEN of the empty stored block a sync flush ends with), and
// section 7.2.2 puts back before inflating.
var deflateTail = []byte{0x00, 0x00, 0xff, 0xff}

// ErrBadDeflate is the OnError cause for a compressed message that does not
// inflate: the connection is closed with 1007.
var ErrBadDeflate = errors.New("server: compressed message does not inflate")

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
	if len(out)-len(dst)-len(deflateTail) >= len(payload) || !bytes.HasSuffix(out, deflateTail) {
		return out[:len(dst)], false
	}
	return out[:len(out)-len(deflateTail)], true
}

// inflater is a loop's decompressor: the loop inflates one message at a time,
// inside OnData, so one serves every connection of the loop and none is kept
// per connection.
type inflater struct {
	r   io.ReadCloser // a flate reader; flate.Resetter
	src tailReader
	// consumed is how many compressed bytes the last inflate read.
	consumed int
}

// tailReader reads a compressed payload followed by deflateTail. It is an
// io.ByteReader, so flate reads it without a bufio.Reader of its own.
type tailReader struct {
	p    []byte
	tail int // bytes of deflateTail read
}

func (t *tailReader) Read(b []byte) (int, error) {
	if len(t.p) > 0 {
		n := copy(b, t.p)
		t.p = t.p[n:]
		return n, nil
	}
	if t.tail == len(deflateTail) {
		return 0, io.EOF
	}
	n := copy(b, deflateTail[t.tail:])
	t.tail += n
	return n, nil
}

func (t *tailReader) ReadByte() (byte, error) {
	if len(t.p) > 0 {
		c := t.p[0]
		t.p = t.p[1:]
		return c, nil
	}
	if t.tail == len(deflateTail) {
		return 0, io.EOF
	}
	c := deflateTail[t.tail]
	t.tail++
	return c, nil
}

// inflate appends the message compressed in src to dst, reading at most limit
// bytes of it: past limit it stops, without inflating the rest, and returns
// ErrMessageTooBig. A stream that does not inflate gives ErrBadDeflate.
func (z *inflater) inflate(dst *bytebufferpool.ByteBuffer, src []byte, limit int) (err error) {
	z.src = tailReader{p: src}
	defer func() {
		z.consumed = len(src) - len(z.src.p)
		z.src = tailReader{} // keep no reference to the message
	}()
	if z.r == nil {
		z.r = flate.NewReader(&z.src)
	} else {
		z.r.(flate.Resetter).Reset(&z.src, nil)
	}
	start := len(dst.B)
	for {
		if len(dst.B) == cap(dst.B) {
			// Grow by doubling, but never past the limit and one byte more,
			// which is enough to see that a message is over it.
			grow := min(max(cap(dst.B)-start, 512), limit+1-(len(dst.B)-start))
			if grow <= 0 {
				return ErrMessageTooBig
			}
			dst.B = append(dst.B, make([]byte, grow)...)[:len(dst.B)]
		}
		n, err := z.r.Read(dst.B[len(dst.B):min(cap(dst.B), start+limit+1)])
		dst.B = dst.B[:len(dst.B)+n]
		if len(dst.B)-start > limit {
			return ErrMessageTooBig
		}
		switch {
		case err == nil:
		case err == io.ErrUnexpectedEOF && len(z.src.p) == 0 && z.src.tail == len(deflateTail):
			// The stream ends at the empty stored block of its sync flush:
			// flate asks for a next block header and finds the end of the
			// input.
			return nil
		case err == io.EOF && len(z.src.p) == 0:
			// It ended with a final block (BFINAL), before the tail.
			return nil
		default:
			return ErrBadDeflate
		}
	}
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
