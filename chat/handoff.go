package chat

import (
	"fmt"

	"github.com/throng-ws/throng/handoff"
	"github.com/throng-ws/throng/room"
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
	e.Uint(uint64(len(cc.rooms)))
	for _, m := range cc.rooms {
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
		m := &room.Member{Sink: cc, Name: name}
		count, err := h.Rooms.Join(c.Loop().Index(), id, m)
		if err != nil {
			return fmt.Errorf("chat: rejoin %q: %w", id, err)
		}
		cc.rooms = append(cc.rooms, m)
		h.changed(id, count)
	}
	return nil
}

var _ server.HandoffHandler = (*Handler)(nil)
