package chat

import (
	"cmp"
	"math"
	"strconv"

	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fastjson"

	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// members answers {"type":"members","roomId":R} from a member of R with up to
// protocol.MaxMembersListed of the room's members on this node, one entry per
// connection, and the room's userCount. The loops each hold their part of the
// list, and this loop must not wait for the others: the room table gathers
// the parts with jobs, and the answer is written from this connection's loop
// once the last part is in. It is a request, not part of joined, so that a
// join costs no more than before and clients that never show the list (the
// seed's, the bench's) never pay for one.
func (h *Handler) members(cc *chatConn, v *fastjson.Value) {
	c := cc.c
	id, ok := h.roomID(c, v)
	if !ok {
		return
	}
	_, m := cc.member(id)
	if m == nil {
		h.sendError(c, protocol.CodeNotInRoom, protocol.TextNotInRoom, "")
		return
	}
	roomID := m.Room()
	h.Rooms.ListMembers(roomID, protocol.MaxMembersListed, func(ms []room.MemberInfo, _ bool) {
		c.Post(func() {
			if !c.Open() {
				return
			}
			count := h.Rooms.Count(roomID)
			if h.Cluster != nil {
				count += h.Cluster.Remote(roomID)
			}
			b := bytebufferpool.Get()
			b.B = appendMembers(b.B, roomID, ms, max(count, len(ms)))
			c.WriteText(b.B)
			bytebufferpool.Put(b)
		})
	})
}

func appendMembers(b []byte, roomID string, ms []room.MemberInfo, count int) []byte {
	b = append(b, `{"type":"members","roomId":`...)
	b = protocol.AppendJSONString(b, roomID)
	b = append(b, `,"members":[`...)
	for i, m := range ms {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"userId":`...)
		b = protocol.AppendJSONString(b, m.UserID)
		b = append(b, `,"userName":`...)
		b = protocol.AppendJSONString(b, m.Name)
		b = append(b, '}')
	}
	b = append(b, `],"userCount":`...)
	b = strconv.AppendInt(b, int64(count), 10)
	return append(b, '}')
}

// sendBanned tells a connection that it is banned, and for how long, so that
// a client can say so and hold its messages rather than send into the void.
func (h *Handler) sendBanned(c *server.Conn) {
	secs := int(math.Ceil(cmp.Or(h.RateLimit.Ban, server.DefaultBan).Seconds()))
	b := bytebufferpool.Get()
	b.B = protocol.AppendRateLimited(b.B, secs)
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}
