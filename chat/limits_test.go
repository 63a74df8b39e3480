package chat

import (
	"fmt"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/server"
)

// startClockChat starts an anonymous chat server on an injected clock, with
// pings and idle timeouts far enough away that moving the clock by minutes
// does not reap the clients.
func startClockChat(t *testing.T, configure func(*Handler)) *testServer {
	t.Helper()
	clock := newFakeClock()
	ts := startChatServer(t, server.Options{Now: clock.Now, PingInterval: time.Hour, IdleTimeout: 2 * time.Hour}, configure)
	ts.Clock = clock
	return ts
}

// TestRateLimitBan breaks the message rate, and checks the client is told once,
// that what it sends during the ban is dropped, and that it is heard again
// once the ban is served.
func TestRateLimitBan(t *testing.T) {
	ts := startClockChat(t, func(c *Handler) { c.Rate, c.Burst = 10, 20 })
	p := dialPeer(t, ts)
	bystander := dialPeer(t, ts)
	// The burst passes, with the clock standing still.
	for range 20 {
		p.sync()
	}
	if st := ts.Chat.Stats(); st != (Stats{}) {
		t.Fatalf("stats %+v after the burst, want none limited", st)
	}
	p.send(`{"type":"ping"}`)
	m := p.expect("error")
	m.hasKeys(t, "type", "code", "message", "retryAfter")
	if m.Code != protocol.CodeRateLimited || m.Message != "Rate limit exceeded. You are temporarily banned." {
		t.Fatalf("21st message: %s", m.raw)
	}
	if st := ts.Chat.Stats(); st.RateLimited != 1 || st.Bans != 1 {
		t.Fatalf("stats %+v, want one message limited and one ban", st)
	}

	// Messages during the ban are dropped, each of a kind that would have had
	// an answer. The clock moves within the ban.
	const during = 10
	for i := range during {
		p.send(fmt.Sprintf(`{"type":"banned-%d"}`, i))
		ts.Clock.Advance(10 * time.Second)
	}
	waitFor(t, "the banned messages to be counted", func() bool { return ts.Chat.Stats().RateLimited == 1+during })
	// Others are not limited by one client's ban.
	bystander.sync()

	// Still banned one millisecond before the end.
	ts.Clock.Advance(server.DefaultBan - during*10*time.Second - time.Millisecond)
	p.send(`{"type":"banned-last"}`)
	waitFor(t, "the last banned message to be counted", func() bool { return ts.Chat.Stats().RateLimited == 2+during })

	ts.Clock.Advance(time.Millisecond)
	// The first reply since rate_limited is this pong: nothing sent during the
	// ban was answered.
	p.sync()
	// The ban was served: a full burst again, then a new ban.
	for range 19 {
		p.sync()
	}
	p.send(`{"type":"ping"}`)
	if m := p.expect("error"); m.Code != protocol.CodeRateLimited {
		t.Fatalf("after a second burst: %s", m.raw)
	}
	if st := ts.Chat.Stats(); st.RateLimited != 3+during || st.Bans != 2 {
		t.Fatalf("stats %+v, want %d limited and 2 bans", st, 3+during)
	}
}

// TestRateLimitRefill spends the burst and checks the bucket refills at the
// rate on the server's clock.
func TestRateLimitRefill(t *testing.T) {
	ts := startClockChat(t, func(c *Handler) { c.Rate, c.Burst = 10, 20 })
	p := dialPeer(t, ts)
	for range 20 {
		p.sync()
	}
	for range 3 {
		ts.Clock.Advance(time.Second) // ten more
		for range 10 {
			p.sync()
		}
	}
	ts.Clock.Advance(99 * time.Millisecond) // not quite one
	p.send(`{"type":"ping"}`)
	if m := p.expect("error"); m.Code != protocol.CodeRateLimited {
		t.Fatalf("got %s, want rate_limited", m.raw)
	}
}

// TestRateLimitBanClose keeps sending through the ban and checks the server
// closes the connection with 1008 on the first message past BanCloseAfter.
func TestRateLimitBanClose(t *testing.T) {
	ts := startClockChat(t, func(c *Handler) { c.Rate, c.Burst, c.BanCloseAfter = 10, 20, 5 })
	p := dialPeer(t, ts)
	obs := dialPeer(t, ts)
	p.join("r", "P", 1)
	obs.join("r", "Obs", 2)
	p.expectPresence("user-joined", "r", obs, "Obs", 2)
	for range 19 {
		p.sync()
	}
	p.send(`{"type":"ping"}`)
	if m := p.expect("error"); m.Code != protocol.CodeRateLimited {
		t.Fatalf("21st message: %s", m.raw)
	}
	for i := range 5 {
		p.send(fmt.Sprintf(`{"type":"banned-%d"}`, i))
	}
	waitFor(t, "five banned messages", func() bool { return ts.Chat.Stats().RateLimited == 6 })
	if st := ts.Stats(); st.Closes["rate_limited"] != 0 {
		t.Fatalf("closed after %d banned messages, want after 6", 5)
	}
	p.send(`{"type":"banned-5"}`)
	ce := expectClose(t, p.c, websocket.ClosePolicyViolation)
	if ce.Text != "rate limited" {
		t.Errorf("close reason %q, want %q", ce.Text, "rate limited")
	}
	obs.expectPresence("user-left", "r", p, "P", 1)
	if st := ts.Stats(); st.Closes["rate_limited"] != 1 {
		t.Errorf("Closes = %v, want one rate_limited", st.Closes)
	}
	if st := ts.Chat.Stats(); st.Bans != 1 || st.RateLimited != 7 {
		t.Errorf("chat stats %+v, want 1 ban and 7 limited", st)
	}
}

// TestRateLimitDisabled sends far past the default burst with a negative rate.
func TestRateLimitDisabled(t *testing.T) {
	ts := startClockChat(t, func(c *Handler) { c.Rate = -1 })
	p := dialPeer(t, ts)
	for range 200 {
		p.send(`{"type":"ping"}`)
	}
	for range 200 {
		p.expect("pong")
	}
	if st := ts.Chat.Stats(); st != (Stats{}) {
		t.Fatalf("stats %+v, want nothing limited", st)
	}
}

// TestRateLimitPerUser: one user's connections share one budget, so opening
// more connections does not multiply what the user may send. Each of five
// connections stays within its own burst; the user's burst (40) is spent by
// the first four, and the fifth is banned as if it had broken its own rate.
// Another user is untouched.
func TestRateLimitPerUser(t *testing.T) {
	ts := startAuthServer(t, server.Options{PingInterval: time.Hour, IdleTimeout: 2 * time.Hour}, nil)
	var conns []*websocket.Conn
	for range 5 {
		conns = append(conns, dialToken(t, ts, "mallory", time.Hour))
	}
	for i, c := range conns[:4] {
		for j := range DefaultUserBurst / 4 {
			sendAuthJSON(t, c, map[string]string{"type": "ping"})
			if m := readAuthMsg(t, c); m.Type != "pong" {
				t.Fatalf("connection %d, ping %d: %+v, want pong", i, j, m)
			}
		}
	}
	last := conns[4]
	sendAuthJSON(t, last, map[string]string{"type": "ping"})
	if m := readAuthMsg(t, last); m.Type != "error" || m.Code != protocol.CodeRateLimited {
		t.Fatalf("the user's 41st message: %+v, want rate_limited", m)
	}
	if st := ts.Chat.Stats(); st.Bans != 1 || st.RateLimited != 1 {
		t.Fatalf("stats %+v, want one ban and one message limited", st)
	}
	expectPong(t, dialToken(t, ts, "bob", time.Hour))

	// Without the per-user limit the same five connections are each bound
	// only by their own rate.
	free := startAuthServer(t, server.Options{PingInterval: time.Hour, IdleTimeout: 2 * time.Hour}, func(h *Handler) { h.UserRate = -1 })
	for i := range 5 {
		c := dialToken(t, free, "mallory", time.Hour)
		for j := range DefaultUserBurst / 4 {
			sendAuthJSON(t, c, map[string]string{"type": "ping"})
			if m := readAuthMsg(t, c); m.Type != "pong" {
				t.Fatalf("no user limit: connection %d, ping %d: %+v, want pong", i, j, m)
			}
		}
	}
}
