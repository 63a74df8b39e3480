// Package shootout is the /shootout endpoint: the protocol of hashrocket's
// websocket-shootout, which dozens of servers speak, so throng can be measured
// with the same tool as its peers. It is mounted only when asked for
// (--endpoints).
package shootout

import (
	"encoding/binary"
	"strconv"

	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fastjson"

	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// Handler speaks the shootout protocol.
//
// JSON: {"type":"echo","payload":P} comes back as sent;
// {"type":"broadcast","payload":P} goes to every /shootout connection, the
// sender included, as {"type":"broadcast","payload":P}, and once it has been
// handed to all of them the sender gets
// {"type":"broadcastResult","payload":P,"listenerCount":N}.
//
// Binary: byte 0 is 'e' (echo) or 'b' (broadcast), then a big-endian uint32
// length and the payload. An echo comes back unchanged, a broadcast goes out
// unchanged, and the sender's result is the same bytes with byte 0 set to 'r'.
type Handler struct {
	// Rooms holds the one room every /shootout connection is in. It should be a
	// table of its own, so no chat room can share its name.
	Rooms *room.Table
	// RateLimit bounds each connection's inbound messages; a connection over
	// it is closed with 1008. Its zero value is the server's defaults; a
	// negative Rate, no limit.
	RateLimit server.RateLimit
	// Deflater compresses each broadcast, once, for the connections that
	// negotiated permessage-deflate (the server's Server.Deflater). If nil,
	// every connection gets the plain frame.
	Deflater *server.Deflater

	parsers fastjson.ParserPool
}

const shootoutRoom = "shootout"

type shootoutConn struct {
	c    *server.Conn
	m    room.Member
	rate server.RateState
}

// Deliver implements room.Sink.
func (sc *shootoutConn) Deliver(f *poller.Frame) { sc.c.WriteFrame(f) }

// UserID implements room.UserSink.
func (sc *shootoutConn) UserID() string { return sc.c.UserID() }

// DeliverFrames implements room.FramesSink: a room's frames waiting for the
// connection go out in one write.
func (sc *shootoutConn) DeliverFrames(fs []*poller.Frame) { sc.c.WriteFrames(fs) }

// OnOpen implements server.Handler: every connection joins the broadcast room.
func (h *Handler) OnOpen(c *server.Conn) {
	sc := &shootoutConn{c: c}
	sc.m.Sink = sc
	sc.m.Deflate = c.SharesDeflated()
	c.SetData(sc)
	h.Rooms.Join(c.Loop().Index(), shootoutRoom, &sc.m)
}

// OnClose implements server.Handler.
func (h *Handler) OnClose(c *server.Conn, _ ws.StatusCode, _ string) {
	if sc, ok := c.Data().(*shootoutConn); ok {
		h.Rooms.Leave(&sc.m)
	}
}

// OnError implements server.Handler.
func (h *Handler) OnError(*server.Conn, error) {}

// OnMessage implements server.Handler.
func (h *Handler) OnMessage(c *server.Conn, op ws.OpCode, data []byte) {
	if sc, ok := c.Data().(*shootoutConn); !ok || !h.RateLimit.Admit(c, &sc.rate) {
		return
	}
	if op == ws.OpBinary {
		h.binary(c, data)
		return
	}
	p := h.parsers.Get()
	defer h.parsers.Put(p)
	v, err := p.ParseBytes(data)
	if err != nil || v.Type() != fastjson.TypeObject {
		c.CloseWith(ws.StatusUnsupportedData, "invalid JSON")
		return
	}
	switch string(v.GetStringBytes("type")) {
	case "echo":
		c.WriteText(data)
	case "broadcast":
		payload := v.Get("payload")
		b := bytebufferpool.Get()
		b.B = append(b.B, `{"type":"broadcast","payload":`...)
		b.B = marshalValue(b.B, payload)
		b.B = append(b.B, '}')
		res := bytebufferpool.Get()
		res.B = append(res.B, `{"type":"broadcastResult","payload":`...)
		res.B = marshalValue(res.B, payload)
		res.B = append(res.B, `,"listenerCount":`...)
		h.fanOut(c, ws.OpText, b.B, res, func(r []byte, n int) []byte {
			r = strconv.AppendInt(r, int64(n), 10)
			return append(r, '}')
		})
		bytebufferpool.Put(b)
	default:
		c.CloseWith(ws.StatusUnsupportedData, "unknown message type")
	}
}

func marshalValue(b []byte, v *fastjson.Value) []byte {
	if v == nil {
		return append(b, "null"...)
	}
	return v.MarshalTo(b)
}

func (h *Handler) binary(c *server.Conn, data []byte) {
	if len(data) < 5 || int(binary.BigEndian.Uint32(data[1:5])) != len(data)-5 {
		c.CloseWith(ws.StatusUnsupportedData, "malformed shootout message")
		return
	}
	switch data[0] {
	case 'e':
		c.WriteMessage(ws.OpBinary, data)
	case 'b':
		res := bytebufferpool.Get()
		res.B = append(res.B, data...)
		res.B[0] = 'r'
		h.fanOut(c, ws.OpBinary, data, res, nil)
	default:
		c.CloseWith(ws.StatusUnsupportedData, "malformed shootout message")
	}
}

// fanOut broadcasts payload to every connection and, once every loop has
// written it, sends the sender res (completed by finish with the listener
// count) on the sender's own loop.
func (h *Handler) fanOut(c *server.Conn, op ws.OpCode, payload []byte, res *bytebufferpool.ByteBuffer, finish func([]byte, int) []byte) {
	f := poller.NewFrame()
	fb := f.Buffer()
	fb.B = server.AppendFrame(fb.B, op, payload)
	var z *poller.Frame
	if h.Deflater != nil && h.Rooms.Deflaters(shootoutRoom) > 0 {
		z = h.Deflater.Frame(op, payload)
	}
	h.Rooms.BroadcastDeflated(shootoutRoom, f, z, nil, func(listeners int) {
		posted := c.Post(func() {
			if finish != nil {
				res.B = finish(res.B, listeners)
			}
			c.WriteMessage(op, res.B)
			bytebufferpool.Put(res)
		})
		if !posted {
			bytebufferpool.Put(res)
		}
	})
	f.Release()
	if z != nil {
		z.Release()
	}
}
