package room

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/goleak"

	"github.com/throng-ws/throng/poller"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// idleHandler is a poller handler for loops that only run posted jobs.
type idleHandler struct{}

func (idleHandler) OnOpen(*poller.Conn)             {}
func (idleHandler) OnData(*poller.Conn, []byte) int { return 0 }
func (idleHandler) OnWritable(*poller.Conn)         {}
func (idleHandler) OnClose(*poller.Conn, error)     {}
func (idleHandler) OnTick(*poller.Loop, time.Time)  {}

// startLoops starts n real event loops, stopped when the test ends.
func startLoops(t testing.TB, n int) []*poller.Loop {
	t.Helper()
	p, err := poller.New(idleHandler{}, poller.Options{Loops: n})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p.Loops()
}

// onLoop runs fn on l's goroutine, where the table wants joins and leaves, and
// waits for it.
func onLoop(t testing.TB, l *poller.Loop, fn func()) {
	t.Helper()
	done := make(chan struct{})
	if !l.Post(poller.FuncJob(func() { defer close(done); fn() })) {
		t.Fatal("loop stopped")
	}
	<-done
}

// recSink records the frames delivered to one member. Deliver runs on the
// member's loop; the test reads through got.
type recSink struct {
	name string
	mu   sync.Mutex
	msgs []string // guarded by mu
	// onDeliver, if set, runs inside Deliver, on the loop.
	onDeliver func()
}

func (s *recSink) Deliver(f *poller.Frame) {
	s.mu.Lock()
	s.msgs = append(s.msgs, string(f.Bytes()))
	s.mu.Unlock()
	if s.onDeliver != nil {
		s.onDeliver()
	}
}

// UserID implements UserSink.
func (s *recSink) UserID() string { return "id-" + s.name }

func (s *recSink) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

func newMember(name string) (*Member, *recSink) {
	s := &recSink{name: name}
	return &Member{Sink: s, Name: name}, s
}

func frameOf(s string) *poller.Frame {
	f := poller.NewFrame()
	f.Buffer().B = append(f.Buffer().B, s...)
	return f
}

// broadcast sends msg to room id and waits for every delivery; it returns the
// count Broadcast returned and the one done was called with.
func broadcast(t testing.TB, tab *Table, id, msg string, except Sink) (returned, done int) {
	t.Helper()
	ch := make(chan int, 2)
	f := frameOf(msg)
	returned = tab.Broadcast(id, f, except, func(n int) { ch <- n })
	f.Release()
	select {
	case done = <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("done was not called")
	}
	select {
	case n := <-ch:
		t.Fatalf("done called twice (again with %d)", n)
	case <-time.After(time.Millisecond):
	}
	return returned, done
}

func join(t testing.TB, tab *Table, l *poller.Loop, id string, m *Member) (n int, err error) {
	t.Helper()
	onLoop(t, l, func() { n, err = tab.Join(l.Index(), id, m) })
	return n, err
}

func leave(t testing.TB, tab *Table, m *Member) (n int) {
	t.Helper()
	onLoop(t, memberLoop(tab, m), func() { n = tab.Leave(m) })
	return n
}

// memberLoop is the loop m joined on (loop 0 if it never joined).
func memberLoop(tab *Table, m *Member) *poller.Loop {
	return tab.loops[m.loop]
}

func TestNewRoundsShards(t *testing.T) {
	loops := startLoops(t, 1)
	for _, tc := range []struct{ in, want int }{{0, DefaultShards}, {-3, DefaultShards}, {1, 1}, {2, 2}, {5, 8}, {64, 64}, {65, 128}} {
		tab := New(loops, Options{Shards: tc.in})
		if len(tab.shards) != tc.want || tab.mask != uint64(tc.want-1) {
			t.Errorf("Shards %d: %d shards, mask %#x; want %d", tc.in, len(tab.shards), tab.mask, tc.want)
		}
	}
}

func TestJoinLeaveCounts(t *testing.T) {
	loops := startLoops(t, 2)
	tab := New(loops, Options{Shards: 4})
	a, _ := newMember("a")
	b, _ := newMember("b")
	c, _ := newMember("c")
	if a.Room() != "" {
		t.Fatalf("Room() = %q before joining", a.Room())
	}
	for i, step := range []struct {
		m    *Member
		loop int
	}{{a, 0}, {b, 1}, {c, 0}} {
		n, err := join(t, tab, loops[step.loop], "r", step.m)
		if err != nil || n != i+1 {
			t.Fatalf("join %d: %d, %v; want %d", i, n, err, i+1)
		}
		if step.m.Room() != "r" {
			t.Fatalf("Room() = %q", step.m.Room())
		}
	}
	if n := tab.Count("r"); n != 3 {
		t.Fatalf("Count = %d", n)
	}
	if st := tab.Stats(); st != (Stats{Rooms: 1, Members: 3}) {
		t.Fatalf("Stats = %+v", st)
	}
	// Another room on the table is counted apart.
	d, _ := newMember("d")
	join(t, tab, loops[1], "s", d)
	if st := tab.Stats(); st != (Stats{Rooms: 2, Members: 4}) {
		t.Fatalf("Stats = %+v", st)
	}

	for i, m := range []*Member{b, a} {
		if n := leave(t, tab, m); n != 2-i {
			t.Fatalf("leave %s: %d, want %d", m.Name, n, 2-i)
		}
		if m.Room() != "" {
			t.Fatalf("Room() = %q after leaving", m.Room())
		}
	}
	if n := tab.Count("r"); n != 1 {
		t.Fatalf("Count = %d", n)
	}
	// Leaving when not a member changes nothing.
	if n := tab.Leave(a); n != 0 {
		t.Fatalf("second Leave = %d", n)
	}
	if n := leave(t, tab, c); n != 0 {
		t.Fatalf("last leave: %d", n)
	}
	// The emptied room is gone.
	if n := tab.Count("r"); n != 0 {
		t.Fatalf("Count = %d", n)
	}
	if _, ok := tab.Members("r"); ok {
		t.Fatal("Members found the emptied room")
	}
	if l := tab.List("", 0); len(l) != 1 || l[0] != (Info{ID: "s", Members: 1}) {
		t.Fatalf("List = %+v, want only s", l)
	}
	if r, _ := broadcast(t, tab, "r", "x", nil); r != 0 {
		t.Fatalf("broadcast to the emptied room reached %d", r)
	}
	// A room of the same name can be made again, from scratch.
	if n, err := join(t, tab, loops[1], "r", a); n != 1 || err != nil {
		t.Fatalf("rejoin: %d, %v", n, err)
	}
}

// TestLeaveKeepsOthers removes members from every position of one loop's list,
// in many orders, and checks the ones left are exactly the ones broadcasts
// reach, with their positions consistent.
func TestLeaveKeepsOthers(t *testing.T) {
	loops := startLoops(t, 1)
	const n = 8
	orders := [][]int{
		{0, 1, 2, 3, 4, 5, 6, 7},
		{7, 6, 5, 4, 3, 2, 1, 0},
		{3, 0, 7, 4, 1, 6, 2, 5},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		orders = append(orders, rng.Perm(n))
	}
	for _, order := range orders {
		t.Run(fmt.Sprint(order), func(t *testing.T) {
			tab := New(loops, Options{})
			ms := make([]*Member, n)
			sinks := make([]*recSink, n)
			for i := range ms {
				ms[i], sinks[i] = newMember(fmt.Sprint(i))
				join(t, tab, loops[0], "r", ms[i])
			}
			in := map[int]bool{}
			for i := range n {
				in[i] = true
			}
			for step, gone := range order {
				if left := leave(t, tab, ms[gone]); left != n-1-step {
					t.Fatalf("Leave = %d, want %d", left, n-1-step)
				}
				delete(in, gone)
				msg := fmt.Sprint("after ", gone)
				if r, d := broadcast(t, tab, "r", msg, nil); r != len(in) || d != len(in) {
					t.Fatalf("broadcast to %d members: returned %d, done %d", len(in), r, d)
				}
				for i, s := range sinks {
					got := s.got()
					has := len(got) > 0 && got[len(got)-1] == msg
					if has != in[i] {
						t.Fatalf("after %d left, member %d got %v, want it iff still in", gone, i, got)
					}
				}
				onLoop(t, loops[0], func() {
					if step == n-1 {
						return // the room is gone
					}
					p := &ms[order[n-1]].room.parts[0]
					for i, m := range p.members {
						if int(m.idx) != i || !in[slices.Index(ms, m)] {
							t.Errorf("members[%d] is %s with idx %d", i, m.Name, m.idx)
						}
					}
				})
			}
		})
	}
}

func TestMaxMembers(t *testing.T) {
	loops := startLoops(t, 2)
	tab := New(loops, Options{MaxMembers: 2})
	a, _ := newMember("a")
	b, _ := newMember("b")
	c, sc := newMember("c")
	join(t, tab, loops[0], "r", a)
	join(t, tab, loops[1], "r", b)
	n, err := join(t, tab, loops[0], "r", c)
	if !errors.Is(err, ErrRoomFull) || n != 2 {
		t.Fatalf("third join: %d, %v; want 2, ErrRoomFull", n, err)
	}
	if c.Room() != "" || tab.Count("r") != 2 {
		t.Fatalf("refused member is in %q; Count %d", c.Room(), tab.Count("r"))
	}
	if r, _ := broadcast(t, tab, "r", "x", nil); r != 2 || len(sc.got()) != 0 {
		t.Fatalf("broadcast reached %d, refused member got %v", r, sc.got())
	}
	// Leaving is harmless for the refused member, and other rooms have room.
	if n := tab.Leave(c); n != 0 {
		t.Fatalf("Leave of a refused member = %d", n)
	}
	if _, err := join(t, tab, loops[0], "s", c); err != nil {
		t.Fatalf("join another room: %v", err)
	}
	leave(t, tab, c)
	leave(t, tab, b)
	if n, err := join(t, tab, loops[1], "r", c); err != nil || n != 2 {
		t.Fatalf("join after a leave: %d, %v", n, err)
	}
}

func TestAlreadyMember(t *testing.T) {
	loops := startLoops(t, 1)
	tab := New(loops, Options{})
	a, _ := newMember("a")
	join(t, tab, loops[0], "r", a)
	for _, id := range []string{"r", "s"} {
		if _, err := join(t, tab, loops[0], id, a); !errors.Is(err, ErrAlreadyMember) {
			t.Fatalf("join %s again: %v, want ErrAlreadyMember", id, err)
		}
	}
	if a.Room() != "r" || tab.Count("r") != 1 || tab.Count("s") != 0 {
		t.Fatalf("Room %q, counts %d %d", a.Room(), tab.Count("r"), tab.Count("s"))
	}
	if l := tab.List("", 0); len(l) != 1 {
		t.Fatalf("a refused join made a room: %+v", l)
	}
}

func TestBroadcastExcept(t *testing.T) {
	loops := startLoops(t, 3)
	tab := New(loops, Options{})
	var ms []*Member
	var sinks []*recSink
	for i := range 6 {
		m, s := newMember(fmt.Sprint(i))
		join(t, tab, loops[i%3], "r", m)
		ms, sinks = append(ms, m), append(sinks, s)
	}
	if r, d := broadcast(t, tab, "r", "all", nil); r != 6 || d != 6 {
		t.Fatalf("to all: returned %d, done %d", r, d)
	}
	if r, d := broadcast(t, tab, "r", "not 4", ms[4].Sink); r != 5 || d != 5 {
		t.Fatalf("except one: returned %d, done %d", r, d)
	}
	for i, s := range sinks {
		want := []string{"all", "not 4"}
		if i == 4 {
			want = want[:1]
		}
		if got := s.got(); !slices.Equal(got, want) {
			t.Errorf("member %d got %q, want %q", i, got, want)
		}
	}
	// A broadcast to no room reaches nobody and still calls done, at once.
	called := -1
	f := frameOf("x")
	if r := tab.Broadcast("nowhere", f, nil, func(n int) { called = n }); r != 0 || called != 0 {
		t.Fatalf("to no room: returned %d, done %d", r, called)
	}
	f.Release()
	// done may be nil.
	f = frameOf("no done")
	tab.Broadcast("r", f, nil, nil)
	f.Release()
	broadcast(t, tab, "r", "after", nil) // behind "no done" on every loop
	if got := sinks[0].got(); got[len(got)-2] != "no done" {
		t.Fatalf("member 0 got %q", got)
	}
}

// TestBroadcastDoneAfterDelivery checks done runs once every member's Deliver
// has returned, with the number of recipients.
func TestBroadcastDoneAfterDelivery(t *testing.T) {
	loops := startLoops(t, 4)
	tab := New(loops, Options{})
	var delivered atomic.Int64
	const n = 40
	for i := range n {
		m, s := newMember(fmt.Sprint(i))
		s.onDeliver = func() {
			time.Sleep(100 * time.Microsecond) // a slow Deliver on each loop
			delivered.Add(1)
		}
		join(t, tab, loops[i%len(loops)], "r", m)
	}
	for round := range 20 {
		type result struct{ n, delivered int }
		ch := make(chan result, 1)
		f := frameOf("x")
		tab.Broadcast("r", f, nil, func(k int) { ch <- result{k, int(delivered.Load())} })
		f.Release()
		if r := <-ch; r.n != n || r.delivered != (round+1)*n {
			t.Fatalf("round %d: done(%d) with %d delivered, want done(%d) after %d", round, r.n, r.delivered, n, (round+1)*n)
		}
	}
}

// TestBroadcastOrder broadcasts from several goroutines at once and checks
// every member, on every loop, got the room's frames in one order.
func TestBroadcastOrder(t *testing.T) {
	loops := startLoops(t, 4)
	tab := New(loops, Options{})
	var sinks []*recSink
	for i := range 12 {
		m, s := newMember(fmt.Sprint(i))
		join(t, tab, loops[i%len(loops)], "r", m)
		sinks = append(sinks, s)
	}
	const senders, each = 4, 200
	var wg sync.WaitGroup
	var pending sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				pending.Add(1)
				f := frameOf(fmt.Sprint(s, "-", i))
				tab.Broadcast("r", f, nil, func(int) { pending.Done() })
				f.Release()
			}
		})
	}
	wg.Wait()
	pending.Wait()
	first := sinks[0].got()
	if len(first) != senders*each {
		t.Fatalf("member 0 got %d frames, want %d", len(first), senders*each)
	}
	for i, s := range sinks[1:] {
		if got := s.got(); !slices.Equal(got, first) {
			t.Fatalf("member %d saw another order than member 0", i+1)
		}
	}
	// Each sender's frames are in the order it sent them.
	next := make([]int, senders)
	for _, m := range first {
		var s, i int
		fmt.Sscanf(m, "%d-%d", &s, &i)
		if i != next[s] {
			t.Fatalf("sender %d's frame %d came before %d", s, i, next[s])
		}
		next[s]++
	}
}

// TestJoinerMissesEarlierBroadcasts joins a member on a loop while a broadcast
// made before the join is still queued for that loop: the new member must not
// get it, and the members before must.
func TestJoinerMissesEarlierBroadcasts(t *testing.T) {
	loops := startLoops(t, 2)
	tab := New(loops, Options{})
	old, sOld := newMember("old")
	join(t, tab, loops[0], "r", old)
	late, sLate := newMember("late")
	done := make(chan int, 1)
	onLoop(t, loops[0], func() {
		f := frameOf("before")
		tab.Broadcast("r", f, nil, func(n int) { done <- n })
		f.Release()
		// The delivery job is queued behind this one.
		if _, err := tab.Join(0, "r", late); err != nil {
			t.Error(err)
		}
	})
	if n := <-done; n != 1 {
		t.Fatalf("done(%d), want 1", n)
	}
	if got := sLate.got(); len(got) != 0 {
		t.Fatalf("the late member got %q, broadcast before it joined", got)
	}
	if got := sOld.got(); !slices.Equal(got, []string{"before"}) {
		t.Fatalf("the member before got %q", got)
	}
	broadcast(t, tab, "r", "after", nil)
	if got := sLate.got(); !slices.Equal(got, []string{"after"}) {
		t.Fatalf("the late member got %q, want only what came after its join", got)
	}
}

// TestLeaveDuringDelivery has members leave from inside Deliver, as a
// connection closed for a failed write does, and checks nobody else misses the
// frame or gets it twice.
func TestLeaveDuringDelivery(t *testing.T) {
	loops := startLoops(t, 1)
	tab := New(loops, Options{})
	const n = 10
	ms := make([]*Member, n)
	sinks := make([]*recSink, n)
	for i := range ms {
		ms[i], sinks[i] = newMember(fmt.Sprint(i))
		if i%3 == 1 {
			m := ms[i]
			sinks[i].onDeliver = func() { tab.Leave(m) }
		}
		join(t, tab, loops[0], "r", ms[i])
	}
	broadcast(t, tab, "r", "first", nil)
	for i, s := range sinks {
		if got := s.got(); !slices.Equal(got, []string{"first"}) {
			t.Fatalf("member %d got %q", i, got)
		}
	}
	broadcast(t, tab, "r", "second", nil)
	for i, s := range sinks {
		want := []string{"first", "second"}
		if i%3 == 1 {
			want = want[:1]
		}
		if got := s.got(); !slices.Equal(got, want) {
			t.Fatalf("member %d got %q, want %q", i, got, want)
		}
	}
	if c := tab.Count("r"); c != n-3 {
		t.Fatalf("Count = %d, want %d", c, n-3)
	}
}

func TestListPagination(t *testing.T) {
	loops := startLoops(t, 2)
	tab := New(loops, Options{Shards: 8})
	sizes := map[string]int{"a": 1, "b": 3, "c": 2, "d": 1, "e": 4, "aa": 1, "é": 1}
	for id, n := range sizes {
		for i := range n {
			m, _ := newMember(id + fmt.Sprint(i))
			join(t, tab, loops[i%2], id, m)
		}
	}
	str := func(l []Info) string {
		s := ""
		for _, r := range l {
			s += fmt.Sprintf("%s:%d ", r.ID, r.Members)
		}
		return s
	}
	cases := []struct {
		after string
		limit int
		want  string
	}{
		{"", 0, "a:1 aa:1 b:3 c:2 d:1 e:4 é:1 "},
		{"", 2, "a:1 aa:1 "},
		{"aa", 2, "b:3 c:2 "},
		{"c", 2, "d:1 e:4 "},
		{"e", 2, "é:1 "},
		{"é", 2, ""},
		{"a", 1, "aa:1 "},
		{"ab", 0, "b:3 c:2 d:1 e:4 é:1 "},
		{"", 100, "a:1 aa:1 b:3 c:2 d:1 e:4 é:1 "},
	}
	for _, tc := range cases {
		if got := str(tab.List(tc.after, tc.limit)); got != tc.want {
			t.Errorf("List(%q, %d) = %q, want %q", tc.after, tc.limit, got, tc.want)
		}
	}
	// Walking the pages visits each room once.
	var seen []string
	after := ""
	for {
		page := tab.List(after, 3)
		if len(page) == 0 {
			break
		}
		for _, r := range page {
			seen = append(seen, r.ID)
		}
		after = page[len(page)-1].ID
	}
	if want := []string{"a", "aa", "b", "c", "d", "e", "é"}; !slices.Equal(seen, want) {
		t.Fatalf("pages visited %q", seen)
	}
}

func TestMembers(t *testing.T) {
	loops := startLoops(t, 3)
	tab := New(loops, Options{})
	var ms []*Member
	var want []MemberInfo
	for i := range 7 {
		m, _ := newMember(fmt.Sprint("n", i))
		join(t, tab, loops[i%3], "r", m)
		ms = append(ms, m)
		want = append(want, MemberInfo{UserID: fmt.Sprint("id-n", i), Name: m.Name})
	}
	sortInfo := func(l []MemberInfo) {
		slices.SortFunc(l, func(a, b MemberInfo) int {
			if a.Name < b.Name {
				return -1
			}
			if a.Name > b.Name {
				return 1
			}
			return 0
		})
	}
	got, ok := tab.Members("r")
	sortInfo(got)
	if !ok || !slices.Equal(got, want) {
		t.Fatalf("Members = %+v, %v; want %+v", got, ok, want)
	}
	leave(t, tab, ms[4])
	got, _ = tab.Members("r")
	sortInfo(got)
	want = slices.Delete(want, 4, 5)
	if !slices.Equal(got, want) {
		t.Fatalf("Members after a leave = %+v, want %+v", got, want)
	}
	if got, ok := tab.Members("nowhere"); ok || got != nil {
		t.Fatalf("Members of no room = %+v, %v", got, ok)
	}
	// A Sink that does not know its user is listed without an id.
	anon := &Member{Sink: &countSink{}, Name: "anon"}
	join(t, tab, loops[0], "q", anon)
	if got, _ := tab.Members("q"); !slices.Equal(got, []MemberInfo{{Name: "anon"}}) {
		t.Fatalf("Members with a plain Sink = %+v, want one without an id", got)
	}
}

// TestMemberSize: a room member is one 64-byte allocation, the size class a
// server pays per member (docs/ARCHITECTURE.md, "Memory per connection").
func TestMemberSize(t *testing.T) {
	if n := unsafe.Sizeof(Member{}); n > 64 {
		t.Fatalf("Member is %d bytes, over its 64-byte size class", n)
	}
}

// TestConcurrentJoinLeaveBroadcast runs joins and leaves on every loop while
// other goroutines broadcast to the same rooms and read the table, for the race
// detector, then checks the table ends consistent and nobody got a frame twice.
func TestConcurrentJoinLeaveBroadcast(t *testing.T) {
	loops := startLoops(t, 4)
	tab := New(loops, Options{Shards: 2})
	rooms := []string{"a", "b", "c"}
	const perLoop, rounds = 8, 60
	stop := make(chan struct{})
	var bg sync.WaitGroup
	var sent atomic.Int64
	for b := range 2 {
		bg.Go(func() {
			// A few broadcasts in flight at a time, so the loops' queues stay
			// short and the joins and leaves interleave with them.
			inflight := make(chan struct{}, 4)
			for i := 0; ; i++ {
				select {
				case <-stop:
					for range cap(inflight) {
						inflight <- struct{}{}
					}
					return
				case inflight <- struct{}{}:
				}
				f := frameOf(fmt.Sprint(b, "-", i))
				tab.Broadcast(rooms[i%len(rooms)], f, nil, func(int) { <-inflight })
				f.Release()
				sent.Add(1)
			}
		})
	}
	bg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			tab.Stats()
			tab.List("", 2)
			tab.Members(rooms[0])
			tab.Count(rooms[1])
		}
	})

	type member struct {
		m *Member
		s *recSink
	}
	var all [][]member
	var workers sync.WaitGroup
	for li, l := range loops {
		ms := make([]member, perLoop)
		for i := range ms {
			m, s := newMember(fmt.Sprint(li, ".", i))
			ms[i] = member{m, s}
		}
		all = append(all, ms)
		workers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(li), 7))
			for range rounds {
				var wg sync.WaitGroup
				wg.Add(1)
				l.Post(poller.FuncJob(func() {
					defer wg.Done()
					for _, x := range ms {
						if x.m.Room() != "" && rng.IntN(2) == 0 {
							tab.Leave(x.m)
						} else if x.m.Room() == "" {
							tab.Join(l.Index(), rooms[rng.IntN(len(rooms))], x.m)
						}
					}
				}))
				wg.Wait()
			}
		})
	}
	workers.Wait()
	close(stop)
	bg.Wait()
	if sent.Load() == 0 {
		t.Fatal("no broadcasts were made")
	}
	t.Logf("%d broadcasts during %d rounds of joins and leaves", sent.Load(), rounds)

	// The counts agree with the members' own view.
	want := map[string]int{}
	for li, ms := range all {
		onLoop(t, loops[li], func() {
			for _, x := range ms {
				if r := x.m.Room(); r != "" {
					want[r]++
				}
			}
		})
	}
	total := 0
	for _, r := range rooms {
		if got := tab.Count(r); got != want[r] {
			t.Errorf("Count(%s) = %d, members say %d", r, got, want[r])
		}
		ms, _ := tab.Members(r)
		if len(ms) != want[r] {
			t.Errorf("Members(%s) lists %d, members say %d", r, len(ms), want[r])
		}
		total += want[r]
	}
	if st := tab.Stats(); st.Members != total {
		t.Errorf("Stats = %+v, want %d members", st, total)
	}
	for _, ms := range all {
		for _, x := range ms {
			got := x.s.got()
			seen := map[string]bool{}
			for _, g := range got {
				if seen[g] {
					t.Fatalf("member %s got frame %s twice", x.m.Name, g)
				}
				seen[g] = true
			}
		}
	}
	// Everyone leaves, and the table is empty.
	for li, ms := range all {
		onLoop(t, loops[li], func() {
			for _, x := range ms {
				tab.Leave(x.m)
			}
		})
	}
	if st := tab.Stats(); st != (Stats{}) {
		t.Fatalf("Stats = %+v after everyone left", st)
	}
}

// TestEachLeaves removes every member of a room from inside Each, on their
// loops, the way an operator's close of a room does, and checks the room is
// gone and other rooms untouched.
func TestEachLeaves(t *testing.T) {
	loops := startLoops(t, 3)
	tab := New(loops, Options{})
	for i := range 9 {
		m, _ := newMember(fmt.Sprint("n", i))
		join(t, tab, loops[i%3], "r", m)
	}
	other, _ := newMember("other")
	join(t, tab, loops[0], "keep", other)

	// Only the members fn picks count, and fn may make them leave.
	n := tab.Each("r", func(m *Member) bool {
		if m.Name == "n4" {
			return false
		}
		tab.Leave(m)
		return true
	})
	if n != 8 {
		t.Fatalf("Each = %d, want 8", n)
	}
	if got, _ := tab.Members("r"); len(got) != 1 || got[0].Name != "n4" {
		t.Fatalf("members left = %+v, want only n4", got)
	}
	if tab.Each("r", func(m *Member) bool { tab.Leave(m); return true }) != 1 || tab.Count("r") != 0 {
		t.Fatalf("room not emptied: %d", tab.Count("r"))
	}
	if tab.Each("r", func(*Member) bool { return true }) != 0 {
		t.Fatal("Each on a gone room visited someone")
	}
	if tab.Count("keep") != 1 {
		t.Fatal("Each touched another room")
	}
}

func TestLargest(t *testing.T) {
	loops := startLoops(t, 2)
	tab := New(loops, Options{Shards: 4})
	sizes := map[string]int{"a": 3, "b": 7, "c": 1, "d": 7, "e": 5}
	for id, n := range sizes {
		for i := range n {
			m, _ := newMember(fmt.Sprint(id, i))
			join(t, tab, loops[i%2], id, m)
		}
	}
	want := []Info{{"b", 7}, {"d", 7}, {"e", 5}}
	if got := tab.Largest(3); !slices.Equal(got, want) {
		t.Fatalf("Largest(3) = %+v, want %+v", got, want)
	}
	if got := tab.Largest(10); len(got) != 5 || got[4] != (Info{"c", 1}) {
		t.Fatalf("Largest(10) = %+v", got)
	}
	if got := tab.Largest(0); got != nil {
		t.Fatalf("Largest(0) = %+v", got)
	}
}
