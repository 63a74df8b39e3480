package server

import (
	"sync/atomic"

	"github.com/throng-ws/throng/auth"
)

// counters are one loop's event counts. Each loop writes only its own, so the
// hot path never shares a cache line with another core; Stats sums them.
type counters struct {
	accepted     atomic.Uint64
	open         atomic.Int64
	msgsIn       atomic.Uint64
	msgsOut      atomic.Uint64
	bytesIn      atomic.Uint64
	bytesOut     atomic.Uint64
	handshakes   [numHandshakeResults]atomic.Uint64
	authFailures [auth.NumReasons]atomic.Uint64
	closes       [numCloseReasons]atomic.Uint64
	slow         [numSlowPolicies]atomic.Uint64 // closed connections, dropped messages
	_            [64]byte                       // keep the next loop's counters off this cache line
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	Accepted     uint64            // sockets accepted
	Open         int64             // upgraded connections open now
	Sockets      int               // sockets open now, handshakes included
	MessagesIn   uint64            // data messages received
	MessagesOut  uint64            // messages sent
	BytesIn      uint64            // payload bytes received
	BytesOut     uint64            // payload bytes sent
	Handshakes   map[string]uint64 // by HandshakeResult
	AuthFailures map[string]uint64 // by auth.Reason
	Closes       map[string]uint64 // by CloseReason
	SlowClosed   uint64            // connections closed as slow consumers
	SlowDropped  uint64            // messages dropped for slow consumers
}

// Stats sums the loops' counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Handshakes:   make(map[string]uint64),
		AuthFailures: make(map[string]uint64),
		Closes:       make(map[string]uint64),
		Sockets:      s.Conns(),
	}
	for _, ls := range s.loops {
		c := &ls.c
		st.Accepted += c.accepted.Load()
		st.Open += c.open.Load()
		st.MessagesIn += c.msgsIn.Load()
		st.MessagesOut += c.msgsOut.Load()
		st.BytesIn += c.bytesIn.Load()
		st.BytesOut += c.bytesOut.Load()
		for i := range c.handshakes {
			st.Handshakes[HandshakeResult(i).String()] += c.handshakes[i].Load()
		}
		for i := range c.authFailures {
			if i != int(auth.ReasonNone) {
				st.AuthFailures[auth.Reason(i).String()] += c.authFailures[i].Load()
			}
		}
		st.SlowClosed += c.slow[SlowClose].Load()
		st.SlowDropped += c.slow[SlowDrop].Load()
		for i := range c.closes {
			st.Closes[CloseReason(i).String()] += c.closes[i].Load()
		}
	}
	return st
}

func (s *Server) stats(loop int) *counters { return &s.loops[loop].c }
