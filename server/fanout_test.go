package server

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/room"
)

// roomMember joins every connection to room "r" on open, with no protocol on
// top, so fan-out over real sockets can be measured on its own.
type roomMember struct {
	echoHandler
	rooms *room.Table
}

type memberSink struct {
	c *Conn
	m room.Member
}

func (s *memberSink) Deliver(f *poller.Frame) { s.c.WriteFrame(f) }

func (s *memberSink) DeliverFrames(fs []*poller.Frame) { s.c.WriteFrames(fs) }

func (h *roomMember) OnOpen(c *Conn) {
	s := &memberSink{c: c}
	s.m.Sink = s
	s.m.Deflate = c.SharesDeflated()
	c.SetData(s)
	h.rooms.Join(c.Loop().Index(), "r", &s.m)
}

func (h *roomMember) OnClose(c *Conn, _ ws.StatusCode, _ string) {
	h.rooms.Leave(&c.Data().(*memberSink).m)
}

// fanOutRig is a server whose members all sit in one room, read by raw sockets
// that count the bytes they get.
type fanOutRig struct {
	rooms    *room.Table
	deflater *Deflater // nil unless members negotiated compression
	deflated int       // members that negotiated it
	got      atomic.Int64
	wg       sync.WaitGroup
}

func newFanOutRig(tb testing.TB, members int) *fanOutRig {
	return newFanOutRigDeflate(tb, members, 0)
}

// newFanOutRigDeflate is newFanOutRig with the first deflated members
// negotiating permessage-deflate.
func newFanOutRigDeflate(tb testing.TB, members, deflated int) *fanOutRig {
	tb.Helper()
	return newFanOutRigChunk(tb, members, deflated, 0)
}

// newFanOutRigChunk is newFanOutRigDeflate with the room table writing chunk
// members per turn of a loop (room.Options.Chunk).
func newFanOutRigChunk(tb testing.TB, members, deflated, chunk int) *fanOutRig {
	tb.Helper()
	o := Options{Loops: 2}
	if deflated > 0 {
		o.Compression = CompressionOn
	}
	s, err := newTestServer(o)
	if err != nil {
		tb.Fatal(err)
	}
	rig := &fanOutRig{rooms: room.New(s.Loops(), room.Options{Chunk: chunk}), deflater: s.Deflater(), deflated: deflated}
	s.Handle("/r", &roomMember{rooms: rig.rooms})
	addr, err := s.Listen("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	conns := make([]*rawConn, members)
	for i := range conns {
		if i < deflated {
			conns[i] = rawDialB(tb, addr.String(), "/r", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
		} else {
			conns[i] = rawDialB(tb, addr.String(), "/r")
		}
		conns[i].SetDeadline(time.Time{})
	}
	for rig.rooms.Count("r") != members {
		runtime.Gosched()
	}
	for _, c := range conns {
		rig.wg.Add(1)
		go func() {
			defer rig.wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := c.br.Read(buf)
				rig.got.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	tb.Cleanup(func() {
		s.Close()
		for _, c := range conns {
			c.Close()
		}
		rig.wg.Wait()
	})
	return rig
}

// publish broadcasts one frame of payload and waits until every member has read
// it.
func (rig *fanOutRig) publish(payload []byte, members int) { rig.publishN(payload, members, 1) }

// publishN broadcasts k frames of payload back to back and waits until every
// member has read them all.
func (rig *fanOutRig) publishN(payload []byte, members, k int) {
	want := rig.got.Load()
	for range k {
		want += rig.post(payload, members)
	}
	for rig.got.Load() < want {
		runtime.Gosched()
	}
}

// post broadcasts one frame of payload and returns the bytes the members
// will read.
func (rig *fanOutRig) post(payload []byte, members int) int64 {
	f := poller.NewFrame()
	f.Buffer().B = AppendFrame(f.Buffer().B, ws.OpText, payload)
	want := int64(members * len(f.Bytes()))
	var z *poller.Frame
	if rig.deflater != nil && rig.rooms.Deflaters("r") > 0 {
		z = rig.deflater.Frame(ws.OpText, payload)
		want -= int64(rig.deflated * (len(f.Bytes()) - len(z.Bytes())))
	}
	rig.rooms.BroadcastDeflated("r", f, z, nil, nil)
	f.Release()
	if z != nil {
		z.Release()
	}
	return want
}

// TestFanOutSocketsNoAlloc proves the server's fan-out over real sockets
// allocates nothing per broadcast, and so nothing per recipient: the frame is
// encoded once and the same bytes are written to every member.
func TestFanOutSocketsNoAlloc(t *testing.T) {
	// On netpoll too: a broadcast goes to each socket from the loop when the
	// socket takes it, and these members read everything at once.
	if raceEnabled || testing.CoverMode() != "" {
		t.Skip("allocation counts are not meaningful under -race or -cover")
	}
	const members = 200
	rig := newFanOutRig(t, members)
	payload := []byte(`{"type":"message","content":"hello"}`)
	for range 20 {
		rig.publish(payload, members)
	}
	if n := testing.AllocsPerRun(100, func() { rig.publish(payload, members) }); n != 0 {
		t.Fatalf("%.2f allocations per broadcast to %d sockets, want 0", n, members)
	}
}

// TestFanOutSocketsGroupedNoAlloc is TestFanOutSocketsNoAlloc with the
// loops writing a few members per turn, and broadcasts posted back to back:
// the ones waiting behind another go to each member together, in one write,
// and that too allocates nothing.
func TestFanOutSocketsGroupedNoAlloc(t *testing.T) {
	if raceEnabled || testing.CoverMode() != "" {
		t.Skip("allocation counts are not meaningful under -race or -cover")
	}
	const members = 200
	rig := newFanOutRigChunk(t, members, 0, 8)
	payload := []byte(`{"type":"message","content":"hello"}`)
	for range 20 {
		rig.publishN(payload, members, 4)
	}
	if n := testing.AllocsPerRun(100, func() { rig.publishN(payload, members, 4) }); n != 0 {
		t.Fatalf("%.2f allocations per 4 broadcasts to %d sockets, want 0", n, members)
	}
}

// TestFanOutSocketsDeflatedNoAlloc is TestFanOutSocketsNoAlloc with half the
// members on permessage-deflate: each broadcast is compressed once, and the
// compressed bytes shared by those members as the plain ones are by the
// rest, so a broadcast still allocates nothing.
func TestFanOutSocketsDeflatedNoAlloc(t *testing.T) {
	if raceEnabled || testing.CoverMode() != "" {
		t.Skip("allocation counts are not meaningful under -race or -cover")
	}
	const members = 200
	rig := newFanOutRigDeflate(t, members, members/2)
	if n := rig.rooms.Deflaters("r"); n != members/2 {
		t.Fatalf("%d members take compressed frames, want %d", n, members/2)
	}
	payload := []byte(`{"type":"message","roomId":"general","userId":"u-1","userName":"Alice","content":"hello, hello, hello, is anyone there?","timestamp":"2026-12-02T08:00:00.000Z"}`)
	if z := rig.deflater.Frame(ws.OpText, payload); z == nil {
		t.Fatal("the payload does not compress")
	} else {
		z.Release()
	}
	for range 20 {
		rig.publish(payload, members)
	}
	if n := testing.AllocsPerRun(100, func() { rig.publish(payload, members) }); n != 0 {
		t.Fatalf("%.2f allocations per broadcast to %d sockets, half compressed, want 0", n, members)
	}
}
