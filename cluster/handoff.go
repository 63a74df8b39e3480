package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/throng-ws/throng/handoff"
)

// A node's process hands its connections to a new one in a zero-downtime
// upgrade (package handoff); the node stays the same node to the others:
//
//   - Before it starts the successor, the old process subscribes to every
//     room's subject too (Watch), so that its table of the last message
//     delivered of each other node covers every message the successor will
//     see, even of a room that gets its first member here meanwhile.
//   - The successor is started with the node's id and incarnation
//     (TakeoverEnv), and made with Options.Takeover: it connects and learns
//     the others' counts from their state streams, but publishes nothing, and
//     its inbound delivery waits. Standby makes sure it has every live node's
//     counts whole, then subscribes to every room's subject (PREFIX.room.*),
//     before the old process freezes anything.
//   - The old process, its connections frozen, pauses (the "cluster" part of
//     the handoff's state): its inbound goroutine delivers what the broker
//     had sent it, then holds the rest; its history consumer stops
//     delivering; its publishers empty their queues; its worker announces
//     the last count changes and stops publishing. The part carries the
//     node's place in every sequence: the state stream's last number, its
//     room messages' last number, the last message of each other node it
//     delivered, and the history stream's last delivered sequence.
//   - The successor imports it, then the connections, whose rooms it takes
//     without announcing them. At the commit it checks that its queue lost
//     nothing, and at Activate it goes on from exactly there: the room
//     messages queued since it subscribed that the old process had not
//     delivered (by origin and sequence number; copies and its own node's
//     are dropped), the history stream after the old position, the state
//     stream with the next number (a snapshot, the same counts). The others
//     see one node whose sequences never broke: no leave, no join, no new
//     incarnation.
//   - The old process then closes its broker connection without a goodbye
//     (Retire); on a failed handoff it resumes instead (Resume): it delivers
//     what it held, and publishes again.

// TakeoverEnv names the environment variable that gives a successor its
// predecessor's node id and incarnation: "<id> <incarnation>".
const TakeoverEnv = "THRONG_HANDOFF_NODE"

// HandoffFormat is the version of the "cluster" state part.
const HandoffFormat = 1

// Takeover makes a node the successor of a process of the same node.
type Takeover struct {
	// Inc is the predecessor's incarnation, which the successor keeps.
	Inc uint64
}

// TakeoverValue is TakeoverEnv's value for a successor of this node.
func (n *Node) TakeoverValue() string { return origin{n.id, n.inc}.String() }

// ParseTakeover reads TakeoverEnv's value.
func ParseTakeover(v string) (id string, t *Takeover, err error) {
	o, ok := parseOrigin(v)
	if !ok || o.inc == 0 || CheckNodeID(o.node) != nil {
		return "", nil, fmt.Errorf("cluster: %s=%q is not \"<node id> <incarnation>\"", TakeoverEnv, v)
	}
	return o.node, &Takeover{Inc: o.inc}, nil
}

// Inc is the node's incarnation.
func (n *Node) Inc() uint64 { return n.inc }

// handoffStep bounds each wait of a pause.
const handoffStep = 10 * time.Second

// catchAllGrace is how long a successor keeps its subscription to every room
// after its rooms' own are in place.
const catchAllGrace = time.Second

// Standby readies a successor for the handoff: it waits until it has heard
// every live node (a heartbeat) and holds each one's counts whole, then
// subscribes to every room's subject, and returns once the broker has the
// subscription: from then on every room message reaches this process, and
// the old one may pause. It returns ctx's error if the counts are not whole
// in time, or the broker's.
func (n *Node) Standby(ctx context.Context) error {
	if !n.standby.Load() {
		return errors.New("cluster: not a successor")
	}
	t := time.NewTimer(n.opts.Heartbeat + n.opts.Heartbeat/2)
	select {
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	case <-t.C:
	}
	for {
		whole := n.connected.Load()
		for _, p := range n.peers.status(time.Now()) {
			whole = whole && p.Synced
		}
		if whole {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: the other nodes' counts are not whole yet: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return n.Watch(ctx)
}

// Watch subscribes the node to every room's subject, and returns once the
// broker has the subscription. A process about to hand over calls it before
// it starts its successor (which does the same in Standby): every room
// message the successor will see, this process sees too and numbers in its
// dedupe table, so the successor delivers exactly those this one did not,
// even of a room whose first member here joined meanwhile. The copies
// of the rooms with members here are dropped by their sequence numbers, and
// the other rooms' messages unread.
func (n *Node) Watch(ctx context.Context) error {
	n.imu.Lock()
	if n.wild != nil {
		n.imu.Unlock()
		return nil
	}
	sub, err := n.nc.ChanSubscribe(n.wildSubj, n.in)
	if err != nil {
		n.imu.Unlock()
		return fmt.Errorf("cluster: %w", err)
	}
	n.wild = sub
	n.imu.Unlock()
	if err := n.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	return nil
}

// Unwatch ends Watch, after a failed handoff.
func (n *Node) Unwatch() {
	n.imu.Lock()
	defer n.imu.Unlock()
	if n.wild != nil && !n.standby.Load() {
		n.wild.Unsubscribe()
		n.wild = nil
	}
}

// onWorker runs f on the worker goroutine and waits for it.
func (n *Node) onWorker(f func()) error { return n.run(n.workCtl, f) }

// onInbound runs f on the inbound goroutine and waits for it.
func (n *Node) onInbound(f func()) error { return n.run(n.inCtl, f) }

func (n *Node) run(ch chan func(), f func()) error {
	done := make(chan struct{})
	t := time.NewTimer(handoffStep)
	defer t.Stop()
	select {
	case ch <- func() { f(); close(done) }:
	case <-n.bg.Quit():
		return ErrClosed
	case <-t.C:
		return errors.New("cluster: a goroutine of the node did not answer")
	}
	<-done
	return nil
}

// pauseState is what the old process hands over: its place in every
// sequence.
type pauseState struct {
	stateSeq, pubSeq, histPos uint64
	seen                      map[string]originSeq
}

// pause stops the node's deliveries and publishing for a handoff and returns
// its place. On an error, Resume undoes what was paused.
func (n *Node) pause() (pauseState, error) {
	var ps pauseState
	// What the broker sent before now is in the queue once the flush is
	// answered; the inbound goroutine delivers it, then holds the rest.
	ctx, cancel := context.WithTimeout(context.Background(), handoffStep)
	defer cancel()
	if n.connected.Load() {
		if err := n.nc.FlushWithContext(ctx); err != nil {
			return ps, fmt.Errorf("cluster: pause: %w", err)
		}
	}
	err := n.onInbound(func() {
		for k := len(n.in); k > 0; k-- {
			n.onRoomMsg(<-n.in, false)
		}
		n.inPaused = true
		ps.seen = make(map[string]originSeq, len(n.seen))
		for k, v := range n.seen {
			ps.seen[k] = v
		}
	})
	if err != nil {
		return ps, err
	}
	if n.h != nil {
		if ps.histPos, err = n.histPause(ctx); err != nil {
			return ps, err
		}
	}
	// Every room message queued is published before the number is read;
	// none is taken after: the successor numbers the next.
	n.pubPaused.Store(true)
	barrier := make(chan struct{})
	select {
	case n.out <- outMsg{barrier: barrier}:
	case <-ctx.Done():
		return ps, errors.New("cluster: pause: the publisher's queue did not move")
	}
	select {
	case <-barrier:
	case <-ctx.Done():
		return ps, errors.New("cluster: pause: the publisher did not empty its queue")
	}
	ps.pubSeq = n.pubSeq.Load()
	if n.connected.Load() {
		if err := n.nc.FlushWithContext(ctx); err != nil {
			return ps, fmt.Errorf("cluster: pause: %w", err)
		}
	}
	err = n.onWorker(func() {
		n.flushDirty() // the last count changes, with this process's numbers
		n.wPaused = true
		ps.stateSeq = n.seq
	})
	return ps, err
}

// Resume undoes a pause after a failed handoff: the node delivers what it
// held meanwhile, its history consumer goes on from where it stopped, and it
// publishes again (a heartbeat at once).
func (n *Node) Resume() {
	n.pubPaused.Store(false)
	n.onInbound(func() {
		if !n.inPaused {
			return
		}
		n.inPaused = false
		held := n.held
		n.held = nil
		for _, m := range held {
			if m != nil {
				n.onRoomMsg(m, false)
			}
		}
	})
	if n.h != nil {
		n.histResume()
	}
	n.onWorker(func() {
		if !n.wPaused {
			return
		}
		n.wPaused = false
		n.heartbeat()
	})
	n.log.Info("cluster: resumed after a failed handoff")
}

// Retire leaves the broker after a committed handoff, without a goodbye and
// without publishing anything more: the successor is this node now.
func (n *Node) Retire() {
	n.Close()
	n.log.Info("cluster: handed over to the new process")
}

// HandoffPart is the node's part of a handoff's state (the old process's
// side): exporting it pauses the node.
func (n *Node) HandoffPart() handoff.StatePart {
	return handoff.StatePart{Name: "cluster", Format: HandoffFormat,
		Export: func(dst []byte, _ int) ([]byte, bool, error) {
			ps, err := n.pause()
			if err != nil {
				return dst, true, err
			}
			e := handoff.Enc{B: dst}
			e.String(n.id)
			e.Uint(n.inc)
			e.Uint(ps.stateSeq)
			e.Uint(ps.pubSeq)
			e.Bool(n.h != nil)
			e.Uint(ps.histPos)
			e.Uint(uint64(len(ps.seen)))
			for node, s := range ps.seen {
				e.String(node)
				e.Uint(s.inc)
				e.Uint(s.seq)
			}
			return e.B, true, nil
		}}
}

// HandoffImporter takes the "cluster" part (the successor's side).
func (n *Node) HandoffImporter() handoff.StateImporter {
	return handoff.StateImporter{Name: "cluster", Format: HandoffFormat, Import: n.importPause}
}

func (n *Node) importPause(chunk []byte, _ bool) error {
	if !n.standby.Load() {
		return errors.New("cluster: this process was not started as the node's successor")
	}
	d := handoff.Dec{B: chunk}
	id, inc := d.String(), d.Uint()
	stateSeq, pubSeq := d.Uint(), d.Uint()
	hist, histPos := d.Bool(), d.Uint()
	k := d.Uint()
	if d.Err() != nil || k > uint64(len(d.B)) {
		return fmt.Errorf("cluster: %w", handoff.ErrCorrupt)
	}
	if id != n.id || inc != n.inc {
		return fmt.Errorf("cluster: the old process is node %q incarnation %d, this one %q %d", id, inc, n.id, n.inc)
	}
	if hist != (n.h != nil) {
		return fmt.Errorf("cluster: history in JetStream is %v in the old process, %v in this one", hist, n.h != nil)
	}
	seen := make(map[string]originSeq, k)
	for ; k > 0; k-- {
		node, s := d.String(), originSeq{d.Uint(), d.Uint()}
		if d.Err() != nil {
			return fmt.Errorf("cluster: %w", handoff.ErrCorrupt)
		}
		seen[node] = s
	}
	// The inbound goroutine and the worker wait for Activate, and the
	// publisher has published nothing: these are read only after.
	n.seen = seen
	err := n.onWorker(func() { n.seq = stateSeq })
	n.pubSeq.Store(pubSeq)
	if n.h != nil {
		n.h.pos.Store(histPos)
		n.h.posSet.Store(true)
	}
	return err
}

// CheckTakeover is the successor's last check before the commit: the room
// messages that came while it waited must all be in its queue.
func (n *Node) CheckTakeover() error {
	n.imu.Lock()
	wild := n.wild
	n.imu.Unlock()
	if wild == nil {
		return errors.New("cluster: the successor never subscribed to the rooms (Standby)")
	}
	if d, err := wild.Dropped(); err != nil || d > 0 {
		return fmt.Errorf("cluster: %d room messages did not fit the inbound queue during the handoff (%v)", d, err)
	}
	if !n.connected.Load() {
		return errors.New("cluster: the successor lost the broker")
	}
	return nil
}

// Activate makes a successor this node, after the commit: it subscribes to
// its rooms, delivers what came since Standby that the old process did not,
// publishes a snapshot of its counts in the node's state stream, and goes on
// with the history stream after the old process's position.
func (n *Node) Activate() {
	if !n.standby.Load() {
		return
	}
	var seq uint64
	err := n.onWorker(func() {
		seq = n.seq + 1
		n.flushDirty() // the rooms of the last imported connections
		n.imu.Lock()
		for id, it := range n.interest {
			if it.sub != nil {
				continue
			}
			sub, err := n.nc.ChanSubscribe(n.RoomSubject(id), n.in)
			if err != nil {
				n.log.Warn("cluster: cannot subscribe to a room", "room", id, "err", err)
				continue
			}
			it.sub = sub
		}
		wild := n.wild
		n.imu.Unlock()
		n.standby.Store(false)
		close(n.activated)
		// Once the broker has the rooms' subscriptions, every message comes
		// on them too, and the catch-all can go (its copies are dropped by
		// their sequence numbers). Not at once: a message the broker matched
		// just before it had them may still be on its way to the catch-all
		// after the flush's answer, and the client drops what comes for a
		// subscription it has ended.
		if wild != nil {
			n.bg.Go(func() {
				t := time.NewTimer(catchAllGrace)
				defer t.Stop()
				select {
				case <-n.bg.Quit():
				case <-t.C:
					n.Unwatch()
				}
			})
		}
		n.publishSnapshot()
		n.heartbeat()
	})
	if err != nil {
		n.log.Warn("cluster: activation", "err", err)
	}
	if n.h != nil {
		n.histActivate()
	}
	n.log.Info("cluster: took over the node", "inc", n.inc, "state_seq", seq)
}
