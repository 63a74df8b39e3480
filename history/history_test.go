package history

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func appendN(s *Store, room string, n int) {
	for range n {
		l := s.Lock(room)
		l.Append(fmt.Appendf(nil, "%s-%d", room, l.Next()))
		l.Unlock()
	}
}

func strs(bs [][]byte) string {
	var out []string
	for _, b := range bs {
		out = append(out, string(b))
	}
	return strings.Join(out, " ")
}

func TestRecover(t *testing.T) {
	s := New(Options{Size: 3})
	appendN(s, "r", 5) // keeps 3, 4, 5
	l := s.Lock("r")
	defer l.Unlock()
	ep := l.Epoch()
	cases := []struct {
		offset uint64
		epoch  string
		want   string
		ok     bool
	}{
		{5, ep, "", true},
		{4, ep, "r-5", true},
		{2, ep, "r-3 r-4 r-5", true},
		{1, ep, "", false}, // 2 is gone
		{0, ep, "", false},
		{6, ep, "", false}, // never handed out
		{4, "other", "", false},
	}
	for _, c := range cases {
		got, ok := l.Recover(c.offset, c.epoch, 100)
		if ok != c.ok || strs(got) != c.want {
			t.Errorf("Recover(%d, %q) = %q, %v; want %q, %v", c.offset, c.epoch, strs(got), ok, c.want, c.ok)
		}
	}
	if got, ok := l.Recover(2, ep, 2); ok {
		t.Errorf("Recover over max = %q, true; want false", strs(got))
	}
	if st := s.Stats(); st.Messages != 3 || st.EvictedSize != 2 {
		t.Errorf("stats %+v, want 3 messages, 2 evicted by size", st)
	}
}

func TestPage(t *testing.T) {
	s := New(Options{Size: 10})
	appendN(s, "r", 7)
	for _, c := range []struct {
		before uint64
		limit  int
		want   string
		more   bool
	}{
		{0, 3, "r-5 r-6 r-7", true},
		{5, 3, "r-2 r-3 r-4", true},
		{3, 5, "r-1 r-2", false},
		{1, 5, "", false},
		{0, 10, "r-1 r-2 r-3 r-4 r-5 r-6 r-7", false},
	} {
		ep, latest, got, more, ok := s.Page("r", c.before, c.limit)
		if !ok || ep == "" || latest != 7 || strs(got) != c.want || more != c.more {
			t.Errorf("Page(%d, %d) = %q more %v latest %d ok %v; want %q more %v", c.before, c.limit, strs(got), more, latest, ok, c.want, c.more)
		}
	}
	if _, _, _, _, ok := s.Page("none", 0, 5); ok {
		t.Error("Page of a room without log: ok")
	}
}

// The budget is node-wide and evicts the node's oldest message first,
// whichever room it is in.
func TestMemoryEvictsOldestFirst(t *testing.T) {
	per := int64(EntryOverhead + len("a-1"))
	s := New(Options{Size: 100, Memory: 4 * per})
	appendN(s, "a", 2)
	appendN(s, "b", 2)
	appendN(s, "c", 1) // over the budget by one: a-1 goes
	if _, _, got, _, _ := s.Page("a", 0, 10); strs(got) != "a-2" {
		t.Errorf("room a keeps %q, want a-2", strs(got))
	}
	appendN(s, "c", 2) // a-2 and b-1 go
	if _, _, got, _, _ := s.Page("a", 0, 10); len(got) != 0 {
		t.Errorf("room a keeps %q, want nothing", strs(got))
	}
	if _, _, got, _, _ := s.Page("b", 0, 10); strs(got) != "b-2" {
		t.Errorf("room b keeps %q, want b-2", strs(got))
	}
	st := s.Stats()
	if st.Messages != 4 || st.Bytes != 4*per || st.EvictedMemory != 3 {
		t.Errorf("stats %+v, want 4 messages of %d bytes, 3 evicted for memory", st, 4*per)
	}
}

func TestTTLAndForget(t *testing.T) {
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	live := map[string]bool{"kept": true}
	var mu sync.Mutex
	s := New(Options{TTL: time.Minute, Now: c.Now, Live: func(id string) bool { mu.Lock(); defer mu.Unlock(); return live[id] }})
	appendN(s, "kept", 2)
	appendN(s, "gone", 2)
	l := s.Lock("gone")
	ep := l.Epoch()
	l.Unlock()
	c.Advance(30 * time.Second)
	appendN(s, "gone", 1)
	c.Advance(31 * time.Second)
	// Expired messages are not read even before the sweep.
	if _, _, got, _, _ := s.Page("gone", 0, 10); strs(got) != "gone-3" {
		t.Errorf("before the sweep: %q, want gone-3", strs(got))
	}
	s.Sweep()
	if st := s.Stats(); st.Messages != 1 || st.EvictedTTL != 4 || st.Rooms != 2 {
		t.Errorf("after the sweep: %+v, want 1 message, 4 expired, 2 rooms", st)
	}
	// A client at the newest offset of a quiet room lost nothing.
	l = s.Lock("kept")
	if _, ok := l.Recover(2, l.Epoch(), 10); !ok {
		t.Error("recover at the newest offset of an expired history: not ok")
	}
	l.Unlock()
	c.Advance(2 * time.Minute)
	s.Sweep()
	s.Sweep()
	st := s.Stats()
	if st.Rooms != 1 || st.Forgot != 1 {
		t.Errorf("stats %+v: want the room with members kept, the other forgotten", st)
	}
	l = s.Lock("gone")
	defer l.Unlock()
	if l.Epoch() == ep || l.Next() != 1 {
		t.Errorf("a forgotten room came back with epoch %q next %d; want a new epoch from 1", l.Epoch(), l.Next())
	}
}

func TestConcurrentAppends(t *testing.T) {
	s := New(Options{Size: 50, Memory: 200 * (EntryOverhead + 8)})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				room := fmt.Sprint("r", (g+i)%7)
				l := s.Lock(room)
				l.Append([]byte("12345678"))
				l.Unlock()
				s.Page(room, 0, 5)
			}
		}()
	}
	wg.Wait()
	st := s.Stats()
	if st.Bytes > 200*(EntryOverhead+8) || st.Messages > 200 {
		t.Errorf("over budget: %+v", st)
	}
	total := uint64(0)
	for i := range 7 {
		l := s.Lock(fmt.Sprint("r", i))
		total += l.Latest()
		l.Unlock()
	}
	if total != 2000 {
		t.Errorf("offsets handed out: %d, want 2000", total)
	}
}
