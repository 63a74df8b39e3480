package chat

import (
	"fmt"

	"github.com/throng-ws/throng/handoff"
	"github.com/throng-ws/throng/server"
)

// The chat endpoint's state in a handoff (server.HandoffHandler): a
// connection's rate-limit bucket and ban, and its rooms with the name it
// joined each under. The new process puts it back in the same rooms without
// a user-joined, as it never left.

// chatStateFormat versions the record below; server.HandoffFormat versions
// the whole batch.
const chatStateFormat = 1

// ExportConn implements server.HandoffHandler.
func (h *Handler) ExportConn(c *server.Conn, dst []byte) []byte {
	cc, ok := c.Data().(*chatConn)
	if !ok {
		return dst // never sent a message: nothing to carry
	}
	e := handoff.Enc{B: dst}
	e.Uint(chatStateFormat)
	cc.rate.AppendHandoff(&e)
	e.Uint(uint64(cc.rooms()))
	for i := range cc.rooms() {
		m := cc.at(i)
		e.String(m.Room())
		e.String(m.Name)
	}
	return e.B
}

// ImportConn implements server.HandoffHandler.
func (h *Handler) ImportConn(c *server.Conn, state []byte) error {
	d := handoff.Dec{B: state}
	if v := d.Uint(); v != chatStateFormat {
		return fmt.Errorf("chat: state of format %d, this process reads %d", v, chatStateFormat)
	}
	cc := h.state(c)
	cc.rate.ReadHandoff(&d)
	n := d.Uint()
	if d.Err() != nil {
		return d.Err()
	}
	for ; n > 0; n-- {
		id, name := d.String(), d.String()
		if d.Err() != nil {
			return d.Err()
		}
		if h.Rooms == nil {
			return fmt.Errorf("chat: connection in room %q, and this process has no rooms", id)
		}
		m := cc.newMember(cc.name([]byte(name)), c.SharesDeflated())
		count, err := h.Rooms.Join(c.Loop().Index(), id, m)
		if err != nil {
			return fmt.Errorf("chat: rejoin %q: %w", id, err)
		}
		cc.add(m)
		h.changed(id, count)
	}
	return nil
}

var _ server.HandoffHandler = (*Handler)(nil)

// cursorsFormat versions the "cursors" part below.
const cursorsFormat = 1

// userRatePart names the per-user rate's part (server.KeyedLimitFormat).
const userRatePart = "user-rate"

// HandoffState lists the handler's parts of a handoff's application state
// (handoff.StatePart): the users' rate buckets, so that a user at its limit
// gets no fresh burst from an upgrade; this node's history store, so that
// the rooms keep their epochs and offsets; in a cluster, the rooms' delivery
// cursors, so that a join on the new process reports the offset it would
// have on the old one. Call it with the server frozen.
func (h *Handler) HandoffState() []handoff.StatePart {
	var parts []handoff.StatePart
	if users := h.userLimit(); users != nil {
		parts = append(parts, users.HandoffPart(userRatePart, func(e *handoff.Enc, user string) { e.String(user) }))
	}
	if h.History != nil {
		parts = append(parts, h.History.HandoffPart())
	}
	if h.Cluster != nil {
		parts = append(parts, handoff.StatePart{Name: "cursors", Format: cursorsFormat, Export: h.exportCursors()})
	}
	return parts
}

// HandoffImporters takes what HandoffState sends, in the new process.
// The users' buckets are taken whatever this process's settings (without a
// per-user limit, read and dropped), so that a change of --user-rate does
// not refuse the upgrade.
func (h *Handler) HandoffImporters() []handoff.StateImporter {
	ims := []handoff.StateImporter{h.userLimit().HandoffImporter(userRatePart, func(d *handoff.Dec) (string, error) {
		user := d.String()
		return user, d.Err()
	})}
	if h.History != nil {
		ims = append(ims, h.History.HandoffImporter())
	}
	if h.Cluster != nil {
		ims = append(ims, handoff.StateImporter{Name: "cursors", Format: cursorsFormat, Import: h.importCursors})
	}
	return ims
}

// exportCursors returns the cursors' part: the rooms are listed at the
// first chunk, and each chunk holds about max bytes of them.
func (h *Handler) exportCursors() func(dst []byte, max int) ([]byte, bool, error) {
	var ids []string
	listed := false
	return func(dst []byte, max int) ([]byte, bool, error) {
		h.cur.mu.Lock()
		defer h.cur.mu.Unlock()
		if !listed {
			listed = true
			for id := range h.cur.m {
				ids = append(ids, id)
			}
		}
		e := handoff.Enc{B: dst}
		start := len(dst)
		for len(ids) > 0 && len(e.B)-start < max {
			id := ids[0]
			ids = ids[1:]
			c := h.cur.m[id]
			if c == nil {
				continue
			}
			c.mu.Lock()
			e.String(id)
			e.Uint(c.last)
			e.Uint(c.lastMsg)
			c.mu.Unlock()
		}
		return e.B, len(ids) == 0, nil
	}
}

func (h *Handler) importCursors(chunk []byte, _ bool) error {
	d := handoff.Dec{B: chunk}
	h.cur.mu.Lock()
	defer h.cur.mu.Unlock()
	if h.cur.m == nil {
		h.cur.m = make(map[string]*cursor)
	}
	for len(d.B) > 0 {
		id, last, lastMsg := d.String(), d.Uint(), d.Uint()
		if d.Err() != nil {
			return fmt.Errorf("chat: cursors: %w", d.Err())
		}
		h.cur.m[id] = &cursor{last: last, lastMsg: lastMsg}
	}
	return nil
}
