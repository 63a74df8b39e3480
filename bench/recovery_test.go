package bench

import (
	"bytes"
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/history"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// forgetful hides a join's since from the chat: its members rejoin without
// recovering.
type forgetful struct{ *chat.Handler }

func (f forgetful) OnMessage(c *server.Conn, op ws.OpCode, data []byte) {
	f.Handler.OnMessage(c, op, bytes.Replace(data, []byte(`"since"`), []byte(`"sinc_"`), 1))
}

// TestRecoveryScenario runs a short recovery scenario against an in-process
// server with history: it must count nothing lost. Against one that ignores
// since it must find what the members missed, or its counts could not fail.
func TestRecoveryScenario(t *testing.T) {
	for _, c := range []struct {
		name    string
		recover bool
	}{{"recovering", true}, {"since ignored", false}} {
		t.Run(c.name, func(t *testing.T) {
			s, err := server.New(server.Options{Loops: 2, TickInterval: 50 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			rooms := room.New(s.Loops(), room.Options{})
			h := &chat.Handler{Rooms: rooms, RateLimit: server.RateLimit{Rate: -1}, History: history.New(history.Options{Size: 10000})}
			if c.recover {
				s.Handle("/ws", h)
			} else {
				s.Handle("/ws", forgetful{h})
			}
			addr, err := s.Listen("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			mux := s.HTTPHandler()
			api := &chat.API{Key: "k", Chat: h, Rooms: rooms}
			if err := api.Register(mux); err != nil {
				t.Fatal(err)
			}
			hs := httptest.NewServer(mux)
			t.Cleanup(hs.Close)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := RunRecovery(ctx, RecoveryConfig{
				URLs: []string{"ws://" + addr.String() + "/ws"}, APIs: []string{hs.URL}, APIKey: "k",
				Rooms: 2, RoomSize: 4, RoomRate: 20, Duration: 2 * time.Second, DropEvery: 300 * time.Millisecond, Settle: time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Log(res)
			if c.recover && (!res.OK() || res.Drops == 0 || res.Recovered == 0) {
				t.Fatalf("recovery scenario: %v", res)
			}
			if !c.recover && (res.OK() || res.Missing == 0) {
				t.Fatalf("members that never recover lost nothing: %v", res)
			}
		})
	}
}
