package wsframe

import (
	"errors"
	"io"

	"github.com/klauspost/compress/flate"
)

// Errors of Inflater.Inflate.
var (
	// ErrInflateLimit: the message inflates past the limit.
	ErrInflateLimit = errors.New("wsframe: inflated message over the limit")
	// ErrBadDeflate: the message is not a permessage-deflate stream.
	ErrBadDeflate = errors.New("wsframe: compressed message does not inflate")
)

// DeflateTail is what RFC 7692 section 7.2.1 strips from a compressed message
// (the LEN and NLEN of the empty stored block a sync flush ends with), and
// section 7.2.2 puts back before inflating.
var DeflateTail = []byte{0x00, 0x00, 0xff, 0xff}

// Inflater inflates permessage-deflate messages (RFC 7692) without context
// takeover, one whole message at a time, from bytes an event loop already
// holds. It keeps a decompressor (about 40 KB) between messages but no
// reference to them, so one serves every connection of a loop. It must not be
// used by two goroutines at once.
type Inflater struct {
	r   io.ReadCloser // a flate reader; flate.Resetter
	src tailReader
	// Consumed is how many compressed bytes the last Inflate read.
	Consumed int
}

// tailReader reads a compressed payload followed by DeflateTail. It is an
// io.ByteReader, so flate reads it without a bufio.Reader of its own.
type tailReader struct {
	p    []byte
	tail int // bytes of DeflateTail read
}

func (t *tailReader) Read(b []byte) (int, error) {
	if len(t.p) > 0 {
		n := copy(b, t.p)
		t.p = t.p[n:]
		return n, nil
	}
	if t.tail == len(DeflateTail) {
		return 0, io.EOF
	}
	n := copy(b, DeflateTail[t.tail:])
	t.tail += n
	return n, nil
}

func (t *tailReader) ReadByte() (byte, error) {
	if len(t.p) > 0 {
		c := t.p[0]
		t.p = t.p[1:]
		return c, nil
	}
	if t.tail == len(DeflateTail) {
		return 0, io.EOF
	}
	c := DeflateTail[t.tail]
	t.tail++
	return c, nil
}

// Inflate appends the message compressed in src (its tail stripped) to dst.
// It reads no more of src than limit inflated bytes need: past limit it stops,
// without inflating the rest, and returns ErrInflateLimit. A stream that does
// not inflate gives ErrBadDeflate. dst grows by doubling, never past limit and
// one byte.
func (z *Inflater) Inflate(dst, src []byte, limit int) (_ []byte, err error) {
	z.src = tailReader{p: src}
	defer func() {
		z.Consumed = len(src) - len(z.src.p)
		z.src = tailReader{} // keep no reference to the message
	}()
	if z.r == nil {
		z.r = flate.NewReader(&z.src)
	} else {
		z.r.(flate.Resetter).Reset(&z.src, nil)
	}
	start := len(dst)
	for {
		if len(dst) == cap(dst) {
			grow := min(max(cap(dst)-start, 512), limit+1-(len(dst)-start))
			if grow <= 0 {
				return dst, ErrInflateLimit
			}
			dst = append(dst, make([]byte, grow)...)[:len(dst)]
		}
		n, err := z.r.Read(dst[len(dst):min(cap(dst), start+limit+1)])
		dst = dst[:len(dst)+n]
		if len(dst)-start > limit {
			return dst, ErrInflateLimit
		}
		switch {
		case err == nil:
		case err == io.ErrUnexpectedEOF && len(z.src.p) == 0 && z.src.tail == len(DeflateTail):
			// The stream ends at the empty stored block of its sync flush:
			// flate asks for a next block header and finds the end of the
			// input.
			return dst, nil
		case err == io.EOF && len(z.src.p) == 0:
			// It ended with a final block (BFINAL), before the tail.
			return dst, nil
		default:
			return dst, ErrBadDeflate
		}
	}
}
