package bench

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestEcho(t *testing.T) {
	for _, tc := range []struct {
		name    string
		start   func(*testing.T) string
		text    bool
		workers int
	}{
		{"throng/binary", func(t *testing.T) string { return startThrong(t, false) }, false, 0},
		{"throng/text", func(t *testing.T) string { return startThrong(t, false) }, true, 0},
		{"gorilla/binary", startGorilla, false, 0},
		{"throng/workers=2", func(t *testing.T) string { return startThrong(t, false) }, false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{
				Scenario: ScenarioEcho,
				Targets:  []Target{{Name: "t", URL: tc.start(t), PID: os.Getpid()}},
				Conns:    20,
				Inflight: 3,
				Duration: time.Second,
				Size:     100,
				Text:     tc.text,
				Workers:  tc.workers,
			}
			if tc.workers > 0 {
				cfg.WorkerCommand = workerCommand(t)
			}
			r := runOne(t, cfg)
			e := r.Echo
			switch {
			case r.Conns.Opened != 20 || r.Conns.Failed != 0 || r.Conns.Dropped != 0:
				t.Fatalf("conns %+v", r.Conns)
			case e == nil || e.Echoes == 0:
				t.Fatalf("no echoes: %+v", e)
			case e.Lost != 0 || r.Messages.Mismatch != 0:
				t.Fatalf("lost %d, mismatched %d", e.Lost, r.Messages.Mismatch)
			case r.Messages.Sent != r.Messages.Recv:
				t.Fatalf("sent %d, received %d", r.Messages.Sent, r.Messages.Recv)
			case r.Latency == nil || uint64(r.Latency.Count) != e.Echoes:
				t.Fatalf("latency count %v, echoes %d", r.Latency, e.Echoes)
			case r.Messages.BytesRecv != r.Messages.Recv*100:
				t.Fatalf("bytes received %d for %d messages of 100", r.Messages.BytesRecv, r.Messages.Recv)
			case r.Server == nil || r.Server.CPUSeconds <= 0 || r.Server.MsgsPerCPUSecond <= 0:
				t.Fatalf("server figures %+v", r.Server)
			case r.Client.CPUSeconds <= 0:
				t.Fatalf("client cpu %+v", r.Client)
			case r.Workers != max(tc.workers, 1):
				t.Fatalf("workers %d", r.Workers)
			}
		})
	}
}

func TestIdle(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(*testing.T) string
	}{
		{"throng", func(t *testing.T) string { return startThrong(t, false) }},
		{"gorilla", startGorilla},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runOne(t, Config{
				Scenario:  ScenarioIdle,
				Targets:   []Target{{URL: tc.start(t), PID: os.Getpid()}},
				Conns:     50,
				Rate:      500,
				Hold:      200 * time.Millisecond,
				Sample:    20,
				SourceIPs: "127.0.0.2-127.0.0.4",
			})
			switch {
			case r.Conns.Opened != 50 || r.Conns.Held != 50:
				t.Fatalf("conns %+v", r.Conns)
			case r.Probe == nil || r.Probe.Sampled != 20 || r.Probe.Alive != 20:
				t.Fatalf("probe %+v", r.Probe)
			case r.Server == nil || r.Server.RSSBefore <= 0 || r.Server.RSSAfter <= 0:
				t.Fatalf("server %+v", r.Server)
			case len(r.Memory) != 11 || r.Memory[len(r.Memory)-1].Conns != 50:
				t.Fatalf("memory points %+v", r.Memory)
			case r.Handshake == nil || r.Handshake.Count != 50:
				t.Fatalf("handshake latency %+v", r.Handshake)
			}
		})
	}
}

// TestIdleTraffic checks idle's traffic phase: every connection echoes, then
// memory is read a second time.
func TestIdleTraffic(t *testing.T) {
	r := runOne(t, Config{
		Scenario: ScenarioIdle,
		Targets:  []Target{{URL: startThrong(t, false), PID: os.Getpid()}},
		Conns:    40,
		Rate:     500,
		Hold:     100 * time.Millisecond,
		Sample:   10,
		Traffic:  300 * time.Millisecond,
		Size:     4096,
	})
	switch {
	case r.Conns.Held != 40:
		t.Fatalf("conns %+v", r.Conns)
	case r.Echo == nil || r.Echo.Echoes < 40 || r.Echo.Lost != 0 || r.Echo.Size != 4096:
		t.Fatalf("traffic %+v", r.Echo)
	case r.Server == nil || r.Server.RSSAfterTraffic <= 0 || r.Server.RSSPerConnAfterTraffic == 0:
		t.Fatalf("server %+v", r.Server)
	case len(r.Memory) != 12 || r.Memory[11].Conns != 40:
		t.Fatalf("memory points %+v", r.Memory)
	}
}

func TestIdleJWT(t *testing.T) {
	url := startThrong(t, true)
	for _, tc := range []struct {
		name     string
		secret   string
		inHeader bool
		opened   int
		errKey   string
	}{
		{"query", testSecret, false, 10, ""},
		{"header", testSecret, true, 10, ""},
		{"wrong secret", "another-secret-another-secret-xx", false, 0, "handshake_status_401"},
		{"no token", "", false, 0, "handshake_status_401"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := Run(t.Context(), Config{
				Scenario:      ScenarioIdle,
				Targets:       []Target{{URL: url}},
				Conns:         10,
				Hold:          10 * time.Millisecond,
				Sample:        5,
				JWTSecret:     tc.secret,
				TokenInHeader: tc.inHeader,
				Timeout:       20 * time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			r := rep.Results[0]
			if r.Conns.Opened != tc.opened {
				t.Fatalf("opened %d, want %d (%s)", r.Conns.Opened, tc.opened, r.Error)
			}
			if tc.errKey != "" && r.Errors[tc.errKey] != 10 {
				t.Fatalf("errors %v, want 10 %s", r.Errors, tc.errKey)
			}
			if tc.errKey != "" && r.Error == "" {
				t.Fatal("run with refused handshakes did not fail")
			}
		})
	}
}

func TestBroadcast(t *testing.T) {
	for _, tc := range []struct {
		name     string
		start    func(*testing.T) string
		protocol string
		workers  int
	}{
		{"gorilla/json", startGorilla, ProtoShootoutJSON, 0},
		{"gorilla/binary", startGorilla, ProtoShootoutBinary, 0},
		{"throng/json", func(t *testing.T) string { return startThrong(t, false) }, ProtoShootoutJSON, 0},
		{"gorilla/json/workers=2", startGorilla, ProtoShootoutJSON, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The in-process throng's PID is this process: enough to check the
			// server CPU is read.
			target := Target{URL: tc.start(t)}
			if strings.HasPrefix(tc.name, "throng") {
				target.PID = os.Getpid()
			}
			cfg := Config{
				Scenario:   ScenarioBroadcast,
				Targets:    []Target{target},
				Protocol:   tc.protocol,
				StepSize:   10,
				MaxClients: 30,
				Samples:    12,
				Inflight:   3,
				LimitRTT:   10 * time.Second,
				Workers:    tc.workers,
			}
			if tc.workers > 0 {
				cfg.WorkerCommand = workerCommand(t)
			}
			r := runOne(t, cfg)
			if len(r.Steps) != 3 || r.MaxClients != 30 {
				t.Fatalf("%d steps, max clients %d; want 3 steps up to 30", len(r.Steps), r.MaxClients)
			}
			// CPU time is read in clock ticks, so one short step may read zero;
			// the three together may not.
			if cpu := r.Steps[0].ServerCPUSeconds + r.Steps[1].ServerCPUSeconds + r.Steps[2].ServerCPUSeconds; target.PID != 0 && cpu == 0 {
				t.Fatal("no server CPU read from the PID over three steps")
			}
			for i, s := range r.Steps {
				clients := 10 * (i + 1)
				switch {
				case s.Clients != clients || s.Receivers != clients:
					t.Fatalf("step %d: clients %d receivers %d, want %d", s.Step, s.Clients, s.Receivers, clients)
				case s.Samples != 12 || s.Results != 12:
					t.Fatalf("step %d: %d sent, %d results, want 12", s.Step, s.Samples, s.Results)
				case !s.ExactlyOnce || s.Receipts != uint64(12*clients) || s.Missing != 0 || s.Duplicates != 0:
					t.Fatalf("step %d: not exactly once: %+v", s.Step, s)
				case s.RTT == nil || s.RTT.Count != 12:
					t.Fatalf("step %d: rtt %+v", s.Step, s.RTT)
				case target.PID == 0 && s.ServerCPUSeconds != 0:
					t.Fatalf("step %d: server CPU %v s without a PID", s.Step, s.ServerCPUSeconds)
				case s.ServerCPUSeconds < 0 || (s.ServerCPUSeconds > 0) != (s.ServerCPUMicrosPerDelivery > 0):
					t.Fatalf("step %d: server CPU %v s but %v µs per delivery", s.Step, s.ServerCPUSeconds, s.ServerCPUMicrosPerDelivery)
				case tc.protocol == ProtoShootoutJSON && (s.MinListeners != clients || s.MaxListeners != clients):
					t.Fatalf("step %d: listenerCount %d..%d, want %d", s.Step, s.MinListeners, s.MaxListeners, clients)
				}
			}
		})
	}
}

func TestBroadcastStopsAtLimit(t *testing.T) {
	r := runOne(t, Config{
		Scenario:   ScenarioBroadcast,
		Targets:    []Target{{URL: startGorilla(t)}},
		StepSize:   5,
		MaxClients: 50,
		Samples:    5,
		LimitRTT:   time.Nanosecond, // every step passes it
	})
	if len(r.Steps) != 1 || r.MaxClients != 0 || len(r.Notes) == 0 || !strings.Contains(r.Notes[0], "passed") {
		t.Fatalf("steps %d, max clients %d, notes %q: want a stop after the first step", len(r.Steps), r.MaxClients, r.Notes)
	}
}

func TestChat(t *testing.T) {
	r := runOne(t, Config{
		Scenario: ScenarioChat,
		Targets:  []Target{{URL: startThrong(t, false)}},
		Conns:    40,
		RoomSize: 8,
		RoomRate: 10,
		Duration: time.Second,
	})
	c := r.Chat
	switch {
	case c == nil || c.Rooms != 5 || c.RoomSize != 8:
		t.Fatalf("chat %+v", c)
	case c.Sent < 40 || c.Expected != uint64(c.Sent)*8 || c.Deliveries != c.Expected:
		t.Fatalf("sent %d, expected %d, delivered %d", c.Sent, c.Expected, c.Deliveries)
	case r.Latency == nil || uint64(r.Latency.Count) != c.Deliveries:
		t.Fatalf("latency %+v for %d deliveries", r.Latency, c.Deliveries)
	}
}

// TestChatJoinHold holds the joined clients before chatting and reads the
// server's memory per member (the server runs in this process, so its RSS is
// this process's).
func TestChatJoinHold(t *testing.T) {
	r := runOne(t, Config{
		Scenario: ScenarioChat,
		Targets:  []Target{{URL: startThrong(t, false), PID: os.Getpid()}},
		Conns:    20,
		RoomSize: 10,
		RoomRate: 5,
		Duration: 500 * time.Millisecond,
		JoinHold: 200 * time.Millisecond,
	})
	if r.Server == nil || r.Server.RSSAfter == 0 || len(r.Memory) != 1 || r.Memory[0].Conns != 20 {
		t.Fatalf("server %+v, memory %+v: want one reading for 20 members", r.Server, r.Memory)
	}
	if c := r.Chat; c == nil || c.Deliveries != c.Expected || c.Sent == 0 {
		t.Fatalf("chat after the hold: %+v", c)
	}
	if c := r.Chat; c.ServerCPUMicrosPerDelivery <= 0 {
		t.Fatalf("server CPU per delivery %v, want it read from the PID", c.ServerCPUMicrosPerDelivery)
	}
}

func TestChurn(t *testing.T) {
	r := runOne(t, Config{
		Scenario:  ScenarioChurn,
		Targets:   []Target{{URL: startThrong(t, false)}},
		Conns:     20,
		ChurnRate: 30,
		Duration:  time.Second,
	})
	ch := r.Churn
	if ch == nil || ch.Reconnects < 25 || ch.Reconnects > 31 || ch.Failed != 0 || ch.Open != 20 {
		t.Fatalf("churn %+v, want about 30 reconnects and 20 open", ch)
	}
	if r.Conns.Dropped != 0 || len(r.Errors) != 0 {
		t.Fatalf("dropped %d, errors %v", r.Conns.Dropped, r.Errors)
	}
}

func TestReconnectStorm(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(*testing.T) string
	}{
		{"throng", func(t *testing.T) string { return startThrong(t, false) }},
		{"gorilla", startGorilla},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runOne(t, Config{
				Scenario: ScenarioStorm,
				Targets:  []Target{{URL: tc.start(t)}},
				Conns:    60,
			})
			s := r.Storm
			if s == nil || s.Dropped != 60 || s.Reconnected != 60 || s.Seconds <= 0 || s.HandshakesPerSec <= 0 {
				t.Fatalf("storm %+v", s)
			}
			if r.Conns.Opened != 120 {
				t.Fatalf("opened %d, want 120", r.Conns.Opened)
			}
		})
	}
}

func TestOutputs(t *testing.T) {
	url := startGorilla(t)
	rep, err := Run(t.Context(), Config{
		Scenario:   ScenarioBroadcast,
		Targets:    []Target{{Name: "a", URL: url}, {Name: "b", URL: url}},
		StepSize:   5,
		MaxClients: 10,
		Samples:    4,
		Timeout:    20 * time.Second,
	})
	if err != nil || rep.Failed() {
		t.Fatalf("run: %v %v", err, rep)
	}
	var table strings.Builder
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"broadcast", "a", "b", "exactly once", "yes, every step", "a broadcast steps:"} {
		if !strings.Contains(table.String(), want) {
			t.Fatalf("table lacks %q:\n%s", want, table.String())
		}
	}
	dir := t.TempDir()
	if err := rep.WriteJSON(filepath.Join(dir, "r.json")); err != nil {
		t.Fatal(err)
	}
	var back Report
	b, _ := os.ReadFile(filepath.Join(dir, "r.json"))
	if err := json.Unmarshal(b, &back); err != nil || len(back.Results) != 2 || len(back.Results[1].Steps) != 2 {
		t.Fatalf("json round trip: %v", err)
	}
	if err := rep.WriteHTML(filepath.Join(dir, "r.html")); err != nil {
		t.Fatal(err)
	}
	h, _ := os.ReadFile(filepath.Join(dir, "r.html"))
	page := string(h)
	if !strings.Contains(page, "<svg") || !strings.Contains(page, "Broadcast round trip per step") {
		t.Fatal("report has no step chart")
	}
	for _, banned := range []string{"<script src", "<link", "https://", "@import"} {
		if strings.Contains(page, banned) {
			t.Fatalf("report is not self-contained: has %q", banned)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	url := []Target{{URL: "ws://127.0.0.1:1"}}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"unknown scenario", Config{Scenario: "nope", Targets: url}, "unknown scenario"},
		{"no target", Config{Scenario: ScenarioIdle}, "no target"},
		{"per process limit", Config{Scenario: ScenarioIdle, Targets: url, Conns: 20000}, "use more --workers"},
		{"per worker limit", Config{Scenario: ScenarioIdle, Targets: url, Conns: 40000, Workers: 2}, "use more --workers"},
		{"broadcast limit", Config{Scenario: ScenarioBroadcast, Targets: url, MaxClients: 30000}, "use more --workers"},
		{"small echo", Config{Scenario: ScenarioEcho, Targets: url, Size: 8}, "at least 32"},
		{"bad protocol", Config{Scenario: ScenarioBroadcast, Targets: url, Protocol: "xml"}, "json or binary"},
		{"bad source ips", Config{Scenario: ScenarioIdle, Targets: url, SourceIPs: "127.0.0.9-127.0.0.2"}, "range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Run(t.Context(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
	// 39,000 over two workers fits.
	c := Config{Scenario: ScenarioIdle, Targets: url, Conns: 39000, Workers: 2}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
}

func TestParse(t *testing.T) {
	ips, err := ParseSourceIPs("127.0.0.2-127.0.0.50, 127.0.1.1")
	if err != nil || len(ips) != 50 || ips[0].String() != "127.0.0.2" || ips[48].String() != "127.0.0.50" || ips[49].String() != "127.0.1.1" {
		t.Fatalf("ParseSourceIPs: %v %v", ips, err)
	}
	for _, tc := range []struct {
		in   string
		want Target
	}{
		{"ws://h:1/echo", Target{URL: "ws://h:1/echo"}},
		{"throng=ws://h:1,pid=42", Target{Name: "throng", URL: "ws://h:1", PID: 42}},
		{"g=ws://h:1/x,stats=http://h:2/api/stats", Target{Name: "g", URL: "ws://h:1/x", StatsURL: "http://h:2/api/stats"}},
	} {
		got, err := ParseTarget(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Fatalf("ParseTarget(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	if _, err := ParseTarget("x=ws://h:1,pid=no"); err == nil {
		t.Fatal("bad pid accepted")
	}
	for _, tc := range []struct{ total, parts int }{{10, 3}, {3, 5}, {0, 2}, {19500, 1}} {
		sum, next := 0, 0
		for i := range tc.parts {
			first, n := split(tc.total, tc.parts, i)
			if first != next {
				t.Fatalf("split(%d,%d,%d) first %d, want %d", tc.total, tc.parts, i, first, next)
			}
			next += n
			sum += n
		}
		if sum != tc.total {
			t.Fatalf("split(%d,%d) sums to %d", tc.total, tc.parts, sum)
		}
	}
}
