package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// opsBinary builds the command once per test that needs it.
func opsBinary(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the binary with")
	}
	bin := filepath.Join(t.TempDir(), "throng")
	if out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// opsEnv is the environment without THRONG_ variables, plus extra.
func opsEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "THRONG_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// TestServeOperations runs `throng serve` with settings from a config file, the
// environment and flags, JSON logs, a connection cap, /metrics and /api/stats,
// and checks each layer of precedence took effect where it should.
func TestServeOperations(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the server's event loops need linux")
	}
	bin := opsBinary(t)
	cfg := filepath.Join(t.TempDir(), "throng.toml")
	os.WriteFile(cfg, []byte(`
ws-addr = "127.0.0.1:1"        # overridden by THRONG_WS_ADDR
http-addr = "127.0.0.1:0"
auth = "off"
max-conns = 1
api-key = "key-from-the-file"  # overridden by --api-key
log-format = "json"
log-level = "debug"
`), 0o600)
	const apiKey = "key-from-the-flag"
	cmd := exec.Command(bin, "serve", "--config", cfg, "--api-key", apiKey)
	cmd.Env = opsEnv("THRONG_WS_ADDR=127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	var all strings.Builder
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
	}()
	exited := make(chan error, 1)
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-readDone
	})

	var wsAddr, httpAddr string
	timeout := time.After(10 * time.Second)
	for wsAddr == "" {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("throng exited before serving:\n%s", all.String())
			}
			all.WriteString(line + "\n")
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log line is not JSON (--log-format from the file): %q", line)
			}
			if rec["msg"] == "serving" {
				wsAddr, _ = rec["ws"].(string)
				httpAddr, _ = rec["http"].(string)
			}
		case <-timeout:
			t.Fatalf("no serving line:\n%s", all.String())
		}
	}
	if strings.HasSuffix(wsAddr, ":1") {
		t.Fatalf("ws=%s: THRONG_WS_ADDR did not win over the file", wsAddr)
	}

	c, _, err := websocket.DefaultDialer.Dial("ws://"+wsAddr+"/ws?token=ignored", nil)
	if err != nil {
		t.Fatalf("first connection: %v", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := c.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	_, resp, err := websocket.DefaultDialer.Dial("ws://"+wsAddr+"/ws", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("second connection past max-conns=1: %v, %+v; want 503 with Retry-After", err, resp)
	}

	get := func(path, key string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+httpAddr+path, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	defer http.DefaultClient.CloseIdleConnections()
	status, body := get("/metrics", "")
	if status != http.StatusOK {
		t.Fatalf("/metrics: %d", status)
	}
	for _, want := range []string{
		`throng_handshakes_total{result="over_capacity"} 1`,
		`throng_max_connections 1`,
		`throng_connections{loop="0"}`,
		"go_goroutines",
		"process_resident_memory_bytes",
		"process_open_fds",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if status, _ := get("/api/stats", "key-from-the-file"); status != http.StatusUnauthorized {
		t.Errorf("/api/stats with the file's key: %d; the flag's key should have won", status)
	}
	status, body = get("/api/stats", apiKey)
	var stats struct {
		Connections  int64   `json:"connections"`
		RSSBytes     uint64  `json:"rss_bytes"`
		BytesPerConn float64 `json:"bytes_per_conn"`
	}
	if err := json.Unmarshal([]byte(body), &stats); status != http.StatusOK || err != nil {
		t.Fatalf("/api/stats: %d %v %s", status, err, body)
	}
	if stats.Connections != 1 || stats.RSSBytes == 0 {
		t.Errorf("/api/stats %s: want one connection and a resident set size", body)
	}

	// Read until the drain's close frame, which gorilla answers, so that the
	// drain does not wait out the close timeout.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	cmd.Process.Signal(syscall.SIGTERM)
	go func() {
		for line := range lines {
			all.WriteString(line + "\n")
		}
		exited <- cmd.Wait()
	}()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, all.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("throng did not exit after SIGTERM")
	}
	if strings.Contains(all.String(), apiKey) || strings.Contains(all.String(), "key-from-the-file") {
		t.Errorf("an API key reached the log:\n%s", all.String())
	}
	if !strings.Contains(all.String(), `"msg":"http request"`) {
		t.Errorf("no debug request log (--log-level from the file):\n%s", all.String())
	}
}

func TestServeRefusesContradictions(t *testing.T) {
	bin := opsBinary(t)
	ini := filepath.Join(t.TempDir(), "throng.ini")
	os.WriteFile(ini, []byte("max-conns = 1\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"idle timeout not above ping", []string{"--idle-timeout", "10s", "--ping-interval", "10s"}, []string{"--idle-timeout 10s must exceed --ping-interval 10s"}},
		{"memory marks crossed", []string{"--memory-limit", "1GiB", "--memory-high-water", "70", "--memory-low-water", "75"}, []string{"--memory-low-water 75 must be above 0 and below --memory-high-water 70"}},
		{"negative cap", []string{"--max-conns", "-5"}, []string{"--max-conns must be at least 0"}},
		{"bad address", []string{"--ws-addr", "8080"}, []string{`--ws-addr "8080"`, "missing port"}},
		{"config of an unknown kind", []string{"--config", ini}, []string{"must end in .toml, .yaml or .yml"}},
		{"missing config", []string{"--config", "/nonexistent/throng.toml"}, []string{"/nonexistent/throng.toml"}},
		{"several at once", []string{"--max-conns", "-1", "--log-format", "xml"}, []string{"--max-conns", "--log-format must be text or json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append([]string{"serve", "--dev", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, tc.args...)...)
			cmd.Env = opsEnv()
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
				t.Fatalf("exit: %v, want a non-zero status\n%s", err, out)
			}
			for _, want := range tc.want {
				if !strings.Contains(string(out), want) {
					t.Errorf("output does not say %q:\n%s", want, out)
				}
			}
			if strings.Contains(string(out), "serving") {
				t.Errorf("it started serving:\n%s", out)
			}
		})
	}
}
