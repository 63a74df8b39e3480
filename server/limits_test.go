package server

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"
	"time"
	"unsafe"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/handoff"
)

func TestBucket(t *testing.T) {
	type step struct {
		at   int64 // ms
		ok   bool
		wait time.Duration
	}
	cases := []struct {
		name  string
		rate  float64
		burst int
		steps []step
	}{
		{"starts full", 10, 3, []step{{1000, true, 0}, {1000, true, 0}, {1000, true, 0}, {1000, false, 100 * time.Millisecond}}},
		{"refills at the rate", 10, 2, []step{{1000, true, 0}, {1000, true, 0}, {1000, false, 100 * time.Millisecond},
			{1050, false, 50 * time.Millisecond}, {1100, true, 0}, {1100, false, 100 * time.Millisecond}}},
		{"never above burst", 1, 2, []step{{1000, true, 0}, {60_000, true, 0}, {60_000, true, 0}, {60_000, false, time.Second}}},
		{"clock going back is not a refill", 1, 1, []step{{5000, true, 0}, {4000, false, time.Second}, {6000, true, 0}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var b bucket
			for i, s := range tc.steps {
				ok, wait := b.take(s.at, tc.rate, tc.burst)
				if ok != s.ok || wait.Round(time.Millisecond) != s.wait {
					t.Fatalf("step %d at %dms: take = %v, %v; want %v, %v", i, s.at, ok, wait, s.ok, s.wait)
				}
			}
		})
	}
}

// dialStatus attempts an upgrade from the local address laddr (127.0.0.1 if
// empty) and returns the response, closing the connection if it was upgraded.
func dialStatus(t *testing.T, url, laddr string, h http.Header) *http.Response {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	if laddr != "" {
		nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(laddr)}}
		d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return nd.DialContext(ctx, network, addr)
		}
	}
	c, resp, err := d.Dial(url, h)
	if c != nil {
		c.Close()
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return resp
}

func TestHandshakeRatePerIP(t *testing.T) {
	clock := newFakeClock()
	ts := startServer(t, Options{HandshakeRate: 1, HandshakeBurst: 2, Now: clock.Now})
	status := func(laddr string) (int, string) {
		t.Helper()
		resp := dialStatus(t, ts.URL("/echo"), laddr, nil)
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	for i := range 2 {
		if code, _ := status(""); code != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade %d: status %d, want 101", i+1, code)
		}
	}
	for range 2 {
		code, retry := status("")
		if code != http.StatusTooManyRequests || retry != "1" {
			t.Fatalf("third upgrade: status %d, Retry-After %q; want 429 with Retry-After 1", code, retry)
		}
	}
	// Another address has its own bucket.
	if code, _ := status("127.0.0.2"); code != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade from another address: status %d, want 101", code)
	}
	clock.Advance(500 * time.Millisecond)
	if code, _ := status(""); code != http.StatusTooManyRequests {
		t.Fatalf("after half a second: status %d, want 429", code)
	}
	clock.Advance(500 * time.Millisecond)
	if code, _ := status(""); code != http.StatusSwitchingProtocols {
		t.Fatalf("after a second: status %d, want 101", code)
	}
	if code, _ := status(""); code != http.StatusTooManyRequests {
		t.Fatalf("second upgrade after a second: status %d, want 429", code)
	}
	clock.Advance(time.Hour) // a full bucket, not an hour of tokens
	for i := range 2 {
		if code, _ := status(""); code != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade %d after an hour: status %d, want 101", i+1, code)
		}
	}
	if code, _ := status(""); code != http.StatusTooManyRequests {
		t.Fatalf("third upgrade after an hour: status %d, want 429", code)
	}
	st := ts.Stats()
	if st.Handshakes["rate_limited"] != 5 || st.Handshakes["ok"] != 6 {
		t.Errorf("handshakes %v, want 6 ok and 5 rate_limited", st.Handshakes)
	}
}

func TestHandshakeRateAppliesToEveryPath(t *testing.T) {
	clock := newFakeClock()
	ts := startServer(t, Options{HandshakeRate: 1, HandshakeBurst: 1, Now: clock.Now})
	if resp := dialStatus(t, ts.URL("/ws"), "", nil); resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	if resp := dialStatus(t, ts.URL("/echo"), "", nil); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("status %d on another path, want 429", resp.StatusCode)
	}
}

func TestMaxConnsPerUser(t *testing.T) {
	ts := startAuthServer(t, Options{MaxConnsPerUser: 2})
	bearer := func(sub string) http.Header {
		return http.Header{"Authorization": {"Bearer " + ts.token(sub, time.Hour)}}
	}
	a1 := dial(t, ts.URL("/ws"), bearer("alice"))
	a2 := dial(t, ts.URL("/echo"), bearer("alice"))
	resp := dialStatus(t, ts.URL("/ws"), "", bearer("alice"))
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third connection for alice: status %d, want 429", resp.StatusCode)
	}
	// Other users have their own count.
	dial(t, ts.URL("/ws"), bearer("bob"))
	dial(t, ts.URL("/ws"), bearer("bob"))
	// A refused token takes no slot.
	if resp := dialStatus(t, ts.URL("/ws"), "", http.Header{"Authorization": {"Bearer nope"}}); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad token: status %d, want 401", resp.StatusCode)
	}

	// Once the server has seen one of alice's connections go, there is room for
	// one more, and only one.
	a1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp := dialStatus(t, ts.URL("/ws"), "", bearer("alice"))
		if resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		if resp.StatusCode != http.StatusTooManyRequests || time.Now().After(deadline) {
			t.Fatalf("after closing one: status %d", resp.StatusCode)
		}
		time.Sleep(time.Millisecond)
	}
	// That upgrade was closed by dialStatus; wait until the server saw it too,
	// keeping a2 and a fresh third open.
	a3 := func() bool {
		d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
		c, resp, err := d.Dial(ts.URL("/ws"), bearer("alice"))
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return true
		}
		if resp == nil || resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("dial: %v", err)
		}
		return false
	}
	waitFor(t, "room for alice's second connection", a3)
	if resp := dialStatus(t, ts.URL("/ws"), "", bearer("alice")); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third connection again: status %d, want 429", resp.StatusCode)
	}
	a2.Close()
	waitFor(t, "room after a close handshake", a3)
	st := ts.Stats()
	if st.Handshakes["too_many_conns"] < 2 {
		t.Errorf("handshakes %v, want too_many_conns counted", st.Handshakes)
	}
}

// TestMaxConnsPerUserCloseHandshake checks a slot is given back after a clean
// close handshake too, not only after a dropped socket.
func TestMaxConnsPerUserCloseHandshake(t *testing.T) {
	ts := startAuthServer(t, Options{MaxConnsPerUser: 1})
	h := http.Header{"Authorization": {"Bearer " + ts.token("carol", time.Hour)}}
	c := dial(t, ts.URL("/echo"), h)
	if resp := dialStatus(t, ts.URL("/echo"), "", h); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second connection: status %d, want 429", resp.StatusCode)
	}
	c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	expectClose(t, c, websocket.CloseNormalClosure)
	c.Close()
	waitFor(t, "carol's slot", func() bool {
		return dialStatus(t, ts.URL("/echo"), "", h).StatusCode == http.StatusSwitchingProtocols
	})
}

func TestUserCounts(t *testing.T) {
	u := NewUserCounts()
	if !u.Acquire("x", 2) || !u.Acquire("x", 2) || u.Acquire("x", 2) {
		t.Fatal("limit 2 not held")
	}
	if u.Acquire("y", 0) {
		t.Fatal("limit 0 (the others hold the max) admitted")
	}
	u.Release("x")
	if u.Count("x") != 1 || !u.Acquire("x", 2) {
		t.Fatal("release did not free a slot")
	}
	u.Release("x")
	u.Release("x")
	n := 0
	u.Each(func(string, int) { n++ })
	if n != 0 {
		t.Fatalf("%d users left after every release", n)
	}
}

// TestNonReaderClosedAsSlowConsumer: a client that sends at full speed and
// never reads earns replies it never takes. The server stops reading it once
// they are MaxPending behind, so its memory is bounded, and once the socket
// has taken none of them for StallTimeout it is closed as a slow consumer
// (1008), on both backends, rather than held until the idle timeout.
func TestNonReaderClosedAsSlowConsumer(t *testing.T) {
	ts := startServer(t, Options{MaxPending: 16 << 10, StallTimeout: 300 * time.Millisecond})
	c := rawDial(t, ts.Addr, "/echo")
	c.Conn.(*net.TCPConn).SetReadBuffer(4 << 10)
	msg := frame(true, 0, 0x2, bytes.Repeat([]byte("x"), 1024), true)
	go func() {
		for {
			if _, err := c.Write(msg); err != nil {
				return // closed by the server, or by the test's cleanup
			}
		}
	}()
	waitFor(t, "the non-reader to be closed as a slow consumer", func() bool {
		st := ts.Stats()
		return st.SlowClosed == 1 && st.Closes["slow_consumer"] == 1
	})
	waitFor(t, "its socket to be closed", func() bool { return ts.Conns() == 0 })
}

// TestKeyedLimitPruneShrinks: Prune forgets the keys whose buckets refilled,
// keeps the others with their state, and makes a shard's map anew once most
// of it is empty, since a Go map never gives back the room of deleted keys.
func TestKeyedLimitPruneShrinks(t *testing.T) {
	l := NewKeyedLimit[int](10, 2) // a bucket of 2 refills in 200 ms
	const n = 4000
	for k := range n {
		if ok, _ := l.Allow(k, 1000); !ok {
			t.Fatalf("key %d refused its first message", k)
		}
	}
	// Key 0 spends its burst: refused now, and not full 50 ms later.
	l.Allow(0, 1000)
	if ok, _ := l.Allow(0, 1000); ok {
		t.Fatal("key 0 allowed past its burst")
	}
	peak := 0
	for i := range l.shards {
		peak = max(peak, l.shards[i].peak)
	}
	if peak < limitShrinkMin {
		t.Fatalf("peak %d: too few keys per shard for the test", peak)
	}
	l.Prune(1150) // every other bucket (1 token left) refilled by 1100
	if got := l.Len(); got != 1 {
		t.Fatalf("%d keys after the prune, want 1 (key 0, still refilling)", got)
	}
	for i := range l.shards {
		sh := &l.shards[i]
		if sh.peak != len(sh.m) {
			t.Errorf("shard %d: peak %d after the prune, want its %d keys: the map was not made anew", i, sh.peak, len(sh.m))
		}
	}
	// 1.5 tokens by now: one message, not two, as a forgotten key would get.
	if ok, _ := l.Allow(0, 1150); !ok {
		t.Fatal("key 0 refused with 1.5 tokens")
	}
	if ok, _ := l.Allow(0, 1150); ok {
		t.Fatal("key 0 lost its state in the prune: allowed a second message with half a token")
	}
	l.Prune(2000)
	if got := l.Len(); got != 0 {
		t.Fatalf("%d keys after every bucket refilled, want 0", got)
	}
}

// TestTokenDeadlineSeconds: a Conn keeps its token deadline in 32-bit
// seconds, rounded up; one past 2106 is kept as the last second it can hold,
// and zero stays "none".
func TestTokenDeadlineSeconds(t *testing.T) {
	var c Conn
	for _, tc := range []struct {
		in, want time.Time
	}{
		{time.Time{}, time.Time{}},
		{time.Unix(1_800_000_000, 0), time.Unix(1_800_000_000, 0)},
		{time.Unix(1_800_000_000, 1), time.Unix(1_800_000_001, 0)},
		{time.Unix(1<<40, 0), time.Unix(math.MaxUint32, 0)},
		{time.Unix(-5, 0), time.Unix(1, 0)},
	} {
		c.SetTokenDeadline(tc.in)
		if got := c.TokenDeadline(); !got.Equal(tc.want) {
			t.Errorf("SetTokenDeadline(%v): TokenDeadline %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestRateLimitBan: a connection spends its burst, breaks the rate and is
// banned; what it sends during the ban is counted and dropped, past
// BanCloseAfter it is to be closed, and once the ban is served it starts with
// a full bucket. The ban lives in the bucket's own 16 bytes, and a handoff
// carries both states.
func TestRateLimitBan(t *testing.T) {
	if n := unsafe.Sizeof(RateState{}); n != 16 {
		t.Fatalf("RateState is %d bytes, want 16", n)
	}
	l := RateLimit{Rate: 10, Burst: 3, Ban: time.Second, BanCloseAfter: 2}
	var st RateState
	for i := range 3 {
		if v := l.Allow(&st, 1000); v != Allowed {
			t.Fatalf("message %d of the burst: verdict %d", i, v)
		}
	}
	if v := l.Allow(&st, 1000); v != BanStarted {
		t.Fatalf("past the burst: verdict %d, want BanStarted", v)
	}
	roundTrip := func(st RateState) RateState {
		var e handoff.Enc
		st.AppendHandoff(&e)
		d := handoff.Dec{B: e.B}
		var got RateState
		got.ReadHandoff(&d)
		if d.Err() != nil || len(d.B) != 0 {
			t.Fatalf("handoff: %v, %d bytes left", d.Err(), len(d.B))
		}
		return got
	}
	if got := roundTrip(st); got != st {
		t.Fatalf("banned state after a handoff: %+v, want %+v", got, st)
	}
	if until, n := st.ban(); until != 2000 || n != 0 {
		t.Fatalf("banned state after a handoff: until %d, %d messages; want 2000, 0 (before the handoff)", until, n)
	}
	for i, want := range []Verdict{Banned, Banned, BanExceeded} {
		if v := l.Allow(&st, 1500); v != want {
			t.Fatalf("message %d of the ban: verdict %d, want %d", i, v, want)
		}
	}
	// Served at 2000: a full bucket, not the empty one that broke the rate.
	for i := range 3 {
		if v := l.Allow(&st, 2000); v != Allowed {
			t.Fatalf("message %d after the ban: verdict %d", i, v)
		}
	}
	// 50 ms at 10/s refills half a token: carried across a handoff, it is
	// not yet a message's worth.
	if got := roundTrip(st); l.Allow(&got, 2050) != BanStarted {
		t.Fatal("a handoff refilled the bucket")
	}
	if got := roundTrip(st); l.Allow(&got, 2100) != Allowed {
		t.Fatal("a handoff lost the refill of 100 ms")
	}

	// A user's ban, started from outside, is served like the connection's own.
	var u RateState
	l.StartBan(&u, 5000)
	if v := l.Allow(&u, 5999); v != Banned {
		t.Fatalf("during a started ban: verdict %d, want Banned", v)
	}
	if v := l.Allow(&u, 6000); v != Allowed {
		t.Fatalf("after a started ban: verdict %d, want Allowed", v)
	}
}

// TestUserCountsModel runs random acquires and releases of many users, as
// fresh strings each time like connections' ids, against a plain map: every
// count, the listing, and the table's growth and shrinking after a spike.
func TestUserCountsModel(t *testing.T) {
	u := NewUserCounts()
	model := map[string]int{}
	rng := rand.New(rand.NewPCG(1, 2))
	const limit = 3
	check := func(step int) {
		t.Helper()
		seen := 0
		u.Each(func(user string, n int) {
			seen++
			if model[user] != n {
				t.Fatalf("step %d: Each lists %q with %d, want %d", step, user, n, model[user])
			}
		})
		if seen != len(model) {
			t.Fatalf("step %d: Each lists %d users, want %d", step, seen, len(model))
		}
		for user, n := range model {
			if got := u.Count(user); got != n {
				t.Fatalf("step %d: Count(%q) = %d, want %d", step, user, got, n)
			}
		}
	}
	slots := func() int {
		n := 0
		for i := range u.shards {
			n += len(u.shards[i].t.slots)
		}
		return n
	}
	for phase, users := range []int{50, 5000, 50} { // a spike, then back
		for step := range 40000 {
			user := fmt.Sprint("user-", rng.IntN(users))
			if rng.IntN(2) == 0 {
				ok := u.Acquire(user, limit)
				if ok != (model[user] < limit) {
					t.Fatalf("phase %d step %d: Acquire(%q) = %v with %d held", phase, step, user, ok, model[user])
				}
				if ok {
					model[user]++
				}
			} else if model[user] > 0 {
				u.Release(user)
				if model[user]--; model[user] == 0 {
					delete(model, user)
				}
			}
			if step%5000 == 0 {
				check(step)
			}
		}
		check(-1)
		if phase == 1 {
			// Drain the spike's users beyond the last phase's range.
			for user, n := range model {
				for range n {
					u.Release(user)
				}
				delete(model, user)
			}
			check(-2)
			if n := slots(); n > limitShards*userTableMin {
				t.Fatalf("%d slots held with no user, want the minimum %d", n, limitShards*userTableMin)
			}
		}
	}
	if u.Acquire("", limit) != true || u.Count("") != 1 {
		t.Fatal("the empty user id is not counted")
	}
}
