package room

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/throng-ws/throng/poller"
)

// TestChunkedBroadcastOrder broadcasts from several goroutines to a room
// with more members per loop than a chunk, written over several turns, and to
// a small one written at once, and checks every member of each got its room's
// frames exactly once, in one order, each sender's in the order sent.
func TestChunkedBroadcastOrder(t *testing.T) {
	loops := startLoops(t, 4)
	tab := New(loops, Options{Chunk: 3})
	sinks := map[string][]*recSink{}
	for _, r := range []struct {
		id string
		n  int
	}{{"big", 40}, {"small", 8}} {
		for i := range r.n {
			m, s := newMember(fmt.Sprint(r.id, i))
			if _, err := join(t, tab, loops[i%len(loops)], r.id, m); err != nil {
				t.Fatal(err)
			}
			sinks[r.id] = append(sinks[r.id], s)
		}
	}
	const senders, each = 4, 150
	var wg, pending sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				id := "big"
				if (s+i)%3 == 0 {
					id = "small"
				}
				pending.Add(1)
				f := frameOf(fmt.Sprint(id, " ", s, "-", i))
				tab.Broadcast(id, f, nil, func(int) { pending.Done() })
				f.Release()
			}
		})
	}
	wg.Wait()
	pending.Wait()
	total := 0
	for id, ss := range sinks {
		first := ss[0].got()
		total += len(first)
		for i, s := range ss[1:] {
			if got := s.got(); !slices.Equal(got, first) {
				t.Fatalf("room %s: member %d saw another order than member 0 (%d frames, %d)", id, i+1, len(got), len(first))
			}
		}
		next := make([]int, senders)
		for _, m := range first {
			var r string
			var s, i int
			if _, err := fmt.Sscanf(m, "%s %d-%d", &r, &s, &i); err != nil || r != id {
				t.Fatalf("room %s got %q", id, m)
			}
			if i <= next[s]-1 {
				t.Fatalf("room %s: sender %d's frame %d came again or after %d", id, s, i, next[s]-1)
			}
			next[s] = i + 1
		}
	}
	if total != senders*each {
		t.Fatalf("the rooms got %d frames in all, want %d", total, senders*each)
	}
}

// TestChunkedLeaveAndJoinBetweenTurns has members leave, rejoin and join
// while a broadcast is written over several turns: from inside a delivery,
// and from a job that runs between two turns. A member that left before its
// turn must not get the frame, nobody may get it twice (a leave moves the last
// member into the leaver's slot), a member who stayed gets it once, and
// whoever joined or came back after it was made does not get it.
func TestChunkedLeaveAndJoinBetweenTurns(t *testing.T) {
	loops := startLoops(t, 1)
	l := loops[0]
	tab := New(loops, Options{Chunk: 2})
	const n = 30
	ms := make([]*Member, n)
	sinks := make([]*recSink, n)
	for i := range ms {
		ms[i], sinks[i] = newMember(fmt.Sprint(i))
		join(t, tab, l, "r", ms[i])
	}
	unserved := func() []int {
		var out []int
		for i, s := range sinks {
			if ms[i].Room() != "" && len(s.got()) == 0 {
				out = append(out, i)
			}
		}
		return out
	}
	late, sLate := newMember("late")
	gone := map[int]bool{} // left before the frame reached them
	var once sync.Once
	hook := func() {
		once.Do(func() {
			// Inside the first delivery: four members not yet written leave.
			for _, i := range unserved()[:4] {
				tab.Leave(ms[i])
				gone[i] = true
			}
			// Between the first turn and the second: four more leave, one of
			// the first four comes back, and a new member joins.
			l.Post(poller.FuncJob(func() {
				for _, i := range unserved()[:4] {
					tab.Leave(ms[i])
					gone[i] = true
				}
				for i := range gone {
					if _, err := tab.Join(0, "r", ms[i]); err != nil {
						t.Error(err)
					}
					break
				}
				if _, err := tab.Join(0, "r", late); err != nil {
					t.Error(err)
				}
			}))
		})
	}
	for _, s := range sinks {
		s.onDeliver = hook
	}
	broadcast(t, tab, "r", "first", nil)
	for i, s := range sinks {
		want := []string{"first"}
		if gone[i] {
			want = nil
		}
		if got := s.got(); !slices.Equal(got, want) {
			t.Fatalf("member %d (left before its turn: %v) got %q, want %q", i, gone[i], got, want)
		}
	}
	if got := sLate.got(); len(got) != 0 {
		t.Fatalf("a member who joined during the broadcast got %q", got)
	}
	// The next broadcast reaches exactly who is in the room now.
	_, done := broadcast(t, tab, "r", "second", nil)
	members := 0
	for i, s := range sinks {
		in := ms[i].Room() != ""
		if in {
			members++
		}
		if got := s.got(); slices.Contains(got, "second") != in {
			t.Fatalf("member %d (in the room: %v) got %q", i, in, got)
		}
	}
	if got := sLate.got(); !slices.Equal(got, []string{"second"}) {
		t.Fatalf("the late member got %q", got)
	}
	if want := members + 1; done != want || tab.Count("r") != want {
		t.Fatalf("done(%d), Count %d, want %d", done, tab.Count("r"), want)
	}
}

// TestChunkedStopFinishes closes the loops while broadcasts written over
// several turns are still queued: each is still written to every member, in
// order, and its done called, as a job run by a stopping loop is.
func TestChunkedStopFinishes(t *testing.T) {
	p, err := poller.New(idleHandler{}, poller.Options{Loops: 2})
	if err != nil {
		t.Fatal(err)
	}
	loops := p.Loops()
	tab := New(loops, Options{Chunk: 1})
	const n, sent = 20, 30
	sinks := make([]*recSink, n)
	for i := range sinks {
		var m *Member
		m, sinks[i] = newMember(fmt.Sprint(i))
		join(t, tab, loops[i%2], "r", m)
	}
	var done sync.WaitGroup
	want := make([]string, sent)
	for i := range sent {
		want[i] = fmt.Sprint(i)
		done.Add(1)
		f := frameOf(want[i])
		tab.Broadcast("r", f, nil, func(int) { done.Done() })
		f.Release()
	}
	p.Close()
	done.Wait()
	for i, s := range sinks {
		if got := s.got(); !slices.Equal(got, want) {
			t.Fatalf("member %d got %q, want %q", i, got, want)
		}
	}
}

// TestChunkedOrderWhenRoomShrinks makes a room small enough to be written at
// once while a broadcast to it is still written over turns: the next
// broadcast must wait behind it, or a member not yet written would get the
// second frame before the first.
func TestChunkedOrderWhenRoomShrinks(t *testing.T) {
	loops := startLoops(t, 1)
	l := loops[0]
	tab := New(loops, Options{Chunk: 2})
	ms := make([]*Member, 4)
	sinks := make([]*recSink, 4)
	for i := range ms {
		ms[i], sinks[i] = newMember(fmt.Sprint(i))
		join(t, tab, l, "r", ms[i])
	}
	var once sync.Once
	for k, s := range sinks {
		s.onDeliver = func() {
			// The first member written: the two written after it leave
			// (members are visited in list order from a rotating start), so
			// the room fits a chunk while the last is not written yet.
			once.Do(func() {
				tab.Leave(ms[(k+1)%4])
				tab.Leave(ms[(k+2)%4])
			})
		}
	}
	var done sync.WaitGroup
	done.Add(2)
	onLoop(t, l, func() {
		for _, msg := range []string{"A", "B"} {
			f := frameOf(msg)
			tab.Broadcast("r", f, nil, func(int) { done.Done() })
			f.Release()
		}
	})
	done.Wait()
	for i, s := range sinks {
		got := s.got()
		if ms[i].Room() == "" {
			continue
		}
		if !slices.Equal(got, []string{"A", "B"}) {
			t.Fatalf("member %d got %q, want A then B", i, got)
		}
	}
}

// framesSink is a recSink that also takes several frames at once, and counts
// how often it did.
type framesSink struct {
	recSink
	batches atomic.Int64
}

func (s *framesSink) DeliverFrames(fs []*poller.Frame) {
	s.batches.Add(1)
	for _, f := range fs {
		s.recSink.Deliver(f)
	}
}

// TestChunkedGroupsWaitingBroadcasts queues broadcasts to one room behind one
// being written over turns: they are written together, each member getting
// them in one DeliverFrames, in order, and an excepted member only the rest.
func TestChunkedGroupsWaitingBroadcasts(t *testing.T) {
	loops := startLoops(t, 1)
	l := loops[0]
	tab := New(loops, Options{Chunk: 2})
	const n = 6
	sinks := make([]*framesSink, n)
	for i := range sinks {
		sinks[i] = &framesSink{recSink: recSink{name: fmt.Sprint(i)}}
		join(t, tab, l, "r", &Member{Sink: sinks[i], Name: fmt.Sprint(i)})
	}
	var done sync.WaitGroup
	done.Add(4)
	onLoop(t, l, func() {
		for i, msg := range []string{"A", "B", "C", "D"} {
			var except Sink
			if i == 1 {
				except = sinks[0] // member 0 is left out of B
			}
			f := frameOf(msg)
			tab.Broadcast("r", f, except, func(int) { done.Done() })
			f.Release()
		}
	})
	done.Wait()
	for i, s := range sinks {
		want := []string{"A", "B", "C", "D"}
		if i == 0 {
			want = []string{"A", "C", "D"}
		}
		if got := s.got(); !slices.Equal(got, want) {
			t.Fatalf("member %d got %q, want %q", i, got, want)
		}
		// A was begun alone; B, C and D waited behind it and went out together.
		if b := s.batches.Load(); b != 1 {
			t.Fatalf("member %d took %d batches, want 1 (B, C and D together)", i, b)
		}
	}
}
