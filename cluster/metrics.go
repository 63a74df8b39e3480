package cluster

import (
	"sync/atomic"
	"time"

	"github.com/throng-ws/throng/internal/metric"

	"github.com/prometheus/client_golang/prometheus"
)

// counters are the node's event counts, read at scrape time.
type counters struct {
	published   atomic.Uint64 // room messages handed to the broker
	lost        [numLost]atomic.Uint64
	received    atomic.Uint64 // room messages from other nodes delivered here
	stale       atomic.Uint64 // room messages of a subscription since replaced or ended
	droppedGone atomic.Uint64 // dropped by the NATS client on subscriptions since ended

	statePublished atomic.Uint64
	stateLost      atomic.Uint64 // own state messages the broker did not take
	badState       atomic.Uint64 // state messages that did not parse
	snapshots      atomic.Uint64 // snapshots published
	snapAsked      atomic.Uint64 // requests for a snapshot received
	snapRequests   atomic.Uint64 // requests for a snapshot sent

	reconnects  atomic.Uint64
	disconnects atomic.Uint64
	peersDead   atomic.Uint64 // nodes dropped for silence
	goneMembers atomic.Uint64 // user-left written here for members of dropped nodes
	userRefused atomic.Uint64 // connections refused by the cluster-wide per-user limit
}

// Stats are the node's counters.
type Stats struct {
	Connected bool
	// Published counts the room messages handed to the broker; Lost, by
	// reason, those that reached no other node because the broker was away
	// ("broker_down"), the queue was full, the node was closing, or the broker
	// refused them.
	Published uint64
	Lost      map[string]uint64
	// Received counts the room messages from other nodes delivered here;
	// Dropped those the NATS client dropped because the inbound queue was full.
	Received, Dropped uint64
	// Subscriptions is the rooms with local members, each one subscription.
	Subscriptions int
	Reconnects    uint64
	PeersDead     uint64
	// GoneMembers counts the user-left messages written here for the members
	// of nodes that died (see presence.go).
	GoneMembers uint64
	UserRefused uint64
	Snapshots   uint64
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	s := Stats{
		Connected:   n.connected.Load(),
		Published:   n.c.published.Load(),
		Lost:        make(map[string]uint64, numLost),
		Received:    n.c.received.Load(),
		Dropped:     n.dropped(),
		Reconnects:  n.c.reconnects.Load(),
		PeersDead:   n.c.peersDead.Load(),
		GoneMembers: n.c.goneMembers.Load(),
		UserRefused: n.c.userRefused.Load(),
		Snapshots:   n.c.snapshots.Load(),
	}
	for i := range n.c.lost {
		s.Lost[lostLabels[i]] = n.c.lost[i].Load()
	}
	n.imu.Lock()
	s.Subscriptions = len(n.interest)
	n.imu.Unlock()
	return s
}

// dropped sums the messages the NATS client dropped on the room
// subscriptions, live and ended.
func (n *Node) dropped() uint64 {
	d := n.c.droppedGone.Load()
	n.imu.Lock()
	defer n.imu.Unlock()
	for _, it := range n.interest {
		if it.sub == nil {
			continue
		}
		if v, err := it.sub.Dropped(); err == nil {
			d += uint64(v)
		}
	}
	return d
}

// Collector returns a Prometheus collector for the node's metrics, the
// canary's per-peer figures among them. Like the server's, it builds constant
// metrics at scrape time and registers nothing globally.
func (n *Node) Collector() prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("throng_cluster_"+name, help, labels, nil)
	}
	return &collector{n: n, descs: clusterDescs{
		info:         d("node_info", "1, labelled with this node's id.", "node"),
		connected:    d("connected", "1 while connected to the NATS broker."),
		reconnects:   d("reconnects_total", "Reconnections to the broker."),
		disconnects:  d("disconnects_total", "Losses of the broker connection."),
		published:    d("published_total", "Room messages handed to the broker for the other nodes."),
		lost:         d("lost_total", "Room messages that reached no other node (delivered here only), by reason: broker_down, queue_full, closed, error.", "reason"),
		received:     d("received_total", "Room messages from other nodes delivered to this node's members."),
		dropped:      d("inbound_dropped_total", "Room messages from other nodes dropped because the inbound queue was full."),
		stale:        d("inbound_stale_total", "Room messages dropped because they came on a subscription since ended (its members left), or were delivered already (a copy around an upgrade's cut)."),
		subs:         d("subscriptions", "Rooms with local members: one broker subscription each."),
		peers:        d("peers", "Other nodes heard within --cluster-dead-after."),
		peersDead:    d("peers_dead_total", "Nodes dropped from every count after --cluster-dead-after of silence."),
		goneMembers:  d("dead_members_left_total", "user-left messages this node wrote to its members for the members of nodes that died."),
		statePub:     d("state_published_total", "State messages (heartbeats, count changes, snapshots) published."),
		stateLost:    d("state_lost_total", "State messages the broker did not take; the others see the gap."),
		snapshots:    d("snapshots_total", "Snapshots of this node's counts published."),
		snapAsked:    d("snapshot_requests_received_total", "Requests from other nodes for a snapshot."),
		snapRequests: d("snapshot_requests_sent_total", "Requests to other nodes for a snapshot, after a gap in their state."),
		userRefused:  d("user_limit_refused_total", "Connections refused by --max-conns-per-user counted across the nodes."),
		peerLag:      d("peer_lag_seconds", "Canary: time the peer's last state message took from send to receipt.", "peer"),
		peerSilence:  d("peer_silence_seconds", "Canary: time since the peer's last state message; above the heartbeat when the broker or the peer stalls.", "peer"),
		peerRecv:     d("peer_messages_total", "Canary: state messages received from the peer.", "peer"),
		peerLost:     d("peer_lost_total", "Canary: state messages of the peer that never arrived (gaps in its sequence).", "peer"),
		peerSynced:   d("peer_synced", "1 if the peer's counts here are whole (a snapshot since the last gap).", "peer"),
		peerMembers:  d("peer_members", "Room members the peer announced.", "peer"),
	}}
}

type clusterDescs struct {
	info, connected, reconnects, disconnects                          *prometheus.Desc
	published, lost, received, dropped, stale, subs                   *prometheus.Desc
	peers, peersDead, goneMembers, statePub, stateLost                *prometheus.Desc
	snapshots, snapAsked, snapRequests, userRefused                   *prometheus.Desc
	peerLag, peerSilence, peerRecv, peerLost, peerSynced, peerMembers *prometheus.Desc
}

type collector struct {
	n     *Node
	descs clusterDescs
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	d := &c.descs
	for _, x := range []*prometheus.Desc{
		d.info, d.connected, d.reconnects, d.disconnects, d.published, d.lost, d.received, d.dropped, d.stale,
		d.subs, d.peers, d.peersDead, d.goneMembers, d.statePub, d.stateLost, d.snapshots, d.snapAsked, d.snapRequests,
		d.userRefused, d.peerLag, d.peerSilence, d.peerRecv, d.peerLost, d.peerSynced, d.peerMembers,
	} {
		ch <- x
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	n, d := c.n, &c.descs
	counter := func(desc *prometheus.Desc, v uint64, labels ...string) { metric.Counter(ch, desc, v, labels...) }
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) { metric.Gauge(ch, desc, v, labels...) }
	boolean := metric.Bool
	s := n.Stats()
	gauge(d.info, 1, n.id)
	gauge(d.connected, boolean(s.Connected))
	counter(d.reconnects, s.Reconnects)
	counter(d.disconnects, n.c.disconnects.Load())
	counter(d.published, s.Published)
	for i, l := range lostLabels {
		counter(d.lost, n.c.lost[i].Load(), l)
	}
	counter(d.received, s.Received)
	counter(d.dropped, s.Dropped)
	counter(d.stale, n.c.stale.Load())
	gauge(d.subs, float64(s.Subscriptions))
	peers := n.peers.status(time.Now())
	gauge(d.peers, float64(len(peers)))
	counter(d.peersDead, s.PeersDead)
	counter(d.goneMembers, s.GoneMembers)
	counter(d.statePub, n.c.statePublished.Load())
	counter(d.stateLost, n.c.stateLost.Load())
	counter(d.snapshots, s.Snapshots)
	counter(d.snapAsked, n.c.snapAsked.Load())
	counter(d.snapRequests, n.c.snapRequests.Load())
	counter(d.userRefused, s.UserRefused)
	for _, p := range peers {
		gauge(d.peerLag, p.Lag.Seconds(), p.ID)
		gauge(d.peerSilence, p.Silence.Seconds(), p.ID)
		counter(d.peerRecv, p.Received, p.ID)
		counter(d.peerLost, p.Lost, p.ID)
		gauge(d.peerSynced, boolean(p.Synced), p.ID)
		gauge(d.peerMembers, float64(p.Members), p.ID)
	}
}
