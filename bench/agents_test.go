package bench

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/throng-ws/throng/internal/natstest"
)

// testAgentEnv makes the test binary a NATS agent (see TestMain), so a test
// can kill one with SIGKILL as a crash would.
const testAgentEnv = "THRONG_BENCH_TEST_AGENT"

// startNATS runs an embedded nats-server on loopback and returns its URL.
func startNATS(t *testing.T) string {
	t.Helper()
	_, url := natstest.Start(t, 0, false)
	return url
}

// startAgent runs an agent in this process until the test ends.
func startAgent(t *testing.T, o AgentOptions) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunAgent(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent %s: %v", o.Name, err)
		}
	})
	waitAgents(t, o.NATS, o.Name)
}

// waitAgents waits until every named agent answers discovery.
func waitAgents(t *testing.T, url string, names ...string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		found, skipped, _ := discover(context.Background(), nc, DefaultNATSPrefix, 1, 0)
		seen := map[string]bool{}
		for _, h := range found {
			seen[h.Name] = true
		}
		for _, s := range skipped {
			for _, n := range names {
				if strings.Contains(s, "agent "+n+" ") {
					seen[n] = true
				}
			}
		}
		all := true
		for _, n := range names {
			all = all && seen[n]
		}
		if all {
			return
		}
	}
	t.Fatalf("agents %v never answered discovery", names)
}

func TestSharesByWeight(t *testing.T) {
	var s shares
	s.add1(3, 1000)
	s.add1(1, 1000)
	s.add1(0.5, 10) // a small agent, full after 10
	got := []int{0, 0, 0}
	for range 10 { // a ramp in steps, as idle's chunks and stages add
		inc, err := s.add(45)
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range inc {
			got[i] += n
		}
	}
	if got[0]+got[1]+got[2] != 450 || got[2] != 10 {
		t.Fatalf("shares %v: want 450 in all, the small agent at its capacity 10", got)
	}
	if d := got[0] - 3*got[1]; d < -3 || d > 3 {
		t.Fatalf("shares %v: want 3:1 between the first two", got)
	}
	dec := s.remove(400)
	for i := range got {
		got[i] -= dec[i]
	}
	if got[0]+got[1]+got[2] != 50 {
		t.Fatalf("after removing 400: %v", got)
	}
	if n := s.drop(0); n != got[0] {
		t.Fatalf("drop gave back %d, it held %d", n, got[0])
	}
	if _, err := s.add(3000); err == nil {
		t.Fatal("added more than the parts left can hold")
	}
}

// TestAgentsDiscoveryAndWeights runs idle on two agents found over NATS, one
// three times the other's capacity: the connections split 3:1 and the merged
// counts are the sums of the agents' own.
func TestAgentsDiscoveryAndWeights(t *testing.T) {
	natsURL := startNATS(t)
	startAgent(t, AgentOptions{NATS: natsURL, Name: "big", MaxConns: 300, Loops: 1})
	startAgent(t, AgentOptions{NATS: natsURL, Name: "small", MaxConns: 100, Loops: 1, SourceIPs: "127.0.0.2-127.0.0.3"})
	cfg := Config{
		Scenario:  ScenarioIdle,
		Targets:   []Target{{Name: "t", URL: startThrong(t, false), PID: os.Getpid()}},
		Conns:     200,
		Hold:      200 * time.Millisecond,
		Sample:    20,
		Agents:    natsURL,
		MinAgents: 2,
	}
	r := runOne(t, cfg)
	if len(r.Agents) != 2 || r.Workers != 2 {
		t.Fatalf("agents %+v, workers %d: want big and small", r.Agents, r.Workers)
	}
	by := map[string]AgentStats{}
	sum := 0
	for _, a := range r.Agents {
		by[a.Name] = a
		sum += a.Opened
	}
	if by["big"].Opened != 150 || by["small"].Opened != 50 {
		t.Fatalf("opened big %d, small %d: want 150 and 50 by capacity 300:100", by["big"].Opened, by["small"].Opened)
	}
	if sum != r.Conns.Opened || r.Conns.Opened != 200 || r.Conns.PeakOpen != 200 || r.Conns.Held != 200 {
		t.Fatalf("merged conns %+v, agents' sum %d", r.Conns, sum)
	}
	if by["big"].Peak+by["small"].Peak != r.Conns.PeakOpen {
		t.Fatalf("peak %d is not the agents' %d + %d", r.Conns.PeakOpen, by["big"].Peak, by["small"].Peak)
	}
	if r.Probe == nil || r.Probe.Alive != r.Probe.Sampled || r.Probe.Sampled == 0 {
		t.Fatalf("probe %+v", r.Probe)
	}
}

// TestAgentsVersionMismatch: a coordinator uses no agent of another protocol
// version, and an agent refuses a coordinator of another.
func TestAgentsVersionMismatch(t *testing.T) {
	natsURL := startNATS(t)
	startAgent(t, AgentOptions{NATS: natsURL, Name: "old", Loops: 1, version: ProtocolVersion - 1})
	rep, err := Run(context.Background(), Config{
		Scenario:  ScenarioIdle,
		Targets:   []Target{{Name: "t", URL: "ws://127.0.0.1:1"}},
		Conns:     10,
		Agents:    natsURL,
		AgentWait: 1500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "agent old speaks protocol v" + strconv.Itoa(ProtocolVersion-1)
	if r := rep.Results[0]; !strings.Contains(r.Error, want) || !rep.Failed() {
		t.Fatalf("result error %q: want it to say %q", r.Error, want)
	}

	// The agent's own check, for a coordinator that skipped discovery.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	b, _ := json.Marshal(envelope{Version: ProtocolVersion, Op: envStart, Run: "r1", Config: &agentConfig{URL: "ws://127.0.0.1:1/echo", Protocol: ProtoEcho}})
	m, err := nc.Request(DefaultNATSPrefix+".agent.old", b, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var rp reply
	if err := json.Unmarshal(m.Data, &rp); err != nil || !strings.Contains(rp.Err, ErrVersion.Error()) {
		t.Fatalf("agent answered %+v (%v): want %v", rp, err, ErrVersion)
	}
}

// startAgentProcess runs an agent as a child process (this test binary), to
// be killed.
func startAgentProcess(t *testing.T, natsURL, name string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := exec.Command(exe)
	c.Env = append(os.Environ(), testAgentEnv+"="+natsURL+" "+name)
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() {
			c.Process.Signal(syscall.SIGTERM)
			c.Wait()
		})
	})
	return c
}

// runTestAgent is TestMain's agent mode.
func runTestAgent(spec string) int {
	url, name, _ := strings.Cut(spec, " ")
	ctx, stop := signalContext()
	defer stop()
	if err := RunAgent(ctx, AgentOptions{NATS: url, Name: name, Loops: 1, MaxConns: 1000}); err != nil {
		return 1
	}
	return 0
}

// TestAgentKilledMidRun kills one of two agent processes while echo runs.
// With --on-agent-loss continue the run carries on and says what was lost;
// with fail, the run fails naming the agent.
func TestAgentKilledMidRun(t *testing.T) {
	for _, mode := range []string{AgentLossContinue, AgentLossFail} {
		t.Run(mode, func(t *testing.T) {
			natsURL := startNATS(t)
			victim := startAgentProcess(t, natsURL, "victim")
			startAgentProcess(t, natsURL, "survivor")
			waitAgents(t, natsURL, "victim", "survivor")
			go func() {
				time.Sleep(2 * time.Second) // mid-echo: connect takes well under a second
				victim.Process.Kill()
			}()
			rep, err := Run(context.Background(), Config{
				Scenario:     ScenarioEcho,
				Targets:      []Target{{Name: "t", URL: startThrong(t, false)}},
				Conns:        40,
				Duration:     5 * time.Second,
				Size:         64,
				Agents:       natsURL,
				MinAgents:    2,
				AgentTimeout: 1500 * time.Millisecond,
				OnAgentLoss:  mode,
				Timeout:      45 * time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			r := rep.Results[0]
			var lost, kept AgentStats
			for _, a := range r.Agents {
				if a.Name == "victim" {
					lost = a
				} else {
					kept = a
				}
			}
			if !strings.Contains(lost.Lost, "agent victim lost") || lost.LostConns != 20 || r.LostConns != 20 {
				t.Fatalf("victim %+v, lost conns %d: want it lost with its 20 connections", lost, r.LostConns)
			}
			if kept.Lost != "" || kept.Opened != 20 {
				t.Fatalf("survivor %+v", kept)
			}
			switch mode {
			case AgentLossContinue:
				if r.Error != "" || r.Echo == nil || r.Echo.Echoes == 0 || r.Echo.Lost != 0 {
					t.Fatalf("error %q, echo %+v: want the survivor's run to finish", r.Error, r.Echo)
				}
				if r.errorCount() < 20 {
					t.Fatalf("errors %d: the lost connections count as errors", r.errorCount())
				}
			case AgentLossFail:
				if !strings.Contains(r.Error, "agent victim lost") {
					t.Fatalf("error %q: want the run failed by the loss", r.Error)
				}
			}
		})
	}
}

// TestStages ramps, holds and ramps down in idle (in this process), echo (on
// two agents) and chat, and checks each stage reached its target.
func TestStages(t *testing.T) {
	natsURL := startNATS(t)
	startAgent(t, AgentOptions{NATS: natsURL, Name: "a1", Loops: 1})
	startAgent(t, AgentOptions{NATS: natsURL, Name: "a2", Loops: 1})
	stages := []Stage{{500 * time.Millisecond, 40}, {300 * time.Millisecond, 40}, {0, 60}, {400 * time.Millisecond, 20}, {200 * time.Millisecond, 0}}
	for _, tc := range []struct {
		scenario string
		agents   string
	}{
		{ScenarioIdle, ""},
		{ScenarioEcho, natsURL},
		{ScenarioChat, ""},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			cfg := Config{
				Scenario: tc.scenario,
				Targets:  []Target{{Name: "t", URL: startThrong(t, false), PID: os.Getpid()}},
				Stages:   stages,
				Sample:   10,
				Size:     64,
				Agents:   tc.agents,
				RoomSize: 10,
				RoomRate: 20,
			}
			if tc.agents != "" {
				cfg.MinAgents = 2
			}
			r := runOne(t, cfg)
			if len(r.Stages) != len(stages) {
				t.Fatalf("%d stage results, want %d", len(r.Stages), len(stages))
			}
			for i, st := range r.Stages {
				if st.Target != stages[i].Target || st.Reached != int64(st.Target) {
					t.Errorf("stage %d: reached %d, target %d", i+1, st.Reached, stages[i].Target)
				}
			}
			if r.Conns.PeakOpen != 60 {
				t.Errorf("peak %d, want 60", r.Conns.PeakOpen)
			}
			shown := false
			for _, tk := range r.Timeline {
				shown = shown || tk.Target > 0
			}
			if !shown {
				t.Errorf("no progress tick shows a stage's target")
			}
			switch tc.scenario {
			case ScenarioEcho:
				if r.Echo == nil || r.Echo.Echoes == 0 || r.Echo.Lost != 0 {
					t.Errorf("echo %+v", r.Echo)
				}
			case ScenarioChat:
				if r.Chat == nil || r.Chat.Sent == 0 || r.Chat.Deliveries != r.Chat.Expected {
					t.Errorf("chat %+v", r.Chat)
				}
			}
		})
	}
}

// TestThresholds checks parsing and a breached threshold failing the report.
func TestThresholds(t *testing.T) {
	for _, bad := range []string{"p99", "p99<", "latency<5ms", "errors<abc", "p99~5ms", "p99<fast"} {
		if _, err := ParseThreshold(bad); err == nil {
			t.Errorf("ParseThreshold(%q) accepted", bad)
		}
	}
	th, err := ParseThreshold("p99 < 1.5s")
	if err != nil || th.Metric != "p99" || th.Op != "<" || th.Value != 1500 {
		t.Fatalf("p99 < 1.5s: %+v %v", th, err)
	}
	r := runOne(t, Config{
		Scenario: ScenarioEcho,
		Targets:  []Target{{Name: "t", URL: startThrong(t, false)}},
		Conns:    5,
		Duration: 300 * time.Millisecond,
		Size:     64,
		Thresholds: []Threshold{
			mustThreshold(t, "errors==0"),
			mustThreshold(t, "p99<1ns"),
			mustThreshold(t, "bytes_per_conn<800"), // no pid: not measured
		},
	})
	want := []bool{true, false, false}
	for i, tr := range r.Thresholds {
		if tr.OK != want[i] {
			t.Errorf("threshold %s: ok %v, want %v (%+v)", tr.Expr, tr.OK, want[i], tr)
		}
	}
	rep := &Report{Results: []*Result{r}}
	if !rep.Failed() || !r.Breached() {
		t.Fatal("a breached threshold does not fail the report")
	}
	var b strings.Builder
	rep.WriteTable(&b)
	if !strings.Contains(b.String(), "p99<1ns: BREACHED") || !strings.Contains(b.String(), "FAILED: threshold breached") {
		t.Fatalf("table does not mark the breach:\n%s", b.String())
	}
}

func mustThreshold(t *testing.T, s string) Threshold {
	t.Helper()
	th, err := ParseThreshold(s)
	if err != nil {
		t.Fatal(err)
	}
	return th
}
