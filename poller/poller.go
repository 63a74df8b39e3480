// Package poller runs many TCP connections on a few event loops, so that an idle
// connection costs a small struct and no goroutine, read buffer or write buffer.
//
// A Poller owns N loops. Each loop owns the connections it accepted or dialed: their
// callbacks run on the loop's goroutine, one at a time, and only that goroutine
// reads, writes or closes them. Other goroutines reach a connection by posting a task
// to its loop (Loop.Post, Loop.PostWrite), which wakes the loop through an eventfd.
//
// The package is built for a WebSocket server but knows nothing of WebSocket: it
// moves bytes. The epoll backend is Linux only; on other systems New returns
// ErrUnsupported.
package poller

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/bytebufferpool"
)

// Errors returned by the poller. They are also the causes handed to
// Handler.OnClose, so a handler can tell why a connection went away.
var (
	// ErrUnsupported is returned by New on systems without the epoll backend.
	ErrUnsupported = errors.New("poller: epoll backend requires linux")
	// ErrClosed is returned for operations on a closed poller or connection.
	ErrClosed = errors.New("poller: closed")
	// ErrPeerClosed is the OnClose cause when the peer closed or reset the socket.
	ErrPeerClosed = errors.New("poller: peer closed")
	// ErrPendingLimit is the OnClose cause when a connection's unsent bytes passed
	// Options.MaxPending and the write was refused.
	ErrPendingLimit = errors.New("poller: pending write limit exceeded")
)

// Handler receives a connection's events. Every method is called on the goroutine
// of the loop that owns the connection and must not block: a blocked callback
// stalls every connection on that loop.
type Handler interface {
	// OnOpen is called once when a connection is accepted or a dial completes.
	OnOpen(c *Conn)
	// OnData is called with the connection's unconsumed input: the tail kept from
	// earlier calls followed by the bytes just read. data may be modified in place
	// but is valid only during the call. OnData returns how many bytes it consumed;
	// the rest is kept in a pooled buffer and presented again, first, on the next
	// call. Returning len(data) leaves the connection holding no input buffer.
	OnData(c *Conn, data []byte) int
	// OnWritable is called when a connection's queued output has been flushed
	// completely after a partial write (it had pending bytes and now has none).
	OnWritable(c *Conn)
	// OnClose is called once when the connection is closed, with the cause: nil for
	// a local Close, ErrPeerClosed, ErrPendingLimit, or a socket error.
	OnClose(c *Conn, cause error)
	// OnTick is called on each loop every Options.TickInterval. It is where
	// per-connection deadlines are swept, instead of a timer per connection.
	OnTick(l *Loop, now time.Time)
}

// Options configures a Poller. The zero value works.
type Options struct {
	// Loops is the number of event loops. If zero, GOMAXPROCS is used.
	Loops int
	// ReadBufferSize is the size of each loop's shared read buffer. If zero,
	// DefaultReadBufferSize is used.
	ReadBufferSize int
	// MaxPending bounds a connection's queued, unsent bytes. A write that would pass
	// it fails with ErrPendingLimit and leaves the queue as it was. If zero, there
	// is no bound.
	MaxPending int
	// TickInterval is how often Handler.OnTick runs on each loop. If zero,
	// DefaultTickInterval is used.
	TickInterval time.Duration
	// NoDelay sets TCP_NODELAY on every connection, as WebSocket traffic is made of
	// small messages that must not wait for Nagle's algorithm.
	NoDelay bool
}

// Defaults for Options.
const (
	DefaultReadBufferSize = 64 << 10
	DefaultTickInterval   = time.Second
)

// Frame is an immutable, reference-counted byte slice that can be queued on many
// connections at once without a copy: a broadcast encodes its frame once and every
// member's output queue points at the same bytes. The bytes return to a pool when
// the last reference is released.
type Frame struct {
	refs atomic.Int32
	buf  *bytebufferpool.ByteBuffer
}

var (
	frameBufs bytebufferpool.Pool
	frames    = sync.Pool{New: func() any { return new(Frame) }}
)

// NewFrame returns a frame holding one reference, with an empty pooled buffer for
// the caller to fill through Buffer before sharing it. Frames and their bytes
// are pooled, so a broadcast allocates nothing once the pools are warm.
func NewFrame() *Frame {
	f := frames.Get().(*Frame)
	f.buf = frameBufs.Get()
	f.refs.Store(1)
	return f
}

// Buffer is the frame's byte buffer. It may be written only before the frame is
// shared.
func (f *Frame) Buffer() *bytebufferpool.ByteBuffer { return f.buf }

// Bytes returns the frame's contents.
func (f *Frame) Bytes() []byte { return f.buf.B }

// Retain adds a reference.
func (f *Frame) Retain() { f.refs.Add(1) }

// Release drops a reference; the last one returns the bytes to the pool.
func (f *Frame) Release() {
	switch n := f.refs.Add(-1); {
	case n == 0:
		frameBufs.Put(f.buf)
		f.buf = nil
		frames.Put(f)
	case n < 0:
		panic("poller: frame released too many times")
	}
}

// Stats are a poller's counters, read without stopping the loops.
type Stats struct {
	Conns    []int64 // open connections per loop
	Accepted uint64
	Dialed   uint64
	Closed   uint64
}
