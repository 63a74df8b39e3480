package server

import (
	"runtime/metrics"
	"strconv"
	"time"

	"github.com/throng-ws/throng/internal/metric"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/throng-ws/throng/auth"
)

// Collector returns a Prometheus collector for the transport's counters. It
// reads them at scrape time and builds constant metrics, so the hot path keeps
// its plain atomic fields and nothing is registered globally: the caller
// registers the collector on its own registry. Applications export their own
// (package chat's Collector).
func (s *Server) Collector() prometheus.Collector {
	return &collector{s: s, d: newMetricDescs()}
}

// metricDescs describes every metric the collector exports. The names are
// listed in docs/OPERATIONS.md; keep both in step.
type metricDescs struct {
	conns, sockets, maxConns, accepted, ready *prometheus.Desc
	acceptErrors, shed                        *prometheus.Desc
	handshakes, authFailures, closes          *prometheus.Desc
	msgsIn, msgsOut, bytesIn, bytesOut        *prometheus.Desc
	slowClosed, slowDropped, slowPolicy       *prometheus.Desc
	rss, baseline, bytesPerConn               *prometheus.Desc
	memLimit, memHigh, memLow, memRefusing    *prometheus.Desc
	memTrims                                  *prometheus.Desc
	deflateConns, deflateOut, deflateIn       *prometheus.Desc
}

func newMetricDescs() *metricDescs {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("throng_"+name, help, labels, nil)
	}
	return &metricDescs{
		conns:        d("connections", "Open WebSocket connections, per event loop.", "loop"),
		sockets:      d("sockets", "Open sockets, handshakes in progress included, per event loop.", "loop"),
		maxConns:     d("max_connections", "The --max-conns cap on open connections; 0 for none."),
		accepted:     d("sockets_accepted_total", "Sockets accepted."),
		acceptErrors: d("accept_errors_total", "Failed accepts on the WebSocket listener: out of descriptors or memory, or another listener error."),
		shed:         d("accept_shed_total", "WebSocket connections accepted only to be closed at once because the process was out of descriptors."),
		ready:        d("ready", "1 while the server accepts connections, 0 once it drains."),
		handshakes:   d("handshakes_total", "Upgrade attempts, by result.", "result"),
		authFailures: d("auth_failures_total", "Token verification failures at the handshake, by reason.", "reason"),
		closes:       d("closes_total", "Connections closed, by reason and close code. For reason=peer the code is the peer's.", "reason", "code"),
		msgsIn:       d("messages_received_total", "Data messages received."),
		msgsOut:      d("messages_sent_total", "Data messages sent (a broadcast counts once per recipient)."),
		bytesIn:      d("received_bytes_total", "Payload bytes of the data messages received."),
		bytesOut:     d("sent_bytes_total", "Payload bytes of the data messages sent."),
		slowClosed:   d("slow_consumer_closed_total", "Connections closed (1008) as slow consumers under --slow-consumer=close."),
		slowDropped:  d("slow_consumer_dropped_messages_total", "Messages dropped for slow consumers under --slow-consumer=drop."),
		slowPolicy:   d("slow_consumer_policy", "The slow-consumer policy in force: 1 for the policy label.", "policy"),
		rss:          d("memory_rss_bytes", "Resident set size of the process, as admission control reads it."),
		baseline:     d("memory_baseline_rss_bytes", "Resident set size the last time no connection was open."),
		bytesPerConn: d("bytes_per_connection", "Estimated memory per connection: (RSS - baseline RSS) / connections. Kernel socket memory is not included."),
		memLimit:     d("memory_limit_bytes", "The --memory-limit; 0 when memory does not limit admission."),
		memHigh:      d("memory_high_water_bytes", "RSS at which new connections are refused."),
		memLow:       d("memory_low_water_bytes", "RSS below which new connections are admitted again."),
		memRefusing:  d("memory_refusing", "1 while new connections are refused because RSS passed the high-water mark."),
		memTrims:     d("memory_trims_total", "Times the heap's free memory was given back to the OS after allocation went quiet (--trim-idle-memory)."),
		deflateConns: d("deflate_connections", "Open connections that negotiated permessage-deflate."),
		deflateOut:   d("deflate_messages_sent_total", "Data messages sent compressed (permessage-deflate); sent_bytes_total counts them compressed."),
		deflateIn:    d("deflate_messages_received_total", "Data messages received compressed; received_bytes_total counts them compressed."),
	}
}

type collector struct {
	s *Server
	d *metricDescs
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	d := c.d
	for _, x := range []*prometheus.Desc{
		d.conns, d.sockets, d.maxConns, d.accepted, d.acceptErrors, d.shed, d.ready, d.handshakes, d.authFailures, d.closes,
		d.msgsIn, d.msgsOut, d.bytesIn, d.bytesOut, d.slowClosed, d.slowDropped, d.slowPolicy,
		d.rss, d.baseline, d.bytesPerConn, d.memLimit, d.memHigh, d.memLow, d.memRefusing, d.memTrims,
		d.deflateConns, d.deflateOut, d.deflateIn,
	} {
		ch <- x
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s, d := c.s, c.d
	counter := func(desc *prometheus.Desc, v uint64, labels ...string) { metric.Counter(ch, desc, v, labels...) }
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) { metric.Gauge(ch, desc, v, labels...) }
	boolean := metric.Bool

	// Straight from the per-loop counters, by label index, rather than through
	// Stats and its maps.
	var accepted, msgsIn, msgsOut, bytesIn, bytesOut, slowClosed, slowDropped uint64
	var deflateConns int64
	var deflateOut, deflateIn uint64
	var handshakes [numHandshakeResults]uint64
	var authFailures [auth.NumReasons]uint64
	var closes [numCloseReasons]uint64
	var peerCodes [numPeerCodes]uint64
	for i, ls := range s.loops {
		k := &ls.c
		loop := strconv.Itoa(i)
		gauge(d.conns, float64(k.open.Load()), loop)
		gauge(d.sockets, float64(ls.l.Len()), loop)
		accepted += k.accepted.Load()
		msgsIn += k.msgsIn.Load()
		msgsOut += k.msgsOut.Load()
		bytesIn += k.bytesIn.Load()
		bytesOut += k.bytesOut.Load()
		slowClosed += k.slow[SlowClose].Load()
		slowDropped += k.slow[SlowDrop].Load()
		deflateConns += k.deflateOpen.Load()
		deflateOut += k.deflateOut.Load()
		deflateIn += k.deflateIn.Load()
		for j := range handshakes {
			handshakes[j] += k.handshakes[j].Load()
		}
		for j := range authFailures {
			authFailures[j] += k.authFailures[j].Load()
		}
		for j := range closes {
			closes[j] += k.closes[j].Load()
		}
		for j := range peerCodes {
			peerCodes[j] += k.peerCodes[j].Load()
		}
	}
	gauge(d.maxConns, float64(s.opts.MaxConns))
	gauge(d.ready, boolean(s.Ready()))
	counter(d.accepted, accepted)
	ps := s.p.Stats()
	counter(d.acceptErrors, ps.AcceptErrors)
	counter(d.shed, ps.Shed)
	for j, v := range handshakes {
		counter(d.handshakes, v, HandshakeResult(j).String())
	}
	for j, v := range authFailures {
		if auth.Reason(j) != auth.ReasonNone {
			counter(d.authFailures, v, auth.Reason(j).String())
		}
	}
	for j, v := range closes {
		r := CloseReason(j)
		if r == ClosePeer {
			continue
		}
		code := strconv.Itoa(int(r.Code()))
		if r == CloseOperator {
			code = "chosen" // whatever code the operator gave
		}
		counter(d.closes, v, r.String(), code)
	}
	for j, v := range peerCodes {
		counter(d.closes, v, ClosePeer.String(), peerCodeLabels[j])
	}
	counter(d.msgsIn, msgsIn)
	counter(d.msgsOut, msgsOut)
	counter(d.bytesIn, bytesIn)
	counter(d.bytesOut, bytesOut)
	counter(d.slowClosed, slowClosed)
	counter(d.slowDropped, slowDropped)
	gauge(d.slowPolicy, 1, s.opts.SlowConsumer.String())
	gauge(d.deflateConns, float64(deflateConns))
	counter(d.deflateOut, deflateOut)
	counter(d.deflateIn, deflateIn)

	m := s.Memory()
	gauge(d.rss, float64(m.RSS))
	gauge(d.baseline, float64(m.Baseline))
	gauge(d.bytesPerConn, m.BytesPerConn)
	gauge(d.memLimit, float64(m.Limit))
	gauge(d.memHigh, float64(m.HighWater))
	gauge(d.memLow, float64(m.LowWater))
	gauge(d.memRefusing, boolean(m.Refusing))
	if s.trim != nil {
		counter(d.memTrims, s.trim.trims.Load())
	}
}

// Overview is the JSON of /api/stats: the essentials of the metrics, for a
// person or a script without Prometheus.
type Overview struct {
	Time          time.Time `json:"time"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	Ready         bool      `json:"ready"` // false once draining

	Connections        int64   `json:"connections"`          // open WebSocket connections
	ConnectionsPerLoop []int64 `json:"connections_per_loop"` // the same, per event loop
	Sockets            int     `json:"sockets"`              // open sockets, handshakes included
	MaxConns           int     `json:"max_conns"`            // the cap; 0 for none

	RSSBytes         uint64 `json:"rss_bytes"`          // resident set size now
	BaselineRSSBytes uint64 `json:"baseline_rss_bytes"` // RSS when last no connection was open
	// BytesPerConn is (rss_bytes - baseline_rss_bytes) / connections: the memory a
	// connection costs. RSSPerConn is rss_bytes / connections. Both are 0
	// without connections.
	BytesPerConn     uint64 `json:"bytes_per_conn"`
	RSSPerConn       uint64 `json:"rss_per_conn"`
	HeapBytes        uint64 `json:"heap_bytes"`            // heap objects, live and not yet swept
	GoRuntimeBytes   uint64 `json:"go_runtime_bytes"`      // all memory the Go runtime has mapped
	GoMemLimitBytes  int64  `json:"go_memory_limit_bytes"` // GOMEMLIMIT in force
	Goroutines       uint64 `json:"goroutines"`
	MemoryLimitBytes uint64 `json:"memory_limit_bytes"` // --memory-limit; 0: not limiting admission
	MemoryHighWater  uint64 `json:"memory_high_water_bytes"`
	MemoryLowWater   uint64 `json:"memory_low_water_bytes"`
	MemoryRefusing   bool   `json:"memory_refusing"` // new connections refused for memory

	Handshakes   map[string]uint64 `json:"handshakes"`    // by result
	AuthFailures map[string]uint64 `json:"auth_failures"` // by reason
	Closes       map[string]uint64 `json:"closes"`        // by reason
	PeerCloses   map[string]uint64 `json:"peer_closes"`   // closes the peer started, by its code
	MessagesIn   uint64            `json:"messages_in"`
	MessagesOut  uint64            `json:"messages_out"`
	BytesIn      uint64            `json:"bytes_in"`  // payload bytes
	BytesOut     uint64            `json:"bytes_out"` // payload bytes
	SlowConsumer string            `json:"slow_consumer_policy"`
	SlowClosed   uint64            `json:"slow_closed"`
	SlowDropped  uint64            `json:"slow_dropped"`
	// permessage-deflate: "on" or "off", the connections that negotiated
	// it, and the messages sent and received compressed.
	Compression    string `json:"compression"`
	DeflateConns   int64  `json:"deflate_connections"`
	DeflateMsgsOut uint64 `json:"deflate_messages_out"`
	DeflateMsgsIn  uint64 `json:"deflate_messages_in"`
}

// Overview gathers the transport's essentials. It reads RSS and the Go
// runtime's metrics, which stop nothing.
func (s *Server) Overview() Overview {
	st := s.Stats()
	m := s.Memory()
	now := s.now()
	o := Overview{
		Time:               now.UTC(),
		UptimeSeconds:      now.Sub(s.started).Seconds(),
		Ready:              s.Ready(),
		Connections:        st.Open,
		ConnectionsPerLoop: st.OpenPerLoop,
		Sockets:            st.Sockets,
		MaxConns:           s.opts.MaxConns,
		RSSBytes:           m.RSS,
		BaselineRSSBytes:   m.Baseline,
		BytesPerConn:       uint64(m.BytesPerConn + 0.5),
		RSSPerConn:         uint64(m.RSSPerConn + 0.5),
		MemoryLimitBytes:   m.Limit,
		MemoryHighWater:    m.HighWater,
		MemoryLowWater:     m.LowWater,
		MemoryRefusing:     m.Refusing,
		Handshakes:         st.Handshakes,
		AuthFailures:       st.AuthFailures,
		Closes:             st.Closes,
		PeerCloses:         st.PeerCloses,
		MessagesIn:         st.MessagesIn,
		MessagesOut:        st.MessagesOut,
		BytesIn:            st.BytesIn,
		BytesOut:           st.BytesOut,
		SlowConsumer:       s.opts.SlowConsumer.String(),
		SlowClosed:         st.SlowClosed,
		SlowDropped:        st.SlowDropped,
		Compression:        s.opts.Compression.String(),
		DeflateConns:       st.DeflateOpen,
		DeflateMsgsOut:     st.DeflateMsgsOut,
		DeflateMsgsIn:      st.DeflateMsgsIn,
	}
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/sched/goroutines:goroutines"},
		{Name: "/gc/gomemlimit:bytes"},
	}
	metrics.Read(samples)
	value := func(i int) uint64 {
		if samples[i].Value.Kind() == metrics.KindUint64 {
			return samples[i].Value.Uint64()
		}
		return 0
	}
	o.HeapBytes, o.GoRuntimeBytes, o.Goroutines = value(0), value(1), value(2)
	o.GoMemLimitBytes = int64(value(3))
	return o
}
