package client

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/history"
)

// cutProxy forwards TCP connections to a server, and can cut them all and
// refuse new ones for a while: a network blip for the clients behind it.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	paused bool
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.cut(false)
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.paused {
			p.mu.Unlock()
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, s)
		p.wg.Add(2)
		p.mu.Unlock()
		go func() { defer p.wg.Done(); io.Copy(s, c); s.Close() }()
		go func() { defer p.wg.Done(); io.Copy(c, s); c.Close() }()
	}
}

// cut closes every proxied connection; pause refuses new ones until resume.
func (p *cutProxy) cut(pause bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.paused = pause
}

func (p *cutProxy) resume() {
	p.mu.Lock()
	p.paused = false
	p.mu.Unlock()
}

func (p *cutProxy) URL() string { return "ws://" + p.ln.Addr().String() + "/ws" }

// TestRecoverAfterBlip: a client whose connection drops comes back on its own,
// recovers what the room said meanwhile, once and in order, and says so.
func TestRecoverAfterBlip(t *testing.T) {
	var h *chat.Handler
	ts := startServer(t, serverConfig{chat: func(c *chat.Handler) {
		c.Rate = -1
		c.History = history.New(history.Options{})
		h = c
	}})
	px := startProxy(t, ts.Addr)
	a := dialT(t, ts.URL(), Options{})
	eb := newEvents()
	b := dialT(t, px.URL(), eb.options(Options{BaseDelay: 20 * time.Millisecond, History: 10}))
	ctx := ctxT(t)
	if _, err := a.Join(ctx, "r", "alice"); err != nil {
		t.Fatal(err)
	}
	if err := a.Send(ctx, "r", "before join"); err != nil {
		t.Fatal(err)
	}
	// The message above and the join go on two connections: wait until the
	// server has it.
	waitCond(t, "the first message in history", func() bool { return h.History.Stats().Messages == 1 })
	j, err := b.Join(ctx, "r", "bob")
	if err != nil {
		t.Fatal(err)
	}
	if j.Epoch == "" || j.Offset != 1 || j.Replayed != 1 {
		t.Fatalf("joined %+v; want an epoch, offset 1, 1 replayed (History: 10)", j)
	}
	var got []string
	record := func(m Message) { got = append(got, fmt.Sprintf("%d:%s", m.Offset, m.Content)) }
	record(waitFor[Message](t, eb, "recent message", nil))
	a.Send(ctx, "r", "m2")
	record(waitFor[Message](t, eb, "m2", nil))
	if pos, ok := b.Position("r"); !ok || pos.Offset != 2 || pos.Epoch != j.Epoch {
		t.Fatalf("position %+v %v; want offset 2 of epoch %s", pos, ok, j.Epoch)
	}

	px.cut(true)
	waitFor[stateEvent](t, eb, "reconnecting", func(s stateEvent) bool { return s.s == StateReconnecting })
	waitCond(t, "bob gone from the room", func() bool { return h.Rooms.Count("r") == 1 })
	for i := 3; i <= 7; i++ {
		if err := a.Send(ctx, "r", fmt.Sprint("m", i)); err != nil {
			t.Fatal(err)
		}
	}
	waitCond(t, "7 messages in history", func() bool { return h.History.Stats().Messages == 7 })
	px.resume()
	// The missed messages come before the rejoin's joined.
	rj := eb.wait(t, "rejoined", func(ev any) bool {
		if m, ok := ev.(Message); ok {
			record(m)
		}
		_, ok := ev.(Joined)
		return ok
	}).(Joined)
	if rj.Recovered == nil || !*rj.Recovered || rj.Replayed != 5 || rj.Offset != 7 {
		t.Fatalf("rejoined %+v; want recovered, 5 replayed, offset 7", rj)
	}
	a.Send(ctx, "r", "m8")
	for len(got) < 8 {
		record(waitFor[Message](t, eb, "message", nil))
	}
	if s := strings.Join(got, " "); s != "1:before join 2:m2 3:m3 4:m4 5:m5 6:m6 7:m7 8:m8" {
		t.Fatalf("bob got %s", s)
	}

	p, err := b.History(ctx, "r", 3, 5, rj.Epoch)
	if err != nil || len(p.Messages) != 2 || p.Messages[0].Content != "before join" || p.More {
		t.Fatalf("History: %+v, %v", p, err)
	}
	if _, err := b.History(ctx, "r", 0, 5, "stale"); err == nil || !strings.Contains(err.Error(), CodeUnknownEpoch) {
		t.Fatalf("History with a stale epoch: %v", err)
	}
}

func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
