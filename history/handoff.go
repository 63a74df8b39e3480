package history

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/throng-ws/throng/handoff"
)

// A zero-downtime upgrade (package handoff) moves the store to the new
// process, so that a room keeps its epoch and its offsets go on where they
// were: a client's recovery and history requests continue across the
// upgrade with no gap and no repeat. The old process exports it room by room
// in chunks of a bounded size, reading only; the new one imports it before
// it adopts any connection.

// HandoffFormat is the version of the encoding below. A process that reads
// another refuses the handoff.
const HandoffFormat = 1

// ErrImport is wrapped by the errors of Import.
var ErrImport = errors.New("history: handoff import")

// Exporter walks a store's rooms for a handoff. The rooms are listed when it
// is made; a room forgotten since is skipped.
type Exporter struct {
	s   *Store
	ids []string
}

// Exporter lists the rooms with a log now. Call it once nothing appends any
// more (the server is frozen for the handoff).
func (s *Store) Exporter() *Exporter {
	s.mu.Lock()
	ids := make([]string, 0, len(s.rooms))
	for id := range s.rooms {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	slices.Sort(ids)
	return &Exporter{s: s, ids: ids}
}

// Next appends rooms to dst until it holds about max bytes (at least one
// room, however big: at most Size messages), and reports whether every room
// has now been appended. A room is its id, epoch, next offset and live
// messages, each with its offset and time.
func (x *Exporter) Next(dst []byte, max int) ([]byte, bool) {
	e := handoff.Enc{B: dst}
	start := len(dst)
	s := x.s
	for len(x.ids) > 0 && (len(e.B) == start || len(e.B)-start < max) {
		id := x.ids[0]
		x.ids = x.ids[1:]
		s.mu.Lock()
		l := s.rooms[id]
		if l == nil {
			s.mu.Unlock()
			continue
		}
		es := l.liveLocked(s.now())
		e.String(id)
		e.String(l.epoch)
		e.Uint(l.next)
		e.Uint(uint64(len(es)))
		for _, en := range es {
			e.Uint(en.offset)
			e.Int(en.at)
			e.Bytes(en.payload)
		}
		s.mu.Unlock()
	}
	return e.B, len(x.ids) == 0
}

// Import takes one chunk Exporter.Next wrote: each room gets the old
// process's epoch, next offset and messages (their times kept, so the TTL
// runs on). A room that has a log here already has it replaced. The bounds
// of this store apply: what they do not allow is evicted, oldest first.
func (s *Store) Import(chunk []byte) error {
	d := handoff.Dec{B: chunk}
	for len(d.B) > 0 {
		id := d.String()
		epoch := d.String()
		next := d.Uint()
		n := d.Uint()
		if d.Err() != nil || epoch == "" || next == 0 || n > uint64(len(d.B)) {
			return fmt.Errorf("%w: %w", ErrImport, handoff.ErrCorrupt)
		}
		l := s.Lock(id)
		s.mu.Lock()
		for l.head < len(l.ring) {
			s.evictLocked(l.ring[l.head])
		}
		l.epoch = epoch
		s.mu.Unlock()
		var prev uint64
		for ; n > 0; n-- {
			off, at, p := d.Uint(), d.Int(), d.Bytes()
			if d.Err() != nil || off <= prev || off >= next {
				l.Unlock()
				return fmt.Errorf("%w: room %q: %w", ErrImport, id, handoff.ErrCorrupt)
			}
			prev = off
			l.next = off
			l.appendAt(p, time.Unix(0, at))
		}
		s.mu.Lock()
		l.next, l.last = next, s.now()
		s.mu.Unlock()
		l.Unlock()
	}
	return nil
}

// appendAt keeps payload (copied) as the message with offset Next, sent
// at at, moves Next on, and evicts what the bounds require. Held: l.
func (l *Log) appendAt(payload []byte, at time.Time) {
	s := l.s
	p := make([]byte, len(payload))
	copy(p, payload)
	e := &entry{log: l, offset: l.next, at: at.UnixNano(), payload: p}
	s.mu.Lock()
	defer s.mu.Unlock()
	l.next++
	l.last = at
	if len(l.ring)-l.head >= s.size {
		s.evictLocked(l.ring[l.head])
		s.evictSize.Add(1)
	}
	l.ring = append(l.ring, e)
	e.prev = s.newest
	if s.newest != nil {
		s.newest.next = e
	} else {
		s.oldest = e
	}
	s.newest = e
	s.bytes += int64(len(p)) + EntryOverhead
	s.entries++
	for s.bytes > s.memory && s.oldest != nil && s.oldest != e {
		s.evictLocked(s.oldest)
		s.evictMemory.Add(1)
	}
}

// HandoffPart is the store as a part of a handoff's state (old process).
func (s *Store) HandoffPart() handoff.StatePart {
	var x *Exporter
	return handoff.StatePart{Name: "history", Format: HandoffFormat,
		Export: func(dst []byte, max int) ([]byte, bool, error) {
			if x == nil {
				x = s.Exporter()
			}
			b, last := x.Next(dst, max)
			return b, last, nil
		}}
}

// HandoffImporter takes the part HandoffPart sends (new process).
func (s *Store) HandoffImporter() handoff.StateImporter {
	return handoff.StateImporter{Name: "history", Format: HandoffFormat,
		Import: func(chunk []byte, _ bool) error { return s.Import(chunk) }}
}
