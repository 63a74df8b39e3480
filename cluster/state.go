package cluster

import (
	"encoding/json"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/throng-ws/throng/room"
)

// stateMsg is one message of a node's state stream on PREFIX.state. Every
// message carries the node's incarnation and the next number of its sequence,
// so a receiver sees any loss as a gap. Counts are absolute, never increments:
// applying one twice, or after a snapshot that already had it, changes
// nothing, and 0 removes the entry.
type stateMsg struct {
	Node string `json:"node"`
	Inc  uint64 `json:"inc"`  // the node's incarnation: a restart starts a new sequence
	Seq  uint64 `json:"seq"`  // 1, 2, 3… within the incarnation
	Sent int64  `json:"sent"` // unix ns, for the lag
	Kind string `json:"kind"`
	// Conns is the node's open connections, on heartbeats, for the
	// operators' dashboard; 0 when Options.Conns is not set.
	Conns int64 `json:"conns,omitempty"`
	// First and Last mark a snapshot's first and last parts; a snapshot that
	// fits one message has both.
	First bool             `json:"first,omitempty"`
	Last  bool             `json:"last,omitempty"`
	Rooms map[string]int32 `json:"rooms,omitempty"` // room id → local members
	Users map[string]int32 `json:"users,omitempty"` // user id → local connections
}

// State message kinds.
const (
	kindHeartbeat = "hb"    // nothing but the sequence and the time: the canary
	kindDelta     = "delta" // counts that changed
	kindSnap      = "snap"  // every count: replaces what the receiver had
	kindBye       = "bye"   // the node is leaving; drop it now
)

// maxStateBytes bounds a state message's counts, well under the broker's 1 MiB
// payload limit; a larger snapshot or delta goes in parts.
const maxStateBytes = 256 << 10

// peerTable is what this node knows of the others: their counts, as their
// state streams said, and the canary's figures. The worker is its only
// writer; loops and the API read it.
type peerTable struct {
	self      string
	deadAfter time.Duration

	mu sync.RWMutex
	m  map[string]*peer // by node id; guarded by mu
}

// peer is one other node. Every field is guarded by peerTable.mu.
type peer struct {
	id     string
	inc    uint64
	next   uint64 // the sequence number expected next
	synced bool   // rooms and users are whole: a snapshot came and no gap since
	heard  time.Time
	asked  time.Time // when this node last asked it for a snapshot

	rooms, users map[string]int32
	// A snapshot in parts is gathered here and replaces rooms and users at its
	// last part; nil when none is under way.
	pendRooms, pendUsers map[string]int32

	conns    int64         // open connections, as its last heartbeat said
	lag      time.Duration // from its last message's send time to its receipt
	received uint64        // state messages received
	lost     uint64        // state messages missing from its sequence
}

func (t *peerTable) init(self string, deadAfter time.Duration) {
	t.self, t.deadAfter, t.m = self, deadAfter, make(map[string]*peer)
}

func (t *peerTable) live(p *peer, now time.Time) bool { return now.Sub(p.heard) < t.deadAfter }

// applied says what a state message changed.
type applied struct {
	ask    bool // the peer's counts are not whole: ask it for a snapshot
	joined bool // a node, or a new incarnation of one, was first heard
	left   bool // the node said goodbye
	// replaced is the incarnation a new incarnation of the node replaced, or 0.
	replaced uint64
}

// apply takes in one state message from another node. A node is asked for a
// snapshot at most once per askEvery while its counts are not whole.
func (t *peerTable) apply(m *stateMsg, now time.Time, askEvery time.Duration) (a applied) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.m[m.Node]
	switch {
	case p != nil && m.Inc < p.inc:
		return a // a straggler from the node's previous life
	case p != nil && m.Inc == p.inc && m.Seq < p.next:
		return a // already had it
	case p == nil || m.Inc != p.inc:
		if p != nil {
			a.replaced = p.inc
		}
		if m.Kind == kindBye {
			delete(t.m, m.Node)
			return a
		}
		p = &peer{id: m.Node, inc: m.Inc, next: m.Seq, rooms: map[string]int32{}, users: map[string]int32{}}
		t.m[m.Node] = p
		a.joined = true
	}
	if m.Seq > p.next {
		p.lost += m.Seq - p.next
		p.synced = false
		p.pendRooms, p.pendUsers = nil, nil
	}
	p.next = m.Seq + 1
	p.received++
	p.heard = now
	p.lag = max(0, now.Sub(time.Unix(0, m.Sent)))
	switch m.Kind {
	case kindBye:
		delete(t.m, m.Node)
		a.left = true
		return a
	case kindHeartbeat:
		p.conns = m.Conns
	case kindDelta:
		applyCounts(p.rooms, m.Rooms)
		applyCounts(p.users, m.Users)
	case kindSnap:
		if m.First {
			p.pendRooms, p.pendUsers = make(map[string]int32, len(m.Rooms)), make(map[string]int32, len(m.Users))
		}
		if p.pendRooms != nil {
			applyCounts(p.pendRooms, m.Rooms)
			applyCounts(p.pendUsers, m.Users)
			if m.Last {
				p.rooms, p.users = p.pendRooms, p.pendUsers
				p.pendRooms, p.pendUsers = nil, nil
				p.synced = true
			}
		}
	}
	if !p.synced && now.Sub(p.asked) >= askEvery {
		p.asked = now
		a.ask = true
	}
	return a
}

func applyCounts(dst, src map[string]int32) {
	for k, v := range src {
		if v > 0 {
			dst[k] = v
		} else {
			delete(dst, k)
		}
	}
}

// sweep forgets the nodes not heard from for deadAfter and returns their ids.
// Reads already leave them out; this frees their tables.
func (t *peerTable) sweep(now time.Time) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var dead []string
	for id, p := range t.m {
		if !t.live(p, now) {
			delete(t.m, id)
			dead = append(dead, id)
		}
	}
	return dead
}

// room is roomID's members on the live nodes.
func (t *peerTable) room(roomID string, now time.Time) int {
	return t.sum(now, func(p *peer) int32 { return p.rooms[roomID] })
}

// user is user's connections on the live nodes.
func (t *peerTable) user(user string, now time.Time) int {
	return t.sum(now, func(p *peer) int32 { return p.users[user] })
}

// sum adds count over the live nodes.
func (t *peerTable) sum(now time.Time, count func(*peer) int32) int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n := 0
	for _, p := range t.m {
		if t.live(p, now) {
			n += int(count(p))
		}
	}
	return n
}

// withRoom is the live nodes with members in roomID.
func (t *peerTable) withRoom(roomID string, now time.Time) map[string]bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var ids map[string]bool
	for id, p := range t.m {
		if t.live(p, now) && p.rooms[roomID] > 0 {
			if ids == nil {
				ids = make(map[string]bool)
			}
			ids[id] = true
		}
	}
	return ids
}

// list is the rooms of the live nodes with ids after after, with their
// members summed over the nodes, in no order.
func (t *peerTable) list(after string, now time.Time) []room.Info {
	t.mu.RLock()
	defer t.mu.RUnlock()
	sum := make(map[string]int)
	for _, p := range t.m {
		if !t.live(p, now) {
			continue
		}
		for id, c := range p.rooms {
			if id > after {
				sum[id] += int(c)
			}
		}
	}
	out := make([]room.Info, 0, len(sum))
	for id, c := range sum {
		out = append(out, room.Info{ID: id, Members: c})
	}
	return out
}

// PeerStatus is what a node knows of another, live one: the canary's figures
// and the size of its announced state.
type PeerStatus struct {
	ID string
	// Synced: its counts are whole (a snapshot arrived, and no gap since).
	Synced bool
	// Silence is the time since its last message; it grows past the heartbeat
	// when the broker or the node stalls.
	Silence time.Duration
	// Lag is the time its last message took, send to receipt (clock offset
	// between hosts included).
	Lag time.Duration
	// Received and Lost count its state messages: those that came, and the
	// gaps in its sequence.
	Received, Lost uint64
	// Rooms and Members are its announced rooms and their members.
	Rooms, Members int
	// Conns is its open connections, as its last heartbeat said (0 if it does
	// not announce them).
	Conns int64
}

// status lists the live nodes.
func (t *peerTable) status(now time.Time) []PeerStatus {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]PeerStatus, 0, len(t.m))
	for _, p := range t.m {
		if !t.live(p, now) {
			continue
		}
		s := PeerStatus{ID: p.id, Synced: p.synced, Silence: now.Sub(p.heard), Lag: p.lag,
			Received: p.received, Lost: p.lost, Rooms: len(p.rooms), Conns: p.conns}
		for _, c := range p.rooms {
			s.Members += int(c)
		}
		out = append(out, s)
	}
	return out
}

// Peers lists the live nodes this node hears, with the canary's figures.
func (n *Node) Peers() []PeerStatus { return n.peers.status(time.Now()) }

// work is the worker goroutine: it publishes the heartbeat, announces the
// rooms and users whose local counts changed (subscribing to a room's subject
// on its first local member and unsubscribing on its last), takes in the
// other nodes' state streams, publishes a snapshot when asked, and forgets
// the nodes gone silent.
func (n *Node) work() {
	t := time.NewTicker(n.opts.Heartbeat)
	defer t.Stop()
	// The first message is a snapshot, so the others have this node whole at
	// once. If the broker is not there yet, connecting asks for another. A
	// successor is that node already: it publishes once it takes over.
	if !n.quiet() {
		n.publishSnapshot()
	}
	for {
		select {
		case <-n.bg.Quit():
			return
		case f := <-n.workCtl:
			f()
		case m := <-n.state:
			n.onState(m)
			for range 255 { // take what else is queued before announcing
				select {
				case m := <-n.state:
					n.onState(m)
					continue
				default:
				}
				break
			}
		case <-n.wake:
		case <-t.C:
			if !n.quiet() {
				n.heartbeat()
			}
			for _, id := range n.peers.sweep(time.Now()) {
				n.nodeGone(id, 0, !n.quiet())
				n.c.peersDead.Add(1)
				n.log.Warn("cluster: node silent; dropped from every count", "peer", id, "dead_after", n.opts.DeadAfter)
			}
		}
		if n.quiet() {
			n.flushDirty() // a successor's interest; nothing is published
			continue
		}
		if n.resync.Swap(false) {
			n.snapWant, n.lastSnap = true, time.Time{}
		}
		n.flushDirty()
		// Requests for a snapshot come from every node that saw a gap, and
		// after a broker outage that is all of them at once: one snapshot per
		// half heartbeat serves them all.
		if n.snapWant && time.Since(n.lastSnap) >= n.opts.Heartbeat/2 {
			n.publishSnapshot()
		}
	}
}

// heartbeat publishes the canary's message.
func (n *Node) heartbeat() {
	hb := &stateMsg{Kind: kindHeartbeat}
	if n.opts.Conns != nil {
		hb.Conns = int64(n.opts.Conns())
	}
	n.publishState(hb)
}

// quiet reports whether the worker must publish nothing and write nothing to
// the members here: a successor before Activate, or a node paused for a
// handoff. Called by the worker.
func (n *Node) quiet() bool { return n.wPaused || n.standby.Load() }

// onState takes in a message on the state subject or this node's sync
// subject.
func (n *Node) onState(m *nats.Msg) {
	if m.Subject == n.syncSubj {
		n.snapWant = true
		n.c.snapAsked.Add(1)
		return
	}
	var s stateMsg
	if err := json.Unmarshal(m.Data, &s); err != nil || !validToken(s.Node) {
		n.c.badState.Add(1)
		return
	}
	if s.Node == n.id {
		// The broker never echoes this node's own messages: another process
		// has its id. Said once per impostor.
		if s.Inc != n.inc && s.Inc != n.dupInc {
			n.dupInc = s.Inc
			n.log.Error("cluster: another node uses this node's id; counts will be wrong", "inc", s.Inc)
		}
		return
	}
	a := n.peers.apply(&s, time.Now(), n.opts.Heartbeat)
	switch {
	case a.joined:
		n.log.Info("cluster: node joined", "peer", s.Node)
	case a.left:
		n.nodeGone(s.Node, 0, false)
		n.log.Info("cluster: node left", "peer", s.Node)
	}
	if a.replaced != 0 {
		// The node came back before it was counted dead: the connections of
		// its previous life went with it.
		n.nodeGone(s.Node, a.replaced, !n.quiet())
	}
	if a.ask {
		n.c.snapRequests.Add(1)
		n.nc.Publish(n.syncPrefix+s.Node, nil)
	}
}

// flushDirty announces the rooms and users whose local counts changed since
// the last call, and subscribes to or unsubscribes from the rooms that gained
// their first or lost their last local member. The counts are read now, from
// the room table and the user table: whatever order the loops marked them in,
// the last announcement has the last count.
func (n *Node) flushDirty() {
	if n.wPaused {
		return // handed over: the successor announces
	}
	n.dmu.Lock()
	if len(n.dirtyRooms) == 0 && len(n.dirtyUsers) == 0 {
		n.dmu.Unlock()
		return
	}
	rooms, users := n.dirtyRooms, n.dirtyUsers
	n.dirtyRooms, n.dirtyUsers = make(map[string]struct{}), make(map[string]struct{})
	n.dmu.Unlock()

	b := stateBuilder{emit: n.publishState, kind: kindDelta}
	if n.standby.Load() {
		// A successor takes the rooms its imported connections joined; what
		// the counts are, its predecessor announced.
		b.emit = func(*stateMsg) {}
	}
	for id := range rooms {
		c := n.rooms.Count(id)
		if n.setInterest(id, c) {
			b.room(id, c)
		}
	}
	for u := range users {
		b.user(u, n.users.Count(u))
	}
	b.finish()
}

// setInterest subscribes to roomID's subject if it has local members and
// unsubscribes if not, and records its count; it reports whether the count
// changed. The lock is held across the subscription so that the inbound
// goroutine, which checks a message's subscription against this map, cannot
// see a message of the new subscription before the map has it.
func (n *Node) setInterest(roomID string, count int) bool {
	n.imu.Lock()
	defer n.imu.Unlock()
	it := n.interest[roomID]
	switch {
	case count > 0 && it == nil && n.standby.Load():
		// A successor listens to every room until it takes over (handoff.go).
		n.remote.track(roomID)
		n.interest[roomID] = &interest{count: count}
		n.fetches.Add(1)
		go func() {
			defer n.fetches.Done()
			n.fetchMembers(roomID)
		}()
		return true
	case count > 0 && it == nil:
		n.remote.track(roomID)
		sub, err := n.nc.ChanSubscribe(n.RoomSubject(roomID), n.in)
		if err != nil {
			n.remote.forget(roomID)
			n.log.Warn("cluster: cannot subscribe to a room", "room", roomID, "err", err)
			return false
		}
		n.interest[roomID] = &interest{sub: sub, count: count}
		// Learn the members the other nodes had before this one listened.
		n.fetches.Add(1)
		go func() {
			defer n.fetches.Done()
			n.fetchMembers(roomID)
		}()
		return true
	case count > 0:
		if it.count == count {
			return false
		}
		it.count = count
		return true
	case it != nil:
		if it.sub != nil {
			if d, err := it.sub.Dropped(); err == nil {
				n.c.droppedGone.Add(uint64(d))
			}
			it.sub.Unsubscribe()
		}
		delete(n.interest, roomID)
		n.remote.forget(roomID)
		return true
	}
	return false
}

// publishSnapshot publishes every local count, in as many parts as it takes.
func (n *Node) publishSnapshot() {
	n.flushDirty()
	b := stateBuilder{emit: n.publishState, kind: kindSnap}
	n.imu.Lock()
	for id, it := range n.interest {
		b.room(id, it.count)
	}
	n.imu.Unlock()
	n.users.Each(b.user)
	b.finish()
	n.snapWant, n.lastSnap = false, time.Now()
	n.c.snapshots.Add(1)
}

// publishState numbers m and publishes it on the state subject. A message the
// broker does not take still uses its number: the others see the gap.
func (n *Node) publishState(m *stateMsg) {
	if n.quiet() {
		return // the predecessor's or the successor's sequence, not this one's
	}
	n.seq++
	m.Node, m.Inc, m.Seq, m.Sent = n.id, n.inc, n.seq, time.Now().UnixNano()
	b, err := json.Marshal(m)
	if err == nil {
		err = n.nc.Publish(n.stateSubj, b)
	}
	if err != nil {
		n.c.stateLost.Add(1)
		return
	}
	n.c.statePublished.Add(1)
}

// stateBuilder gathers counts into delta or snapshot messages of at most about
// maxStateBytes each.
type stateBuilder struct {
	emit  func(*stateMsg)
	kind  string
	msg   *stateMsg
	size  int
	parts int
}

// entrySize bounds an entry's JSON: every byte of the key escaped as \u00XX,
// the quotes, the colon, the number and the comma.
func entrySize(key string) int { return 6*len(key) + 16 }

func (b *stateBuilder) room(id string, c int) {
	b.ensure()
	b.msg.Rooms[id] = int32(c)
	b.grow(entrySize(id))
}

func (b *stateBuilder) user(u string, c int) {
	b.ensure()
	b.msg.Users[u] = int32(c)
	b.grow(entrySize(u))
}

func (b *stateBuilder) ensure() {
	if b.msg == nil {
		b.msg = &stateMsg{Kind: b.kind, Rooms: map[string]int32{}, Users: map[string]int32{}}
	}
}

func (b *stateBuilder) grow(n int) {
	b.size += n
	if b.size >= maxStateBytes {
		b.send(false)
	}
}

func (b *stateBuilder) send(last bool) {
	b.ensure()
	if b.kind == kindSnap {
		b.msg.First, b.msg.Last = b.parts == 0, last
	}
	b.emit(b.msg)
	b.msg, b.size = nil, 0
	b.parts++
}

// finish sends what is left. A snapshot always ends with a Last part, even an
// empty one; a delta with nothing in it is not sent.
func (b *stateBuilder) finish() {
	if b.msg != nil || b.kind == kindSnap {
		b.send(true)
	}
}
