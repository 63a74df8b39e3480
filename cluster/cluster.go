// Package cluster runs throng as one node of many over NATS, so that a room's
// members may sit on any node and a message sent on one reaches every member on
// all of them, once. It exists apart from server so that a single node needs no
// broker and carries none of this.
//
// Three things cross the broker, each on its own subjects under Options.Prefix:
//
//   - Room traffic, on PREFIX.room.<base64url of the room id>. A node subscribes
//     to a room's subject when the room gets its first local member and
//     unsubscribes when it loses its last, so the broker sends a room's messages
//     only to the nodes that have members in it. Delivery is local first: the
//     origin writes a message to its own members through the room table and
//     publishes it once; the connection is made with NATS's no-echo option, so
//     the broker hands it to every other interested node, never back to the
//     origin. Every node encodes the frame once and fans it out with
//     room.Table.Broadcast. Each message carries its origin and its number in
//     the origin's sequence (headers), by which a node's successor in an
//     upgrade delivers exactly what its predecessor did not (handoff.go).
//   - State, on PREFIX.state: every node's heartbeats, and the changes of its
//     per-room member counts and per-user connection counts, in one sequence
//     per node. A gap in a node's sequence is loss: the heartbeats make it
//     visible within an interval (the canary), and whoever sees one asks the
//     node, on PREFIX.sync.<node>, to publish a full snapshot.
//   - Member lists, on demand: GET /api/rooms/{id}, and a room's first local
//     member (to learn who was there before), send an empty request on the
//     room's subject, and each node with members answers with its list.
//
// A node not heard from for Options.DeadAfter drops out of every count, and
// the others write a user-left for each of its members to theirs (see
// presence.go). The consistency this gives is described in
// docs/ARCHITECTURE.md.
package cluster

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/valyala/bytebufferpool"

	"github.com/throng-ws/throng/internal/bg"
	"github.com/throng-ws/throng/internal/redact"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// Options configures a Node. Only URLs is required.
type Options struct {
	// URLs are the NATS servers (nats://host:4222), tried in turn. At least one.
	URLs []string
	// NodeID names the node to the others: 1 to 64 of A-Z, a-z, 0-9, '_' and
	// '-'. If empty, a random one is made. Two live nodes must not share one.
	NodeID string
	// Prefix starts every subject: nodes with the same prefix on the same
	// broker form one cluster. Dot-separated tokens of the NodeID characters.
	// If empty, DefaultPrefix is used.
	Prefix string
	// Heartbeat is how often the node announces itself, with a sequence number
	// the others check for loss. If zero, DefaultHeartbeat is used.
	Heartbeat time.Duration
	// DeadAfter is how long a node may go unheard before it drops out of every
	// count. It must be at least twice Heartbeat. If zero, DefaultDeadAfter is
	// used.
	DeadAfter time.Duration
	// ReconnectWait is the pause between attempts to reach the broker. If zero,
	// DefaultReconnectWait is used.
	ReconnectWait time.Duration
	// OutboundQueue bounds the room messages waiting to be published; a message
	// that finds it full is lost to the other nodes, and counted. If zero,
	// DefaultOutboundQueue is used.
	OutboundQueue int
	// InboundQueue bounds the room messages received and not yet delivered; the
	// NATS client drops what does not fit, and it is counted. If zero,
	// DefaultInboundQueue is used.
	InboundQueue int
	// History, if set, keeps the rooms' messages in a JetStream stream (see
	// history.go), and the node delivers them in the stream's order. The
	// Deliverer given to Start must then be a StreamDeliverer too.
	History *HistoryOptions
	// Logger receives the node's logs. If nil, logs are discarded.
	Logger *slog.Logger
	// Conns, if set, is this node's open connections, announced with every
	// heartbeat so the others can show them (PeerStatus.Conns).
	Conns func() int
	// Takeover, if set, makes the node the successor of a process of this
	// node (same NodeID) that hands its connections over (handoff.go): it
	// keeps that process's incarnation, and stays silent until Activate.
	Takeover *Takeover
}

// Defaults for Options.
const (
	DefaultPrefix        = "throng"
	DefaultHeartbeat     = time.Second
	DefaultDeadAfter     = 15 * time.Second
	DefaultReconnectWait = time.Second
	DefaultOutboundQueue = 1 << 16
	DefaultInboundQueue  = 1 << 16
	// MaxNodeID bounds Options.NodeID, in bytes.
	MaxNodeID = 64
)

// Errors.
var (
	// ErrClosed is returned by Start after Shutdown or Close.
	ErrClosed = errors.New("cluster: closed")
	// ErrStarted is returned by a second Start.
	ErrStarted = errors.New("cluster: already started")
)

// Deliverer writes a message that another node published to a room to this
// node's members of it; *server.Chat is one. Deliver is called on the node's
// inbound goroutine and must not block.
type Deliverer interface {
	Deliver(roomID string, payload []byte) int
}

// Node is this process's membership in a cluster. It implements
// server.Cluster for the chat endpoint and server.UserConns for the
// per-user connection limit. Create it with New, start it with Start once the
// room table exists, and stop it with Shutdown or Close.
type Node struct {
	opts Options
	log  *slog.Logger
	id   string
	inc  uint64 // incarnation: when this process made the node, unix ns

	roomPrefix string // PREFIX.room.
	wildSubj   string // PREFIX.room.*
	stateSubj  string // PREFIX.state
	syncPrefix string // PREFIX.sync.
	syncSubj   string // PREFIX.sync.<id>
	actSubj    string // PREFIX.control

	// actor runs the operators' actions other nodes ask for; set by
	// HandleActions before Start, read-only after.
	actor func(ctx context.Context, action []byte) (int, error)

	// Set by Start, before any goroutine starts; read-only after.
	rooms   *room.Table
	deliver Deliverer
	nc      *nats.Conn

	peers  peerTable
	users  *server.UserCounts
	remote remoteMembers // the other nodes' members of the local rooms
	// fetches counts the member-list requests the worker started; stop
	// waits for them after the worker.
	fetches sync.WaitGroup

	// interest holds the rooms with local members and their subscriptions.
	// Written by the worker, read by the inbound goroutine (to drop what an
	// older subscription left in the queue) and by snapshots.
	imu      sync.Mutex
	interest map[string]*interest // guarded by imu

	// Rooms and users whose local counts changed, for the worker to announce.
	// Marked from the loops; the worker takes the whole set at once.
	dmu        sync.Mutex
	dirtyRooms map[string]struct{} // guarded by dmu
	dirtyUsers map[string]struct{} // guarded by dmu
	wake       chan struct{}       // capacity 1: the worker has something to do

	out   chan outMsg    // room messages to publish: loops → publisher
	in    chan *nats.Msg // room subscriptions' messages → inbound goroutine
	state chan *nats.Msg // state and sync messages → worker

	// Owned by the worker, and by Shutdown once the worker has stopped.
	seq      uint64    // the last sequence number used in the state stream
	snapWant bool      // someone asked for a snapshot
	lastSnap time.Time // when the last snapshot was published
	dupInc   uint64    // the incarnation of another node with this id, once seen

	connected atomic.Bool // set by the NATS client's callbacks
	resync    atomic.Bool // (re)connected: the worker publishes a snapshot
	closing   atomic.Bool // Publish refuses from now on
	drain     atomic.Bool // the publisher empties its queue before it stops

	started  bool          // guarded by closeMu
	closed   bool          // guarded by closeMu
	closeMu  sync.Mutex    // held by Start's and stop's checks
	bg       bg.Group      // the worker, publisher and inbound goroutines
	ncClosed chan struct{} // closed by the NATS client's closed handler

	c counters

	h *hist // nil without Options.History

	// A handoff (handoff.go). standby: this is the successor, silent until
	// Activate; activated is closed by Activate. wild is the successor's
	// subscription to every room, from Standby on (guarded by imu).
	standby   atomic.Bool
	pubPaused atomic.Bool // paused for a handoff: Publish refuses
	activated chan struct{}
	wild      *nats.Subscription
	inCtl     chan func() // run by the inbound goroutine
	workCtl   chan func() // run by the worker
	// Owned by the inbound goroutine: the last sequence number delivered of
	// each origin (dedupe at a handoff's cut), whether it is paused for a
	// handoff, and what it held meanwhile.
	seen     map[string]originSeq
	inPaused bool
	held     []*nats.Msg
	// Owned by the worker: paused for a handoff (nothing is published).
	wPaused bool
	// pubSeq numbers the room messages this incarnation published; written
	// by the publisher.
	pubSeq atomic.Uint64
}

// originSeq is the newest room message delivered of one node.
type originSeq struct{ inc, seq uint64 }

// interest is one room with local members.
type interest struct {
	sub   *nats.Subscription
	count int // local members as last announced
}

// outMsg is a room message on its way to the publisher.
type outMsg struct {
	room    string
	buf     *bytebufferpool.ByteBuffer
	barrier chan struct{} // not a message: closed by the publisher when it gets there
}

// New validates o and makes a node. It neither connects nor starts anything:
// Start does.
func New(o Options) (*Node, error) {
	if len(o.URLs) == 0 {
		return nil, errors.New("cluster: no NATS URL")
	}
	for _, u := range o.URLs {
		if strings.TrimSpace(u) == "" || strings.Contains(u, ",") {
			return nil, fmt.Errorf("cluster: bad NATS URL %q", u)
		}
	}
	if o.NodeID == "" {
		var b [8]byte
		rand.Read(b[:])
		o.NodeID = hex.EncodeToString(b[:])
	}
	if err := CheckNodeID(o.NodeID); err != nil {
		return nil, err
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	for _, tok := range strings.Split(o.Prefix, ".") {
		if !validToken(tok) {
			return nil, fmt.Errorf("cluster: bad subject prefix %q", o.Prefix)
		}
	}
	if o.Heartbeat < 0 || o.DeadAfter < 0 || o.ReconnectWait < 0 || o.OutboundQueue < 0 || o.InboundQueue < 0 {
		return nil, errors.New("cluster: negative option")
	}
	o.Heartbeat = cmp.Or(o.Heartbeat, DefaultHeartbeat)
	o.DeadAfter = cmp.Or(o.DeadAfter, DefaultDeadAfter)
	o.ReconnectWait = cmp.Or(o.ReconnectWait, DefaultReconnectWait)
	o.OutboundQueue = cmp.Or(o.OutboundQueue, DefaultOutboundQueue)
	o.InboundQueue = cmp.Or(o.InboundQueue, DefaultInboundQueue)
	if o.DeadAfter < 2*o.Heartbeat {
		return nil, fmt.Errorf("cluster: dead-after %v must be at least twice the heartbeat %v", o.DeadAfter, o.Heartbeat)
	}
	n := &Node{
		opts:       o,
		log:        o.Logger,
		id:         o.NodeID,
		inc:        uint64(time.Now().UnixNano()),
		activated:  make(chan struct{}),
		inCtl:      make(chan func()),
		workCtl:    make(chan func()),
		seen:       make(map[string]originSeq),
		roomPrefix: o.Prefix + ".room.",
		stateSubj:  o.Prefix + ".state",
		syncPrefix: o.Prefix + ".sync.",
		interest:   make(map[string]*interest),
		dirtyRooms: make(map[string]struct{}),
		dirtyUsers: make(map[string]struct{}),
		wake:       make(chan struct{}, 1),
		out:        make(chan outMsg, o.OutboundQueue),
		in:         make(chan *nats.Msg, o.InboundQueue),
		state:      make(chan *nats.Msg, 4096),
		ncClosed:   make(chan struct{}),
	}
	if o.Takeover != nil {
		if o.Takeover.Inc == 0 {
			return nil, errors.New("cluster: takeover without an incarnation")
		}
		n.inc = o.Takeover.Inc
		n.standby.Store(true)
	}
	n.syncSubj = n.syncPrefix + n.id
	n.wildSubj = n.roomPrefix + "*"
	n.actSubj = o.Prefix + ".control"
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	n.log = n.log.With("node", n.id)
	n.peers.init(n.id, o.DeadAfter)
	n.users = server.NewUserCounts()
	return n, nil
}

// CheckNodeID reports whether id can name a node: 1 to MaxNodeID of A-Z, a-z,
// 0-9, '_' and '-', so that it is one NATS subject token.
func CheckNodeID(id string) error {
	if len(id) > MaxNodeID || !validToken(id) {
		return fmt.Errorf("cluster: node id %q must be 1 to %d of A-Z a-z 0-9 _ -", id, MaxNodeID)
	}
	return nil
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ID is the node's id.
func (n *Node) ID() string { return n.id }

// Options returns the options in force, defaults filled in.
func (n *Node) Options() Options { return n.opts }

// RoomSubject is the subject of roomID's traffic. A room id is any UTF-8, so
// it is carried base64url-encoded, without padding: one token, never a '.',
// '*', '>' or space.
func (n *Node) RoomSubject(roomID string) string {
	return n.roomPrefix + base64.RawURLEncoding.EncodeToString([]byte(roomID))
}

// roomOf is the room id of a room subject.
func (n *Node) roomOf(subject string) (string, bool) {
	tok, ok := strings.CutPrefix(subject, n.roomPrefix)
	if !ok {
		return "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", false
	}
	return string(b), true
}

// Start connects to the broker and starts the node's goroutines: the worker
// (heartbeats, subscriptions, state), the publisher and the inbound delivery.
// rooms is the chat's room table and d writes other nodes' messages to its
// members. If no broker answers, Start still returns, and the node keeps
// trying in the background; until it gets through the rooms are local only.
func (n *Node) Start(rooms *room.Table, d Deliverer) error {
	n.closeMu.Lock()
	switch {
	case n.closed:
		n.closeMu.Unlock()
		return ErrClosed
	case n.started:
		n.closeMu.Unlock()
		return ErrStarted
	}
	n.started = true
	n.closeMu.Unlock()
	n.rooms, n.deliver = rooms, d

	nc, err := nats.Connect(strings.Join(n.opts.URLs, ","),
		nats.Name("throng "+n.id),
		// The origin delivers to its own members; the broker must not hand its
		// messages back (exactly once).
		nats.NoEcho(),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(n.opts.ReconnectWait),
		nats.RetryOnFailedConnect(true),
		// Nothing is buffered while the broker is away: a message published then
		// fails at once and is counted lost, rather than arriving late or not at
		// all with nobody told.
		nats.ReconnectBufSize(-1),
		// A broker that stops answering is given up on within about DeadAfter,
		// as a node would be.
		nats.PingInterval(max(n.opts.DeadAfter/4, 100*time.Millisecond)),
		nats.MaxPingsOutstanding(2),
		nats.ConnectHandler(n.onConnect),
		nats.ReconnectHandler(n.onReconnect),
		nats.DisconnectErrHandler(n.onDisconnect),
		nats.ClosedHandler(func(*nats.Conn) { close(n.ncClosed) }),
		nats.ErrorHandler(n.onAsyncError),
	)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	n.nc = nc
	n.connected.Store(nc.IsConnected())
	if !nc.IsConnected() {
		n.log.Warn("cluster: no broker reachable yet; rooms are local until one is", "urls", redactURLs(n.opts.URLs))
	}
	if _, err := nc.ChanSubscribe(n.stateSubj, n.state); err != nil {
		nc.Close()
		return fmt.Errorf("cluster: %w", err)
	}
	if _, err := nc.ChanSubscribe(n.syncSubj, n.state); err != nil {
		nc.Close()
		return fmt.Errorf("cluster: %w", err)
	}
	if n.actor != nil {
		if _, err := nc.Subscribe(n.actSubj, n.onAction); err != nil {
			nc.Close()
			return fmt.Errorf("cluster: %w", err)
		}
	}
	if n.opts.History != nil {
		sd, ok := d.(StreamDeliverer)
		if !ok {
			nc.Close()
			return errors.New("cluster: history needs a StreamDeliverer")
		}
		n.newHist(sd)
	}
	if !n.bg.Go(n.work) || !n.bg.Go(n.publish) || !n.bg.Go(n.inbound) || (n.h != nil && !n.bg.Go(n.histRun)) {
		nc.Close()
		return ErrClosed
	}
	n.log.Info("cluster: started", "urls", redactURLs(n.opts.URLs), "connected", nc.IsConnected(),
		"heartbeat", n.opts.Heartbeat, "dead_after", n.opts.DeadAfter)
	return nil
}

func redactURLs(urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = redact.String(u)
	}
	return out
}

func (n *Node) onConnect(nc *nats.Conn) {
	n.connected.Store(true)
	n.log.Info("cluster: connected to the broker", "server", nc.ConnectedUrlRedacted())
	n.resync.Store(true)
	n.poke()
}

func (n *Node) onReconnect(nc *nats.Conn) {
	n.connected.Store(true)
	n.c.reconnects.Add(1)
	n.log.Info("cluster: reconnected to the broker", "server", nc.ConnectedUrlRedacted())
	// The others may have lost our changes while we were away; they would ask,
	// but a snapshot now is quicker. The NATS client has already sent our
	// subscriptions again.
	n.resync.Store(true)
	n.poke()
}

func (n *Node) onDisconnect(_ *nats.Conn, err error) {
	n.connected.Store(false)
	if n.closing.Load() {
		return
	}
	n.c.disconnects.Add(1)
	n.log.Warn("cluster: lost the broker; rooms are local until it is back", "err", err)
}

func (n *Node) onAsyncError(_ *nats.Conn, sub *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrSlowConsumer) {
		n.log.Warn("cluster: inbound queue full; messages from the broker are being dropped", "subject", subjectOf(sub))
		return
	}
	n.log.Warn("cluster: broker error", "err", err)
}

func subjectOf(sub *nats.Subscription) string {
	if sub == nil {
		return ""
	}
	return sub.Subject
}

func (n *Node) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// Changed implements server.Cluster: the worker reads roomID's local count
// from the room table, subscribes or unsubscribes, and announces the count.
func (n *Node) Changed(roomID string) {
	n.dmu.Lock()
	n.dirtyRooms[roomID] = struct{}{}
	n.dmu.Unlock()
	n.poke()
}

// Remote implements server.Cluster.
func (n *Node) Remote(roomID string) int {
	return n.peers.room(roomID, time.Now())
}

// RemoteRooms implements server.Cluster.
func (n *Node) RemoteRooms(after string) []room.Info {
	return n.peers.list(after, time.Now())
}

// Lost reasons: why a room message did not reach the other nodes.
const (
	lostBrokerDown = iota // not connected when it was sent
	lostQueueFull         // the outbound queue was full
	lostClosed            // the node was closing
	lostError             // the broker refused it (or the connection dropped)

	numLost
)

var lostLabels = [numLost]string{"broker_down", "queue_full", "closed", "error"}

// Publish implements server.Cluster. The payload is copied into the outbound
// queue; the publisher goroutine hands it to the broker.
func (n *Node) Publish(roomID string, payload []byte) bool {
	switch {
	case n.closing.Load() || n.standby.Load() || n.pubPaused.Load():
		n.c.lost[lostClosed].Add(1)
		return false
	case !n.connected.Load():
		n.c.lost[lostBrokerDown].Add(1)
		return false
	}
	b := bytebufferpool.Get()
	b.B = append(b.B[:0], payload...)
	select {
	case n.out <- outMsg{room: roomID, buf: b}:
		return true
	default:
		bytebufferpool.Put(b)
		n.c.lost[lostQueueFull].Add(1)
		return false
	}
}

// publish is the publisher goroutine: it hands queued room messages to the
// NATS client, which batches them into its socket writes. Every message
// carries this node's origin (node and incarnation) and the next number of
// the node's sequence of room messages, in headers: a user-joined or
// user-left's origin tells the others whose member it is (presence.go), and
// the sequence lets a successor taking over this node's place in a handoff
// deliver each message exactly once (handoff.go).
func (n *Node) publish() {
	subjects := make(map[string]string) // room id → subject, so a busy room is encoded once
	seq := []string{""}
	msg := &nats.Msg{Header: nats.Header{originHeader: []string{origin{n.id, n.inc}.String()}, seqHeader: seq}}
	send := func(m outMsg) {
		if m.barrier != nil {
			close(m.barrier)
			return
		}
		subj, ok := subjects[m.room]
		if !ok {
			if len(subjects) >= 4096 {
				clear(subjects)
			}
			subj = n.RoomSubject(m.room)
			subjects[m.room] = subj
		}
		seq[0] = strconv.FormatUint(n.pubSeq.Add(1), 10)
		msg.Subject, msg.Data = subj, m.buf.B
		err := n.nc.PublishMsg(msg)
		msg.Data = nil
		if err != nil {
			if errors.Is(err, nats.ErrReconnectBufExceeded) || errors.Is(err, nats.ErrConnectionReconnecting) {
				n.c.lost[lostBrokerDown].Add(1)
			} else {
				n.c.lost[lostError].Add(1)
			}
		} else {
			n.c.published.Add(1)
		}
		bytebufferpool.Put(m.buf)
	}
	for {
		select {
		case <-n.bg.Quit():
			for n.drain.Load() {
				select {
				case m := <-n.out:
					send(m)
				default:
					return
				}
			}
			return
		case m := <-n.out:
			send(m)
		}
	}
}

// inbound is the goroutine that delivers the rooms' messages from the other
// nodes, and answers their requests for member lists. In a successor
// (Options.Takeover) it starts at Activate: what came before waits in the
// queue.
func (n *Node) inbound() {
	if n.standby.Load() {
		select {
		case <-n.bg.Quit():
			return
		case <-n.activated:
		}
		// The old process answered the requests that came meanwhile.
		for k := len(n.in); k > 0; k-- {
			n.onRoomMsg(<-n.in, true)
		}
	}
	for {
		select {
		case <-n.bg.Quit():
			return
		case f := <-n.inCtl:
			f()
		case m := <-n.in:
			n.onRoomMsg(m, false)
		}
	}
}

// onRoomMsg takes a message of a room subject; backlog: it came before this
// successor took over.
func (n *Node) onRoomMsg(m *nats.Msg, backlog bool) {
	id, ok := n.roomOf(m.Subject)
	if !ok {
		return
	}
	// The catch-all of a handoff (handoff.go), even after it ended.
	wild := m.Sub != nil && m.Sub.Subject == n.wildSubj
	n.imu.Lock()
	it := n.interest[id]
	current := it != nil && (it.sub == m.Sub || wild)
	n.imu.Unlock()
	if len(m.Data) == 0 && m.Reply != "" {
		if !backlog && !wild {
			n.answerMembers(id, m.Reply)
		}
		return
	}
	if n.inPaused {
		// A handoff is under way: the successor delivers from here on, or,
		// if it fails, this node does (Resume).
		if !current {
			n.c.stale.Add(1)
			return
		}
		if len(n.held) < n.opts.InboundQueue {
			n.held = append(n.held, m)
		} else if len(n.held) == n.opts.InboundQueue {
			// Delivered by the successor; lost here only if the handoff
			// fails.
			n.held = append(n.held, nil)
			n.log.Warn("cluster: room messages held during a handoff past the inbound queue are dropped; a rollback loses them")
		}
		return
	}
	o, seq, hasSeq := msgSeq(m)
	switch {
	case hasSeq && o.node == n.id:
		// The broker never echoes this node's messages: these are its
		// previous process's, seen by the successor, delivered already.
		n.c.stale.Add(1)
		return
	case hasSeq:
		last, ok := n.seen[o.node]
		if ok && (o.inc < last.inc || o.inc == last.inc && seq <= last.seq) {
			n.c.stale.Add(1) // delivered already (a handoff's cut), or a straggler
			return
		}
		n.seen[o.node] = originSeq{o.inc, seq}
	case wild:
		// Without a sequence a copy cannot be told apart: the room's own
		// subscription delivers it.
		n.c.stale.Add(1)
		return
	}
	if !current {
		// Left by a subscription since replaced or ended: the members it was
		// for are gone, and later ones must not get what came before them.
		n.c.stale.Add(1)
		return
	}
	if m.Header != nil && isPresence(m.Data) {
		if o, ok := parseOrigin(m.Header.Get(originHeader)); ok {
			n.remote.presence(id, o, m.Data)
		}
	}
	n.c.received.Add(1)
	n.deliver.Deliver(id, m.Data)
}

// msgSeq reads a room message's origin and sequence number.
func msgSeq(m *nats.Msg) (origin, uint64, bool) {
	if m.Header == nil {
		return origin{}, 0, false
	}
	s := m.Header.Get(seqHeader)
	if s == "" {
		return origin{}, 0, false
	}
	o, ok := parseOrigin(m.Header.Get(originHeader))
	seq, err := strconv.ParseUint(s, 10, 64)
	return o, seq, ok && err == nil
}

// membersReply is one node's answer to a member-list request; a long list comes
// in several, all but the last with More.
type membersReply struct {
	Node    string            `json:"node"`
	Inc     uint64            `json:"inc,omitempty"` // the node's incarnation
	Members []room.MemberInfo `json:"members"`
	More    bool              `json:"more,omitempty"`
}

// membersPerReply keeps a reply well under the broker's 1 MiB payload limit: a
// member is at most about 400 bytes of JSON.
const membersPerReply = 1000

func (n *Node) answerMembers(roomID, reply string) {
	members, _ := n.rooms.Members(roomID)
	for {
		part := members[:min(len(members), membersPerReply)]
		members = members[len(part):]
		b, err := json.Marshal(membersReply{Node: n.id, Inc: n.inc, Members: part, More: len(members) > 0})
		if err == nil {
			err = n.nc.Publish(reply, b)
		}
		if err != nil || len(members) == 0 {
			return
		}
	}
}

// RemoteMembers implements server.Cluster: a request on the room's subject,
// which reaches exactly the nodes subscribed to it, and the replies gathered
// until every live node that announced members in the room has answered.
func (n *Node) RemoteMembers(ctx context.Context, roomID string) ([]room.MemberInfo, bool, error) {
	var members []room.MemberInfo
	partial, err := n.gatherMembers(ctx, roomID, func(r membersReply) { members = append(members, r.Members...) })
	return members, partial, err
}

// gatherMembers sends a member-list request for roomID and hands each reply to
// fn until every live node that announced members in the room has answered or
// ctx ends (partial).
func (n *Node) gatherMembers(ctx context.Context, roomID string, fn func(membersReply)) (partial bool, err error) {
	want := n.peers.withRoom(roomID, time.Now())
	if len(want) == 0 {
		return false, nil
	}
	if n.nc == nil || !n.connected.Load() {
		return true, nil
	}
	inbox := n.nc.NewInbox()
	sub, err := n.nc.SubscribeSync(inbox)
	if err != nil {
		return true, err
	}
	defer sub.Unsubscribe()
	if err := n.nc.PublishRequest(n.RoomSubject(roomID), inbox, nil); err != nil {
		return true, err
	}
	done := make(map[string]bool)
	for len(want) > 0 {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return true, nil
		}
		var r membersReply
		if json.Unmarshal(m.Data, &r) != nil || done[r.Node] {
			// A node whose list is whole already: its process handing over
			// to a successor may answer from both for a moment.
			continue
		}
		fn(r)
		if !r.More {
			done[r.Node] = true
			delete(want, r.Node)
		}
	}
	return false, nil
}

// Acquire implements server.UserConns: user may open another connection if
// its connections here and on the other live nodes, as they last announced
// them, are fewer than max.
func (n *Node) Acquire(user string, max int) bool {
	remote := n.peers.user(user, time.Now())
	if !n.users.Acquire(user, max-remote) {
		n.c.userRefused.Add(1)
		return false
	}
	n.userChanged(user)
	return true
}

// RemoteUser is user's connections on the other live nodes, as they last
// announced them.
func (n *Node) RemoteUser(user string) int { return n.peers.user(user, time.Now()) }

// Release implements server.UserConns.
func (n *Node) Release(user string) {
	n.users.Release(user)
	n.userChanged(user)
}

func (n *Node) userChanged(user string) {
	n.dmu.Lock()
	n.dirtyUsers[user] = struct{}{}
	n.dmu.Unlock()
	n.poke()
}

// Shutdown leaves the cluster in good order: the messages already queued are
// published, the others are told the node is gone (so they drop it from their
// counts at once rather than after DeadAfter), and the connection is flushed
// and closed. Call it after the server has drained, so the leaves of its
// connections reach the others. It returns ctx's error if the broker did not
// take everything in time.
func (n *Node) Shutdown(ctx context.Context) error {
	n.drain.Store(true)
	if !n.stop() {
		return nil
	}
	var err error
	if n.nc != nil {
		n.flushDirty()
		n.publishState(&stateMsg{Kind: kindBye})
		err = n.nc.FlushWithContext(ctx)
		n.closeConn()
	}
	n.log.Info("cluster: left")
	return err
}

// Close leaves the cluster at once, as a crash would: nothing more is
// published, not even a goodbye, so the others drop the node from their counts
// only after DeadAfter.
func (n *Node) Close() error {
	if !n.stop() {
		return nil
	}
	if n.nc != nil {
		n.closeConn()
	}
	return nil
}

// stop makes Publish refuse, stops the goroutines and waits for them. It
// reports false if the node was stopped already.
func (n *Node) stop() bool {
	n.closing.Store(true)
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	if n.closed {
		return false
	}
	n.closed = true
	n.bg.Stop()
	n.fetches.Wait() // started only by the worker, which has stopped
	return true
}

// closeConn closes the NATS connection and waits until its client has let go
// of its own goroutines' callbacks.
func (n *Node) closeConn() {
	n.nc.Close()
	select {
	case <-n.ncClosed:
	case <-time.After(5 * time.Second):
	}
}
