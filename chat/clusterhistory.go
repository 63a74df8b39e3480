package chat

import (
	"context"
	"sync"
	"time"

	"github.com/valyala/bytebufferpool"

	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/room"
)

// In a cluster with history, a room's messages reach this node's members only
// from the stream, in its order (DeliverStream), and a join is ordered against
// them by the room's cursor: the stream sequence up to which the room's
// messages have been handed to the room table here. A join that recovers
// reads the stream on a goroutine, then, back on its loop and under the
// cursor, sends what it read up to the cursor and joins; what comes after
// reaches it live. If the cursor has passed what was read (the node delivered
// more of the room meanwhile), it reads again from there first.

// cursors holds the cursors of the rooms with local members, and of rooms
// being delivered to or joined. Guarded by mu, taken before a cursor's own.
type cursors struct {
	mu sync.Mutex
	m  map[string]*cursor
}

type cursor struct {
	mu      sync.Mutex // held while a message is broadcast, and while a member joins
	last    uint64     // guarded by mu: every message of the stream up to it is delivered here
	lastMsg uint64     // guarded by mu: the room's last message delivered here, 0 if none yet
	refs    int        // guarded by cursors.mu
}

// cursor returns room id's cursor, held. A new one starts at pos, the node's
// delivery position: every message before it was delivered, to no member.
func (h *Handler) cursor(id string, pos uint64) *cursor {
	h.cur.mu.Lock()
	if h.cur.m == nil {
		h.cur.m = make(map[string]*cursor)
	}
	c := h.cur.m[id]
	if c == nil {
		c = &cursor{last: pos}
		h.cur.m[id] = c
	}
	c.refs++
	h.cur.mu.Unlock()
	c.mu.Lock()
	return c
}

// putCursor releases c, and forgets it if the room has no member here.
func (h *Handler) putCursor(id string, c *cursor) {
	c.mu.Unlock()
	h.unpin(id, c)
}

// pin keeps room id's cursor while a join reads the stream, so the messages
// the node delivers meanwhile move its lastMsg, which the join checks.
func (h *Handler) pin(id string, pos uint64) *cursor {
	c := h.cursor(id, pos)
	c.mu.Unlock()
	return c
}

// unpin drops a reference taken by cursor or pin.
func (h *Handler) unpin(id string, c *cursor) {
	h.cur.mu.Lock()
	c.refs--
	if c.refs == 0 && h.Rooms.Count(id) == 0 {
		delete(h.cur.m, id)
	}
	h.cur.mu.Unlock()
}

// clusterHistory returns the cluster's history if it is on.
func (h *Handler) clusterHistory() ClusterHistory {
	if h.History != nil || h.Cluster == nil {
		return nil
	}
	hc, ok := h.Cluster.(ClusterHistory)
	if !ok || !hc.HistoryOn() {
		return nil
	}
	return hc
}

// DeliverStream writes a message of the cluster's history stream, given its
// sequence, to this node's members of the room. The cluster calls it on its
// consumer goroutine, in the stream's order.
func (h *Handler) DeliverStream(roomID string, seq uint64, epoch string, payload []byte) {
	if h.Rooms == nil || len(payload) < 2 {
		return
	}
	b := bytebufferpool.Get()
	b.B = appendPosition(append(b.B[:0], payload[:len(payload)-1]...), seq, epoch)
	c := h.cursor(roomID, seq-1)
	h.broadcast(roomID, b.B, nil)
	c.last, c.lastMsg = seq, seq
	h.putCursor(roomID, c)
	bytebufferpool.Put(b)
}

// DeliverLive writes a message the history stream did not take to this
// node's members: it has no offset.
func (h *Handler) DeliverLive(roomID string, payload []byte) {
	if h.Rooms != nil {
		h.counts.liveOnly.Add(1)
		h.broadcast(roomID, payload, nil)
	}
}

// publishStream appends a message to the cluster's history; the members, here
// and elsewhere, get it from the stream.
func (h *Handler) publishStream(hc ClusterHistory, roomID string, payload []byte) delivery {
	if !hc.Append(roomID, payload) {
		h.counts.liveOnly.Add(1)
		return h.send(roomID, payload, nil)
	}
	return delivery{local: h.Rooms.Count(roomID), published: true}
}

// joinSync joins with the cluster's history on, when nothing is to be read:
// under the cursor, so the joined offset is where live delivery starts.
func (h *Handler) joinSync(hc ClusterHistory, cc *chatConn, m *room.Member, roomID string) (int, recovered, error) {
	c := h.cursor(roomID, hc.HistoryPosition())
	count, err := h.Rooms.Join(cc.c.Loop().Index(), roomID, m)
	rec := recovered{epoch: hc.HistoryEpoch(), latest: max(c.lastMsg, c.last)}
	if c.lastMsg > 0 {
		rec.latest = c.lastMsg
	}
	h.putCursor(roomID, c)
	return count, rec, err
}

// pendingJoin is a join waiting for the stream's answer.
type pendingJoin struct {
	cc   *chatConn
	room string
}

// joinAsync reads what a join asks for from the cluster's history on a
// goroutine, then finishes the join on the connection's loop.
func (h *Handler) joinAsync(hc ClusterHistory, cc *chatConn, m *room.Member, roomID string, req recoveryRequest) {
	key := pendingJoin{cc, roomID}
	h.pmu.Lock()
	if h.pending == nil {
		h.pending = make(map[pendingJoin]bool)
		h.anyPending.Store(true)
	}
	if h.pending[key] {
		h.pmu.Unlock()
		h.sendError(cc.c, protocol.CodeAlreadyInRoom, protocol.TextAlreadyInRoom, "")
		return
	}
	h.pending[key] = true
	h.pmu.Unlock()
	pinned := h.pin(roomID, hc.HistoryPosition())
	epoch := hc.HistoryEpoch()
	size := hc.HistorySize()
	var (
		msgs     []StreamMsg
		upTo     uint64
		complete bool
		err      error
	)
	read := func(after uint64, cont bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		switch {
		case cont:
			var more []StreamMsg
			more, upTo, _, err = hc.ReadAfter(ctx, roomID, after, size)
			msgs = append(msgs, more...)
		case req.since && req.pos.Epoch == epoch:
			msgs, upTo, complete, err = hc.ReadAfter(ctx, roomID, after, size)
			if len(msgs) > size {
				complete = false
			}
		}
		if err != nil {
			complete = false
		}
		if !complete && !cont && req.recent > 0 {
			msgs, upTo, _, err = hc.ReadBefore(ctx, roomID, 0, req.recent)
		} else if !complete && !cont {
			msgs = nil
		}
	}
	var finish func(round int)
	finish = func(round int) {
		h.pmu.Lock()
		live := h.pending[key]
		delete(h.pending, key)
		h.pmu.Unlock()
		if !live {
			h.unpin(roomID, pinned) // the connection closed meanwhile
			return
		}
		c := h.cursor(roomID, hc.HistoryPosition())
		if c.lastMsg > upTo && round < 5 && err == nil {
			// The room said more here since the read: read on from there.
			after := upTo
			h.putCursor(roomID, c)
			h.pmu.Lock()
			h.pending[key] = true
			h.pmu.Unlock()
			if !hc.Go(func() { read(after, true); h.post(cc, func() { finish(round + 1) }) }) {
				h.dropPending(cc)
				h.unpin(roomID, pinned)
			}
			return
		}
		h.unpin(roomID, pinned) // c holds it now
		count, jerr := h.Rooms.Join(cc.c.Loop().Index(), roomID, m)
		rec := recovered{ok: complete && err == nil, epoch: epoch}
		if jerr == nil {
			for _, sm := range msgs {
				if sm.Seq > c.last || len(sm.Payload) < 2 {
					continue // not delivered here yet: it comes live
				}
				p := appendPosition(append([]byte(nil), sm.Payload[:len(sm.Payload)-1]...), sm.Seq, epoch)
				rec.msgs = append(rec.msgs, p)
				rec.latest = sm.Seq
			}
			if rec.ok {
				rec.latest = max(rec.latest, req.pos.Offset)
			} else {
				rec.latest = max(rec.latest, c.lastMsg)
			}
			if rec.latest == 0 {
				rec.latest = c.last
			}
		}
		h.putCursor(roomID, c)
		if jerr != nil {
			h.sendError(cc.c, protocol.CodeRoomFull, protocol.TextRoomFull, "")
			return
		}
		h.finishJoin(cc, m, roomID, count, rec, req)
	}
	if !hc.Go(func() { read(req.pos.Offset, false); h.post(cc, func() { finish(0) }) }) {
		h.dropPending(cc)
		h.unpin(roomID, pinned)
		h.sendError(cc.c, protocol.CodeUnavailable, protocol.TextUnavailable, "")
	}
}

// post runs f on cc's loop.
func (h *Handler) post(cc *chatConn, f func()) {
	if !cc.c.Loop().Post(poller.FuncJob(f)) {
		h.dropPending(cc)
	}
}

// dropPending forgets cc's joins in flight: its connection closed.
func (h *Handler) dropPending(cc *chatConn) {
	h.pmu.Lock()
	for k := range h.pending {
		if k.cc == cc {
			delete(h.pending, k)
		}
	}
	h.pmu.Unlock()
}

// pendingRoom reports whether cc has a join of room id in flight.
func (h *Handler) pendingRoom(cc *chatConn, id []byte) bool {
	h.pmu.Lock()
	defer h.pmu.Unlock()
	return h.pending[pendingJoin{cc, string(id)}]
}
