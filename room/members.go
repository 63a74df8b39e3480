package room

import (
	"sync"
	"sync/atomic"

	"github.com/throng-ws/throng/poller"
)

// ListMembers gathers up to limit of room id's members without waiting for
// them: it asks each loop for its part, and the loop that answers last calls
// done with what they found, on its own goroutine, so done must not block.
// Unlike Members it may be called from a loop goroutine, which must never wait
// for the others. If the room does not exist, done is called at once with ok
// false. Which members are listed, when there are more than limit, is not
// specified.
func (t *Table) ListMembers(id string, limit int, done func(members []MemberInfo, ok bool)) {
	sh := t.shard(id)
	sh.mu.RLock()
	r := sh.rooms[id]
	sh.mu.RUnlock()
	if r == nil {
		done(nil, false)
		return
	}
	g := &gather{limit: limit, done: done}
	g.left.Store(int32(len(t.loops)))
	for i, l := range t.loops {
		if !l.Post(poller.FuncJob(func() { g.take(r.parts[i].members) })) {
			g.take(nil) // the loop has stopped: its members are gone
		}
	}
}

// gather collects the loops' parts for ListMembers.
type gather struct {
	limit int
	done  func([]MemberInfo, bool)
	left  atomic.Int32 // loops yet to answer

	mu      sync.Mutex
	members []MemberInfo // guarded by mu
}

// take runs on a loop's goroutine with that loop's part of the room.
func (g *gather) take(part []*Member) {
	g.mu.Lock()
	for _, m := range part {
		if len(g.members) >= g.limit {
			break
		}
		g.members = append(g.members, MemberInfo{UserID: m.UserID(), Name: m.Name})
	}
	g.mu.Unlock()
	if g.left.Add(-1) == 0 {
		g.mu.Lock()
		ms := g.members
		g.mu.Unlock()
		g.done(ms, true)
	}
}
