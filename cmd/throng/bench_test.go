package main

import (
	"errors"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/throng-ws/throng/bench/peers/gorillapeer"
)

// TestBenchExitStatus runs `throng bench echo` against the gorilla echo peer:
// a held threshold exits 0, a breached one exits 1 and says so, and a --report
// path that cannot be written is refused before the run.
func TestBenchExitStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	bin := buildThrong(t)
	p := gorillapeer.New()
	ts := httptest.NewServer(p)
	defer func() { p.Close(); ts.Close() }()
	url := "ws://" + strings.TrimPrefix(ts.URL, "http://") + "/echo"
	dir := t.TempDir()
	run := func(args ...string) (int, string) {
		c := exec.Command(bin, append([]string{"bench", "echo", "--url", url, "--conns", "4", "--duration", "300ms", "--quiet"}, args...)...)
		c.Env = cleanEnv()
		out, err := c.CombinedOutput()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return 0, string(out)
		case errors.As(err, &ee):
			return ee.ExitCode(), string(out)
		}
		t.Fatalf("run: %v", err)
		return -1, ""
	}

	report := filepath.Join(dir, "r.html")
	code, out := run("--threshold", "errors==0", "--threshold", "p99<10s", "--report", report, "--json", filepath.Join(dir, "r.json"))
	if code != 0 || !strings.Contains(out, "p99<10s: ok") {
		t.Fatalf("held thresholds: exit %d\n%s", code, out)
	}
	page, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--threshold", "p99&lt;10s", "<td>inflight</td>", "<td>thresholds</td>"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("report lacks %q (command line and settings)", want)
		}
	}

	code, out = run("--threshold", "p99<1ns")
	if code != 1 || !strings.Contains(out, "p99<1ns: BREACHED") || !strings.Contains(out, "breached a threshold") {
		t.Fatalf("breached threshold: exit %d, want 1\n%s", code, out)
	}

	code, out = run("--report", filepath.Join(dir, "no", "such", "dir", "r.html"))
	if code != 1 || !strings.Contains(out, "bench: output") || strings.Contains(out, "echoes/s") {
		t.Fatalf("unwritable --report: exit %d, want 1 before any run\n%s", code, out)
	}
}
