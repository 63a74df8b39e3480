package chat

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/server"
)

// authWireMsg is any message of the /ws JSON protocol, decoded loosely so a test
// can check whichever fields its message type carries.
type authWireMsg struct {
	Type      string `json:"type"`
	UserID    string `json:"userId"`
	Timestamp string `json:"timestamp"`
	Code      string `json:"code"`
	Message   string `json:"message"`
	Field     string `json:"field"`
	ExpiresAt string `json:"expiresAt"`
}

func readAuthMsg(t *testing.T, c *websocket.Conn) authWireMsg {
	t.Helper()
	s := readText(t, c)
	var m authWireMsg
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("message %q: %v", s, err)
	}
	return m
}

func sendAuthJSON(t *testing.T, c *websocket.Conn, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// expectPong checks the connection is alive: a JSON ping gets a pong, and
// nothing else arrives first.
func expectPong(t *testing.T, c *websocket.Conn) {
	t.Helper()
	sendAuthJSON(t, c, map[string]string{"type": "ping"})
	if m := readAuthMsg(t, c); m.Type != "pong" {
		t.Fatalf("after ping got %+v, want pong", m)
	}
}

// expectTokenExpired checks the live-expiry sequence: an error message with
// code token_expired, then close 1008 "Token expired".
func expectTokenExpired(t *testing.T, c *websocket.Conn) {
	t.Helper()
	m := readAuthMsg(t, c)
	if m.Type != "error" || m.Code != protocol.CodeTokenExpired || m.Message != "Token expired" {
		t.Fatalf("got %+v, want error %s", m, protocol.CodeTokenExpired)
	}
	if ce := expectClose(t, c, websocket.ClosePolicyViolation); ce.Text != "Token expired" {
		t.Fatalf("close reason %q, want %q", ce.Text, "Token expired")
	}
}

// signAuthToken signs claims with any method and key, for the tokens Mint will
// not make: other algorithms, alg none, odd claims.
func signAuthToken(t *testing.T, m jwt.SigningMethod, key any, claims jwt.Claims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// dialToken connects to /ws with a fresh token for sub and reads `connected`.
func dialToken(t *testing.T, ts *testServer, sub string, ttl time.Duration) *websocket.Conn {
	t.Helper()
	c := dial(t, ts.URL("/ws?token="+ts.token(sub, ttl)), nil)
	if m := readAuthMsg(t, c); m.Type != "connected" || m.UserID != sub {
		t.Fatalf("greeting %+v, want connected for %q", m, sub)
	}
	return c
}

func TestAuthTokenTransports(t *testing.T) {
	ts := startAuthServer(t, server.Options{Subprotocols: []string{"throng.v1"}}, nil)
	tok := ts.token("alice", time.Hour)
	cases := []struct {
		name      string
		query     string
		header    http.Header
		protocols []string
		wantProto string
	}{
		{name: "query", query: "?token=" + url.QueryEscape(tok)},
		{name: "query among others", query: "?room=a&token=" + tok + "&x=1"},
		{name: "authorization bearer", header: http.Header{"Authorization": {"Bearer " + tok}}},
		{name: "authorization scheme case-insensitive", header: http.Header{"Authorization": {"bearer " + tok}}},
		{name: "subprotocol alone", protocols: []string{"bearer." + tok}},
		{name: "subprotocol after app protocol", protocols: []string{"throng.v1", "bearer." + tok}, wantProto: "throng.v1"},
		{name: "subprotocol before app protocol", protocols: []string{"bearer." + tok, "throng.v1"}, wantProto: "throng.v1"},
		{name: "subprotocol with unknown app protocol", protocols: []string{"other.v2", "bearer." + tok}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := websocket.Dialer{Subprotocols: tc.protocols, HandshakeTimeout: 5 * time.Second}
			c, resp, err := d.Dial(ts.URL("/ws"+tc.query), tc.header)
			if err != nil {
				status := 0
				if resp != nil {
					status = resp.StatusCode
				}
				t.Fatalf("dial: %v (status %d)", err, status)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if got := resp.Header.Values("Sec-WebSocket-Protocol"); len(got) > 1 || strings.Join(got, "") != tc.wantProto {
				t.Errorf("response Sec-WebSocket-Protocol %q, want %q", got, tc.wantProto)
			}
			if got := c.Subprotocol(); got != tc.wantProto {
				t.Errorf("negotiated subprotocol %q, want %q", got, tc.wantProto)
			}
			for k, vs := range resp.Header {
				for _, v := range vs {
					if strings.Contains(v, tok) {
						t.Errorf("response header %s echoes the token", k)
					}
				}
			}
			m := readAuthMsg(t, c)
			if m.Type != "connected" || m.UserID != "alice" {
				t.Fatalf("greeting %+v, want connected with userId alice", m)
			}
			if want := ts.Clock.Now().UTC().Format(protocol.TimeLayout); m.Timestamp != want {
				t.Errorf("timestamp %q, want %q from the server clock", m.Timestamp, want)
			}
		})
	}
	st := ts.Stats()
	if st.Handshakes["ok"] != uint64(len(cases)) || st.Handshakes["unauthorized"] != 0 {
		t.Errorf("handshakes %v, want %d ok", st.Handshakes, len(cases))
	}
	for r, n := range st.AuthFailures {
		if n != 0 {
			t.Errorf("auth failure %s counted %d times for good tokens", r, n)
		}
	}
}

// badTokens are tokens an HS256 server must refuse, with the auth.Reason label
// each is counted under. They are made against the server's clock.
func badTokens(t *testing.T) []struct {
	name, reason string
	make         func(ts *testServer) string
} {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	mint := func(secret []byte, sub string, ttl time.Duration, now time.Time) string {
		tok, err := auth.Mint(secret, "HS256", sub, ttl, "", now)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	at := func(ts *testServer, d time.Duration) *jwt.NumericDate {
		return jwt.NewNumericDate(ts.Clock.Now().Add(d))
	}
	return []struct {
		name, reason string
		make         func(ts *testServer) string
	}{
		{"expired", "expired", func(ts *testServer) string {
			return mint(testSecret, "alice", time.Minute, ts.Clock.Now().Add(-10*time.Minute))
		}},
		{"not yet valid", "not_yet_valid", func(ts *testServer) string {
			return signAuthToken(t, jwt.SigningMethodHS256, testSecret, jwt.RegisteredClaims{
				Subject: "alice", IssuedAt: at(ts, 0), NotBefore: at(ts, 10*time.Minute), ExpiresAt: at(ts, time.Hour)})
		}},
		{"issued in the future", "not_yet_valid", func(ts *testServer) string {
			return mint(testSecret, "alice", time.Hour, ts.Clock.Now().Add(10*time.Minute))
		}},
		{"wrong secret", "bad_signature", func(ts *testServer) string {
			return mint([]byte("another secret, not the server's"), "alice", time.Hour, ts.Clock.Now())
		}},
		{"RS256 against an HMAC key", "bad_algorithm", func(ts *testServer) string {
			return signAuthToken(t, jwt.SigningMethodRS256, rsaKey, jwt.RegisteredClaims{
				Subject: "alice", IssuedAt: at(ts, 0), ExpiresAt: at(ts, time.Hour)})
		}},
		{"alg none", "bad_algorithm", func(ts *testServer) string {
			return signAuthToken(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.RegisteredClaims{
				Subject: "alice", IssuedAt: at(ts, 0), ExpiresAt: at(ts, time.Hour)})
		}},
		{"malformed", "malformed", func(*testServer) string { return "not-a-jwt" }},
		{"three garbage segments", "malformed", func(*testServer) string { return "abc.def.ghi" }},
		{"no subject", "no_subject", func(ts *testServer) string {
			return signAuthToken(t, jwt.SigningMethodHS256, testSecret, jwt.RegisteredClaims{
				IssuedAt: at(ts, 0), ExpiresAt: at(ts, time.Hour)})
		}},
	}
}

// presentToken sets up a dial that carries tok by one transport.
func presentToken(transport, tok string) (query string, h http.Header, protocols []string) {
	switch transport {
	case "query":
		return "?token=" + url.QueryEscape(tok), nil, nil
	case "header":
		return "", http.Header{"Authorization": {"Bearer " + tok}}, nil
	case "subprotocol":
		return "", nil, []string{"bearer." + tok}
	}
	return "", nil, nil
}

func checkAuthFailures(t *testing.T, st server.Stats, reason string) {
	t.Helper()
	for r, n := range st.AuthFailures {
		want := uint64(0)
		if r == reason {
			want = 1
		}
		if n != want {
			t.Errorf("AuthFailures[%s] = %d, want %d (all: %v)", r, n, want, st.AuthFailures)
		}
	}
	if _, ok := st.AuthFailures[reason]; !ok {
		t.Errorf("AuthFailures has no %q entry: %v", reason, st.AuthFailures)
	}
}

func TestAuthRefusedWith401(t *testing.T) {
	type refusal struct {
		name, transport, reason string
		make                    func(*testServer) string
	}
	cases := []refusal{{"missing", "none", "missing", func(*testServer) string { return "" }}}
	for _, bt := range badTokens(t) {
		for _, tr := range []string{"query", "header", "subprotocol"} {
			cases = append(cases, refusal{bt.name, tr, bt.reason, bt.make})
		}
	}
	for _, tc := range cases {
		t.Run(tc.name+"/"+tc.transport, func(t *testing.T) {
			ts := startAuthServer(t, server.Options{}, nil)
			query, h, protos := presentToken(tc.transport, tc.make(ts))
			d := websocket.Dialer{Subprotocols: protos, HandshakeTimeout: 5 * time.Second}
			c, resp, err := d.Dial(ts.URL("/ws"+query), h)
			if err == nil {
				c.Close()
				t.Fatal("handshake succeeded, want 401")
			}
			if !errors.Is(err, websocket.ErrBadHandshake) || resp == nil {
				t.Fatalf("dial: %v, want a refused handshake", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401", resp.StatusCode)
			}
			if got, want := resp.Header.Get("WWW-Authenticate"), `Bearer error="invalid_token"`; got != want {
				t.Errorf("WWW-Authenticate %q, want %q", got, want)
			}
			st := ts.Stats()
			checkAuthFailures(t, st, tc.reason)
			if st.Handshakes["unauthorized"] != 1 || st.Handshakes["ok"] != 0 {
				t.Errorf("handshakes %v, want exactly one unauthorized", st.Handshakes)
			}
			if st.Open != 0 {
				t.Errorf("Open = %d after a refused handshake", st.Open)
			}
		})
	}
}

func TestAuthFailClose(t *testing.T) {
	bad := map[string]func(*testServer) string{}
	reasons := map[string]string{}
	for _, bt := range badTokens(t) {
		bad[bt.name], reasons[bt.name] = bt.make, bt.reason
	}
	cases := []struct {
		name, reason, text, closeLabel string
		make                           func(*testServer) string
	}{
		{"missing", "missing", "Authentication required", "auth_required", func(*testServer) string { return "" }},
		{"expired", "expired", "Invalid token", "invalid_token", bad["expired"]},
		{"wrong secret", "bad_signature", "Invalid token", "invalid_token", bad["wrong secret"]},
		{"alg none", "bad_algorithm", "Invalid token", "invalid_token", bad["alg none"]},
		{"malformed", "malformed", "Invalid token", "invalid_token", bad["malformed"]},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if reasons[tc.name] != "" && reasons[tc.name] != tc.reason {
				t.Fatalf("table: %s is counted as %s", tc.name, reasons[tc.name])
			}
			ts := startAuthServer(t, server.Options{AuthFailure: server.AuthFailClose}, nil)
			query, h, _ := presentToken("query", tc.make(ts))
			c := dial(t, ts.URL("/ws"+query), h)
			// The close must come first: a refused client is never greeted.
			_, msg, err := c.ReadMessage()
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("first read: %q, %v; want close 1008", msg, err)
			}
			if ce.Code != websocket.ClosePolicyViolation || ce.Text != tc.text {
				t.Fatalf("close %d %q, want 1008 %q", ce.Code, ce.Text, tc.text)
			}
			st := ts.Stats()
			checkAuthFailures(t, st, tc.reason)
			if st.Handshakes["ok"] != 1 || st.Handshakes["unauthorized"] != 0 {
				t.Errorf("handshakes %v, want one ok (the upgrade precedes the close)", st.Handshakes)
			}
			if st.Closes[tc.closeLabel] != 1 {
				t.Errorf("Closes[%s] = %d, want 1 (all: %v)", tc.closeLabel, st.Closes[tc.closeLabel], st.Closes)
			}
		})
	}
}

func TestAuthTokenExpiresOnLiveConnection(t *testing.T) {
	// Idle and ping deadlines are far away, so only the token can end the
	// connection when the clock jumps.
	ts := startAuthServer(t, server.Options{PingInterval: 30 * time.Minute, IdleTimeout: time.Hour}, nil)
	c := dialToken(t, ts, "alice", time.Minute)
	expectPong(t, c)
	ts.Clock.Advance(2 * time.Minute)
	expectTokenExpired(t, c)
	if n := ts.Stats().Closes["token_expired"]; n != 1 {
		t.Errorf("Closes[token_expired] = %d, want 1", n)
	}
}

func TestAuthRefreshExtendsConnection(t *testing.T) {
	// One loop, so the sentinel's expiry proves a sweep has also looked at the
	// refreshed connection after the clock moved.
	ts := startAuthServer(t, server.Options{Loops: 1, PingInterval: 30 * time.Minute, IdleTimeout: time.Hour}, nil)
	c := dialToken(t, ts, "alice", time.Minute)
	sentinel := dialToken(t, ts, "bob", time.Minute)

	later := ts.Clock.Now().Add(10 * time.Minute)
	sendAuthJSON(t, c, map[string]string{"type": "refresh", "token": ts.token("alice", 10*time.Minute)})
	m := readAuthMsg(t, c)
	if m.Type != "refreshed" {
		t.Fatalf("refresh answered %+v, want refreshed", m)
	}
	if want := later.UTC().Format(protocol.TimeLayout); m.ExpiresAt != want {
		t.Errorf("expiresAt %q, want %q", m.ExpiresAt, want)
	}

	ts.Clock.Advance(2 * time.Minute)
	expectTokenExpired(t, sentinel)
	expectPong(t, c)

	ts.Clock.Advance(10 * time.Minute)
	expectTokenExpired(t, c)
}

func TestAuthRefreshRefused(t *testing.T) {
	cases := []struct {
		name      string
		msg       func(ts *testServer) any
		code      string
		wantField string
	}{
		{"other subject", func(ts *testServer) any {
			return map[string]string{"type": "refresh", "token": ts.token("mallory", 10*time.Minute)}
		}, protocol.CodeInvalidToken, "sub"},
		{"garbage", func(*testServer) any {
			return map[string]string{"type": "refresh", "token": "garbage"}
		}, protocol.CodeInvalidToken, ""},
		{"empty token", func(*testServer) any {
			return map[string]string{"type": "refresh", "token": ""}
		}, protocol.CodeInvalidToken, ""},
		{"wrong secret", func(ts *testServer) any {
			tok, _ := auth.Mint([]byte("not the server's secret"), "HS256", "alice", 10*time.Minute, "", ts.Clock.Now())
			return map[string]string{"type": "refresh", "token": tok}
		}, protocol.CodeInvalidToken, ""},
		{"expired", func(ts *testServer) any {
			tok, _ := auth.Mint(testSecret, "HS256", "alice", time.Minute, "", ts.Clock.Now().Add(-time.Hour))
			return map[string]string{"type": "refresh", "token": tok}
		}, protocol.CodeInvalidToken, ""},
		{"earlier expiry", func(ts *testServer) any {
			return map[string]string{"type": "refresh", "token": ts.token("alice", 30*time.Second)}
		}, protocol.CodeInvalidToken, "exp"},
		{"token not a string", func(*testServer) any {
			return map[string]any{"type": "refresh", "token": 42}
		}, protocol.CodeInvalidMessage, "token"},
		{"no token", func(*testServer) any {
			return map[string]any{"type": "refresh"}
		}, protocol.CodeInvalidMessage, "token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startAuthServer(t, server.Options{PingInterval: 30 * time.Minute, IdleTimeout: time.Hour}, nil)
			c := dialToken(t, ts, "alice", time.Minute)
			sendAuthJSON(t, c, tc.msg(ts))
			m := readAuthMsg(t, c)
			if m.Type != "error" || m.Code != tc.code || m.Field != tc.wantField {
				t.Fatalf("got %+v, want error %s field %q", m, tc.code, tc.wantField)
			}
			expectPong(t, c)
			// The refused refresh left the first token's expiry in force.
			ts.Clock.Advance(2 * time.Minute)
			expectTokenExpired(t, c)
		})
	}
}

func TestAuthAnonymous(t *testing.T) {
	ts := startChatServer(t, server.Options{}, nil)
	seen := map[string]bool{}
	for range 3 {
		c := dial(t, ts.URL("/ws"), nil)
		m := readAuthMsg(t, c)
		id, ok := strings.CutPrefix(m.UserID, "anon-")
		if m.Type != "connected" || !ok {
			t.Fatalf("greeting %+v, want connected with an anon- id", m)
		}
		if _, err := hex.DecodeString(id); err != nil || len(id) != 16 {
			t.Errorf("anonymous id %q: want 16 hex digits after anon-", m.UserID)
		}
		if seen[m.UserID] {
			t.Errorf("anonymous id %q given twice", m.UserID)
		}
		seen[m.UserID] = true
		// Without a verifier there is nothing to refresh against.
		sendAuthJSON(t, c, map[string]string{"type": "refresh", "token": "x"})
		if m := readAuthMsg(t, c); m.Type != "error" || m.Code != protocol.CodeInvalidToken {
			t.Errorf("anonymous refresh answered %+v, want invalid_token", m)
		}
	}
	// A token presented to an anonymous server is ignored, not verified.
	c := dial(t, ts.URL("/ws?token=whatever"), nil)
	if m := readAuthMsg(t, c); !strings.HasPrefix(m.UserID, "anon-") {
		t.Errorf("greeting %+v, want an anon- id", m)
	}
}

// TestAuthSubprotocolHeaderRepeated sends the offered subprotocols as separate
// header lines, which RFC 6455 section 11.3.4 makes equivalent to one
// comma-separated line: the bearer entry must be found wherever it is, and the
// app protocol still chosen.
func TestAuthSubprotocolHeaderRepeated(t *testing.T) {
	ts := startAuthServer(t, server.Options{Subprotocols: []string{"throng.v1"}}, nil)
	tok := ts.token("alice", time.Hour)
	for _, tc := range []struct {
		name      string
		lines     []string
		wantProto string
	}{
		{"app protocol first", []string{"Sec-WebSocket-Protocol: throng.v1", "Sec-WebSocket-Protocol: bearer." + tok}, "throng.v1"},
		{"bearer first", []string{"Sec-WebSocket-Protocol: bearer." + tok, "Sec-WebSocket-Protocol: throng.v1"}, "throng.v1"},
		{"unknown then bearer", []string{"Sec-WebSocket-Protocol: other", "Sec-WebSocket-Protocol: bearer." + tok}, ""},
		{"three lines", []string{"Sec-WebSocket-Protocol: other", "Sec-WebSocket-Protocol: throng.v1", "Sec-WebSocket-Protocol: bearer." + tok}, "throng.v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawConnect(t, ts.Addr)
			req := "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
				"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
				strings.Join(tc.lines, "\r\n") + "\r\n\r\n"
			if _, err := c.Write([]byte(req)); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %d, want 101", resp.StatusCode)
			}
			if got := resp.Header.Values("Sec-WebSocket-Protocol"); strings.Join(got, ",") != tc.wantProto {
				t.Errorf("Sec-WebSocket-Protocol %q, want %q", got, tc.wantProto)
			}
			op, _, p, err := c.readFrame()
			if err != nil || op != 0x1 || !strings.Contains(string(p), `"userId":"alice"`) {
				t.Fatalf("first frame op %d %q (%v), want connected for alice", op, p, err)
			}
		})
	}
}

// TestAuthSubprotocolPreference checks that Options.Subprotocols, which is in
// the server's preference order, decides between protocols the client offers.
func TestAuthSubprotocolPreference(t *testing.T) {
	ts := startAuthServer(t, server.Options{Subprotocols: []string{"throng.v2", "throng.v1"}}, nil)
	tok := ts.token("alice", time.Hour)
	for i, tc := range []struct {
		offer []string
		want  string
	}{
		{[]string{"throng.v1", "throng.v2", "bearer." + tok}, "throng.v2"},
		{[]string{"bearer." + tok, "throng.v2", "throng.v1"}, "throng.v2"},
		{[]string{"throng.v1", "bearer." + tok}, "throng.v1"},
		{[]string{"throng.v3", "bearer." + tok}, ""},
	} {
		d := websocket.Dialer{Subprotocols: tc.offer, HandshakeTimeout: 5 * time.Second}
		c, _, err := d.Dial(ts.URL("/ws"), nil)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if got := c.Subprotocol(); got != tc.want {
			t.Errorf("case %d: chose %q, want %q", i, got, tc.want)
		}
		c.Close()
	}
}

// TestAuthLeewayOneRule: a token that expired 2 s ago is inside the 30 s
// leeway, so the handshake takes it, and the live connection then lasts until
// exp + leeway, the instant the handshake would refuse it, not until the next
// sweep.
func TestAuthLeewayOneRule(t *testing.T) {
	// One loop, so the sentinel's expiry proves a sweep has also looked at the
	// late connection after the clock moved.
	ts := startAuthServer(t, server.Options{Loops: 1, PingInterval: 30 * time.Minute, IdleTimeout: time.Hour}, nil)
	mint := func(sub string, expAgo time.Duration) string {
		tok, err := auth.Mint(testSecret, "HS256", sub, time.Minute, "", ts.Clock.Now().Add(expAgo-time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	late := dial(t, ts.URL("/ws?token="+mint("late", -2*time.Second)), nil)
	if m := readAuthMsg(t, late); m.Type != "connected" {
		t.Fatalf("token 2 s past exp: %+v, want connected", m)
	}
	sentinel := dial(t, ts.URL("/ws?token="+mint("sentinel", -29*time.Second)), nil)
	readAuthMsg(t, sentinel)

	ts.Clock.Advance(2 * time.Second)
	expectTokenExpired(t, sentinel) // 31 s past its exp
	expectPong(t, late)             // 4 s past its exp: still inside the leeway

	ts.Clock.Advance(26 * time.Second) // exactly exp + leeway
	expectTokenExpired(t, late)
}
