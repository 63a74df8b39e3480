// Package room is the sharded room table: who is in which room, and fan-out of a
// frame to a room's members without a copy or an allocation per recipient.
//
// Membership is split by event loop. A room keeps one member list per loop, and
// only that loop's goroutine touches it: joins and leaves happen on the member's
// own loop, and a broadcast posts one job to each loop that has members, which
// then writes the same shared frame to each of its members. No socket is written
// while a lock is held, and a room whose members sit on every loop is fanned out
// by every core. A loop writes a broadcast to at most Options.Chunk members in
// one turn and then reads its sockets and runs its other jobs (a sender's next
// message, a broadcast's result) before it writes on, so a large room does not
// keep a loop from reading for the whole fan-out.
//
// The table's locks only guard the map from room id to room and each room's
// counts. Broadcasts to one room are ordered: every member sees a room's
// messages in the same order.
//
// A room's local members are one consumer of its messages; a broker that carries
// messages between nodes is another, and delivers to the local ones through
// Broadcast like any local sender.
package room

import (
	"errors"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/throng-ws/throng/poller"
)

// Errors returned by Join.
var (
	// ErrRoomFull means the room has Options.MaxMembers members.
	ErrRoomFull = errors.New("room: room is full")
	// ErrAlreadyMember means the member is already in a room.
	ErrAlreadyMember = errors.New("room: already a member")
)

// Sink receives a room's frames for one member. Deliver is called on the goroutine
// of the member's loop and must not block; it must not keep f past the call
// without f.Retain. A member with Member.Deflate gets a broadcast's compressed
// frame when it has one.
type Sink interface {
	Deliver(f *poller.Frame)
}

// FramesSink is a Sink that takes several of a room's frames at once, in
// order, as Deliver would take them one by one: a member with broadcasts
// waiting gets them in one write. The same rules as Deliver's hold for each
// frame.
type FramesSink interface {
	Sink
	DeliverFrames(fs []*poller.Frame)
}

// Member is one connection's membership in one room. The caller fills in Sink,
// Name and Deflate before Join and must not change them while joined.
//
// It is 64 bytes, the size class of a server holding one per room member: the
// member's user id is not kept here but asked of its Sink (UserSink), which
// has it already.
type Member struct {
	Sink Sink
	Name string

	room *Room // nil when not joined
	// since is the room's broadcast count when the member joined: a broadcast
	// made before the join may still be on its way to the loop, and must not
	// reach it.
	since uint64
	loop  int32
	idx   int32 // position in room.parts[loop].members
	// Deflate: the member takes a broadcast's compressed frame when it has one
	// (BroadcastDeflated), as its connection negotiated permessage-deflate.
	Deflate bool
	// Flags are the Sink's owner's, for its own bookkeeping of the member:
	// the table never reads or writes them. They sit in what would be
	// padding.
	Flags uint8
}

// UserSink is a Sink that knows its member's user id. Members lists it; a
// Sink that is not a UserSink is listed with an empty id.
type UserSink interface {
	Sink
	UserID() string
}

// UserID is the member's user id, from its Sink (UserSink), or "".
func (m *Member) UserID() string {
	if u, ok := m.Sink.(UserSink); ok {
		return u.UserID()
	}
	return ""
}

// Room returns the id of the member's room, or "" when not joined.
func (m *Member) Room() string {
	if m.room == nil {
		return ""
	}
	return m.room.id
}

// Options configures a Table. The zero value works.
type Options struct {
	// Shards is the number of lock shards, rounded up to a power of two. If zero,
	// DefaultShards is used.
	Shards int
	// MaxMembers bounds a room's members. If zero, rooms are unbounded.
	MaxMembers int
	// Chunk is how many of a room's members a loop writes a broadcast to
	// before it reads its sockets again; a broadcast to more goes out over
	// several turns of the loop. If zero, DefaultChunk is used.
	Chunk int
}

// DefaultShards spreads the table's locks far enough that joins on different
// cores rarely meet.
const DefaultShards = 64

// Table maps room ids to rooms.
type Table struct {
	loops  []*poller.Loop
	shards []shard
	mask   uint64
	seed   maphash.Seed
	max    int
	chunk  int
	fans   []loopFan // fans[i] belongs to loop i

	jobs    sync.Pool
	fanouts sync.Pool

	fanSize *histogram // recipients per broadcast
	fanTime *histogram // nanoseconds from Broadcast to the last loop's delivery
}

type shard struct {
	mu    sync.RWMutex
	rooms map[string]*Room // guarded by mu
	_     [32]byte         // keep neighbouring shards' locks on separate cache lines
}

// Room is one room: its counts, guarded by its shard's lock, and one member list
// per loop, each owned by that loop's goroutine.
type Room struct {
	id    string
	total int    // guarded by the shard lock
	parts []part // parts[i] belongs to loop i
	// seq counts the broadcasts posted. It is written under order inside the
	// shard's read lock, and read by Join under the write lock.
	seq uint64

	// deflate counts the members with Member.Deflate; guarded by the shard
	// lock.
	deflate int

	// order is held while a broadcast posts its jobs, so that every loop receives
	// this room's frames in one order. It is taken inside the shard lock.
	order sync.Mutex
}

type part struct {
	count   int       // guarded by the shard lock
	members []*Member // owned by the loop goroutine
}

// New creates a table whose members live on the given loops.
func New(loops []*poller.Loop, o Options) *Table {
	n := o.Shards
	if n <= 0 {
		n = DefaultShards
	}
	size := 1
	for size < n {
		size <<= 1
	}
	t := &Table{loops: loops, shards: make([]shard, size), mask: uint64(size - 1), seed: maphash.MakeSeed(), max: o.MaxMembers,
		fanSize: newHistogram(recipientBounds), fanTime: newHistogram(durationBounds)}
	for i := range t.shards {
		t.shards[i].rooms = make(map[string]*Room)
	}
	t.chunk = o.Chunk
	if t.chunk <= 0 {
		t.chunk = DefaultChunk
	}
	t.fans = make([]loopFan, len(loops))
	for i, l := range loops {
		t.fans[i] = loopFan{t: t, loop: l}
	}
	t.jobs.New = func() any { return new(deliverJob) }
	t.fanouts.New = func() any { return new(fanout) }
	return t
}

func (t *Table) shard(id string) *shard {
	return &t.shards[maphash.String(t.seed, id)&t.mask]
}

// Join adds m to room id, creating the room, and returns the room's member count.
// It must be called on the goroutine of loop, which becomes m's loop. It costs
// O(1): an append to the loop's member list.
func (t *Table) Join(loop int, id string, m *Member) (int, error) {
	if m.room != nil {
		return 0, ErrAlreadyMember
	}
	sh := t.shard(id)
	sh.mu.Lock()
	r := sh.rooms[id]
	if r == nil {
		r = &Room{id: id, parts: make([]part, len(t.loops))}
		sh.rooms[id] = r
	}
	if t.max > 0 && r.total >= t.max {
		sh.mu.Unlock()
		return r.total, ErrRoomFull
	}
	r.total++
	r.parts[loop].count++
	if m.Deflate {
		r.deflate++
	}
	n, since := r.total, r.seq
	sh.mu.Unlock()

	p := &r.parts[loop]
	m.room, m.loop, m.idx, m.since = r, int32(loop), int32(len(p.members)), since
	p.members = append(p.members, m)
	return n, nil
}

// Leave removes m from its room and returns the count left; a room left empty is
// deleted. It must be called on m's loop goroutine. It costs O(1): the last
// member of the loop's list takes m's place.
func (t *Table) Leave(m *Member) int {
	r := m.room
	if r == nil {
		return 0
	}
	p := &r.parts[m.loop]
	last := p.members[len(p.members)-1]
	p.members[m.idx] = last
	last.idx = m.idx
	p.members[len(p.members)-1] = nil
	p.members = p.members[:len(p.members)-1]
	if len(p.members) == 0 {
		p.members = nil // an emptied list gives its array back
	}
	m.room = nil

	sh := t.shard(r.id)
	sh.mu.Lock()
	r.total--
	p.count--
	if m.Deflate {
		r.deflate--
	}
	n := r.total
	if n == 0 && sh.rooms[r.id] == r {
		delete(sh.rooms, r.id)
	}
	sh.mu.Unlock()
	return n
}

// Count is room id's member count, 0 if it does not exist.
func (t *Table) Count(id string) int {
	sh := t.shard(id)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	if r := sh.rooms[id]; r != nil {
		return r.total
	}
	return 0
}

// Deflaters is the number of room id's members with Member.Deflate: a
// broadcaster compresses a message for them (BroadcastDeflated) only if there
// are any.
func (t *Table) Deflaters(id string) int {
	sh := t.shard(id)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	if r := sh.rooms[id]; r != nil {
		return r.deflate
	}
	return 0
}

// Broadcast delivers f to every member of room id except the one whose Sink is
// except (nil for none), and returns the number of members it goes to. It takes
// its own reference to f for each loop, so the caller still releases its own.
// If done is not nil it is called with that number once every member's Deliver
// has run, on the goroutine of the last loop to finish (or the caller's, if
// there is no such room). Broadcast may be called from any goroutine; it never
// writes to a socket itself.
func (t *Table) Broadcast(id string, f *poller.Frame, except Sink, done func(recipients int)) int {
	return t.BroadcastDeflated(id, f, nil, except, done)
}

// BroadcastDeflated is Broadcast of one message in two encodings: deflated,
// the message compressed, goes to the members with Member.Deflate, and f to
// the others. Each encoding is made once and its bytes shared by all its
// members. deflated may be nil, and then f goes to everyone; the caller keeps
// and releases its references to both.
func (t *Table) BroadcastDeflated(id string, f, deflated *poller.Frame, except Sink, done func(recipients int)) int {
	sh := t.shard(id)
	sh.mu.RLock()
	r := sh.rooms[id]
	if r == nil {
		sh.mu.RUnlock()
		if done != nil {
			done(0)
		}
		return 0
	}
	n := r.total
	if except != nil {
		n--
	}
	// Every broadcast gets a fan-out counter, done or not: its last release
	// records the recipients and the duration in the table's histograms.
	fan := t.fanouts.Get().(*fanout)
	fan.done, fan.n, fan.start = done, n, time.Now()
	fan.left.Store(1) // held until every job is posted
	r.order.Lock()
	r.seq++
	for i := range r.parts {
		if r.parts[i].count == 0 {
			continue
		}
		j := t.jobs.Get().(*deliverJob)
		j.t, j.room, j.f, j.except, j.fan, j.seq = t, r, f, except, fan, r.seq
		f.Retain()
		if deflated != nil && r.deflate > 0 {
			j.deflated = deflated
			deflated.Retain()
		}
		fan.left.Add(1)
		if !t.loops[i].Post(j) {
			j.finish()
		}
	}
	r.order.Unlock()
	sh.mu.RUnlock()
	fan.release(t)
	return n
}

// deliverJob is one loop's share of a broadcast.
type deliverJob struct {
	t      *Table
	room   *Room
	f      *poller.Frame
	except Sink
	fan    *fanout
	seq    uint64 // the broadcast's Room.seq: members who joined later are skipped

	deflated *poller.Frame // for members with Deflate; nil if none
}

// Run writes the frame to the loop's members of the room. A room with more
// members on the loop than a chunk, or any broadcast while one is queued, goes
// to the loop's loopFan, which writes it over several turns. Otherwise it
// walks the list backwards: a member whose delivery closes it leaves, and the
// member moved into its slot has already been served.
func (j *deliverJob) Run(l *poller.Loop) {
	lf := &j.t.fans[l.Index()]
	if len(j.room.parts[l.Index()].members) > j.t.chunk || lf.head < len(lf.q) {
		lf.queue(j)
		return
	}
	ms := j.room.parts[l.Index()].members
	for i := len(ms) - 1; i >= 0; i-- {
		ms = j.room.parts[l.Index()].members
		if i >= len(ms) {
			continue
		}
		j.deliver(ms[i])
	}
	j.finish()
}

// deliver writes the broadcast to m unless m is excepted or joined after it.
func (j *deliverJob) deliver(m *Member) {
	if f := j.frameFor(m); f != nil {
		m.Sink.Deliver(f)
	}
}

// frameFor is the frame m gets, or nil if m is excepted or joined after the
// broadcast.
func (j *deliverJob) frameFor(m *Member) *poller.Frame {
	if m.Sink == j.except || m.since >= j.seq {
		return nil
	}
	if m.Deflate && j.deflated != nil {
		return j.deflated
	}
	return j.f
}

func (j *deliverJob) finish() {
	t, fan := j.t, j.fan
	j.f.Release()
	if j.deflated != nil {
		j.deflated.Release()
	}
	*j = deliverJob{}
	t.jobs.Put(j)
	if fan != nil {
		fan.release(t)
	}
}

// fanout counts a broadcast's outstanding loop jobs, to record the broadcast in
// the histograms and call done after the last.
type fanout struct {
	left  atomic.Int32
	n     int
	start time.Time
	done  func(int) // nil if the caller wants no callback
}

func (f *fanout) release(t *Table) {
	if f.left.Add(-1) != 0 {
		return
	}
	done, n := f.done, f.n
	t.fanSize.observe(uint64(n))
	t.fanTime.observe(uint64(time.Since(f.start)))
	f.done = nil
	t.fanouts.Put(f)
	if done != nil {
		done(n)
	}
}

// Stats are the table's totals.
type Stats struct {
	Rooms   int
	Members int
}

// Stats counts rooms and memberships.
func (t *Table) Stats() Stats {
	var s Stats
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.RLock()
		s.Rooms += len(sh.rooms)
		for _, r := range sh.rooms {
			s.Members += r.total
		}
		sh.mu.RUnlock()
	}
	return s
}

// Info describes a room.
type Info struct {
	ID      string `json:"id"`
	Members int    `json:"members"`
}

// List returns up to limit rooms with ids after the cursor, in id order, for
// paginated listings.
func (t *Table) List(after string, limit int) []Info {
	var all []Info
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.RLock()
		for id, r := range sh.rooms {
			if id > after {
				all = append(all, Info{ID: id, Members: r.total})
			}
		}
		sh.mu.RUnlock()
	}
	slices.SortFunc(all, func(a, b Info) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	if limit > 0 && len(all) > limit {
		all = all[:limit]
	}
	return all
}

// MemberInfo describes a member.
type MemberInfo struct {
	UserID string `json:"userId"`
	Name   string `json:"userName"`
}

// Members lists room id's members. It asks each loop for its part, as only the
// loop may read it, and waits for the answers; ok is false if the room does not
// exist.
func (t *Table) Members(id string) (members []MemberInfo, ok bool) {
	sh := t.shard(id)
	sh.mu.RLock()
	r := sh.rooms[id]
	sh.mu.RUnlock()
	if r == nil {
		return nil, false
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, l := range t.loops {
		wg.Add(1)
		posted := l.Post(poller.FuncJob(func() {
			defer wg.Done()
			ms := r.parts[i].members
			mu.Lock()
			for _, m := range ms {
				members = append(members, MemberInfo{UserID: m.UserID(), Name: m.Name})
			}
			mu.Unlock()
		}))
		if !posted {
			wg.Done()
		}
	}
	wg.Wait()
	return members, true
}

// Each calls fn for every member of room id, on the goroutine of the member's
// loop, and waits until every loop has done so. fn may make the member Leave
// (as an operator's removal does); members that joined after a loop's pass
// began are not visited. It returns how many members fn reported true for, and
// 0 if the room does not exist. It costs a job per loop and a copy of each
// loop's member list: it is for rare actions, not for fan-out.
func (t *Table) Each(id string, fn func(m *Member) bool) int {
	sh := t.shard(id)
	sh.mu.RLock()
	r := sh.rooms[id]
	sh.mu.RUnlock()
	if r == nil {
		return 0
	}
	var n atomic.Int64
	var wg sync.WaitGroup
	for i, l := range t.loops {
		wg.Add(1)
		posted := l.Post(poller.FuncJob(func() {
			defer wg.Done()
			// A copy, as fn may take members out of the list it walks.
			for _, m := range slices.Clone(r.parts[i].members) {
				if m.room == r && fn(m) {
					n.Add(1)
				}
			}
		}))
		if !posted {
			wg.Done()
		}
	}
	wg.Wait()
	return int(n.Load())
}

// Largest returns up to k rooms with the most members, most first (ties in id
// order). It reads every room's count under its shard's read lock and keeps
// only the k best, so it costs one pass over the table and O(k) memory.
func (t *Table) Largest(k int) []Info {
	if k <= 0 {
		return nil
	}
	better := func(a, b Info) bool {
		return a.Members > b.Members || (a.Members == b.Members && a.ID < b.ID)
	}
	top := make([]Info, 0, k+1)
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.RLock()
		for id, r := range sh.rooms {
			ri := Info{ID: id, Members: r.total}
			if len(top) == k && !better(ri, top[k-1]) {
				continue
			}
			j := len(top)
			for j > 0 && better(ri, top[j-1]) {
				j--
			}
			top = slices.Insert(top, j, ri)
			if len(top) > k {
				top = top[:k]
			}
		}
		sh.mu.RUnlock()
	}
	return top
}
