package server

import (
	"slices"
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
	peerCodes    [numPeerCodes]atomic.Uint64    // ClosePeer closes by the peer's code
	slow         [numSlowPolicies]atomic.Uint64 // closed connections, dropped messages
	deflateOpen  atomic.Int64                   // connections open with permessage-deflate
	deflateOut   atomic.Uint64                  // messages sent compressed (bytesOut counts them so)
	deflateIn    atomic.Uint64                  // messages received compressed (bytesIn counts them so)
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
	PeerCloses   map[string]uint64 // closes the peer started, by its code (see PeerCloseCodes)
	OpenPerLoop  []int64           // upgraded connections open now, per loop
	SlowClosed   uint64            // connections closed as slow consumers
	SlowDropped  uint64            // messages dropped for slow consumers

	// permessage-deflate. BytesIn and BytesOut count the compressed
	// messages' payloads as they travelled, compressed.
	DeflateOpen    int64  // connections open that negotiated it
	DeflateMsgsOut uint64 // messages sent compressed
	DeflateMsgsIn  uint64 // messages received compressed
	// MessagesInPerLoop and MessagesOutPerLoop are MessagesIn and MessagesOut
	// per loop: how the traffic is spread over the loops.
	MessagesInPerLoop, MessagesOutPerLoop []uint64
}

// Stats sums the loops' counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Handshakes:   make(map[string]uint64),
		AuthFailures: make(map[string]uint64),
		Closes:       make(map[string]uint64),
		PeerCloses:   make(map[string]uint64),
		OpenPerLoop:  make([]int64, len(s.loops)),
		Sockets:      s.Conns(),
	}
	st.MessagesInPerLoop = make([]uint64, len(s.loops))
	st.MessagesOutPerLoop = make([]uint64, len(s.loops))
	for i, ls := range s.loops {
		c := &ls.c
		st.Accepted += c.accepted.Load()
		st.OpenPerLoop[i] = c.open.Load()
		st.Open += st.OpenPerLoop[i]
		st.MessagesInPerLoop[i] = c.msgsIn.Load()
		st.MessagesOutPerLoop[i] = c.msgsOut.Load()
		st.MessagesIn += st.MessagesInPerLoop[i]
		st.MessagesOut += st.MessagesOutPerLoop[i]
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
		st.DeflateOpen += c.deflateOpen.Load()
		st.DeflateMsgsOut += c.deflateOut.Load()
		st.DeflateMsgsIn += c.deflateIn.Load()
		for i := range c.closes {
			st.Closes[CloseReason(i).String()] += c.closes[i].Load()
		}
		for i := range c.peerCodes {
			st.PeerCloses[peerCodeLabels[i]] += c.peerCodes[i].Load()
		}
	}
	return st
}

func (s *Server) stats(loop int) *counters { return &s.loops[loop].c }

// Close codes a peer may send are counted in a few classes rather than one
// counter per code: the registered ones throng's clients use, then the private
// ranges. Labels are the code, or its range.
var peerCodeLabels = [...]string{
	"1000", "1001", "1002", "1003", "1005", "1007", "1008", "1009", "1010", "1011",
	"3000-3999", "4000-4999", "other",
}

const numPeerCodes = len(peerCodeLabels)

// PeerCloseCodes lists the labels of Stats.PeerCloses, in metric label order.
func PeerCloseCodes() []string { return slices.Clone(peerCodeLabels[:]) }

func peerCodeIndex(code uint16) int {
	switch {
	case code >= 1000 && code <= 1003:
		return int(code - 1000)
	case code == 1005:
		return 4
	case code >= 1007 && code <= 1011:
		return int(code-1007) + 5
	case code >= 3000 && code <= 3999:
		return 10
	case code >= 4000 && code <= 4999:
		return 11
	}
	return 12
}
