package bench

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Threshold is a pass/fail criterion on a result's metric, such as p99<50ms.
type Threshold struct {
	Expr   string  `json:"expr"`
	Metric string  `json:"metric"`
	Op     string  `json:"op"`
	Value  float64 `json:"value"` // in the metric's unit: milliseconds for latencies
}

// ThresholdResult is a threshold checked against a result.
type ThresholdResult struct {
	Expr   string  `json:"expr"`
	Actual float64 `json:"actual"`
	// Measured is false when the run has no such figure (bytes_per_conn
	// without a server pid): the threshold then counts as breached, since
	// CI cannot pass what was not measured.
	Measured bool `json:"measured"`
	OK       bool `json:"ok"`
}

// thresholdMetrics are the metrics a threshold can name, with what each reads
// and whether its value is a duration (given with a unit, in milliseconds).
var thresholdMetrics = map[string]struct {
	dur  bool
	help string
	get  func(r *Result) (float64, bool)
}{
	"p50":              {true, "message latency", latQ(func(l *Latency) float64 { return l.P50 })},
	"p90":              {true, "", latQ(func(l *Latency) float64 { return l.P90 })},
	"p95":              {true, "", latQ(func(l *Latency) float64 { return l.P95 })},
	"p99":              {true, "", latQ(func(l *Latency) float64 { return l.P99 })},
	"p999":             {true, "", latQ(func(l *Latency) float64 { return l.P999 })},
	"max":              {true, "", latQ(func(l *Latency) float64 { return l.Max })},
	"handshake_p99":    {true, "upgrade latency", func(r *Result) (float64, bool) { return latOf(r.Handshake, func(l *Latency) float64 { return l.P99 }) }},
	"errors":           {false, "connection errors plus mismatched messages plus lost connections", func(r *Result) (float64, bool) { return float64(r.errorCount()), true }},
	"failed":           {false, "connections that failed to open", func(r *Result) (float64, bool) { return float64(r.Conns.Failed), true }},
	"dropped":          {false, "open connections that ended unasked", func(r *Result) (float64, bool) { return float64(r.Conns.Dropped), true }},
	"mismatch":         {false, "mismatched messages", func(r *Result) (float64, bool) { return float64(r.Messages.Mismatch), true }},
	"peak_conns":       {false, "most connections open at once", func(r *Result) (float64, bool) { return float64(r.Conns.PeakOpen), true }},
	"bytes_per_conn":   {false, "server RSS growth per connection", bytesPerConn},
	"msgs_per_sec":     {false, "echoes or chat deliveries per second", msgsPerSec},
	"cpu_us_per_msg":   {false, "server CPU µs per echo or delivery", cpuPerMsg},
	"cpu_vs_floor":     {false, "server CPU per echo, or per delivery at the last broadcast step, over the floor target's", cpuVsFloor},
	"lost_connections": {false, "connections of lost agents", func(r *Result) (float64, bool) { return float64(r.LostConns), true }},
	"lost":             {false, "upgrade: chat deliveries lost", upQ(func(u *UpgradeStats) float64 { return float64(u.Lost) })},
	"duplicated":       {false, "upgrade: chat deliveries duplicated", upQ(func(u *UpgradeStats) float64 { return float64(u.Duplicated) })},
	"out_of_order":     {false, "upgrade: chat deliveries out of order", upQ(func(u *UpgradeStats) float64 { return float64(u.OutOfOrder) })},
	"pause_max":        {true, "upgrade: the longest pause any member saw", upQ(func(u *UpgradeStats) float64 { return latMax(u.Pause) })},
	"pause_p99":        {true, "upgrade: p99 of the members' longest pauses", upQ(func(u *UpgradeStats) float64 { return latP99(u.Pause) })},
	"handoff":          {true, "upgrade: signal to the old process's exit", upQ(func(u *UpgradeStats) float64 { return u.HandoffSeconds * 1e3 })},
}

func upQ(f func(u *UpgradeStats) float64) func(r *Result) (float64, bool) {
	return func(r *Result) (float64, bool) {
		if r.Upgrade == nil || r.Upgrade.Pause == nil {
			return 0, false // not measured: the run ended before the tally
		}
		return f(r.Upgrade), true
	}
}

func latMax(l *Latency) float64 { return l.Max }
func latP99(l *Latency) float64 { return l.P99 }

func latOf(l *Latency, f func(*Latency) float64) (float64, bool) {
	if l == nil {
		return 0, false
	}
	return f(l), true
}

func latQ(f func(*Latency) float64) func(r *Result) (float64, bool) {
	return func(r *Result) (float64, bool) {
		if r.Latency == nil && len(r.Steps) > 0 {
			return latOf(r.Steps[len(r.Steps)-1].RTT, f)
		}
		return latOf(r.Latency, f)
	}
}

func bytesPerConn(r *Result) (float64, bool) {
	if r.Server == nil {
		return 0, false
	}
	if r.Server.RSSPerConnAfterTraffic != 0 {
		return r.Server.RSSPerConnAfterTraffic, true
	}
	if r.Server.RSSPerConn != 0 {
		return r.Server.RSSPerConn, true
	}
	for i := len(r.Stages) - 1; i >= 0; i-- {
		if r.Stages[i].RSSPerConn != 0 {
			return r.Stages[i].RSSPerConn, true
		}
	}
	return 0, false
}

func msgsPerSec(r *Result) (float64, bool) {
	switch {
	case r.Echo != nil:
		return r.Echo.PerSec, true
	case r.Chat != nil:
		return r.Chat.PerSec, true
	}
	return 0, false
}

func cpuPerMsg(r *Result) (float64, bool) {
	switch {
	case r.Server != nil && r.Server.CPUMicrosPerMsg > 0:
		return r.Server.CPUMicrosPerMsg, true
	case r.Chat != nil && r.Chat.ServerCPUMicrosPerDelivery > 0:
		return r.Chat.ServerCPUMicrosPerDelivery, true
	}
	return 0, false
}

// ThresholdMetrics lists the metric names a threshold may use, for help text.
func ThresholdMetrics() []string {
	var out []string
	for k := range thresholdMetrics {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ParseThreshold parses "p99<50ms", "errors==0", "bytes_per_conn<800".
// Latencies take a unit (ns, us, µs, ms, s); a bare number is milliseconds.
func ParseThreshold(s string) (Threshold, error) {
	expr := strings.ReplaceAll(s, " ", "")
	i := strings.IndexAny(expr, "<>=!")
	if i <= 0 {
		return Threshold{}, fmt.Errorf("bench: threshold %q: want metric, operator, value, such as p99<50ms", s)
	}
	th := Threshold{Expr: expr, Metric: expr[:i]}
	rest := expr[i:]
	for _, op := range []string{"<=", ">=", "==", "!=", "<", ">"} {
		if strings.HasPrefix(rest, op) {
			th.Op, rest = op, rest[len(op):]
			break
		}
	}
	if th.Op == "" {
		return th, fmt.Errorf("bench: threshold %q: operator must be one of < <= > >= == !=", s)
	}
	m, ok := thresholdMetrics[th.Metric]
	if !ok {
		return th, fmt.Errorf("bench: threshold %q: unknown metric %q (want one of %s)", s, th.Metric, strings.Join(ThresholdMetrics(), ", "))
	}
	if m.dur {
		v := rest
		if _, err := strconv.ParseFloat(v, 64); err == nil {
			v += "ms"
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return th, fmt.Errorf("bench: threshold %q: %q is not a duration such as 50ms", s, rest)
		}
		th.Value = float64(d) / float64(time.Millisecond)
	} else {
		v, err := strconv.ParseFloat(rest, 64)
		if err != nil {
			return th, fmt.Errorf("bench: threshold %q: %q is not a number", s, rest)
		}
		th.Value = v
	}
	return th, nil
}

func (th Threshold) validate() error {
	_, err := ParseThreshold(th.Expr)
	return err
}

func (th Threshold) holds(v float64) bool {
	switch th.Op {
	case "<":
		return v < th.Value
	case "<=":
		return v <= th.Value
	case ">":
		return v > th.Value
	case ">=":
		return v >= th.Value
	case "==":
		return v == th.Value
	case "!=":
		return v != th.Value
	}
	return false
}

func checkThresholds(ths []Threshold, r *Result) []ThresholdResult {
	var out []ThresholdResult
	for _, th := range ths {
		v, ok := thresholdMetrics[th.Metric].get(r)
		out = append(out, ThresholdResult{Expr: th.Expr, Actual: v, Measured: ok, OK: ok && th.holds(v)})
	}
	return out
}

// Breached reports whether any threshold failed.
func (r *Result) Breached() bool {
	for _, t := range r.Thresholds {
		if !t.OK {
			return true
		}
	}
	return false
}

// errorCount is every error of a result: connection errors by kind,
// mismatched messages and the connections of lost agents.
func (r *Result) errorCount() uint64 {
	n := r.Messages.Mismatch + uint64(r.LostConns)
	for _, v := range r.Errors {
		n += v
	}
	return n
}

func cpuVsFloor(r *Result) (float64, bool) {
	if len(r.Steps) > 0 {
		if s := r.VsFloor.step(r.Steps[len(r.Steps)-1].Clients); s != nil && s.CPUPerDelivery > 0 {
			return s.CPUPerDelivery, true
		}
		return 0, false
	}
	if r.VsFloor == nil || r.VsFloor.CPUPerMsg == 0 {
		return 0, false
	}
	return r.VsFloor.CPUPerMsg, true
}
