package server

import (
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fastjson"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/room"
)

// Chat is the /ws endpoint: the seed's JSON chat protocol.
//
//	join    {"type":"join","roomId":R,"userName":N}  → joined; others get user-joined
//	chat    {"type":"chat","roomId":R,"content":C}   → every member gets message
//	leave   {"type":"leave","roomId":R}              → left; others get user-left
//	ping    {"type":"ping"}                          → pong
//	refresh {"type":"refresh","token":T}             → refreshed
//
// A client is greeted with connected. Every message is validated; a bad one gets
// an error with a code, and never costs another client its messages. Inbound
// messages are rate-limited per connection with a token bucket, and a client
// that breaks the limit is banned for a while, as the seed does.
type Chat struct {
	// Rooms is the room table. If nil, join, chat and leave are refused.
	Rooms *room.Table
	// Auth verifies refreshed tokens. If nil, refresh is refused.
	Auth *auth.Verifier
	// Logger receives the endpoint's logs. If nil, logs are discarded.
	Logger *slog.Logger
	// Cluster, if set, carries the rooms' messages, joins and leaves to and
	// from the other nodes of a cluster, and their members into every
	// userCount. If nil, the rooms are this node's alone.
	Cluster Cluster

	// MaxRoomsPerConn bounds the rooms one connection is in. If zero,
	// DefaultMaxRoomsPerConn is used.
	MaxRoomsPerConn int
	// MaxContent bounds a chat message's content, in characters. If zero,
	// DefaultMaxContent is used.
	MaxContent int
	// Rate is the inbound messages per second a connection may send on average.
	// If zero, DefaultRate is used; if negative, messages are not limited.
	Rate float64
	// Burst is how many messages may arrive at once. If zero, DefaultBurst is used.
	Burst int
	// Ban is how long a connection that broke the rate is ignored. If zero,
	// DefaultBan is used.
	Ban time.Duration
	// BanCloseAfter closes a banned connection, with 1008, that sends more than
	// this many messages during its ban. If zero, DefaultBanCloseAfter is used.
	BanCloseAfter int

	parsers fastjson.ParserPool
	counts  chatCounters
}

// Defaults for Chat.
const (
	DefaultMaxRoomsPerConn = 100
	DefaultMaxContent      = 500
	DefaultRate            = 10
	DefaultBurst           = 20
	DefaultBan             = 5 * time.Minute
	DefaultBanCloseAfter   = 100
	// MaxRoomID bounds a room id, in bytes.
	MaxRoomID = 128
	// MaxUserName bounds a user name, in characters.
	MaxUserName = 50
)

// Error codes sent in `error` messages.
const (
	CodeInvalidJSON     = "invalid_json"
	CodeInvalidMessage  = "invalid_message"
	CodeUnknownType     = "unknown_type"
	CodeNotInRoom       = "not_in_room"
	CodeAlreadyInRoom   = "already_in_room"
	CodeTooManyRooms    = "too_many_rooms"
	CodeRoomFull        = "room_full"
	CodeRateLimited     = "rate_limited"
	CodeInvalidToken    = "invalid_token"
	CodeTokenExpired    = "token_expired"
	CodeMessagesDropped = "messages_dropped"
	CodeUnavailable     = "unavailable"
)

// TimeLayout is the protocol's timestamp format: RFC 3339 in UTC with
// milliseconds, as JavaScript's Date.toISOString writes it.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// chatCounters count the endpoint's events for metrics.
type chatCounters struct {
	rateLimited atomic.Uint64 // messages refused by the rate limit
	bans        atomic.Uint64 // bans started
}

// ChatStats are the endpoint's counters.
type ChatStats struct {
	RateLimited uint64
	Bans        uint64
}

// Stats returns the endpoint's counters.
func (h *Chat) Stats() ChatStats {
	return ChatStats{RateLimited: h.counts.rateLimited.Load(), Bans: h.counts.bans.Load()}
}

// chatConn is one connection's chat state, made at its first message, so a
// connection that only listens costs nothing here until it joins.
type chatConn struct {
	c        *Conn
	rooms    []*room.Member
	rate     bucket
	banUntil int64  // unix ms; 0 when not banned
	banned   uint32 // messages received during the current ban
}

// Deliver implements room.Sink.
func (cc *chatConn) Deliver(f *poller.Frame) { cc.c.WriteFrame(f) }

func (cc *chatConn) member(id []byte) (int, *room.Member) {
	for i, m := range cc.rooms {
		if m.Room() == string(id) {
			return i, m
		}
	}
	return -1, nil
}

func (h *Chat) state(c *Conn) *chatConn {
	if cc, ok := c.Data().(*chatConn); ok {
		return cc
	}
	cc := &chatConn{c: c}
	c.SetData(cc)
	return cc
}

// OnOpen implements Handler.
func (h *Chat) OnOpen(c *Conn) {
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"connected","userId":`...)
	b.B = AppendJSONString(b.B, c.UserID())
	b.B = append(b.B, `,"timestamp":"`...)
	b.B = c.Now().UTC().AppendFormat(b.B, TimeLayout)
	b.B = append(b.B, `"}`...)
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// OnMessage implements Handler.
func (h *Chat) OnMessage(c *Conn, op ws.OpCode, data []byte) {
	if op != ws.OpText {
		c.Close(CloseUnsupported)
		return
	}
	cc := h.state(c)
	if !h.allow(cc) {
		return
	}
	p := h.parsers.Get()
	defer h.parsers.Put(p)
	v, err := p.ParseBytes(data)
	if err != nil || v.Type() != fastjson.TypeObject {
		h.sendError(c, CodeInvalidJSON, "Invalid JSON", "")
		return
	}
	t := v.Get("type")
	if t == nil || t.Type() != fastjson.TypeString {
		h.sendError(c, CodeInvalidMessage, "Invalid message format", "type")
		return
	}
	switch typ := t.GetStringBytes(); string(typ) {
	case "join":
		h.join(cc, v)
	case "chat":
		h.chat(cc, v)
	case "leave":
		h.leave(cc, v)
	case "ping":
		c.WriteText([]byte(`{"type":"pong"}`))
	case "refresh":
		h.refresh(c, v)
	default:
		if !utf8.Valid(typ) || len(typ) > 64 {
			typ = typ[:0]
		}
		b := bytebufferpool.Get()
		b.B = appendError(b.B, CodeUnknownType, "Unknown message type: ", typ, "")
		c.WriteText(b.B)
		bytebufferpool.Put(b)
	}
}

// allow applies the rate limit: a connection over it gets one rate_limited error
// and is banned; what it sends during the ban is dropped, and if it keeps
// sending it is closed.
func (h *Chat) allow(cc *chatConn) bool {
	rate := h.Rate
	if rate < 0 {
		return true
	}
	if rate == 0 {
		rate = DefaultRate
	}
	now := cc.c.Now().UnixMilli()
	if cc.banUntil != 0 {
		if now < cc.banUntil {
			cc.banned++
			h.counts.rateLimited.Add(1)
			if limit := cmpOr(h.BanCloseAfter, DefaultBanCloseAfter); int(cc.banned) > limit {
				cc.c.Close(CloseRateLimited)
			}
			return false
		}
		cc.banUntil, cc.banned = 0, 0
		cc.rate = bucket{} // the ban is served: start with a full bucket
	}
	if ok, _ := cc.rate.take(now, rate, cmpOr(h.Burst, DefaultBurst)); ok {
		return true
	}
	h.counts.rateLimited.Add(1)
	h.counts.bans.Add(1)
	cc.banUntil = now + cmpOr(h.Ban, DefaultBan).Milliseconds()
	h.sendError(cc.c, CodeRateLimited, "Rate limit exceeded. You are temporarily banned.", "")
	return false
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// stringField returns v's field as a string, or reports it as the bad field.
func (h *Chat) stringField(c *Conn, v *fastjson.Value, field string) ([]byte, bool) {
	f := v.Get(field)
	if f == nil || f.Type() != fastjson.TypeString {
		h.sendError(c, CodeInvalidMessage, "Invalid message format", field)
		return nil, false
	}
	return f.GetStringBytes(), true
}

// roomID returns the message's roomId if it is 1 to MaxRoomID bytes of
// printable UTF-8.
func (h *Chat) roomID(c *Conn, v *fastjson.Value) ([]byte, bool) {
	id, ok := h.stringField(c, v, "roomId")
	if !ok {
		return nil, false
	}
	if len(id) == 0 || len(id) > MaxRoomID || !printable(id) {
		h.sendError(c, CodeInvalidMessage, "Invalid message format", "roomId")
		return nil, false
	}
	return id, true
}

func printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

func (h *Chat) join(cc *chatConn, v *fastjson.Value) {
	c := cc.c
	id, ok := h.roomID(c, v)
	if !ok {
		return
	}
	name, ok := h.stringField(c, v, "userName")
	if !ok {
		return
	}
	if n := utf8.RuneCount(name); n == 0 || n > MaxUserName || !printable(name) {
		h.sendError(c, CodeInvalidMessage, "Invalid message format", "userName")
		return
	}
	if h.Rooms == nil {
		h.sendError(c, CodeUnavailable, "Rooms are not available", "")
		return
	}
	if _, m := cc.member(id); m != nil {
		h.sendError(c, CodeAlreadyInRoom, "Already in this room", "")
		return
	}
	if len(cc.rooms) >= cmpOr(h.MaxRoomsPerConn, DefaultMaxRoomsPerConn) {
		h.sendError(c, CodeTooManyRooms, "Too many rooms", "")
		return
	}
	m := &room.Member{Sink: cc, UserID: c.UserID(), Name: string(name)}
	roomID := string(id)
	count, err := h.Rooms.Join(c.Loop().Index(), roomID, m)
	if err != nil {
		h.sendError(c, CodeRoomFull, "Room is full", "")
		return
	}
	cc.rooms = append(cc.rooms, m)
	count = h.changed(roomID, count)

	// The room hears of the join before the joiner does: once the joiner has
	// its reply, whatever it (or a client it tells) does next is ordered after
	// this user-joined in the room. The joiner still reads joined first, as
	// anything the room sends it is delivered by a later job on this loop.
	h.presence(m, roomID, "user-joined", count, cc)

	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"joined","roomId":`...)
	b.B = AppendJSONString(b.B, roomID)
	b.B = append(b.B, `,"userId":`...)
	b.B = AppendJSONString(b.B, m.UserID)
	b.B = append(b.B, `,"userCount":`...)
	b.B = strconv.AppendInt(b.B, int64(count), 10)
	b.B = append(b.B, '}')
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// presence tells a room's other members that m joined or left.
func (h *Chat) presence(m *room.Member, roomID, typ string, count int, except room.Sink) {
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"`...)
	b.B = append(b.B, typ...)
	b.B = append(b.B, `","roomId":`...)
	b.B = AppendJSONString(b.B, roomID)
	b.B = append(b.B, `,"userId":`...)
	b.B = AppendJSONString(b.B, m.UserID)
	b.B = append(b.B, `,"userName":`...)
	b.B = AppendJSONString(b.B, m.Name)
	b.B = append(b.B, `,"userCount":`...)
	b.B = strconv.AppendInt(b.B, int64(count), 10)
	b.B = append(b.B, '}')
	h.send(roomID, b.B, except)
	bytebufferpool.Put(b)
}

// broadcast frames payload once and fans the same bytes out to the room.
func (h *Chat) broadcast(roomID string, payload []byte, except room.Sink) int {
	f := poller.NewFrame()
	fb := f.Buffer()
	fb.B = AppendFrame(fb.B, ws.OpText, payload)
	n := h.Rooms.Broadcast(roomID, f, except, nil)
	f.Release()
	return n
}

func (h *Chat) chat(cc *chatConn, v *fastjson.Value) {
	c := cc.c
	id, ok := h.roomID(c, v)
	if !ok {
		return
	}
	content, ok := h.stringField(c, v, "content")
	if !ok {
		return
	}
	if n := utf8.RuneCount(content); n == 0 || n > cmpOr(h.MaxContent, DefaultMaxContent) {
		h.sendError(c, CodeInvalidMessage, "Invalid message format", "content")
		return
	}
	_, m := cc.member(id)
	if m == nil {
		h.sendError(c, CodeNotInRoom, "Not in this room", "")
		return
	}
	h.publish(m.Room(), m.UserID, m.Name, string(content), c.Now())
}

// Publish sends a `message` to every member of a room and returns how many
// members it goes to: in a cluster, the other nodes' members too, as they last
// announced them, unless the message could not be published to them. It may be
// called from any goroutine: the HTTP publish API uses it with the user id
// "server".
func (h *Chat) Publish(roomID, userID, userName, content string, at time.Time) int {
	d := h.publish(roomID, userID, userName, content, at)
	return d.local + d.remote
}

// publish is Publish, telling where the message went.

func (h *Chat) publish(roomID, userID, userName, content string, at time.Time) delivery {
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"message","roomId":`...)
	b.B = AppendJSONString(b.B, roomID)
	b.B = append(b.B, `,"userId":`...)
	b.B = AppendJSONString(b.B, userID)
	b.B = append(b.B, `,"userName":`...)
	b.B = AppendJSONString(b.B, userName)
	b.B = append(b.B, `,"content":`...)
	b.B = AppendJSONString(b.B, content)
	b.B = append(b.B, `,"timestamp":"`...)
	b.B = at.UTC().AppendFormat(b.B, TimeLayout)
	b.B = append(b.B, `"}`...)
	d := h.send(roomID, b.B, nil)
	bytebufferpool.Put(b)
	if d.published && h.Cluster != nil {
		d.remote = h.Cluster.Remote(roomID)
	}
	return d
}

func (h *Chat) leave(cc *chatConn, v *fastjson.Value) {
	c := cc.c
	id, ok := h.roomID(c, v)
	if !ok {
		return
	}
	i, m := cc.member(id)
	if m == nil {
		h.sendError(c, CodeNotInRoom, "Not in this room", "")
		return
	}
	roomID := m.Room()
	h.drop(cc, i)
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"left","roomId":`...)
	b.B = AppendJSONString(b.B, roomID)
	b.B = append(b.B, '}')
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// drop takes the connection out of its i-th room and tells the others.
func (h *Chat) drop(cc *chatConn, i int) {
	m := cc.rooms[i]
	roomID := m.Room()
	count := h.changed(roomID, h.Rooms.Leave(m))
	last := len(cc.rooms) - 1
	cc.rooms[i] = cc.rooms[last]
	cc.rooms[last] = nil
	cc.rooms = cc.rooms[:last]
	// No exception: the connection is out of the room already, and Broadcast
	// counts an excepted sink as one of the members.
	h.presence(m, roomID, "user-left", count, nil)
}

// refresh replaces the connection's token expiry with a later token's, if the
// token verifies and names the same subject.
func (h *Chat) refresh(c *Conn, v *fastjson.Value) {
	tok, ok := h.stringField(c, v, "token")
	if !ok {
		return
	}
	if h.Auth == nil {
		h.sendError(c, CodeInvalidToken, "Invalid token", "")
		return
	}
	claims, err := h.Auth.Verify(string(tok))
	switch {
	case err != nil:
		h.sendError(c, CodeInvalidToken, "Invalid token", "")
		return
	case claims.Subject != c.UserID():
		h.sendError(c, CodeInvalidToken, "Invalid token", "sub")
		return
	case !c.ExpiresAt().IsZero() && !claims.ExpiresAt.IsZero() && !claims.ExpiresAt.After(c.ExpiresAt()):
		h.sendError(c, CodeInvalidToken, "Invalid token", "exp")
		return
	}
	c.SetExpiresAt(claims.ExpiresAt)
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"refreshed"`...)
	if !claims.ExpiresAt.IsZero() {
		b.B = append(b.B, `,"expiresAt":"`...)
		b.B = claims.ExpiresAt.UTC().AppendFormat(b.B, TimeLayout)
		b.B = append(b.B, '"')
	}
	b.B = append(b.B, '}')
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// TokenExpired is called by the server before it closes a connection whose
// token expired, so the client can read why in its own protocol.
func (h *Chat) TokenExpired(c *Conn) {
	h.sendError(c, CodeTokenExpired, "Token expired", "")
}

// Dropped implements DropNotifier: a slow consumer that caught up learns how
// many messages it missed.
func (h *Chat) Dropped(c *Conn, n int) {
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"error","code":"messages_dropped","message":"`...)
	b.B = strconv.AppendInt(b.B, int64(n), 10)
	b.B = append(b.B, ` messages were dropped","count":`...)
	b.B = strconv.AppendInt(b.B, int64(n), 10)
	b.B = append(b.B, '}')
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// OnClose implements Handler: the connection leaves every room it was in, and
// each room hears user-left.
func (h *Chat) OnClose(c *Conn, _ ws.StatusCode, _ string) {
	cc, ok := c.Data().(*chatConn)
	if !ok {
		return
	}
	for len(cc.rooms) > 0 {
		h.drop(cc, len(cc.rooms)-1)
	}
	cc.rooms = nil
}

// OnError implements Handler.
func (h *Chat) OnError(c *Conn, err error) {
	if h.Logger != nil {
		h.Logger.Debug("connection error", "user", c.UserID(), "err", err)
	}
}

// sendError sends {"type":"error","code":…,"message":…}; a non-empty field is
// named in the message and sent as "field".
func (h *Chat) sendError(c *Conn, code, msg, field string) {
	b := bytebufferpool.Get()
	b.B = appendError(b.B, code, msg, nil, field)
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

func appendError(b []byte, code, msg string, arg []byte, field string) []byte {
	b = append(b, `{"type":"error","code":`...)
	b = AppendJSONString(b, code)
	b = append(b, `,"message":"`...)
	b = appendJSONStringBody(b, msg)
	b = appendJSONStringBody(b, string(arg))
	if field != "" {
		b = append(b, ": "...)
		b = appendJSONStringBody(b, field)
	}
	b = append(b, '"')
	if field != "" {
		b = append(b, `,"field":`...)
		b = AppendJSONString(b, field)
	}
	return append(b, '}')
}
