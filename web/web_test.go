package web

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/throng-ws/throng/auth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var testSecret = []byte("web-test-secret-0123456789abcdef")

func verifier(t testing.TB) *auth.Verifier {
	t.Helper()
	v, err := auth.New(auth.Options{Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func get(t *testing.T, h http.Handler, method, target, body string, tweak ...func(*http.Request)) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	for _, f := range tweak {
		f(r)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestAssets(t *testing.T) {
	h := Handler(Options{})
	cases := []struct {
		path, ctype, contains string
	}{
		{"/", "text/html", `<script type="module" src="/app.js">`},
		{"/client.js", "javascript", "export class WebSocketClient"},
		{"/app.js", "javascript", `from "/client.js"`},
		{"/style.css", "text/css", ".messages"},
	}
	for _, c := range cases {
		w := get(t, h, "GET", c.path, "")
		if w.Code != 200 {
			t.Fatalf("GET %s: %d", c.path, w.Code)
		}
		if ct := w.Header().Get("Content-Type"); !strings.Contains(ct, c.ctype) {
			t.Errorf("GET %s: Content-Type %q, want %s", c.path, ct, c.ctype)
		}
		if !strings.Contains(w.Body.String(), c.contains) {
			t.Errorf("GET %s: body lacks %q", c.path, c.contains)
		}
		if w.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no nosniff", c.path)
		}
	}
	if csp := get(t, h, "GET", "/", "").Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("page CSP = %q", csp)
	}
	for _, p := range []string{"/index.html", "/static/app.js", "/nope", "/dev/token", "/api/rooms", "/client.js/"} {
		if w := get(t, h, "GET", p, ""); w.Code != 404 && w.Code != 301 {
			t.Errorf("GET %s: %d, want 404", p, w.Code)
		}
	}
	if w := get(t, h, "POST", "/token/verify", "x"); w.Code != 404 {
		t.Errorf("POST /token/verify without Auth: %d, want 404", w.Code)
	}
}

func TestConfig(t *testing.T) {
	v := verifier(t)
	cases := []struct {
		name string
		o    Options
		host string
		tls  bool
		want Config
	}{
		{"zero: same host and port", Options{}, "example.com:8081", false, Config{"ws://example.com:8081/ws", "none"}},
		{"unspecified host: the page's", Options{WSAddr: "[::]:8080"}, "chat.example.com:8081", false, Config{"ws://chat.example.com:8080/ws", "none"}},
		{"0.0.0.0 with tls", Options{WSAddr: "0.0.0.0:8080", Auth: v}, "h:443", true, Config{"wss://h:8080/ws", "token"}},
		{"empty host", Options{WSAddr: ":8080", DevSecret: testSecret, Auth: v}, "127.0.0.1:8081", false, Config{"ws://127.0.0.1:8080/ws", "dev"}},
		{"ipv6 page host", Options{WSAddr: ":9000"}, "[::1]:8081", false, Config{"ws://[::1]:9000/ws", "none"}},
		{"host without port", Options{WSAddr: ":9000"}, "localhost", false, Config{"ws://localhost:9000/ws", "none"}},
		{"bound host kept", Options{WSAddr: "10.1.2.3:8080", Path: "/chat"}, "x:1", false, Config{"ws://10.1.2.3:8080/chat", "none"}},
		{"explicit URL", Options{WSURL: "wss://edge.example.com/throng/ws", WSAddr: ":1"}, "x", false, Config{"wss://edge.example.com/throng/ws", "none"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := get(t, Handler(c.o), "GET", "/config.json", "", func(r *http.Request) {
				r.Host = c.host
				if c.tls {
					r.TLS = &tls.ConnectionState{}
				}
			})
			var got Config
			if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != 200 {
				t.Fatalf("%d %s: %v", w.Code, w.Body, err)
			}
			if got != c.want {
				t.Fatalf("config = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	v := verifier(t)
	h := Handler(Options{Auth: v})
	good, _ := auth.Mint(testSecret, "", "alice", time.Hour, "Alice", time.Time{})
	expired, _ := auth.Mint(testSecret, "", "alice", time.Second, "", time.Now().Add(-time.Hour))
	other, _ := auth.Mint([]byte("another-secret-0123456789abcdef!"), "", "alice", time.Hour, "", time.Time{})
	cases := []struct {
		body   string
		status int
		reason string
	}{
		{good, 200, ""},
		{"Bearer " + good + "\n", 200, ""},
		{"", 401, "missing"},
		{"garbage", 401, "malformed"},
		{expired, 401, "expired"},
		{other, 401, "bad_signature"},
	}
	for _, c := range cases {
		w := get(t, h, "POST", "/token/verify", c.body)
		var rep verifyReply
		json.Unmarshal(w.Body.Bytes(), &rep)
		if w.Code != c.status || rep.Reason != c.reason {
			t.Errorf("verify %.20q: %d %+v, want %d %q", c.body, w.Code, rep, c.status, c.reason)
		}
		if c.status == 200 && (rep.UserID != "alice" || rep.ExpiresAt == nil) {
			t.Errorf("verify good: %+v", rep)
		}
	}
	if w := get(t, h, "POST", "/token/verify", strings.Repeat("x", maxTokenBody+1)); w.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("huge body: %d", w.Code)
	}
}

func TestDevToken(t *testing.T) {
	v := verifier(t)
	now := time.Now().Truncate(time.Second)
	h := Handler(Options{DevSecret: testSecret, DevTokenTTL: 10 * time.Minute, Now: func() time.Time { return now }})
	w := get(t, h, "GET", "/dev/token?sub=bob&name=Bob", "")
	var tok devToken
	if err := json.Unmarshal(w.Body.Bytes(), &tok); err != nil || w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	claims, err := v.Verify(tok.Token)
	if err != nil {
		t.Fatalf("dev token does not verify: %v", err)
	}
	if claims.Subject != "bob" || claims.Name != "Bob" || tok.UserID != "bob" || !claims.ExpiresAt.Equal(now.Add(10*time.Minute)) {
		t.Fatalf("claims %+v, reply %+v", claims, tok)
	}
	if w.Header().Get("Cache-Control") != "no-store" {
		t.Error("dev token may be cached")
	}
	// No sub: a random guest, different each time.
	var a, b devToken
	json.Unmarshal(get(t, h, "GET", "/dev/token", "").Body.Bytes(), &a)
	json.Unmarshal(get(t, h, "GET", "/dev/token", "").Body.Bytes(), &b)
	if !strings.HasPrefix(a.UserID, "guest-") || a.UserID == b.UserID {
		t.Errorf("guest ids %q, %q", a.UserID, b.UserID)
	}
	for _, bad := range []string{"a%20b", strings.Repeat("x", 65), "%3Cscript%3E"} {
		if w := get(t, h, "GET", "/dev/token?sub="+bad, ""); w.Code != 400 {
			t.Errorf("sub %q: %d, want 400", bad, w.Code)
		}
	}
}

// TestSeedCopyIsVerbatim checks testdata's copy of the seed's browser client
// against the seed itself, when the seed is checked out beside the repository.
func TestSeedCopyIsVerbatim(t *testing.T) {
	seed, err := os.ReadFile(filepath.Join("..", "..", "shared", "seed", "websockets-rule.md"))
	if err != nil {
		t.Skipf("seed not found beside the repository (%v); the copy in testdata stands", err)
	}
	s := string(seed)
	i := strings.Index(s, "### WebSocket Client (Frontend)")
	if i < 0 {
		t.Fatal("seed has no WebSocket Client (Frontend) section")
	}
	start := strings.Index(s[i:], "```typescript\n")
	if start < 0 {
		t.Fatal("seed's client section has no typescript block")
	}
	start += i + len("```typescript\n")
	end := strings.Index(s[start:], "```")
	block := s[start : start+end]
	got := seedClientSource(t)
	if got != block {
		t.Fatal("testdata/seed_websocket_client.ts differs from the seed's code block")
	}
}

// seedClientSource is the seed's code block as kept in testdata, without the
// header that names its source.
func seedClientSource(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "seed_websocket_client.ts"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for strings.HasPrefix(s, "// ") && !strings.HasPrefix(s, "// client/websocket.ts") {
		s = s[strings.IndexByte(s, '\n')+1:]
	}
	return s
}
