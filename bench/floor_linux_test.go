package bench

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/throng-ws/throng/bench/floor"
)

// startFloor starts an in-process floor server and returns its ws:// base
// URL.
func startFloor(t *testing.T) string {
	t.Helper()
	s, err := floor.New(floor.Options{Loops: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return "ws://" + s.Addr()
}

// The floor passes the bench's own checks: every echo carries its sequence
// number and send time, every broadcast arrives exactly once with its result,
// and the report holds the other targets against it.
func TestFloorTarget(t *testing.T) {
	fl, gorilla := startFloor(t), startGorilla(t)
	targets := []Target{{Name: "floor", URL: fl, PID: os.Getpid()}, {Name: "gorilla", URL: gorilla, PID: os.Getpid()}}
	for _, inflight := range []int{1, 4} {
		rep := runReport(t, Config{Scenario: ScenarioEcho, Targets: targets, Conns: 20, Inflight: inflight, Duration: time.Second, Size: 64})
		for _, r := range rep.Results {
			switch {
			case r.Error != "":
				t.Fatalf("inflight %d, %s: %s", inflight, r.Target, r.Error)
			case r.Echo == nil || r.Echo.Echoes == 0 || r.Messages.Mismatch != 0 || r.Echo.Lost != 0:
				t.Fatalf("inflight %d, %s: echo %+v, %d mismatched", inflight, r.Target, r.Echo, r.Messages.Mismatch)
			case r.VsFloor == nil || r.VsFloor.LatencyP50 <= 0:
				t.Fatalf("inflight %d, %s: no ratios to the floor: %+v", inflight, r.Target, r.VsFloor)
			}
		}
	}
	for _, proto := range []string{ProtoShootoutJSON, ProtoShootoutBinary} {
		rep := runReport(t, Config{Scenario: ScenarioBroadcast, Targets: targets, Protocol: proto,
			StepSize: 10, MaxClients: 30, Samples: 12, Inflight: 3, LimitRTT: 10 * time.Second})
		for _, r := range rep.Results {
			if r.Error != "" || len(r.Steps) != 3 {
				t.Fatalf("%s, %s: %d steps, %s", proto, r.Target, len(r.Steps), r.Error)
			}
			for _, s := range r.Steps {
				if !s.ExactlyOnce || s.Results != 12 {
					t.Fatalf("%s, %s: step %+v", proto, r.Target, s)
				}
				if proto == ProtoShootoutJSON && (s.MinListeners != s.Clients || s.MaxListeners != s.Clients) {
					t.Fatalf("%s: listenerCount %d..%d at %d clients", r.Target, s.MinListeners, s.MaxListeners, s.Clients)
				}
			}
			if r.VsFloor == nil || len(r.VsFloor.Steps) != 3 || r.VsFloor.Steps[2].RTTP95 <= 0 {
				t.Fatalf("%s, %s: steps over the floor %+v", proto, r.Target, r.VsFloor)
			}
		}
	}
}

// runReport runs cfg and returns the whole report.
func runReport(t *testing.T, cfg Config) *Report {
	t.Helper()
	cfg.Timeout = 45 * time.Second
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Results) != len(cfg.Targets) {
		t.Fatalf("%d results for %d targets", len(rep.Results), len(cfg.Targets))
	}
	return rep
}
