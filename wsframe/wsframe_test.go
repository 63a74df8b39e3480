package wsframe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/gobwas/ws"
)

// FuzzParseHeader checks ParseHeader against gobwas/ws's stream reader, and
// that it is consistent over every prefix of its input: a prefix shorter than
// the header is incomplete and never an error unless the length is already in,
// and a longer one gives the same header.
func FuzzParseHeader(f *testing.F) {
	for _, b := range [][]byte{
		nil, {0x81}, {0x81, 0x00}, {0x81, 0x85, 1, 2, 3, 4, 'h', 'e', 'l', 'l', 'o'},
		{0x82, 0xfe, 0x00, 0xc8, 1, 2, 3, 4},
		{0x70, 0xff, 0, 0, 0, 0, 0, 1, 0x11, 0x70, 1, 2, 3, 4},
		{0x89, 0x00},
		binary.BigEndian.AppendUint64([]byte{0x82, 0xff}, 1<<63),
		binary.BigEndian.AppendUint64([]byte{0x82, 0x7f}, 1<<62),
		{0x82, 0xfe, 0xff},
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, size, ok, err := ParseHeader(b)
		gh, gerr := ws.ReadHeader(bytes.NewReader(b))
		switch {
		case err != nil:
			if !errors.Is(err, ws.ErrHeaderLengthMSB) || ok {
				t.Fatalf("ParseHeader(%x) = ok %v, err %v", b, ok, err)
			}
			// gobwas reads the mask key before it checks the length.
			if !errors.Is(gerr, ws.ErrHeaderLengthMSB) && !errors.Is(gerr, io.ErrUnexpectedEOF) {
				t.Fatalf("ParseHeader(%x): %v; ws.ReadHeader: %v", b, err, gerr)
			}
		case !ok:
			if gerr == nil {
				t.Fatalf("ParseHeader(%x) incomplete; ws.ReadHeader = %+v", b, gh)
			}
		default:
			if gerr != nil || gh != h {
				t.Fatalf("ParseHeader(%x) = %+v; ws.ReadHeader = %+v, %v", b, h, gh, gerr)
			}
			if size < 2 || size > ws.MaxHeaderSize || size > len(b) {
				t.Fatalf("ParseHeader(%x): size %d", b, size)
			}
			if h.Length < 0 {
				t.Fatalf("ParseHeader(%x): length %d", b, h.Length)
			}
		}
		for k := range len(b) {
			ph, psize, pok, perr := ParseHeader(b[:k])
			switch {
			case ok && k < size, !ok && err == nil:
				if pok || perr != nil {
					t.Fatalf("prefix %x of %x: ok %v err %v, want incomplete", b[:k], b, pok, perr)
				}
			case ok:
				if !pok || perr != nil || ph != h || psize != size {
					t.Fatalf("prefix %x of %x: %+v %v %v, want %+v", b[:k], b, ph, pok, perr, h)
				}
			case err != nil:
				// The error shows once the 64-bit length is in.
				if (k >= 10) != (perr != nil) || pok {
					t.Fatalf("prefix %x of %x: ok %v err %v", b[:k], b, pok, perr)
				}
			}
		}
	})
}
