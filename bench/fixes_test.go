package bench

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestPeakExactInShortBroadcast: a broadcast run shorter than a progress
// interval still reports its peak, counted at every open, not sampled.
func TestPeakExactInShortBroadcast(t *testing.T) {
	r := runOne(t, Config{
		Scenario:   ScenarioBroadcast,
		Targets:    []Target{{Name: "t", URL: startThrong(t, false)}},
		StepSize:   15,
		MaxClients: 30,
		Samples:    2,
	})
	if r.Conns.PeakOpen != 30 {
		t.Fatalf("peak %d, want 30", r.Conns.PeakOpen)
	}
}

// TestMismatchFails: an echo server that garbles every answer makes the run
// fail, and the table counts the mismatches among its errors.
func TestMismatchFails(t *testing.T) {
	up := websocket.Upgrader{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			op, p, err := c.ReadMessage()
			if err != nil {
				return
			}
			p[len(p)-1] ^= 1
			if c.WriteMessage(op, p) != nil {
				return
			}
		}
	}))
	defer ts.Close()
	rep, err := Run(t.Context(), Config{
		Scenario: ScenarioEcho,
		Targets:  []Target{{Name: "garbler", URL: "ws" + strings.TrimPrefix(ts.URL, "http")}},
		Conns:    2,
		Duration: 300 * time.Millisecond,
		Timeout:  30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Results[0]
	if r.Messages.Mismatch == 0 || !strings.Contains(r.Error, "mismatch") && !strings.Contains(r.Error, "did not match") {
		t.Fatalf("mismatch %d, error %q: want the run failed", r.Messages.Mismatch, r.Error)
	}
	var b strings.Builder
	rep.WriteTable(&b)
	if !strings.Contains(b.String(), "mismatch=") || strings.Contains(b.String(), "result                      ok") {
		t.Fatalf("table:\n%s", b.String())
	}
}

// TestCheckOutput refuses a directory and a missing parent, and leaves no file.
func TestCheckOutput(t *testing.T) {
	dir := t.TempDir()
	if err := CheckOutput(dir); err == nil {
		t.Error("a directory was accepted")
	}
	if err := CheckOutput(filepath.Join(dir, "no", "r.json")); err == nil {
		t.Error("a path in a missing directory was accepted")
	}
	p := filepath.Join(dir, "r.json")
	if err := CheckOutput(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("CheckOutput left %s behind", p)
	}
}

// TestProcCPUNanoseconds: the server's CPU is read from schedstat, so it is
// not a multiple of a 10ms clock tick.
func TestProcCPUNanoseconds(t *testing.T) {
	if _, err := os.Stat("/proc/self/task"); err != nil {
		t.Skip("no /proc")
	}
	end := time.Now().Add(30 * time.Millisecond)
	for time.Now().Before(end) {
	}
	d, err := procCPU(os.Getpid())
	if err != nil || d <= 0 {
		t.Fatalf("procCPU %v, %v", d, err)
	}
	if d%(10*time.Millisecond) == 0 {
		t.Fatalf("procCPU %v is whole clock ticks", d)
	}
}

// TestHTMLReport shows the command line, every setting, and a time axis that
// ends at the run's length.
func TestHTMLReport(t *testing.T) {
	rep := &Report{Scenario: ScenarioEcho, Config: Config{Scenario: ScenarioEcho, Conns: 7, Command: []string{"throng", "bench", "echo", "--conns", "7"}}}
	rep.Results = []*Result{{Target: "t", Client: ClientStats{WallSeconds: 13.7},
		Timeline: []Tick{{T: 1, MsgsPerSec: 5}, {T: 2, MsgsPerSec: 6}}}}
	p := filepath.Join(t.TempDir(), "r.html")
	if err := rep.WriteHTML(p); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	page := string(b)
	for _, want := range []string{"throng bench echo --conns 7", "<td>conns</td><td>7</td>", "<td>handshake_timeout</td>", ">13.7<"} {
		if !strings.Contains(page, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
