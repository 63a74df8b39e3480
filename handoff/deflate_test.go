package handoff_test

import (
	"bytes"
	"compress/flate"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/handoff"
	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// newDeflateNode is newNode with permessage-deflate negotiated and chat's
// broadcasts compressed once for the members that share them.
func newDeflateNode(t *testing.T) *node {
	t.Helper()
	srv, err := server.New(server.Options{Loops: 2, Backend: poller.BackendEpoll, Compression: server.CompressionOn})
	if err != nil {
		t.Fatal(err)
	}
	rooms := room.New(srv.Loops(), room.Options{})
	h := &chat.Handler{Rooms: rooms, RateLimit: server.RateLimit{Rate: -1}, UserRate: -1, Deflater: srv.Deflater()}
	if err := srv.Handle("/ws", h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &node{srv: srv, rooms: rooms}
}

// deflateRaw is a message compressed as permessage-deflate sends it: raw
// DEFLATE with the final empty block's 00 00 ff ff taken off (RFC 7692 7.2.1).
func deflateRaw(t *testing.T, msg string) string {
	t.Helper()
	var b bytes.Buffer
	w, err := flate.NewWriter(&b, flate.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(msg))
	w.Flush()
	return strings.TrimSuffix(b.String(), "\x00\x00\xff\xff")
}

// TestHandoffDeflate hands over connections that negotiated
// permessage-deflate, one of them in the middle of a compressed message sent
// in fragments: after the handoff the new process still inflates what they
// send (the first fragment's RSV1 moved with the connection), and still sends
// room broadcasts compressed to the members that share them. Without the
// negotiated window in the state, the new process would refuse a compressed
// frame with 1002.
func TestHandoffDeflate(t *testing.T) {
	old := newDeflateNode(t)
	addr, err := old.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := websocket.Dialer{EnableCompression: true}
	dialZ := func() *client {
		ws, resp, err := d.Dial("ws://"+addr.String()+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(resp.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
			t.Fatalf("no permessage-deflate in %q", resp.Header.Get("Sec-WebSocket-Extensions"))
		}
		ws.EnableWriteCompression(true)
		c := &client{t: t, ws: ws, done: make(chan struct{})}
		var hello map[string]any
		if err := ws.ReadJSON(&hello); err != nil || hello["type"] != "connected" {
			t.Fatalf("greeting: %v %v", hello, err)
		}
		return c
	}
	a, b := dialZ(), dialZ()
	a.send(map[string]any{"type": "join", "roomId": "z", "userName": "a"})
	b.send(map[string]any{"type": "join", "roomId": "z", "userName": "b"})
	go a.read()
	go b.read()
	rc := rawDial(t, addr.String(), "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover")
	rc.Write(frame(1, `{"type":"join","roomId":"z","userName":"raw"}`))
	waitFor(t, "three members", func() bool { return old.rooms.Count("z") == 3 })
	if n := old.rooms.Deflaters("z"); n != 3 {
		t.Fatalf("%d members share compressed broadcasts before the handoff, want 3", n)
	}

	long := strings.Repeat("compressed across the upgrade ", 10) // over CompressionMinSize
	a.send(map[string]any{"type": "chat", "roomId": "z", "content": "before " + long})
	waitFor(t, "the first message", func() bool { msgs, _ := b.snapshot(); return countType(msgs, "message") == 1 })

	// The raw client's compressed message: its first fragment (RSV1 set) to
	// the old process, the rest to the new one.
	z := deflateRaw(t, `{"type":"chat","roomId":"z","content":"raw `+long+`"}`)
	rc.Write(frameBits(0x40|0x1, z[:len(z)/2])) // RSV1, text, not final
	time.Sleep(50 * time.Millisecond)

	new := newDeflateNode(t)
	if _, sendErr, recvErr := handOver(t, old, new, handoff.ReceiveOptions{}, nil); sendErr != nil || recvErr != nil {
		t.Fatalf("handoff: %v %v", sendErr, recvErr)
	}
	if n := new.srv.Stats().DeflateOpen; n != 3 {
		t.Fatalf("DeflateOpen %d after the handoff, want 3", n)
	}
	if n := new.rooms.Deflaters("z"); n != 3 {
		t.Fatalf("%d members share compressed broadcasts after the handoff, want 3", n)
	}
	outBefore := new.srv.Stats().DeflateMsgsOut
	rc.Write(frameBits(0x80, z[len(z)/2:])) // continuation, final
	a.send(map[string]any{"type": "chat", "roomId": "z", "content": "after " + long})
	waitFor(t, "both messages after", func() bool { msgs, _ := b.snapshot(); return countType(msgs, "message") == 3 })

	msgs, err := b.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		switch m["type"] {
		case "message":
			got = append(got, strings.Fields(m["content"].(string))[0])
		case "user-left", "error":
			t.Fatalf("b read %v", m)
		}
	}
	// The raw message and a's second may arrive in either order; the first is first.
	if got[0] != "before" || !(got[1] == "raw" && got[2] == "after" || got[1] == "after" && got[2] == "raw") {
		t.Fatalf("messages in order %q", got)
	}
	st := new.srv.Stats()
	if st.DeflateMsgsIn < 2 {
		t.Fatalf("the new process inflated %d messages, want the raw one and a's", st.DeflateMsgsIn)
	}
	if st.DeflateMsgsOut == outBefore {
		t.Fatal("the new process sent no broadcast compressed: the rejoined members lost Member.Deflate")
	}
	rc.Close()
	for _, c := range []*client{a, b} {
		c.ws.Close()
		<-c.done
	}
}
