//go:build linux

package handoff_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/handoff"
	"github.com/throng-ws/throng/history"
	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// historyNode is a node whose chat keeps history, as cmd/throng wires it
// without a cluster.
type historyNode struct {
	node
	chat  *chat.Handler
	store *history.Store
}

func newHistoryNode(t *testing.T) *historyNode {
	t.Helper()
	srv, err := server.New(server.Options{Loops: 2, Backend: poller.BackendEpoll})
	if err != nil {
		t.Fatal(err)
	}
	rooms := room.New(srv.Loops(), room.Options{})
	store := history.New(history.Options{Live: func(id string) bool { return rooms.Count(id) > 0 }})
	if err := store.Start(); err != nil {
		t.Fatal(err)
	}
	h := &chat.Handler{Rooms: rooms, History: store, RateLimit: server.RateLimit{Rate: -1}, UserRate: -1}
	if err := srv.Handle("/ws", h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); store.Close() })
	return &historyNode{node: node{srv: srv, rooms: rooms}, chat: h, store: store}
}

// handOverParts hands old's server and parts to new's server and importers.
func handOverParts(t *testing.T, old *server.Server, parts []handoff.StatePart, new *server.Server, ims []handoff.StateImporter) (error, error) {
	t.Helper()
	a, b, err := handoff.Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	recvErr := make(chan error, 1)
	go func() {
		_, err := handoff.Receive(b, &server.HandoffSink{Server: new, Importers: ims}, handoff.ReceiveOptions{})
		b.Close()
		recvErr <- err
	}()
	src := &server.HandoffSource{Server: old, Parts: func() []handoff.StatePart { return parts }}
	// A small chunk, so the history moves in several.
	_, err = handoff.Send(context.Background(), a, src, handoff.SendOptions{StepTimeout: 5 * time.Second, StateChunk: 64,
		Stop: func() { b.Close() }})
	return err, <-recvErr
}

// messages is what c read of type typ, in order.
func messages(c *client, typ string) []map[string]any {
	msgs, _ := c.snapshot()
	var out []map[string]any
	for _, m := range msgs {
		if m["type"] == typ {
			out = append(out, m)
		}
	}
	return out
}

// checkOffsets checks that ms run from offset first on, one after another,
// in epoch.
func checkOffsets(t *testing.T, who string, ms []map[string]any, first int, epoch string) {
	t.Helper()
	for i, m := range ms {
		if m["epoch"] != epoch || m["offset"] != float64(first+i) {
			t.Fatalf("%s: message %d is %v, want offset %d of epoch %s", who, i, m, first+i, epoch)
		}
	}
}

// TestHandoffHistory hands a node with history over: the room keeps its
// epoch, new messages go on from the next offset, a client that recovers
// with an offset from before the handoff gets exactly what it missed, and
// the history request pages through messages from both sides of it.
func TestHandoffHistory(t *testing.T) {
	old := newHistoryNode(t)
	addr, err := old.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Two rooms, so the 64-byte chunks carry one each.
	c1 := dial(t, addr.String())
	go c1.read()
	c1.send(map[string]any{"type": "join", "roomId": "r", "userName": "one"})
	c1.send(map[string]any{"type": "join", "roomId": "other", "userName": "one"})
	waitFor(t, "joined", func() bool { return len(messages(c1, "joined")) == 2 })
	epoch := messages(c1, "joined")[0]["epoch"].(string)
	say := func(n int) {
		for range n {
			c1.send(map[string]any{"type": "chat", "roomId": "r", "content": "x"})
		}
		c1.send(map[string]any{"type": "chat", "roomId": "other", "content": "y"})
	}
	say(5)
	waitFor(t, "before", func() bool { return len(messages(c1, "message")) == 6 })

	new := newHistoryNode(t)
	sendErr, recvErr := handOverParts(t, old.srv, old.chat.HandoffState(), new.srv, new.chat.HandoffImporters())
	if sendErr != nil || recvErr != nil {
		t.Fatalf("handoff: send %v, receive %v", sendErr, recvErr)
	}
	if st := new.store.Stats(); st.Rooms != 2 || st.Messages != 6 {
		t.Fatalf("the new store has %+v, want 2 rooms and 6 messages", st)
	}
	say(5)
	waitFor(t, "after", func() bool { return len(messages(c1, "message")) == 12 })
	var inR []map[string]any
	for _, m := range messages(c1, "message") {
		if m["roomId"] == "r" {
			inR = append(inR, m)
		}
	}
	checkOffsets(t, "the member", inR, 1, epoch)

	// A client that had offset 3 recovers 4 to 10, then joined says 10.
	c2 := dial(t, addr.String())
	go c2.read()
	c2.send(map[string]any{"type": "join", "roomId": "r", "userName": "two", "since": map[string]any{"offset": 3, "epoch": epoch}})
	waitFor(t, "recovery", func() bool { return len(messages(c2, "joined")) == 1 })
	j := messages(c2, "joined")[0]
	if j["recovered"] != true || j["epoch"] != epoch || j["offset"] != float64(10) {
		t.Fatalf("joined %v, want recovered at offset 10 of epoch %s", j, epoch)
	}
	got := messages(c2, "message")
	if len(got) != 7 {
		t.Fatalf("recovered %d messages, want 7: %v", len(got), got)
	}
	checkOffsets(t, "the recovering client", got, 4, epoch)

	c1.send(map[string]any{"type": "history", "roomId": "r", "limit": 100})
	waitFor(t, "page", func() bool { return len(messages(c1, "history-page")) == 1 })
	p := messages(c1, "history-page")[0]
	page, _ := p["messages"].([]any)
	if p["epoch"] != epoch || p["offset"] != float64(10) || len(page) != 10 {
		t.Fatalf("history page %v, want offsets 1 to 10 of epoch %s", p, epoch)
	}
	var pm []map[string]any
	for _, m := range page {
		pm = append(pm, m.(map[string]any))
	}
	checkOffsets(t, "the history page", pm, 1, epoch)
	c1.ws.Close()
	c2.ws.Close()
	<-c1.done
	<-c2.done
}

// TestHandoffStateFormat fails handoffs whose application state the new
// process cannot read: a part of another format, and a part it does not
// take. Each is refused with a clear error before any connection moves;
// the old process thaws, its store untouched (the same epoch, offsets going
// on, recovery whole), and the new store holds nothing.
func TestHandoffStateFormat(t *testing.T) {
	old := newHistoryNode(t)
	addr, err := old.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c1 := dial(t, addr.String())
	go c1.read()
	c1.send(map[string]any{"type": "join", "roomId": "r", "userName": "one"})
	waitFor(t, "joined", func() bool { return len(messages(c1, "joined")) == 1 })
	epoch := messages(c1, "joined")[0]["epoch"].(string)
	sent := 0
	say := func() {
		c1.send(map[string]any{"type": "chat", "roomId": "r", "content": "x"})
		sent++
		waitFor(t, "message", func() bool { return len(messages(c1, "message")) == sent })
	}
	say()

	for _, tc := range []struct {
		name string
		bump bool // the old process sends the history at the next format
		want string
	}{
		{"another format", true, `state "history" of format 2, this process reads 1`},
		{"a part not taken", false, `sends state "history", which this process does not take`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			new := newHistoryNode(t)
			parts := old.chat.HandoffState()
			ims := new.chat.HandoffImporters()
			if tc.bump {
				parts[0].Format++
			} else {
				ims = nil
			}
			sendErr, recvErr := handOverParts(t, old.srv, parts, new.srv, ims)
			if !errors.Is(sendErr, handoff.ErrRefused) || !errors.Is(recvErr, handoff.ErrStateFormat) ||
				!strings.Contains(sendErr.Error(), tc.want) {
				t.Fatalf("send %v, receive %v; want a refusal saying %s", sendErr, recvErr, tc.want)
			}
			if st := new.store.Stats(); st.Rooms != 0 {
				t.Fatalf("the refused store holds %+v", st)
			}
		})
		if old.srv.HandingOff() {
			t.Fatal("the old server is still frozen")
		}
		say()
	}
	checkOffsets(t, "the member", messages(c1, "message"), 1, epoch)

	c2 := dial(t, addr.String())
	go c2.read()
	c2.send(map[string]any{"type": "join", "roomId": "r", "userName": "two", "since": map[string]any{"offset": 0, "epoch": epoch}})
	waitFor(t, "recovery", func() bool { return len(messages(c2, "joined")) == 1 })
	if j := messages(c2, "joined")[0]; j["recovered"] != true || j["offset"] != float64(sent) {
		t.Fatalf("joined %v, want recovered at offset %d", j, sent)
	}
	checkOffsets(t, "the recovering client", messages(c2, "message"), 1, epoch)
	if n := len(messages(c2, "message")); n != sent {
		t.Fatalf("recovered %d of %d messages", n, sent)
	}
	c1.ws.Close()
	c2.ws.Close()
	<-c1.done
	<-c2.done
}
