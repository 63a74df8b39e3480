package bench

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/gobwas/ws"
)

func TestAcceptKey(t *testing.T) {
	// RFC 6455 section 1.3's example.
	if got := acceptKey([]byte("dGhlIHNhbXBsZSBub25jZQ==")); string(got[:]) != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("acceptKey = %s", got)
	}
}

func response(key string, extra string) []byte {
	acc := acceptKey([]byte(key))
	return []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: " + string(acc[:]) + "\r\n" + extra + "\r\n")
}

func TestUpgradeResponse(t *testing.T) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	good := response(key, "")
	mixedCase := []byte("HTTP/1.1 101 OK\r\nupgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\n" +
		"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
	for _, tc := range []struct {
		name string
		resp []byte
		n    int
		err  error
	}{
		{"ok", good, len(good), nil},
		{"ok with frame behind", append(good, 0x81, 0x00), len(good), nil},
		{"incomplete", good[:len(good)-1], 0, nil},
		{"case and lists", mixedCase, len(mixedCase), nil},
		{"401", []byte("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"), 0, &StatusError{401}},
		{"wrong accept", response("AAAAAAAAAAAAAAAAAAAAAA==", ""), 0, ErrBadHandshake},
		{"no upgrade", []byte("HTTP/1.1 101 OK\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"), 0, ErrBadHandshake},
		{"garbage", []byte("SSH-2.0-OpenSSH\r\n\r\n"), 0, ErrBadHandshake},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Conn{}
			copy(c.key[:], key)
			n, err := c.upgrade(tc.resp)
			var se *StatusError
			switch {
			case tc.err == nil && err != nil:
				t.Fatalf("err %v", err)
			case errors.As(tc.err, &se):
				var got *StatusError
				if !errors.As(err, &got) || got.Code != se.Code {
					t.Fatalf("err %v, want status %d", err, se.Code)
				}
			case tc.err != nil && !errors.Is(err, tc.err):
				t.Fatalf("err %v, want %v", err, tc.err)
			case n != tc.n:
				t.Fatalf("n %d, want %d", n, tc.n)
			}
		})
	}
}

// FuzzUpgradeResponse feeds a response split at every point: a prefix is
// either incomplete or already the whole response, never an error, and the
// whole is accepted once.
func FuzzUpgradeResponse(f *testing.F) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	f.Add(response(key, ""), 10)
	f.Add(response(key, "X-Long: "+string(bytes.Repeat([]byte("v"), 300))+"\r\n"), 200)
	f.Add([]byte("HTTP/1.1 404 Not Found\r\n\r\n"), 5)
	f.Fuzz(func(t *testing.T, resp []byte, cut int) {
		c := &Conn{}
		copy(c.key[:], key)
		whole, werr := c.upgrade(resp)
		if cut < 0 || cut > len(resp) {
			return
		}
		n, err := c.upgrade(resp[:cut])
		if err == nil && n != 0 && (n != whole || werr != nil) {
			t.Fatalf("prefix of %d accepted %d bytes, whole accepted %d (%v)", cut, n, whole, werr)
		}
	})
}

func serverFrame(op ws.OpCode, fin bool, p []byte) []byte {
	b0 := byte(op)
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	switch n := len(p); {
	case n < 126:
		out = append(out, byte(n))
	case n <= 0xffff:
		out = append(out, 126, byte(n>>8), byte(n))
	default:
		out = append(out, 127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	return append(out, p...)
}

func TestClientFrameRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, 125, 126, 65535, 65536} {
		p := bytes.Repeat([]byte{'a'}, size)
		f := appendClientFrame(nil, ws.OpBinary, p)
		// gobwas/ws reads it back: our framing is not checked by our parser.
		r := bytes.NewReader(f)
		h, err := ws.ReadHeader(r)
		n, ok := len(f)-r.Len(), true
		if err != nil || !ok || !h.Masked || !h.Fin || h.OpCode != ws.OpBinary || h.Length != int64(size) || n+size != len(f) {
			t.Fatalf("size %d: header %+v n %d ok %v err %v", size, h, n, ok, err)
		}
		body := append([]byte(nil), f[n:]...)
		ws.Cipher(body, h.Mask, 0)
		if !bytes.Equal(body, p) {
			t.Fatalf("size %d: payload does not unmask", size)
		}
	}
}

func TestHex(t *testing.T) {
	b := appendHex(nil, 0xdeadbeef01234567)
	b = appendHex32(b, 0x89abcdef)
	v, ok := parseHex(b, 0)
	w, ok2 := parseHex32(b, 16)
	if !ok || !ok2 || v != 0xdeadbeef01234567 || w != 0x89abcdef {
		t.Fatalf("hex round trip: %x %x", v, w)
	}
	if _, ok := parseHex([]byte("zz"), 0); ok {
		t.Fatal("short or bad hex accepted")
	}
}
