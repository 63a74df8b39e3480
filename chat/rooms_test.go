package chat

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// chatWire is any message the chat endpoint sends, decoded loosely; keys lists
// the fields that were present so tests can check a message's exact shape.
type chatWire struct {
	Type      string `json:"type"`
	RoomID    string `json:"roomId"`
	UserID    string `json:"userId"`
	UserName  string `json:"userName"`
	UserCount int    `json:"userCount"`
	Content   string `json:"content"`
	Timestamp string `json:"timestamp"`
	Code      string `json:"code"`
	Message   string `json:"message"`
	Field     string `json:"field"`
	Count     int    `json:"count"`

	keys []string
	raw  string
}

func decodeChatWire(b []byte) (chatWire, error) {
	var m chatWire
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w in %q", err, b)
	}
	var fields map[string]json.RawMessage
	json.Unmarshal(b, &fields)
	for k := range fields {
		m.keys = append(m.keys, k)
	}
	slices.Sort(m.keys)
	m.raw = string(b)
	return m, nil
}

// hasKeys checks that m has exactly the given fields.
func (m chatWire) hasKeys(t *testing.T, keys ...string) {
	t.Helper()
	want := slices.Clone(keys)
	slices.Sort(want)
	if !slices.Equal(m.keys, want) {
		t.Errorf("%s: fields %v, want %v", m.raw, m.keys, want)
	}
}

// chatPeer is a gorilla/websocket client of /ws.
type chatPeer struct {
	t  *testing.T
	c  *websocket.Conn
	id string // the userId the server greeted it with
}

// dialPeer connects to /ws and reads the connected greeting.
func dialPeer(t *testing.T, ts *testServer) *chatPeer {
	t.Helper()
	p := &chatPeer{t: t, c: dial(t, ts.URL("/ws"), nil)}
	hello := p.expect("connected")
	hello.hasKeys(t, "type", "userId", "timestamp")
	if hello.UserID == "" {
		t.Fatalf("connected without a userId: %s", hello.raw)
	}
	p.id = hello.UserID
	return p
}

// send writes v as a text message: a string as it is, anything else as JSON.
func (p *chatPeer) send(v any) {
	p.t.Helper()
	b, ok := v.(string)
	if !ok {
		j, err := json.Marshal(v)
		if err != nil {
			p.t.Fatal(err)
		}
		b = string(j)
	}
	if err := p.c.WriteMessage(websocket.TextMessage, []byte(b)); err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

func (p *chatPeer) read() chatWire {
	p.t.Helper()
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	op, b, err := p.c.ReadMessage()
	if err != nil {
		p.t.Fatalf("%s: read: %v", p.id, err)
	}
	if op != websocket.TextMessage {
		p.t.Fatalf("%s: opcode %d, want text", p.id, op)
	}
	m, err := decodeChatWire(b)
	if err != nil {
		p.t.Fatal(err)
	}
	return m
}

// expect reads the next message, which must be of type typ.
func (p *chatPeer) expect(typ string) chatWire {
	p.t.Helper()
	m := p.read()
	if m.Type != typ {
		p.t.Fatalf("%s: got %s, want a %q message", p.id, m.raw, typ)
	}
	return m
}

// join joins roomID as name and checks the joined reply.
func (p *chatPeer) join(roomID, name string, wantCount int) {
	p.t.Helper()
	p.send(map[string]string{"type": "join", "roomId": roomID, "userName": name})
	m := p.expect("joined")
	m.hasKeys(p.t, "type", "roomId", "userId", "userCount")
	if m.RoomID != roomID || m.UserID != p.id || m.UserCount != wantCount {
		p.t.Fatalf("joined %s, want room %q, user %q, count %d", m.raw, roomID, p.id, wantCount)
	}
}

func (p *chatPeer) chat(roomID, content string) {
	p.t.Helper()
	p.send(map[string]string{"type": "chat", "roomId": roomID, "content": content})
}

// sync sends a ping and expects the pong as the very next message: everything
// sent to the peer before has been read, and nothing else is queued.
func (p *chatPeer) sync() {
	p.t.Helper()
	p.send(`{"type":"ping"}`)
	p.expect("pong").hasKeys(p.t, "type")
}

// expectPresence reads a user-joined or user-left message and checks it.
func (p *chatPeer) expectPresence(typ, roomID string, who *chatPeer, name string, count int) {
	p.t.Helper()
	m := p.expect(typ)
	m.hasKeys(p.t, "type", "roomId", "userId", "userName", "userCount")
	if m.RoomID != roomID || m.UserID != who.id || m.UserName != name || m.UserCount != count {
		p.t.Fatalf("got %s, want %s in %q of %q (%s) with userCount %d", m.raw, typ, roomID, who.id, name, count)
	}
}

// expectMessage reads a message and checks it.
func (p *chatPeer) expectMessage(roomID string, from *chatPeer, name, content string) {
	p.t.Helper()
	m := p.expect("message")
	checkMessage(p.t, m, roomID, from.id, name, content)
}

func checkMessage(t *testing.T, m chatWire, roomID, userID, name, content string) {
	t.Helper()
	m.hasKeys(t, "type", "roomId", "userId", "userName", "content", "timestamp")
	if m.RoomID != roomID || m.UserID != userID || m.UserName != name || m.Content != content {
		t.Fatalf("got %s, want a message in %q from %q (%s): %q", m.raw, roomID, userID, name, content)
	}
	ts, err := time.Parse(time.RFC3339, m.Timestamp)
	if err != nil {
		t.Fatalf("timestamp %q: %v", m.Timestamp, err)
	}
	if !strings.HasSuffix(m.Timestamp, "Z") {
		t.Errorf("timestamp %q is not in UTC", m.Timestamp)
	}
	if d := time.Since(ts); d < -time.Minute || d > time.Minute {
		t.Errorf("timestamp %q is %v away from now", m.Timestamp, d)
	}
}

func unlimitedChat(c *Handler) { c.Rate = -1 }

func TestRoomsJoinChatLeave(t *testing.T) {
	ts := startChatServer(t, server.Options{}, unlimitedChat)
	a, b, c := dialPeer(t, ts), dialPeer(t, ts), dialPeer(t, ts)

	a.join("lobby", "Al", 1)
	b.join("lobby", "Bo", 2)
	a.expectPresence("user-joined", "lobby", b, "Bo", 2)
	c.join("lobby", "Cy", 3)
	a.expectPresence("user-joined", "lobby", c, "Cy", 3)
	b.expectPresence("user-joined", "lobby", c, "Cy", 3)

	a.chat("lobby", "hello, \"world\" ✓")
	for _, p := range []*chatPeer{a, b, c} {
		p.expectMessage("lobby", a, "Al", "hello, \"world\" ✓")
	}
	c.chat("lobby", "hi Al")
	for _, p := range []*chatPeer{a, b, c} {
		p.expectMessage("lobby", c, "Cy", "hi Al")
	}

	b.send(`{"type":"leave","roomId":"lobby"}`)
	left := b.expect("left")
	left.hasKeys(t, "type", "roomId")
	if left.RoomID != "lobby" {
		t.Fatalf("left %s", left.raw)
	}
	a.expectPresence("user-left", "lobby", b, "Bo", 2)
	c.expectPresence("user-left", "lobby", b, "Bo", 2)

	// b is out: it gets no more of the room's messages, and may not speak.
	a.chat("lobby", "after b left")
	a.expectMessage("lobby", a, "Al", "after b left")
	c.expectMessage("lobby", a, "Al", "after b left")
	b.chat("lobby", "let me in")
	if m := b.expect("error"); m.Code != protocol.CodeNotInRoom {
		t.Fatalf("chat after leave: %s", m.raw)
	}
	for _, p := range []*chatPeer{a, b, c} {
		p.sync()
	}
	if n := ts.Rooms.Count("lobby"); n != 2 {
		t.Errorf("Count(lobby) = %d, want 2", n)
	}

	// Leaving the last members deletes the room.
	a.send(`{"type":"leave","roomId":"lobby"}`)
	a.expect("left")
	c.expectPresence("user-left", "lobby", a, "Al", 1)
	c.send(`{"type":"leave","roomId":"lobby"}`)
	c.expect("left")
	if st := ts.Rooms.Stats(); st != (room.Stats{}) {
		t.Errorf("room table %+v after everyone left, want empty", st)
	}
	// And it can be made again.
	b.join("lobby", "Bo", 1)
}

// TestRoomsCloseLeavesEveryRoom ends a connection that is in three rooms, each
// way a connection can end, and checks each room hears user-left with the name
// the connection had in that room.
func TestRoomsCloseLeavesEveryRoom(t *testing.T) {
	cases := []struct {
		name string
		end  func(t *testing.T, p *chatPeer)
	}{
		{"close handshake", func(t *testing.T, p *chatPeer) {
			p.c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"))
			expectClose(t, p.c, websocket.CloseNormalClosure)
		}},
		{"tcp close", func(t *testing.T, p *chatPeer) { p.c.Close() }},
		{"tcp reset", func(t *testing.T, p *chatPeer) {
			p.c.UnderlyingConn().(*net.TCPConn).SetLinger(0)
			p.c.Close()
		}},
		{"server closes for a binary frame", func(t *testing.T, p *chatPeer) {
			p.c.WriteMessage(websocket.BinaryMessage, []byte{1, 2, 3})
			expectClose(t, p.c, websocket.CloseUnsupportedData)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startChatServer(t, server.Options{}, unlimitedChat)
			obs, x := dialPeer(t, ts), dialPeer(t, ts)
			rooms := []string{"r1", "r2", "r3"}
			for _, r := range rooms {
				obs.join(r, "Obs", 1)
			}
			for i, r := range rooms {
				x.join(r, fmt.Sprint("X", i+1), 2)
				obs.expectPresence("user-joined", r, x, fmt.Sprint("X", i+1), 2)
			}
			tc.end(t, x)
			got := map[string]string{}
			for range rooms {
				m := obs.expect("user-left")
				m.hasKeys(t, "type", "roomId", "userId", "userName", "userCount")
				if m.UserID != x.id || m.UserCount != 1 {
					t.Fatalf("user-left %s, want %s with userCount 1", m.raw, x.id)
				}
				if _, dup := got[m.RoomID]; dup {
					t.Fatalf("two user-left for %q", m.RoomID)
				}
				got[m.RoomID] = m.UserName
			}
			want := map[string]string{"r1": "X1", "r2": "X2", "r3": "X3"}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("user-left names by room %v, want %v", got, want)
			}
			obs.sync()
			for _, r := range rooms {
				if n := ts.Rooms.Count(r); n != 1 {
					t.Errorf("Count(%s) = %d, want 1", r, n)
				}
			}
		})
	}
}

// TestRoomsUserNamePerRoom checks a connection's name is its name in each room,
// as throng keeps one per (connection, room) where the seed kept one per socket.
func TestRoomsUserNamePerRoom(t *testing.T) {
	ts := startChatServer(t, server.Options{}, unlimitedChat)
	obs, x := dialPeer(t, ts), dialPeer(t, ts)
	obs.join("a", "Obs", 1)
	obs.join("b", "Obs", 1)
	x.join("a", "Al", 2)
	obs.expectPresence("user-joined", "a", x, "Al", 2)
	x.join("b", "Bo", 2)
	obs.expectPresence("user-joined", "b", x, "Bo", 2)

	x.chat("a", "in a")
	x.expectMessage("a", x, "Al", "in a")
	obs.expectMessage("a", x, "Al", "in a")
	x.chat("b", "in b")
	x.expectMessage("b", x, "Bo", "in b")
	obs.expectMessage("b", x, "Bo", "in b")

	x.send(`{"type":"leave","roomId":"a"}`)
	x.expect("left")
	obs.expectPresence("user-left", "a", x, "Al", 1)
	x.chat("b", "still Bo")
	x.expectMessage("b", x, "Bo", "still Bo")
	obs.expectMessage("b", x, "Bo", "still Bo")

	x.join("a", "Cy", 2)
	obs.expectPresence("user-joined", "a", x, "Cy", 2)
	x.chat("a", "now Cy")
	x.expectMessage("a", x, "Cy", "now Cy")
	obs.expectMessage("a", x, "Cy", "now Cy")
	x.c.Close()
	left := map[string]string{}
	for range 2 {
		m := obs.expect("user-left")
		left[m.RoomID] = m.UserName
	}
	if left["a"] != "Cy" || left["b"] != "Bo" {
		t.Fatalf("user-left names %v, want a:Cy b:Bo", left)
	}
}

func TestRoomsErrors(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	cases := []struct {
		name  string
		joins []string // rooms to join first
		msg   string
		code  string
		text  string
		field string
	}{
		{name: "not JSON", msg: `hello`, code: protocol.CodeInvalidJSON, text: "Invalid JSON"},
		{name: "truncated JSON", msg: `{"type":"join"`, code: protocol.CodeInvalidJSON, text: "Invalid JSON"},
		{name: "JSON array", msg: `[{"type":"ping"}]`, code: protocol.CodeInvalidJSON, text: "Invalid JSON"},
		{name: "JSON string", msg: `"ping"`, code: protocol.CodeInvalidJSON, text: "Invalid JSON"},
		{name: "JSON null", msg: `null`, code: protocol.CodeInvalidJSON, text: "Invalid JSON"},
		{name: "empty message", msg: ``, code: protocol.CodeInvalidJSON, text: "Invalid JSON"},
		{name: "trailing garbage", msg: `{"type":"ping"} x`, code: protocol.CodeInvalidJSON, text: "Invalid JSON"},

		{name: "type missing", msg: `{"roomId":"r"}`, code: protocol.CodeInvalidMessage, field: "type"},
		{name: "type number", msg: `{"type":1}`, code: protocol.CodeInvalidMessage, field: "type"},
		{name: "type null", msg: `{"type":null}`, code: protocol.CodeInvalidMessage, field: "type"},
		{name: "type object", msg: `{"type":{"x":"join"}}`, code: protocol.CodeInvalidMessage, field: "type"},

		{name: "join roomId missing", msg: `{"type":"join","userName":"n"}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "join roomId number", msg: `{"type":"join","roomId":7,"userName":"n"}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "join roomId array", msg: `{"type":"join","roomId":["r"],"userName":"n"}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "join roomId empty", msg: `{"type":"join","roomId":"","userName":"n"}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "join roomId 129 bytes", msg: `{"type":"join","roomId":"` + long(129) + `","userName":"n"}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "join roomId 129 bytes of 2-byte runes", msg: `{"type":"join","roomId":"x` + strings.Repeat("é", 64) + `","userName":"n"}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "join roomId control char", msg: `{"type":"join","roomId":"a\u0001b","userName":"n"}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "join roomId newline", msg: `{"type":"join","roomId":"a\nb","userName":"n"}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "join roomId DEL", msg: `{"type":"join","roomId":"a\u007f","userName":"n"}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "join userName missing", msg: `{"type":"join","roomId":"r"}`, code: protocol.CodeInvalidMessage, field: "userName"},
		{name: "join userName empty", msg: `{"type":"join","roomId":"r","userName":""}`, code: protocol.CodeInvalidMessage, field: "userName"},
		{name: "join userName 51 chars", msg: `{"type":"join","roomId":"r","userName":"` + long(51) + `"}`, code: protocol.CodeInvalidMessage, field: "userName"},
		{name: "join userName 51 2-byte chars", msg: `{"type":"join","roomId":"r","userName":"` + strings.Repeat("é", 51) + `"}`, code: protocol.CodeInvalidMessage, field: "userName"},
		{name: "join userName number", msg: `{"type":"join","roomId":"r","userName":42}`, code: protocol.CodeInvalidMessage, field: "userName"},
		{name: "join userName null", msg: `{"type":"join","roomId":"r","userName":null}`, code: protocol.CodeInvalidMessage, field: "userName"},
		{name: "join userName control char", msg: `{"type":"join","roomId":"r","userName":"a\tb"}`, code: protocol.CodeInvalidMessage, field: "userName"},

		{name: "chat roomId missing", msg: `{"type":"chat","content":"hi"}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "chat roomId number", msg: `{"type":"chat","roomId":1,"content":"hi"}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "chat content missing", joins: []string{"r"}, msg: `{"type":"chat","roomId":"r"}`, code: protocol.CodeInvalidMessage, field: "content"},
		{name: "chat content empty", joins: []string{"r"}, msg: `{"type":"chat","roomId":"r","content":""}`, code: protocol.CodeInvalidMessage, field: "content"},
		{name: "chat content 501 chars", joins: []string{"r"}, msg: `{"type":"chat","roomId":"r","content":"` + long(501) + `"}`, code: protocol.CodeInvalidMessage, field: "content"},
		{name: "chat content 501 3-byte chars", joins: []string{"r"}, msg: `{"type":"chat","roomId":"r","content":"` + strings.Repeat("€", 501) + `"}`, code: protocol.CodeInvalidMessage, field: "content"},
		{name: "chat content number", joins: []string{"r"}, msg: `{"type":"chat","roomId":"r","content":5}`, code: protocol.CodeInvalidMessage, field: "content"},
		{name: "chat content object", joins: []string{"r"}, msg: `{"type":"chat","roomId":"r","content":{"text":"hi"}}`, code: protocol.CodeInvalidMessage, field: "content"},

		{name: "leave roomId missing", joins: []string{"r"}, msg: `{"type":"leave"}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "leave roomId number", joins: []string{"r"}, msg: `{"type":"leave","roomId":1}`, code: protocol.CodeInvalidMessage, field: "roomId"},
		{name: "refresh token missing", msg: `{"type":"refresh"}`, code: protocol.CodeInvalidMessage, field: "token"},

		{name: "chat in no room", msg: `{"type":"chat","roomId":"r","content":"hi"}`, code: protocol.CodeNotInRoom, text: "Not in this room"},
		{name: "chat in a room of others", msg: `{"type":"chat","roomId":"busy","content":"hi"}`, code: protocol.CodeNotInRoom, text: "Not in this room"},
		{name: "chat in another room", joins: []string{"mine"}, msg: `{"type":"chat","roomId":"busy","content":"hi"}`, code: protocol.CodeNotInRoom, text: "Not in this room"},
		{name: "leave no room", msg: `{"type":"leave","roomId":"r"}`, code: protocol.CodeNotInRoom, text: "Not in this room"},
		{name: "leave a room of others", msg: `{"type":"leave","roomId":"busy"}`, code: protocol.CodeNotInRoom, text: "Not in this room"},

		{name: "unknown type", msg: `{"type":"dance"}`, code: protocol.CodeUnknownType, text: "Unknown message type: dance"},
		{name: "type is case-sensitive", msg: `{"type":"JOIN","roomId":"r","userName":"n"}`, code: protocol.CodeUnknownType, text: "Unknown message type: JOIN"},
		{name: "unknown type with quotes", msg: `{"type":"a\"b\\c"}`, code: protocol.CodeUnknownType, text: `Unknown message type: a"b\c`},
		{name: "unknown type unicode", msg: `{"type":"tänzeln"}`, code: protocol.CodeUnknownType, text: "Unknown message type: tänzeln"},
		{name: "empty type", msg: `{"type":""}`, code: protocol.CodeUnknownType, text: "Unknown message type: "},

		{name: "join twice", joins: []string{"r"}, msg: `{"type":"join","roomId":"r","userName":"again"}`, code: protocol.CodeAlreadyInRoom, text: "Already in this room"},
	}
	ts := startChatServer(t, server.Options{}, unlimitedChat)
	busy := dialPeer(t, ts)
	busy.join("busy", "Busy", 1)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := dialPeer(t, ts)
			defer func() {
				// The next case joins the same rooms afresh.
				p.c.Close()
				waitFor(t, "the rooms to empty", func() bool { return ts.Rooms.Stats().Members == 1 })
			}()
			for i, r := range tc.joins {
				p.join(r, fmt.Sprint("n", i), 1)
			}
			p.send(tc.msg)
			m := p.expect("error")
			text := tc.text
			if tc.field != "" {
				text = "Invalid message format: " + tc.field
				m.hasKeys(t, "type", "code", "message", "field")
			} else {
				m.hasKeys(t, "type", "code", "message")
			}
			if m.Code != tc.code || m.Message != text || m.Field != tc.field {
				t.Fatalf("got %s, want code %q message %q field %q", m.raw, tc.code, text, tc.field)
			}
			// The error costs nothing else: the connection still works, and
			// its rooms are as they were.
			p.sync()
			for _, r := range tc.joins {
				p.chat(r, "still here")
				p.expectMessage(r, p, "n0", "still here")
			}
		})
	}
	busy.sync()
	if n := ts.Rooms.Count("busy"); n != 1 {
		t.Errorf("Count(busy) = %d, want 1", n)
	}
}

func TestRoomsLimitsOfValidInput(t *testing.T) {
	ts := startChatServer(t, server.Options{}, unlimitedChat)
	p := dialPeer(t, ts)
	id128 := strings.Repeat("r", 128)
	idUTF8 := strings.Repeat("é", 64) // 128 bytes
	p.join(id128, strings.Repeat("n", 50), 1)
	p.join(idUTF8, strings.Repeat("ñ", 50), 1)
	p.join("with spaces / and ✓ 🎉", "🎉", 1)
	for _, content := range []string{"x", strings.Repeat("c", 500), strings.Repeat("€", 500), "line\nbreak\ttab \"quoted\" \\ \u0000 nul"} {
		p.chat(id128, content)
		p.expectMessage(id128, p, strings.Repeat("n", 50), content)
	}
	p.chat(idUTF8, "é")
	p.expectMessage(idUTF8, p, strings.Repeat("ñ", 50), "é")
	p.chat("with spaces / and ✓ 🎉", "party")
	p.expectMessage("with spaces / and ✓ 🎉", p, "🎉", "party")
}

func TestRoomsUnknownFieldsIgnored(t *testing.T) {
	ts := startChatServer(t, server.Options{}, unlimitedChat)
	a, b := dialPeer(t, ts), dialPeer(t, ts)
	a.send(`{"id":1,"type":"join","roomId":"r","userName":"Al","extra":{"deep":[1,{"x":null}]},"userCount":99}`)
	if m := a.expect("joined"); m.UserCount != 1 || m.RoomID != "r" {
		t.Fatalf("joined %s", m.raw)
	}
	b.join("r", "Bo", 2)
	a.expectPresence("user-joined", "r", b, "Bo", 2)
	b.send(`{"type":"chat","roomId":"r","content":"hi","userName":"Mallory","userId":"server","timestamp":"1970-01-01T00:00:00Z"}`)
	a.expectMessage("r", b, "Bo", "hi")
	b.expectMessage("r", b, "Bo", "hi")
	a.send(`{"type":"ping","payload":[1,2,3]}`)
	a.expect("pong")
	a.send(`{"roomId":"r","type":"leave","x":true}`)
	a.expect("left")
	b.expectPresence("user-left", "r", a, "Al", 1)
}

func TestRoomsBinaryFrameCloses1003(t *testing.T) {
	ts := startChatServer(t, server.Options{}, unlimitedChat)
	p := dialPeer(t, ts)
	p.c.WriteMessage(websocket.BinaryMessage, []byte(`{"type":"ping"}`))
	expectClose(t, p.c, websocket.CloseUnsupportedData)
}

func TestRoomsTooManyRoomsPerConn(t *testing.T) {
	ts := startChatServer(t, server.Options{}, func(c *Handler) { c.Rate = -1; c.MaxRoomsPerConn = 3 })
	p := dialPeer(t, ts)
	for i := range 3 {
		p.join(fmt.Sprint("r", i), "n", 1)
	}
	for range 2 {
		p.send(`{"type":"join","roomId":"r3","userName":"n"}`)
		m := p.expect("error")
		m.hasKeys(t, "type", "code", "message")
		if m.Code != protocol.CodeTooManyRooms || m.Message != "Too many rooms" {
			t.Fatalf("fourth join: %s", m.raw)
		}
	}
	if n := ts.Rooms.Count("r3"); n != 0 {
		t.Fatalf("refused join left r3 with %d members", n)
	}
	// Already being in the room is the better answer than the limit.
	p.send(`{"type":"join","roomId":"r0","userName":"n"}`)
	if m := p.expect("error"); m.Code != protocol.CodeAlreadyInRoom {
		t.Fatalf("rejoin at the limit: %s", m.raw)
	}
	p.send(`{"type":"leave","roomId":"r1"}`)
	p.expect("left")
	p.join("r3", "n", 1)
	// The limit is per connection.
	q := dialPeer(t, ts)
	for i := range 3 {
		q.join(fmt.Sprint("q", i), "n", 1)
	}
}

func TestRoomsRoomFull(t *testing.T) {
	s, err := server.New(server.Options{Backend: testBackend, Loops: 2, TickInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	rooms := room.New(s.Loops(), room.Options{MaxMembers: 2})
	s.Handle("/ws", &Handler{Rooms: rooms, RateLimit: server.RateLimit{Rate: -1}})
	addr, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: s, t: t, Addr: addr.String(), Rooms: rooms}

	a, b, c := dialPeer(t, ts), dialPeer(t, ts), dialPeer(t, ts)
	a.join("r", "A", 1)
	b.join("r", "B", 2)
	a.expectPresence("user-joined", "r", b, "B", 2)
	c.send(`{"type":"join","roomId":"r","userName":"C"}`)
	m := c.expect("error")
	m.hasKeys(t, "type", "code", "message")
	if m.Code != protocol.CodeRoomFull || m.Message != "Room is full" {
		t.Fatalf("third join: %s", m.raw)
	}
	// The refused join is not in the room: it is told nothing and cannot speak,
	// and the members heard nothing of it.
	c.chat("r", "hi")
	if m := c.expect("error"); m.Code != protocol.CodeNotInRoom {
		t.Fatalf("chat after refused join: %s", m.raw)
	}
	a.sync()
	b.sync()
	// Other rooms are not full.
	c.join("s", "C", 1)
	// Once someone leaves there is space.
	b.send(`{"type":"leave","roomId":"r"}`)
	b.expect("left")
	a.expectPresence("user-left", "r", b, "B", 1)
	c.join("r", "C", 2)
	a.expectPresence("user-joined", "r", c, "C", 2)
}

// TestRoomsManyRoomsPerConn puts one connection in 50 rooms and checks every
// message reaches it tagged with its room and the sender's name there.
func TestRoomsManyRoomsPerConn(t *testing.T) {
	const n = 50
	ts := startChatServer(t, server.Options{}, unlimitedChat)
	hub, other := dialPeer(t, ts), dialPeer(t, ts)
	for i := range n {
		hub.join(fmt.Sprint("room-", i), fmt.Sprint("hub-", i), 1)
	}
	for i := range n {
		other.join(fmt.Sprint("room-", i), fmt.Sprint("other-", i), 2)
		hub.expectPresence("user-joined", fmt.Sprint("room-", i), other, fmt.Sprint("other-", i), 2)
	}
	if st := ts.Rooms.Stats(); st.Rooms != n || st.Members != 2*n {
		t.Fatalf("room table %+v, want %d rooms of 2", st, n)
	}
	// Every room at once, from both sides.
	for i := range n {
		other.chat(fmt.Sprint("room-", i), fmt.Sprint("to hub ", i))
		hub.chat(fmt.Sprint("room-", i), fmt.Sprint("from hub ", i))
	}
	// Each peer's own messages arrive in the order sent; the other's are
	// interleaved, so collect by room.
	collect := func(p *chatPeer) map[string][]chatWire {
		got := map[string][]chatWire{}
		for range 2 * n {
			m := p.expect("message")
			got[m.RoomID] = append(got[m.RoomID], m)
		}
		p.sync()
		return got
	}
	for _, p := range []*chatPeer{hub, other} {
		got := collect(p)
		if len(got) != n {
			t.Fatalf("messages in %d rooms, want %d", len(got), n)
		}
		for i := range n {
			r := fmt.Sprint("room-", i)
			ms := got[r]
			if len(ms) != 2 {
				t.Fatalf("%s: %d messages in %s, want 2", p.id, len(ms), r)
			}
			slices.SortFunc(ms, func(a, b chatWire) int { return strings.Compare(a.Content, b.Content) })
			checkMessage(t, ms[0], r, hub.id, fmt.Sprint("hub-", i), fmt.Sprint("from hub ", i))
			checkMessage(t, ms[1], r, other.id, fmt.Sprint("other-", i), fmt.Sprint("to hub ", i))
		}
	}
	hub.c.Close()
	seen := map[string]bool{}
	for range n {
		m := other.expect("user-left")
		if m.UserID != hub.id || m.UserCount != 1 || m.UserName != "hub-"+strings.TrimPrefix(m.RoomID, "room-") || seen[m.RoomID] {
			t.Fatalf("user-left %s", m.raw)
		}
		seen[m.RoomID] = true
	}
	other.sync()
	if st := ts.Rooms.Stats(); st.Rooms != n || st.Members != n {
		t.Fatalf("room table %+v after hub left, want %d rooms of 1", st, n)
	}
}

// TestRoomsDisconnectMidRoom drops one of three members abruptly while another
// is talking, and checks the two left see the same room history: every message,
// and the user-left, in one order.
func TestRoomsDisconnectMidRoom(t *testing.T) {
	ts := startChatServer(t, server.Options{Loops: 3}, unlimitedChat)
	a, b, c := dialPeer(t, ts), dialPeer(t, ts), dialPeer(t, ts)
	a.join("mid", "A", 1)
	b.join("mid", "B", 2)
	a.expectPresence("user-joined", "mid", b, "B", 2)
	c.join("mid", "C", 3)
	a.expectPresence("user-joined", "mid", c, "C", 3)
	b.expectPresence("user-joined", "mid", c, "C", 3)

	const msgs = 40
	for i := range msgs {
		a.chat("mid", fmt.Sprint("a", i))
		if i == msgs/2 {
			b.c.UnderlyingConn().(*net.TCPConn).SetLinger(0)
			b.c.Close()
		}
	}
	for i := range msgs {
		c.chat("mid", fmt.Sprint("c", i))
	}
	history := func(p *chatPeer) []string {
		var h []string
		left := false
		for len(h) < 2*msgs+1 {
			m := p.read()
			switch m.Type {
			case "message":
				h = append(h, m.UserName+":"+m.Content)
			case "user-left":
				if left || m.UserID != b.id || m.UserName != "B" || m.UserCount != 2 {
					t.Fatalf("%s: unexpected %s", p.id, m.raw)
				}
				left = true
				h = append(h, "left:B")
			default:
				t.Fatalf("%s: unexpected %s", p.id, m.raw)
			}
		}
		p.sync()
		return h
	}
	ha, hc := history(a), history(c)
	if !slices.Equal(ha, hc) {
		t.Fatalf("members saw different histories:\n%v\n%v", ha, hc)
	}
	// Each sender's messages are in the order it sent them.
	var na, nc int
	for _, e := range ha {
		switch {
		case strings.HasPrefix(e, "A:"):
			if e != fmt.Sprint("A:a", na) {
				t.Fatalf("A's message %d is %q", na, e)
			}
			na++
		case strings.HasPrefix(e, "C:"):
			if e != fmt.Sprint("C:c", nc) {
				t.Fatalf("C's message %d is %q", nc, e)
			}
			nc++
		}
	}
	if n := ts.Rooms.Count("mid"); n != 2 {
		t.Fatalf("Count(mid) = %d, want 2", n)
	}
}

// dialRawWS connects over plain TCP and upgrades to path. It returns errors
// instead of failing t, so goroutines may call it; the caller closes the
// connection. A non-zero rcvbuf is set as SO_RCVBUF before the connect, so the
// window the client advertises is small from the first segment.
func dialRawWS(t testing.TB, addr, path string, rcvbuf int) (*rawConn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if rcvbuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			})
			return errors.Join(err, serr)
		}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		nc.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(nc, 2048)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		nc.Close()
		return nil, fmt.Errorf("handshake: status %d", resp.StatusCode)
	}
	return &rawConn{t: t, Conn: nc, br: br}, nil
}

// readChat reads the next text frame as a chat message; any other frame is an
// error.
func (c *rawConn) readChat() (chatWire, error) {
	op, fin, p, err := c.readFrame()
	if err != nil {
		return chatWire{}, err
	}
	if op == 0x8 {
		return chatWire{}, fmt.Errorf("close frame %q", p)
	}
	if op != 0x1 || !fin {
		return chatWire{}, fmt.Errorf("frame op %#x fin %v, want a final text frame", op, fin)
	}
	return decodeChatWire(p)
}

// killConn ends a connection with a reset, so the server's writes to it fail at
// once instead of filling a buffer nobody reads.
func killConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// TestRoomsLargeRoom fills one room and checks every member gets every message
// exactly once.
//
// The issue asks for 10,000 members on loopback. Here client and server share
// one process, whose descriptor limit is 20,000: 10,000 members would need
// 20,000 descriptors before the test's own, so the big variant has 9,000. The
// 10,000-member fan-out itself is measured by room/'s benchmarks. Under -race or
// -short the room has 1,000 members.
func TestRoomsLargeRoom(t *testing.T) {
	n := 9000
	if testing.Short() || raceEnabled {
		n = 1000
	}
	// Joining over the protocol tells every member of each join: n²/2 user-joined
	// frames, 40 million for 9,000 members, half a million for 1,000, which
	// would make this a test of presence (TestRoomsPresenceAtScale is one). So
	// the members are put in the room on their own loops, as a join message
	// would put them but without telling the room; everything after is the
	// protocol: chat messages in, Broadcast's per-loop fan-out, frames out.
	const roomID = "big"
	ts := startChatServer(t, server.Options{Loops: 2}, unlimitedChat)

	members := make([]*rawConn, n)
	var dialErr atomic.Value
	var dials sync.WaitGroup
	next := atomic.Int64{}
	for range 32 {
		dials.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || dialErr.Load() != nil {
					return
				}
				c, err := dialRawWS(t, ts.Addr, "/ws", 0)
				if err == nil {
					if _, err = c.readChat(); err != nil { // connected
						c.Close()
					}
				}
				if err != nil {
					dialErr.CompareAndSwap(nil, fmt.Errorf("member %d: %w", i, err))
					return
				}
				members[i] = c
			}
		})
	}
	dials.Wait()
	t.Cleanup(func() {
		for _, c := range members {
			if c != nil {
				killConn(c)
			}
		}
	})
	if err := dialErr.Load(); err != nil {
		t.Fatal(err)
	}

	if got := joinQuietly(t, ts, roomID); got != n {
		t.Fatalf("joined %d members, want %d", got, n)
	}
	if got := ts.Rooms.Count(roomID); got != n {
		t.Fatalf("Count = %d, want %d", got, n)
	}

	contents := []string{"m0", "m1", "m2", "m3", "m4"}
	type result struct {
		counts map[string]int
		err    error
	}
	results := make([]result, n)
	allSeen := make(chan struct{}) // member 0 has every message
	var readers sync.WaitGroup
	for i, c := range members {
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		readers.Go(func() {
			r := &results[i]
			r.counts = make(map[string]int, len(contents))
			for {
				op, _, p, err := c.readFrame()
				if err == nil && op != 0x1 {
					err = fmt.Errorf("frame op %#x %q", op, p)
				}
				if err != nil {
					r.err = err
					return
				}
				if bytes.HasPrefix(p, []byte(`{"type":"message"`)) {
					var m struct{ Content string }
					if err := json.Unmarshal(p, &m); err != nil {
						r.err = err
						return
					}
					if m.Content == "end" {
						return
					}
					r.counts[m.Content]++
					if i == 0 && len(r.counts) == len(contents) {
						close(allSeen)
					}
				}
			}
		})
	}
	defer func() {
		for _, c := range members {
			killConn(c)
		}
		readers.Wait()
		waitFor(t, "the room to empty", func() bool { return ts.Rooms.Count(roomID) == 0 })
	}()

	for k, content := range contents {
		members[k*n/len(contents)].send(0x1, fmt.Appendf(nil, `{"type":"chat","roomId":%q,"content":%q}`, roomID, content))
	}
	select {
	case <-allSeen:
	case <-time.After(time.Minute):
		t.Fatal("member 0 did not get every message")
	}
	// A room's messages reach every member in one order, and member 0 has seen
	// all five: a sixth, sent now, is behind them for everyone.
	members[0].send(0x1, fmt.Appendf(nil, `{"type":"chat","roomId":%q,"content":"end"}`, roomID))
	readers.Wait()
	bad := 0
	for i, r := range results {
		ok := r.err == nil && len(r.counts) == len(contents)
		for _, c := range contents {
			ok = ok && r.counts[c] == 1
		}
		if !ok {
			if bad++; bad <= 5 {
				t.Errorf("member %d: counts %v, err %v", i, r.counts, r.err)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d members did not get every message exactly once", bad, n)
	}
}

// joinQuietly puts every /ws connection in roomID on its own loop, as a join
// message would but without telling the room, and returns how many joined.
func joinQuietly(t *testing.T, ts *testServer, roomID string) int {
	t.Helper()
	var joined atomic.Int64
	var wg sync.WaitGroup
	for _, l := range ts.Loops() {
		wg.Add(1)
		l.Post(poller.FuncJob(func() {
			defer wg.Done()
			l.Range(func(pc *poller.Conn) bool {
				c := ts.ConnOf(pc)
				if c == nil || c.Path() != "/ws" || !c.Open() {
					return true
				}
				cc := ts.Chat.state(c)
				m := &room.Member{Sink: cc, Name: c.UserID()}
				if _, err := ts.Rooms.Join(l.Index(), roomID, m); err == nil {
					cc.add(m)
					joined.Add(1)
				}
				return true
			})
		}))
	}
	wg.Wait()
	return int(joined.Load())
}

// peerLog reads a gorilla peer in the background and records the messages and
// user-left events it gets, so a test can publish while its members read.
type peerLog struct {
	p        *chatPeer
	mu       sync.Mutex
	contents []string // guarded by mu
	left     []string // user-left userIds, guarded by mu
	other    []string // anything else, guarded by mu
	n        atomic.Int64
	done     chan struct{}
	err      error // set before done is closed
}

func logPeer(t *testing.T, p *chatPeer) *peerLog {
	l := &peerLog{p: p, done: make(chan struct{})}
	p.c.SetReadDeadline(time.Now().Add(time.Minute))
	go func() {
		defer close(l.done)
		for {
			_, b, err := p.c.ReadMessage()
			if err != nil {
				l.err = err
				return
			}
			m, err := decodeChatWire(b)
			l.mu.Lock()
			switch {
			case err != nil:
				l.other = append(l.other, string(b))
			case m.Type == "message":
				l.contents = append(l.contents, m.Content)
				l.n.Add(1)
			case m.Type == "user-left":
				l.left = append(l.left, m.UserID)
			default:
				l.other = append(l.other, m.raw)
			}
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		p.c.Close()
		<-l.done
	})
	return l
}

// TestRoomsSlowConsumer publishes to a room one of whose members stopped
// reading, and checks the others get every message without delay while the
// stuck one is closed or has messages dropped, as the policy says.
func TestRoomsSlowConsumer(t *testing.T) {
	for _, policy := range []server.SlowConsumerPolicy{server.SlowClose, server.SlowDrop} {
		t.Run(policy.String(), func(t *testing.T) {
			const roomID = "slow"
			ts := startChatServer(t, server.Options{MaxPending: 64 << 10, SlowConsumer: policy}, unlimitedChat)
			a, b := dialPeer(t, ts), dialPeer(t, ts)
			a.join(roomID, "A", 1)
			b.join(roomID, "B", 2)
			a.expectPresence("user-joined", roomID, b, "B", 2)

			stuck, err := dialRawWS(t, ts.Addr, "/ws", 4096)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { stuck.Close() })
			hello, err := stuck.readChat()
			if err != nil {
				t.Fatal(err)
			}
			stuckPeer := &chatPeer{t: t, id: hello.UserID}
			stuck.send(0x1, []byte(`{"type":"join","roomId":"slow","userName":"Stuck"}`))
			if m, err := stuck.readChat(); err != nil || m.Type != "joined" || m.UserCount != 3 {
				t.Fatalf("stuck member's join: %+v, %v", m, err)
			}
			a.expectPresence("user-joined", roomID, stuckPeer, "Stuck", 3)
			b.expectPresence("user-joined", roomID, stuckPeer, "Stuck", 3)
			// Loopback grows a socket's send buffer to megabytes; a small one
			// on the server's side of the stuck member makes it reach the
			// pending limit after a few hundred messages instead of thousands.
			setServerSndBuf(t, ts, stuckPeer.id, 8192)
			la, lb := logPeer(t, a), logPeer(t, b)

			// Publish in batches no bigger than the pending limit, each read by
			// the two readers before the next, until the stuck member has
			// passed the limit, and a few batches more.
			filler := strings.Repeat("x", 450)
			published, after := 0, 0
			triggered := func() bool {
				st := ts.Stats()
				return st.SlowClosed > 0 || st.SlowDropped > 0
			}
			for after < 3 {
				for range 50 {
					ts.Chat.Publish(roomID, ServerUserID, "pub", fmt.Sprint(published, " ", filler), time.Now())
					published++
				}
				deadline := time.Now().Add(10 * time.Second)
				for la.n.Load() < int64(published) || lb.n.Load() < int64(published) {
					if time.Now().After(deadline) {
						t.Fatalf("readers have %d and %d of %d messages: the stuck member is holding them up", la.n.Load(), lb.n.Load(), published)
					}
					time.Sleep(100 * time.Microsecond)
				}
				if triggered() {
					after++
				}
				if published > 100_000 {
					t.Fatalf("the stuck member never passed the pending limit: %+v", ts.Stats())
				}
			}
			t.Logf("published %d messages of %d bytes", published, len(filler))

			for _, l := range []*peerLog{la, lb} {
				l.mu.Lock()
				for i, c := range l.contents {
					if want := fmt.Sprint(i, " ", filler); c != want {
						t.Fatalf("reader's message %d is %.20q, want %.20q", i, c, want)
					}
				}
				if len(l.other) > 0 {
					t.Errorf("reader got unexpected messages: %.200q", l.other)
				}
				l.mu.Unlock()
			}

			st := ts.Stats()
			stuck.SetReadDeadline(time.Now().Add(20 * time.Second))
			received := 0
			// Whatever the stuck member reads is whole frames in order: the
			// policy drops messages, never parts of one.
			checkNext := func(m chatWire) {
				t.Helper()
				var seq int
				if _, err := fmt.Sscan(m.Content, &seq); err != nil || m.Type != "message" {
					t.Fatalf("stuck member read %.100q", m.raw)
				}
				if seq < received {
					t.Fatalf("stuck member read message %d after %d", seq, received)
				}
				if policy == server.SlowClose && seq != received {
					t.Fatalf("stuck member read message %d, want %d: messages before the close must not be dropped", seq, received)
				}
				received = seq + 1
			}
			switch policy {
			case server.SlowClose:
				if st.SlowClosed != 1 || st.SlowDropped != 0 || st.Closes["slow_consumer"] != 1 {
					t.Errorf("stats %+v, want one slow consumer closed", st)
				}
				got := 0
				for {
					op, _, p, err := stuck.readFrame()
					if err != nil {
						t.Fatalf("stuck member read %d messages then %v, want a close frame", got, err)
					}
					if op == 0x8 {
						if len(p) < 2 || int(p[0])<<8|int(p[1]) != 1008 || string(p[2:]) != "slow consumer" {
							t.Fatalf("close frame %q, want 1008 slow consumer", p)
						}
						break
					}
					m, err := decodeChatWire(p)
					if err != nil {
						t.Fatal(err)
					}
					checkNext(m)
					got++
				}
				if got >= published {
					t.Errorf("stuck member read all %d messages", published)
				}
				stuck.expectEOF()
				// The others heard it leave.
				waitFor(t, "user-left for the stuck member", func() bool {
					la.mu.Lock()
					defer la.mu.Unlock()
					lb.mu.Lock()
					defer lb.mu.Unlock()
					return slices.Equal(la.left, []string{stuckPeer.id}) && slices.Equal(lb.left, []string{stuckPeer.id})
				})
				if n := ts.Rooms.Count(roomID); n != 2 {
					t.Errorf("Count = %d after the stuck member was closed, want 2", n)
				}

			case server.SlowDrop:
				if st.SlowDropped == 0 || st.SlowClosed != 0 || st.Closes["slow_consumer"] != 0 {
					t.Errorf("stats %+v, want messages dropped and nobody closed", st)
				}
				if n := ts.Rooms.Count(roomID); n != 3 {
					t.Errorf("Count = %d, want the stuck member still in the room", n)
				}
				var dropped chatWire
				got := 0
				for {
					m, err := stuck.readChat()
					if err != nil {
						t.Fatalf("stuck member read %d messages then %v, want messages_dropped", got, err)
					}
					if m.Type == "error" {
						dropped = m
						break
					}
					checkNext(m)
					got++
				}
				dropped.hasKeys(t, "type", "code", "message", "count")
				if dropped.Code != protocol.CodeMessagesDropped || dropped.Count <= 0 {
					t.Fatalf("got %s, want messages_dropped with a count", dropped.raw)
				}
				if uint64(dropped.Count) != st.SlowDropped || got+dropped.Count != published {
					t.Errorf("stuck member read %d and was told %d were dropped, of %d published; server counted %d dropped",
						got, dropped.Count, published, st.SlowDropped)
				}
				// It is a member as before: it pings, and hears the room.
				stuck.send(0x1, []byte(`{"type":"ping"}`))
				if m, err := stuck.readChat(); err != nil || m.Type != "pong" {
					t.Fatalf("after catching up: %+v, %v; want pong", m, err)
				}
				ts.Chat.Publish(roomID, ServerUserID, "pub", "caught up", time.Now())
				if m, err := stuck.readChat(); err != nil || m.Content != "caught up" {
					t.Fatalf("after catching up: %+v, %v; want the next message", m, err)
				}
				la.mu.Lock()
				if len(la.left) != 0 {
					t.Errorf("members heard user-left %v under the drop policy", la.left)
				}
				la.mu.Unlock()
			}
		})
	}
}

// TestRoomsJoinerGetsOnlyLaterMessages joins right behind another member, on
// one loop, where the first join's user-joined may still be on its way when the
// second is handled, and checks the second joiner is not told of a join that
// came before its own, nor sent a message published before it joined.
func TestRoomsJoinerGetsOnlyLaterMessages(t *testing.T) {
	ts := startChatServer(t, server.Options{Loops: 1}, unlimitedChat)
	a, b := dialPeer(t, ts), dialPeer(t, ts)
	for i := range 200 {
		r := fmt.Sprint("r", i)
		a.join(r, "A", 1)
		if i%2 == 1 {
			ts.Chat.Publish(r, ServerUserID, "pub", "before b", time.Now())
		}
		b.join(r, "B", 2)
		b.sync() // nothing of the room before its join
		if i%2 == 1 {
			a.expectMessage(r, &chatPeer{id: ServerUserID}, "pub", "before b")
		}
		a.expectPresence("user-joined", r, b, "B", 2)
		b.send(fmt.Sprintf(`{"type":"leave","roomId":%q}`, r))
		b.expect("left")
		a.expectPresence("user-left", r, b, "B", 1)
		a.send(fmt.Sprintf(`{"type":"leave","roomId":%q}`, r))
		a.expect("left")
	}
}

// TestRoomsPresenceAtScale fills a room over the protocol, one member at a
// time, then empties it, and checks every member hears every later join and
// every leave, in order, with the room's count at that moment.
func TestRoomsPresenceAtScale(t *testing.T) {
	n := 200
	if raceEnabled || testing.Short() {
		n = 100
	}
	ts := startChatServer(t, server.Options{Loops: 3}, unlimitedChat)
	ps := make([]*chatPeer, n)
	for i := range ps {
		ps[i] = dialPeer(t, ts)
		ps[i].join("crowd", fmt.Sprint("p", i), i+1)
	}
	for i, p := range ps {
		for j := i + 1; j < n; j++ {
			p.expectPresence("user-joined", "crowd", ps[j], fmt.Sprint("p", j), j+1)
		}
	}
	for i, p := range ps {
		p.send(`{"type":"leave","roomId":"crowd"}`)
		p.expect("left")
		for _, q := range ps[i+1:] {
			q.expectPresence("user-left", "crowd", p, fmt.Sprint("p", i), n-1-i)
		}
	}
	for _, p := range ps {
		p.sync()
	}
	if st := ts.Rooms.Stats(); st != (room.Stats{}) {
		t.Fatalf("room table %+v, want empty", st)
	}
}

// setServerSndBuf sets SO_SNDBUF on the server's socket of the connection of
// user, which also stops the kernel from growing it.
func setServerSndBuf(t *testing.T, ts *testServer, user string, size int) {
	t.Helper()
	var found atomic.Int32
	var errs = make(chan error, len(ts.Loops()))
	var wg sync.WaitGroup
	for _, l := range ts.Loops() {
		wg.Add(1)
		l.Post(poller.FuncJob(func() {
			defer wg.Done()
			l.Range(func(pc *poller.Conn) bool {
				if c := ts.ConnOf(pc); c != nil && c.UserID() == user {
					found.Add(1)
					if err := syscall.SetsockoptInt(pc.Fd(), syscall.SOL_SOCKET, syscall.SO_SNDBUF, size); err != nil {
						errs <- err
					}
				}
				return true
			})
		}))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if found.Load() != 1 {
		t.Fatalf("found %d server connections of %s, want 1", found.Load(), user)
	}
}
