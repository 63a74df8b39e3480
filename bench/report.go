package bench

import (
	"cmp"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"maps"
	"math"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is one bench run: the configuration and a result per target. It is
// what --json writes.
type Report struct {
	Scenario string    `json:"scenario"`
	Started  time.Time `json:"started"`
	CPUs     int       `json:"cpus"`
	Config   Config    `json:"config"`
	Results  []*Result `json:"results"`
}

// Result is every figure measured against one target. Latencies are in
// milliseconds, memory in bytes.
type Result struct {
	Target  string `json:"target"`
	URL     string `json:"url"`
	Workers int    `json:"workers"` // processes that generated the load: workers or agents
	Error   string `json:"error,omitempty"`
	// Thresholds are Config.Thresholds checked against this result.
	Thresholds []ThresholdResult `json:"thresholds,omitempty"`

	// Run is the run's id on NATS, with agents.
	Run string `json:"run,omitempty"`
	// Agents are each agent's own figures, whose sums are the result's.
	Agents []AgentStats `json:"agents,omitempty"`
	// LostConns are the connections held by agents lost during the run.
	LostConns int           `json:"lost_connections,omitempty"`
	Stages    []StageResult `json:"stages,omitempty"`

	Conns     ConnStats         `json:"conns"`
	Handshake *Latency          `json:"handshake_latency,omitempty"`
	Messages  MessageStats      `json:"messages"`
	Latency   *Latency          `json:"latency,omitempty"`
	Errors    map[string]uint64 `json:"errors,omitempty"`
	Server    *ServerStats      `json:"server,omitempty"`
	Client    ClientStats       `json:"client"`

	Memory     []MemPoint    `json:"memory,omitempty"`
	Probe      *ProbeStats   `json:"probe,omitempty"`
	Echo       *EchoStats    `json:"echo,omitempty"`
	Steps      []Step        `json:"steps,omitempty"`
	MaxClients int           `json:"max_clients,omitempty"`
	Chat       *ChatStats    `json:"chat,omitempty"`
	Churn      *ChurnStats   `json:"churn,omitempty"`
	Storm      *StormStats   `json:"storm,omitempty"`
	Upgrade    *UpgradeStats `json:"upgrade,omitempty"`
	Timeline   []Tick        `json:"timeline,omitempty"`
	Notes      []string      `json:"notes,omitempty"`
	// VsFloor is this result over the floor target's (Config.Floor).
	VsFloor *VsFloor `json:"vs_floor,omitempty"`
}

// AgentStats is one agent's share of a run, as the agent counted it.
type AgentStats struct {
	Name     string `json:"name"`
	Host     string `json:"host"`
	PID      int    `json:"pid"`
	Capacity int    `json:"capacity"`
	Opened   int    `json:"opened"`
	Failed   int    `json:"failed"`
	Dropped  int    `json:"dropped"`
	Peak     int    `json:"peak"`
	Sent     uint64 `json:"sent"`
	Recv     uint64 `json:"recv"`
	Mismatch uint64 `json:"mismatch"`
	Receipts uint64 `json:"receipts"`
	// Lost says why the agent was lost mid-run; LostConns is its share then.
	Lost      string `json:"lost,omitempty"`
	LostConns int    `json:"lost_connections,omitempty"`
}

// ConnStats counts connections over the run.
type ConnStats struct {
	Requested int `json:"requested"`
	Opened    int `json:"opened"`  // upgrades (and joins) completed, reconnects included
	Failed    int `json:"failed"`  // dials or upgrades that never opened
	Dropped   int `json:"dropped"` // open connections that ended without our asking
	PeakOpen  int `json:"peak_open"`
	Held      int `json:"held,omitempty"` // idle: open at the end of the hold
}

// MessageStats counts data messages over the run.
type MessageStats struct {
	Sent      uint64 `json:"sent"`
	Recv      uint64 `json:"recv"`
	BytesSent uint64 `json:"bytes_sent"`
	BytesRecv uint64 `json:"bytes_recv"`
	Mismatch  uint64 `json:"mismatch"` // received messages that were not what was expected
}

// Latency is a latency distribution in milliseconds.
type Latency struct {
	Count int64   `json:"count"`
	Min   float64 `json:"min"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
}

// ServerStats are measurements of the server process.
type ServerStats struct {
	PID        int     `json:"pid,omitempty"`
	RSSBefore  int64   `json:"rss_before,omitempty"`
	RSSAfter   int64   `json:"rss_after,omitempty"`
	RSSPerConn float64 `json:"rss_per_conn,omitempty"`
	// After idle's traffic phase and a second hold (see Config.Traffic).
	RSSAfterTraffic        int64   `json:"rss_after_traffic,omitempty"`
	RSSPerConnAfterTraffic float64 `json:"rss_per_conn_after_traffic,omitempty"`
	CPUSeconds             float64 `json:"cpu_seconds,omitempty"`
	MsgsPerCPUSecond       float64 `json:"msgs_per_cpu_second,omitempty"`
	CPUMicrosPerMsg        float64 `json:"cpu_us_per_msg,omitempty"`
}

// ClientStats is the harness's own cost, so a run limited by the client rather
// than the server shows as such.
type ClientStats struct {
	CPUSeconds  float64 `json:"cpu_seconds"`
	WallSeconds float64 `json:"wall_seconds"`
	Cores       float64 `json:"cores"`       // CPU seconds per wall second
	Utilization float64 `json:"utilization"` // Cores over the machine's CPUs
	Bound       bool    `json:"client_bound"`
}

// clientBoundAt is the share of the machine's CPUs past which the harness, not
// the server, may be what limits a run.
const clientBoundAt = 0.45

func (c *ClientStats) finish() {
	if c.WallSeconds > 0 {
		c.Cores = c.CPUSeconds / c.WallSeconds
		c.Utilization = c.Cores / float64(numCPU())
		c.Bound = c.Bound || c.Utilization >= clientBoundAt
	}
}

// MemPoint is the server's memory growth at a connection count.
type MemPoint struct {
	Conns     int     `json:"conns"`
	RSSGrowth int64   `json:"rss_growth"`
	PerConn   float64 `json:"per_conn"`
}

// ProbeStats is idle's liveness check.
type ProbeStats struct {
	Sampled int `json:"sampled"`
	Alive   int `json:"alive"`
}

// EchoStats is the echo scenario's measured window.
type EchoStats struct {
	Conns            int     `json:"conns"`
	Inflight         int     `json:"inflight"`
	Size             int     `json:"size"`
	Seconds          float64 `json:"seconds"`
	Echoes           uint64  `json:"echoes"`
	Lost             int     `json:"lost"`
	PerSec           float64 `json:"per_sec"`
	ClientCPUSeconds float64 `json:"client_cpu_seconds"`
}

// Step is one broadcast step.
type Step struct {
	Step         int      `json:"step"`
	Clients      int      `json:"clients"`
	Samples      int      `json:"samples"`
	Results      int      `json:"results"`
	Seconds      float64  `json:"seconds"`
	RTT          *Latency `json:"rtt,omitempty"`
	AtLimit      float64  `json:"rtt_at_limit_percentile"`
	Receivers    int      `json:"receivers"`
	Receipts     uint64   `json:"receipts"`
	Missing      uint64   `json:"missing"`
	Duplicates   uint64   `json:"duplicates"`
	Late         uint64   `json:"late"`
	MinListeners int      `json:"min_listener_count"`
	MaxListeners int      `json:"max_listener_count"`
	ExactlyOnce  bool     `json:"exactly_once"`
	// ServerCPUSeconds is the server's CPU time over the step's broadcasts
	// and their verification, and ServerCPUMicrosPerDelivery that over the
	// receipts: the server's own cost, apart from the harness's. Zero without
	// a PID.
	ServerCPUSeconds           float64 `json:"server_cpu_seconds,omitempty"`
	ServerCPUMicrosPerDelivery float64 `json:"server_cpu_us_per_delivery,omitempty"`
	// WireBytes is what the clients read from their sockets during the step,
	// and WireBytesPerDelivery that over the receipts: the frames as they
	// travel, compressed or not (--compression).
	WireBytes            uint64  `json:"wire_bytes"`
	WireBytesPerDelivery float64 `json:"wire_bytes_per_delivery"`
}

// ChatStats is the chat scenario's deliveries.
type ChatStats struct {
	Rooms      int     `json:"rooms"`
	RoomSize   int     `json:"room_size"`
	RoomRate   float64 `json:"room_rate"`
	Sent       int     `json:"sent"`
	Expected   uint64  `json:"expected"`
	Deliveries uint64  `json:"deliveries"`
	PerSec     float64 `json:"deliveries_per_sec"`
	// ServerCPUMicrosPerDelivery is the server's CPU time over the messages
	// and their delivery, over the deliveries. Zero without a PID.
	ServerCPUMicrosPerDelivery float64 `json:"server_cpu_us_per_delivery,omitempty"`
	// WireBytes is what the clients read from their sockets while the
	// messages went out, and WireBytesPerDelivery that over the deliveries:
	// the frames as they travel, compressed or not (--compression).
	WireBytes            uint64  `json:"wire_bytes"`
	WireBytesPerDelivery float64 `json:"wire_bytes_per_delivery"`
}

// ChurnStats is the churn scenario's reconnects.
type ChurnStats struct {
	Rate       float64 `json:"rate"`
	Seconds    float64 `json:"seconds"`
	Reconnects uint64  `json:"reconnects"`
	Failed     uint64  `json:"failed"`
	PerSec     float64 `json:"per_sec"`
	Open       int64   `json:"open_at_end"`
}

// StormStats is the reconnect storm.
type StormStats struct {
	Dropped              int     `json:"dropped"`
	Reconnected          int     `json:"reconnected"`
	FailedAttempts       int     `json:"failed_attempts"`
	Seconds              float64 `json:"seconds_to_all_back"`
	HandshakesPerSec     float64 `json:"handshakes_per_sec"`
	PeakHandshakesPerSec float64 `json:"peak_handshakes_per_sec"`
}

// Tick is one progress sample.
type Tick struct {
	T          float64 `json:"t"`
	Open       int64   `json:"open"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	SentPerSec float64 `json:"sent_per_sec"`
	OpenPerSec float64 `json:"opens_per_sec"`
	P50        float64 `json:"p50"`
	P99        float64 `json:"p99"`
	Errors     uint64  `json:"errors"`
	Target     int     `json:"target,omitempty"` // with stages: the stage's target
}

// Failed reports whether any target's run failed or breached a threshold.
func (rep *Report) Failed() bool {
	for _, r := range rep.Results {
		if r.Error != "" || r.Breached() {
			return true
		}
	}
	return false
}

// CheckOutput checks, before a run, that path can be written, so a run of
// minutes is not lost to a typo in --json or --report. It leaves no file behind
// that was not there.
func CheckOutput(path string) error {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return fmt.Errorf("bench: output %s is a directory", path)
	}
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("bench: output: %w", err)
	}
	f.Close()
	if os.IsNotExist(statErr) {
		os.Remove(path)
	}
	return nil
}

// WriteJSON writes the report to a file.
func (rep *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

type row struct {
	label string
	vals  []string
}

// rows are the table's lines: a label and a value per target; lines no target
// has a value for are left out.
func (rep *Report) rows() []row {
	var out []row
	add := func(label string, f func(r *Result) string) {
		rw := row{label: label}
		any := false
		for _, r := range rep.Results {
			v := f(r)
			any = any || v != ""
			if v == "" {
				v = "-"
			}
			rw.vals = append(rw.vals, v)
		}
		if any {
			out = append(out, rw)
		}
	}
	lat := func(label string, get func(r *Result) *Latency) {
		for _, p := range []struct {
			n string
			f func(*Latency) float64
		}{{"p50", func(l *Latency) float64 { return l.P50 }}, {"p99", func(l *Latency) float64 { return l.P99 }},
			{"p99.9", func(l *Latency) float64 { return l.P999 }}, {"max", func(l *Latency) float64 { return l.Max }}} {
			add(label+" "+p.n, func(r *Result) string {
				if l := get(r); l != nil {
					return fmtMS(p.f(l))
				}
				return ""
			})
		}
	}
	add("url", func(r *Result) string { return r.URL })
	add("result", func(r *Result) string {
		switch {
		case r.Error != "":
			return "FAILED: " + r.Error
		case r.Breached():
			return "FAILED: threshold breached"
		}
		return "ok"
	})
	for k := range maxLen(rep.Results, func(r *Result) int { return len(r.Thresholds) }) {
		add(fmt.Sprintf("threshold %d", k+1), func(r *Result) string {
			if k >= len(r.Thresholds) {
				return ""
			}
			t := r.Thresholds[k]
			switch {
			case !t.Measured:
				return t.Expr + ": BREACHED (not measured)"
			case !t.OK:
				return fmt.Sprintf("%s: BREACHED (%.4g)", t.Expr, t.Actual)
			}
			return fmt.Sprintf("%s: ok (%.4g)", t.Expr, t.Actual)
		})
	}
	for k := range maxLen(rep.Results, func(r *Result) int { return len(r.Stages) }) {
		add(fmt.Sprintf("stage %d", k+1), func(r *Result) string {
			if k >= len(r.Stages) {
				return ""
			}
			st := r.Stages[k]
			s := fmt.Sprintf("%gs → %d: reached %d in %.1fs", st.Duration, st.Target, st.Reached, st.Seconds)
			if st.RSSPerConn != 0 {
				s += ", RSS/conn " + fmtBytes(st.RSSPerConn)
			}
			return s
		})
	}
	add("connections lost with agents", func(r *Result) string { return nz(r.LostConns) })
	add("connections opened", func(r *Result) string { return itoa(r.Conns.Opened) })
	add("connections failed", func(r *Result) string { return itoa(r.Conns.Failed) })
	add("connections dropped", func(r *Result) string { return itoa(r.Conns.Dropped) })
	add("connections peak", func(r *Result) string { return itoa(r.Conns.PeakOpen) })
	add("connections held", func(r *Result) string { return nz(r.Conns.Held) })
	add("alive in sample", func(r *Result) string {
		if r.Probe == nil {
			return ""
		}
		return fmt.Sprintf("%d/%d", r.Probe.Alive, r.Probe.Sampled)
	})
	add("server RSS before", func(r *Result) string {
		if r.Server == nil || r.Server.RSSBefore == 0 {
			return ""
		}
		return fmtBytes(float64(r.Server.RSSBefore))
	})
	add("server RSS after", func(r *Result) string {
		if r.Server == nil || r.Server.RSSAfter == 0 {
			return ""
		}
		return fmtBytes(float64(r.Server.RSSAfter))
	})
	add("server RSS per connection", func(r *Result) string {
		if r.Server == nil || r.Server.RSSPerConn == 0 {
			return ""
		}
		return fmtBytes(r.Server.RSSPerConn)
	})
	add("server RSS per connection after traffic", func(r *Result) string {
		if r.Server == nil || r.Server.RSSPerConnAfterTraffic == 0 {
			return ""
		}
		return fmtBytes(r.Server.RSSPerConnAfterTraffic)
	})
	add("server CPU µs per delivery", func(r *Result) string {
		if r.Chat == nil || r.Chat.ServerCPUMicrosPerDelivery == 0 {
			return ""
		}
		return fmt.Sprintf("%.3f", r.Chat.ServerCPUMicrosPerDelivery)
	})
	add("wire bytes per delivery", func(r *Result) string {
		if r.Chat == nil || r.Chat.WireBytesPerDelivery == 0 {
			return ""
		}
		return fmt.Sprintf("%.1f", r.Chat.WireBytesPerDelivery)
	})
	add("echoes/s", func(r *Result) string {
		if r.Echo == nil {
			return ""
		}
		return fmt.Sprintf("%.0f", r.Echo.PerSec)
	})
	add("echoes", func(r *Result) string {
		if r.Echo == nil {
			return ""
		}
		return fmt.Sprint(r.Echo.Echoes)
	})
	add("server CPU seconds", func(r *Result) string {
		if r.Server == nil || r.Server.CPUSeconds == 0 {
			return ""
		}
		return fmt.Sprintf("%.2f", r.Server.CPUSeconds)
	})
	add("msgs per server CPU-second", func(r *Result) string {
		if r.Server == nil || r.Server.MsgsPerCPUSecond == 0 {
			return ""
		}
		return fmt.Sprintf("%.0f", r.Server.MsgsPerCPUSecond)
	})
	add("server CPU µs per msg", func(r *Result) string {
		if r.Server == nil || r.Server.CPUMicrosPerMsg == 0 {
			return ""
		}
		return fmt.Sprintf("%.2f", r.Server.CPUMicrosPerMsg)
	})
	add("clients under limit", func(r *Result) string {
		if len(r.Steps) == 0 {
			return ""
		}
		return itoa(r.MaxClients)
	})
	add("broadcast steps", func(r *Result) string { return nz(len(r.Steps)) })
	add("exactly once", func(r *Result) string {
		if len(r.Steps) == 0 {
			return ""
		}
		for _, s := range r.Steps {
			if !s.ExactlyOnce {
				return fmt.Sprintf("NO (step %d: %d missing, %d dup)", s.Step, s.Missing, s.Duplicates)
			}
		}
		return "yes, every step"
	})
	add("last step RTT p50/p95/p99", func(r *Result) string {
		if len(r.Steps) == 0 || r.Steps[len(r.Steps)-1].RTT == nil {
			return ""
		}
		l := r.Steps[len(r.Steps)-1].RTT
		return fmtMS(l.P50) + " / " + fmtMS(l.P95) + " / " + fmtMS(l.P99)
	})
	rep.floorRows(add)
	add("chat rooms x size", func(r *Result) string {
		if r.Chat == nil {
			return ""
		}
		return fmt.Sprintf("%d x %d", r.Chat.Rooms, r.Chat.RoomSize)
	})
	add("chat deliveries", func(r *Result) string {
		if r.Chat == nil {
			return ""
		}
		return fmt.Sprintf("%d/%d", r.Chat.Deliveries, r.Chat.Expected)
	})
	add("chat deliveries/s", func(r *Result) string {
		if r.Chat == nil {
			return ""
		}
		return fmt.Sprintf("%.0f", r.Chat.PerSec)
	})
	add("churn reconnects/s", func(r *Result) string {
		if r.Churn == nil {
			return ""
		}
		return fmt.Sprintf("%.1f (%d in %.1fs)", r.Churn.PerSec, r.Churn.Reconnects, r.Churn.Seconds)
	})
	add("storm: seconds to all back", func(r *Result) string {
		if r.Storm == nil {
			return ""
		}
		return fmt.Sprintf("%.2f", r.Storm.Seconds)
	})
	add("storm: reconnected", func(r *Result) string {
		if r.Storm == nil {
			return ""
		}
		return fmt.Sprintf("%d/%d", r.Storm.Reconnected, r.Storm.Dropped)
	})
	add("storm: handshakes/s avg/peak", func(r *Result) string {
		if r.Storm == nil {
			return ""
		}
		return fmt.Sprintf("%.0f / %.0f", r.Storm.HandshakesPerSec, r.Storm.PeakHandshakesPerSec)
	})
	upgradeRows(add)
	lat("latency", func(r *Result) *Latency { return r.Latency })
	lat("handshake", func(r *Result) *Latency { return r.Handshake })
	add("messages sent/received", func(r *Result) string {
		if r.Messages.Sent == 0 && r.Messages.Recv == 0 {
			return ""
		}
		return fmt.Sprintf("%d / %d", r.Messages.Sent, r.Messages.Recv)
	})
	add("mismatched messages", func(r *Result) string { return itoa(int(r.Messages.Mismatch)) })
	add("errors", func(r *Result) string {
		errs := maps.Clone(r.Errors)
		if r.Messages.Mismatch > 0 {
			if errs == nil {
				errs = map[string]uint64{}
			}
			errs["mismatch"] = r.Messages.Mismatch
		}
		if len(errs) == 0 {
			return "0"
		}
		keys := make([]string, 0, len(errs))
		for k := range errs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		fmt.Fprintf(&b, "%d: ", r.errorCount())
		for i, k := range keys {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s=%d", k, errs[k])
		}
		return b.String()
	})
	add("harness CPU (cores used)", func(r *Result) string {
		s := fmt.Sprintf("%.2fs (%.2f of %d)", r.Client.CPUSeconds, r.Client.Cores, numCPU())
		if r.Client.Bound {
			s += " CLIENT-BOUND"
		}
		return s
	})
	add("workers", func(r *Result) string {
		if len(r.Agents) > 0 {
			return fmt.Sprintf("%d agents", len(r.Agents))
		}
		return itoa(r.Workers)
	})
	return out
}

func maxLen(rs []*Result, f func(*Result) int) int {
	n := 0
	for _, r := range rs {
		n = max(n, f(r))
	}
	return n
}

// WriteTable writes the final table: a column per target.
func (rep *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "%s", rep.Scenario)
	for _, r := range rep.Results {
		fmt.Fprintf(tw, "\t%s", r.Target)
	}
	fmt.Fprintln(tw)
	for _, rw := range rep.rows() {
		fmt.Fprint(tw, rw.label)
		for _, v := range rw.vals {
			fmt.Fprintf(tw, "\t%s", v)
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rep.Results {
		for _, n := range r.Notes {
			fmt.Fprintf(w, "%s: %s\n", r.Target, n)
		}
		if len(r.Agents) > 0 {
			fmt.Fprintf(w, "\n%s agents (each one's own count; the table is their sum):\n", r.Target)
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintf(tw, "agent\thost\tcapacity\topened\tfailed\tdropped\tpeak\tsent\treceived\tmismatch\tlost\t\n")
			for _, a := range r.Agents {
				lost := "-"
				if a.Lost != "" {
					lost = fmt.Sprintf("LOST (%d conns)", a.LostConns)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t\n", a.Name, a.Host, a.Capacity,
					a.Opened, a.Failed, a.Dropped, a.Peak, a.Sent, a.Recv, a.Mismatch, lost)
			}
			tw.Flush()
		}
		if len(r.Steps) > 0 {
			fmt.Fprintf(w, "\n%s broadcast steps:\n", r.Target)
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintf(tw, "clients\tsamples\tmin\tp50\tp95\tp99\tmax\tat limit\treceipts\tmissing\tdup\tserver µs/delivery\twire B/delivery\tµs ÷ floor\tp95 ÷ floor\t\n")
			for _, s := range r.Steps {
				if s.RTT == nil {
					continue
				}
				cpu := ""
				if s.ServerCPUMicrosPerDelivery > 0 {
					cpu = fmt.Sprintf("%.3f", s.ServerCPUMicrosPerDelivery)
				}
				cpuVs, p95Vs := "-", "-"
				if v := r.VsFloor.step(s.Clients); v != nil {
					cpuVs, p95Vs = cmp.Or(fmtRatio(v.CPUPerDelivery), "-"), cmp.Or(fmtRatio(v.RTTP95), "-")
				}
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%.1f\t%s\t%s\t\n", s.Clients, s.Samples,
					fmtMS(s.RTT.Min), fmtMS(s.RTT.P50), fmtMS(s.RTT.P95), fmtMS(s.RTT.P99), fmtMS(s.RTT.Max),
					fmtMS(s.AtLimit), s.Receipts, s.Missing, s.Duplicates, cpu, s.WireBytesPerDelivery, cpuVs, p95Vs)
			}
			tw.Flush()
		}
	}
	return nil
}

func itoa(n int) string { return fmt.Sprint(n) }

// settings lists every field of the configuration, as its JSON name and value.
func settings(c Config) [][2]string {
	b, _ := json.Marshal(c)
	var m map[string]any
	json.Unmarshal(b, &m)
	keys := slices.Sorted(maps.Keys(m))
	out := make([][2]string, 0, len(keys))
	for _, k := range keys {
		if k == "command" {
			continue
		}
		v, _ := json.Marshal(m[k])
		out = append(out, [2]string{k, string(v)})
	}
	return out
}

// shellJoin quotes a command line so it can be pasted back into a shell.
func shellJoin(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=.,:/@+%") == "" {
			b.WriteString(a)
			continue
		}
		b.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "'")
	}
	return b.String()
}

func nz(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprint(n)
}

func fmtMS(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0fms", v)
	case v >= 1:
		return fmt.Sprintf("%.2fms", v)
	}
	return fmt.Sprintf("%.0fµs", v*1e3)
}

func fmtBytes(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1<<30:
		return fmt.Sprintf("%.2f GiB", v/(1<<30))
	case a >= 1<<20:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case a >= 1<<10:
		return fmt.Sprintf("%.2f KiB", v/(1<<10))
	}
	return fmt.Sprintf("%.0f B", v)
}

// WriteHTML writes a self-contained page: the table and inline SVG charts,
// with no script and nothing fetched, so it works offline.
func (rep *Report) WriteHTML(path string) error {
	var b strings.Builder
	title := "throng bench " + rep.Scenario
	fmt.Fprintf(&b, `<!doctype html><html><head><meta charset="utf-8"><title>%s</title><style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}h2{margin-top:2em}svg{background:#fff;border:1px solid #ddd}
.err{color:#b00}</style></head><body><h1>%s</h1><p>%s · %d CPUs</p>`,
		html.EscapeString(title), html.EscapeString(title), rep.Started.Format(time.RFC3339), rep.CPUs)
	if len(rep.Config.Command) > 0 {
		fmt.Fprintf(&b, "<h2>Command</h2><pre>%s</pre>", html.EscapeString(shellJoin(rep.Config.Command)))
	}
	b.WriteString("<h2>Settings</h2><table>")
	for _, kv := range settings(rep.Config) {
		fmt.Fprintf(&b, "<tr><td>%s</td><td>%s</td></tr>", html.EscapeString(kv[0]), html.EscapeString(kv[1]))
	}
	b.WriteString("</table><h2>Results</h2><table><tr><th></th>")
	for _, r := range rep.Results {
		fmt.Fprintf(&b, "<th>%s</th>", html.EscapeString(r.Target))
	}
	b.WriteString("</tr>")
	for _, rw := range rep.rows() {
		fmt.Fprintf(&b, "<tr><td>%s</td>", html.EscapeString(rw.label))
		for _, v := range rw.vals {
			cls := ""
			if strings.HasPrefix(v, "FAILED") || strings.Contains(v, "BREACHED") {
				cls = ` class="err"`
			}
			fmt.Fprintf(&b, "<td%s>%s</td>", cls, html.EscapeString(v))
		}
		b.WriteString("</tr>")
	}
	b.WriteString("</table>")
	for _, r := range rep.Results {
		if len(r.Agents) == 0 {
			continue
		}
		fmt.Fprintf(&b, "<h2>Agents of %s</h2><table><tr><th>agent</th><th>host</th><th>capacity</th><th>opened</th><th>failed</th><th>dropped</th><th>peak</th><th>sent</th><th>received</th><th>mismatch</th><th>lost</th></tr>",
			html.EscapeString(r.Target))
		for _, a := range r.Agents {
			lost := "-"
			if a.Lost != "" {
				lost = fmt.Sprintf("LOST (%d conns): %s", a.LostConns, a.Lost)
			}
			fmt.Fprintf(&b, "<tr><td>%s</td><td>%s</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%s</td></tr>",
				html.EscapeString(a.Name), html.EscapeString(a.Host), a.Capacity, a.Opened, a.Failed, a.Dropped, a.Peak, a.Sent, a.Recv, a.Mismatch, html.EscapeString(lost))
		}
		b.WriteString("</table>")
	}

	b.WriteString(rep.floorStepsHTML())
	var mem, steps, thr, hs, p99, open []series
	span := 0.0 // the longest run's length: the time axes' span
	for i, r := range rep.Results {
		if len(r.Memory) > 0 {
			s := series{name: r.Target, color: i}
			for _, m := range r.Memory {
				s.pts = append(s.pts, [2]float64{float64(m.Conns), m.PerConn / 1024})
			}
			mem = append(mem, s)
		}
		if len(r.Steps) > 0 {
			for k, pc := range []struct {
				n string
				f func(*Latency) float64
			}{{"p50", func(l *Latency) float64 { return l.P50 }}, {"p95", func(l *Latency) float64 { return l.P95 }},
				{"p99", func(l *Latency) float64 { return l.P99 }}} {
				s := series{name: r.Target + " " + pc.n, color: i, dash: k}
				for _, st := range r.Steps {
					if st.RTT != nil {
						s.pts = append(s.pts, [2]float64{float64(st.Clients), pc.f(st.RTT)})
					}
				}
				steps = append(steps, s)
			}
		}
		span = max(span, r.Client.WallSeconds)
		if len(r.Timeline) > 1 {
			t, h, q := series{name: r.Target, color: i}, series{name: r.Target, color: i}, series{name: r.Target, color: i}
			o, g := series{name: r.Target + " open", color: i}, series{name: r.Target + " stage target", color: i, dash: 1}
			for _, tk := range r.Timeline {
				t.pts = append(t.pts, [2]float64{tk.T, tk.MsgsPerSec})
				h.pts = append(h.pts, [2]float64{tk.T, tk.OpenPerSec})
				o.pts = append(o.pts, [2]float64{tk.T, float64(tk.Open)})
				if len(r.Stages) > 0 || len(rep.Config.Stages) > 0 {
					g.pts = append(g.pts, [2]float64{tk.T, float64(tk.Target)})
				}
				if tk.P99 > 0 {
					q.pts = append(q.pts, [2]float64{tk.T, tk.P99})
				}
			}
			thr, hs, p99, open = append(thr, t), append(hs, h), append(p99, q), append(open, o)
			if len(g.pts) > 0 {
				open = append(open, g)
			}
		}
	}
	chart := func(title, x, y string, ss []series, ref float64) {
		if len(ss) == 0 {
			return
		}
		fmt.Fprintf(&b, "<h2>%s</h2>", html.EscapeString(title))
		xspan := 0.0
		if x == "seconds" {
			xspan = span
		}
		b.WriteString(svgChart(x, y, ss, ref, xspan))
	}
	limit := 0.0
	if rep.Scenario == ScenarioBroadcast {
		limit = float64(rep.Config.LimitRTT) / float64(time.Millisecond)
	}
	chart("Broadcast round trip per step", "clients", "RTT (ms)", steps, limit)
	chart("Server memory per connection", "connections", "KiB per connection", mem, 0)
	chart("Connections open", "seconds", "connections", open, 0)
	var rss []series
	for i, r := range rep.Results {
		if r.Upgrade == nil || len(r.Upgrade.RSS) == 0 {
			continue
		}
		o, n := series{name: r.Target + " old process", color: i}, series{name: r.Target + " new process", color: i, dash: 1}
		for _, p := range r.Upgrade.RSS {
			o.pts = append(o.pts, [2]float64{p.T, float64(p.Old) / (1 << 20)})
			n.pts = append(n.pts, [2]float64{p.T, float64(p.New) / (1 << 20)})
		}
		rss = append(rss, o, n)
	}
	chart("Server RSS from the signal", "seconds after the signal", "MiB", rss, 0)
	if rep.Scenario == ScenarioEcho || rep.Scenario == ScenarioChat || rep.Scenario == ScenarioBroadcast || rep.Scenario == ScenarioUpgrade {
		chart("Messages received per second", "seconds", "msgs/s", thr, 0)
		chart("p99 latency per second", "seconds", "ms", p99, 0)
	}
	if rep.Scenario == ScenarioStorm || rep.Scenario == ScenarioChurn || rep.Scenario == ScenarioIdle {
		chart("Connections opened per second", "seconds", "handshakes/s", hs, 0)
	}
	b.WriteString("</body></html>\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

type series struct {
	name  string
	pts   [][2]float64
	color int
	dash  int
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"}
var dashes = []string{"", "6 3", "2 3"}

// svgChart draws line series on linear axes from zero; ref, if positive, is a
// horizontal limit line. xspan, if positive, is the x axis's exact end (a
// run's length), rather than the last point rounded up.
func svgChart(xl, yl string, ss []series, ref, xspan float64) string {
	const W, H, L, R, T, B = 900, 360, 70, 200, 20, 45
	var xmax, ymax float64
	for _, s := range ss {
		for _, p := range s.pts {
			xmax, ymax = math.Max(xmax, p[0]), math.Max(ymax, p[1])
		}
	}
	ymax = math.Max(ymax, ref)
	xmax, ymax = niceCeil(xmax), niceCeil(ymax)
	if xspan > 0 {
		xmax = xspan
	}
	px := func(x float64) float64 { return L + x/xmax*(W-L-R) }
	py := func(y float64) float64 { return H - B - y/ymax*(H-T-B) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-size="11">`, W, H, W, H)
	for i := 0; i <= 5; i++ {
		x, y := xmax*float64(i)/5, ymax*float64(i)/5
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/><text x="%.1f" y="%d" text-anchor="middle">%s</text>`,
			px(x), T, px(x), H-B, px(x), H-B+15, short(x))
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`,
			L, py(y), W-R, py(y), L-5, py(y)+4, short(y))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`, L, T, W-L-R, H-T-B)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`, L+(W-L-R)/2, H-8, html.EscapeString(xl))
	fmt.Fprintf(&b, `<text x="14" y="%d" text-anchor="middle" transform="rotate(-90 14 %d)">%s</text>`, T+(H-T-B)/2, T+(H-T-B)/2, html.EscapeString(yl))
	if ref > 0 {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#b00" stroke-dasharray="4 4"/><text x="%d" y="%.1f" fill="#b00">limit</text>`,
			L, py(ref), W-R, py(ref), W-R+4, py(ref)+4)
	}
	for i, s := range ss {
		col := palette[s.color%len(palette)]
		var pts strings.Builder
		for _, p := range s.pts {
			fmt.Fprintf(&pts, "%.1f,%.1f ", px(p[0]), py(p[1]))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" stroke-dasharray="%s" points="%s"/>`, col, dashes[s.dash%len(dashes)], pts.String())
		for _, p := range s.pts {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>`, px(p[0]), py(p[1]), col)
		}
		ly := T + 10 + i*16
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2" stroke-dasharray="%s"/><text x="%d" y="%d">%s</text>`,
			W-R+10, ly, W-R+35, ly, col, dashes[s.dash%len(dashes)], W-R+40, ly+4, html.EscapeString(s.name))
	}
	b.WriteString("</svg>")
	return b.String()
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func short(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", math.Round(v/1e5)/10)
	case v >= 1e3:
		return fmt.Sprintf("%gk", math.Round(v/1e2)/10)
	case v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func numCPU() int { return max(runtime.NumCPU(), 1) }
