package server

import (
	"bytes"
	"io"
	"testing"

	"github.com/throng-ws/throng/poller"
)

// TestEchoPathNoAlloc proves the read → parse → unmask → echo path allocates
// nothing per frame: the loop reads into its shared buffer, unmasks in place and
// writes header and payload with one writev.
func TestEchoPathNoAlloc(t *testing.T) {
	if testBackend != poller.BackendEpoll {
		t.Skip("the zero-allocation path is the epoll backend's; netpoll flushes through its own buffers")
	}
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("allocation counts are not meaningful under -race or -cover")
	}
	ts := startServer(t, Options{Loops: 1})
	c := rawDial(t, ts.Addr, "/echo")
	payload := []byte("the quick brown fox jumps over the lazy dog, twice over")
	out := frame(true, 0, 0x2, payload, true)
	in := make([]byte, 2+len(payload))
	roundTrip := func() {
		if _, err := c.Write(out); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c.br, in); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 { // warm the pools and the loop
		roundTrip()
	}
	if string(in[2:]) != string(payload) {
		t.Fatalf("echo payload %q", in[2:])
	}
	// AllocsPerRun counts the whole process, the server's loop included.
	if n := testing.AllocsPerRun(1000, roundTrip); n != 0 {
		t.Fatalf("%.2f allocations per echoed frame, want 0", n)
	}
}

// TestDeflateEchoPathNoAlloc is TestEchoPathNoAlloc under permessage-deflate:
// the loop's inflater, a pooled compressor and pooled buffers serve each
// compressed message, so inflating and compressing allocate nothing either.
func TestDeflateEchoPathNoAlloc(t *testing.T) {
	if testBackend != poller.BackendEpoll {
		t.Skip("the zero-allocation path is the epoll backend's; netpoll flushes through its own buffers")
	}
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("allocation counts are not meaningful under -race or -cover")
	}
	ts := startServer(t, Options{Loops: 1, Compression: CompressionOn})
	c := rawDial(t, ts.Addr, "/echo", "Sec-WebSocket-Extensions: permessage-deflate")
	payload := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog, "), 20)
	out := frame(true, 4, 0x2, deflateRaw(t, payload, 6), true)
	var b0 byte
	in := make([]byte, 0, 125)
	roundTrip := func() { b0, in = c.readFrameAfter(out, in) }
	for range 100 {
		roundTrip()
	}
	if b0&0x40 == 0 || !bytes.Equal(inflateRaw(t, in), payload) {
		t.Fatalf("echo: first byte %#x, %d bytes", b0, len(in))
	}
	if n := testing.AllocsPerRun(1000, roundTrip); n != 0 {
		t.Fatalf("%.2f allocations per compressed echo, want 0", n)
	}
}

// readFrameAfter writes out and reads one server frame of under 126 bytes
// into buf, which must have room for it.
func (c *rawConn) readFrameAfter(out, buf []byte) (byte, []byte) {
	if _, err := c.Write(out); err != nil {
		c.t.Fatal(err)
	}
	b0, err0 := c.br.ReadByte()
	n, err1 := c.br.ReadByte()
	if err0 != nil || err1 != nil || n >= 126 {
		c.t.Fatalf("frame header %#x %#x: %v %v", b0, n, err0, err1)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(c.br, buf); err != nil {
		c.t.Fatal(err)
	}
	return b0, buf
}
