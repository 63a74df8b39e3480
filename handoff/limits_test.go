//go:build linux

package handoff_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/handoff"
	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

var limitSecret = []byte("the handoff limits test's secret")

// limitNode is a node with tokens, a per-user connection limit of 2, a
// per-address handshake limit of 4 at once and a per-user message limit of
// 5 at once (two joins and three chats of alice's), none of which refill
// within the test.
type limitNode struct {
	node
	chat  *chat.Handler
	users *server.UserCounts
}

func newLimitNode(t *testing.T) *limitNode {
	t.Helper()
	v, err := auth.New(auth.Options{Secret: limitSecret})
	if err != nil {
		t.Fatal(err)
	}
	users := server.NewUserCounts()
	srv, err := server.New(server.Options{Loops: 2, Backend: poller.BackendEpoll, Auth: v,
		MaxConnsPerUser: 2, UserConns: users, HandshakeRate: 0.0001, HandshakeBurst: 4})
	if err != nil {
		t.Fatal(err)
	}
	rooms := room.New(srv.Loops(), room.Options{})
	h := &chat.Handler{Rooms: rooms, RateLimit: server.RateLimit{Rate: 1000, Burst: 1000}, UserRate: 0.0001, UserBurst: 5}
	if err := srv.Handle("/ws", h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &limitNode{node: node{srv: srv, rooms: rooms}, chat: h, users: users}
}

// dialAs opens a connection for user from the loopback address from, and
// returns the handshake's status and body when it is refused.
func dialAs(t *testing.T, addr, from, user string) (*client, int, string) {
	t.Helper()
	tok, err := auth.Mint(limitSecret, "HS256", user, time.Hour, "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second,
		NetDialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).DialContext}
	ws, resp, err := d.Dial("ws://"+addr+"/ws?token="+tok, nil)
	if err != nil {
		if resp == nil {
			t.Fatalf("%s from %s: %v", user, from, err)
		}
		body, _ := io.ReadAll(resp.Body)
		return nil, resp.StatusCode, string(body)
	}
	c := &client{t: t, ws: ws, id: user, done: make(chan struct{})}
	go c.read()
	waitFor(t, "connected", func() bool { return countType(mustSnap(t, c), "connected") == 1 })
	return c, http.StatusSwitchingProtocols, ""
}

func mustSnap(t *testing.T, c *client) []map[string]any {
	t.Helper()
	msgs, err := c.snapshot()
	if err != nil {
		t.Fatalf("%s: %v", c.id, err)
	}
	return msgs
}

// TestHandoffLimits hands over a node whose limits are spent: a user that
// spent its per-user burst before the handoff is refused after it with the
// same rate_limited error (on another of its connections, whose own bucket
// is full), not given a fresh burst; an address that spent its handshakes
// is still refused 429; the per-user connection counts are the same, and
// still hold a user at its limit. A handoff whose user-rate part is of
// another format is refused first, and the old node goes on limiting.
func TestHandoffLimits(t *testing.T) {
	old := newLimitNode(t)
	ln, err := old.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.String()
	// Address A spends its 4 handshakes: three connections and a third of
	// alice's, refused; then its fifth is refused.
	alice1, _, _ := dialAs(t, addr, "127.0.0.1", "alice")
	alice2, _, _ := dialAs(t, addr, "127.0.0.1", "alice")
	bob, _, _ := dialAs(t, addr, "127.0.0.1", "bob")
	tooManyConns := func(who string, code int, body string) {
		t.Helper()
		if code != http.StatusTooManyRequests || !strings.Contains(body, "too many connections for this user") {
			t.Fatalf("%s: %d %q, want 429 too many connections", who, code, body)
		}
	}
	tooManyHandshakes := func(who string, code int, body string) {
		t.Helper()
		if code != http.StatusTooManyRequests || !strings.Contains(body, "too many handshakes") {
			t.Fatalf("%s: %d %q, want 429 too many handshakes", who, code, body)
		}
	}
	_, code, body := dialAs(t, addr, "127.0.0.1", "alice")
	tooManyConns("a third connection for alice", code, body)
	_, code, body = dialAs(t, addr, "127.0.0.1", "carol")
	tooManyHandshakes("a fifth handshake from 127.0.0.1", code, body)
	for _, c := range []*client{alice1, alice2, bob} {
		c.send(map[string]any{"type": "join", "roomId": "r", "userName": c.id})
		waitFor(t, "joined", func() bool { return countType(mustSnap(t, c), "joined") == 1 })
	}
	// Alice spends her burst of 5 (two joins, three chats), and her fourth
	// chat is refused.
	for range 3 {
		alice1.send(map[string]any{"type": "chat", "roomId": "r", "content": "x"})
	}
	waitFor(t, "3 messages", func() bool { return countType(mustSnap(t, bob), "message") == 3 })
	alice1.send(map[string]any{"type": "chat", "roomId": "r", "content": "over"})
	waitFor(t, "the ban", func() bool { return countType(mustSnap(t, alice1), "error") == 1 })
	var banned map[string]any
	for _, m := range mustSnap(t, alice1) {
		if m["type"] == "error" {
			banned = m
		}
	}
	if banned["code"] != "rate_limited" {
		t.Fatalf("alice's fourth message got %v, want a rate_limited error", banned)
	}
	counts := map[string]int{"alice": old.users.Count("alice"), "bob": old.users.Count("bob")}
	if counts["alice"] != 2 || counts["bob"] != 1 {
		t.Fatalf("the old node counts %v", counts)
	}

	t.Run("user-rate of another format", func(t *testing.T) {
		new := newLimitNode(t)
		parts := old.chat.HandoffState()
		for i := range parts {
			if parts[i].Name == "user-rate" {
				parts[i].Format++
			}
		}
		sendErr, recvErr := handOverParts(t, old.srv, parts, new.srv, new.chat.HandoffImporters())
		want := `state "user-rate" of format 2, this process reads 1`
		if !errors.Is(sendErr, handoff.ErrRefused) || !errors.Is(recvErr, handoff.ErrStateFormat) ||
			!strings.Contains(sendErr.Error(), want) {
			t.Fatalf("send %v, receive %v; want a refusal saying %s", sendErr, recvErr, want)
		}
		if n := new.users.Count("alice"); n != 0 {
			t.Fatalf("the refused node counts %d connections for alice", n)
		}
	})
	if old.srv.HandingOff() {
		t.Fatal("the old server is still frozen")
	}
	// The old node still limits alice, on her other connection too.
	alice2.send(map[string]any{"type": "chat", "roomId": "r", "content": "over"})
	waitFor(t, "alice2's ban", func() bool { return countType(mustSnap(t, alice2), "error") == 1 })

	new := newLimitNode(t)
	sendErr, recvErr := handOverParts(t, old.srv, old.chat.HandoffState(), new.srv, new.chat.HandoffImporters())
	if sendErr != nil || recvErr != nil {
		t.Fatalf("handoff: send %v, receive %v", sendErr, recvErr)
	}
	after := map[string]int{"alice": new.users.Count("alice"), "bob": new.users.Count("bob")}
	if !reflect.DeepEqual(after, counts) {
		t.Fatalf("the new node counts %v, the old one %v", after, counts)
	}
	// Bob, who has one connection, opens a second on the new node; alice,
	// who has two, may not; the spent address A is still refused.
	bob2, code, _ := dialAs(t, addr, "127.0.0.2", "bob")
	if code != http.StatusSwitchingProtocols {
		t.Fatalf("bob's second connection on the new node: %d", code)
	}
	_, code, body = dialAs(t, addr, "127.0.0.2", "alice")
	tooManyConns("a third connection for alice on the new node", code, body)
	_, code, body = dialAs(t, addr, "127.0.0.1", "carol")
	tooManyHandshakes("a handshake from the spent 127.0.0.1 on the new node", code, body)
	bob2.send(map[string]any{"type": "join", "roomId": "r", "userName": "bob"})
	waitFor(t, "bob2 joined", func() bool { return countType(mustSnap(t, bob2), "joined") == 1 })
	// alice closes one connection and opens another from B: the count moved
	// with the connections, so the new one is the second, and allowed. Its
	// own bucket is full, so only alice's user bucket, carried over, can
	// refuse its first message: with the same error as before the handoff.
	alice1.ws.Close()
	<-alice1.done
	waitFor(t, "alice's close counted", func() bool { return new.users.Count("alice") == 1 })
	alice3, code, _ := dialAs(t, addr, "127.0.0.2", "alice")
	if code != http.StatusSwitchingProtocols {
		t.Fatalf("alice's replacement connection on the new node: %d", code)
	}
	alice3.send(map[string]any{"type": "join", "roomId": "r", "userName": "alice"})
	waitFor(t, "alice3's ban", func() bool { return countType(mustSnap(t, alice3), "error") == 1 })
	for _, m := range mustSnap(t, alice3) {
		if m["type"] == "error" && !reflect.DeepEqual(m, banned) {
			t.Fatalf("alice's message after the handoff got %v, before it %v", m, banned)
		}
	}
	// Bob is not limited: his message reaches everyone, and none of alice's
	// after her third did.
	bob.send(map[string]any{"type": "chat", "roomId": "r", "content": "bob"})
	for _, c := range []*client{bob, bob2, alice2} {
		waitFor(t, "bob's message", func() bool {
			for _, m := range mustSnap(t, c) {
				if m["type"] == "message" && m["content"] == "bob" {
					return true
				}
			}
			return false
		})
	}
	for _, c := range []*client{bob, bob2, alice2, alice3} {
		for _, m := range mustSnap(t, c) {
			if m["type"] == "message" && m["content"] == "over" {
				t.Fatalf("%s read a message past alice's limit: %v", c.id, m)
			}
		}
	}
	if n := countType(mustSnap(t, bob), "message"); n != 4 {
		t.Fatalf("bob read %d messages, want alice's 3 and his own", n)
	}
	for _, c := range []*client{bob, bob2, alice2, alice3} {
		c.ws.Close()
		<-c.done
	}
}
