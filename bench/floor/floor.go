// Package floor is the bench's reference floor: a server that moves the same
// bytes through the same system calls as a WebSocket server under the bench,
// and does nothing else. Its CPU per echo and per broadcast delivery is what
// the I/O alone costs on the machine, the limit throng and the peers are
// quoted against.
//
// It answers the upgrade with a fixed 101 (only Sec-WebSocket-Accept is
// computed, since clients check it), then runs one event loop per core, each
// locked to its OS thread, on raw descriptors: epoll_wait, read(2) and
// write(2), never the Go netpoller. Per read it finds the frame boundaries in
// what came in and, for each complete frame, appends one reply frame to a
// buffer that goes out in one write(2). The reply is the client's payload
// unmasked behind a server header: the bench checks that an echo carries its
// sequence number and send time, so the four-byte XOR is the one piece of
// WebSocket work the floor does. It does not validate UTF-8, parse JSON,
// compress, or keep any per-message state.
//
// Paths: /echo echoes every data frame (and answers ping and close). On
// /shootout a websocket-shootout broadcast, found by its fixed prefix
// ({"type":"broadcast" or a binary 'b'), is written as it came to every
// /shootout connection with one write(2) each, each loop writing its own
// connections, and the last loop to finish sends the sender its
// broadcastResult; a shootout echo comes back as an echo.
package floor

import (
	"errors"
	"time"
)

// Options configures a Server. The zero value listens on 127.0.0.1, any port,
// with a loop per CPU.
type Options struct {
	// Addr is the TCP listen address. If empty, "127.0.0.1:0" is used.
	Addr string
	// Loops is the number of event loops, each on its own locked OS thread
	// with its own listening socket (SO_REUSEPORT). If zero, GOMAXPROCS is
	// used.
	Loops int
	// HandshakeTimeout closes a connection that has not sent a complete
	// upgrade request in this time. If zero, DefaultHandshakeTimeout is used.
	HandshakeTimeout time.Duration
	// MaxFrameSize bounds one incoming frame's payload; a larger one is
	// refused with close code 1009. If zero, DefaultMaxFrameSize is used.
	MaxFrameSize int
}

// Defaults.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxFrameSize     = 1 << 20
	// maxRequestSize bounds the upgrade request the floor buffers.
	maxRequestSize = 8 << 10
)

// Stats are the server's counters since it started.
type Stats struct {
	// Conns are the upgraded connections open now.
	Conns int64 `json:"conns"`
	// Accepted counts TCP connections accepted.
	Accepted uint64 `json:"accepted"`
	// Frames counts complete data frames read.
	Frames uint64 `json:"frames"`
	// Replies counts reply frames written: echoes, pongs, close answers and
	// broadcastResults.
	Replies uint64 `json:"replies"`
	// Broadcasts counts shootout broadcasts fanned out.
	Broadcasts uint64 `json:"broadcasts"`
	// Deliveries counts broadcast frames written, one per receiver.
	Deliveries uint64 `json:"deliveries"`
	// Reads and Writes count read(2) and write(2) calls on connections.
	Reads  uint64 `json:"reads"`
	Writes uint64 `json:"writes"`
	// Refused counts connections closed for bad input: a bad upgrade
	// request, a protocol error, an unsupported message.
	Refused uint64 `json:"refused"`
}

// ErrUnsupported is New's error where there is no epoll.
var ErrUnsupported = errors.New("floor: needs Linux (epoll)")
