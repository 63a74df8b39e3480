package handoff

import (
	"net"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/throng-ws/throng/internal/metric"
)

// Collector exports the upgrader's counters; the names are listed in
// docs/OPERATIONS.md.
func (u *Upgrader) Collector() prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("throng_upgrade_"+name, help, labels, nil)
	}
	return &collector{u: u,
		total:    d("total", "Upgrades asked for (SIGUSR2), by result: committed (the new process owns every connection), rolled_back (it failed; every connection kept), refused (another was running, or the backend cannot hand over).", "result"),
		running:  d("in_progress", "1 while an upgrade runs."),
		conns:    d("last_connections", "Connections handed over by the last committed upgrade."),
		frozen:   d("last_frozen_seconds", "How long the last committed upgrade kept connections frozen: from the freeze to the commit's acknowledgement."),
		maxBatch: d("last_max_batch_bytes", "The largest state batch of the last committed upgrade."),
	}
}

type collector struct {
	u                                       *Upgrader
	total, running, conns, frozen, maxBatch *prometheus.Desc
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.total, c.running, c.conns, c.frozen, c.maxBatch} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := &c.u.stats
	metric.Counter(ch, c.total, s.Committed.Load(), "committed")
	metric.Counter(ch, c.total, s.RolledBack.Load(), "rolled_back")
	metric.Counter(ch, c.total, s.Refused.Load(), "refused")
	metric.Gauge(ch, c.running, metric.Bool(s.Running.Load()))
	metric.Gauge(ch, c.conns, float64(s.Conns.Load()))
	metric.Gauge(ch, c.frozen, float64(s.Nanos.Load())/1e9)
	metric.Gauge(ch, c.maxBatch, float64(s.MaxBatch.Load()))
}

// Refuse counts an upgrade refused before it started (the backend cannot
// hand over).
func (u *Upgrader) Refuse() { u.stats.Refused.Add(1) }

// Notify sends state ("READY=1", "MAINPID=…") to systemd's notify socket
// when the process runs under Type=notify, and does nothing otherwise. A
// new process that took over announces itself as the main process, so
// systemd follows it and does not mistake the old one's exit for the
// service's.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
