package server

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/wsframe"
)

// loopState is the server's per-loop scratch: everything here is used only by
// that loop's goroutine, so handshakes and frames need no allocation and no lock.
type loopState struct {
	s  *Server
	l  *poller.Loop
	hs handshake
	c  counters
	// inflater inflates the compressed messages of the loop's connections,
	// one at a time.
	inflater wsframe.Inflater

	draining  []*poller.Conn // snapshot taken when Shutdown starts
	drainLeft atomic.Int64
}

func newLoopState(s *Server, l *poller.Loop) *loopState {
	ls := &loopState{s: s, l: l}
	ls.hs.init(s, l.Index())
	return ls
}

func (s *Server) loopOf(pc *poller.Conn) *loopState { return s.loops[pc.Loop().Index()] }

// OnOpen implements poller.Handler: a new socket starts in the handshake.
func (s *Server) OnOpen(pc *poller.Conn) {
	pc.SetStamp(s.nowMillis() + s.opts.HandshakeTimeout.Milliseconds())
	s.stats(pc.Loop().Index()).accepted.Add(1)
}

// OnData implements poller.Handler.
func (s *Server) OnData(pc *poller.Conn, data []byte) int {
	switch c := connOf(pc); c.state {
	case stateHandshake:
		ls := s.loopOf(pc)
		n, c := ls.hs.serve(pc, data)
		if c == nil || n == len(data) {
			return n
		}
		// Frames sent right behind the request are read now.
		return n + s.frames(c, data[n:])
	case stateRejected: // discard
		return len(data)
	default:
		return s.frames(c, data)
	}
}

// OnWritable implements poller.Handler: a connection that had messages dropped
// has caught up, and its handler is told how many it missed.
func (s *Server) OnWritable(pc *poller.Conn) {
	c := connOf(pc)
	if c.dropped == 0 || c.state != stateOpen {
		return
	}
	n := c.dropped
	c.dropped = 0
	if d, ok := c.route.h.(DropNotifier); ok {
		d.Dropped(c, int(n))
	}
}

// DropNotifier is implemented by handlers that want to tell a client how many
// messages it missed under SlowDrop.
type DropNotifier interface {
	Dropped(c *Conn, n int)
}

// OnClose implements poller.Handler.
func (s *Server) OnClose(pc *poller.Conn, cause error) {
	c := connOf(pc)
	if !c.upgraded() {
		return // in the handshake, or refused: nothing was taken for it
	}
	if c.state == stateOpen {
		// The peer went without a close frame.
		c.ctr().closes[CloseAbnormal].Add(1)
		if cause != nil && !errors.Is(cause, poller.ErrPeerClosed) && !errors.Is(cause, poller.ErrClosed) {
			c.route.h.OnError(c, cause)
		}
		c.releaseMsg()
		c.tell(ws.StatusAbnormalClosure, "")
	}
	c.state = stateClosed
	c.releaseMsg()
	c.ctr().open.Add(-1)
	if c.deflate != 0 {
		c.ctr().deflateOpen.Add(-1)
	}
	if c.is(flagCounted) {
		s.perUser.Release(c.user)
		c.setFlag(flagCounted, false)
	}
	if s.opts.MaxConns > 0 {
		s.admitted.Add(-1) // every Conn holds one of MaxConns (see onBeforeUpgrade)
	}
}

// OnTick implements poller.Handler: the loop's sweep for handshake, idle, ping,
// close and token deadlines.
func (s *Server) OnTick(l *poller.Loop, now time.Time) {
	ms := s.now().UnixMilli()
	sec := ms / 1000
	if s.ipLimit != nil && l.Index() == 0 && ms-s.lastPrune >= 30_000 {
		s.lastPrune = ms // owned by loop 0
		s.ipLimit.Prune(ms)
	}
	idle := s.opts.IdleTimeout.Milliseconds()
	ping := s.opts.PingInterval.Milliseconds()
	l.Range(func(pc *poller.Conn) bool {
		if pc.Frozen() {
			// In a handoff: its deadlines are the owner's, after it.
			return true
		}
		switch c := connOf(pc); c.state {
		case stateHandshake: // the stamp is its deadline
			if ms >= pc.Stamp() {
				s.stats(l.Index()).handshakes[HandshakeTimeout].Add(1)
				pc.Close()
			}
		case stateRejected: // the stamp is when to give up flushing
			if ms >= pc.Stamp() {
				pc.Close()
			}
		case stateOpen: // the stamp is when it was last heard from
			switch quiet := ms - pc.Stamp(); {
			case pc.Stalled(now, s.opts.StallTimeout):
				// Its own replies paused its reading, and it has taken
				// none of them since: it does not read. Whatever the
				// slow-consumer policy, dropping cannot help here.
				c.ctr().slow[SlowClose].Add(1)
				c.fail(CloseSlowConsumer, ErrSlowConsumer)
			case quiet >= idle:
				c.Close(CloseIdle)
			case c.exp != 0 && sec >= int64(c.exp):
				c.route.srv.tokenExpired(c)
			case quiet >= ping && ms-c.timer >= ping:
				c.timer = ms
				var h [2]byte
				putHeader(h[:], ws.OpPing, 0)
				c.pc.Write(h[:])
			}
		case stateClosing:
			if ms >= c.timer {
				pc.Close()
			}
		}
		return true
	})
}

// tokenExpired tells the client why and closes with 1008. Handlers that speak
// JSON get an error message first.
func (s *Server) tokenExpired(c *Conn) {
	if te, ok := c.route.h.(interface{ TokenExpired(*Conn) }); ok {
		te.TokenExpired(c)
	}
	c.Close(CloseTokenExpired)
}
