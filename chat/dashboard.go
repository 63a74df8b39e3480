package chat

import (
	"cmp"
	"errors"
	"net/http"
	"runtime/metrics"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/throng-ws/throng/internal/bg"
	"github.com/throng-ws/throng/internal/buildinfo"
	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// Dashboard is the data behind the operator's page (package web's
// /dashboard), served by the API as GET /api/dashboard?since=SEQ. One
// goroutine samples the node every Interval into a ring of the last History,
// so a page opened now shows the last minutes at once, and any number of
// pages polling cost the node no more than one: each poll copies the samples
// after since. The counters are cumulative, as in /metrics; the page derives
// the rates from consecutive samples.
//
// The largest rooms (room.Table.Largest, one pass over the table) and the
// cluster's rows are computed on request, at most once per Interval.
type Dashboard struct {
	// API is the source of the figures: its Server, Chat and Rooms. Its
	// Register serves the dashboard when API.Dashboard is this.
	API *API
	// Interval is the time between samples. If zero, DefaultDashboardInterval.
	Interval time.Duration
	// History is how far back the ring goes. If zero, DefaultDashboardHistory.
	History time.Duration
	// TopRooms is how many of the largest rooms are listed. If zero,
	// DefaultTopRooms.
	TopRooms int
	// NodeID names this node, in a cluster.
	NodeID string
	// Cluster, if set, reports the cluster as this node sees it: its broker
	// connection, its counters, and a row per live peer. Package cluster's
	// Node provides the figures; cmd/throng adapts them.
	Cluster func() ClusterStatus

	bg    bg.Group
	size  int         // the ring's length once full; set by Start
	probe []loopProbe // one per loop; written by the sampler and the loops

	mu      sync.Mutex
	ring    []Sample      // guarded by mu; oldest first once full
	head    int           // guarded by mu; where the next sample goes
	seq     uint64        // guarded by mu; the last sample's Seq
	top     []room.Info   // guarded by mu: the largest rooms, as of topAt
	topAt   time.Time     // guarded by mu
	cluster ClusterStatus // guarded by mu: as of topAt
}

// Defaults for Dashboard.
const (
	DefaultDashboardInterval = time.Second
	DefaultDashboardHistory  = 10 * time.Minute
	DefaultTopRooms          = 10
	// maxDashboardSamples bounds the ring whatever the settings.
	maxDashboardSamples = 3600
)

// Sample is the node at one moment. Counters are cumulative since start.
type Sample struct {
	Seq  uint64 `json:"seq"`
	Time int64  `json:"t"` // unix milliseconds

	Conns   int64 `json:"conns"`
	Sockets int   `json:"sockets"`
	// Per event loop: open connections, messages received and sent, and the
	// loop's lag: how long a job posted to it waited to run, in microseconds
	// (a loop that has not run the last probe yet reports how long it has
	// been waiting). It is the loop's load as its connections feel it.
	LoopConns  []int64  `json:"loop_conns"`
	LoopIn     []uint64 `json:"loop_in"`
	LoopOut    []uint64 `json:"loop_out"`
	LoopLagUS  []int64  `json:"loop_lag_us"`
	RSS        uint64   `json:"rss"`
	BytesPer   uint64   `json:"bytes_per_conn"`
	Heap       uint64   `json:"heap"`
	Goroutines uint64   `json:"goroutines"`
	Refusing   bool     `json:"memory_refusing"`
	Rooms      int      `json:"rooms"`
	Members    int      `json:"room_members"`

	MessagesIn  uint64 `json:"messages_in"`
	Broadcasts  uint64 `json:"broadcasts"`
	Deliveries  uint64 `json:"deliveries"` // messages written to connections
	BytesIn     uint64 `json:"bytes_in"`
	BytesOut    uint64 `json:"bytes_out"`
	RateLimited uint64 `json:"rate_limited"` // messages refused
	Bans        uint64 `json:"bans"`
	SlowClosed  uint64 `json:"slow_closed"`
	SlowDropped uint64 `json:"slow_dropped"`
	// Refused counts the upgrades refused, by reason (the handshake results
	// other than ok), only those that ever happened.
	Refused map[string]uint64 `json:"refused,omitempty"`
	// In a cluster: room messages published to the other nodes, lost on the
	// way there (all reasons), received from them, and dropped on arrival.
	ClusterPublished uint64 `json:"cluster_published,omitempty"`
	ClusterLost      uint64 `json:"cluster_lost,omitempty"`
	ClusterReceived  uint64 `json:"cluster_received,omitempty"`
	ClusterDropped   uint64 `json:"cluster_dropped,omitempty"`
}

// ClusterStatus is the cluster as one node sees it.
type ClusterStatus struct {
	Connected                          bool // to the broker
	Published, Lost, Received, Dropped uint64
	Peers                              []PeerStatus
	Heartbeat, DeadAfter               time.Duration
}

// PeerStatus is one live peer, as this node hears it (cluster.PeerStatus).
type PeerStatus struct {
	ID        string
	Synced    bool
	SilenceMS int64 // since its last message
	LagUS     int64 // its last message, sent to received, in microseconds
	// Received and Lost count its state messages, and the gaps in their
	// sequence: the canary's loss.
	Received, Lost uint64
	Conns          int64
	Rooms, Members int
}

// dashboardNode is one row of the page's cluster table.
type dashboardNode struct {
	ID      string `json:"id"`
	Self    bool   `json:"self,omitempty"`
	Live    bool   `json:"live"`
	Synced  bool   `json:"synced"`
	Conns   int64  `json:"conns"`
	Rooms   int    `json:"rooms"`
	Members int    `json:"members"`
	// The canary, from this node to the peer: silence, lag, and the state
	// messages received and lost in its sequence.
	SilenceMS int64  `json:"silence_ms"`
	LagUS     int64  `json:"lag_us"`
	Received  uint64 `json:"received"`
	Lost      uint64 `json:"lost"`
	Broker    *bool  `json:"broker,omitempty"` // this node's broker connection
}

// dashboardReply is the JSON of GET /api/dashboard.
type dashboardReply struct {
	Node       string         `json:"node,omitempty"`
	Build      buildinfo.Info `json:"build"`
	IntervalMS int64          `json:"interval_ms"`
	HistoryMS  int64          `json:"history_ms"`
	Uptime     float64        `json:"uptime_seconds"`
	Ready      bool           `json:"ready"`
	Loops      int            `json:"loops"`
	// The limits the charts are drawn against.
	MaxConns     int    `json:"max_conns"`
	MemoryLimit  uint64 `json:"memory_limit"`
	MemoryHigh   uint64 `json:"memory_high_water"`
	MemoryLow    uint64 `json:"memory_low_water"`
	SlowConsumer string `json:"slow_consumer_policy"`

	// Samples are those after since, oldest first; Seq is the newest's, for
	// the next poll's since.
	Seq     uint64      `json:"seq"`
	Samples []Sample    `json:"samples"`
	Rooms   []room.Info `json:"rooms"`
	// RoomsApprox: in a cluster, the largest rooms are this node's largest
	// and the other nodes' largest, each counted everywhere; a room large
	// only in sum may be missing.
	RoomsApprox bool            `json:"rooms_approx,omitempty"`
	Nodes       []dashboardNode `json:"nodes,omitempty"`
}

type loopProbe struct {
	posted atomic.Int64 // unix ns the pending probe was posted; 0 if none
	lag    atomic.Int64 // the last probe's wait, ns
}

func (d *Dashboard) interval() time.Duration {
	return cmp.Or(d.Interval, DefaultDashboardInterval)
}

// Start starts the sampler. It takes the first sample before it returns.
func (d *Dashboard) Start() error {
	if d.API == nil || d.API.Server == nil {
		return errNoServer
	}
	n := int(cmp.Or(d.History, DefaultDashboardHistory) / d.interval())
	d.size = min(max(n, 2), maxDashboardSamples)
	d.ring = make([]Sample, 0, d.size)
	d.probe = make([]loopProbe, len(d.API.Server.Loops()))
	d.sample(time.Now())
	d.bg.Go(d.run)
	return nil
}

// Close stops the sampler and waits for it.
func (d *Dashboard) Close() { d.bg.Stop() }

// errNoServer is returned by Start without an API or its Server.
var errNoServer = errors.New("chat: the dashboard needs an API with a Server")

func (d *Dashboard) run() {
	t := time.NewTicker(d.interval())
	defer t.Stop()
	for {
		select {
		case <-d.bg.Quit():
			return
		case now := <-t.C:
			d.sample(now)
		}
	}
}

// probeLoops reads each loop's lag and posts the next probe. A loop still
// holding the last probe reports how long that has waited, so a stuck loop
// shows as a growing lag rather than its last good figure.
func (d *Dashboard) probeLoops(loops []*poller.Loop, now time.Time) []int64 {
	out := make([]int64, len(loops))
	for i, l := range loops {
		p := &d.probe[i]
		if at := p.posted.Load(); at != 0 {
			out[i] = max(now.UnixNano()-at, p.lag.Load()) / 1e3
			continue
		}
		out[i] = p.lag.Load() / 1e3
		at := time.Now().UnixNano()
		p.posted.Store(at)
		if !l.Post(poller.FuncJob(func() {
			p.lag.Store(time.Now().UnixNano() - at)
			p.posted.Store(0)
		})) {
			p.posted.Store(0) // the loop has stopped
		}
	}
	return out
}

var runtimeSamples = []string{"/memory/classes/heap/objects:bytes", "/sched/goroutines:goroutines"}

// sample takes one Sample into the ring.
func (d *Dashboard) sample(now time.Time) {
	a := d.API
	srv := a.Server
	st := srv.Stats()
	mem := srv.Memory()
	s := Sample{
		Time:        now.UnixMilli(),
		Conns:       st.Open,
		Sockets:     st.Sockets,
		LoopConns:   st.OpenPerLoop,
		LoopIn:      st.MessagesInPerLoop,
		LoopOut:     st.MessagesOutPerLoop,
		LoopLagUS:   d.probeLoops(srv.Loops(), now),
		RSS:         mem.RSS,
		BytesPer:    uint64(mem.BytesPerConn + 0.5),
		Refusing:    mem.Refusing,
		MessagesIn:  st.MessagesIn,
		Deliveries:  st.MessagesOut,
		BytesIn:     st.BytesIn,
		BytesOut:    st.BytesOut,
		SlowClosed:  st.SlowClosed,
		SlowDropped: st.SlowDropped,
	}
	for reason, n := range st.Handshakes {
		if reason != server.HandshakeOK.String() && n > 0 {
			if s.Refused == nil {
				s.Refused = make(map[string]uint64)
			}
			s.Refused[reason] = n
		}
	}
	rs := make([]metrics.Sample, len(runtimeSamples))
	for i, name := range runtimeSamples {
		rs[i].Name = name
	}
	metrics.Read(rs)
	if rs[0].Value.Kind() == metrics.KindUint64 {
		s.Heap = rs[0].Value.Uint64()
	}
	if rs[1].Value.Kind() == metrics.KindUint64 {
		s.Goroutines = rs[1].Value.Uint64()
	}
	if a.Chat != nil {
		cs := a.Chat.Stats()
		s.RateLimited, s.Bans = cs.RateLimited, cs.Bans
	}
	if a.Rooms != nil {
		s.Broadcasts = a.Rooms.BroadcastStats().Recipients.Count
		rs := a.Rooms.Stats()
		s.Rooms, s.Members = rs.Rooms, rs.Members
	}
	if d.Cluster != nil {
		cs := d.Cluster()
		s.ClusterPublished, s.ClusterLost, s.ClusterReceived, s.ClusterDropped = cs.Published, cs.Lost, cs.Received, cs.Dropped
	}
	d.mu.Lock()
	d.seq++
	s.Seq = d.seq
	if len(d.ring) < d.size {
		d.ring = append(d.ring, s)
	} else {
		d.ring[d.head] = s
		d.head = (d.head + 1) % len(d.ring)
	}
	d.mu.Unlock()
}

// since copies the samples after seq, oldest first.
func (d *Dashboard) since(seq uint64) ([]Sample, uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Sample, 0, min(len(d.ring), int(d.seq-min(seq, d.seq))))
	for i := range d.ring {
		s := d.ring[(d.head+i)%len(d.ring)]
		if s.Seq > seq {
			out = append(out, s)
		}
	}
	return out, d.seq
}

// current returns the largest rooms and the cluster's state, computing them
// at most once per Interval whatever the number of pages polling.
func (d *Dashboard) current(now time.Time) ([]room.Info, bool, ClusterStatus) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.topAt.IsZero() && now.Sub(d.topAt) < d.interval() {
		return d.top, d.Cluster != nil, d.cluster
	}
	// Computed under mu so that pages polling at once wait for one pass
	// rather than each making their own.
	k := cmp.Or(d.TopRooms, DefaultTopRooms)
	var top []room.Info
	if d.API.Rooms != nil {
		top = d.API.Rooms.Largest(k)
	}
	if cl := d.API.cluster(); cl != nil {
		top = clusterLargest(top, cl.RemoteRooms(""), d.API.Rooms, cl, k)
	}
	if d.Cluster != nil {
		d.cluster = d.Cluster()
	}
	d.top, d.topAt = top, now
	return top, d.Cluster != nil, d.cluster
}

// clusterLargest takes the candidates (this node's largest, and the other
// nodes' largest by their counts) and ranks them by their count everywhere.
func clusterLargest(local, remote []room.Info, t *room.Table, cl Cluster, k int) []room.Info {
	better := func(a, b room.Info) int {
		if a.Members != b.Members {
			return cmp.Compare(b.Members, a.Members)
		}
		return cmp.Compare(a.ID, b.ID)
	}
	slices.SortFunc(remote, better)
	seen := make(map[string]bool, 2*k)
	var out []room.Info
	add := func(id string) {
		if seen[id] {
			return
		}
		seen[id] = true
		n := cl.Remote(id)
		if t != nil {
			n += t.Count(id)
		}
		out = append(out, room.Info{ID: id, Members: n})
	}
	for _, ri := range local {
		add(ri.ID)
	}
	for _, ri := range remote[:min(k, len(remote))] {
		add(ri.ID)
	}
	slices.SortFunc(out, better)
	return out[:min(k, len(out))]
}

func (d *Dashboard) serve(w http.ResponseWriter, r *http.Request) {
	var since uint64
	if s := r.URL.Query().Get("since"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeAPIError(w, http.StatusBadRequest, "invalid_since", "since must be a sample's seq (a whole number)")
			return
		}
		since = n
	}
	now := time.Now()
	srv := d.API.Server
	mem := srv.Memory()
	rep := dashboardReply{
		Node:         d.NodeID,
		Build:        buildinfo.Read(),
		IntervalMS:   d.interval().Milliseconds(),
		HistoryMS:    int64(d.size) * d.interval().Milliseconds(),
		Uptime:       srv.Overview().UptimeSeconds,
		Ready:        srv.Ready(),
		Loops:        len(srv.Loops()),
		MaxConns:     srv.Options().MaxConns,
		MemoryLimit:  mem.Limit,
		MemoryHigh:   mem.HighWater,
		MemoryLow:    mem.LowWater,
		SlowConsumer: srv.Options().SlowConsumer.String(),
	}
	rep.Samples, rep.Seq = d.since(since)
	top, inCluster, cs := d.current(now)
	rep.Rooms = append([]room.Info{}, top...)
	rep.RoomsApprox = inCluster
	if inCluster {
		rep.Nodes = clusterRows(d.NodeID, srv.Conns(), d.API.Rooms, cs)
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, rep)
}

// clusterRows is the page's cluster table: this node first, then its peers
// in id order.
func clusterRows(self string, conns int, t *room.Table, cs ClusterStatus) []dashboardNode {
	broker := cs.Connected
	me := dashboardNode{ID: self, Self: true, Live: true, Synced: true, Conns: int64(conns), Broker: &broker}
	if t != nil {
		rs := t.Stats()
		me.Rooms, me.Members = rs.Rooms, rs.Members
	}
	rows := []dashboardNode{me}
	peers := slices.Clone(cs.Peers)
	slices.SortFunc(peers, func(a, b PeerStatus) int { return cmp.Compare(a.ID, b.ID) })
	for _, p := range peers {
		rows = append(rows, dashboardNode{
			ID: p.ID, Live: cs.DeadAfter <= 0 || time.Duration(p.SilenceMS)*time.Millisecond < cs.DeadAfter,
			Synced: p.Synced, Conns: p.Conns, Rooms: p.Rooms, Members: p.Members,
			SilenceMS: p.SilenceMS, LagUS: p.LagUS, Received: p.Received, Lost: p.Lost,
		})
	}
	return rows
}
