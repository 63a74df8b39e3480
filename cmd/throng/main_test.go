package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/throng-ws/throng/auth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// buildThrong builds the command into a temporary directory.
func buildThrong(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the binary with")
	}
	bin := filepath.Join(t.TempDir(), "throng")
	out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// cleanEnv is the test's environment without THRONG_ variables, so a developer's
// settings cannot change what the binary does.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "THRONG_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// throngProc is a running `throng serve` whose stderr is read line by line.
type throngProc struct {
	cmd    *exec.Cmd
	lines  chan string
	exited chan struct{}
	err    error // from Wait; set before exited is closed

	mu  sync.Mutex
	log strings.Builder // everything written to stderr
}

func startThrong(t *testing.T, bin string, env []string, args ...string) *throngProc {
	t.Helper()
	p := &throngProc{cmd: exec.Command(bin, args...), lines: make(chan string, 256), exited: make(chan struct{})}
	p.cmd.Env = env
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("throng stderr:\n%s", p.stderr())
		}
	})
	return p
}

func (p *throngProc) stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// waitLine reads stderr until a line matches re and returns the submatches.
func (p *throngProc) waitLine(t *testing.T, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	timeout := time.After(10 * time.Second)
	for {
		select {
		case line := <-p.lines:
			if m := rx.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-p.exited:
			t.Fatalf("throng exited (%v) before logging %q", p.err, re)
		case <-timeout:
			t.Fatalf("no line matching %q", re)
		}
	}
}

// wait waits for the process to exit and returns Wait's error.
func (p *throngProc) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(15 * time.Second):
		t.Fatal("throng did not exit")
		return nil
	}
}

// servingAddrs waits for the "serving" log line and returns its addresses.
func (p *throngProc) servingAddrs(t *testing.T) (wsAddr, httpAddr string) {
	t.Helper()
	m := p.waitLine(t, `msg=serving ws=(\S+) http=(\S+)`)
	return m[1], m[2]
}

func readMsgType(t *testing.T, c *websocket.Conn) (typ, userID string) {
	t.Helper()
	_, b, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var m struct{ Type, UserID string }
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("message %q: %v", b, err)
	}
	return m.Type, m.UserID
}

func expectShutdownClose(t *testing.T, c *websocket.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway || ce.Text != "server shutting down" {
			t.Fatalf("read ended with %v, want close 1001 %q", err, "server shutting down")
		}
		return
	}
}

func dialWS(t *testing.T, u string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	c, resp, err := d.Dial(u, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", u, err, status)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c
}

func TestThrongBinary(t *testing.T) {
	if testing.Short() {
		// Building and linking the binary alone takes about five seconds.
		t.Skip("builds the binary; skipped with -short")
	}
	bin := buildThrong(t)

	t.Run("serve dev then SIGTERM", func(t *testing.T) {
		if runtime.GOOS != "linux" {
			t.Skip("the server's event loops need linux")
		}
		p := startThrong(t, bin, cleanEnv(), "serve", "--dev", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
		wsAddr, httpAddr := p.servingAddrs(t)
		devURL := p.waitLine(t, `dev mode: (ws://\S+)`)[1]
		u, err := url.Parse(devURL)
		if err != nil || u.Host != wsAddr || u.Path != "/ws" || u.Query().Get("token") == "" {
			t.Fatalf("dev URL %q (%v): want ws://%s/ws?token=...", devURL, err, wsAddr)
		}

		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		http.DefaultClient.CloseIdleConnections()
		if resp.StatusCode != 200 {
			t.Errorf("/readyz: %d, want 200", resp.StatusCode)
		}

		c := dialWS(t, devURL)
		if typ, user := readMsgType(t, c); typ != "connected" || user != "dev" {
			t.Fatalf("greeting %s for %q, want connected for dev", typ, user)
		}
		// The dev secret is random, so a token it did not sign is refused.
		forged, _ := auth.Mint([]byte("guess"), "", "dev", time.Hour, "", time.Time{})
		if c, resp, err := websocket.DefaultDialer.Dial("ws://"+wsAddr+"/ws?token="+forged, nil); err == nil {
			c.Close()
			t.Error("a token signed with another secret was accepted")
		} else if resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("forged token: %v, want 401", err)
		}

		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		expectShutdownClose(t, c)
		if err := p.wait(t); err != nil {
			t.Fatalf("exit: %v, want status 0", err)
		}
		if !strings.Contains(p.stderr(), "msg=stopped") {
			t.Errorf("no stopped log line")
		}
	})

	t.Run("env vars", func(t *testing.T) {
		if runtime.GOOS != "linux" {
			t.Skip("the server's event loops need linux")
		}
		const secret = "an environment secret"
		p := startThrong(t, bin, cleanEnv(
			"THRONG_WS_ADDR=127.0.0.1:0",
			"THRONG_HTTP_ADDR=127.0.0.1:0",
			"THRONG_JWT_SECRET="+secret,
		), "serve")
		wsAddr, _ := p.servingAddrs(t)
		if host, port, err := net.SplitHostPort(wsAddr); err != nil || host != "127.0.0.1" || port == "8080" || port == "0" {
			t.Fatalf("ws=%s: THRONG_WS_ADDR=127.0.0.1:0 not honoured", wsAddr)
		}
		tok, err := auth.Mint([]byte(secret), "", "envuser", time.Hour, "", time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		c := dialWS(t, "ws://"+wsAddr+"/ws?token="+tok)
		if typ, user := readMsgType(t, c); typ != "connected" || user != "envuser" {
			t.Fatalf("greeting %s for %q, want connected for envuser", typ, user)
		}
		if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		expectShutdownClose(t, c)
		if err := p.wait(t); err != nil {
			t.Fatalf("exit after SIGINT: %v, want status 0", err)
		}
	})

	t.Run("serve refuses bad configuration", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			env  []string
			args []string
			want string
		}{
			{"no key", nil, nil, "no token key"},
			{"empty secret from env", []string{"THRONG_JWT_SECRET="}, nil, "no token key"},
			{"auth off with a secret", nil, []string{"--auth=off", "--jwt-secret=s"}, "--auth=off conflicts"},
			{"unknown auth mode", nil, []string{"--auth=maybe"}, "--auth must be on or off"},
			{"secret and public key", nil, []string{"--jwt-secret=s", "--jwt-public-key=/nonexistent"}, "not both"},
			{"unreadable public key", nil, []string{"--jwt-public-key=/nonexistent/key.pem"}, "--jwt-public-key"},
			{"unknown auth failure", nil, []string{"--dev", "--auth-failure=maybe"}, "--auth-failure must be reject or close"},
			{"bad log level", nil, []string{"--dev", "--log-level=loud"}, "--log-level"},
			{"unknown flag", nil, []string{"--no-such-flag"}, "no-such-flag"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				args := append([]string{"serve", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, tc.args...)
				cmd := exec.CommandContext(ctx, bin, args...)
				cmd.Env = cleanEnv(tc.env...)
				out, err := cmd.CombinedOutput()
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
					t.Fatalf("exit: %v, want a non-zero status\n%s", err, out)
				}
				if !strings.Contains(string(out), tc.want) {
					t.Errorf("output does not say %q:\n%s", tc.want, out)
				}
				if strings.Contains(string(out), "msg=serving") {
					t.Errorf("it started serving:\n%s", out)
				}
			})
		}
	})

	t.Run("token", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			env  []string
			args []string
		}{
			{"flags", nil, []string{"--secret", "s", "--sub", "u"}},
			{"secret from env", []string{"THRONG_SECRET=s"}, []string{"--sub", "u"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := time.Now().Truncate(time.Second)
				cmd := exec.Command(bin, append([]string{"token"}, tc.args...)...)
				cmd.Env = cleanEnv(tc.env...)
				out, err := cmd.Output()
				if err != nil {
					t.Fatalf("throng token: %v", err)
				}
				tok := strings.TrimSpace(string(out))
				if strings.ContainsAny(tok, " \n") {
					t.Fatalf("output %q is not one token", out)
				}
				v, err := auth.New(auth.Options{Secret: []byte("s")})
				if err != nil {
					t.Fatal(err)
				}
				claims, err := v.Verify(tok)
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if claims.Subject != "u" {
					t.Errorf("sub %q, want u", claims.Subject)
				}
				if exp := claims.ExpiresAt.Sub(before); exp < time.Hour || exp > time.Hour+time.Minute {
					t.Errorf("exp %v after issue, want the default 1h", exp)
				}
				other, _ := auth.New(auth.Options{Secret: []byte("not s")})
				if _, err := other.Verify(tok); auth.ReasonOf(err) != auth.ReasonBadSignature {
					t.Errorf("verified with another secret: %v", err)
				}
			})
		}
		for _, args := range [][]string{{"--sub", "u"}, {"--secret", "s"}, {"--secret", "s", "--sub", "u", "--alg", "RS256"},
			{"--secret", "s", "--sub", "u", "--ttl", "0"}, {"--secret", "s", "--sub", "u", "--ttl", "-1m"}} {
			t.Run(fmt.Sprint("refuses ", args), func(t *testing.T) {
				cmd := exec.Command(bin, append([]string{"token"}, args...)...)
				cmd.Env = cleanEnv()
				out, err := cmd.Output()
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
					t.Fatalf("exit: %v, want a non-zero status\n%s", err, out)
				}
				if len(out) != 0 {
					t.Errorf("printed %q on stdout", out)
				}
				if !strings.Contains(string(ee.Stderr), "token") && !strings.Contains(string(ee.Stderr), "auth") {
					t.Errorf("stderr does not say what is wrong: %q", ee.Stderr)
				}
			})
		}
	})
}

func TestDialable(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 8080}, "127.0.0.1:8080"},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 1}, "127.0.0.1:1"},
		{&net.TCPAddr{Port: 2}, "127.0.0.1:2"},
		{&net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 3}, "10.0.0.1:3"},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 4}, "[::1]:4"},
	} {
		if got := dialable(tc.addr); got != tc.want {
			t.Errorf("dialable(%v) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}
