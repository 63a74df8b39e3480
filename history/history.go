// Package history keeps each room's recent messages on one node, so a client
// that reconnects gets what it missed and one that joins sees what was said.
//
// A room's history is a Log: its epoch (a random name given when the log is
// made, so a restart or a forgotten room never reuses one), the offset its next
// message gets (1, 2, 3, …), and its newest messages as complete protocol
// payloads. It is bounded three ways: Size messages per room, TTL per message,
// and a Memory budget over all rooms that evicts the oldest messages of the
// node first. Every cost is per room and per message: a room's members are
// not known here.
//
// The chat handler holds a room's Log (Store.Lock) while it numbers a message,
// appends it and hands it to the room table, and while it adds a member and
// reads what that member missed. So the order of the offsets is the order in
// which the members receive the messages, and a joiner gets each message once:
// from the history if it was appended before the join, live if after.
package history

import (
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/throng-ws/throng/internal/bg"
)

// Options configures a Store. The zero value works.
type Options struct {
	// Size bounds a room's history, in messages. If zero, DefaultSize is used.
	Size int
	// TTL is how long a message is kept. If zero, DefaultTTL is used.
	TTL time.Duration
	// Memory bounds the bytes of all rooms' histories (payloads plus
	// EntryOverhead each); past it the node's oldest messages are evicted. If
	// zero, DefaultMemory is used.
	Memory int64
	// Live reports whether a room still has members here; a room's log is kept
	// while it does, even when it holds no message, so its epoch and offsets
	// survive a quiet spell. If nil, a log with no message is forgotten once
	// it has been idle for the TTL.
	Live func(roomID string) bool
	// SweepInterval is how often expired messages and forgotten rooms are
	// dropped. If zero, DefaultSweepInterval is used.
	SweepInterval time.Duration
	// Now tells the time. If nil, time.Now is used.
	Now func() time.Time
}

// Defaults for Options.
const (
	DefaultSize          = 100
	DefaultTTL           = time.Hour
	DefaultMemory        = 64 << 20
	DefaultSweepInterval = time.Second
	// EntryOverhead is what a message costs besides its payload, counted
	// against Memory: the entry and its slot in the room's ring.
	EntryOverhead = 96
)

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("history: store closed")

// Store holds every room's Log.
type Store struct {
	size   int
	ttl    time.Duration
	memory int64
	live   func(string) bool
	now    func() time.Time
	sweep  time.Duration

	// mu guards rooms, every log's entries, the node-wide queue and the
	// counters below it. It is held only for short steps: appends, evictions
	// and copies of slices; never while writing to a socket. It is taken inside
	// a Log's mu, never the other way round.
	mu      sync.Mutex
	rooms   map[string]*Log
	oldest  *entry // the node's oldest message: the head of the queue
	newest  *entry
	bytes   int64
	entries int
	idle    []*Log // logs that were empty when last looked at: the sweep's candidates

	evictSize, evictTTL, evictMemory, forgotten atomic.Uint64

	bg bg.Group
}

// Log is one room's history. A Log returned by Store.Lock is held until
// Unlock: the holder numbers and appends messages, and reads the history, in
// one step that no other message of the room can cut into.
type Log struct {
	s     *Store
	id    string
	epoch string

	// mu orders the room: held from numbering a message until it is handed to
	// the room table, and while a member joins. Taken before Store.mu and the
	// room table's locks.
	mu   sync.Mutex
	dead bool // guarded by mu and Store.mu: forgotten, look it up again

	// Guarded by Store.mu; next is also written only under mu, so the holder
	// reads it without Store.mu.
	next  uint64   // the offset of the next message
	ring  []*entry // oldest first, from head
	head  int
	last  time.Time // last append or lock
	isIdl bool      // in Store.idle
}

type entry struct {
	log        *Log
	offset     uint64
	at         int64 // unix nanoseconds
	payload    []byte
	prev, next *entry // the node-wide queue, oldest first
}

// New makes a Store. Start runs its sweep.
func New(o Options) *Store {
	s := &Store{size: o.Size, ttl: o.TTL, memory: o.Memory, live: o.Live, now: o.Now, sweep: o.SweepInterval,
		rooms: make(map[string]*Log)}
	if s.size <= 0 {
		s.size = DefaultSize
	}
	if s.ttl <= 0 {
		s.ttl = DefaultTTL
	}
	if s.memory <= 0 {
		s.memory = DefaultMemory
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.sweep <= 0 {
		s.sweep = DefaultSweepInterval
	}
	return s
}

// Size is the most messages a room keeps.
func (s *Store) Size() int { return s.size }

// Start runs the sweep, which drops expired messages and forgotten rooms,
// until Close.
func (s *Store) Start() error {
	if !s.bg.Go(s.sweeper) {
		return ErrClosed
	}
	return nil
}

// Close stops the sweep and waits for it.
func (s *Store) Close() { s.bg.Stop() }

func (s *Store) sweeper() {
	t := time.NewTicker(s.sweep)
	defer t.Stop()
	for {
		select {
		case <-s.bg.Quit():
			return
		case <-t.C:
			s.Sweep()
		}
	}
}

// NewEpoch returns a fresh random epoch.
func NewEpoch() string {
	return strconv.FormatUint(rand.Uint64(), 36)
}

// Lock returns room id's Log, made with a new epoch if the room has none, and
// holds it until Unlock.
func (s *Store) Lock(id string) *Log {
	for {
		s.mu.Lock()
		l := s.rooms[id]
		if l == nil {
			l = &Log{s: s, id: id, epoch: NewEpoch(), next: 1}
			s.rooms[id] = l
			s.markIdleLocked(l)
		}
		l.last = s.now()
		s.mu.Unlock()
		l.mu.Lock()
		if !l.dead {
			return l
		}
		l.mu.Unlock()
	}
}

// Unlock releases the Log.
func (l *Log) Unlock() { l.mu.Unlock() }

// Epoch is the log's epoch.
func (l *Log) Epoch() string { return l.epoch }

// Next is the offset the next appended message gets.
func (l *Log) Next() uint64 { return l.next }

// Latest is the offset of the newest message ever appended, 0 if none.
func (l *Log) Latest() uint64 { return l.next - 1 }

// Append keeps payload (copied) as the message with offset Next, and moves
// Next on. It evicts what the bounds require.
func (l *Log) Append(payload []byte) { l.appendAt(payload, l.s.now()) }

// evictLocked drops e, which is the oldest message of its room.
func (s *Store) evictLocked(e *entry) {
	l := e.log
	l.ring[l.head] = nil
	l.head++
	if l.head == len(l.ring) {
		l.ring, l.head = l.ring[:0], 0
		s.markIdleLocked(l)
	} else if l.head >= 32 && l.head*2 >= len(l.ring) {
		n := copy(l.ring, l.ring[l.head:])
		clear(l.ring[n:])
		l.ring, l.head = l.ring[:n], 0
	}
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		s.oldest = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		s.newest = e.prev
	}
	e.prev, e.next, e.log = nil, nil, nil
	s.bytes -= int64(len(e.payload)) + EntryOverhead
	s.entries--
}

func (s *Store) markIdleLocked(l *Log) {
	if !l.isIdl {
		l.isIdl = true
		s.idle = append(s.idle, l)
	}
}

// liveLocked returns the log's messages younger than the TTL, oldest first.
// The slice is the log's own: read it under s.mu only. The payloads are never
// changed, so they may be kept after.
func (l *Log) liveLocked(now time.Time) []*entry {
	es := l.ring[l.head:]
	cut := now.Add(-l.s.ttl).UnixNano()
	i := 0
	for i < len(es) && es[i].at < cut {
		i++
	}
	return es[i:]
}

// Recover returns the messages after offset if the log is of epoch and still
// holds every one of them, in order, and reports whether it did. max bounds
// them: a longer gap is not recovered.
func (l *Log) Recover(offset uint64, epoch string, max int) ([][]byte, bool) {
	if epoch != l.epoch || offset > l.Latest() {
		return nil, false
	}
	if offset == l.Latest() {
		return nil, true
	}
	s := l.s
	s.mu.Lock()
	defer s.mu.Unlock()
	es := l.liveLocked(s.now())
	if len(es) == 0 || es[0].offset > offset+1 {
		return nil, false
	}
	i := int(offset + 1 - es[0].offset)
	if len(es)-i > max {
		return nil, false
	}
	out := make([][]byte, 0, len(es)-i)
	for _, e := range es[i:] {
		out = append(out, e.payload)
	}
	return out, true
}

// Page returns up to limit of the messages before offset before (0: the
// newest), oldest first, and whether older ones remain.
func (l *Log) Page(before uint64, limit int) (msgs [][]byte, more bool) {
	s := l.s
	s.mu.Lock()
	defer s.mu.Unlock()
	es := l.liveLocked(s.now())
	end := len(es)
	if before > 0 {
		for end > 0 && es[end-1].offset >= before {
			end--
		}
	}
	start := max(0, end-limit)
	if end <= start {
		return nil, start > 0
	}
	msgs = make([][]byte, 0, end-start)
	for _, e := range es[start:end] {
		msgs = append(msgs, e.payload)
	}
	return msgs, start > 0
}

// Page is Log.Page for room id without holding its Log: for readers that
// need no ordering against the room's messages. ok is false if the room has
// no log.
func (s *Store) Page(id string, before uint64, limit int) (epoch string, latest uint64, msgs [][]byte, more, ok bool) {
	s.mu.Lock()
	l := s.rooms[id]
	if l == nil {
		s.mu.Unlock()
		return "", 0, nil, false, false
	}
	epoch, latest = l.epoch, l.next-1
	s.mu.Unlock()
	msgs, more = l.Page(before, limit)
	return epoch, latest, msgs, more, true
}

// Sweep drops the messages older than the TTL, and forgets the logs that hold
// no message, have not been used for the TTL and whose room has no member
// here. The sweeper calls it; tests may too.
func (s *Store) Sweep() {
	now := s.now()
	cut := now.Add(-s.ttl).UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.oldest != nil && s.oldest.at < cut {
		s.evictLocked(s.oldest)
		s.evictTTL.Add(1)
	}
	keep := s.idle[:0]
	for _, l := range s.idle {
		switch {
		case len(l.ring) > l.head:
			l.isIdl = false // it has messages again; an eviction brings it back
		case now.Sub(l.last) < s.ttl || (s.live != nil && s.live(l.id)) || !l.mu.TryLock():
			keep = append(keep, l)
		default:
			l.dead = true
			l.isIdl = false
			delete(s.rooms, l.id)
			l.mu.Unlock()
			s.forgotten.Add(1)
		}
	}
	clear(s.idle[len(keep):])
	s.idle = keep
}

// Stats are the store's figures.
type Stats struct {
	Rooms    int    // rooms with a log
	Messages int    // messages kept
	Bytes    int64  // payloads plus EntryOverhead each
	Limit    int64  // the Memory budget
	Forgot   uint64 // logs forgotten: their rooms start a new epoch
	// Evictions by reason: the room's Size, the TTL, the Memory budget.
	EvictedSize, EvictedTTL, EvictedMemory uint64
}

// Stats returns the store's figures.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	st := Stats{Rooms: len(s.rooms), Messages: s.entries, Bytes: s.bytes, Limit: s.memory}
	s.mu.Unlock()
	st.Forgot = s.forgotten.Load()
	st.EvictedSize, st.EvictedTTL, st.EvictedMemory = s.evictSize.Load(), s.evictTTL.Load(), s.evictMemory.Load()
	return st
}
