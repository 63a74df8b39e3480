package bench

import (
	"context"
	"net/http/httptest"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/bench/peers/gorillapeer"
	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/echo"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
	"github.com/throng-ws/throng/shootout"
)

func TestMain(m *testing.M) {
	// --workers re-executes this test binary; WorkerEnv makes it a worker.
	if ok, code := WorkerMain(); ok {
		os.Exit(code)
	}
	// TestAgentKilledMidRun runs this binary as agents it can kill.
	if spec := os.Getenv(testAgentEnv); spec != "" {
		os.Exit(runTestAgent(spec))
	}
	goleak.VerifyTestMain(m)
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

var testSecret = "0123456789abcdef0123456789abcdef"

// startThrong starts an in-process throng server with Echo on /echo, Chat with
// rooms on /ws and Shootout on /shootout, and returns its ws:// base URL.
func startThrong(t *testing.T, withAuth bool) string {
	t.Helper()
	return startThrongOpts(t, withAuth, server.CompressionOff)
}

// startThrongOpts is startThrong with compression on or off.
func startThrongOpts(t *testing.T, withAuth bool, compression server.Compression) string {
	t.Helper()
	o := server.Options{
		Handlers:     map[string]server.Handler{"/echo": &echo.Handler{RateLimit: server.RateLimit{Rate: -1}}},
		Loops:        2,
		TickInterval: 50 * time.Millisecond,
		Compression:  compression,
	}
	if withAuth {
		v, err := auth.New(auth.Options{Secret: []byte(testSecret)})
		if err != nil {
			t.Fatal(err)
		}
		o.Auth = v
	}
	s, err := server.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Handle("/ws", &chat.Handler{Rooms: room.New(s.Loops(), room.Options{}), RateLimit: server.RateLimit{Rate: -1}, Deflater: s.Deflater()}); err != nil {
		t.Fatal(err)
	}
	if err := s.Handle("/shootout", &shootout.Handler{RateLimit: server.RateLimit{Rate: -1}, Rooms: room.New(s.Loops(), room.Options{Shards: 1}), Deflater: s.Deflater()}); err != nil {
		t.Fatal(err)
	}
	addr, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return "ws://" + addr.String()
}

// startGorilla starts the gorilla peer on httptest and returns its ws:// URL.
func startGorilla(t *testing.T) string {
	t.Helper()
	p := gorillapeer.New()
	ts := httptest.NewServer(p)
	t.Cleanup(func() {
		p.Close()
		ts.Close()
	})
	return strings.Replace(ts.URL, "http://", "ws://", 1)
}

// runOne runs cfg against one target and fails the test on a failed run.
func runOne(t *testing.T, cfg Config) *Result {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 45 * time.Second
	}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Results) != 1 {
		t.Fatalf("%d results, want 1", len(rep.Results))
	}
	r := rep.Results[0]
	if r.Error != "" {
		var b strings.Builder
		rep.WriteTable(&b)
		t.Fatalf("run failed: %s\n%s", r.Error, b.String())
	}
	return r
}

func workerCommand(t *testing.T) []string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{exe}
}
