package chat

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/internal/redact"
	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/server"
)

// TestNoTokenInLogs runs connections with tokens in every place a client may
// put one, good and bad, through a whole connect, chat and close cycle and the
// HTTP API, with debug logging, and checks that no token or key reaches the log.
// The server's own redaction is tested: the handler has no ReplaceAttr.
func TestNoTokenInLogs(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var buf opsLog
			ho := &slog.HandlerOptions{Level: slog.LevelDebug}
			var log *slog.Logger
			if format == "json" {
				log = slog.New(slog.NewJSONHandler(&buf, ho))
			} else {
				log = slog.New(slog.NewTextHandler(&buf, ho))
			}
			v, err := auth.New(auth.Options{Secret: testSecret})
			if err != nil {
				t.Fatal(err)
			}
			ts := startChatServer(t, server.Options{Auth: v, Logger: log}, func(c *Handler) { c.Logger = log })
			mint := func(sub string, ttl time.Duration, secret []byte) string {
				now := time.Now()
				if ttl < 0 { // issued long enough ago to have expired
					now, ttl = now.Add(2*ttl), -ttl
				}
				tok, err := auth.Mint(secret, "HS256", sub, ttl, "", now)
				if err != nil {
					t.Fatal(err)
				}
				return tok
			}
			inQuery := mint("q", time.Hour, testSecret)
			inHeader := mint("h", time.Hour, testSecret)
			inProtocol := mint("p", time.Hour, testSecret)
			forged := mint("f", time.Hour, []byte("another secret entirely"))
			expired := mint("e", -time.Hour, testSecret)
			refresh := mint("q", 2*time.Hour, []byte("not the key"))
			const apiKey = "the-api-key-0123456789"
			secrets := []string{inQuery, inHeader, inProtocol, forged, expired, refresh, apiKey}

			// Good tokens, in the query, a header and a subprotocol: a whole cycle.
			q := dial(t, ts.URL("/ws?room=x&token="+inQuery), nil)
			readText(t, q)
			q.WriteMessage(websocket.TextMessage, []byte(`{"type":"join","roomId":"r","userName":"Q"}`))
			q.WriteMessage(websocket.TextMessage, []byte(`{"type":"chat","roomId":"r","content":"hello"}`))
			q.WriteMessage(websocket.TextMessage, []byte(`{"type":"refresh","token":"`+refresh+`"}`))
			// The chat message is broadcast through a loop job, so it may come
			// before or after the refresh's error.
			for seen := map[string]bool{}; !seen["message"] || !seen["error"]; {
				m := chatMsg(t, q, "")
				seen[m["type"].(string)] = true
				if m["type"] == "error" && m["code"] != protocol.CodeInvalidToken {
					t.Fatalf("refresh with a bad token: %v", m)
				}
			}
			h := dial(t, ts.URL("/ws"), http.Header{"Authorization": {"Bearer " + inHeader}})
			readText(t, h)
			d := websocket.Dialer{Subprotocols: []string{"throng.v1", "bearer." + inProtocol}}
			p, _, err := d.Dial(ts.URL("/ws"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			p.SetReadDeadline(time.Now().Add(5 * time.Second))
			readText(t, p)

			// Refused ones: a forged and an expired token, a token on a path
			// that does not exist.
			for _, u := range []string{"/ws?token=" + forged, "/ws?token=" + expired, "/nowhere?token=" + inQuery} {
				if _, status, _ := opsDialStatus(t, ts.URL(u), nil); status/100 != 4 {
					t.Fatalf("%s: status %d, want 4xx", redact.String(u), status)
				}
			}
			// Invalid UTF-8 is a failure the chat logs.
			h.WriteMessage(websocket.TextMessage, []byte{0xff})
			expectClose(t, h, 1007)

			// The HTTP API, with the key and a token in the query.
			mux := http.NewServeMux()
			(&API{Key: apiKey, Chat: ts.Chat, Rooms: ts.Rooms, Server: ts.Server}).Register(mux)
			hs := httptest.NewServer(server.LogRequests(log, mux))
			defer hs.Close()
			for _, u := range []string{"/api/stats?token=" + inQuery + "&api_key=" + apiKey, "/api/rooms?key=" + apiKey} {
				req, _ := http.NewRequest("GET", hs.URL+u, nil)
				req.Header.Set("Authorization", "Bearer "+apiKey)
				resp, err := hs.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("%s: %d", redact.String(u), resp.StatusCode)
				}
			}

			for _, c := range []*websocket.Conn{q, h, p} {
				c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
				c.Close()
			}
			waitFor(t, "every connection to close", func() bool { return ts.Stats().Open == 0 })
			ts.Close()

			out := buf.String()
			for _, want := range []string{"handshake refused", "connection opened", "connection closed", "connection error", "http request", "token=" + redact.Redacted, "api_key=" + redact.Redacted} {
				if !strings.Contains(out, want) {
					t.Errorf("the log lacks %q, so the test did not exercise it:\n%s", want, out)
				}
			}
			for _, s := range secrets {
				// A JWT's signature alone is as good as a leak.
				sig := s[strings.LastIndexByte(s, '.')+1:]
				if strings.Contains(out, s) || strings.Contains(out, sig) {
					t.Errorf("a secret reached the log:\n%s", out)
				}
			}
		})
	}
}
