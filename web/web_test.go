package web

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/httplimit"
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
		{"zero: same host and port", Options{}, "example.com:8081", false, Config{WSPath: "/ws", Auth: "none"}},
		{"unspecified host: the page's", Options{WSAddr: "[::]:8080"}, "chat.example.com:8081", false, Config{WSPort: "8080", WSPath: "/ws", Auth: "none"}},
		{"0.0.0.0", Options{WSAddr: "0.0.0.0:8080", Auth: v}, "h:443", true, Config{WSPort: "8080", WSPath: "/ws", Auth: "token"}},
		{"empty host", Options{WSAddr: ":8080", DevSecret: testSecret, Auth: v}, "127.0.0.1:8081", false, Config{WSPort: "8080", WSPath: "/ws", Auth: "dev"}},
		{"forged host header", Options{WSAddr: ":9000"}, "evil.example:1", false, Config{WSPort: "9000", WSPath: "/ws", Auth: "none"}},
		{"bound host kept", Options{WSAddr: "10.1.2.3:8080", Path: "/chat"}, "x:1", false, Config{WSURL: "ws://10.1.2.3:8080/chat", Auth: "none"}},
		{"bound host with tls", Options{WSAddr: "127.0.0.1:8080"}, "x:1", true, Config{WSURL: "wss://127.0.0.1:8080/ws", Auth: "none"}},
		{"explicit URL", Options{WSURL: "wss://edge.example.com/throng/ws", WSAddr: ":1"}, "x", false, Config{WSURL: "wss://edge.example.com/throng/ws", Auth: "none"}},
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
			if strings.Contains(w.Body.String(), c.host) && c.host != "x" {
				t.Errorf("config %s echoes the request's Host %q", w.Body, c.host)
			}
			if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control %q, want no-store", cc)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	v := verifier(t)
	good, _ := auth.Mint(testSecret, "", "alice", time.Hour, "Alice", time.Time{})
	expired, _ := auth.Mint(testSecret, "", "alice", time.Second, "", time.Now().Add(-time.Hour))
	other, _ := auth.Mint([]byte("another-secret-0123456789abcdef!"), "", "alice", time.Hour, "", time.Time{})
	cases := []struct {
		body   string
		status int
		reason string // with Options.Reasons; without it, always empty
	}{
		{good, 200, ""},
		{"Bearer " + good + "\n", 200, ""},
		{"", 401, "missing"},
		{"garbage", 401, "malformed"},
		{expired, 401, "expired"},
		{other, 401, "bad_signature"},
	}
	for _, reasons := range []bool{false, true} {
		// A burst as large as the cases: this test is not about the throttle.
		h := Handler(Options{Auth: v, Reasons: reasons, VerifyBurst: len(cases) + 1})
		for _, c := range cases {
			w := get(t, h, "POST", "/token/verify", c.body)
			var rep verifyReply
			json.Unmarshal(w.Body.Bytes(), &rep)
			var e httplimit.ErrorBody
			json.Unmarshal(w.Body.Bytes(), &e)
			want := c.reason
			if !reasons {
				want = ""
			}
			if w.Code != c.status || e.Error.Reason != want {
				t.Errorf("reasons=%v: verify %.20q: %d %+v, want %d %q", reasons, c.body, w.Code, e, c.status, want)
			}
			if c.status == 401 && (e.Error.Code != "invalid_token" || e.Error.Message == "") {
				t.Errorf("verify %.20q: error %+v, want invalid_token", c.body, e)
			}
			if c.status == 200 && (rep.UserID != "alice" || rep.ExpiresAt == nil) {
				t.Errorf("verify good: %+v", rep)
			}
		}
		if w := get(t, h, "POST", "/token/verify", strings.Repeat("x", maxTokenBody+1)); w.Code != http.StatusRequestEntityTooLarge {
			t.Errorf("huge body: %d", w.Code)
		}
	}
}

// TestVerifyThrottle: over a real socket, one client address gets its burst,
// then 429 with Retry-After until its rate refills; another address is not
// affected.
func TestVerifyThrottle(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	h := Handler(Options{Auth: verifier(t), VerifyRate: 0.5, VerifyBurst: 3, Now: clock})
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()
	post := func() *http.Response {
		t.Helper()
		resp, err := srv.Client().Post(srv.URL+"/token/verify", "text/plain", strings.NewReader("garbage"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for i := range 3 {
		if resp := post(); resp.StatusCode != 401 {
			t.Fatalf("request %d within the burst: %d, want 401", i, resp.StatusCode)
		}
	}
	resp := post()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("past the burst: %d Retry-After %q, want 429 and 2", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	// Another address has its own allowance.
	r := httptest.NewRequest("POST", "/token/verify", strings.NewReader("garbage"))
	r.RemoteAddr = "192.0.2.7:1234"
	if w := httptest.NewRecorder(); func() int { h.ServeHTTP(w, r); return w.Code }() != 401 {
		t.Errorf("another address throttled too")
	}
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	if resp := post(); resp.StatusCode != 401 {
		t.Fatalf("after the Retry-After: %d, want 401", resp.StatusCode)
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

// TestClientJSCORS: /client.js may be imported by a page of another origin;
// the page itself is not shared.
func TestClientJSCORS(t *testing.T) {
	h := Handler(Options{})
	w := get(t, h, "GET", "/client.js", "", func(r *http.Request) { r.Header.Set("Origin", "http://other.example") })
	if w.Code != 200 || w.Header().Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("/client.js: %d, Access-Control-Allow-Origin %q", w.Code, w.Header().Get("Access-Control-Allow-Origin"))
	}
	if w := get(t, h, "GET", "/", ""); w.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("the page is shared cross-origin")
	}
}
