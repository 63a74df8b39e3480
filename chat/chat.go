// Package chat is the /ws endpoint: the seed's JSON chat protocol on rooms.
// It implements server.Handler; package server moves the frames, and package
// room fans each message out to the members. Its vocabulary (types, codes,
// limits) is package protocol's. With a Cluster it carries rooms across nodes,
// and API is its HTTP side: rooms, members and publishing for backends.
package chat

import (
	"cmp"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fastjson"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/history"
	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// Handler is the /ws endpoint: the seed's JSON chat protocol.
//
//	join    {"type":"join","roomId":R,"userName":N}  → joined; others get user-joined
//	chat    {"type":"chat","roomId":R,"content":C}   → every member gets message
//	leave   {"type":"leave","roomId":R}              → left; others get user-left
//	ping    {"type":"ping"}                          → pong
//	refresh {"type":"refresh","token":T}             → refreshed
//	history {"type":"history","roomId":R[,"before":O][,"limit":N][,"epoch":E]} → history-page
//
// With History, every message carries its offset and the room's epoch, and a
// join may carry "since":{"offset":O,"epoch":E} (recover what was missed) and
// "history":N (recent messages); those messages come before joined.
//
//	members {"type":"members","roomId":R}            → members (members.go)
//
// A client is greeted with connected. Every message is validated; a bad one gets
// an error with a code, and never costs another client its messages. Inbound
// messages are rate-limited per connection with a token bucket, and a client
// that breaks the limit is banned for a while, as the seed does.
type Handler struct {
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
	// History keeps each room's recent messages for recovery and the history
	// request. If nil, history is off: messages carry no offset, and joins
	// and history requests get none.
	History *history.Store
	// JoinHistory is how many recent messages a join that names neither since
	// nor history gets before joined. If zero, none: the seed's protocol.
	JoinHistory int

	// MaxRoomsPerConn bounds the rooms one connection is in. If zero,
	// DefaultMaxRoomsPerConn is used.
	MaxRoomsPerConn int
	// MaxContent bounds a chat message's content, in characters. If zero,
	// protocol.DefaultMaxContent is used.
	MaxContent int
	// RateLimit bounds the inbound messages of each connection; a connection
	// over it gets one rate_limited error and is banned.
	server.RateLimit
	// UserRate bounds the messages per second of one user across all its
	// connections, so opening more connections does not multiply what a user
	// may send. Past it, the connection that sent is banned as if it had
	// broken its own rate. If zero, DefaultUserRate is used; if negative,
	// users are not limited beyond their connections.
	UserRate float64
	// UserBurst is how many messages a user may send at once across its
	// connections. If zero, DefaultUserBurst is used.
	UserBurst int
	// Deflater compresses a room's broadcasts, once each, for its members
	// that negotiated permessage-deflate (the server's Server.Deflater). If
	// nil, every member gets the plain frame.
	Deflater *server.Deflater

	parsers   fastjson.ParserPool
	counts    chatCounters
	usersOnce sync.Once
	users     *server.KeyedLimit[string] // nil when UserRate < 0
	lastPrune atomic.Int64               // unix ms users was last pruned

	// In a cluster with history: the rooms' delivery cursors, and the joins
	// waiting for the stream (by connection and room; guarded by pmu).
	cur        cursors
	pmu        sync.Mutex
	pending    map[pendingJoin]bool
	anyPending atomic.Bool // set once pending is first used: until then joins and closes skip pmu
}

// Defaults for Handler.
const (
	DefaultMaxRoomsPerConn = 100
	// DefaultUserRate and DefaultUserBurst allow a user two connections'
	// worth of the default per-connection rate.
	DefaultUserRate  = 2 * server.DefaultRate
	DefaultUserBurst = 2 * server.DefaultBurst
)

// chatCounters count the endpoint's events for metrics.
type chatCounters struct {
	rateLimited atomic.Uint64 // messages refused by the rate limit
	bans        atomic.Uint64 // bans started
	recovered   atomic.Uint64 // joins with since that got every missed message
	unrecovered atomic.Uint64 // joins with since that did not
	replayed    atomic.Uint64 // messages sent from history before joined
	pages       atomic.Uint64 // history requests answered
	liveOnly    atomic.Uint64 // messages the cluster's history did not take
}

// Stats are the endpoint's counters.
type Stats struct {
	RateLimited uint64
	Bans        uint64
	// Recoveries by outcome: joins with since that got every message they
	// missed, and those that did not (another epoch, a gap gone from the
	// history, history unreachable).
	Recovered, Unrecovered uint64
	// Replayed counts messages sent from history before a joined.
	Replayed uint64
	// HistoryPages counts history requests answered.
	HistoryPages uint64
	// LiveOnly counts messages delivered without the cluster's history
	// (unreachable, or its queue full): they have no offset.
	LiveOnly uint64
}

// Stats returns the endpoint's counters.
func (h *Handler) Stats() Stats {
	return Stats{RateLimited: h.counts.rateLimited.Load(), Bans: h.counts.bans.Load(),
		Recovered: h.counts.recovered.Load(), Unrecovered: h.counts.unrecovered.Load(),
		Replayed: h.counts.replayed.Load(), HistoryPages: h.counts.pages.Load(), LiveOnly: h.counts.liveOnly.Load()}
}

// Deliver implements room.Sink.
func (cc *chatConn) Deliver(f *poller.Frame) { cc.c.WriteFrame(f) }

// UserID implements room.UserSink.
func (cc *chatConn) UserID() string { return cc.c.UserID() }

// DeliverFrames implements room.FramesSink: a room's frames waiting for the
// connection go out in one write.
func (cc *chatConn) DeliverFrames(fs []*poller.Frame) { cc.c.WriteFrames(fs) }

func (cc *chatConn) member(id []byte) (int, *room.Member) {
	for i := range cc.rooms() {
		if m := cc.at(i); m.Room() == string(id) {
			return i, m
		}
	}
	return -1, nil
}

func (h *Handler) state(c *server.Conn) *chatConn {
	if cc, ok := c.Data().(*chatConn); ok {
		return cc
	}
	cc := &chatConn{c: c}
	c.SetData(cc)
	return cc
}

// OnOpen implements server.Handler.
func (h *Handler) OnOpen(c *server.Conn) {
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"connected","userId":`...)
	b.B = protocol.AppendJSONString(b.B, c.UserID())
	b.B = append(b.B, `,"timestamp":"`...)
	b.B = c.Now().UTC().AppendFormat(b.B, protocol.TimeLayout)
	b.B = append(b.B, `"}`...)
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// OnMessage implements server.Handler.
func (h *Handler) OnMessage(c *server.Conn, op ws.OpCode, data []byte) {
	if op != ws.OpText {
		c.Close(server.CloseUnsupported)
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
		h.sendError(c, protocol.CodeInvalidJSON, protocol.TextInvalidJSON, "")
		return
	}
	t := v.Get("type")
	if t == nil || t.Type() != fastjson.TypeString {
		h.sendError(c, protocol.CodeInvalidMessage, protocol.TextInvalidMessage, "type")
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
	case "history":
		h.history(cc, v)
	case protocol.TypeMembers:
		h.members(cc, v)
	default:
		if !utf8.Valid(typ) || len(typ) > protocol.MaxEchoedType {
			typ = typ[:0]
		}
		b := bytebufferpool.Get()
		b.B = protocol.AppendError(b.B, protocol.CodeUnknownType, protocol.TextUnknownType, typ, "")
		c.WriteText(b.B)
		bytebufferpool.Put(b)
	}
}

// allow applies the rate limit: a connection over it gets one rate_limited error
// and is banned; what it sends during the ban is dropped, and if it keeps
// sending it is closed.
func (h *Handler) allow(cc *chatConn) bool {
	now := cc.c.Now().UnixMilli()
	v := h.RateLimit.Allow(&cc.rate, now)
	if v == server.Allowed && !h.userAllows(cc.c.UserID(), now) {
		// The user is over its rate across its connections: this
		// connection serves a ban as if it had broken its own.
		h.RateLimit.StartBan(&cc.rate, now)
		v = server.BanStarted
	}
	if v == server.Allowed {
		return true
	}
	// Counted before the client can see the answer, so whoever reads the
	// counters after it sees them moved.
	h.counts.rateLimited.Add(1)
	switch v {
	case server.BanStarted:
		h.counts.bans.Add(1)
		h.sendBanned(cc.c)
	case server.BanExceeded:
		cc.c.Close(server.CloseRateLimited)
	}
	return false
}

// userPruneEvery is how often, at most, the users whose buckets refilled are
// forgotten: a user bucket refills in UserBurst/UserRate seconds (2 s by
// default), and an idle member should not keep one. A prune costs a pass over
// the users who spoke since the last one.
const userPruneEvery = 1_000 // ms

// userLimit is the per-user limit, made at first use; nil when users are not
// limited.
func (h *Handler) userLimit() *server.KeyedLimit[string] {
	h.usersOnce.Do(func() {
		if h.UserRate >= 0 && h.RateLimit.Rate >= 0 {
			h.users = server.NewKeyedLimit[string](cmp.Or(h.UserRate, DefaultUserRate), cmp.Or(h.UserBurst, DefaultUserBurst))
		}
	})
	return h.users
}

// userAllows takes one message from user's bucket, shared by its connections.
func (h *Handler) userAllows(user string, now int64) bool {
	users := h.userLimit()
	if users == nil {
		return true
	}
	h.pruneUsers(users, now)
	ok, _ := users.Allow(user, now)
	return ok
}

// pruneUsers forgets the users whose buckets refilled, so the table holds
// only those who spoke in the last few seconds, if userPruneEvery has passed.
func (h *Handler) pruneUsers(users *server.KeyedLimit[string], now int64) {
	if last := h.lastPrune.Load(); now-last >= userPruneEvery && h.lastPrune.CompareAndSwap(last, now) {
		users.Prune(now)
	}
}

// Sweep implements server.Sweeper: while nobody speaks, the users' buckets
// are still forgotten once they refill.
func (h *Handler) Sweep(now time.Time) {
	if users := h.userLimit(); users != nil {
		h.pruneUsers(users, now.UnixMilli())
	}
}

// stringField returns v's field as a string, or reports it as the bad field.
func (h *Handler) stringField(c *server.Conn, v *fastjson.Value, field string) ([]byte, bool) {
	f := v.Get(field)
	if f == nil || f.Type() != fastjson.TypeString {
		h.sendError(c, protocol.CodeInvalidMessage, protocol.TextInvalidMessage, field)
		return nil, false
	}
	return f.GetStringBytes(), true
}

// roomID returns the message's roomId if it is 1 to MaxRoomID bytes of
// printable UTF-8.
func (h *Handler) roomID(c *server.Conn, v *fastjson.Value) ([]byte, bool) {
	id, ok := h.stringField(c, v, "roomId")
	if !ok {
		return nil, false
	}
	if !protocol.ValidRoomID(id) {
		h.sendError(c, protocol.CodeInvalidMessage, protocol.TextInvalidMessage, "roomId")
		return nil, false
	}
	return id, true
}

func (h *Handler) join(cc *chatConn, v *fastjson.Value) {
	c := cc.c
	id, ok := h.roomID(c, v)
	if !ok {
		return
	}
	name, ok := h.stringField(c, v, "userName")
	if !ok {
		return
	}
	if !protocol.ValidUserName(name) {
		h.sendError(c, protocol.CodeInvalidMessage, protocol.TextInvalidMessage, "userName")
		return
	}
	req, ok := h.recovery(c, v)
	if !ok {
		return
	}
	if h.Rooms == nil {
		h.sendError(c, protocol.CodeUnavailable, protocol.TextUnavailable, "")
		return
	}
	if _, m := cc.member(id); m != nil || (h.anyPending.Load() && h.pendingRoom(cc, id)) {
		h.sendError(c, protocol.CodeAlreadyInRoom, protocol.TextAlreadyInRoom, "")
		return
	}
	if cc.rooms() >= cmp.Or(h.MaxRoomsPerConn, DefaultMaxRoomsPerConn) {
		h.sendError(c, protocol.CodeTooManyRooms, protocol.TextTooManyRooms, "")
		return
	}
	m := cc.newMember(cc.name(name), c.SharesDeflated())
	roomID := string(id)
	var (
		count int
		err   error
		rec   recovered
	)
	hc := h.clusterHistory()
	switch {
	case hc != nil && (req.since || req.recent > 0):
		h.joinAsync(hc, cc, m, roomID, req)
		return
	case hc != nil:
		count, rec, err = h.joinSync(hc, cc, m, roomID)
	case h.History != nil && h.Cluster == nil:
		// Under the room's log: every message appended before the join is in
		// what it reads, every later one reaches the member live.
		l := h.History.Lock(roomID)
		count, err = h.Rooms.Join(c.Loop().Index(), roomID, m)
		if err == nil {
			rec = h.recover(l, req)
		}
		l.Unlock()
	default:
		count, err = h.Rooms.Join(c.Loop().Index(), roomID, m)
	}
	if err != nil {
		h.sendError(c, protocol.CodeRoomFull, protocol.TextRoomFull, "")
		return
	}
	h.finishJoin(cc, m, roomID, count, rec, req)
}

// finishJoin records a join that happened, tells the room, and sends the
// joiner its history and joined.
func (h *Handler) finishJoin(cc *chatConn, m *room.Member, roomID string, count int, rec recovered, req recoveryRequest) {
	c := cc.c
	cc.add(m)
	count = h.changed(roomID, count)

	// The room hears of the join before the joiner does: once the joiner has
	// its reply, whatever it (or a client it tells) does next is ordered after
	// this user-joined in the room. The joiner still reads joined first, as
	// anything the room sends it is delivered by a later job on this loop.
	h.presence(m, roomID, "user-joined", count, cc)

	// The history comes before joined and before anything live: live messages
	// are written by later jobs of this loop.
	for _, p := range rec.msgs {
		c.WriteText(p)
	}
	h.counts.replayed.Add(uint64(len(rec.msgs)))
	if req.since {
		if rec.ok {
			h.counts.recovered.Add(1)
		} else {
			h.counts.unrecovered.Add(1)
		}
	}

	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"joined","roomId":`...)
	b.B = protocol.AppendJSONString(b.B, roomID)
	b.B = append(b.B, `,"userId":`...)
	b.B = protocol.AppendJSONString(b.B, m.UserID())
	b.B = append(b.B, `,"userCount":`...)
	b.B = strconv.AppendInt(b.B, int64(count), 10)
	if rec.epoch != "" {
		b.B = append(b.B, `,"epoch":`...)
		b.B = protocol.AppendJSONString(b.B, rec.epoch)
		b.B = append(b.B, `,"offset":`...)
		b.B = strconv.AppendUint(b.B, rec.latest, 10)
	}
	if req.since {
		b.B = append(b.B, `,"recovered":`...)
		b.B = strconv.AppendBool(b.B, rec.ok)
	}
	if len(rec.msgs) > 0 {
		b.B = append(b.B, `,"replayed":`...)
		b.B = strconv.AppendInt(b.B, int64(len(rec.msgs)), 10)
	}
	b.B = append(b.B, '}')
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// recoveryRequest is what a join asks of the history.
type recoveryRequest struct {
	since  bool // "since" was given: recover after pos
	pos    protocol.Position
	recent int // messages of context when there is nothing to recover
}

// recovered is the history's answer to a join.
type recovered struct {
	msgs   [][]byte // complete message payloads, oldest first
	ok     bool     // every message after since is in msgs
	epoch  string   // the room's epoch; "" with history off
	latest uint64   // the room's newest offset
}

// recovery reads a join's since and history fields, answering a malformed one
// with invalid_message.
func (h *Handler) recovery(c *server.Conn, v *fastjson.Value) (recoveryRequest, bool) {
	req := recoveryRequest{recent: h.JoinHistory}
	if n := v.Get("history"); n != nil {
		k, err := n.Int()
		if err != nil || k < 0 || k > protocol.MaxHistoryLimit {
			h.sendError(c, protocol.CodeInvalidMessage, protocol.TextInvalidMessage, "history")
			return req, false
		}
		req.recent = k
	} else if v.Get("since") != nil {
		req.recent = protocol.DefaultHistoryLimit
	}
	sv := v.Get("since")
	if sv == nil || sv.Type() == fastjson.TypeNull {
		return req, true
	}
	off, ep := sv.Get("offset"), sv.Get("epoch")
	if sv.Type() != fastjson.TypeObject || off == nil || ep == nil || ep.Type() != fastjson.TypeString {
		h.sendError(c, protocol.CodeInvalidMessage, protocol.TextInvalidMessage, "since")
		return req, false
	}
	o, err := off.Uint64()
	if err != nil || !protocol.ValidEpoch(ep.GetStringBytes()) {
		h.sendError(c, protocol.CodeInvalidMessage, protocol.TextInvalidMessage, "since")
		return req, false
	}
	req.since, req.pos = true, protocol.Position{Offset: o, Epoch: string(ep.GetStringBytes())}
	return req, true
}

// recover answers req from l, which the caller holds.
func (h *Handler) recover(l *history.Log, req recoveryRequest) recovered {
	rec := recovered{epoch: l.Epoch(), latest: l.Latest()}
	if req.since {
		rec.msgs, rec.ok = l.Recover(req.pos.Offset, req.pos.Epoch, h.History.Size())
		if rec.ok {
			return rec
		}
	}
	if req.recent > 0 {
		rec.msgs, _ = l.Page(0, req.recent)
	}
	return rec
}

// presence tells a room's other members that m joined or left.
func (h *Handler) presence(m *room.Member, roomID, typ string, count int, except room.Sink) {
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"`...)
	b.B = append(b.B, typ...)
	b.B = append(b.B, `","roomId":`...)
	b.B = protocol.AppendJSONString(b.B, roomID)
	b.B = append(b.B, `,"userId":`...)
	b.B = protocol.AppendJSONString(b.B, m.UserID())
	b.B = append(b.B, `,"userName":`...)
	b.B = protocol.AppendJSONString(b.B, m.Name)
	b.B = append(b.B, `,"userCount":`...)
	b.B = strconv.AppendInt(b.B, int64(count), 10)
	b.B = append(b.B, '}')
	h.send(roomID, b.B, except)
	bytebufferpool.Put(b)
}

// broadcast frames payload once, and once compressed if the room has members
// that take it, and fans the same bytes out to the room.
func (h *Handler) broadcast(roomID string, payload []byte, except room.Sink) int {
	f := poller.NewFrame()
	fb := f.Buffer()
	fb.B = server.AppendFrame(fb.B, ws.OpText, payload)
	var z *poller.Frame
	if h.Deflater != nil && h.Rooms.Deflaters(roomID) > 0 {
		z = h.Deflater.Frame(ws.OpText, payload)
	}
	n := h.Rooms.BroadcastDeflated(roomID, f, z, except, nil)
	f.Release()
	if z != nil {
		z.Release()
	}
	return n
}

func (h *Handler) chat(cc *chatConn, v *fastjson.Value) {
	c := cc.c
	id, ok := h.roomID(c, v)
	if !ok {
		return
	}
	content, ok := h.stringField(c, v, "content")
	if !ok {
		return
	}
	if n := utf8.RuneCount(content); n == 0 || n > cmp.Or(h.MaxContent, protocol.DefaultMaxContent) {
		h.sendError(c, protocol.CodeInvalidMessage, protocol.TextInvalidMessage, "content")
		return
	}
	_, m := cc.member(id)
	if m == nil {
		h.sendError(c, protocol.CodeNotInRoom, protocol.TextNotInRoom, "")
		return
	}
	h.publish(m.Room(), c.UserID(), m.Name, string(content), c.Now())
}

// Publish sends a `message` to every member of a room and returns how many
// members it goes to: in a cluster, the other nodes' members too, as they last
// announced them, unless the message could not be published to them. It may be
// called from any goroutine: the HTTP publish API uses it with the user id
// "server".
func (h *Handler) Publish(roomID, userID, userName, content string, at time.Time) int {
	d := h.publish(roomID, userID, userName, content, at)
	return d.local + d.remote
}

// publish is Publish, telling where the message went.

func (h *Handler) publish(roomID, userID, userName, content string, at time.Time) delivery {
	if hc := h.clusterHistory(); hc != nil {
		b := bytebufferpool.Get()
		b.B = appendMessage(b.B, roomID, userID, userName, content, at)
		d := h.publishStream(hc, roomID, b.B)
		bytebufferpool.Put(b)
		if d.published {
			d.remote = h.Cluster.Remote(roomID)
		}
		return d
	}
	if h.History != nil && h.Cluster == nil {
		// Numbered, kept and handed to the room in one step under the room's
		// log, so offsets follow the order members receive messages in.
		l := h.History.Lock(roomID)
		b := bytebufferpool.Get()
		b.B = appendMessage(b.B, roomID, userID, userName, content, at)
		b.B = appendPosition(b.B[:len(b.B)-1], l.Next(), l.Epoch())
		l.Append(b.B)
		d := h.send(roomID, b.B, nil)
		l.Unlock()
		bytebufferpool.Put(b)
		return d
	}
	b := bytebufferpool.Get()
	b.B = appendMessage(b.B, roomID, userID, userName, content, at)
	d := h.send(roomID, b.B, nil)
	bytebufferpool.Put(b)
	if d.published && h.Cluster != nil {
		d.remote = h.Cluster.Remote(roomID)
	}
	return d
}

// appendMessage appends a message without offset.
func appendMessage(b []byte, roomID, userID, userName, content string, at time.Time) []byte {
	b = append(b, `{"type":"message","roomId":`...)
	b = protocol.AppendJSONString(b, roomID)
	b = append(b, `,"userId":`...)
	b = protocol.AppendJSONString(b, userID)
	b = append(b, `,"userName":`...)
	b = protocol.AppendJSONString(b, userName)
	b = append(b, `,"content":`...)
	b = protocol.AppendJSONString(b, content)
	b = append(b, `,"timestamp":"`...)
	b = at.UTC().AppendFormat(b, protocol.TimeLayout)
	return append(b, `"}`...)
}

// appendPosition appends the offset and epoch fields and closes the object;
// b is a message without its closing brace. They come last, so a message's
// offset can be found from its end (see offsetOf).
func appendPosition(b []byte, offset uint64, epoch string) []byte {
	b = append(b, `,"offset":`...)
	b = strconv.AppendUint(b, offset, 10)
	b = append(b, `,"epoch":`...)
	b = protocol.AppendJSONString(b, epoch)
	return append(b, '}')
}

func (h *Handler) leave(cc *chatConn, v *fastjson.Value) {
	c := cc.c
	id, ok := h.roomID(c, v)
	if !ok {
		return
	}
	i, m := cc.member(id)
	if m == nil {
		h.sendError(c, protocol.CodeNotInRoom, protocol.TextNotInRoom, "")
		return
	}
	roomID := m.Room()
	h.drop(cc, i)
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"left","roomId":`...)
	b.B = protocol.AppendJSONString(b.B, roomID)
	b.B = append(b.B, '}')
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// drop takes the connection out of its i-th room and tells the others.
func (h *Handler) drop(cc *chatConn, i int) {
	m := cc.at(i)
	roomID := m.Room()
	count := h.changed(roomID, h.Rooms.Leave(m))
	cc.remove(i)
	// No exception: the connection is out of the room already, and Broadcast
	// counts an excepted sink as one of the members.
	h.presence(m, roomID, "user-left", count, nil)
}

// refresh replaces the connection's token deadline with a later token's, if
// the token verifies and names the same subject.
func (h *Handler) refresh(c *server.Conn, v *fastjson.Value) {
	tok, ok := h.stringField(c, v, "token")
	if !ok {
		return
	}
	if h.Auth == nil {
		h.sendError(c, protocol.CodeInvalidToken, protocol.TextInvalidToken, "")
		return
	}
	claims, err := h.Auth.Verify(string(tok))
	switch {
	case err != nil:
		h.sendError(c, protocol.CodeInvalidToken, protocol.TextInvalidToken, "")
		return
	case claims.Subject != c.UserID():
		h.sendError(c, protocol.CodeInvalidToken, protocol.TextInvalidToken, "sub")
		return
	case !c.TokenDeadline().IsZero() && (claims.Deadline.IsZero() || !claims.Deadline.After(c.TokenDeadline())):
		// A refresh only moves the end later, and never lifts it: a token
		// without exp (allowed only by --jwt-allow-no-exp) cannot refresh a
		// connection whose token expires.
		h.sendError(c, protocol.CodeInvalidToken, protocol.TextInvalidToken, "exp")
		return
	}
	// The connection now ends when the new token would be refused: its exp
	// plus the leeway, the same rule as at the handshake.
	c.SetTokenDeadline(claims.Deadline)
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"refreshed"`...)
	if !claims.ExpiresAt.IsZero() {
		b.B = append(b.B, `,"expiresAt":"`...)
		b.B = claims.ExpiresAt.UTC().AppendFormat(b.B, protocol.TimeLayout)
		b.B = append(b.B, '"')
	}
	b.B = append(b.B, '}')
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// TokenExpired is called by the server before it closes a connection whose
// token expired, so the client can read why in its own protocol.
func (h *Handler) TokenExpired(c *server.Conn) {
	h.sendError(c, protocol.CodeTokenExpired, protocol.TextTokenExpired, "")
}

// Dropped implements DropNotifier: a slow consumer that caught up learns how
// many messages it missed.
func (h *Handler) Dropped(c *server.Conn, n int) {
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"error","code":"`+protocol.CodeMessagesDropped+`","message":"`...)
	b.B = strconv.AppendInt(b.B, int64(n), 10)
	b.B = append(b.B, protocol.TextMessagesDropped+`","count":`...)
	b.B = strconv.AppendInt(b.B, int64(n), 10)
	b.B = append(b.B, '}')
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// OnClose implements server.Handler: the connection leaves every room it was in, and
// each room hears user-left.
func (h *Handler) OnClose(c *server.Conn, _ ws.StatusCode, _ string) {
	cc, ok := c.Data().(*chatConn)
	if !ok {
		return
	}
	if h.anyPending.Load() {
		h.dropPending(cc)
	}
	for n := cc.rooms(); n > 0; n-- {
		h.drop(cc, n-1)
	}
}

// OnError implements server.Handler.
func (h *Handler) OnError(c *server.Conn, err error) {
	if h.Logger != nil {
		h.Logger.Debug("connection error", "user", c.UserID(), "err", err)
	}
}

// sendError sends {"type":"error","code":…,"message":…}; a non-empty field is
// named in the message and sent as "field".
func (h *Handler) sendError(c *server.Conn, code, msg, field string) {
	b := bytebufferpool.Get()
	b.B = protocol.AppendError(b.B, code, msg, nil, field)
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}
