package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/throng-ws/throng/chat"
)

// TestProtocol runs the whole chat protocol between two clients, once for each
// way of presenting the token.
func TestProtocol(t *testing.T) {
	for _, via := range []TokenVia{TokenHeader, TokenSubprotocol, TokenQuery} {
		t.Run(fmt.Sprint("via=", via), func(t *testing.T) {
			ts := startServer(t, serverConfig{auth: true})
			ea, eb := newEvents(), newEvents()
			a := dialT(t, ts.URL(), ea.options(Options{Token: ts.token("alice", time.Hour), TokenVia: via}))
			b := dialT(t, ts.URL(), eb.options(Options{Token: ts.token("bob", time.Hour), TokenVia: via}))
			if got := a.UserID(); got != "alice" {
				t.Fatalf("UserID = %q, want alice", got)
			}
			if a.State() != StateOpen {
				t.Fatalf("State = %v, want open", a.State())
			}
			ctx := ctxT(t)

			j, err := a.Join(ctx, "lobby", "Alice")
			if err != nil {
				t.Fatal(err)
			}
			if *j != (Joined{RoomID: "lobby", UserID: "alice", UserCount: 1}) {
				t.Fatalf("joined = %+v", j)
			}
			if j, err = b.Join(ctx, "lobby", "Bob"); err != nil || j.UserCount != 2 {
				t.Fatalf("Bob's join = %+v, %v", j, err)
			}
			uj := waitFor[UserJoined](t, ea, "user-joined", nil)
			if uj != (UserJoined{RoomID: "lobby", UserID: "bob", UserName: "Bob", UserCount: 2}) {
				t.Fatalf("user-joined = %+v", uj)
			}

			if err := b.Send(ctx, "lobby", "hello, Alice"); err != nil {
				t.Fatal(err)
			}
			for _, e := range []*events{ea, eb} {
				m := waitFor[Message](t, e, "message", nil)
				if m.RoomID != "lobby" || m.UserID != "bob" || m.UserName != "Bob" || m.Content != "hello, Alice" {
					t.Fatalf("message = %+v", m)
				}
				if time.Since(m.Timestamp) > time.Minute || m.Timestamp.After(time.Now().Add(time.Second)) {
					t.Fatalf("message timestamp %v is not now", m.Timestamp)
				}
			}

			if rtt, err := a.Ping(ctx); err != nil || rtt <= 0 {
				t.Fatalf("Ping = %v, %v", rtt, err)
			}

			// Refusals come back from the call that caused them.
			var se *ServerError
			if _, err := a.Join(ctx, "lobby", "Alice"); !errors.As(err, &se) || se.Code != CodeAlreadyInRoom {
				t.Fatalf("second join: %v, want already_in_room", err)
			}
			if err := a.Leave(ctx, "elsewhere"); !errors.As(err, &se) || se.Code != CodeNotInRoom {
				t.Fatalf("leave elsewhere: %v, want not_in_room", err)
			}
			if err := a.Send(ctx, "elsewhere", "x"); !errors.Is(err, ErrNotInRoom) {
				t.Fatalf("send elsewhere: %v, want ErrNotInRoom", err)
			}
			if _, err := a.Join(ctx, "lobby2", strings.Repeat("n", 51)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("long name: %v, want ErrInvalid", err)
			}
			if _, err := a.Join(ctx, "", "Alice"); !errors.Is(err, ErrInvalid) {
				t.Fatalf("empty room: %v, want ErrInvalid", err)
			}
			if got := a.Rooms(); len(got) != 1 || got[0] != "lobby" {
				t.Fatalf("Rooms = %v", got)
			}

			if err := a.Leave(ctx, "lobby"); err != nil {
				t.Fatal(err)
			}
			ul := waitFor[UserLeft](t, eb, "user-left", nil)
			if ul != (UserLeft{RoomID: "lobby", UserID: "alice", UserName: "Alice", UserCount: 1}) {
				t.Fatalf("user-left = %+v", ul)
			}
			if got := a.Rooms(); len(got) != 0 {
				t.Fatalf("Rooms after leave = %v", got)
			}

			// A closed client says so, and so do its calls.
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			if a.State() != StateClosed || !errors.Is(a.Err(), ErrClosed) {
				t.Fatalf("after Close: %v, %v", a.State(), a.Err())
			}
			if _, err := a.Ping(ctx); !errors.Is(err, ErrClosed) {
				t.Fatalf("Ping after Close: %v", err)
			}
			waitFor[stateEvent](t, ea, "closed state", func(s stateEvent) bool { return s.s == StateClosed })
		})
	}
}

// TestReconnectRejoins restarts the server on the same port, gracefully (1001)
// and abruptly (1006); both clients come back by themselves, join their rooms
// again under the same names, and talk.
func TestReconnectRejoins(t *testing.T) {
	for _, graceful := range []bool{true, false} {
		t.Run(fmt.Sprint("graceful=", graceful), func(t *testing.T) {
			ts := startServer(t, serverConfig{auth: true})
			o := Options{BaseDelay: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond, MaxAttempts: 100}
			ea, eb := newEvents(), newEvents()
			oa, ob := o, o
			oa.Token, ob.Token = ts.token("alice", time.Hour), ts.token("bob", time.Hour)
			oa.TokenVia = TokenSubprotocol
			a := dialT(t, ts.URL(), ea.options(oa))
			b := dialT(t, ts.URL(), eb.options(ob))
			ctx := ctxT(t)
			for _, j := range []struct {
				c    *Client
				room string
				name string
			}{{a, "lobby", "Alice"}, {a, "side", "Al"}, {b, "lobby", "Bob"}} {
				if _, err := j.c.Join(ctx, j.room, j.name); err != nil {
					t.Fatal(err)
				}
			}

			ts.restart(graceful)

			want := 1006
			if graceful {
				want = 1001
			}
			for _, e := range []*events{ea, eb} {
				s := waitFor[stateEvent](t, e, "reconnecting", func(s stateEvent) bool { return s.s == StateReconnecting })
				var ce *CloseError
				if !errors.As(s.err, &ce) || ce.Code != want {
					t.Fatalf("reconnecting because %v, want close %d", s.err, want)
				}
				waitFor[stateEvent](t, e, "open again", func(s stateEvent) bool { return s.s == StateOpen })
			}
			// Alice rejoins both rooms; Bob sees her come back to the lobby
			// under the same name.
			rejoined := map[string]bool{}
			for len(rejoined) < 2 {
				j := waitFor[Joined](t, ea, "rejoin", nil)
				rejoined[j.RoomID] = true
			}
			waitFor[Joined](t, eb, "Bob's rejoin", func(j Joined) bool { return j.RoomID == "lobby" })
			if err := a.Send(ctx, "lobby", "back again"); err != nil {
				t.Fatal(err)
			}
			m := waitFor[Message](t, eb, "message after restart", nil)
			if m.Content != "back again" || m.UserName != "Alice" {
				t.Fatalf("message = %+v", m)
			}
			if got := a.Rooms(); len(got) != 2 {
				t.Fatalf("Rooms = %v, want lobby and side", got)
			}
		})
	}
}

// TestNoRetryAfterPolicyClose: a close 1008 ends the client; it never dials
// again, however short its backoff.
func TestNoRetryAfterPolicyClose(t *testing.T) {
	cases := []struct {
		name   string
		cfg    serverConfig
		before func(t *testing.T, ts *testServer, c *Client)
		reason string
		ttl    time.Duration
	}{{
		name: "token expired",
		cfg:  serverConfig{auth: true, clock: &fakeClock{t: time.Unix(1_800_000_000, 0)}},
		ttl:  20 * time.Second,
		before: func(t *testing.T, ts *testServer, c *Client) {
			// Past exp and the verifier's 30 s leeway, short of the idle
			// timeout, which would close 1001.
			ts.cfg.clock.Advance(55 * time.Second)
		},
		reason: "Token expired",
	}, {
		name: "rate limit abuse",
		cfg: serverConfig{auth: true, chat: func(h *chat.Handler) {
			h.Rate, h.Burst, h.BanCloseAfter = 1, 1, 2
		}},
		before: func(t *testing.T, ts *testServer, c *Client) {
			for i := 0; i < 5; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				c.Ping(ctx)
				cancel()
			}
		},
		reason: "rate limited",
		ttl:    time.Hour,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, tc.cfg)
			e := newEvents()
			c := dialT(t, ts.URL(), e.options(Options{
				Token: ts.token("carol", tc.ttl), BaseDelay: time.Millisecond, MaxDelay: time.Millisecond,
			}))
			tc.before(t, ts, c)
			select {
			case <-c.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("client did not stop")
			}
			var ce *CloseError
			if !errors.As(c.Err(), &ce) || ce.Code != 1008 || ce.Reason != tc.reason {
				t.Fatalf("Err = %v, want close 1008 %q", c.Err(), tc.reason)
			}
			if c.State() != StateClosed {
				t.Fatalf("State = %v", c.State())
			}
			// No reconnect: nothing ever reaches the server again.
			accepted := ts.accepted()
			time.Sleep(300 * time.Millisecond)
			if n := ts.accepted(); n != accepted {
				t.Fatalf("server accepted %d more connections after a 1008", n-accepted)
			}
			for {
				select {
				case ev := <-e.ch:
					if s, ok := ev.(stateEvent); ok && s.s == StateReconnecting {
						t.Fatalf("client tried to reconnect after 1008: %v", s.err)
					}
					continue
				default:
				}
				break
			}
		})
	}
}

// TestTokenExpiredRefreshes: with a RefreshToken hook, the server's
// token_expired brings a reconnect with a fresh token, and the rooms are
// joined again.
func TestTokenExpiredRefreshes(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	ts := startServer(t, serverConfig{auth: true, clock: clock})
	e := newEvents()
	refreshed := make(chan string, 4)
	c := dialT(t, ts.URL(), e.options(Options{
		Token:     ts.token("dave", 20*time.Second),
		BaseDelay: 10 * time.Millisecond,
		RefreshToken: func(ctx context.Context) (string, error) {
			tok := ts.token("dave", time.Hour)
			refreshed <- tok
			return tok, nil
		},
	}))
	ctx := ctxT(t)
	if _, err := c.Join(ctx, "night", "Dave"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(55 * time.Second) // past exp + leeway, short of the idle timeout
	se := waitFor[*ServerError](t, e, "token_expired", nil)
	if se.Code != CodeTokenExpired {
		t.Fatalf("error = %+v", se)
	}
	var tok string
	select {
	case tok = <-refreshed:
	case <-time.After(5 * time.Second):
		t.Fatal("RefreshToken was not called")
	}
	waitFor[Joined](t, e, "rejoin", func(j Joined) bool { return j.RoomID == "night" })
	if got, _ := c.Token(); got != tok {
		t.Fatal("client did not keep the refreshed token")
	}
	if c.State() != StateOpen {
		t.Fatalf("State = %v", c.State())
	}
}

// TestRefreshBeforeExpiry: the hook is called ahead of exp and its token is
// sent as a refresh, which the server accepts.
func TestRefreshBeforeExpiry(t *testing.T) {
	ts := startServer(t, serverConfig{auth: true})
	calls := make(chan struct{}, 8)
	c := dialT(t, ts.URL(), Options{
		Token:         ts.token("erin", 3*time.Second),
		RefreshBefore: 2500 * time.Millisecond,
		RefreshToken: func(ctx context.Context) (string, error) {
			calls <- struct{}{}
			return ts.token("erin", time.Hour), nil
		},
	})
	_, exp0 := c.Token()
	select {
	case <-calls:
	case <-time.After(5 * time.Second):
		t.Fatal("RefreshToken was not called before expiry")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, exp := c.Token(); exp.Sub(exp0) > 30*time.Minute {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("refreshed token not installed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c.State() != StateOpen {
		t.Fatalf("State = %v", c.State())
	}

	// A token for someone else is refused by the server, and the refusal is
	// the call's result.
	var se *ServerError
	if err := c.Refresh(ctxT(t), ts.token("mallory", time.Hour)); !errors.As(err, &se) || se.Code != CodeInvalidToken {
		t.Fatalf("Refresh with another sub: %v, want invalid_token", err)
	}
}

// TestDialUnauthorized: a refused token fails Dial with ErrUnauthorized,
// whether the server answers 401 or upgrades and closes 1008.
func TestDialUnauthorized(t *testing.T) {
	for _, failClose := range []bool{false, true} {
		t.Run(fmt.Sprint("close=", failClose), func(t *testing.T) {
			ts := startServer(t, serverConfig{auth: true, failClose: failClose})
			for _, tok := range []string{"", "not-a-jwt", ts.token("x", time.Hour) + "x"} {
				_, err := Dial(ctxT(t), ts.URL(), Options{Token: tok, TokenVia: TokenSubprotocol})
				if !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("token %q: Dial = %v, want ErrUnauthorized", tok, err)
				}
			}
		})
	}
}

// TestGiveUp: a server that never comes back exhausts MaxAttempts.
func TestGiveUp(t *testing.T) {
	ts := startServer(t, serverConfig{})
	e := newEvents()
	c := dialT(t, ts.URL(), e.options(Options{MaxAttempts: 3, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond}))
	ts.stop(true)
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("client did not give up")
	}
	if !errors.Is(c.Err(), ErrGaveUp) {
		t.Fatalf("Err = %v, want ErrGaveUp", c.Err())
	}
	s := waitFor[stateEvent](t, e, "closed", func(s stateEvent) bool { return s.s == StateClosed })
	if !errors.Is(s.err, ErrGaveUp) {
		t.Fatalf("closed because %v", s.err)
	}
}

// TestNoReconnect: MaxAttempts < 0 turns reconnecting off.
func TestNoReconnect(t *testing.T) {
	ts := startServer(t, serverConfig{})
	c := dialT(t, ts.URL(), Options{MaxAttempts: -1})
	ts.stop(true)
	<-c.Done()
	var ce *CloseError
	if !errors.As(c.Err(), &ce) || ce.Code != 1001 {
		t.Fatalf("Err = %v, want close 1001", c.Err())
	}
}

// TestCloseWhileReconnecting: Close during the backoff wait returns promptly.
func TestCloseWhileReconnecting(t *testing.T) {
	ts := startServer(t, serverConfig{})
	e := newEvents()
	c := dialT(t, ts.URL(), e.options(Options{BaseDelay: time.Hour, MaxDelay: time.Hour}))
	ts.stop(true)
	waitFor[stateEvent](t, e, "reconnecting", func(s stateEvent) bool { return s.s == StateReconnecting })
	if _, err := c.Ping(ctxT(t)); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Ping while reconnecting: %v, want ErrNotConnected", err)
	}
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung")
	}
	if !errors.Is(c.Err(), ErrClosed) {
		t.Fatalf("Err = %v", c.Err())
	}
}

// TestRateLimitedAnswersCalls: calls waiting when the server bans the
// connection get the rate_limited error instead of hanging; a Send's goes to
// OnError.
func TestRateLimitedAnswersCalls(t *testing.T) {
	ts := startServer(t, serverConfig{chat: func(h *chat.Handler) { h.Rate, h.Burst, h.Ban = 0.01, 2, time.Hour }})
	e := newEvents()
	c := dialT(t, ts.URL(), e.options(Options{}))
	ctx := ctxT(t)
	if _, err := c.Join(ctx, "r", "Fay"); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ctx, "r", "one"); err != nil {
		t.Fatal(err)
	}
	var se *ServerError
	if _, err := c.Ping(ctx); !errors.As(err, &se) || se.Code != CodeRateLimited {
		t.Fatalf("Ping over the limit: %v, want rate_limited", err)
	}

	c2 := dialT(t, ts.URL(), e.options(Options{}))
	if _, err := c2.Join(ctx, "r2", "Gus"); err != nil {
		t.Fatal(err)
	}
	c2.Send(ctx, "r2", "one")
	c2.Send(ctx, "r2", "two")
	got := waitFor[*ServerError](t, e, "rate_limited", nil)
	if got.Code != CodeRateLimited {
		t.Fatalf("OnError got %+v", got)
	}
}

// TestDialErrors: bad URLs and refusals other than auth.
func TestDialErrors(t *testing.T) {
	ts := startServer(t, serverConfig{})
	for _, u := range []string{"ftp://x/ws", "://", "ws://" + ts.Addr + "/nope"} {
		if _, err := Dial(ctxT(t), u, Options{}); err == nil {
			t.Errorf("Dial %q succeeded", u)
		}
	}
	var he *HandshakeError
	if _, err := Dial(ctxT(t), "ws://"+ts.Addr+"/nope", Options{}); !errors.As(err, &he) || he.StatusCode != 404 {
		t.Errorf("Dial to a bad path: %v, want a 404 HandshakeError", err)
	}
}
