package server

import (
	"testing"
	"time"
)

type sweepHandler struct {
	echoHandler
	swept chan time.Time
}

func (h *sweepHandler) Sweep(now time.Time) {
	select {
	case h.swept <- now:
	default:
	}
}

// TestSweeperCalled: a handler that is a Sweeper is swept by the monitor once
// the server listens.
func TestSweeperCalled(t *testing.T) {
	h := &sweepHandler{swept: make(chan time.Time, 1)}
	s, err := New(Options{MemoryInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Handle("/s", h); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.swept:
	case <-time.After(10 * time.Second):
		t.Fatal("Sweep not called")
	}
}
