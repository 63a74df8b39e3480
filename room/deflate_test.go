package room

import (
	"fmt"
	"sync"
	"testing"

	"github.com/throng-ws/throng/poller"
)

// TestBroadcastDeflated sends members with Deflate the compressed frame and
// the others the plain one, each the one shared frame; keeps Deflaters in
// step with joins and leaves; and sends the plain frame to everyone when
// there is no compressed one.
func TestBroadcastDeflated(t *testing.T) {
	loops := startLoops(t, 2)
	tab := New(loops, Options{})
	var plainSinks, zSinks []*recSink
	var members []*Member
	for i := range 6 {
		m, s := newMember(fmt.Sprint("m", i))
		m.Deflate = i%2 == 0
		if m.Deflate {
			zSinks = append(zSinks, s)
		} else {
			plainSinks = append(plainSinks, s)
		}
		members = append(members, m)
		join(t, tab, loops[i%2], "r", m)
	}
	if n := tab.Deflaters("r"); n != 3 {
		t.Fatalf("Deflaters %d, want 3", n)
	}
	if n := tab.Deflaters("nowhere"); n != 0 {
		t.Fatalf("Deflaters of no room: %d", n)
	}
	send := func(plain, z string) {
		t.Helper()
		f := frameOf(plain)
		var zf *poller.Frame
		if z != "" {
			zf = frameOf(z)
		}
		done := make(chan int, 1)
		if n := tab.BroadcastDeflated("r", f, zf, nil, func(n int) { done <- n }); n != 6 {
			t.Fatalf("went to %d", n)
		}
		f.Release()
		if zf != nil {
			zf.Release()
		}
		<-done
	}
	send("plain-1", "deflated-1")
	send("plain-2", "")
	for _, s := range zSinks {
		if got := s.got(); len(got) != 2 || got[0] != "deflated-1" || got[1] != "plain-2" {
			t.Fatalf("deflate member %s got %q", s.name, got)
		}
	}
	for _, s := range plainSinks {
		if got := s.got(); len(got) != 2 || got[0] != "plain-1" || got[1] != "plain-2" {
			t.Fatalf("plain member %s got %q", s.name, got)
		}
	}
	leave(t, tab, members[0])
	leave(t, tab, members[1])
	if n := tab.Deflaters("r"); n != 2 {
		t.Fatalf("Deflaters %d after a deflate member left, want 2", n)
	}
}

// TestBroadcastDeflatedNoAllocPerRecipient is TestBroadcastNoAllocPerRecipient
// with both encodings: half the members take the compressed frame, and
// still nothing is allocated per broadcast, each encoding being shared.
func TestBroadcastDeflatedNoAllocPerRecipient(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	for _, members := range []int{10, 1000, 10000} {
		t.Run(fmt.Sprintf("members=%d", members), func(t *testing.T) {
			p, err := poller.New(nopHandler{}, poller.Options{Loops: 2})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Close() })
			tab := New(p.Loops(), Options{})
			plain, z := new(countSink), new(countSink)
			var wg sync.WaitGroup
			for i := range members {
				l := p.Loops()[i%2]
				wg.Add(1)
				l.Post(poller.FuncJob(func() {
					defer wg.Done()
					m := &Member{Sink: plain}
					if i%4 < 2 {
						m.Sink, m.Deflate = z, true
					}
					tab.Join(l.Index(), "r", m)
				}))
			}
			wg.Wait()
			done := make(chan int, 1)
			cb := func(n int) { done <- n }
			run := func() {
				f, zf := poller.NewFrame(), poller.NewFrame()
				f.Buffer().B = append(f.Buffer().B, "plain"...)
				zf.Buffer().B = append(zf.Buffer().B, "deflated"...)
				plain.want.Store(f)
				z.want.Store(zf)
				tab.BroadcastDeflated("r", f, zf, nil, cb)
				f.Release()
				zf.Release()
				<-done
			}
			for range 50 {
				run()
			}
			allocs := testing.AllocsPerRun(200, run)
			if plain.bad.Load() != 0 || z.bad.Load() != 0 {
				t.Fatalf("wrong frames: %d plain, %d deflated", plain.bad.Load(), z.bad.Load())
			}
			deflaters := int64(tab.Deflaters("r"))
			if got := plain.n.Load() + z.n.Load(); got != int64(251*members) || z.n.Load() != 251*deflaters || deflaters == 0 {
				t.Fatalf("%d deliveries, %d compressed", got, z.n.Load())
			}
			if allocs != 0 {
				t.Fatalf("%.2f allocations per broadcast to %d members, want 0", allocs, members)
			}
		})
	}
}
