package room

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/throng-ws/throng/poller"
)

// nopHandler is a poller handler for loops that carry only posted jobs.
type nopHandler struct{}

func (nopHandler) OnOpen(*poller.Conn)             {}
func (nopHandler) OnData(*poller.Conn, []byte) int { return 0 }
func (nopHandler) OnWritable(*poller.Conn)         {}
func (nopHandler) OnClose(*poller.Conn, error)     {}
func (nopHandler) OnTick(*poller.Loop, time.Time)  {}

// countSink counts deliveries and checks each frame is the one broadcast.
type countSink struct {
	n    atomic.Int64
	want atomic.Pointer[poller.Frame]
	bad  atomic.Int64
}

func (s *countSink) Deliver(f *poller.Frame) {
	if f != s.want.Load() {
		s.bad.Add(1)
	}
	s.n.Add(1)
}

// fill starts loops and joins members spread evenly over them, each join on its
// own loop as the table requires.
func fill(tb testing.TB, loops, members int) (*Table, *poller.Poller, *countSink) {
	tb.Helper()
	p, err := poller.New(nopHandler{}, poller.Options{Loops: loops})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	t := New(p.Loops(), Options{})
	sink := new(countSink)
	var wg sync.WaitGroup
	for i := range members {
		l := p.Loops()[i%loops]
		wg.Add(1)
		l.Post(poller.FuncJob(func() {
			defer wg.Done()
			if _, err := t.Join(l.Index(), "r", &Member{Sink: sink}); err != nil {
				tb.Error(err)
			}
		}))
	}
	wg.Wait()
	return t, p, sink
}

// broadcastAndWait fans one frame out and waits for the last loop to finish.
func broadcastAndWait(t *Table, sink *countSink, done chan int, cb func(int)) {
	f := poller.NewFrame()
	f.Buffer().B = append(f.Buffer().B, "frame"...)
	sink.want.Store(f)
	t.Broadcast("r", f, nil, cb)
	f.Release()
	<-done
}

// TestBroadcastNoAllocPerRecipient proves a broadcast allocates nothing at all
// once pools are warm, whatever the room's size: the frame, the per-loop jobs
// and the completion counter are pooled, and members share the frame.
func TestBroadcastNoAllocPerRecipient(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	for _, members := range []int{10, 1000, 10000} {
		t.Run(fmt.Sprintf("members=%d", members), func(t *testing.T) {
			tab, _, sink := fill(t, 2, members)
			done := make(chan int, 1)
			cb := func(n int) { done <- n }
			for range 50 {
				broadcastAndWait(tab, sink, done, cb)
			}
			before := sink.n.Load()
			allocs := testing.AllocsPerRun(200, func() { broadcastAndWait(tab, sink, done, cb) })
			if got, want := sink.n.Load()-before, int64(201*members); got != want {
				t.Fatalf("%d deliveries, want %d", got, want)
			}
			if sink.bad.Load() != 0 {
				t.Fatalf("%d deliveries of the wrong frame", sink.bad.Load())
			}
			if allocs != 0 {
				t.Fatalf("%.2f allocations per broadcast to %d members, want 0", allocs, members)
			}
		})
	}
}

// BenchmarkFanOut measures the table's fan-out to members on two loops; it
// excludes sockets (see server's BenchmarkChatFanOut for the whole path).
func BenchmarkFanOut(b *testing.B) {
	for _, members := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			tab, _, sink := fill(b, 2, members)
			done := make(chan int, 1)
			cb := func(n int) { done <- n }
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				broadcastAndWait(tab, sink, done, cb)
			}
			b.ReportMetric(float64(b.N)*float64(members)/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}
