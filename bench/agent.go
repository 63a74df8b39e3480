package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gobwas/ws"
	"github.com/valyala/fastjson"
	"golang.org/x/sys/unix"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/poller"
)

// Protocols an agent speaks on its connections.
const (
	ProtoEcho           = "echo"   // exact echo (/echo)
	ProtoShootoutJSON   = "json"   // websocket-shootout, JSON form
	ProtoShootoutBinary = "binary" // websocket-shootout, binary form
	ProtoChat           = "chat"   // throng's chat protocol (/ws)
)

// MaxConnsPerProcess is the most connections one process drives. The machine
// allows 20,000 open files per process and a process needs some for itself (the
// poller's epoll and eventfd descriptors, stdio, the binary); --workers spreads a
// larger count over child processes.
const MaxConnsPerProcess = 19500

// agentConfig is what an agent needs to generate load: everything a worker
// process is given when it starts.
type agentConfig struct {
	URL              string        `json:"url"`
	URLs             []string      `json:"urls,omitempty"` // several endpoints, connection id i to URLs[i % len]
	Protocol         string        `json:"protocol"`
	JWTSecret        string        `json:"jwt_secret,omitempty"`
	TokenInHeader    bool          `json:"token_in_header,omitempty"`
	Compression      bool          `json:"compression,omitempty"`
	SourceIPs        []string      `json:"source_ips,omitempty"`
	Loops            int           `json:"loops,omitempty"`
	Base             int           `json:"base"` // global id of the agent's first connection
	Size             int           `json:"size"` // payload bytes
	Text             bool          `json:"text,omitempty"`
	RoomSize         int           `json:"room_size,omitempty"`
	HandshakeTimeout time.Duration `json:"handshake_timeout,omitempty"`
	// MaxConns is the most connections the agent holds at once. If zero,
	// MaxConnsPerProcess.
	MaxConns int `json:"max_conns,omitempty"`
	// Upgrade makes chat members record every delivery by sender and
	// sequence number, and redial with Backoff (doubling up to BackoffMax)
	// when their connection ends while the upgrade scenario runs.
	Upgrade    bool          `json:"upgrade,omitempty"`
	Backoff    time.Duration `json:"backoff,omitempty"`
	BackoffMax time.Duration `json:"backoff_max,omitempty"`
}

// command is one instruction from the coordinator to an agent, the same whether
// the agent runs in the coordinator's process or in a worker.
type command struct {
	ID       uint64        `json:"id"`
	Op       string        `json:"op"`
	N        int           `json:"n,omitempty"`
	Rate     float64       `json:"rate,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
	Inflight int           `json:"inflight,omitempty"`
	Step     int           `json:"step,omitempty"`
	Total    int           `json:"total,omitempty"`
	First    int           `json:"first,omitempty"`
}

// Agent operations.
const (
	opConnect   = "connect"   // dial N more connections at Rate per second; wait for each to open or fail
	opSnapshot  = "snapshot"  // counters and the histograms since the last snapshot
	opProbe     = "probe"     // ping N random open connections and count the answers
	opEcho      = "echo"      // keep Inflight echoes in flight on every connection for Duration
	opStepStart = "step"      // reset exactly-once receipts for broadcast step Step of Total broadcasts
	opBroadcast = "broadcast" // send N broadcasts, Inflight at a time, from random connections
	opVerify    = "verify"    // wait for every connection to hold Total receipts; report the step
	opChat      = "chat"      // send Rate messages per second to every room for Duration
	opChurn     = "churn"     // close and redial Rate connections per second for Duration
	opStorm     = "storm"     // drop every connection, redial them all, report when all are back
	opClose     = "close"     // close every connection with a close handshake
	opShrink    = "shrink"    // close N open connections (whole rooms in chat), kept to be dialed again by connect
)

// reply is an agent's answer to a command.
type reply struct {
	ID      uint64        `json:"id"`
	Err     string        `json:"err,omitempty"`
	Snap    *snapshot     `json:"snap,omitempty"`
	Opened  int           `json:"opened,omitempty"`
	Failed  int           `json:"failed,omitempty"`
	Probed  int           `json:"probed,omitempty"`
	Alive   int           `json:"alive,omitempty"`
	Sent    int           `json:"sent,omitempty"`
	Lost    int           `json:"lost,omitempty"`
	Elapsed time.Duration `json:"elapsed,omitempty"`
	Step    *stepReport   `json:"step,omitempty"`
	Closed  int           `json:"closed,omitempty"`
	Up      *upReport     `json:"up,omitempty"`

	// Gone is set by the coordinator, never sent: the agent that should have
	// answered is lost (its process died or it stopped answering).
	Gone bool `json:"-"`
}

// snapshot is an agent's counters, cumulative, and its histograms since the
// previous snapshot, so a coordinator can both plot intervals and sum a total.
type snapshot struct {
	Open      int64                  `json:"open"`
	Peak      int64                  `json:"peak"` // most connections open at once, counted at every open
	Dialed    uint64                 `json:"dialed"`
	Opened    uint64                 `json:"opened"`
	Failed    uint64                 `json:"failed"`
	Dropped   uint64                 `json:"dropped"`
	Sent      uint64                 `json:"sent"`
	Recv      uint64                 `json:"recv"`
	BytesSent uint64                 `json:"bytes_sent"`
	BytesRecv uint64                 `json:"bytes_recv"`
	WireRecv  uint64                 `json:"wire_recv"` // bytes read from the sockets, frames and handshakes included
	Mismatch  uint64                 `json:"mismatch"`
	Receipts  uint64                 `json:"receipts"` // broadcasts and chat messages delivered
	Errors    map[string]uint64      `json:"errors,omitempty"`
	Lat       *hdrhistogram.Snapshot `json:"lat,omitempty"`
	Handshake *hdrhistogram.Snapshot `json:"handshake,omitempty"`
	CPU       time.Duration          `json:"cpu"` // this process's user+system CPU so far
}

// stepReport is one agent's view of a broadcast step.
type stepReport struct {
	Sent       int                    `json:"sent"`
	Results    int                    `json:"results"`
	Clients    int                    `json:"clients"`
	Receipts   uint64                 `json:"receipts"`
	Missing    uint64                 `json:"missing"`
	Duplicates uint64                 `json:"duplicates"`
	Late       uint64                 `json:"late"`
	Listeners  [2]int                 `json:"listeners"` // min and max listenerCount seen
	Wire       uint64                 `json:"wire"`      // bytes read from the sockets during the step
	RTT        *hdrhistogram.Snapshot `json:"rtt,omitempty"`
}

// Histogram bounds: microseconds from 1 µs to 10 minutes, three significant
// digits.
const (
	histMin = 1
	histMax = int64(10 * time.Minute / time.Microsecond)
	histSig = 3
)

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, histSig) }

// export snapshots h without its trailing empty buckets, which are most of it.
func export(h *hdrhistogram.Histogram) *hdrhistogram.Snapshot {
	if h == nil || h.TotalCount() == 0 {
		return nil
	}
	s := h.Export()
	n := len(s.Counts)
	for n > 0 && s.Counts[n-1] == 0 {
		n--
	}
	s.Counts = s.Counts[:n]
	return s
}

// merge adds snapshot s into h; a bad snapshot is an error rather than a panic.
func merge(h *hdrhistogram.Histogram, s *hdrhistogram.Snapshot) error {
	if s == nil {
		return nil
	}
	if err := s.Validate(); err != nil {
		return fmt.Errorf("bench: histogram: %w", err)
	}
	h.Merge(hdrhistogram.Import(s))
	return nil
}

// agent drives connections on one Client. Its fields are guarded as marked;
// per-connection state (peer) is owned by the connection's loop.
type agent struct {
	cfg   agentConfig
	cl    *Client
	loops []*agentLoop
	epoch time.Time
	pad   []byte // payload filler

	mu     sync.Mutex
	peers  []*peer           // guarded by mu; index is the local id
	parked []*peer           // guarded by mu: closed by shrink, dialed first by connect
	rooms  []*roomState      // guarded by mu; chat: index is the local room
	errs   map[string]uint64 // guarded by mu
	rtt    *hdrhistogram.Histogram
	lmin   int // guarded by mu: smallest listenerCount this step
	lmax   int
	snapMu sync.Mutex // serializes snapshots

	pending  atomic.Int64 // dialed, neither open nor failed yet
	open     atomic.Int64
	peak     atomic.Int64 // most of open at once
	dialed   atomic.Uint64
	opened   atomic.Uint64
	failed   atomic.Uint64
	dropped  atomic.Uint64
	sent     atomic.Uint64
	recv     atomic.Uint64
	bsent    atomic.Uint64
	brecv    atomic.Uint64
	mismatch atomic.Uint64
	inflight atomic.Int64 // echoes sent and not yet answered
	alive    atomic.Int64 // probe answers
	receipts atomic.Uint64
	dups     atomic.Uint64
	late     atomic.Uint64
	stepWire uint64 // the client's WireBytes when the step started
	results  atomic.Int64
	churning atomic.Int64 // peers closed by churn whose redial has not opened or failed

	// sem bounds broadcasts in flight: the sender goroutine fills it, result
	// handlers on the loops drain it without blocking.
	sem atomic.Pointer[chan struct{}]

	up upAgent // the upgrade scenario
}

// agentLoop is an agent's per-loop state, owned by that loop's goroutine.
type agentLoop struct {
	lat    *hdrhistogram.Histogram
	hs     *hdrhistogram.Histogram
	buf    []byte
	parser fastjson.Parser
	echoOn bool
	echoN  int // echoes kept in flight per connection while echoOn
	step   int // current broadcast step
	total  int // broadcasts expected this step
}

// peer is one logical client: a global id, and the state of its current
// connection, owned by the connection's loop.
type peer struct {
	id     int
	room   int
	loop   atomic.Pointer[poller.Loop] // set when the connection opens
	c      *Conn                       // owned by the loop
	seqOut uint64                      // echo: next sequence number sent
	seqIn  uint64                      // echo: next one expected back
	flight int                         // echo: sent, not yet answered
	bits   []uint64                    // broadcast receipts this step
	got    int
	probe  bool
	churn  bool // closed on purpose by churn: dial again
	redial bool // this connection is churn's redial
	joined bool
	rs     *roomState    // chat: the peer's room
	parked atomic.Bool   // closed by shrink: its close is no drop, and it is not redialed
	up     *upTrack      // upgrade scenario: what the member got
	usent  atomic.Uint32 // upgrade scenario: messages the member sent
}

// roomState is one chat room of the agent's: rooms never straddle agents, so an
// agent alone knows when all of a room's members are in and what each message
// sent to it should deliver.
type roomState struct {
	members int           // guarded by agent.mu: members created
	joined  atomic.Int32  // members joined and open
	closing atomic.Bool   // shrink is closing the room: send nothing more to it
	sent    atomic.Uint64 // messages sent to the room
	got     atomic.Uint64 // deliveries of them to its members
}

func newAgent(cfg agentConfig) (*agent, error) {
	switch cfg.Protocol {
	case ProtoEcho, ProtoShootoutJSON, ProtoShootoutBinary, ProtoChat:
	default:
		return nil, fmt.Errorf("bench: unknown protocol %q", cfg.Protocol)
	}
	if cfg.Protocol == ProtoChat && cfg.RoomSize <= 0 {
		return nil, errors.New("bench: chat needs a room size")
	}
	var ips []netip.Addr
	for _, s := range cfg.SourceIPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("bench: source ip: %w", err)
		}
		ips = append(ips, a)
	}
	raiseFileLimit()
	a := &agent{cfg: cfg, epoch: time.Now(), errs: make(map[string]uint64), rtt: newHist()}
	cl, err := NewClient(a, ClientOptions{
		URL:              cfg.URL,
		URLs:             cfg.URLs,
		TokenInHeader:    cfg.TokenInHeader,
		Compression:      cfg.Compression,
		SourceIPs:        ips,
		Loops:            cfg.Loops,
		HandshakeTimeout: cfg.HandshakeTimeout,
	})
	if err != nil {
		return nil, err
	}
	a.cl = cl
	for range cl.Loops() {
		a.loops = append(a.loops, &agentLoop{lat: newHist(), hs: newHist()})
	}
	a.pad = padText(max(cfg.Size, 64))
	return a, nil
}

func (a *agent) close() { a.cl.Close() }

// padText is n bytes of words drawn from a small vocabulary with a fixed
// seed: text that compresses about as chat does (to roughly half with
// permessage-deflate), where a run of one letter would compress to almost
// nothing and flatter --compression. It holds no character JSON escapes.
func padText(n int) []byte {
	words := strings.Fields(`the a to and of in is it you that he was for on are with as I his they be at one have
		this from or had by hot word but what some we can out other were all there when up use your how said an each
		she which do their time if will way about many then them write would like so these her long make thing see him
		two has look more day could go come did number sound no most people my over know water than call first who may
		down side been now find any new work part take get place made live where after back little only round man year
		came show every good me give our under name very through just form sentence great think say help low line
		differ turn cause much mean before move right boy old too same tell does set three want air well also play small
		end put home read hand port large spell add even land here must big high such follow act why ask men change went
		light kind off need house picture try us again animal point mother world near build self earth father head stand`)
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 0, n+16)
	for len(b) < n {
		b = append(b, words[r.IntN(len(words))]...)
		b = append(b, ' ')
	}
	return b[:n]
}

// do runs one command to completion.
func (a *agent) do(ctx context.Context, cmd command) (r reply) {
	r.ID = cmd.ID
	var err error
	switch cmd.Op {
	case opConnect:
		r.Opened, r.Failed, err = a.connect(ctx, cmd.N, cmd.Rate)
	case opSnapshot:
		r.Snap = a.snapshot()
	case opProbe:
		r.Probed, r.Alive = a.probe(ctx, cmd.N, cmd.Duration)
	case opEcho:
		r.Lost, err = a.echo(ctx, cmd.Inflight, cmd.Duration)
	case opStepStart:
		a.stepStart(cmd.Step, cmd.Total)
	case opBroadcast:
		r.Sent, err = a.broadcast(ctx, cmd.First, cmd.N, cmd.Inflight)
	case opVerify:
		r.Step = a.verify(ctx, cmd.Total, cmd.Duration)
	case opChat:
		r.Sent, err = a.chat(ctx, cmd.Rate, cmd.Duration)
	case opChurn:
		err = a.churn(ctx, cmd.Rate, cmd.Duration)
	case opStorm:
		r.Opened, r.Failed, r.Elapsed, err = a.storm(ctx, cmd.Rate)
	case opClose:
		a.closeAll(ctx)
	case opShrink:
		r.Closed, err = a.shrink(ctx, cmd.N)
	case opUpStart:
		err = a.upStart(cmd.Rate)
	case opUpMark:
		r.Up = &upReport{Pauses: a.upMark()}
	case opUpStop:
		r.Sent, err = a.upStop(ctx)
	case opUpTally:
		r.Up = a.upTally()
	default:
		err = fmt.Errorf("bench: unknown command %q", cmd.Op)
	}
	if err != nil {
		r.Err = err.Error()
	}
	return r
}

// onLoops runs fn on every loop and waits for all of them, or for ctx.
func (a *agent) onLoops(ctx context.Context, fn func(l *poller.Loop, al *agentLoop)) {
	var wg sync.WaitGroup
	for i, l := range a.cl.Loops() {
		wg.Add(1)
		al := a.loops[i]
		if !l.Post(poller.FuncJob(func() { defer wg.Done(); fn(l, al) })) {
			wg.Done()
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		<-done // the loops never block, so this is short
	}
}

func (a *agent) token(id int) (string, error) {
	if a.cfg.JWTSecret == "" {
		return "", nil
	}
	return auth.Mint([]byte(a.cfg.JWTSecret), "HS256", fmt.Sprintf("bench-%d", id), 24*time.Hour, "", time.Now())
}

// dial starts p's next connection; a failure to even start counts as failed.
func (a *agent) dial(p *peer) {
	a.dialTracked(p)
}

func (a *agent) dialTracked(p *peer) (started bool) {
	tok, err := a.token(p.id)
	if err == nil {
		a.pending.Add(1)
		a.dialed.Add(1)
		if _, err = a.cl.Dial(p.id, tok, p); err != nil {
			a.pending.Add(-1)
		}
	}
	if err != nil {
		a.failed.Add(1)
		a.countErr(err)
		return false
	}
	return true
}

// pace calls fn(i) for i in [0,n) at rate per second (as fast as possible if
// rate <= 0), returning early if ctx ends. It reports how many calls it made.
func pace(ctx context.Context, n int, rate float64, fn func(i int)) int {
	start := time.Now()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	i := 0
	for i < n {
		due := n
		if rate > 0 {
			due = min(n, int(time.Since(start).Seconds()*rate)+1)
		}
		for ; i < due; i++ {
			fn(i)
		}
		if i == n {
			break
		}
		select {
		case <-ctx.Done():
			return i
		case <-t.C:
		}
	}
	return i
}

// connect dials n new peers at rate per second and waits until each has opened
// (joined, in chat) or failed.
func (a *agent) connect(ctx context.Context, n int, rate float64) (opened, failed int, err error) {
	limit := a.cfg.MaxConns
	if limit <= 0 {
		limit = MaxConnsPerProcess
	}
	a.mu.Lock()
	held := len(a.peers) - len(a.parked)
	a.mu.Unlock()
	if total := held + n; total > limit {
		return 0, 0, fmt.Errorf("bench: %d connections in one process passes its limit of %d: use --workers or more agents", total, limit)
	}
	o0, f0 := a.opened.Load(), a.failed.Load()
	pace(ctx, n, rate, func(int) {
		a.mu.Lock()
		var p *peer
		if k := len(a.parked); k > 0 {
			// Parked peers were closed a room at a time from the end, so
			// taking them back from the end refills whole rooms.
			p = a.parked[k-1]
			a.parked = a.parked[:k-1]
			p.parked.Store(false)
		} else {
			p = &peer{id: a.cfg.Base + len(a.peers)}
			if a.cfg.RoomSize > 0 {
				p.room = p.id / a.cfg.RoomSize
				local := (p.id - a.cfg.Base) / a.cfg.RoomSize
				if local == len(a.rooms) {
					a.rooms = append(a.rooms, &roomState{})
				}
				p.rs = a.rooms[local]
				p.rs.members++
			}
			if a.cfg.Upgrade {
				p.up = newUpTrack(a.cfg.RoomSize)
			}
			a.peers = append(a.peers, p)
		}
		a.mu.Unlock()
		a.dial(p)
	})
	a.settle(ctx)
	return int(a.opened.Load() - o0), int(a.failed.Load() - f0), ctx.Err()
}

// settle waits until no dial is pending.
func (a *agent) settle(ctx context.Context) {
	for a.pending.Load() > 0 && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (a *agent) peerCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.peers)
}

func (a *agent) peerAt(i int) *peer {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.peers[i]
}

func (a *agent) countErr(err error) {
	k := errKind(err)
	a.mu.Lock()
	a.errs[k]++
	a.mu.Unlock()
}

// errKind names an error for the counters.
func errKind(err error) string {
	var se *StatusError
	var ce *CloseError
	var errno syscall.Errno
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("handshake_status_%d", se.Code)
	case errors.As(err, &ce):
		return fmt.Sprintf("server_close_%d", ce.Code)
	case errors.Is(err, ErrHandshakeTimeout):
		return "handshake_timeout"
	case errors.Is(err, ErrBadHandshake):
		return "bad_handshake"
	case errors.Is(err, ErrProtocol):
		return "protocol"
	case errors.Is(err, ErrAbnormalClosure):
		return "abnormal_closure"
	case errors.Is(err, ErrCloseTimeout):
		return "close_timeout"
	case errors.Is(err, errJoinRefused):
		return "join_refused"
	case errors.Is(err, poller.ErrClosed):
		return "client_stopped"
	case errors.As(err, &errno):
		return "socket_" + strings.ToLower(unix.ErrnoName(errno))
	}
	return "other"
}

var errJoinRefused = errors.New("bench: chat join refused")

// ready marks p's connection usable: upgraded, and joined in chat.
func (a *agent) ready(c *Conn) {
	if p := c.Data.(*peer); p.redial {
		p.redial = false
		a.churning.Add(-1)
	}
	a.pending.Add(-1)
	a.opened.Add(1)
	for v := a.open.Add(1); ; {
		pk := a.peak.Load()
		if v <= pk || a.peak.CompareAndSwap(pk, v) {
			break
		}
	}
	al := a.loops[c.Loop().Index()]
	if d := c.HandshakeTime(); d > 0 {
		al.hs.RecordValue(max(int64(d/time.Microsecond), 1))
	}
	p := c.Data.(*peer)
	if p.rs != nil {
		p.rs.joined.Add(1)
	}
	// A connection opened while echo runs (a stage ramping up) echoes too.
	if al.echoOn && a.cfg.Protocol == ProtoEcho {
		for range al.echoN {
			a.sendEcho(c, p, al)
		}
	}
}

// OnOpen implements ClientHandler.
func (a *agent) OnOpen(c *Conn) {
	p := c.Data.(*peer)
	p.c = c
	p.seqOut, p.seqIn, p.flight, p.joined, p.churn = 0, 0, 0, false, false
	p.loop.Store(c.Loop())
	al := a.loops[c.Loop().Index()]
	if al.step > 0 {
		p.resetBits(al.total)
	}
	if a.cfg.Protocol != ProtoChat {
		a.ready(c)
		return
	}
	b := append(al.buf[:0], `{"type":"join","roomId":"`...)
	b = appendRoom(b, p.room)
	b = append(b, `","userName":"u`...)
	b = appendUint(b, uint64(p.id))
	b = append(b, '"')
	if p.up != nil {
		b = upJoinSince(b, p.up)
	}
	b = append(b, '}')
	al.buf = b
	a.send(c, ws.OpText, b)
}

func (a *agent) send(c *Conn, op ws.OpCode, p []byte) bool {
	if c.Send(op, p) != nil {
		return false
	}
	a.sent.Add(1)
	a.bsent.Add(uint64(len(p)))
	return true
}

// OnPong implements ClientHandler: a probe's answer.
func (a *agent) OnPong(c *Conn, _ []byte) {
	if p := c.Data.(*peer); p.probe {
		p.probe = false
		a.alive.Add(1)
	}
}

// OnClose implements ClientHandler.
func (a *agent) OnClose(c *Conn, err error) {
	p := c.Data.(*peer)
	wasReady := c.Opened() && (a.cfg.Protocol != ProtoChat || p.joined)
	switch {
	case wasReady:
		a.open.Add(-1)
		if p.rs != nil {
			p.rs.joined.Add(-1)
		}
		if err != nil {
			a.dropped.Add(1)
			a.countErr(err)
		}
	default:
		if p.redial {
			p.redial = false
			a.churning.Add(-1)
		}
		a.pending.Add(-1)
		a.failed.Add(1)
		if err == nil {
			err = errors.New("closed before open")
		}
		a.countErr(err)
	}
	if p.flight > 0 {
		a.inflight.Add(-int64(p.flight))
		p.flight = 0
	}
	p.probe = false
	p.c = nil
	p.loop.Store(nil)
	if p.up != nil {
		a.upClosed(p, wasReady)
	}
	if p.churn {
		p.churn = false
		// Set before the dial is posted: the redial may open on another loop
		// at once, and the post is what orders this write before its read.
		p.redial = true
		if !a.dialTracked(p) {
			p.redial = false
			a.churning.Add(-1)
		}
	}
}

// OnMessage implements ClientHandler.
func (a *agent) OnMessage(c *Conn, op ws.OpCode, data []byte) {
	a.recv.Add(1)
	a.brecv.Add(uint64(len(data)))
	p := c.Data.(*peer)
	al := a.loops[c.Loop().Index()]
	switch a.cfg.Protocol {
	case ProtoEcho:
		a.onEcho(c, p, al, op, data)
	case ProtoShootoutJSON:
		v, err := al.parser.ParseBytes(data)
		if err != nil {
			a.mismatch.Add(1)
			return
		}
		a.onShootout(c, p, al, string(v.GetStringBytes("type")), v.GetStringBytes("payload"), v.GetInt("listenerCount"))
	case ProtoShootoutBinary:
		if len(data) < 5 || int(binary.BigEndian.Uint32(data[1:5])) != len(data)-5 {
			a.mismatch.Add(1)
			return
		}
		typ := ""
		switch data[0] {
		case 'b':
			typ = "broadcast"
		case 'r':
			typ = "broadcastResult"
		case 'e':
			typ = "echo"
		}
		a.onShootout(c, p, al, typ, data[5:], -1)
	case ProtoChat:
		a.onChat(c, p, al, data)
	}
}

// Echo payloads are ASCII, so they travel as text or binary alike: 16 hex
// digits of sequence number, 16 of send time (ns since the agent started), then
// filler up to the payload size.
const echoHeader = 32

func (a *agent) sendEcho(c *Conn, p *peer, al *agentLoop) {
	b := appendHex(al.buf[:0], p.seqOut)
	b = appendHex(b, uint64(time.Since(a.epoch)))
	b = append(b, a.pad[:a.cfg.Size-echoHeader]...)
	al.buf = b
	op := ws.OpBinary
	if a.cfg.Text {
		op = ws.OpText
	}
	if a.send(c, op, b) {
		p.seqOut++
		p.flight++
		a.inflight.Add(1)
	}
}

func (a *agent) onEcho(c *Conn, p *peer, al *agentLoop, op ws.OpCode, data []byte) {
	if p.flight == 0 {
		a.mismatch.Add(1) // nothing was asked
		return
	}
	p.flight--
	a.inflight.Add(-1)
	seq, ok1 := parseHex(data, 0)
	ts, ok2 := parseHex(data, 16)
	wantOp := ws.OpBinary
	if a.cfg.Text {
		wantOp = ws.OpText
	}
	if !ok1 || !ok2 || seq != p.seqIn || len(data) != a.cfg.Size || op != wantOp ||
		string(data[echoHeader:]) != string(a.pad[:a.cfg.Size-echoHeader]) {
		a.mismatch.Add(1)
	} else {
		al.lat.RecordValue(max((int64(time.Since(a.epoch))-int64(ts))/1e3, 1))
	}
	p.seqIn = seq + 1
	if al.echoOn {
		a.sendEcho(c, p, al)
	}
}

// echo keeps inflight echoes outstanding on every open connection for d, then
// lets the last ones come back. It reports echoes that never did.
func (a *agent) echo(ctx context.Context, inflight int, d time.Duration) (lost int, err error) {
	if a.cfg.Size < echoHeader {
		return 0, fmt.Errorf("bench: echo payload must be at least %d bytes", echoHeader)
	}
	a.onLoops(ctx, func(l *poller.Loop, al *agentLoop) {
		al.echoOn, al.echoN = true, inflight
		l.Range(func(pc *poller.Conn) bool {
			c := pc.Context().(*Conn)
			if c.Open() {
				for i := 0; i < inflight; i++ {
					a.sendEcho(c, c.Data.(*peer), al)
				}
			}
			return true
		})
	})
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	a.onLoops(context.Background(), func(_ *poller.Loop, al *agentLoop) { al.echoOn = false })
	deadline := time.Now().Add(5 * time.Second)
	for a.inflight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return int(a.inflight.Load()), nil
}

// probe pings up to n random open connections and counts pongs within d.
func (a *agent) probe(ctx context.Context, n int, d time.Duration) (probed, alive int) {
	a.alive.Store(0)
	total := a.peerCount()
	idx := rand.Perm(total)
	var sent atomic.Int64
	var wg sync.WaitGroup
	for _, i := range idx {
		if probed >= n {
			break
		}
		p := a.peerAt(i)
		l := p.loop.Load()
		if l == nil {
			continue
		}
		probed++
		wg.Add(1)
		if !l.Post(poller.FuncJob(func() {
			defer wg.Done()
			if p.c != nil && p.c.Open() {
				p.probe = true
				if p.c.Ping([]byte("probe")) == nil {
					sent.Add(1)
					return
				}
				p.probe = false
			}
		})) {
			wg.Done()
		}
	}
	wg.Wait()
	deadline := time.Now().Add(d)
	for a.alive.Load() < sent.Load() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	return probed, int(a.alive.Load())
}

// Broadcast ids are 40 hex digits: sender id (8), step (8), index (8) and send
// time in unix ns (16); the payload pads them to the payload size.
const bcastID = 40

func (p *peer) resetBits(total int) {
	words := (total + 63) / 64
	if cap(p.bits) >= words {
		p.bits = p.bits[:words]
		clear(p.bits)
	} else {
		p.bits = make([]uint64, words)
	}
	p.got = 0
}

// stepStart readies every connection for step's total broadcasts.
func (a *agent) stepStart(step, total int) {
	a.receipts.Store(0)
	a.dups.Store(0)
	a.late.Store(0)
	a.results.Store(0)
	a.mu.Lock()
	a.stepWire = a.cl.WireBytes()
	a.rtt.Reset()
	a.lmin, a.lmax = -1, -1
	a.mu.Unlock()
	a.onLoops(context.Background(), func(l *poller.Loop, al *agentLoop) {
		al.step, al.total = step, total
		l.Range(func(pc *poller.Conn) bool {
			pc.Context().(*Conn).Data.(*peer).resetBits(total)
			return true
		})
	})
}

// broadcast sends n broadcasts from random open connections, inflight at a
// time; one is done when its sender gets the broadcastResult. The step's
// broadcasts are numbered across agents: this agent's are first, first+1, ….
func (a *agent) broadcast(ctx context.Context, first, n, inflight int) (int, error) {
	if inflight <= 0 {
		inflight = 1
	}
	sem := make(chan struct{}, inflight)
	a.sem.Store(&sem)
	defer a.sem.Store(nil)
	total := a.peerCount()
	if total == 0 {
		return 0, errors.New("bench: no connections to broadcast from")
	}
	sent := 0
	for i := 0; i < n; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return sent, ctx.Err()
		case <-time.After(30 * time.Second):
			return sent, errors.New("bench: broadcast result not received within 30s")
		}
		var p *peer
		for try := 0; try < 100; try++ {
			if q := a.peerAt(rand.IntN(total)); q.loop.Load() != nil {
				p = q
				break
			}
		}
		if p == nil {
			return sent, errors.New("bench: no open connection to broadcast from")
		}
		l := p.loop.Load()
		idx := first + i
		if l == nil || !l.Post(poller.FuncJob(func() { a.sendBroadcast(p, l, idx) })) {
			<-sem
			i--
			continue
		}
		sent++
	}
	// Wait for the last results.
	for range inflight {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return sent, ctx.Err()
		case <-time.After(30 * time.Second):
			return sent, errors.New("bench: broadcast result not received within 30s")
		}
	}
	return sent, nil
}

func (a *agent) sendBroadcast(p *peer, l *poller.Loop, idx int) {
	al := a.loops[l.Index()]
	c := p.c
	if c == nil || !c.Open() {
		a.release()
		return
	}
	var id [bcastID]byte
	b := appendHex32(id[:0], uint32(p.id))
	b = appendHex32(b, uint32(al.step))
	b = appendHex32(b, uint32(idx))
	b = appendHex(b, uint64(time.Now().UnixNano()))
	padN := max(a.cfg.Size-bcastID, 0)
	out := al.buf[:0]
	op := ws.OpText
	if a.cfg.Protocol == ProtoShootoutBinary {
		op = ws.OpBinary
		out = append(out, 'b')
		out = binary.BigEndian.AppendUint32(out, uint32(bcastID+padN))
		out = append(out, b...)
		out = append(out, a.pad[:padN]...)
	} else {
		out = append(out, `{"type":"broadcast","payload":"`...)
		out = append(out, b...)
		out = append(out, a.pad[:padN]...)
		out = append(out, `"}`...)
	}
	al.buf = out
	if !a.send(c, op, out) {
		a.release()
	}
}

// release frees one broadcast slot; it never blocks a loop.
func (a *agent) release() {
	if s := a.sem.Load(); s != nil {
		select {
		case <-*s:
		default:
		}
	}
}

func (a *agent) onShootout(c *Conn, p *peer, al *agentLoop, typ string, payload []byte, listeners int) {
	if len(payload) < bcastID {
		a.mismatch.Add(1)
		return
	}
	step, ok1 := parseHex32(payload, 8)
	idx, ok2 := parseHex32(payload, 16)
	ts, ok3 := parseHex(payload, 24)
	if !ok1 || !ok2 || !ok3 {
		a.mismatch.Add(1)
		return
	}
	lat := max((time.Now().UnixNano()-int64(ts))/1e3, 1)
	switch typ {
	case "broadcast":
		if int(step) != al.step {
			a.late.Add(1)
			return
		}
		al.lat.RecordValue(lat)
		k := int(idx)
		if k >= al.total || k/64 >= len(p.bits) {
			a.mismatch.Add(1)
			return
		}
		if p.bits[k/64]&(1<<(k%64)) != 0 {
			a.dups.Add(1)
			return
		}
		p.bits[k/64] |= 1 << (k % 64)
		p.got++
		a.receipts.Add(1)
	case "broadcastResult":
		a.results.Add(1)
		a.mu.Lock()
		a.rtt.RecordValue(lat)
		if listeners >= 0 {
			if a.lmin < 0 || listeners < a.lmin {
				a.lmin = listeners
			}
			a.lmax = max(a.lmax, listeners)
		}
		a.mu.Unlock()
		a.release()
	default:
		a.mismatch.Add(1)
	}
}

// verify waits up to d for every open connection to hold total receipts, then
// reports the step.
func (a *agent) verify(ctx context.Context, total int, d time.Duration) *stepReport {
	deadline := time.Now().Add(d)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if a.receipts.Load() >= uint64(total)*uint64(a.open.Load()) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	r := &stepReport{Results: int(a.results.Load()), Duplicates: a.dups.Load(), Late: a.late.Load()}
	var mu sync.Mutex
	a.onLoops(context.Background(), func(l *poller.Loop, al *agentLoop) {
		l.Range(func(pc *poller.Conn) bool {
			c := pc.Context().(*Conn)
			if !c.Open() {
				return true
			}
			p := c.Data.(*peer)
			mu.Lock()
			r.Clients++
			r.Receipts += uint64(p.got)
			r.Missing += uint64(max(total-p.got, 0))
			mu.Unlock()
			return true
		})
		al.step = 0
	})
	a.mu.Lock()
	r.RTT = export(a.rtt)
	r.Listeners = [2]int{a.lmin, a.lmax}
	r.Wire = a.cl.WireBytes() - a.stepWire
	a.mu.Unlock()
	return r
}

// Chat message contents are 40 hex digits, room (8), sender (8), sequence (8)
// and send time in unix ns (16), padded to the payload size.
func (a *agent) onChat(c *Conn, p *peer, al *agentLoop, data []byte) {
	v, err := al.parser.ParseBytes(data)
	if err != nil {
		a.mismatch.Add(1)
		return
	}
	switch string(v.GetStringBytes("type")) {
	case "joined":
		if !p.joined {
			if p.up != nil {
				a.upJoined(p, v)
			}
			p.joined = true
			a.ready(c)
		}
	case "message":
		content := v.GetStringBytes("content")
		ts, ok := parseHex(content, 24)
		room, ok2 := parseHex32(content, 0)
		if !ok || !ok2 || int(room) != p.room {
			a.mismatch.Add(1)
			return
		}
		a.receipts.Add(1)
		if p.rs != nil {
			p.rs.got.Add(1)
		}
		al.lat.RecordValue(max((time.Now().UnixNano()-int64(ts))/1e3, 1))
		if p.up != nil {
			a.upMessage(p, v, content)
		}
	case "error":
		if !p.joined {
			c.fail(fmt.Errorf("%w: %s", errJoinRefused, v.GetStringBytes("code")))
		}
	}
}

// chat sends rate messages per second to each of the agent's rooms for d, each
// from the room's members in turn, and returns how many it sent. A room is sent
// to only while all its members are joined and shrink is not closing it, so
// every message sent should reach exactly RoomSize members; rooms that fill
// up while chat runs (a stage ramping up) start sending then. Deliveries are
// counted in receipts.
func (a *agent) chat(ctx context.Context, rate float64, d time.Duration) (int, error) {
	if rate <= 0 {
		return 0, errors.New("bench: chat needs a message rate")
	}
	size := a.cfg.RoomSize
	interval := time.Duration(float64(time.Second) / rate)
	var next []time.Time // per local room: when its next message is due; zero while it is not sendable
	var turn []int       // per local room: which member sends next
	var sent atomic.Int64
	// Sends run on the loops; the count is read once the last has run.
	var jobs sync.WaitGroup
	defer jobs.Wait()
	start := time.Now()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		now := time.Now()
		if now.Sub(start) >= d || ctx.Err() != nil {
			break
		}
		a.mu.Lock()
		rooms := a.rooms
		peers := a.peers
		full := make([]bool, len(rooms))
		for k, rs := range rooms {
			full[k] = rs.members == size
		}
		a.mu.Unlock()
		for len(next) < len(rooms) {
			next = append(next, time.Time{})
			turn = append(turn, 0)
		}
		batches := make(map[*poller.Loop][]*peer)
		for k, rs := range rooms {
			if !full[k] || int(rs.joined.Load()) != size || rs.closing.Load() {
				next[k] = time.Time{}
				continue
			}
			if next[k].IsZero() {
				next[k] = now
			}
			for ; !next[k].After(now); next[k] = next[k].Add(interval) {
				p := peers[k*size+turn[k]%size]
				turn[k]++
				if l := p.loop.Load(); l != nil {
					batches[l] = append(batches[l], p)
				}
			}
		}
		for l, ps := range batches {
			jobs.Add(1)
			posted := l.Post(poller.FuncJob(func() {
				defer jobs.Done()
				al := a.loops[l.Index()]
				for _, p := range ps {
					if p.c == nil || !p.c.Open() || !p.joined {
						continue
					}
					// Counted before closing is checked, and shrink sets
					// closing before it reads the count: a message shrink
					// does not wait for is never sent.
					p.rs.sent.Add(1)
					if !p.rs.closing.Load() && a.sendChat(p, al) {
						sent.Add(1)
					} else {
						p.rs.sent.Add(^uint64(0))
					}
				}
			}))
			if !posted {
				jobs.Done()
			}
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
	jobs.Wait()
	return int(sent.Load()), nil
}

// shrink closes n open connections with a close handshake, the most recently
// added first, and parks their peers for connect to dial again. In chat, n is
// rounded up to whole rooms, and each room first stops being sent to and gets
// its messages in flight, so a stage ramping down loses no delivery.
func (a *agent) shrink(ctx context.Context, n int) (closed int, err error) {
	var victims []*peer
	var rooms []*roomState
	a.mu.Lock()
	for i := len(a.peers) - 1; i >= 0 && len(victims) < n; i-- {
		p := a.peers[i]
		if p.parked.Load() {
			continue
		}
		if p.rs != nil {
			// Take the whole room, or none of it.
			k := (p.id - a.cfg.Base) / a.cfg.RoomSize
			lo := k * a.cfg.RoomSize
			if i != lo+a.cfg.RoomSize-1 {
				continue
			}
			rooms = append(rooms, p.rs)
			for j := i; j >= lo; j-- {
				victims = append(victims, a.peers[j])
			}
			i = lo
			continue
		}
		victims = append(victims, p)
	}
	for _, p := range victims {
		p.parked.Store(true)
	}
	a.mu.Unlock()
	if len(victims) < n {
		err = fmt.Errorf("bench: shrink by %d: only %d connections to close", n, len(victims))
	}
	for _, rs := range rooms {
		rs.closing.Store(true)
	}
	// Let the rooms' last messages arrive before their members leave.
	deadline := time.Now().Add(3 * time.Second)
	for _, rs := range rooms {
		for rs.got.Load() < rs.sent.Load()*uint64(a.cfg.RoomSize) && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
	}
	var jobs sync.WaitGroup
	for _, p := range victims {
		l := p.loop.Load()
		if l == nil {
			continue
		}
		jobs.Add(1)
		if !l.Post(poller.FuncJob(func() {
			defer jobs.Done()
			if p.c != nil {
				p.c.Close()
			}
		})) {
			jobs.Done()
		}
	}
	jobs.Wait()
	// Wait for the close handshakes, so the count is right when shrink returns.
	deadline = time.Now().Add(DefaultCloseTimeout + time.Second)
	for _, p := range victims {
		for p.loop.Load() != nil && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
	}
	for _, rs := range rooms {
		rs.closing.Store(false)
	}
	a.mu.Lock()
	// Parked from the room's last member down, so connect's pops from the
	// end refill the lowest room first, in member order.
	a.parked = append(a.parked, victims...)
	a.mu.Unlock()
	return len(victims), err
}

func (a *agent) sendChat(p *peer, al *agentLoop) bool {
	b := append(al.buf[:0], `{"type":"chat","roomId":"`...)
	b = appendRoom(b, p.room)
	b = append(b, `","content":"`...)
	b = appendHex32(b, uint32(p.room))
	b = appendHex32(b, uint32(p.id))
	p.seqOut++
	b = appendHex32(b, uint32(p.seqOut))
	b = appendHex(b, uint64(time.Now().UnixNano()))
	b = append(b, a.pad[:max(min(a.cfg.Size, 500)-bcastID, 0)]...)
	b = append(b, `"}`...)
	al.buf = b
	return a.send(p.c, ws.OpText, b)
}

// churn closes rate random open connections per second for d, each dialed
// again as soon as its close completes, so the population stays level.
func (a *agent) churn(ctx context.Context, rate float64, d time.Duration) error {
	if rate <= 0 {
		return errors.New("bench: churn needs a rate")
	}
	total := a.peerCount()
	if total == 0 {
		return errors.New("bench: no connections to churn")
	}
	pctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var jobs sync.WaitGroup
	pace(pctx, int(rate*d.Seconds()), rate, func(int) {
		p := a.peerAt(rand.IntN(total))
		l := p.loop.Load()
		if l == nil {
			return
		}
		jobs.Add(1)
		if !l.Post(poller.FuncJob(func() {
			defer jobs.Done()
			if p.c != nil && p.c.Open() && !p.churn {
				p.churn = true
				a.churning.Add(1)
				p.c.Close()
			}
		})) {
			jobs.Done()
		}
	})
	jobs.Wait()
	// The last closes may still be in their handshake: wait for their
	// redials so the population is level again when churn returns.
	deadline := time.Now().Add(DefaultCloseTimeout + DefaultHandshakeTimeout)
	for a.churning.Load() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// storm drops every connection at once, then dials every peer again at rate per
// second (at once if rate <= 0) and reports how long until all were open again.
func (a *agent) storm(ctx context.Context, rate float64) (opened, failed int, el time.Duration, err error) {
	var dropped atomic.Int64
	a.onLoops(ctx, func(l *poller.Loop, _ *agentLoop) {
		l.Range(func(pc *poller.Conn) bool {
			c := pc.Context().(*Conn)
			if c.Open() {
				dropped.Add(1)
			}
			c.Drop()
			return true
		})
	})
	a.settle(ctx)
	a.mu.Lock()
	peers := append([]*peer(nil), a.peers...)
	a.mu.Unlock()
	o0, f0 := a.opened.Load(), a.failed.Load()
	start := time.Now()
	want := len(peers)
	// Failed dials are retried after a short pause, as real clients do, until
	// every peer is back or ctx ends.
	for round := 0; ctx.Err() == nil; round++ {
		var todo []*peer
		for _, p := range peers {
			if p.loop.Load() == nil {
				todo = append(todo, p)
			}
		}
		if len(todo) == 0 {
			break
		}
		if round > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		pace(ctx, len(todo), rate, func(i int) { a.dial(todo[i]) })
		a.settle(ctx)
	}
	el = time.Since(start)
	opened = int(a.opened.Load() - o0)
	failed = int(a.failed.Load() - f0)
	if got := int(a.open.Load()); got < want {
		return opened, failed, el, fmt.Errorf("bench: %d of %d connections back", got, want)
	}
	return opened, failed, el, ctx.Err()
}

// closeAll starts the close handshake on every connection and waits for them
// to end.
func (a *agent) closeAll(ctx context.Context) {
	a.onLoops(ctx, func(l *poller.Loop, _ *agentLoop) {
		l.Range(func(pc *poller.Conn) bool {
			pc.Context().(*Conn).Close()
			return true
		})
	})
	deadline := time.Now().Add(DefaultCloseTimeout + time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		n := 0
		for _, l := range a.cl.Loops() {
			n += l.Len()
		}
		if n == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// snapshot returns the counters and the histograms since the previous call.
func (a *agent) snapshot() *snapshot {
	a.snapMu.Lock()
	defer a.snapMu.Unlock()
	lat, hs := newHist(), newHist()
	var mu sync.Mutex
	a.onLoops(context.Background(), func(_ *poller.Loop, al *agentLoop) {
		mu.Lock()
		lat.Merge(al.lat)
		hs.Merge(al.hs)
		mu.Unlock()
		al.lat.Reset()
		al.hs.Reset()
	})
	s := &snapshot{
		Open:      a.open.Load(),
		Peak:      a.peak.Load(),
		Dialed:    a.dialed.Load(),
		Opened:    a.opened.Load(),
		Failed:    a.failed.Load(),
		Dropped:   a.dropped.Load(),
		Sent:      a.sent.Load(),
		Recv:      a.recv.Load(),
		BytesSent: a.bsent.Load(),
		BytesRecv: a.brecv.Load(),
		WireRecv:  a.cl.WireBytes(),
		Mismatch:  a.mismatch.Load(),
		Receipts:  a.receipts.Load(),
		Lat:       export(lat),
		Handshake: export(hs),
		CPU:       selfCPU(),
	}
	a.mu.Lock()
	if len(a.errs) > 0 {
		s.Errors = make(map[string]uint64, len(a.errs))
		for k, v := range a.errs {
			s.Errors[k] = v
		}
	}
	a.mu.Unlock()
	return s
}

const hexDigits = "0123456789abcdef"

func appendHex(b []byte, v uint64) []byte {
	for i := 60; i >= 0; i -= 4 {
		b = append(b, hexDigits[v>>uint(i)&0xf])
	}
	return b
}

func appendHex32(b []byte, v uint32) []byte {
	for i := 28; i >= 0; i -= 4 {
		b = append(b, hexDigits[v>>uint(i)&0xf])
	}
	return b
}

func parseHexN(b []byte, off, n int) (uint64, bool) {
	if len(b) < off+n {
		return 0, false
	}
	var v uint64
	for _, c := range b[off : off+n] {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint64(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

func parseHex(b []byte, off int) (uint64, bool) { return parseHexN(b, off, 16) }

func parseHex32(b []byte, off int) (uint32, bool) {
	v, ok := parseHexN(b, off, 8)
	return uint32(v), ok
}

func appendUint(b []byte, v uint64) []byte {
	var d [20]byte
	i := len(d)
	for {
		i--
		d[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(b, d[i:]...)
}

func appendRoom(b []byte, room int) []byte {
	b = append(b, "bench-room-"...)
	return appendUint(b, uint64(room))
}
