package bench

import (
	"cmp"
	"fmt"
	"html"
	"slices"
	"strings"
)

// DefaultFloorTarget is the name of the target taken as the floor when
// Config.Floor is empty: a reference server that does only the I/O, such as
// bench/peers/floor.
const DefaultFloorTarget = "floor"

// VsFloor is a result's figures over the floor target's from the same run:
// 1 is the floor, 1.3 costs (or waits) 30% more than the bare I/O does. A
// ratio is 0, and left out, where either side was not measured.
type VsFloor struct {
	// Floor is the floor target's name.
	Floor string `json:"floor"`
	// CPUPerMsg is the server CPU per echo over the floor's.
	CPUPerMsg float64 `json:"cpu_per_msg,omitempty"`
	// LatencyP50 and LatencyP99 are the echo or chat latency percentiles
	// over the floor's.
	LatencyP50 float64 `json:"latency_p50,omitempty"`
	LatencyP99 float64 `json:"latency_p99,omitempty"`
	// Steps are broadcast steps matched to the floor's by client count.
	Steps []StepVsFloor `json:"steps,omitempty"`
}

// StepVsFloor is one broadcast step over the floor's step at the same client
// count.
type StepVsFloor struct {
	Clients int `json:"clients"`
	// CPUPerDelivery is the server CPU per delivery over the floor's.
	CPUPerDelivery float64 `json:"cpu_per_delivery,omitempty"`
	RTTP50         float64 `json:"rtt_p50,omitempty"`
	RTTP95         float64 `json:"rtt_p95,omitempty"`
	RTTP99         float64 `json:"rtt_p99,omitempty"`
}

// floorName is the target the others are quoted against: Config.Floor, or
// DefaultFloorTarget if a target has that name, or "" for none.
func (c *Config) floorName() string {
	if c.Floor != "" {
		return c.Floor
	}
	for _, t := range c.Targets {
		if t.Name == DefaultFloorTarget {
			return DefaultFloorTarget
		}
	}
	return ""
}

// checkFloor refuses a Config.Floor that names no target.
func (c *Config) checkFloor() error {
	if c.Floor == "" {
		return nil
	}
	if !slices.ContainsFunc(c.Targets, func(t Target) bool { return t.Name == c.Floor }) {
		return fmt.Errorf("bench: --floor %q names no --target", c.Floor)
	}
	return nil
}

// compareToFloor sets every result's VsFloor from the floor target's result.
// A floor that failed is no floor: the results get a note instead.
func (rep *Report) compareToFloor() {
	name := rep.Config.floorName()
	if name == "" {
		return
	}
	i := slices.IndexFunc(rep.Results, func(r *Result) bool { return r.Target == name })
	if i < 0 {
		return // the run ended before the floor's turn
	}
	fl := rep.Results[i]
	if fl.Error != "" {
		for _, r := range rep.Results {
			r.Notes = append(r.Notes, fmt.Sprintf("no ratios to the floor: the floor target %q failed", name))
		}
		return
	}
	for _, r := range rep.Results {
		r.VsFloor = vsFloor(r, fl)
	}
}

// vsFloor is r's figures over the floor result fl's.
func vsFloor(r, fl *Result) *VsFloor {
	v := &VsFloor{Floor: fl.Target}
	if r.Server != nil && fl.Server != nil {
		v.CPUPerMsg = ratio(r.Server.CPUMicrosPerMsg, fl.Server.CPUMicrosPerMsg)
	}
	if r.Latency != nil && fl.Latency != nil {
		v.LatencyP50 = ratio(r.Latency.P50, fl.Latency.P50)
		v.LatencyP99 = ratio(r.Latency.P99, fl.Latency.P99)
	}
	for _, st := range r.Steps {
		k := slices.IndexFunc(fl.Steps, func(f Step) bool { return f.Clients == st.Clients })
		if k < 0 {
			continue
		}
		f := fl.Steps[k]
		sv := StepVsFloor{Clients: st.Clients, CPUPerDelivery: ratio(st.ServerCPUMicrosPerDelivery, f.ServerCPUMicrosPerDelivery)}
		if st.RTT != nil && f.RTT != nil {
			sv.RTTP50 = ratio(st.RTT.P50, f.RTT.P50)
			sv.RTTP95 = ratio(st.RTT.P95, f.RTT.P95)
			sv.RTTP99 = ratio(st.RTT.P99, f.RTT.P99)
		}
		v.Steps = append(v.Steps, sv)
	}
	if v.CPUPerMsg == 0 && v.LatencyP50 == 0 && len(v.Steps) == 0 {
		return nil
	}
	return v
}

// ratio is a over b, or 0 when either was not measured.
func ratio(a, b float64) float64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	return a / b
}

// step is the ratios at a client count, or nil.
func (v *VsFloor) step(clients int) *StepVsFloor {
	if v == nil {
		return nil
	}
	for i := range v.Steps {
		if v.Steps[i].Clients == clients {
			return &v.Steps[i]
		}
	}
	return nil
}

// fmtRatio formats a ratio to the floor, or "" if there is none.
func fmtRatio(x float64) string {
	if x == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f×", x)
}

// floorRows are the table's lines of ratios to the floor.
func (rep *Report) floorRows(add func(string, func(*Result) string)) {
	vs := func(f func(v *VsFloor) float64) func(*Result) string {
		return func(r *Result) string {
			if r.VsFloor == nil {
				return ""
			}
			return fmtRatio(f(r.VsFloor))
		}
	}
	add("server CPU per msg ÷ floor", vs(func(v *VsFloor) float64 { return v.CPUPerMsg }))
	add("latency p50 ÷ floor", vs(func(v *VsFloor) float64 { return v.LatencyP50 }))
	add("latency p99 ÷ floor", vs(func(v *VsFloor) float64 { return v.LatencyP99 }))
	last := func(f func(s *StepVsFloor) float64) func(*Result) string {
		return func(r *Result) string {
			if len(r.Steps) == 0 {
				return ""
			}
			st := r.Steps[len(r.Steps)-1]
			s := r.VsFloor.step(st.Clients)
			if s == nil {
				return ""
			}
			if x := fmtRatio(f(s)); x != "" {
				return fmt.Sprintf("%s at %d", x, st.Clients)
			}
			return ""
		}
	}
	add("last step CPU per delivery ÷ floor", last(func(s *StepVsFloor) float64 { return s.CPUPerDelivery }))
	add("last step RTT p95 ÷ floor", last(func(s *StepVsFloor) float64 { return s.RTTP95 }))
}

// floorStepsHTML is a table of every target's broadcast steps over the
// floor's, by client count: server CPU per delivery and RTT p95, or "" when
// no result has them.
func (rep *Report) floorStepsHTML() string {
	var clients []int
	for _, r := range rep.Results {
		if r.VsFloor == nil {
			continue
		}
		for _, s := range r.VsFloor.Steps {
			if !slices.Contains(clients, s.Clients) {
				clients = append(clients, s.Clients)
			}
		}
	}
	if len(clients) == 0 {
		return ""
	}
	slices.Sort(clients)
	var b strings.Builder
	b.WriteString("<h2>Broadcast steps over the floor</h2><p>Server CPU per delivery ÷ the floor's, and RTT p95 ÷ the floor's, at the same client count in this run.</p><table><tr><th>clients</th>")
	for _, r := range rep.Results {
		fmt.Fprintf(&b, "<th>%s</th>", html.EscapeString(r.Target))
	}
	b.WriteString("</tr>")
	for _, n := range clients {
		fmt.Fprintf(&b, "<tr><td>%d</td>", n)
		for _, r := range rep.Results {
			v := "-"
			if s := r.VsFloor.step(n); s != nil {
				v = fmt.Sprintf("CPU %s · p95 %s", cmp.Or(fmtRatio(s.CPUPerDelivery), "-"), cmp.Or(fmtRatio(s.RTTP95), "-"))
			}
			fmt.Fprintf(&b, "<td>%s</td>", html.EscapeString(v))
		}
		b.WriteString("</tr>")
	}
	b.WriteString("</table>")
	return b.String()
}
