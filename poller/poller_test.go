package poller

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// testBackend is the backend the suite is running on; TestMain runs every test
// once per backend.
var testBackend Backend

func TestMain(m *testing.M) {
	for _, b := range Backends() {
		testBackend = b
		if code := m.Run(); code != 0 {
			fmt.Fprintf(os.Stderr, "poller: tests failed on the %s backend\n", b)
			os.Exit(code)
		}
	}
	// netpoll's pollers are process-wide and never stop.
	if err := goleak.Find(goleak.IgnoreAnyFunction("github.com/cloudwego/netpoll.(*defaultPoll).Wait")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// lineEcho echoes complete lines and keeps a partial line for the next read, the
// way a frame parser keeps a partial frame.
type lineEcho struct {
	mu       sync.Mutex
	opened   int
	closed   []error
	writable int
	ticks    atomic.Int64
	onData   func(c *Conn, data []byte) int // overrides the echo when set
	onOpen   func(c *Conn)                  // runs first in OnOpen when set
}

func (h *lineEcho) OnOpen(c *Conn) {
	if h.onOpen != nil {
		h.onOpen(c)
	}
	h.mu.Lock()
	h.opened++
	h.mu.Unlock()
}

func (h *lineEcho) OnData(c *Conn, data []byte) int {
	if h.onData != nil {
		return h.onData(c, data)
	}
	i := bytes.LastIndexByte(data, '\n')
	if i < 0 {
		return 0
	}
	c.Write(data[:i+1])
	return i + 1
}

func (h *lineEcho) OnWritable(c *Conn) {
	h.mu.Lock()
	h.writable++
	h.mu.Unlock()
}

func (h *lineEcho) OnClose(c *Conn, cause error) {
	h.mu.Lock()
	h.closed = append(h.closed, cause)
	h.mu.Unlock()
}

func (h *lineEcho) OnTick(l *Loop, now time.Time) { h.ticks.Add(1) }

func startPoller(t *testing.T, h Handler, o Options) (*Poller, string) {
	t.Helper()
	o.Backend = testBackend
	p, err := New(h, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	addr, err := p.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return p, addr.String()
}

func connect(t *testing.T, addr string) net.Conn {
	t.Helper()
	return dialRcvBuf(t, addr, 0)
}

// dialRcvBuf connects with the receive buffer set before the handshake, as the
// window it advertises must be small from the start for the peer's writes to
// back up.
func dialRcvBuf(t *testing.T, addr string, rcvbuf int) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		if rcvbuf > 0 {
			rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf) })
		}
		return nil
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// onLoops runs fn on every loop and waits, so a test can read loop-owned state.
func onLoops(p *Poller, fn func(l *Loop)) {
	var wg sync.WaitGroup
	for _, l := range p.Loops() {
		wg.Add(1)
		l.Post(FuncJob(func() { defer wg.Done(); fn(l) }))
	}
	wg.Wait()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestEchoAcrossPartialReads(t *testing.T) {
	h := &lineEcho{}
	p, addr := startPoller(t, h, Options{Loops: 2})
	c := connect(t, addr)
	// A line split over three writes must come back whole, once.
	for _, part := range []string{"hel", "lo wor", "ld\nsecond\n"} {
		c.Write([]byte(part))
		time.Sleep(5 * time.Millisecond) // let each piece arrive as its own read
	}
	got := make([]byte, len("hello world\nsecond\n"))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != "hello world\nsecond\n" {
		t.Fatalf("echo %q", got)
	}
	// With the line complete, the connection holds no input buffer again.
	var buffered int
	onLoops(p, func(l *Loop) {
		l.Range(func(c *Conn) bool { buffered += c.Buffered() + c.Pending(); return true })
	})
	if buffered != 0 {
		t.Fatalf("idle connection holds %d buffered bytes", buffered)
	}
}

func TestPartialInputDoesNotBlockOthers(t *testing.T) {
	h := &lineEcho{}
	_, addr := startPoller(t, h, Options{Loops: 1})
	stuck := connect(t, addr)
	stuck.Write([]byte("no newline yet"))
	other := connect(t, addr)
	other.Write([]byte("ping\n"))
	got := make([]byte, 5)
	if _, err := io.ReadFull(other, got); err != nil || string(got) != "ping\n" {
		t.Fatalf("other connection: %q %v", got, err)
	}
}

// TestBackpressureQueuesAndFlushes fills a client's receive window so writes
// queue, then reads everything and checks order, OnWritable and the empty queue.
func TestBackpressureQueuesAndFlushes(t *testing.T) {
	const total = 8 << 20
	var sent atomic.Int64
	var pendingSeen atomic.Int64
	wrote := make(chan struct{})
	h := &lineEcho{}
	h.onData = func(c *Conn, data []byte) int {
		defer close(wrote)
		// Any input asks for the whole stream: 8 MiB in 64 KiB writes.
		chunk := make([]byte, 64<<10)
		for off := 0; off < total; off += len(chunk) {
			for i := range chunk {
				chunk[i] = byte((off + i) % 251)
			}
			if err := c.Write(chunk); err != nil {
				t.Errorf("write: %v", err)
				return len(data)
			}
			sent.Add(int64(len(chunk)))
			pendingSeen.Store(max(pendingSeen.Load(), int64(c.Pending())))
		}
		return len(data)
	}
	p, addr := startPoller(t, h, Options{Loops: 1})
	c := dialRcvBuf(t, addr, 4<<10)
	c.Write([]byte("go"))
	<-wrote // read only once everything is written or queued
	got, err := io.ReadAll(io.LimitReader(c, total))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != total {
		t.Fatalf("read %d bytes, want %d", len(got), total)
	}
	for i, b := range got {
		if b != byte(i%251) {
			t.Fatalf("byte %d is %d, want %d: queue reordered data", i, b, i%251)
		}
	}
	if pendingSeen.Load() == 0 {
		t.Fatal("the socket took 8 MiB at once; the test did not exercise the queue")
	}
	var pending int
	onLoops(p, func(l *Loop) { l.Range(func(c *Conn) bool { pending += c.Pending(); return true }) })
	if pending != 0 {
		t.Fatalf("%d bytes still queued after the peer read everything", pending)
	}
}

// TestPendingLimitRefusesWrites writes from a job, as a broadcast does: such
// writes are refused past MaxPending. (Replies written in OnData are not: see
// TestRepliesPauseReadingInsteadOfRefusal.)
func TestPendingLimitRefusesWrites(t *testing.T) {
	errs := make(chan error, 1)
	h := &lineEcho{}
	h.onData = func(c *Conn, data []byte) int {
		c.Loop().Post(FuncJob(func() {
			chunk := make([]byte, 64<<10)
			for range 1000 {
				if err := c.Write(chunk); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}))
		return len(data)
	}
	_, addr := startPoller(t, h, Options{Loops: 1, MaxPending: 256 << 10})
	c := dialRcvBuf(t, addr, 4<<10)
	c.Write([]byte("go")) // and do not read yet
	if err := <-errs; !errors.Is(err, ErrPendingLimit) {
		t.Fatalf("write past MaxPending: %v, want ErrPendingLimit", err)
	}
	h.mu.Lock()
	early := h.writable
	h.mu.Unlock()
	if early != 0 {
		t.Fatal("OnWritable ran before the queue drained")
	}
	// Once the peer reads everything, the handler hears the queue drained.
	go io.Copy(io.Discard, c)
	eventually(t, "OnWritable", func() bool { h.mu.Lock(); defer h.mu.Unlock(); return h.writable >= 1 })
}

func TestSharedFrameQueuedByReference(t *testing.T) {
	f := NewFrame()
	f.Buffer().B = append(f.Buffer().B, bytes.Repeat([]byte("frame!"), 1_500_000)...)
	want := append([]byte(nil), f.Bytes()...)
	done := make(chan struct{})
	h := &lineEcho{}
	h.onData = func(c *Conn, data []byte) int {
		if err := c.WriteFrame(f); err != nil {
			t.Error(err)
		}
		if c.Pending() == 0 {
			t.Error("9 MB went out at once; the queue was not exercised")
		}
		f.Release() // the queue holds its own reference
		close(done)
		return len(data)
	}
	_, addr := startPoller(t, h, Options{Loops: 1})
	c := dialRcvBuf(t, addr, 4<<10)
	c.Write([]byte("go"))
	<-done
	got, err := io.ReadAll(io.LimitReader(c, int64(len(want))))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("frame arrived damaged (%d of %d bytes): %v", len(got), len(want), err)
	}
}

func TestCloseWriteSendsEOFAfterQueue(t *testing.T) {
	h := &lineEcho{}
	h.onData = func(c *Conn, data []byte) int {
		c.Write([]byte("bye\n"))
		c.CloseWrite()
		return len(data)
	}
	_, addr := startPoller(t, h, Options{Loops: 1})
	c := connect(t, addr)
	c.Write([]byte("x"))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye\n" {
		t.Fatalf("read %q, %v; want bye then EOF", got, err)
	}
}

func TestPeerCloseReported(t *testing.T) {
	h := &lineEcho{}
	p, addr := startPoller(t, h, Options{Loops: 2})
	c := connect(t, addr)
	c.Write([]byte("hi\n"))
	io.ReadFull(c, make([]byte, 3))
	c.Close()
	eventually(t, "OnClose", func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.closed) == 1 })
	if !errors.Is(h.closed[0], ErrPeerClosed) {
		t.Fatalf("cause %v, want ErrPeerClosed", h.closed[0])
	}
	if n := p.Stats().Conns[0] + p.Stats().Conns[1]; n != 0 {
		t.Fatalf("%d connections left", n)
	}
}

func TestDialAndPost(t *testing.T) {
	srv := &lineEcho{}
	_, addr := startPoller(t, srv, Options{Loops: 1})

	got := make(chan string, 1)
	cli := &lineEcho{}
	cli.onData = func(c *Conn, data []byte) int {
		got <- string(data)
		return len(data)
	}
	p, err := New(cli, Options{Loops: 2, Backend: testBackend})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ap := netip.MustParseAddrPort(addr)
	if err := p.Dial(ap, netip.MustParseAddr("127.0.0.3"), "ctx"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "dial", func() bool { cli.mu.Lock(); defer cli.mu.Unlock(); return cli.opened == 1 })
	// Write from another goroutine by posting to the connection's loop.
	onLoops(p, func(l *Loop) {
		l.Range(func(c *Conn) bool {
			if c.Context() != "ctx" {
				t.Errorf("context %v", c.Context())
			}
			c.Write([]byte("over\n"))
			return true
		})
	})
	if s := <-got; s != "over\n" {
		t.Fatalf("echo %q", s)
	}
	// A refused dial is reported to OnClose.
	if err := p.Dial(netip.MustParseAddrPort("127.0.0.1:1"), netip.Addr{}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "refused dial", func() bool { cli.mu.Lock(); defer cli.mu.Unlock(); return len(cli.closed) == 1 })
}

func TestStopAcceptingKeepsConnections(t *testing.T) {
	h := &lineEcho{}
	p, addr := startPoller(t, h, Options{Loops: 2})
	c := connect(t, addr)
	// The kernel completes the TCP handshake before the loop accepts; a socket
	// still in the accept queue is reset when the listener closes.
	eventually(t, "accept", func() bool { h.mu.Lock(); defer h.mu.Unlock(); return h.opened == 1 })
	p.StopAccepting()
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("dial succeeded after StopAccepting")
	}
	c.Write([]byte("still\n"))
	got := make([]byte, 6)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "still\n" {
		t.Fatalf("open connection after StopAccepting: %q %v", got, err)
	}
}

func TestTicksAndCloseReportsOpenConns(t *testing.T) {
	h := &lineEcho{}
	p, addr := startPoller(t, h, Options{Loops: 2, TickInterval: 5 * time.Millisecond})
	connect(t, addr)
	eventually(t, "ticks", func() bool { return h.ticks.Load() >= 4 })
	eventually(t, "accept", func() bool { h.mu.Lock(); defer h.mu.Unlock(); return h.opened == 1 })
	p.Close()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.closed) != 1 || !errors.Is(h.closed[0], ErrClosed) {
		t.Fatalf("close causes %v, want one ErrClosed", h.closed)
	}
}

func TestFrameRefcount(t *testing.T) {
	f := NewFrame()
	f.Retain()
	f.Release()
	f.Release()
	defer func() {
		if recover() == nil {
			t.Fatal("releasing a frame too many times did not panic")
		}
	}()
	f.refs.Store(0)
	f.Release()
}

// TestAcceptSpreadsOverLoops checks connections end up shared by the loops,
// whichever loop the kernel wakes to accept them.
func TestAcceptSpreadsOverLoops(t *testing.T) {
	h := &lineEcho{}
	p, addr := startPoller(t, h, Options{Loops: 2})
	const n = 40
	for range n {
		connect(t, addr)
	}
	eventually(t, "accepts", func() bool { h.mu.Lock(); defer h.mu.Unlock(); return h.opened == n })
	st := p.Stats()
	for i, c := range st.Conns {
		if c < n/2-2 {
			t.Fatalf("loop %d holds %d of %d connections: %v", i, c, n, st.Conns)
		}
	}
}

// numberedFrames makes n frames of size bytes, each starting with its index.
func numberedFrames(first, n, size int) []*Frame {
	fs := make([]*Frame, n)
	for i := range fs {
		f := NewFrame()
		b := bytes.Repeat([]byte{byte('a' + (first+i)%26)}, size)
		copy(b, fmt.Sprintf("%08d", first+i))
		f.Buffer().B = append(f.Buffer().B, b...)
		fs[i] = f
	}
	return fs
}

// readNumbered reads whole frames of size from c until EOF or the deadline and
// checks they are frames first, first+1, … intact; it returns how many.
func readNumbered(t *testing.T, c net.Conn, size int) int {
	t.Helper()
	got, _ := io.ReadAll(c)
	if len(got)%size != 0 {
		t.Fatalf("%d bytes is not a whole number of %d-byte frames: a frame was cut", len(got), size)
	}
	for i := 0; i < len(got)/size; i++ {
		want := numberedFrames(i, 1, size)[0]
		if !bytes.Equal(got[i*size:(i+1)*size], want.Bytes()) {
			t.Fatalf("frame %d arrived out of order or damaged: starts %q", i, got[i*size:i*size+8])
		}
		want.Release()
	}
	return len(got) / size
}

// TestFramesFromJobInOrder writes shared frames from a job (not from the
// connection's own input) to a peer that reads slowly, so that the first go
// straight to the socket and the rest through the queue; they must arrive
// whole and in order.
func TestFramesFromJobInOrder(t *testing.T) {
	const size, count = 40 << 10, 240 // 9.6 MB: far past the socket buffers
	pc, c := slowReaderConn(t, Options{Loops: 1})
	pc.Loop().Post(FuncJob(func() {
		for i, f := range numberedFrames(0, count, size) {
			if err := pc.WriteFrame(f); err != nil {
				t.Errorf("frame %d: %v", i, err)
			}
			f.Release() // the queue holds its own reference
		}
		pc.CloseWrite()
	}))
	if n := readNumbered(t, c, size); n != count {
		t.Fatalf("read %d frames, want %d", n, count)
	}
}

// slowReaderConn is a poller with opts holding one connection, and that
// connection's client end with a 4 KiB receive buffer, so that writes soon
// outrun what the kernel takes.
func slowReaderConn(t *testing.T, opts Options) (*Conn, net.Conn) {
	t.Helper()
	conns := make(chan *Conn, 1)
	h := &lineEcho{onData: func(c *Conn, data []byte) int { conns <- c; return len(data) }}
	_, addr := startPoller(t, h, opts)
	c := dialRcvBuf(t, addr, 4<<10)
	c.Write([]byte("go"))
	return <-conns, c
}

// TestPendingLimitNeverCutsAFrame writes frames larger than MaxPending from a
// job until one is refused. The one the socket took only part of must be
// queued past the limit rather than cut, so the peer reads whole frames: every
// one accepted, and none refused.
func TestPendingLimitNeverCutsAFrame(t *testing.T) {
	const size = 40 << 10
	pc, c := slowReaderConn(t, Options{Loops: 1, MaxPending: 8 << 10})
	accepted := make(chan int, 1)
	pc.Loop().Post(FuncJob(func() {
		n := 0
		for _, f := range numberedFrames(0, 1000, size) {
			err := pc.WriteFrame(f)
			f.Release()
			if err != nil {
				if !errors.Is(err, ErrPendingLimit) {
					t.Errorf("WriteFrame: %v, want ErrPendingLimit", err)
				}
				break
			}
			n++
		}
		pc.CloseWrite()
		accepted <- n
	}))
	want := <-accepted
	if want == 1000 {
		t.Fatal("MaxPending never refused a frame")
	}
	if n := readNumbered(t, c, size); n != want {
		t.Fatalf("read %d frames, want the %d accepted", n, want)
	}
}

// TestConnSize keeps a connection at 56 bytes: a server holds hundreds of
// thousands of them, and server.Conn embeds one in its 112-byte size class
// (docs/ARCHITECTURE.md, "Where the bytes of a joined member go").
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(Conn{}); n > 56 {
		t.Fatalf("Conn is %d bytes, want at most 56", n)
	}
}

// taggedConn is a handler's per-connection struct with the Conn embedded
// first, as Options.NewConn allows.
type taggedConn struct {
	Conn
	tag uint64
}

const connTag = 0x7468726f6e67

// allocHandler checks that every Conn it is handed came from its NewConn,
// and finds its taggedConn from it as server.Conn does.
type allocHandler struct {
	*lineEcho
	t      *testing.T
	madeMu sync.Mutex
	made   map[*Conn]bool
}

func (h *allocHandler) newConn() *Conn {
	tc := &taggedConn{tag: connTag}
	h.madeMu.Lock()
	h.made[&tc.Conn] = true
	h.madeMu.Unlock()
	return &tc.Conn
}

func (h *allocHandler) check(c *Conn, where string) {
	h.madeMu.Lock()
	ok := h.made[c]
	h.madeMu.Unlock()
	if !ok {
		h.t.Errorf("%s: a Conn NewConn did not make", where)
		return
	}
	if tag := (*taggedConn)(unsafe.Pointer(c)).tag; tag != connTag {
		h.t.Errorf("%s: the Conn's struct has tag %#x, want %#x", where, tag, connTag)
	}
}

func (h *allocHandler) OnOpen(c *Conn) { h.check(c, "OnOpen"); h.lineEcho.OnOpen(c) }

func (h *allocHandler) OnData(c *Conn, data []byte) int {
	h.check(c, "OnData")
	return h.lineEcho.OnData(c, data)
}

func (h *allocHandler) OnClose(c *Conn, cause error) {
	h.check(c, "OnClose")
	h.lineEcho.OnClose(c, cause)
}

// TestNewConnMakesEveryConn: with Options.NewConn set, every Conn the poller
// hands over (accepted, dialed, a refused dial's, adopted in a handoff) is
// one NewConn made, and the poller leaves the rest of its struct alone.
func TestNewConnMakesEveryConn(t *testing.T) {
	srv := &allocHandler{lineEcho: &lineEcho{}, t: t, made: map[*Conn]bool{}}
	p, addr := startPoller(t, srv, Options{Loops: 2, NewConn: srv.newConn})
	c := connect(t, addr)
	c.Write([]byte("split "))
	time.Sleep(5 * time.Millisecond) // a partial line: the input is kept
	c.Write([]byte("line\n"))
	got := make([]byte, len("split line\n"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "split line\n" {
		t.Fatalf("echo %q %v", got, err)
	}

	cli := &allocHandler{lineEcho: &lineEcho{}, t: t, made: map[*Conn]bool{}}
	cp, err := New(cli, Options{Loops: 2, Backend: testBackend, NewConn: cli.newConn})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	if err := cp.Dial(netip.MustParseAddrPort(addr), netip.Addr{}, "ctx"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "dial", func() bool { cli.mu.Lock(); defer cli.mu.Unlock(); return cli.opened == 1 })
	if err := cp.Dial(netip.MustParseAddrPort("127.0.0.1:1"), netip.Addr{}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "refused dial", func() bool { cli.mu.Lock(); defer cli.mu.Unlock(); return len(cli.closed) == 1 })
	onLoops(cp, func(l *Loop) {
		l.Range(func(c *Conn) bool {
			cli.check(c, "dialed")
			if c.Context() != "ctx" {
				t.Errorf("dialed context %v, want ctx", c.Context())
			}
			return true
		})
	})

	if testBackend == BackendEpoll {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[1])
		l := p.Loops()[0]
		onLoops(p, func(ll *Loop) {
			if ll != l {
				return
			}
			ac, err := l.Adopt(fds[0], HandoffState{In: []byte("kept"), Stamp: 7}, nil)
			if err != nil {
				t.Error(err)
				return
			}
			srv.check(ac, "Adopt")
			if ac.Buffered() != 4 || ac.Stamp() != 7 {
				t.Errorf("adopted: %d bytes kept, stamp %d; want 4 and 7", ac.Buffered(), ac.Stamp())
			}
			ac.Close()
		})
	}
	onLoops(p, func(l *Loop) { l.Range(func(c *Conn) bool { srv.check(c, "listed"); return true }) })
}

// TestIdleConnHoldsNoBuffers: once a connection's kept input is consumed and
// its queue has drained, it gives its connBufs back: an idle connection holds
// no pointer but its own.
func TestIdleConnHoldsNoBuffers(t *testing.T) {
	const total = 8 << 20
	h := &lineEcho{}
	h.onData = func(c *Conn, data []byte) int {
		if bytes.IndexByte(data, '\n') < 0 {
			return 0 // kept
		}
		// A whole line: 8 MiB of answer, which backs up the socket.
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for off := 0; off < total; off += len(chunk) {
			if err := c.Write(chunk); err != nil {
				t.Errorf("write: %v", err)
				break
			}
		}
		return len(data)
	}
	p, addr := startPoller(t, h, Options{Loops: 1})
	c := dialRcvBuf(t, addr, 4<<10)
	c.Write([]byte("partial"))
	eventually(t, "kept input", func() bool {
		n := 0
		onLoops(p, func(l *Loop) { l.Range(func(c *Conn) bool { n += c.Buffered(); return true }) })
		return n == len("partial")
	})
	queued := 0
	c.Write([]byte(" line\n"))
	eventually(t, "queued output", func() bool {
		onLoops(p, func(l *Loop) { l.Range(func(c *Conn) bool { queued = c.Pending(); return true }) })
		return queued > 0
	})
	got, err := io.ReadAll(io.LimitReader(c, total))
	if err != nil || len(got) != total {
		t.Fatalf("read %d bytes, want %d: %v", len(got), total, err)
	}
	eventually(t, "buffers given back", func() bool {
		held := 0
		onLoops(p, func(l *Loop) {
			l.Range(func(c *Conn) bool {
				if c.bufs != nil {
					held++
				}
				return true
			})
		})
		return held == 0
	})
}

// inputHeld is the input the poller holds for c: its kept input, and on
// netpoll whatever netpoll has read from the socket and not handed over.
func inputHeld(c *Conn) int {
	n := c.Buffered()
	if nl, ok := c.loop.be.(*npLoop); ok {
		if np := nl.state(c); np != nil {
			n += np.conn.Reader().Len()
		}
	}
	return n
}

// TestNonReaderIsBounded is the attack of a client that writes requests at
// full speed and never reads its replies: the memory the poller holds for it
// (unsent replies plus unconsumed input) must stay bounded, as reading pauses
// once its replies pass MaxPending. The handler treats a refused write as a
// slow consumer and closes, as the server does.
func TestNonReaderIsBounded(t *testing.T) {
	const maxPending = 128 << 10
	h := &lineEcho{}
	h.onData = func(c *Conn, data []byte) int {
		i := bytes.LastIndexByte(data, '\n')
		if i < 0 {
			return 0
		}
		if err := c.Write(data[:i+1]); err != nil {
			c.Close()
			return len(data)
		}
		return i + 1
	}
	// A small send buffer backs the replies up at once, so the first ones
	// (under MaxPending) already wait for the socket. The receive buffer
	// bounds what netpoll, which reads whether we pause or not, takes from the
	// socket at once.
	const rcvbuf = 64 << 10
	h.onOpen = func(c *Conn) {
		syscall.SetsockoptInt(c.Fd(), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4<<10)
		syscall.SetsockoptInt(c.Fd(), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
	}
	p, addr := startPoller(t, h, Options{Loops: 1, MaxPending: maxPending})
	c := dialRcvBuf(t, addr, 4<<10)
	line := append(bytes.Repeat([]byte("p"), 99), '\n')
	burst := bytes.Repeat(line, 40) // 4,000 bytes of requests per write
	stop := make(chan struct{})
	var sent atomic.Int64
	// A first, small batch earns replies the socket does not take, then the
	// flood, as a client sending pings does.
	c.Write(bytes.Repeat(line, 200))
	time.Sleep(50 * time.Millisecond)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			n, err := c.Write(burst)
			sent.Add(int64(n))
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return // closed as a slow consumer
			}
		}
	}()
	defer close(stop)
	// Bounded: MaxPending of replies plus one read's worth, the same again of
	// held input, and on netpoll what its reader takes from the socket before
	// the loop's request runs: one read (the kernel doubles SO_RCVBUF) when
	// the loop keeps up, several when the loop waits for a CPU (2.1 MB once,
	// under -race beside the other packages' tests). 16 reads of the doubled
	// buffer still fail the unbounded case this test is for (410 MB).
	bound := 4*maxPending + 2*DefaultReadBufferSize + 2*rcvbuf
	if testBackend == BackendNetpoll {
		bound += 15 * 2 * rcvbuf
	}
	peak := 0
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
		onLoops(p, func(l *Loop) {
			l.Range(func(c *Conn) bool {
				peak = max(peak, c.Pending()+inputHeld(c))
				return true
			})
		})
		time.Sleep(10 * time.Millisecond)
	}
	h.mu.Lock()
	t.Logf("client sent %d bytes; the poller held at most %d; closed: %v", sent.Load(), peak, h.closed)
	h.mu.Unlock()
	if peak > bound {
		t.Fatalf("the poller held %d bytes for a client that does not read, want at most %d", peak, bound)
	}
}

// TestRepliesPauseReadingInsteadOfRefusal sends many requests at once, each
// earning a reply of 16 KiB, far past MaxPending in all, and reads the
// replies slowly. Replies are the client's own traffic: none may be refused,
// reading pauses instead, and every reply arrives in order.
func TestRepliesPauseReadingInsteadOfRefusal(t *testing.T) {
	const size, count = 16 << 10, 500 // 8 MiB of replies
	var refused atomic.Int64
	var next atomic.Int64
	h := &lineEcho{}
	h.onData = func(c *Conn, data []byte) int {
		n := bytes.Count(data, []byte("\n"))
		for range n {
			f := numberedFrames(int(next.Add(1)-1), 1, size)[0]
			if err := c.Write(f.Bytes()); err != nil {
				refused.Add(1)
			}
			f.Release()
		}
		return bytes.LastIndexByte(data, '\n') + 1
	}
	_, addr := startPoller(t, h, Options{Loops: 1, MaxPending: 256 << 10})
	c := dialRcvBuf(t, addr, 16<<10)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	go c.Write(bytes.Repeat([]byte("r\n"), count))
	buf := make([]byte, size)
	for i := range count {
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("reply %d: %v (refused %d)", i, err, refused.Load())
		}
		want := numberedFrames(i, 1, size)[0]
		if !bytes.Equal(buf, want.Bytes()) {
			t.Fatalf("reply %d arrived out of order or damaged: starts %q", i, buf[:8])
		}
		want.Release()
		if i%50 == 0 {
			time.Sleep(20 * time.Millisecond) // a slow reader
		}
	}
	if n := refused.Load(); n != 0 {
		t.Fatalf("%d replies refused for MaxPending", n)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.closed) != 0 {
		t.Fatalf("connection closed: %v", h.closed)
	}
}
