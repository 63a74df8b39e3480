package bench

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestCompareToFloor(t *testing.T) {
	echo := func(name string, cpu, p50, p99 float64) *Result {
		return &Result{Target: name, Server: &ServerStats{CPUMicrosPerMsg: cpu}, Latency: &Latency{P50: p50, P99: p99}}
	}
	rep := &Report{Scenario: ScenarioEcho, Config: Config{Targets: []Target{{Name: "throng"}, {Name: "floor"}, {Name: "gorilla"}}}}
	rep.Results = []*Result{echo("throng", 6, 0.3, 1.2), echo("floor", 4, 0.2, 0.4), echo("gorilla", 10, 0.5, 2)}
	rep.Results = append(rep.Results, &Result{Target: "unmeasured"})
	rep.compareToFloor()
	for _, tc := range []struct {
		i             int
		cpu, p50, p99 float64
	}{{0, 1.5, 1.5, 3}, {1, 1, 1, 1}, {2, 2.5, 2.5, 5}} {
		v := rep.Results[tc.i].VsFloor
		if v == nil || v.Floor != "floor" || !near(v.CPUPerMsg, tc.cpu) || !near(v.LatencyP50, tc.p50) || !near(v.LatencyP99, tc.p99) {
			t.Fatalf("%s: %+v, want cpu %v p50 %v p99 %v", rep.Results[tc.i].Target, v, tc.cpu, tc.p50, tc.p99)
		}
	}
	if v := rep.Results[3].VsFloor; v != nil {
		t.Fatalf("a result with no figures got ratios %+v", v)
	}
	var b bytes.Buffer
	rep.WriteTable(&b)
	for _, want := range []string{"server CPU per msg ÷ floor", "1.50×", "2.50×", "latency p99 ÷ floor", "5.00×"} {
		if !strings.Contains(b.String(), want) {
			t.Fatalf("table lacks %q:\n%s", want, b.String())
		}
	}

	th, err := ParseThreshold("cpu_vs_floor<2")
	if err != nil {
		t.Fatal(err)
	}
	if r := checkThresholds([]Threshold{th}, rep.Results[0]); !r[0].OK || !near(r[0].Actual, 1.5) {
		t.Fatalf("throng against cpu_vs_floor<2: %+v", r)
	}
	if r := checkThresholds([]Threshold{th}, rep.Results[2]); r[0].OK {
		t.Fatalf("gorilla against cpu_vs_floor<2: %+v", r)
	}
	if r := checkThresholds([]Threshold{th}, rep.Results[3]); r[0].OK || r[0].Measured {
		t.Fatalf("an unmeasured ratio passed: %+v", r)
	}
}

func TestCompareToFloorSteps(t *testing.T) {
	step := func(clients int, cpu, p95 float64) Step {
		return Step{Clients: clients, ServerCPUMicrosPerDelivery: cpu, RTT: &Latency{P50: p95 / 2, P95: p95, P99: p95 * 2}}
	}
	rep := &Report{Scenario: ScenarioBroadcast, Config: Config{Floor: "bare", Targets: []Target{{Name: "bare"}, {Name: "throng"}}}}
	rep.Results = []*Result{
		{Target: "bare", Steps: []Step{step(1000, 5, 10), step(2000, 6, 20)}},
		// Throng went a step further than the floor: that step has no ratio.
		{Target: "throng", Steps: []Step{step(1000, 7.5, 15), step(2000, 9, 60), step(3000, 10, 90)}},
	}
	rep.compareToFloor()
	v := rep.Results[1].VsFloor
	if v == nil || len(v.Steps) != 2 {
		t.Fatalf("steps over the floor %+v, want 1000 and 2000", v)
	}
	for i, want := range []StepVsFloor{{1000, 1.5, 1.5, 1.5, 1.5}, {2000, 1.5, 3, 3, 3}} {
		got := v.Steps[i]
		if got.Clients != want.Clients || !near(got.CPUPerDelivery, want.CPUPerDelivery) || !near(got.RTTP95, want.RTTP95) || !near(got.RTTP50, want.RTTP50) {
			t.Fatalf("step %d: %+v, want %+v", i, got, want)
		}
	}
	// The last step, 3000, has no floor to compare with.
	th, _ := ParseThreshold("cpu_vs_floor<2")
	if r := checkThresholds([]Threshold{th}, rep.Results[1]); r[0].Measured {
		t.Fatalf("cpu_vs_floor measured at a step the floor did not reach: %+v", r)
	}
	var b bytes.Buffer
	rep.WriteTable(&b)
	if !strings.Contains(b.String(), "µs ÷ floor") || !strings.Contains(b.String(), "3.00×") {
		t.Fatalf("steps table lacks the ratios:\n%s", b.String())
	}
	p := filepath.Join(t.TempDir(), "r.html")
	if err := rep.WriteHTML(p); err != nil {
		t.Fatal(err)
	}
	h, _ := os.ReadFile(p)
	if !strings.Contains(string(h), "Broadcast steps over the floor") || !strings.Contains(string(h), "CPU 1.50× · p95 3.00×") {
		t.Fatal("HTML report lacks the steps over the floor")
	}
}

func TestCompareToFloorFailed(t *testing.T) {
	rep := &Report{Scenario: ScenarioEcho, Config: Config{Targets: []Target{{Name: "floor"}, {Name: "throng"}}}}
	rep.Results = []*Result{
		{Target: "floor", Error: "refused", Server: &ServerStats{CPUMicrosPerMsg: 1}},
		{Target: "throng", Server: &ServerStats{CPUMicrosPerMsg: 2}},
	}
	rep.compareToFloor()
	if rep.Results[1].VsFloor != nil || len(rep.Results[1].Notes) == 0 {
		t.Fatalf("ratios to a failed floor: %+v, notes %q", rep.Results[1].VsFloor, rep.Results[1].Notes)
	}
	c := Config{Scenario: ScenarioEcho, Floor: "nope", Targets: []Target{{Name: "a", URL: "ws://127.0.0.1:1"}}}
	if err := c.setDefaults(); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("--floor naming no target: %v", err)
	}
}
