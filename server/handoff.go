package server

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"
	"golang.org/x/sys/unix"

	"github.com/throng-ws/throng/handoff"
	"github.com/throng-ws/throng/poller"
)

// The server's half of a zero-downtime upgrade (package handoff moves the
// bytes between processes). In the old process:
//
//	FreezeHandoff   stop accepting, stop reading every connection, let the
//	                deliveries already under way land in the output queues
//	ExportHandoff   (repeatedly) one batch of connections: descriptors and state
//	ThawHandoff     rollback: every connection back in the event loops
//	DetachHandoff   commit: forget every connection without a word to anyone
//
// In the new process:
//
//	ListenFD        the listener, accepting paused
//	ImportHandoff   (per batch) the connections, frozen: not read, not written
//	ActivateHandoff commit: thaw them all, then accept
//	AbandonHandoff  failure: let go of them without a word
//
// Nothing is written to a handed-over socket by either process between the
// freeze and the commit, so whichever process ends up owning a connection
// writes its stream from where it stood.

// HandoffFormat is the version of the per-connection state record. A process
// refuses a batch of another version rather than misread it.
const HandoffFormat = 2 // 2: the permessage-deflate window and a compressed fragment in progress

// Errors of a handoff.
var (
	// ErrHandoffBusy is returned when a handoff or a drain is already under way.
	ErrHandoffBusy = errors.New("server: a handoff or shutdown is in progress")
	// ErrHandoffFormat is returned by ImportHandoff for a batch of another
	// HandoffFormat.
	ErrHandoffFormat = errors.New("server: handoff state format mismatch")
)

// HandoffHandler is implemented by a Handler whose per-connection state must
// move with its connections in a handoff (rooms, rate limits). Without it a
// connection moves with its transport state only, and the handler sees it as
// if it had no state yet.
type HandoffHandler interface {
	// ExportConn appends c's state to dst, in the old process, on c's loop,
	// with c frozen.
	ExportConn(c *Conn, dst []byte) []byte
	// ImportConn restores what ExportConn wrote, in the new process, on
	// c's loop, before c is thawed. It must not tell anyone (no presence):
	// the connection never left. An error refuses the whole handoff.
	ImportConn(c *Conn, state []byte) error
}

// Record kinds.
const (
	recWebSocket = 1 // an upgraded connection
	recHandshake = 2 // a socket whose upgrade request is still arriving
)

// handoffState is the server's bookkeeping of a handoff.
type handoffState struct {
	phase atomic.Int32 // hoIdle, hoFrozen (old), hoStaged (new)
	// conns[i] is loop i's connections in the handoff: the frozen ones to
	// export (old) or the imported ones (new). Owned by loop i; the
	// goroutine driving the handoff reads them only through jobs.
	conns [][]*poller.Conn
	// next[i] is how many of conns[i] have been exported. Owned by the
	// goroutine driving the handoff.
	next []int
	// gate holds back requests that write to connections (the HTTP API's
	// publish) while connections are frozen.
	gate     sync.RWMutex
	gateShut atomic.Bool
}

const (
	hoIdle int32 = iota
	hoFrozen
	hoStaged
)

// HandoffGate wraps an HTTP handler so that, while a handoff has connections
// frozen, requests that could write to them (every POST under /api/) are
// answered 503 with Retry-After: 1 instead of racing the export; the freeze
// waits for those already running. Other requests pass.
func (s *Server) HandoffGate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead || !strings.HasPrefix(r.URL.Path, "/api/") {
			next.ServeHTTP(w, r)
			return
		}
		if !s.ho.gate.TryRLock() {
			refuseHandoff(w)
			return
		}
		defer s.ho.gate.RUnlock()
		if s.ho.gateShut.Load() {
			refuseHandoff(w)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func refuseHandoff(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "1")
	http.Error(w, "upgrade in progress", http.StatusServiceUnavailable)
}

func (s *Server) shutGate(shut bool) {
	s.ho.gate.Lock() // waits for the requests inside
	s.ho.gateShut.Store(shut)
	s.ho.gate.Unlock()
}

// onLoops runs fn on every loop and waits for all of them.
func (s *Server) onLoops(fn func(i int, l *poller.Loop)) {
	var wg sync.WaitGroup
	for i, l := range s.p.Loops() {
		wg.Add(1)
		if !l.Post(poller.FuncJob(func() { defer wg.Done(); fn(i, l) })) {
			wg.Done()
		}
	}
	wg.Wait()
}

// FreezeHandoff starts handing this server's connections to another process:
// it stops accepting (the listener stays open, its backlog waiting), closes
// the HTTP API's writes (HandoffGate), and freezes every connection, so that
// none is read or written from now on. It returns once every delivery that
// was under way has landed in an output queue. Sockets whose upgrade was
// refused are closed; those still in their handshake move like the rest.
func (s *Server) FreezeHandoff() error {
	if s.p.Backend() != poller.BackendEpoll {
		return fmt.Errorf("server: --poller %s: %w", s.p.Backend(), poller.ErrHandoffUnsupported)
	}
	if s.draining.Load() || s.closed.Load() || !s.ho.phase.CompareAndSwap(hoIdle, hoFrozen) {
		return ErrHandoffBusy
	}
	s.shutGate(true)
	if err := s.p.PauseAccept(); err != nil {
		s.ho.phase.Store(hoIdle)
		s.shutGate(false)
		return err
	}
	n := len(s.p.Loops())
	s.ho.conns = make([][]*poller.Conn, n)
	s.ho.next = make([]int, n)
	// First every loop stops reading: no new message starts a broadcast.
	s.onLoops(func(i int, l *poller.Loop) {
		l.Range(func(pc *poller.Conn) bool {
			if connOf(pc).state == stateRejected {
				pc.Close() // a refused handshake: its answer is as good as sent
			} else if err := pc.Freeze(); err != nil {
				pc.Close()
			}
			return true
		})
	})
	// Then every loop runs, in order, the deliveries the last messages
	// posted to it, and lists what it will export.
	s.onLoops(func(i int, l *poller.Loop) {
		var list []*poller.Conn
		l.Range(func(pc *poller.Conn) bool {
			if pc.Frozen() {
				list = append(list, pc)
			}
			return true
		})
		s.ho.conns[i] = list
	})
	return nil
}

// HandoffBatch is one batch of connections: a state record per connection
// and its descriptor, in the same order.
type HandoffBatch struct {
	Data []byte
	FDs  []int
	// Conns is the number of connections in it.
	Conns int
}

// ExportHandoff fills b (reset first) with the next connections, at most
// maxConns of them and about maxBytes of state (at least one connection),
// and reports whether every connection has now been exported. The
// descriptors are this process's own: it keeps them until DetachHandoff.
func (s *Server) ExportHandoff(b *HandoffBatch, maxConns, maxBytes int) (done bool, err error) {
	if s.ho.phase.Load() != hoFrozen {
		return false, errors.New("server: export without a frozen handoff")
	}
	b.Data, b.FDs, b.Conns = b.Data[:0], b.FDs[:0], 0
	e := handoff.Enc{B: b.Data}
	e.Uint(HandoffFormat)
	for i, l := range s.p.Loops() {
		for s.ho.next[i] < len(s.ho.conns[i]) && b.Conns < maxConns && (b.Conns == 0 || len(e.B) < maxBytes) {
			ch := make(chan error, 1)
			if !l.Post(poller.FuncJob(func() {
				var err error
				for s.ho.next[i] < len(s.ho.conns[i]) && b.Conns < maxConns && (b.Conns == 0 || len(e.B) < maxBytes) {
					pc := s.ho.conns[i][s.ho.next[i]]
					s.ho.next[i]++
					if pc.Closed() {
						continue
					}
					var fd int
					if fd, err = s.exportConn(&e, i, pc); err != nil {
						break
					}
					b.FDs = append(b.FDs, fd)
					b.Conns++
				}
				ch <- err
			})) {
				return false, poller.ErrClosed
			}
			if err := <-ch; err != nil {
				return false, err
			}
		}
	}
	b.Data = e.B
	for i := range s.ho.conns {
		if s.ho.next[i] < len(s.ho.conns[i]) {
			return false, nil
		}
	}
	return true, nil
}

// exportConn appends pc's record to e. It runs on pc's loop.
func (s *Server) exportConn(e *handoff.Enc, loop int, pc *poller.Conn) (int, error) {
	fd, st, err := pc.Export()
	if err != nil {
		return -1, err
	}
	c := connOf(pc)
	if !c.upgraded() {
		e.Uint(recHandshake)
	} else {
		e.Uint(recWebSocket)
	}
	e.Uint(uint64(loop))
	e.Int(st.Stamp)
	e.Bytes(st.In)
	e.Uint(uint64(st.OutLen()))
	for _, b := range st.Out {
		e.B = append(e.B, b...)
	}
	e.Bool(st.ShutdownWrite)
	e.Bool(st.Refused)
	if !c.upgraded() {
		return fd, nil
	}
	e.String(c.route.path)
	e.String(c.user)
	// The format keeps the ping time and the close deadline apart; a Conn
	// holds whichever its state needs in timer.
	var ping, closeAt int64
	if c.state == stateOpen {
		ping = c.timer
	} else {
		closeAt = c.timer
	}
	e.Int(int64(c.exp))
	e.Int(ping)
	e.Int(closeAt)
	e.Uint(uint64(c.state))
	e.Uint(uint64(c.fragOp))
	if c.msg != nil {
		e.Bytes(c.msg.B)
	} else {
		e.Bytes(nil)
	}
	e.Bytes(c.utf8.part[:c.utf8.n])
	e.Bool(c.is(flagTold))
	e.Uint(uint64(c.dropped))
	e.Uint(uint64(c.deflate))
	e.Bool(c.is(flagInflate))
	if hh, ok := c.route.h.(HandoffHandler); ok && c.state != stateClosed {
		var app []byte
		app = hh.ExportConn(c, app)
		e.Bytes(app)
	} else {
		e.Bytes(nil)
	}
	return fd, nil
}

// ThawHandoff undoes FreezeHandoff after a failed handoff: every connection
// goes back to its loop, sends what was queued for it meanwhile, and reads
// what its client sent meanwhile; the listener accepts again, and the API
// writes again.
func (s *Server) ThawHandoff() {
	if s.ho.phase.Load() != hoFrozen {
		return
	}
	s.thawAll()
	s.shutGate(false)
}

// DetachHandoff ends a committed handoff in the old process: every exported
// connection is forgotten without a close frame, an OnClose or any other
// write, as the new process owns it now. The server is then closed. Call it
// only after the new process has acknowledged every batch.
func (s *Server) DetachHandoff() {
	if s.ho.phase.Load() != hoFrozen {
		return
	}
	s.onLoops(func(i int, l *poller.Loop) {
		for _, pc := range s.ho.conns[i] {
			if pc.Closed() {
				continue
			}
			if c := connOf(pc); c.upgraded() {
				s.forgetConn(c)
			}
			pc.Detach()
		}
		s.ho.conns[i] = nil
	})
	s.Close()
}

// forgetConn marks c gone without telling its handler, and gives back what
// it held in this process's counts.
func (s *Server) forgetConn(c *Conn) {
	c.state = stateClosed
	c.setFlag(flagTold, true)
	c.releaseMsg()
	c.ctr().open.Add(-1)
	if c.is(flagCounted) {
		s.perUser.Release(c.user)
		c.setFlag(flagCounted, false)
	}
	if s.opts.MaxConns > 0 {
		s.admitted.Add(-1)
	}
}

// ListenFD makes fd, a listening socket handed over by the old process,
// the server's listener, accepting paused until ActivateHandoff.
func (s *Server) ListenFD(fd int) (net.Addr, error) {
	if s.closed.Load() || s.draining.Load() {
		return nil, ErrServerClosed
	}
	if len(s.routes) == 0 {
		return nil, errors.New("server: no handlers")
	}
	s.ho.phase.CompareAndSwap(hoIdle, hoStaged)
	if !s.listened.Swap(true) {
		s.baseline.Store(s.opts.MemoryReader())
	}
	return s.p.ListenFD(fd)
}

// ImportHandoff adopts one batch of connections exported by the old process,
// frozen until ActivateHandoff. The server owns the descriptors from now on.
// An error (another format, an endpoint this server does not serve, state
// its handler refuses) means the handoff must fail: the old process keeps
// its connections.
func (s *Server) ImportHandoff(data []byte, fds []int) (n int, err error) {
	if s.closed.Load() || s.draining.Load() || !s.ho.phase.CompareAndSwap(hoIdle, hoStaged) && s.ho.phase.Load() != hoStaged {
		closeFDs(fds)
		return 0, ErrHandoffBusy
	}
	loops := s.p.Loops()
	if s.ho.conns == nil {
		s.ho.conns = make([][]*poller.Conn, len(loops))
	}
	d := handoff.Dec{B: data}
	if v := d.Uint(); v != HandoffFormat {
		closeFDs(fds)
		return 0, fmt.Errorf("%w: batch of format %d, this process reads %d", ErrHandoffFormat, v, HandoffFormat)
	}
	// Decode on this goroutine, adopt on the loops: each loop takes its
	// share in one job.
	type rec struct {
		fd   int
		st   poller.HandoffState
		kind uint64
		body handoff.Dec
	}
	per := make([][]rec, len(loops))
	for i, fd := range fds {
		var r rec
		r.fd = fd
		r.kind = d.Uint()
		loop := int(d.Uint() % uint64(len(loops)))
		r.st.Stamp = d.Int()
		r.st.In = d.Bytes()
		outLen := d.Uint()
		if d.Err() != nil || outLen > uint64(len(d.B)) {
			closeFDs(fds[i:])
			return n, fmt.Errorf("%w (record %d)", handoff.ErrCorrupt, i)
		}
		if outLen > 0 {
			r.st.Out = [][]byte{d.B[:outLen]}
		}
		d.B = d.B[outLen:]
		r.st.ShutdownWrite = d.Bool()
		r.st.Refused = d.Bool()
		if r.kind == recWebSocket {
			// The rest of the record is decoded on the loop: remember where.
			start := d.B
			d.Bytes() // path
			d.Bytes() // user
			d.Int()
			d.Int()
			d.Int()
			d.Uint()
			d.Uint()
			d.Bytes()
			d.Bytes()
			d.Bool()
			d.Uint()
			d.Uint()
			d.Bool()
			d.Bytes()
			r.body = handoff.Dec{B: start[:len(start)-len(d.B)]}
		} else if r.kind != recHandshake {
			closeFDs(fds[i:])
			return n, fmt.Errorf("%w: record %d of unknown kind %d", handoff.ErrCorrupt, i, r.kind)
		}
		if d.Err() != nil {
			closeFDs(fds[i:])
			return n, fmt.Errorf("%w (record %d)", handoff.ErrCorrupt, i)
		}
		per[loop] = append(per[loop], r)
	}
	if len(d.B) != 0 {
		// Records without descriptors: the batch and its rights disagree.
		for _, rs := range per {
			for _, r := range rs {
				closeFD(r.fd)
			}
		}
		return 0, fmt.Errorf("%w: %d bytes past the last descriptor's record", handoff.ErrCorrupt, len(d.B))
	}
	var mu sync.Mutex
	var firstErr error
	var adopted atomic.Int64
	s.onLoops(func(i int, l *poller.Loop) {
		for k, r := range per[i] {
			if err := s.importConn(i, l, r.fd, r.st, r.kind, &r.body); err != nil {
				for _, r := range per[i][k+1:] {
					closeFD(r.fd)
				}
				mu.Lock()
				firstErr = cmpErr(firstErr, err)
				mu.Unlock()
				return
			}
			adopted.Add(1)
		}
	})
	return int(adopted.Load()), firstErr
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// importConn adopts one connection on loop l. It owns fd.
func (s *Server) importConn(i int, l *poller.Loop, fd int, st poller.HandoffState, kind uint64, d *handoff.Dec) error {
	if kind == recHandshake {
		pc, err := l.Adopt(fd, st, nil)
		if err != nil {
			return err
		}
		s.ho.conns[i] = append(s.ho.conns[i], pc)
		return nil
	}
	path := d.String()
	r := s.routes[path]
	if r == nil {
		closeFD(fd)
		return fmt.Errorf("server: handoff of a connection on %q, an endpoint this process does not serve", path)
	}
	user := d.String()
	exp := d.Int()
	ping := d.Int()
	closeAt := d.Int()
	state := connState(d.Uint())
	fragOp := ws.OpCode(d.Uint())
	msg := d.Bytes()
	part := d.Bytes()
	told := d.Bool()
	dropped := d.Uint()
	window := d.Uint()
	inflate := d.Bool()
	app := d.Bytes()
	if d.Err() != nil || state > stateClosing || len(part) > len(utf8Stream{}.part) || dropped > math.MaxUint32 ||
		(window != 0 && (window < 8 || window > 15)) || (inflate && (window == 0 || fragOp == 0)) {
		closeFD(fd)
		return fmt.Errorf("%w: connection on %q", handoff.ErrCorrupt, path)
	}
	pc, err := l.Adopt(fd, st, nil)
	if err != nil {
		return err
	}
	c := connOf(pc)
	c.route, c.user, c.fragOp = r, user, fragOp
	c.state = state
	c.setFlag(flagTold, told)
	if exp != 0 {
		c.exp = clampSeconds(exp)
	}
	c.timer = ping
	if state == stateClosing {
		c.timer = closeAt
	}
	c.dropped = uint32(dropped)
	c.deflate = uint8(window)
	c.setFlag(flagInflate, inflate)
	c.utf8.n = uint8(copy(c.utf8.part[:], part))
	if c.fragOp != 0 {
		c.msg = bytebufferpool.Get()
		c.msg.Write(msg)
	}
	c.ctr().open.Add(1)
	if c.deflate != 0 {
		c.ctr().deflateOpen.Add(1)
	}
	if s.perUser != nil {
		// Counted whatever the limit says: the connection exists.
		s.perUser.Acquire(c.user, math.MaxInt)
		c.setFlag(flagCounted, true)
	}
	if s.opts.MaxConns > 0 {
		s.admitted.Add(1)
	}
	s.ho.conns[i] = append(s.ho.conns[i], pc)
	if hh, ok := r.h.(HandoffHandler); ok && c.state == stateOpen && len(app) > 0 {
		if err := hh.ImportConn(c, app); err != nil {
			return fmt.Errorf("server: handoff of a connection on %q: %w", path, err)
		}
	}
	return nil
}

// ActivateHandoff ends a committed handoff in the new process: every imported
// connection is thawed (its queued output sent, what its client sent during
// the handoff read), and the listener accepts.
func (s *Server) ActivateHandoff() {
	if s.ho.phase.Load() != hoStaged {
		s.p.ResumeAccept()
		return
	}
	s.thawAll()
}

// AbandonHandoff lets go of what a failed handoff imported, without a word
// to any client or handler: the old process keeps serving them. The server
// is then closed.
func (s *Server) AbandonHandoff() {
	if s.ho.phase.Load() == hoStaged {
		s.onLoops(func(i int, l *poller.Loop) {
			if s.ho.conns == nil {
				return
			}
			for _, pc := range s.ho.conns[i] {
				if pc.Closed() {
					continue
				}
				if c := connOf(pc); c.upgraded() {
					s.forgetConn(c)
				}
				pc.Detach()
			}
			s.ho.conns[i] = nil
		})
	}
	s.Close()
}

// HandingOff reports whether connections are frozen for a handoff.
func (s *Server) HandingOff() bool { return s.ho.phase.Load() != hoIdle }

// ListenerFD is a duplicate of the WebSocket listener's descriptor, for the
// new process; the caller closes it.
func (s *Server) ListenerFD() (int, error) { return s.p.ListenerFD() }

func closeFDs(fds []int) {
	for _, fd := range fds {
		closeFD(fd)
	}
}

func closeFD(fd int) { unix.Close(fd) }

// AppendHandoff appends st to e, for a handler's HandoffHandler.ExportConn:
// the bucket's tokens and last refill, then the ban's end (0 if none) and the
// messages received during it. A banned connection's bucket is written
// empty, as it starts full when the ban is served.
func (st *RateState) AppendHandoff(e *handoff.Enc) {
	until, n := st.ban()
	if until != 0 {
		e.Float(0)
		e.Int(0)
	} else {
		e.Float(st.b.tokens)
		e.Int(st.b.last)
	}
	e.Int(until)
	e.Uint(uint64(n))
}

// ReadHandoff reads what AppendHandoff wrote into st.
func (st *RateState) ReadHandoff(d *handoff.Dec) {
	tokens, last := d.Float(), d.Int()
	until, n := d.Int(), d.Uint()
	if until != 0 {
		st.setBan(until, uint32(min(n, math.MaxUint32)))
		return
	}
	if !(tokens >= 0) { // negative would read as a ban, NaN would never refill; the sender writes neither
		tokens = 0
	}
	st.b.tokens, st.b.last = tokens, last
}

// KeyedLimitFormat versions a KeyedLimit's part of a handoff: per key, the
// key as its caller writes it, then the bucket's tokens and last refill.
const KeyedLimitFormat = 1

// HandoffPart is l's part of a handoff's application state, so that a key at
// its limit is not given a fresh burst by an upgrade: every bucket l holds
// (only keys that spoke recently; Prune forgets the rest), put writing each
// key. It takes one shard at a time, copied under the shard's lock, so a
// chunk costs at most a shard's keys besides itself. Call it with the
// server frozen; it changes nothing, for a rollback.
func (l *KeyedLimit[K]) HandoffPart(name string, put func(*handoff.Enc, K)) handoff.StatePart {
	type entry struct {
		k K
		b bucket
	}
	var pend []entry
	next, shard := 0, 0
	return handoff.StatePart{Name: name, Format: KeyedLimitFormat, Export: func(dst []byte, max int) ([]byte, bool, error) {
		e := handoff.Enc{B: dst}
		start := len(dst)
		for len(e.B)-start < max {
			if next == len(pend) {
				if shard == limitShards {
					break
				}
				sh := &l.shards[shard]
				shard++
				pend, next = pend[:0], 0
				sh.mu.Lock()
				for k, b := range sh.m {
					pend = append(pend, entry{k, b})
				}
				sh.mu.Unlock()
				continue
			}
			en := &pend[next]
			next++
			put(&e, en.k)
			e.Float(en.b.tokens)
			e.Int(en.b.last)
		}
		return e.B, shard == limitShards && next == len(pend), nil
	}}
}

// HandoffImporter takes what HandoffPart sent, get reading each key. A nil l
// (the new process does not limit these keys) reads the part and keeps
// nothing, so that a change of settings does not refuse the upgrade. A bucket
// fuller than l's burst (a smaller burst in the new settings) is cut to it.
func (l *KeyedLimit[K]) HandoffImporter(name string, get func(*handoff.Dec) (K, error)) handoff.StateImporter {
	return handoff.StateImporter{Name: name, Format: KeyedLimitFormat, Import: func(chunk []byte, _ bool) error {
		d := handoff.Dec{B: chunk}
		for len(d.B) > 0 {
			k, err := get(&d)
			if err != nil {
				return fmt.Errorf("server: %s: %w", name, err)
			}
			tokens, last := d.Float(), d.Int()
			if d.Err() != nil {
				return fmt.Errorf("server: %s: %w", name, d.Err())
			}
			if !(tokens >= 0) || last <= 0 {
				return fmt.Errorf("%w: %s: a bucket of %v tokens at %d", handoff.ErrCorrupt, name, tokens, last)
			}
			if l == nil {
				continue
			}
			sh := &l.shards[maphash.Comparable(l.seed, k)%limitShards]
			sh.mu.Lock()
			sh.m[k] = bucket{tokens: min(tokens, float64(l.burst)), last: last}
			sh.peak = max(sh.peak, len(sh.m))
			sh.mu.Unlock()
		}
		return nil
	}}
}

// handshakeRatePart names the per-address handshake limit's part.
const handshakeRatePart = "handshake-rate"

// handoffParts are the server's own parts of a handoff's application state:
// the per-address handshake limit, if there is one.
func (s *Server) handoffParts() []handoff.StatePart {
	if s.ipLimit == nil {
		return nil
	}
	return []handoff.StatePart{s.ipLimit.HandoffPart(handshakeRatePart, func(e *handoff.Enc, a netip.Addr) {
		b, _ := a.MarshalBinary() // never fails
		e.Bytes(b)
	})}
}

// handoffImporters take the server's own parts, whatever this process's
// settings: a limit it does not have reads its part and keeps nothing.
func (s *Server) handoffImporters() []handoff.StateImporter {
	return []handoff.StateImporter{s.ipLimit.HandoffImporter(handshakeRatePart, func(d *handoff.Dec) (netip.Addr, error) {
		var a netip.Addr
		b := d.Bytes()
		if d.Err() != nil {
			return a, d.Err()
		}
		if err := a.UnmarshalBinary(b); err != nil {
			return a, fmt.Errorf("%w: %v", handoff.ErrCorrupt, err)
		}
		return a, nil
	})}
}

// DefaultHandoffBatchBytes is the state a handoff batch carries before it is
// sent: with one connection's output (at most MaxPending) on top, it bounds
// the memory a handoff adds to either process.
const DefaultHandoffBatchBytes = 4 << 20

// HandoffSource is a Server as the old side of a handoff (handoff.Source).
type HandoffSource struct {
	Server *Server
	// Extra returns more listeners to hand over, such as the HTTP one: the
	// handoff closes their descriptors once sent. May be nil.
	Extra func() ([]handoff.Listener, error)
	// BatchBytes is the state per batch. If zero, DefaultHandoffBatchBytes.
	BatchBytes int
	// OnCommit runs once the new process owns everything, before the
	// connections are detached. May be nil.
	OnCommit func()
	// Parts lists the application state to hand over (handoff.StateSource),
	// once the server is frozen, after the server's own (its per-address
	// handshake limit). May be nil.
	Parts func() []handoff.StatePart
	// OnRollback runs after a failed handoff, before the connections thaw:
	// what it writes to them waits in their queues, and what they send once
	// thawed finds it done. May be nil.
	OnRollback func()

	batch HandoffBatch
}

// Freeze implements handoff.Source.
func (h *HandoffSource) Freeze() error { return h.Server.FreezeHandoff() }

// Listeners implements handoff.Source: the WebSocket listener is "ws".
func (h *HandoffSource) Listeners() ([]handoff.Listener, error) {
	fd, err := h.Server.ListenerFD()
	if err != nil {
		return nil, err
	}
	lns := []handoff.Listener{{Name: "ws", FD: fd}}
	if h.Extra != nil {
		more, err := h.Extra()
		if err != nil {
			closeFD(fd)
			return nil, err
		}
		lns = append(lns, more...)
	}
	return lns, nil
}

// Export implements handoff.Source.
func (h *HandoffSource) Export(dst []byte, fds []int) ([]byte, []int, int, bool, error) {
	h.batch.Data, h.batch.FDs = dst, fds
	done, err := h.Server.ExportHandoff(&h.batch, handoff.MaxBatchConns, cmpInt(h.BatchBytes, DefaultHandoffBatchBytes))
	return h.batch.Data, h.batch.FDs, h.batch.Conns, done, err
}

// Rollback implements handoff.Source.
func (h *HandoffSource) Rollback() {
	if h.OnRollback != nil {
		h.OnRollback()
	}
	h.Server.ThawHandoff()
}

// State implements handoff.StateSource.
func (h *HandoffSource) State() []handoff.StatePart {
	parts := h.Server.handoffParts()
	if h.Parts != nil {
		parts = append(parts, h.Parts()...)
	}
	return parts
}

// Commit implements handoff.Source.
func (h *HandoffSource) Commit() {
	if h.OnCommit != nil {
		h.OnCommit()
	}
	h.Server.DetachHandoff()
}

func cmpInt(a, b int) int {
	if a > 0 {
		return a
	}
	return b
}

// HandoffSink is a Server as the new side of a handoff (handoff.Sink).
type HandoffSink struct {
	Server *Server
	// Listener takes the listeners other than "ws" (it owns fd). If nil,
	// they are refused.
	Listener func(name string, fd int) error
	// OnCommit runs once the old process has committed, before anything is
	// thawed: what it writes to the connections waits in their queues. May
	// be nil.
	OnCommit func()
	// OnActivate runs once everything is thawed. May be nil.
	OnActivate func()
	// Importers take the application state (handoff.StateSink). May be nil.
	Importers []handoff.StateImporter
	// Check runs when the old process commits, before this one answers: an
	// error refuses the handoff (handoff.Preparer). May be nil.
	Check func() error
	// Addr is the WebSocket listener's address, once adopted.
	Addr net.Addr
}

// AdoptListener implements handoff.Sink.
func (h *HandoffSink) AdoptListener(name string, fd int) error {
	if name == "ws" {
		a, err := h.Server.ListenFD(fd)
		h.Addr = a
		return err
	}
	if h.Listener == nil {
		closeFD(fd)
		return fmt.Errorf("server: handoff of a listener %q this process has no use for", name)
	}
	return h.Listener(name, fd)
}

// Import implements handoff.Sink.
func (h *HandoffSink) Import(data []byte, fds []int) (int, error) {
	return h.Server.ImportHandoff(data, fds)
}

// Activate implements handoff.Sink.
func (h *HandoffSink) Activate() {
	if h.OnCommit != nil {
		h.OnCommit()
	}
	h.Server.ActivateHandoff()
	if h.OnActivate != nil {
		h.OnActivate()
	}
}

// Abandon implements handoff.Sink.
func (h *HandoffSink) Abandon() { h.Server.AbandonHandoff() }

// StateImporters implements handoff.StateSink.
// The server's own importers come first.
func (h *HandoffSink) StateImporters() []handoff.StateImporter {
	return append(h.Server.handoffImporters(), h.Importers...)
}

// Prepare implements handoff.Preparer.
func (h *HandoffSink) Prepare() error {
	if h.Check == nil {
		return nil
	}
	return h.Check()
}

var (
	_ handoff.StateSource = (*HandoffSource)(nil)
	_ handoff.StateSink   = (*HandoffSink)(nil)
	_ handoff.Preparer    = (*HandoffSink)(nil)
)

// CanHandOff reports whether the server's connections can be handed to
// another process: only the epoll backend can.
func (s *Server) CanHandOff() bool { return s.p.Backend() == poller.BackendEpoll }

// thawAll has every loop read and write its handed-over connections again,
// the listener accept, and the handoff end.
func (s *Server) thawAll() {
	s.onLoops(func(i int, l *poller.Loop) {
		for _, pc := range s.ho.conns[i] {
			if !pc.Closed() {
				pc.Thaw()
			}
		}
		s.ho.conns[i] = nil
	})
	s.p.ResumeAccept()
	s.ho.phase.Store(hoIdle)
}
