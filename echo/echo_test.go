package echo

import (
	"bytes"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/server"
)

func startEcho(t *testing.T, b poller.Backend, h *Handler) string {
	t.Helper()
	s, err := server.New(server.Options{Backend: b, Loops: 1, TickInterval: 10 * time.Millisecond, Handlers: map[string]server.Handler{"/echo": h}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	addr, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return "ws://" + addr.String() + "/echo"
}

// TestEchoRateLimit: /echo applies the inbound rate limit: a client that
// sends past its burst is closed with 1008 "rate limited", after every
// message within the burst came back; with a negative rate it is never
// limited.
func TestEchoRateLimit(t *testing.T) {
	for _, b := range poller.Backends() {
		t.Run(string(b), func(t *testing.T) {
			url := startEcho(t, b, &Handler{RateLimit: server.RateLimit{Rate: 0.001, Burst: 5}})
			c, _, err := websocket.DefaultDialer.Dial(url, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			for i := range 10 {
				c.WriteMessage(websocket.BinaryMessage, []byte{byte(i)})
			}
			for i := range 5 {
				if _, p, err := c.ReadMessage(); err != nil || !bytes.Equal(p, []byte{byte(i)}) {
					t.Fatalf("echo %d: %v %v", i, p, err)
				}
			}
			_, _, err = c.ReadMessage()
			if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.ClosePolicyViolation || ce.Text != "rate limited" {
				t.Fatalf("after the burst: %v, want close 1008 rate limited", err)
			}

			free, _, err := websocket.DefaultDialer.Dial(startEcho(t, b, &Handler{RateLimit: server.RateLimit{Rate: -1}}), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer free.Close()
			free.SetReadDeadline(time.Now().Add(5 * time.Second))
			for i := range 200 {
				free.WriteMessage(websocket.TextMessage, []byte("x"))
				if _, _, err := free.ReadMessage(); err != nil {
					t.Fatalf("unlimited echo %d: %v", i, err)
				}
			}
		})
	}
}
