// Package handoff moves a running server's live connections to a new process,
// for an upgrade its clients never notice. The old process starts the new one
// with one end of a Unix socket pair, and over it sends, with SCM_RIGHTS, the
// listening sockets and then every connection's descriptor with its state,
// in batches the new process acknowledges one by one. Only when the new
// process has acknowledged every batch and the commit does it start reading
// and writing them; until then the old process can take everything back.
//
// The package knows nothing of WebSocket: a Source (the old server) exports
// opaque batches and a Sink (the new one) imports them. It owns the framing,
// the descriptors' passage, the order of the steps, the timeouts and the
// rollback rule.
//
// The protocol, old → new and new → old on one stream socket:
//
//	old: hello{version}                 new: ready{version, pid} | refuse{reason}
//	old: listeners{names} + fds         new: ack
//	old: state{part, format, last, chunk} (×n)   new: ack | refuse{reason}
//	old: batch{records} + fds (×n)      new: ack{n} | refuse{reason}
//	old: commit                         new: (prepare) committed, then thaws
//	                                    and accepts | refuse{reason}
//
// The state messages carry the application's state that is not any one
// connection's (the rooms' history, a cluster node's place in its streams),
// part by part, each in chunks of a bounded size, and each part under a
// format number of its own: a process that does not read a part's format,
// or does not know the part, refuses the handoff, and the old process keeps
// everything (StatePart).
//
// Each message is an 8-byte header (type, descriptor count, payload length)
// sent with its descriptors in one sendmsg, then the payload.
package handoff

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the handoff protocol's version, state formats included. The
// two processes must agree on it; on a mismatch the new process refuses and
// the old one keeps its connections.
const Version = 1

// EnvFD names the environment variable that tells a new process which of its
// descriptors is the handoff socket.
const EnvFD = "THRONG_HANDOFF_FD"

// maxFDs is how many descriptors one message carries: the kernel's
// SCM_MAX_FD.
const maxFDs = 253

// MaxBatchConns is the most connections in one batch: one descriptor each.
const MaxBatchConns = maxFDs

// maxPayload bounds a message's payload, so a corrupt header cannot make the
// reader allocate without end. A batch's records are bounded by the sender's
// byte budget plus one connection's output (at most --max-pending).
const maxPayload = 1 << 30

// Message types.
const (
	msgHello     = 1
	msgReady     = 2
	msgRefuse    = 3
	msgListeners = 4
	msgBatch     = 5
	msgAck       = 6
	msgCommit    = 7
	msgCommitted = 8
	msgState     = 9
)

// Errors.
var (
	// ErrInProgress is returned by Upgrader.Upgrade while another runs.
	ErrInProgress = errors.New("handoff: an upgrade is already in progress")
	// ErrRefused is wrapped by the error of a handoff the new process refused.
	ErrRefused = errors.New("handoff: refused by the new process")
	// ErrVersion is wrapped by the error of a handoff between processes of
	// different protocol versions.
	ErrVersion = errors.New("handoff: protocol version mismatch")
	// ErrStateFormat is wrapped by the error of a handoff whose application
	// state the new process cannot read: a part of another format, or one it
	// does not know.
	ErrStateFormat = errors.New("handoff: application state format mismatch")
)

// Conn is one end of the handoff socket.
type Conn struct {
	uc  *net.UnixConn
	hdr [8]byte
	oob []byte
}

// NewConn wraps a connected Unix stream socket's descriptor; the Conn owns it.
func NewConn(fd int) (*Conn, error) {
	f := os.NewFile(uintptr(fd), "handoff")
	defer f.Close()
	nc, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("handoff: socket %d: %w", fd, err)
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		nc.Close()
		return nil, fmt.Errorf("handoff: descriptor %d is not a Unix socket", fd)
	}
	return &Conn{uc: uc, oob: make([]byte, unix.CmsgSpace(maxFDs*4))}, nil
}

// Pair returns two connected Conns, for a handoff within one process (tests).
func Pair() (*Conn, *Conn, error) {
	fds, err := socketpair()
	if err != nil {
		return nil, nil, fmt.Errorf("handoff: socketpair: %w", err)
	}
	a, err := NewConn(fds[0])
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	b, err := NewConn(fds[1])
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// FromEnv returns the handoff socket named by EnvFD, and false when the
// process was not started for a handoff. It clears the variable, so that
// a process this one starts does not inherit it.
func FromEnv() (*Conn, bool, error) {
	v, ok := os.LookupEnv(EnvFD)
	if !ok {
		return nil, false, nil
	}
	os.Unsetenv(EnvFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, true, fmt.Errorf("handoff: %s=%q is not a descriptor", EnvFD, v)
	}
	unix.CloseOnExec(fd)
	c, err := NewConn(fd)
	return c, true, err
}

// Close closes the socket.
func (c *Conn) Close() error { return c.uc.Close() }

// send writes one message with its descriptors, which stay the caller's.
func (c *Conn) send(deadline time.Time, typ byte, fds []int, payload []byte) error {
	if len(fds) > maxFDs {
		return fmt.Errorf("handoff: %d descriptors in one message", len(fds))
	}
	c.uc.SetWriteDeadline(deadline)
	c.hdr[0] = typ
	c.hdr[1] = byte(len(fds))
	binary.BigEndian.PutUint16(c.hdr[2:4], 0)
	binary.BigEndian.PutUint32(c.hdr[4:8], uint32(len(payload)))
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.uc.WriteMsgUnix(c.hdr[:], oob, nil)
	if err != nil {
		return fmt.Errorf("handoff: send: %w", err)
	}
	if n < len(c.hdr) {
		if _, err := c.uc.Write(c.hdr[n:]); err != nil {
			return fmt.Errorf("handoff: send: %w", err)
		}
	}
	if len(payload) > 0 {
		if _, err := c.uc.Write(payload); err != nil {
			return fmt.Errorf("handoff: send: %w", err)
		}
	}
	return nil
}

// recv reads one message: its type, the descriptors it carried (now this
// process's; the caller owns them) and its payload, read into buf's storage.
func (c *Conn) recv(deadline time.Time, buf []byte) (typ byte, fds []int, payload []byte, err error) {
	c.uc.SetReadDeadline(deadline)
	got := 0
	for got < len(c.hdr) {
		n, oobn, _, _, err := c.uc.ReadMsgUnix(c.hdr[got:], c.oob)
		if oobn > 0 {
			more, perr := parseRights(c.oob[:oobn])
			fds = append(fds, more...)
			if perr != nil {
				closeAll(fds)
				return 0, nil, nil, perr
			}
		}
		if err != nil {
			closeAll(fds)
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, nil, fmt.Errorf("handoff: receive: %w", err)
		}
		if n == 0 {
			closeAll(fds)
			return 0, nil, nil, fmt.Errorf("handoff: receive: %w", io.ErrUnexpectedEOF)
		}
		got += n
	}
	typ = c.hdr[0]
	if int(c.hdr[1]) != len(fds) {
		closeAll(fds)
		return 0, nil, nil, fmt.Errorf("handoff: message of type %d announced %d descriptors, carried %d", typ, c.hdr[1], len(fds))
	}
	size := binary.BigEndian.Uint32(c.hdr[4:8])
	if size > maxPayload {
		closeAll(fds)
		return 0, nil, nil, fmt.Errorf("handoff: message of %d bytes", size)
	}
	if cap(buf) < int(size) {
		buf = make([]byte, size)
	}
	payload = buf[:size]
	if _, err := io.ReadFull(c.uc, payload); err != nil {
		closeAll(fds)
		return 0, nil, nil, fmt.Errorf("handoff: receive: %w", err)
	}
	return typ, fds, payload, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("handoff: control message: %w", err)
	}
	var fds []int
	for i := range msgs {
		more, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			closeAll(fds)
			return nil, fmt.Errorf("handoff: control message: %w", err)
		}
		for _, fd := range more {
			unix.CloseOnExec(fd)
		}
		fds = append(fds, more...)
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// Listener is a listening socket to hand over, by name ("ws", "http").
type Listener struct {
	Name string
	FD   int
}

// Source is the old process's side: the server whose connections move.
type Source interface {
	// Freeze stops accepting and freezes every connection.
	Freeze() error
	// Listeners are the listening sockets' descriptors (duplicates the
	// handoff closes once sent).
	Listeners() ([]Listener, error)
	// Export fills the next batch: records and their descriptors (the
	// source's own, kept until Commit), at most MaxBatchConns, and reports
	// whether it was the last.
	Export(dst []byte, fds []int) (data []byte, outFDs []int, conns int, done bool, err error)
	// Rollback takes every connection back after a failed handoff.
	Rollback()
	// Commit lets go of every connection: the new process owns them.
	Commit()
}

// Sink is the new process's side.
type Sink interface {
	// AdoptListener takes a listening socket; the sink owns fd.
	AdoptListener(name string, fd int) error
	// Import adopts a batch, frozen; the sink owns the descriptors.
	Import(data []byte, fds []int) (int, error)
	// Activate thaws every imported connection and starts accepting.
	Activate()
	// Abandon lets go of everything imported, after a failed handoff.
	Abandon()
}

// StatePart is one part of the old process's application state: state that
// is no single connection's, such as the rooms' history. It moves after the
// listeners and before the connections, in chunks the new process
// acknowledges one by one. Export is called after Source.Freeze, so what it
// reads no longer changes; it must not change it either: on a rollback the
// old process goes on with it.
type StatePart struct {
	// Name names the part; the new process must have an importer of it.
	Name string
	// Format is the version of the part's encoding. A new process that reads
	// another refuses the handoff rather than misread it.
	Format uint32
	// Export appends the next chunk to dst, about max bytes (at least one
	// whole item, however big), and reports whether it was the last.
	Export func(dst []byte, max int) (data []byte, last bool, err error)
}

// StateImporter takes one part of the application state in the new process.
type StateImporter struct {
	Name   string
	Format uint32
	// Import takes one chunk, in order; last marks the part's last chunk. An
	// error refuses the handoff.
	Import func(chunk []byte, last bool) error
}

// StateSource is a Source with application state to hand over.
type StateSource interface {
	Source
	// State lists the parts, in the order they move. Called once, after Freeze.
	State() []StatePart
}

// StateSink is a Sink that takes application state. A part the old process
// sends and the sink has no importer for refuses the handoff.
type StateSink interface {
	Sink
	StateImporters() []StateImporter
}

// Preparer is a Sink with a last check before the commit: an error refuses
// the handoff, and the old process keeps everything.
type Preparer interface {
	Prepare() error
}

// DefaultStateChunk bounds a state chunk, besides its last item.
const DefaultStateChunk = 1 << 20

// Result describes a finished handoff.
type Result struct {
	Conns    int           // connections handed over
	Batches  int           // batches sent
	Bytes    int64         // state bytes sent
	MaxBatch int           // the largest batch's state bytes
	Frozen   time.Duration // from the freeze to the commit's acknowledgement
	// StateBytes and StateChunks are the application state sent.
	StateBytes  int64
	StateChunks int
}

// SendOptions bound the old side's waits.
type SendOptions struct {
	// ReadyTimeout bounds the wait for the new process to start and pass
	// its checks. If zero, 30s.
	ReadyTimeout time.Duration
	// StepTimeout bounds the wait for each acknowledgement. If zero, 10s.
	StepTimeout time.Duration
	// Version is the version announced; if zero, Version. Tests set another.
	Version uint32
	// StateChunk bounds a state chunk, besides its last item. If zero,
	// DefaultStateChunk.
	StateChunk int
	// Stop is called on a failure after the freeze, before the rollback:
	// it must make sure the new process can no longer touch a connection
	// (kill it and wait). If nil, the socket is closed.
	Stop func()
}

// Send hands src's listeners and connections over c to the process at its
// other end. On success the connections are the new process's and
// src.Commit has run; on an error every connection is src's again
// (src.Rollback has run) unless the error came before the freeze.
func Send(ctx context.Context, c *Conn, src Source, o SendOptions) (res Result, err error) {
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 30 * time.Second
	}
	if o.StepTimeout <= 0 {
		o.StepTimeout = 10 * time.Second
	}
	if o.Version == 0 {
		o.Version = Version
	}
	step := func(d time.Duration) time.Time {
		t := time.Now().Add(d)
		if dl, ok := ctx.Deadline(); ok && dl.Before(t) {
			return dl
		}
		return t
	}
	var buf []byte
	hello := binary.BigEndian.AppendUint32(nil, o.Version)
	hello = binary.BigEndian.AppendUint32(hello, uint32(os.Getpid()))
	if err := c.send(step(o.StepTimeout), msgHello, nil, hello); err != nil {
		return res, err
	}
	// The new process answers once it has built its server and passed its
	// checks; if it exits first, the socket ends.
	if _, err := expect(c, step(o.ReadyTimeout), buf, msgReady); err != nil {
		return res, fmt.Errorf("handoff: new process not ready: %w", err)
	}

	if err := src.Freeze(); err != nil {
		return res, err
	}
	start := time.Now()
	fail := func(err error) (Result, error) {
		if o.Stop != nil {
			o.Stop()
		} else {
			c.Close()
		}
		src.Rollback()
		return res, err
	}
	lns, err := src.Listeners()
	if err != nil {
		return fail(err)
	}
	var names []byte
	var lfds []int
	for _, ln := range lns {
		names = append(append(names, ln.Name...), 0)
		lfds = append(lfds, ln.FD)
	}
	err = c.send(step(o.StepTimeout), msgListeners, lfds, names)
	closeAll(lfds)
	if err != nil {
		return fail(err)
	}
	if buf, err = expect(c, step(o.StepTimeout), buf, msgAck); err != nil {
		return fail(err)
	}

	var data []byte
	if ss, ok := src.(StateSource); ok {
		chunk := o.StateChunk
		if chunk <= 0 {
			chunk = DefaultStateChunk
		}
		for _, p := range ss.State() {
			for last := false; !last; {
				var e Enc
				e.String(p.Name)
				e.Uint(uint64(p.Format))
				mark := len(e.B)
				e.Bool(false)
				if e.B, last, err = p.Export(e.B, chunk); err != nil {
					return fail(fmt.Errorf("handoff: state %q: %w", p.Name, err))
				}
				if last {
					e.B[mark] = 1
				}
				if err := c.send(step(o.StepTimeout), msgState, nil, e.B); err != nil {
					return fail(err)
				}
				if buf, err = expect(c, step(o.StepTimeout), buf, msgAck); err != nil {
					return fail(err)
				}
				res.StateChunks++
				res.StateBytes += int64(len(e.B))
			}
		}
	}
	var fds []int
	for done := false; !done; {
		var n int
		data, fds, n, done, err = src.Export(data[:0], fds[:0])
		if err != nil {
			return fail(err)
		}
		if n == 0 && done && res.Batches > 0 {
			break
		}
		if err := c.send(step(o.StepTimeout), msgBatch, fds, data); err != nil {
			return fail(err)
		}
		if buf, err = expect(c, step(o.StepTimeout), buf, msgAck); err != nil {
			return fail(err)
		}
		if len(buf) < 4 || int(binary.BigEndian.Uint32(buf)) != n {
			return fail(fmt.Errorf("handoff: batch %d: the new process adopted a different count", res.Batches))
		}
		res.Batches++
		res.Conns += n
		res.Bytes += int64(len(data))
		res.MaxBatch = max(res.MaxBatch, len(data))
	}
	if err := c.send(step(o.StepTimeout), msgCommit, nil, nil); err != nil {
		return fail(err)
	}
	if _, err := expect(c, step(o.StepTimeout), buf, msgCommitted); err != nil {
		// The new process may have sent committed and begun serving just
		// as the wait ended. Once Stop has made sure it is gone, what it
		// sent is all in the socket: if committed is there, it wrote to
		// the connections, and taking them back could repeat its bytes.
		if o.Stop != nil {
			o.Stop()
			o.Stop = nil
			if _, lerr := expect(c, time.Now().Add(100*time.Millisecond), buf, msgCommitted); lerr == nil {
				src.Commit()
				return res, fmt.Errorf("handoff: the new process committed, then died: %w", err)
			}
		}
		return fail(err)
	}
	res.Frozen = time.Since(start)
	src.Commit()
	return res, nil
}

// expect reads the next message and checks its type; a refusal becomes an
// error with the new process's reason.
func expect(c *Conn, deadline time.Time, buf []byte, want byte) ([]byte, error) {
	typ, fds, payload, err := c.recv(deadline, buf)
	closeAll(fds)
	if err != nil {
		return nil, err
	}
	switch {
	case typ == msgRefuse:
		return nil, fmt.Errorf("%w: %s", ErrRefused, payload)
	case typ != want:
		return nil, fmt.Errorf("handoff: message of type %d, expected %d", typ, want)
	}
	return payload, nil
}

// ReceiveOptions configure the new side.
type ReceiveOptions struct {
	// StepTimeout bounds the wait for each message of the old process. If
	// zero, 30s.
	StepTimeout time.Duration
	// Version is this process's; if zero, Version.
	Version uint32
}

// Receive takes the old process's listeners and connections into sink, and
// activates them once the old process commits. Call it once the new process
// is ready to serve (its checks passed): the old process waits for that. On
// an error, sink.Abandon has run and the old process keeps everything.
func Receive(c *Conn, sink Sink, o ReceiveOptions) (res Result, err error) {
	if o.StepTimeout <= 0 {
		o.StepTimeout = 30 * time.Second
	}
	if o.Version == 0 {
		o.Version = Version
	}
	step := func() time.Time { return time.Now().Add(o.StepTimeout) }
	refuse := func(err error) (Result, error) {
		sink.Abandon()
		c.send(step(), msgRefuse, nil, []byte(err.Error()))
		return res, err
	}
	payload, err := expect(c, step(), nil, msgHello)
	if err != nil {
		sink.Abandon()
		return res, err
	}
	if len(payload) < 4 {
		return refuse(fmt.Errorf("handoff: short hello"))
	}
	if v := binary.BigEndian.Uint32(payload); v != o.Version {
		return refuse(fmt.Errorf("%w: the old process speaks version %d, this one %d", ErrVersion, v, o.Version))
	}
	ready := binary.BigEndian.AppendUint32(nil, o.Version)
	ready = binary.BigEndian.AppendUint32(ready, uint32(os.Getpid()))
	if err := c.send(step(), msgReady, nil, ready); err != nil {
		sink.Abandon()
		return res, err
	}
	var buf []byte
	start := time.Now()
	var importers map[string]StateImporter
	if ss, ok := sink.(StateSink); ok {
		importers = make(map[string]StateImporter)
		for _, im := range ss.StateImporters() {
			importers[im.Name] = im
		}
	}
	for {
		typ, fds, payload, err := c.recv(step(), buf)
		if err != nil {
			sink.Abandon()
			return res, err
		}
		buf = payload[:0]
		switch typ {
		case msgListeners:
			names := splitNames(payload)
			if len(names) != len(fds) {
				closeAll(fds)
				return refuse(fmt.Errorf("handoff: %d listener names for %d descriptors", len(names), len(fds)))
			}
			for i, name := range names {
				if err := sink.AdoptListener(name, fds[i]); err != nil {
					closeAll(fds[i+1:])
					return refuse(err)
				}
			}
			if err := c.send(step(), msgAck, nil, nil); err != nil {
				sink.Abandon()
				return res, err
			}
		case msgBatch:
			n, err := sink.Import(payload, fds)
			if err != nil {
				return refuse(err)
			}
			res.Batches++
			res.Conns += n
			res.Bytes += int64(len(payload))
			res.MaxBatch = max(res.MaxBatch, len(payload))
			if err := c.send(step(), msgAck, nil, binary.BigEndian.AppendUint32(nil, uint32(n))); err != nil {
				sink.Abandon()
				return res, err
			}
		case msgState:
			closeAll(fds)
			if err := importState(importers, payload); err != nil {
				return refuse(err)
			}
			res.StateChunks++
			res.StateBytes += int64(len(payload))
			if err := c.send(step(), msgAck, nil, nil); err != nil {
				sink.Abandon()
				return res, err
			}
		case msgCommit:
			if p, ok := sink.(Preparer); ok {
				if err := p.Prepare(); err != nil {
					return refuse(err)
				}
			}
			// Committed goes out before anything is thawed: until the old
			// process reads it, it may still take everything back, and
			// this process must not have written a byte.
			if err := c.send(step(), msgCommitted, nil, nil); err != nil {
				sink.Abandon()
				return res, err
			}
			sink.Activate()
			res.Frozen = time.Since(start)
			return res, nil
		default:
			closeAll(fds)
			return refuse(fmt.Errorf("handoff: unexpected message of type %d", typ))
		}
	}
}

// importState hands one state chunk to its part's importer.
func importState(importers map[string]StateImporter, payload []byte) error {
	d := Dec{B: payload}
	name := d.String()
	format := d.Uint()
	last := d.Bool()
	if d.Err() != nil {
		return fmt.Errorf("handoff: state chunk: %w", d.Err())
	}
	im, ok := importers[name]
	switch {
	case !ok:
		return fmt.Errorf("%w: the old process sends state %q, which this process does not take", ErrStateFormat, name)
	case format != uint64(im.Format):
		return fmt.Errorf("%w: state %q of format %d, this process reads %d", ErrStateFormat, name, format, im.Format)
	}
	if err := im.Import(d.B, last); err != nil {
		return fmt.Errorf("handoff: state %q: %w", name, err)
	}
	return nil
}

func splitNames(b []byte) []string {
	var names []string
	for len(b) > 0 {
		i := 0
		for i < len(b) && b[i] != 0 {
			i++
		}
		names = append(names, string(b[:i]))
		if i == len(b) {
			break
		}
		b = b[i+1:]
	}
	return names
}
