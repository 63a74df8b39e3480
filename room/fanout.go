package room

import "github.com/throng-ws/throng/poller"

// DefaultChunk is how many members a loop writes a broadcast to in one turn
// (Options.Chunk). At 5–10 µs of CPU per write that is 1–3 ms, after which
// the loop reads its sockets and runs its other jobs before it writes on.
const DefaultChunk = 256

// loopFan is one loop's queue of broadcasts too large for one turn: the
// loop writes Options.Chunk members of the first, and of the next once it is
// done, then posts itself behind whatever else waits for the loop (its
// sockets' input, a broadcast's result, other jobs) and goes on from there.
//
// Once a broadcast is queued here, every later broadcast posted to the loop
// queues behind it, whatever its size or room: so a member gets a room's
// messages in the order they were posted, as when each job ran whole.
//
// It is owned by its loop's goroutine.
type loopFan struct {
	t    *Table
	loop *poller.Loop

	q    []*deliverJob // q[head] is being written, the rest wait in order
	head int
	// snap is the loop's members of q[head]'s room when its writing began:
	// between turns members may leave, and a leave moves the last member into
	// the leaver's slot, so the live list cannot be walked across turns.
	snap    []*Member
	frames  []*poller.Frame // deliver's scratch
	next    int             // how many of snap have been visited
	started bool            // snap holds q[head]'s members
	// group is how many broadcasts from q[head] on, all to the same room,
	// are written together: each member gets them one after the other.
	group  int
	posted bool // the loopFan is in the loop's job queue
}

// Run implements poller.Job: one turn.
func (lf *loopFan) Run(*poller.Loop) {
	lf.posted = false
	lf.turn()
}

// queue takes j, which the loop could not write whole at once, and writes a
// first turn if nothing was queued before it.
func (lf *loopFan) queue(j *deliverJob) {
	lf.q = append(lf.q, j)
	if !lf.posted {
		lf.turn()
	}
}

// turn writes up to a chunk of members, across the queued broadcasts in
// order, and posts the next turn if any are left. If the loop has stopped it
// writes them all now, as a job run by a stopping loop does.
func (lf *loopFan) turn() {
	for budget := lf.t.chunk; lf.head < len(lf.q); {
		budget = lf.write(budget)
		if budget > 0 || lf.head == len(lf.q) {
			continue
		}
		lf.posted = true
		if lf.loop.Post(lf) {
			return
		}
		lf.posted = false
		budget = int(^uint(0) >> 1)
	}
	clear(lf.q)
	lf.q, lf.head = lf.q[:0], 0
}

// maxGroup bounds how many queued broadcasts to one room are written
// together.
const maxGroup = 8

// write visits up to budget members of the first queued broadcasts and
// returns the budget left; it finishes them once every member has been
// visited. Broadcasts to the same room waiting one behind the other are
// written together, each member getting them in order, one right after the
// other: so its socket takes them together and its reader reads them at once.
func (lf *loopFan) write(budget int) int {
	j := lf.q[lf.head]
	if !lf.started {
		lf.snap = append(lf.snap[:0], j.room.parts[lf.loop.Index()].members...)
		lf.next, lf.started = 0, true
		lf.group = 1
		for lf.group < maxGroup && lf.head+lf.group < len(lf.q) && lf.q[lf.head+lf.group].room == j.room {
			lf.group++
		}
	}
	group := lf.q[lf.head : lf.head+lf.group]
	n := len(lf.snap)
	// Start at a different member each time, so that the members last in
	// the list are not always the last to be written.
	first := int(j.seq % uint64(max(n, 1)))
	for ; lf.next < n && budget > 0; lf.next, budget = lf.next+1, budget-len(group) {
		i := first + lf.next
		if i >= n {
			i -= n
		}
		// A member that left since the snapshot has no room, or another
		// one; one that came back has a later since.
		if m := lf.snap[i]; m.room == j.room {
			lf.deliver(m, group)
		}
	}
	if lf.next < n {
		return 0
	}
	clear(lf.snap) // hold no member past its broadcast
	lf.snap, lf.started = lf.snap[:0], false
	for i, g := range group {
		lf.q[lf.head+i] = nil
		g.finish()
	}
	lf.head += len(group)
	return max(budget, 0)
}

// deliver writes group's broadcasts to m, in order: in one DeliverFrames
// when there are several and the sink takes them so.
func (lf *loopFan) deliver(m *Member, group []*deliverJob) {
	if len(group) == 1 {
		group[0].deliver(m)
		return
	}
	fs, ok := m.Sink.(FramesSink)
	if !ok {
		for _, g := range group {
			if m.room != g.room {
				return // its write failed and closed it
			}
			g.deliver(m)
		}
		return
	}
	frames := lf.frames[:0]
	for _, g := range group {
		if f := g.frameFor(m); f != nil {
			frames = append(frames, f)
		}
	}
	switch len(frames) {
	case 0:
	case 1:
		m.Sink.Deliver(frames[0])
	default:
		fs.DeliverFrames(frames)
	}
	clear(frames)
	lf.frames = frames[:0]
}
