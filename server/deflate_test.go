package server

import (
	"bytes"
	"compress/flate"
	"context"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
	"unsafe"

	coder "github.com/coder/websocket"
	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/wsframe"
)

// deflateRaw compresses p as a permessage-deflate client does, with the
// standard library's flate (independent of the server's): a sync flush with
// its 4-byte tail removed.
func deflateRaw(t testing.TB, p []byte, level int) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := flate.NewWriter(&b, level)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(p)
	w.Flush()
	out := b.Bytes()
	if !bytes.HasSuffix(out, []byte{0, 0, 0xff, 0xff}) {
		t.Fatalf("flush did not end with the sync tail: % x", out[len(out)-4:])
	}
	return out[:len(out)-4]
}

// inflateRaw inflates a server's compressed payload as a client does, with the
// standard library's flate.
func inflateRaw(t testing.TB, p []byte) []byte {
	t.Helper()
	r := flate.NewReader(io.MultiReader(bytes.NewReader(p), bytes.NewReader([]byte{0, 0, 0xff, 0xff, 1, 0, 0, 0xff, 0xff})))
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("inflate: %v", err)
	}
	return out
}

// readFrameRSV reads one server frame with its first byte (FIN, RSV, opcode).
func (c *rawConn) readFrameRSV() (b0 byte, payload []byte) {
	c.t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		c.t.Fatal(err)
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		io.ReadFull(c.br, e[:])
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		io.ReadFull(c.br, e[:])
		n = binary.BigEndian.Uint64(e[:])
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		c.t.Fatal(err)
	}
	return h[0], payload
}

// extensionsResponse does a raw handshake with the given Sec-WebSocket-Extensions
// lines and returns the status and the response's extensions header.
func extensionsResponse(t *testing.T, addr string, offers ...string) (int, []string) {
	t.Helper()
	c := rawConnect(t, addr)
	req := "GET /echo HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	for _, o := range offers {
		req += "Sec-WebSocket-Extensions: " + o + "\r\n"
	}
	c.Write([]byte(req + "\r\n"))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return resp.StatusCode, resp.Header.Values("Sec-WebSocket-Extensions")
}

// TestDeflateNegotiation answers every kind of offer per RFC 7692: the offers
// browsers, Go clients and Autobahn make are accepted, always without context
// takeover; an offer the RFC says to decline leaves the extension out (the
// next offer is tried); a header that is not valid syntax is a 400.
func TestDeflateNegotiation(t *testing.T) {
	ts := startServer(t, Options{Compression: CompressionOn})
	off := startServer(t, Options{})
	const accepted = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
	for _, tc := range []struct {
		name   string
		offers []string
		status int
		want   string // "" for no extension
	}{
		{"firefox", []string{"permessage-deflate"}, 101, accepted},
		{"chromium", []string{"permessage-deflate; client_max_window_bits"}, 101, accepted},
		{"gorilla", []string{"permessage-deflate; server_no_context_takeover; client_no_context_takeover"}, 101, accepted},
		{"autobahn default", []string{"permessage-deflate; client_no_context_takeover; client_max_window_bits"}, 101, accepted},
		{"server window 9", []string{"permessage-deflate; client_no_context_takeover; client_max_window_bits; server_max_window_bits=9"}, 101, accepted + "; server_max_window_bits=9"},
		{"server window 8", []string{"permessage-deflate; server_max_window_bits=8"}, 101, accepted + "; server_max_window_bits=8"},
		{"server window 15", []string{"permessage-deflate; server_no_context_takeover; server_max_window_bits=15"}, 101, accepted},
		{"quoted window", []string{`permessage-deflate; server_max_window_bits="10"`}, 101, accepted + "; server_max_window_bits=10"},
		{"client window value", []string{"permessage-deflate; client_max_window_bits=10"}, 101, accepted},
		{"fallback offer", []string{"permessage-deflate; server_max_window_bits=9; server_no_context_takeover, permessage-deflate; server_no_context_takeover, permessage-deflate"}, 101, accepted + "; server_max_window_bits=9"},
		{"bad then good", []string{"permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=12"}, 101, accepted + "; server_max_window_bits=12"},
		{"other extension first", []string{"x-webkit-deflate-frame, permessage-deflate"}, 101, accepted},
		{"two header lines", []string{"permessage-deflate; nope", "permessage-deflate; client_max_window_bits"}, 101, accepted},
		{"unknown extension", []string{"x-unknown; a=1"}, 101, ""},
		{"unknown parameter", []string{"permessage-deflate; foo"}, 101, ""},
		{"window without value", []string{"permessage-deflate; server_max_window_bits"}, 101, ""},
		{"window 7", []string{"permessage-deflate; server_max_window_bits=7"}, 101, ""},
		{"window 16", []string{"permessage-deflate; server_max_window_bits=16"}, 101, ""},
		{"window leading zero", []string{"permessage-deflate; server_max_window_bits=09"}, 101, ""},
		{"client window 16", []string{"permessage-deflate; client_max_window_bits=16"}, 101, ""},
		{"takeover with value", []string{"permessage-deflate; server_no_context_takeover=1"}, 101, ""},
		{"duplicate flag", []string{"permessage-deflate; client_no_context_takeover; client_no_context_takeover"}, 101, ""},
		{"duplicate valueless window", []string{"permessage-deflate; client_max_window_bits; client_max_window_bits"}, 101, ""},
		{"duplicate window", []string{"permessage-deflate; server_max_window_bits=10; server_max_window_bits=10"}, 101, ""},
		{"malformed", []string{"permessage-deflate; ="}, 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, got := extensionsResponse(t, ts.Addr, tc.offers...)
			if status != tc.status {
				t.Fatalf("status %d, want %d", status, tc.status)
			}
			if tc.status != 101 {
				return
			}
			switch {
			case tc.want == "" && len(got) != 0:
				t.Fatalf("extensions %q, want none", got)
			case tc.want != "" && (len(got) != 1 || got[0] != tc.want):
				t.Fatalf("extensions %q, want %q", got, tc.want)
			}
			if status, got := extensionsResponse(t, off.Addr, tc.offers...); status != 101 || len(got) != 0 {
				t.Fatalf("compression off: status %d, extensions %q", status, got)
			}
		})
	}
}

// TestDeflateWithSubprotocol sends both response lines when a subprotocol is
// chosen too.
func TestDeflateWithSubprotocol(t *testing.T) {
	ts := startServer(t, Options{Compression: CompressionOn, Subprotocols: []string{"throng.v1"}})
	d := websocket.Dialer{EnableCompression: true, Subprotocols: []string{"throng.v1"}}
	c, resp, err := d.Dial(ts.URL("/echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp.Header.Get("Sec-WebSocket-Protocol") != "throng.v1" || !strings.HasPrefix(resp.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
		t.Fatalf("response headers %v", resp.Header)
	}
	msg := bytes.Repeat([]byte("subprotocol and compression "), 20)
	c.WriteMessage(websocket.TextMessage, msg)
	if _, got, err := c.ReadMessage(); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %v", err)
	}
}

// TestDeflateEchoGorilla echoes messages of every size through gorilla with
// compression on both ways, and checks the server compressed the long ones.
func TestDeflateEchoGorilla(t *testing.T) {
	ts := startServer(t, Options{Compression: CompressionOn, MaxMessageSize: 1 << 20})
	d := websocket.Dialer{EnableCompression: true}
	c, _, err := d.Dial(ts.URL("/echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.EnableWriteCompression(true)
	for _, n := range []int{0, 1, 127, 128, 1000, 70000, 1 << 20} {
		msg := bytes.Repeat([]byte(`{"type":"message","content":"hello"}`), n/36+1)[:n]
		for _, op := range []int{websocket.TextMessage, websocket.BinaryMessage} {
			if err := c.WriteMessage(op, msg); err != nil {
				t.Fatal(err)
			}
			gotOp, got, err := c.ReadMessage()
			if err != nil || gotOp != op || !bytes.Equal(got, msg) {
				t.Fatalf("size %d: op %d, %d bytes, %v", n, gotOp, len(got), err)
			}
		}
	}
	st := ts.Stats()
	if st.DeflateOpen != 1 || st.DeflateMsgsIn == 0 || st.DeflateMsgsOut == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDeflateEchoCoder does the same with coder/websocket, which offers plain
// "permessage-deflate" and follows the server's no context takeover.
func TestDeflateEchoCoder(t *testing.T) {
	ts := startServer(t, Options{Compression: CompressionOn})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := coder.Dial(ctx, ts.URL("/echo"), &coder.DialOptions{CompressionMode: coder.CompressionContextTakeover, CompressionThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if got := resp.Header.Get("Sec-WebSocket-Extensions"); got != "permessage-deflate; server_no_context_takeover; client_no_context_takeover" {
		t.Fatalf("extensions %q", got)
	}
	for i := range 50 {
		msg := []byte(strings.Repeat("coder says hello ", i*10+1))
		if err := c.Write(ctx, coder.MessageText, msg); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if st := ts.Stats(); st.DeflateMsgsIn < 40 || st.DeflateMsgsOut < 40 {
		t.Fatalf("stats %+v", st)
	}
	c.Close(coder.StatusNormalClosure, "")
}

// TestDeflateFrames checks the server's frames byte by byte: RSV1 on the
// compressed ones, which inflate (with the standard library) to the message;
// none on messages under the minimum size, on those that do not compress, or
// on connections that did not negotiate; and a window the peer limited.
func TestDeflateFrames(t *testing.T) {
	ts := startServer(t, Options{Compression: CompressionOn, CompressionMinSize: 256})
	long := bytes.Repeat([]byte("abcdefgh"), 64)
	random := make([]byte, 512)
	rand.Read(random)
	for _, tc := range []struct {
		name       string
		offer      string
		msg        []byte
		compressed bool
	}{
		{"long", "permessage-deflate", long, true},
		{"short", "permessage-deflate", long[:255], false},
		{"at the minimum", "permessage-deflate", long[:256], true},
		{"incompressible", "permessage-deflate", random, false},
		{"window 9", "permessage-deflate; server_max_window_bits=9", long, true},
		{"not negotiated", "x-other", long, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, ts.Addr, "/echo", "Sec-WebSocket-Extensions: "+tc.offer)
			c.send(0x2, tc.msg)
			b0, p := c.readFrameRSV()
			if b0&0x0f != 0x2 || b0&0x80 == 0 || b0&0x30 != 0 {
				t.Fatalf("first byte %#x", b0)
			}
			if got := b0&0x40 != 0; got != tc.compressed {
				t.Fatalf("RSV1 %v, want %v", got, tc.compressed)
			}
			if tc.compressed {
				if len(p) >= len(tc.msg) {
					t.Fatalf("compressed to %d bytes from %d", len(p), len(tc.msg))
				}
				p = inflateRaw(t, p)
			}
			if !bytes.Equal(p, tc.msg) {
				t.Fatalf("got %q", p)
			}
		})
	}
}

// TestDeflateClientFrames sends compressed messages the way clients may:
// single frames, fragments, an empty message, a final deflate block, and
// uncompressed messages between compressed ones.
func TestDeflateClientFrames(t *testing.T) {
	ts := startServer(t, Options{Compression: CompressionOn, MaxMessageSize: 1 << 16})
	c := rawDial(t, ts.Addr, "/echo", "Sec-WebSocket-Extensions: permessage-deflate")
	msg := bytes.Repeat([]byte("fragmented and compressed, "), 100)
	z := deflateRaw(t, msg, flate.BestCompression)
	expect := func(want []byte) {
		t.Helper()
		b0, p := c.readFrameRSV()
		if b0&0x40 != 0 {
			p = inflateRaw(t, p)
		}
		if !bytes.Equal(p, want) {
			t.Fatalf("echo %q, want %q", p, want)
		}
	}
	c.Write(frame(true, 4, 0x1, z, true))
	expect(msg)
	// Fragments: RSV1 on the first only; a ping between them.
	c.Write(frame(false, 4, 0x1, z[:10], true))
	c.Write(frame(false, 0, 0x0, z[10:20], true))
	c.Write(frame(true, 0, 0x9, []byte("ping"), true))
	if b0, p := c.readFrameRSV(); b0&0x0f != 0xa || string(p) != "ping" {
		t.Fatalf("pong %#x %q", b0, p)
	}
	c.Write(frame(true, 0, 0x0, z[20:], true))
	expect(msg)
	// An empty compressed message is one empty stored block, tail removed: 0x00.
	c.Write(frame(true, 4, 0x2, []byte{0x00}, true))
	expect(nil)
	// A message ending in a final block (BFINAL set), as some encoders send.
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.DefaultCompression)
	w.Write(msg)
	w.Close()
	c.Write(frame(true, 4, 0x1, b.Bytes(), true))
	expect(msg)
	c.send(0x1, []byte("plain between"))
	expect([]byte("plain between"))
}

// TestDeflateViolations closes a connection that breaks RFC 7692, with the
// code the RFCs give, and never costs another client its messages.
func TestDeflateViolations(t *testing.T) {
	ts := startServer(t, Options{Compression: CompressionOn, MaxMessageSize: 1 << 16})
	bystander := rawDial(t, ts.Addr, "/echo", "Sec-WebSocket-Extensions: permessage-deflate")
	notUTF8 := deflateRaw(t, []byte{'a', 0xff, 0xfe, 'b'}, flate.BestSpeed)
	for _, tc := range []struct {
		name  string
		offer string
		send  [][]byte
		code  int
	}{
		{"RSV1 without the extension", "", [][]byte{frame(true, 4, 0x1, deflateRaw(t, []byte("hi"), 1), true)}, 1002},
		{"RSV1 on a continuation", "permessage-deflate", [][]byte{frame(false, 0, 0x1, []byte("a"), true), frame(true, 4, 0x0, []byte("b"), true)}, 1002},
		{"RSV1 on a ping", "permessage-deflate", [][]byte{frame(true, 4, 0x9, nil, true)}, 1002},
		{"RSV2", "permessage-deflate", [][]byte{frame(true, 2, 0x1, []byte("a"), true)}, 1002},
		{"not deflate", "permessage-deflate", [][]byte{frame(true, 4, 0x1, []byte{0xff, 0xff, 0xff, 0xff, 0xff}, true)}, 1007},
		{"inflates to invalid UTF-8", "permessage-deflate", [][]byte{frame(true, 4, 0x1, notUTF8, true)}, 1007},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c *rawConn
			if tc.offer == "" {
				c = rawDial(t, ts.Addr, "/echo")
			} else {
				c = rawDial(t, ts.Addr, "/echo", "Sec-WebSocket-Extensions: "+tc.offer)
			}
			for _, f := range tc.send {
				c.Write(f)
			}
			c.expectClose(tc.code)
			bystander.send(0x1, []byte("still here"))
			if _, p := bystander.readFrameRSV(); string(p) != "still here" {
				t.Fatalf("bystander got %q", p)
			}
		})
	}
}

// TestDeflateBomb closes a message whose inflated size passes MaxMessageSize
// with 1009, while its compressed size is small; a message inflating to
// exactly the limit passes.
func TestDeflateBomb(t *testing.T) {
	const limit = 1 << 16
	ts := startServer(t, Options{Compression: CompressionOn, MaxMessageSize: limit})
	exact := bytes.Repeat([]byte{'a'}, limit)
	c := rawDial(t, ts.Addr, "/echo", "Sec-WebSocket-Extensions: permessage-deflate")
	c.Write(frame(true, 4, 0x2, deflateRaw(t, exact, flate.BestCompression), true))
	if b0, p := c.readFrameRSV(); b0&0x40 == 0 || !bytes.Equal(inflateRaw(t, p), exact) {
		t.Fatal("a message of exactly the limit did not come back")
	}
	for _, tc := range []struct {
		name string
		size int
		frag bool
	}{
		{"one byte over", limit + 1, false},
		{"64 MiB", 64 << 20, false},
		{"fragmented", 64 << 20, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			w, _ := flate.NewWriter(&b, flate.BestCompression)
			zero := make([]byte, 1<<20)
			for left := tc.size; left > 0; left -= len(zero) {
				w.Write(zero[:min(left, len(zero))])
			}
			w.Flush()
			z := b.Bytes()[:b.Len()-4]
			if tc.size > limit*100 && len(z) > maxCompressedSize(limit) {
				t.Fatalf("the bomb is %d bytes compressed", len(z))
			}
			c := rawDial(t, ts.Addr, "/echo", "Sec-WebSocket-Extensions: permessage-deflate")
			start := time.Now()
			if tc.frag {
				half := len(z) / 2
				c.Write(frame(false, 4, 0x2, z[:half], true))
				c.Write(frame(true, 0, 0x0, z[half:], true))
			} else {
				c.Write(frame(true, 4, 0x2, z, true))
			}
			c.expectClose(1009)
			t.Logf("%d bytes compressed, %d inflated: closed in %v", len(z), tc.size, time.Since(start))
		})
	}
}

// TestInflateStopsAtLimit checks the inflater reads no further into a bomb
// than the limit needs, and keeps no reference to the message after.
func TestInflateStopsAtLimit(t *testing.T) {
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestSpeed) // many small blocks
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	for range 256 { // 16 MiB
		w.Write(chunk)
		w.Flush()
	}
	src := b.Bytes()[:b.Len()-4]
	var z wsframe.Inflater
	out, err := z.Inflate(nil, src, 1<<16)
	if err != wsframe.ErrInflateLimit {
		t.Fatalf("inflate: %v", err)
	}
	if z.Consumed > len(src)/16 {
		t.Fatalf("read %d of %d compressed bytes for a 64 KiB limit", z.Consumed, len(src))
	}
	if len(out) > 1<<16+1 || cap(out) > 1<<18 {
		t.Fatalf("output %d bytes, capacity %d", len(out), cap(out))
	}
}

// TestDeflateSizeCheckBeforeInflate refuses a compressed frame longer than the
// bound on compressed bytes before reading it.
func TestDeflateSizeCheckBeforeInflate(t *testing.T) {
	ts := startServer(t, Options{Compression: CompressionOn, MaxMessageSize: 1000})
	c := rawDial(t, ts.Addr, "/echo", "Sec-WebSocket-Extensions: permessage-deflate")
	// Only the header: a length past maxCompressedSize(1000).
	h := []byte{0x80 | 0x40 | 0x2, 0x80 | 126, 0, 0, 1, 2, 3, 4}
	binary.BigEndian.PutUint16(h[2:], uint16(maxCompressedSize(1000)+1))
	c.Write(h)
	c.expectClose(1009)
}

// TestDeflateNoIdleState: negotiating compression adds nothing to an idle
// connection: the Conn keeps one byte of it, in its existing size class
// (112 bytes with the poller's part: TestConnSize).
func TestDeflateNoIdleState(t *testing.T) {
	if n := unsafe.Sizeof(Conn{}); n > 112 {
		t.Fatalf("server.Conn is %d bytes, over its 112-byte size class", n)
	}
}
