package server

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// upgradeRequest is a valid upgrade request for path with extra header lines
// and without the blank line that ends it.
func upgradeRequest(path string, extra ...string) string {
	req := "GET " + path + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	for _, h := range extra {
		req += h + "\r\n"
	}
	return req
}

func TestHTTPErrorsOnWebSocketListener(t *testing.T) {
	const key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	cases := []struct {
		name     string
		req      string
		status   []int // any of these
		result   string
		wantHead map[string]string
	}{
		{"unknown path", upgradeRequest("/nope") + "\r\n",
			[]int{404}, "not_found", nil},
		{"unknown path with query", upgradeRequest("/nope?token=x") + "\r\n",
			[]int{404}, "not_found", nil},
		{"POST", strings.Replace(upgradeRequest("/ws"), "GET", "POST", 1) + "\r\n",
			[]int{405}, "bad_method", nil},
		{"plain GET", "GET /ws HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
			[]int{426}, "upgrade_required", map[string]string{"Upgrade": "websocket", "Sec-WebSocket-Version": "13"}},
		{"version 8", strings.Replace(upgradeRequest("/ws"), "Version: 13", "Version: 8", 1) + "\r\n",
			[]int{426}, "upgrade_required", map[string]string{"Sec-WebSocket-Version": "13"}},
		{"no key", strings.Replace(upgradeRequest("/ws"), key, "", 1) + "\r\n",
			[]int{400}, "bad_request", nil},
		{"short key", strings.Replace(upgradeRequest("/ws"), key, "Sec-WebSocket-Key: c2hvcnQ=\r\n", 1) + "\r\n",
			[]int{400}, "bad_request", nil},
		{"no version", strings.Replace(upgradeRequest("/ws"), "Sec-WebSocket-Version: 13\r\n", "", 1) + "\r\n",
			[]int{400}, "bad_request", nil},
		{"no Host", strings.Replace(upgradeRequest("/ws"), "Host: x\r\n", "", 1) + "\r\n",
			[]int{400}, "bad_request", nil},
		{"Connection without upgrade", strings.Replace(upgradeRequest("/ws"), "Connection: Upgrade", "Connection: keep-alive", 1) + "\r\n",
			[]int{400}, "bad_request", nil},
		{"HTTP/1.0", strings.Replace(upgradeRequest("/ws"), "HTTP/1.1", "HTTP/1.0", 1) + "\r\n",
			[]int{505, 400}, "bad_request", nil},
		{"garbage request line", "\x16\x03\x01 hello there\r\n\r\n",
			[]int{400}, "bad_request", nil},
		{"request line without version", "GET /ws\r\nHost: x\r\n\r\n",
			[]int{400}, "bad_request", nil},
		{"header line without colon", upgradeRequest("/ws", "this is not a header") + "\r\n",
			[]int{400}, "bad_request", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, Options{})
			resp := httpRequest(t, ts.Addr, tc.req)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			ok := false
			for _, s := range tc.status {
				ok = ok || resp.StatusCode == s
			}
			if !ok {
				t.Fatalf("status %d (%q), want one of %v", resp.StatusCode, body, tc.status)
			}
			for k, v := range tc.wantHead {
				if got := resp.Header.Get(k); !strings.EqualFold(got, v) {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if !resp.Close {
				t.Error("refusal does not close the connection")
			}
			if h := resp.Header.Get("Sec-WebSocket-Accept"); h != "" {
				t.Errorf("refusal carries Sec-WebSocket-Accept %q", h)
			}
			st := ts.Stats()
			if st.Handshakes[tc.result] != 1 || st.Handshakes["ok"] != 0 {
				t.Errorf("handshakes %v, want one %s", st.Handshakes, tc.result)
			}
			if st.Open != 0 {
				t.Errorf("Open = %d after a refusal", st.Open)
			}
		})
	}
}

func TestHTTPOrigins(t *testing.T) {
	ts := startServer(t, Options{Origins: []string{"https://*.example.com"}})
	for _, tc := range []struct {
		name, origin string
		status       int
	}{
		{"allowed", "https://app.example.com", 101},
		{"allowed, case differs", "HTTPS://App.Example.COM", 101},
		{"allowed, deeper subdomain", "https://a.b.example.com", 101},
		{"no Origin", "", 101},
		{"other site", "https://evil.com", 403},
		{"bare domain", "https://example.com", 403},
		{"suffix attack", "https://app.example.com.evil.com", 403},
		{"other scheme", "http://app.example.com", 403},
		{"with port", "https://app.example.com:8443", 403},
		{"null", "null", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := ts.Stats().Handshakes
			var extra []string
			if tc.origin != "" {
				extra = append(extra, "Origin: "+tc.origin)
			}
			resp := httpRequest(t, ts.Addr, upgradeRequest("/echo", extra...)+"\r\n")
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			result := "ok"
			if tc.status == 403 {
				result = "forbidden"
			}
			// An upgrade is counted just after its response is sent.
			waitFor(t, "Handshakes["+result+"] to count it", func() bool {
				return ts.Stats().Handshakes[result] == before[result]+1
			})
		})
	}
}

func TestHTTPOriginsWithGorilla(t *testing.T) {
	// Patterns match case-insensitively, as host names do.
	ts := startServer(t, Options{Origins: []string{"https://chat.example.org", "HTTPS://*.Example.COM"}})
	for _, origin := range []string{"https://chat.example.com", "https://chat.example.org"} {
		c := dial(t, ts.URL("/echo"), http.Header{"Origin": {origin}})
		echoRoundTrip(t, c, "hi")
	}
	_, resp, err := websocket.DefaultDialer.Dial(ts.URL("/echo"), http.Header{"Origin": {"https://chat.example.net"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("origin chat.example.net: %v, want 403", err)
	}
}

func httpGetStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHTTPHealthAndReadiness(t *testing.T) {
	clock := newFakeClock()
	ts := startServer(t, Options{Now: clock.Now})
	hs := httptest.NewServer(ts.HTTPHandler())
	defer hs.Close()
	defer http.DefaultClient.CloseIdleConnections()

	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGetStatus(t, hs.URL+path); code != 200 {
			t.Fatalf("%s: %d %q before Shutdown, want 200", path, code, body)
		}
	}
	if code, _ := httpGetStatus(t, hs.URL+"/nope"); code != 404 {
		t.Errorf("/nope: %d, want 404", code)
	}
	resp, err := http.Post(hs.URL+"/readyz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /readyz: %d, want 405", resp.StatusCode)
	}

	// A client that does not answer the close keeps Shutdown draining (the
	// fake clock holds its close timeout back), so readiness is observed
	// mid-drain.
	c := rawDial(t, ts.Addr, "/echo")
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- ts.Shutdown(ctx)
	}()
	c.expectClose(1001)
	if code, body := httpGetStatus(t, hs.URL+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz during the drain: %d %q, want 503", code, body)
	}
	if code, _ := httpGetStatus(t, hs.URL+"/healthz"); code != 200 {
		t.Errorf("/healthz during the drain: %d, want 200", code)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v while a connection was draining", err)
	default:
	}
	c.send(0x8, []byte{0x03, 0xe9})
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if code, _ := httpGetStatus(t, hs.URL+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz after Shutdown: %d, want 503", code)
	}
}

func TestHTTPUnavailableWhileDraining(t *testing.T) {
	// 503 answers a request that completes between the start of Shutdown and
	// the drain reaching its socket (the drain closes sockets still in the
	// handshake). That window is too narrow to hit from outside, so the test
	// sets the flag Shutdown sets first, with the request all but complete.
	clock := newFakeClock()
	ts := startServer(t, Options{Now: clock.Now})
	c := rawConnect(t, ts.Addr)
	req := upgradeRequest("/echo") + "\r\n"
	if _, err := c.Write([]byte(req[:len(req)-1])); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the socket to be accepted", func() bool { return ts.Stats().Accepted == 1 })
	ts.draining.Store(true) // the first thing Shutdown does
	if _, err := c.Write([]byte(req[len(req)-1:])); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("status %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if n := ts.Stats().Handshakes["unavailable"]; n != 1 {
		t.Errorf("Handshakes[unavailable] = %d, want 1", n)
	}
}
