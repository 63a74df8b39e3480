package server

import (
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
