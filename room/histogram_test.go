package room

import (
	"testing"
	"time"

	"github.com/throng-ws/throng/poller"
)

func TestHistogramBuckets(t *testing.T) {
	h := newHistogram([]uint64{1, 10, 100})
	for _, v := range []uint64{0, 1, 2, 10, 11, 100, 101, 5000} {
		h.observe(v)
	}
	s := h.snapshot(1)
	want := []uint64{2, 2, 2, 2} // (..1] (1..10] (10..100] (100..]
	for i, n := range want {
		if s.Counts[i] != n {
			t.Errorf("bucket %d: %d, want %d (all: %v)", i, s.Counts[i], n, s.Counts)
		}
	}
	if s.Count != 8 || s.Sum != 5225 {
		t.Errorf("count %d sum %v, want 8 and 5225", s.Count, s.Sum)
	}
	cum := s.Cumulative()
	if cum[1] != 2 || cum[10] != 4 || cum[100] != 6 || len(cum) != 3 {
		t.Errorf("cumulative %v", cum)
	}
	if d := newHistogram(durationBounds).snapshot(1e-9).Bounds; d[0] != 10e-6 || d[len(d)-1] != 10 {
		t.Errorf("duration bounds %v, want 10µs to 10s", d)
	}
}

// TestBroadcastRecorded checks every broadcast to a room lands in the
// histograms, with or without a done callback, and one to no room does not.
func TestBroadcastRecorded(t *testing.T) {
	tab, _, sink := fill(t, 2, 10)
	done := make(chan int, 1)
	broadcastAndWait(tab, sink, done, func(n int) { done <- n })
	f := poller.NewFrame()
	tab.Broadcast("r", f, nil, nil)
	tab.Broadcast("no such room", f, nil, nil)
	f.Release()
	deadline := time.Now().Add(5 * time.Second)
	for tab.BroadcastStats().Recipients.Count < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("broadcast stats %+v, want two broadcasts", tab.BroadcastStats())
		}
		time.Sleep(time.Millisecond)
	}
	bs := tab.BroadcastStats()
	if bs.Recipients.Count != 2 || bs.Recipients.Sum != 20 || bs.Duration.Count != 2 || bs.Duration.Sum <= 0 {
		t.Errorf("broadcast stats %+v, want two broadcasts to 10 members", bs)
	}
	if n := bs.Recipients.Cumulative()[10]; n != 2 {
		t.Errorf("%d broadcasts at or under 10 recipients, want 2", n)
	}
}
