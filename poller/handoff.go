package poller

import "errors"

// A handoff moves live connections to another process (package handoff):
// the old process freezes them, exports each one's descriptor with the bytes
// it holds, and the new one adopts them frozen; once the new process has them
// all, it thaws its copies and the old one detaches its own. Only the epoll
// backend supports it: netpoll owns its descriptors and buffers and offers no
// way to take them back.
//
// A frozen connection is out of its loop's epoll set: the loop neither reads
// it nor writes to its socket. Writes are still accepted (under the usual
// MaxPending rules) and queued, so whatever the process sends a frozen
// connection is in its exported output, or is sent once it thaws; CloseWrite
// is remembered and applied at thaw. Close is real: it closes this process's
// descriptor, as it would at any time.

// ErrHandoffUnsupported is returned by the handoff operations on a backend
// that cannot freeze and adopt connections (netpoll, and every backend off
// Linux).
var ErrHandoffUnsupported = errors.New("poller: connection handoff needs the epoll backend")

// HandoffState is what a frozen connection holds besides its socket: the
// input the handler has not consumed (a partial frame) and the output the
// socket has not taken, oldest first, the first segment possibly cut where
// the socket stopped taking it.
type HandoffState struct {
	// In is the unconsumed input.
	In []byte
	// Out is the unsent output, in order. Export leaves its segments
	// pointing into the connection's queue: copy them before the loop
	// goes on. Adopt takes one flat copy in Out[0].
	Out [][]byte
	// ShutdownWrite: the write side is to be shut once Out is sent.
	ShutdownWrite bool
	// Refused: a write was refused for MaxPending since OnWritable last ran,
	// so OnWritable is owed once the output drains.
	Refused bool
	// Stamp is the handler's stamp (SetStamp).
	Stamp int64
}

// OutLen is the number of bytes in Out.
func (st *HandoffState) OutLen() int {
	n := 0
	for _, b := range st.Out {
		n += len(b)
	}
	return n
}

// Frozen reports whether c is frozen for a handoff. Call it on c's loop.
func (c *Conn) Frozen() bool { return c.flags&flagFrozen != 0 }
