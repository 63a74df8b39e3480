//go:build linux

package handoff_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/handoff"
	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// node is one process's server with the chat endpoint, as cmd/throng wires it.
type node struct {
	srv   *server.Server
	rooms *room.Table
}

func newNode(t *testing.T, maxPending int) *node {
	t.Helper()
	srv, err := server.New(server.Options{Loops: 2, Backend: poller.BackendEpoll, MaxPending: maxPending})
	if err != nil {
		t.Fatal(err)
	}
	rooms := room.New(srv.Loops(), room.Options{})
	h := &chat.Handler{Rooms: rooms, RateLimit: server.RateLimit{Rate: -1}, UserRate: -1}
	if err := srv.Handle("/ws", h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &node{srv: srv, rooms: rooms}
}

// handOver runs a handoff from old to new within the test process, over a
// socket pair, as two processes would.
func handOver(t *testing.T, old, new *node, ro handoff.ReceiveOptions, sink handoff.Sink) (handoff.Result, error, error) {
	t.Helper()
	a, b, err := handoff.Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if sink == nil {
		sink = &server.HandoffSink{Server: new.srv}
	}
	recvErr := make(chan error, 1)
	go func() {
		_, err := handoff.Receive(b, sink, ro)
		b.Close()
		recvErr <- err
	}()
	res, err := handoff.Send(context.Background(), a, &server.HandoffSource{Server: old.srv, BatchBytes: 1 << 10},
		handoff.SendOptions{StepTimeout: 5 * time.Second, Stop: func() { b.Close() }})
	return res, err, <-recvErr
}

// client is an independent WebSocket client (gorilla) that records every
// message it reads.
type client struct {
	t    *testing.T
	ws   *websocket.Conn
	id   string
	mu   sync.Mutex
	msgs []map[string]any
	err  error // why reading stopped
	done chan struct{}
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, ws: ws, done: make(chan struct{})}
	var hello map[string]any
	if err := ws.ReadJSON(&hello); err != nil || hello["type"] != "connected" {
		t.Fatalf("greeting: %v %v", hello, err)
	}
	c.id = hello["userId"].(string)
	return c
}

func (c *client) read() {
	defer close(c.done)
	for {
		_, b, err := c.ws.ReadMessage()
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			c.mu.Lock()
			c.err = fmt.Errorf("bad message %q: %w", b, err)
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		c.msgs = append(c.msgs, m)
		c.mu.Unlock()
	}
}

func (c *client) send(v any) {
	if err := c.ws.WriteJSON(v); err != nil {
		c.t.Errorf("%s: write: %v", c.id, err)
	}
}

func (c *client) snapshot() ([]map[string]any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]map[string]any(nil), c.msgs...), c.err
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// countType counts a client's messages of a type.
func countType(msgs []map[string]any, typ string) int {
	n := 0
	for _, m := range msgs {
		if m["type"] == typ {
			n++
		}
	}
	return n
}

// TestHandoffUnderLoad hands 30 chatting connections to a new server while
// every one of them sends: no client sees a close, a presence message or an
// error, and each reads every other's messages exactly once, in order; the
// room's count is the same after; the listener moved, so a new client
// joins the same room on the new server.
func TestHandoffUnderLoad(t *testing.T) {
	old := newNode(t, 0)
	addr, err := old.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const n = 30
	clients := make([]*client, n)
	for i := range clients {
		c := dial(t, addr.String())
		c.send(map[string]any{"type": "join", "roomId": "lobby", "userName": fmt.Sprintf("u%d", i)})
		go c.read()
		// One join at a time, so each hears exactly the later ones.
		waitFor(t, "joined", func() bool { msgs, _ := c.snapshot(); return countType(msgs, "joined") == 1 })
		clients[i] = c
	}
	// Every client has its joined and every later joiner's user-joined.
	for i, c := range clients {
		waitFor(t, "joins", func() bool {
			msgs, _ := c.snapshot()
			return countType(msgs, "joined")+countType(msgs, "user-joined") == n-i
		})
	}
	presenceBefore := make([]int, n)
	for i, c := range clients {
		msgs, _ := c.snapshot()
		presenceBefore[i] = len(msgs)
	}

	var stop sync.WaitGroup
	quit := make(chan struct{})
	sent := make([]int, n)
	for i, c := range clients {
		stop.Add(1)
		go func() {
			defer stop.Done()
			for seq := 0; ; seq++ {
				select {
				case <-quit:
					sent[i] = seq
					return
				default:
				}
				c.send(map[string]any{"type": "chat", "roomId": "lobby", "content": fmt.Sprintf("%d:%d", i, seq)})
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)

	new := newNode(t, 0)
	res, sendErr, recvErr := handOver(t, old, new, handoff.ReceiveOptions{}, nil)
	if sendErr != nil || recvErr != nil {
		t.Fatalf("handoff: send %v, receive %v", sendErr, recvErr)
	}
	if res.Conns != n {
		t.Errorf("handed over %d connections, want %d", res.Conns, n)
	}
	if res.Batches < 2 {
		t.Errorf("%d batches: the 1 KiB batch budget should have split %d connections", res.Batches, n)
	}
	time.Sleep(200 * time.Millisecond)
	close(quit)
	stop.Wait()

	total := 0
	for _, s := range sent {
		total += s
	}
	if total < n*10 {
		t.Fatalf("only %d messages sent: the load did not run", total)
	}
	for i, c := range clients {
		deadline := time.Now().Add(30 * time.Second)
		for {
			msgs, err := c.snapshot()
			got := countType(msgs, "message")
			if got >= total {
				break
			}
			if err != nil || time.Now().After(deadline) {
				t.Fatalf("client %d read %d of %d messages (reading stopped: %v)", i, got, total, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for i, c := range clients {
		msgs, err := c.snapshot()
		if err != nil {
			t.Fatalf("client %d stopped reading: %v", i, err)
		}
		next := make([]int, n)
		for _, m := range msgs[presenceBefore[i]:] {
			if m["type"] != "message" {
				t.Fatalf("client %d read %v after the joins", i, m)
			}
			var from, seq int
			fmt.Sscanf(m["content"].(string), "%d:%d", &from, &seq)
			if seq != next[from] {
				t.Fatalf("client %d: from %d got seq %d, want %d (lost, repeated or reordered)", i, from, seq, next[from])
			}
			next[from]++
		}
		for from := range next {
			if next[from] != sent[from] {
				t.Fatalf("client %d read %d of %d's %d messages", i, next[from], from, sent[from])
			}
		}
	}
	if got := new.rooms.Count("lobby"); got != n {
		t.Errorf("new server: lobby has %d members, want %d", got, n)
	}
	if old.srv.Conns() != 0 {
		t.Errorf("old server still holds %d sockets", old.srv.Conns())
	}

	// The listener moved: a new client lands on the new server.
	late := dial(t, addr.String())
	late.send(map[string]any{"type": "join", "roomId": "lobby", "userName": "late"})
	var joined map[string]any
	if err := late.ws.ReadJSON(&joined); err != nil || joined["type"] != "joined" || joined["userCount"] != float64(n+1) {
		t.Fatalf("late join: %v %v", joined, err)
	}
	late.ws.Close()
	for _, c := range clients {
		c.ws.Close()
		<-c.done
	}
}

// rawConn is a WebSocket client on a bare socket, for what a library will not
// do: send half a frame, or not answer a close.
type rawConn struct {
	net.Conn
}

// rawDial upgrades a bare socket; each of extra is one more header line.
func rawDial(t *testing.T, addr string, extra ...string) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(nc, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
	for _, h := range extra {
		fmt.Fprintf(nc, "%s\r\n", h)
	}
	fmt.Fprintf(nc, "\r\n")
	buf := make([]byte, 4096)
	got := ""
	for !strings.Contains(got, "\r\n\r\n") {
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := nc.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got += string(buf[:n])
	}
	if !strings.HasPrefix(got, "HTTP/1.1 101") {
		t.Fatalf("upgrade: %q", got)
	}
	return &rawConn{nc}
}

// frame is a masked client frame.
func frame(op byte, payload string) []byte {
	return frameBits(0x80|op, payload)
}

// frameBits is a masked client frame with the first byte given: FIN, RSV and
// opcode.
func frameBits(first byte, payload string) []byte {
	mask := [4]byte{1, 2, 3, 4}
	b := []byte{first}
	if len(payload) < 126 {
		b = append(b, 0x80|byte(len(payload)))
	} else {
		b = append(b, 0x80|126, byte(len(payload)>>8), byte(len(payload)))
	}
	b = append(b, mask[:]...)
	for i := 0; i < len(payload); i++ {
		b = append(b, payload[i]^mask[i%4])
	}
	return b
}

// TestHandoffPartialFrames cuts a client's frame in two across the handoff:
// its first half is read by the old server and moves as state, the second
// waits in the kernel for the new one. A fragmented message is cut between
// its fragments the same way. The room reads both messages whole.
func TestHandoffPartialFrames(t *testing.T) {
	old := newNode(t, 0)
	addr, err := old.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	watcher := dial(t, addr.String())
	watcher.send(map[string]any{"type": "join", "roomId": "r", "userName": "w"})
	go watcher.read()
	// The watcher's join first: on another loop the raw client's could land
	// before it, and the watcher would hear no user-joined.
	waitFor(t, "the watcher's join", func() bool { return old.rooms.Count("r") == 1 })
	rc := rawDial(t, addr.String())
	rc.Write(frame(1, `{"type":"join","roomId":"r","userName":"raw"}`))
	waitFor(t, "raw join", func() bool { msgs, _ := watcher.snapshot(); return countType(msgs, "user-joined") == 1 })

	whole := frame(1, `{"type":"chat","roomId":"r","content":"split across the upgrade"}`)
	rc.Write(whole[:9])
	// A fragmented message: first fragment now, the rest after.
	msg := `{"type":"chat","roomId":"r","content":"in fragments"}`
	first := frame(1, msg[:20])
	first[0] &^= 0x80 // not final
	time.Sleep(50 * time.Millisecond)
	new := newNode(t, 0)
	if _, sendErr, recvErr := handOver(t, old, new, handoff.ReceiveOptions{}, nil); sendErr != nil || recvErr != nil {
		t.Fatalf("handoff: %v %v", sendErr, recvErr)
	}
	rc.Write(whole[9:])
	rc.Write(first)
	time.Sleep(50 * time.Millisecond)
	new2 := newNode(t, 0)
	// Hand over again, with the fragmented message half assembled.
	if _, sendErr, recvErr := handOver(t, new, new2, handoff.ReceiveOptions{}, nil); sendErr != nil || recvErr != nil {
		t.Fatalf("second handoff: %v %v", sendErr, recvErr)
	}
	last := frame(0, msg[20:]) // continuation, final
	rc.Write(last)
	waitFor(t, "both messages", func() bool { msgs, _ := watcher.snapshot(); return countType(msgs, "message") == 2 })
	msgs, err := watcher.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var contents []string
	for _, m := range msgs {
		if m["type"] == "message" {
			contents = append(contents, m["content"].(string))
		}
	}
	if contents[0] != "split across the upgrade" || contents[1] != "in fragments" {
		t.Fatalf("messages %q", contents)
	}
	rc.Close()
	watcher.ws.Close()
	<-watcher.done
}

// TestHandoffMidClose hands over a connection the server has sent its close
// frame to and whose client has not answered: the new process finishes the
// close handshake, and the other members hear the user-left only once.
func TestHandoffMidClose(t *testing.T) {
	old := newNode(t, 0)
	addr, err := old.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rc := rawDial(t, addr.String())
	// A binary frame on /ws: the server closes with 1003 and waits for our close.
	rc.Write(frame(2, "x"))
	buf := make([]byte, 64)
	rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	// The greeting, then the close frame.
	var got []byte
	for !strings.Contains(string(got), "\x88") {
		n, err := rc.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	new := newNode(t, 0)
	if _, sendErr, recvErr := handOver(t, old, new, handoff.ReceiveOptions{}, nil); sendErr != nil || recvErr != nil {
		t.Fatalf("handoff: %v %v", sendErr, recvErr)
	}
	if new.srv.Conns() != 1 {
		t.Fatalf("new server holds %d sockets, want the closing one", new.srv.Conns())
	}
	// Our answer completes the handshake on the new server, which then ends
	// the connection: we read the end of the stream.
	rc.Write(frame(8, "\x03\xeb"))
	rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, err := rc.Read(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the new server never ended the closing connection")
			}
			break
		}
	}
	waitFor(t, "the socket closed", func() bool { return new.srv.Conns() == 0 })
	rc.Close()
}

// TestHandoffSlowConsumer hands over a client that has not read for a while,
// with megabytes of output queued in the old server (its first message
// usually cut where the socket stopped taking it): the client then reads
// every message whole and in order, the new server sending what the old one
// had not.
func TestHandoffSlowConsumer(t *testing.T) {
	old := newNode(t, 32<<20)
	addr, err := old.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A small receive buffer, so the server's output backs up.
	d := websocket.Dialer{NetDial: func(network, a string) (net.Conn, error) {
		nc, err := net.Dial(network, a)
		if err == nil {
			nc.(*net.TCPConn).SetReadBuffer(256 << 10)
		}
		return nc, err
	}}
	slow, _, err := d.Dial("ws://"+addr.String()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	slow.WriteJSON(map[string]any{"type": "join", "roomId": "r", "userName": "slow"})
	talker := dial(t, addr.String())
	go talker.read()
	talker.send(map[string]any{"type": "join", "roomId": "r", "userName": "talker"})
	waitFor(t, "talker joined", func() bool { msgs, _ := talker.snapshot(); return countType(msgs, "joined") == 1 })
	const count = 12000
	pad := strings.Repeat("p", 400)
	for i := range count {
		talker.send(map[string]any{"type": "chat", "roomId": "r", "content": fmt.Sprintf("%d %s", i, pad)})
	}
	waitFor(t, "talker's echoes", func() bool { msgs, _ := talker.snapshot(); return countType(msgs, "message") == count })
	queued := 0
	for _, l := range old.srv.Loops() {
		ch := make(chan int)
		l.Post(poller.FuncJob(func() {
			n := 0
			l.Range(func(c *poller.Conn) bool { n += c.Pending(); return true })
			ch <- n
		}))
		queued += <-ch
	}
	if queued == 0 {
		t.Fatal("nothing queued for the slow client: the test does not test")
	}
	new := newNode(t, 32<<20)
	if _, sendErr, recvErr := handOver(t, old, new, handoff.ReceiveOptions{}, nil); sendErr != nil || recvErr != nil {
		t.Fatalf("handoff: %v %v", sendErr, recvErr)
	}
	seen := 0
	slow.SetReadDeadline(time.Now().Add(10 * time.Second))
	for seen < count {
		var m map[string]any
		if err := slow.ReadJSON(&m); err != nil {
			t.Fatalf("slow client after %d messages: %v", seen, err)
		}
		if m["type"] != "message" {
			continue
		}
		var i int
		fmt.Sscanf(m["content"].(string), "%d", &i)
		if i != seen {
			t.Fatalf("slow client read message %d, want %d", i, seen)
		}
		seen++
	}
	t.Logf("%d bytes were queued at the handoff", queued)
	slow.Close()
	talker.ws.Close()
	<-talker.done
}

// failingSink refuses the first batch, as a new process whose checks fail
// would.
type failingSink struct {
	*server.HandoffSink
	batches int
}

func (f *failingSink) Import(data []byte, fds []int) (int, error) {
	if f.batches++; f.batches == 1 {
		for _, fd := range fds {
			os.NewFile(uintptr(fd), "").Close()
		}
		return 0, errors.New("test: refused")
	}
	return f.HandoffSink.Import(data, fds)
}

// TestHandoffRollback fails handoffs at each step: the new side refusing a
// batch, another protocol version, the new side gone before it is ready.
// Every time the old server keeps every connection, and its clients go on
// chatting without a loss or a close.
func TestHandoffRollback(t *testing.T) {
	old := newNode(t, 0)
	addr, err := old.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = dial(t, addr.String())
		clients[i].send(map[string]any{"type": "join", "roomId": "r", "userName": "u"})
		go clients[i].read()
	}
	waitFor(t, "joins", func() bool { msgs, _ := clients[n-1].snapshot(); return countType(msgs, "joined") == 1 })
	sent := 0
	say := func() {
		clients[0].send(map[string]any{"type": "chat", "roomId": "r", "content": fmt.Sprint(sent)})
		sent++
	}
	say()

	t.Run("refused batch", func(t *testing.T) {
		new := newNode(t, 0)
		sink := &failingSink{HandoffSink: &server.HandoffSink{Server: new.srv}}
		_, sendErr, recvErr := handOver(t, old, new, handoff.ReceiveOptions{}, sink)
		if !errors.Is(sendErr, handoff.ErrRefused) || recvErr == nil {
			t.Fatalf("send %v, receive %v; want a refusal", sendErr, recvErr)
		}
	})
	say()
	t.Run("version", func(t *testing.T) {
		new := newNode(t, 0)
		_, sendErr, recvErr := handOver(t, old, new, handoff.ReceiveOptions{Version: handoff.Version + 1}, nil)
		if !errors.Is(sendErr, handoff.ErrRefused) || !errors.Is(recvErr, handoff.ErrVersion) {
			t.Fatalf("send %v, receive %v; want a version refusal", sendErr, recvErr)
		}
	})
	say()
	t.Run("new side exits at once", func(t *testing.T) {
		a, b, err := handoff.Pair()
		if err != nil {
			t.Fatal(err)
		}
		b.Close()
		_, err = handoff.Send(context.Background(), a, &server.HandoffSource{Server: old.srv}, handoff.SendOptions{})
		a.Close()
		if err == nil {
			t.Fatal("a handoff to a dead process succeeded")
		}
	})
	say()
	if old.srv.HandingOff() {
		t.Fatal("the old server is still frozen")
	}
	for _, c := range clients {
		waitFor(t, "every message", func() bool { msgs, _ := c.snapshot(); return countType(msgs, "message") == sent })
		msgs, err := c.snapshot()
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for _, m := range msgs {
			if m["type"] == "message" {
				if m["content"] != fmt.Sprint(k) {
					t.Fatalf("message %v, want %d", m["content"], k)
				}
				k++
			}
			if m["type"] == "user-left" || m["type"] == "error" {
				t.Fatalf("client read %v", m)
			}
		}
	}
	// The old server still accepts.
	late := dial(t, addr.String())
	late.ws.Close()
	for _, c := range clients {
		c.ws.Close()
		<-c.done
	}
}
