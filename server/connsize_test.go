package server

import (
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/throng-ws/throng/poller"
)

// TestConnSize keeps an upgraded connection's own state in one object of
// the 112-byte size class: the server's Conn with the poller's inside it, at
// offset 0, where connOf finds it (docs/ARCHITECTURE.md, "Where the bytes of
// a joined member go").
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(Conn{}); n > 112 {
		t.Fatalf("server.Conn is %d bytes, over the 112-byte size class", n)
	}
	if off := unsafe.Offsetof(Conn{}.pc); off != 0 {
		t.Fatalf("server.Conn.pc at offset %d, want 0 (connOf)", off)
	}
}

// TestUpgradeAllocatesOneConn: the heap profile of a few upgrades shows one
// 112-byte Conn allocated per socket, by the server's NewConn, and none by
// the poller itself.
func TestUpgradeAllocatesOneConn(t *testing.T) {
	const conns = 20
	rate := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	defer func() { runtime.MemProfileRate = rate }()
	ts := startServer(t, Options{Loops: 1})
	before := connAllocs()
	for range conns {
		c := rawDial(t, ts.Addr, "/echo")
		c.Write(frame(true, 0, 0x2, []byte("up"), true))
		if op, _, p, err := c.readFrame(); err != nil || op != 0x2 || string(p) != "up" {
			t.Fatalf("echo: op %d %q %v", op, p, err)
		}
	}
	after := connAllocs()
	server := after[0].sub(before[0])
	poller := after[1].sub(before[1])
	if server.objects != conns || server.bytes != conns*112 {
		t.Errorf("server.newPollerConn allocated %d objects, %d bytes, for %d upgrades; want %d and %d",
			server.objects, server.bytes, conns, conns, conns*112)
	}
	if poller.objects != 0 {
		t.Errorf("the poller allocated %d Conns of its own (%d bytes), want none", poller.objects, poller.bytes)
	}
}

type allocs struct{ objects, bytes int64 }

func (a allocs) sub(b allocs) allocs { return allocs{a.objects - b.objects, a.bytes - b.bytes} }

// connAllocs is what the heap profile holds, from the program's start to
// the last collection, as allocated by server.newPollerConn ([0]) and by
// poller.(*Poller).newConn itself ([1]): the innermost frame of a record
// outside the runtime.
func connAllocs() [2]allocs {
	// A record shows once the cycle after its allocation has ended.
	runtime.GC()
	runtime.GC()
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, true)
	for {
		recs = make([]runtime.MemProfileRecord, n+50)
		var ok bool
		if n, ok = runtime.MemProfile(recs, true); ok {
			recs = recs[:n]
			break
		}
	}
	var out [2]allocs
	for _, r := range recs {
		frames := runtime.CallersFrames(r.Stack())
		f, more := frames.Next()
		for more && strings.HasPrefix(f.Function, "runtime.") { // the allocator's own
			f, more = frames.Next()
		}
		i := -1
		switch f.Function {
		case "github.com/throng-ws/throng/server.newPollerConn":
			i = 0
		case "github.com/throng-ws/throng/poller.(*Poller).newConn":
			i = 1
		}
		if i >= 0 {
			out[i].objects += r.AllocObjects
			out[i].bytes += r.AllocBytes
		}
	}
	return out
}

// TestConnOf: ConnOf finds an upgraded connection from its socket, and
// gives nil for a socket in its handshake and for another server's.
func TestConnOf(t *testing.T) {
	ts := startServer(t, Options{Loops: 1})
	other := startServer(t, Options{Loops: 1})
	up := rawDial(t, ts.Addr, "/echo")
	up.Write(frame(true, 0, 0x1, []byte("hi"), true))
	if _, _, p, err := up.readFrame(); err != nil || string(p) != "hi" {
		t.Fatalf("echo %q %v", p, err)
	}
	rawConnect(t, ts.Addr) // no request: in its handshake
	rawDial(t, other.Addr, "/echo")
	// sockets lists the sockets of s's one loop.
	sockets := func(s *Server) []*poller.Conn {
		var pcs []*poller.Conn
		done := make(chan struct{})
		l := s.p.Loops()[0]
		l.Post(poller.FuncJob(func() {
			defer close(done)
			l.Range(func(pc *poller.Conn) bool { pcs = append(pcs, pc); return true })
		}))
		<-done
		return pcs
	}
	var ours, handshaking int
	for deadline := time.Now().Add(5 * time.Second); ; {
		ours, handshaking = 0, 0
		pcs := sockets(ts.Server)
		done := make(chan struct{})
		ts.p.Loops()[0].Post(poller.FuncJob(func() {
			defer close(done)
			for _, pc := range pcs {
				if c := ts.ConnOf(pc); c != nil {
					if c.Path() != "/echo" || !c.Open() {
						t.Errorf("ConnOf: %v on %q, open %v", c, c.Path(), c.Open())
					}
					ours++
				} else {
					handshaking++
				}
			}
		}))
		<-done
		if handshaking == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if ours != 1 || handshaking != 1 {
		t.Fatalf("ConnOf found %d connections and %d sockets without one, want 1 and 1", ours, handshaking)
	}
	foreign := sockets(other.Server)
	if len(foreign) != 1 {
		t.Fatalf("the other server has %d sockets, want 1", len(foreign))
	}
	done := make(chan struct{})
	ts.p.Loops()[0].Post(poller.FuncJob(func() {
		defer close(done)
		if c := ts.ConnOf(foreign[0]); c != nil {
			t.Errorf("ConnOf of another server's socket: %v, want nil", c)
		}
	}))
	<-done
}
