package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/throng-ws/throng/client"
)

// TestClientCommandAndPage runs `throng serve --dev` as `make run` does, checks
// that the HTTP listener serves the demo page wired to the WebSocket listener,
// and chats through `throng client` with a token from /dev/token.
func TestClientCommandAndPage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	bin := filepath.Join(t.TempDir(), "throng")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "THRONG_") {
			env = append(env, kv)
		}
	}

	serve := exec.Command(bin, "serve", "--dev", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	serve.Env = env
	stderr, err := serve.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	serveDone := make(chan error, 1)
	addrs := make(chan []string, 1)
	go func() {
		rx := regexp.MustCompile(`msg=serving ws=(\S+) http=(\S+)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := rx.FindStringSubmatch(sc.Text()); m != nil {
				addrs <- m
			}
		}
		serveDone <- serve.Wait()
	}()
	t.Cleanup(func() {
		serve.Process.Signal(syscall.SIGINT)
		select {
		case <-serveDone:
		case <-time.After(15 * time.Second):
			serve.Process.Kill()
			<-serveDone
		}
	})
	var wsAddr, httpAddr string
	select {
	case m := <-addrs:
		wsAddr, httpAddr = m[1], m[2]
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not log its addresses")
	}
	base := "http://" + httpAddr

	page := pageGet(t, base+"/")
	if !strings.Contains(page, `src="/app.js"`) {
		t.Fatalf("/ is not the demo page:\n%s", page)
	}
	if js := pageGet(t, base+"/client.js"); !strings.Contains(js, "export class WebSocketClient") {
		t.Fatal("/client.js is not the client library")
	}
	var cfg struct{ WSURL, Auth string }
	json.Unmarshal([]byte(pageGet(t, base+"/config.json")), &cfg)
	if cfg.WSURL != "ws://"+wsAddr+"/ws" || cfg.Auth != "dev" {
		t.Fatalf("config = %+v, want ws://%s/ws in dev mode", cfg, wsAddr)
	}
	var tok struct{ Token string }
	json.Unmarshal([]byte(pageGet(t, base+"/dev/token?sub=alice")), &tok)
	var bobTok struct{ Token string }
	json.Unmarshal([]byte(pageGet(t, base+"/dev/token?sub=bob")), &bobTok)

	// Bob listens with the Go client.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	events := make(chan any, 64)
	bob, err := client.Dial(ctx, cfg.WSURL, client.Options{
		Token:      bobTok.Token,
		OnMessage:  func(m client.Message) { events <- m },
		OnUserLeft: func(u client.UserLeft) { events <- u },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	if _, err := bob.Join(ctx, "lobby", "Bob"); err != nil {
		t.Fatal(err)
	}

	cli := exec.Command(bin, "client", "--url", cfg.WSURL, "--token", tok.Token, "--room", "lobby", "--name", "Alice")
	cli.Env = env
	stdin, _ := cli.StdinPipe()
	stdout, _ := cli.StdoutPipe()
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	expectLine := func(want string) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("client exited before printing %q", want)
				}
				if strings.Contains(l, want) {
					return
				}
			case <-timeout:
				t.Fatalf("client never printed %q", want)
			}
		}
	}
	expectLine("* joined lobby (2 here)")
	if err := bob.Send(ctx, "lobby", "hi Alice"); err != nil {
		t.Fatal(err)
	}
	expectLine("] Bob: hi Alice")

	io.WriteString(stdin, "hello from the command line\n")
	waitEvent := func(match func(any) bool) {
		t.Helper()
		for {
			select {
			case ev := <-events:
				if match(ev) {
					return
				}
			case <-ctx.Done():
				t.Fatal("timed out waiting for Bob's event")
			}
		}
	}
	waitEvent(func(ev any) bool {
		m, ok := ev.(client.Message)
		return ok && m.UserName == "Alice" && m.Content == "hello from the command line"
	})
	stdin.Close() // the end of input leaves the room and exits
	waitEvent(func(ev any) bool { u, ok := ev.(client.UserLeft); return ok && u.UserName == "Alice" })
	done := make(chan error, 1)
	go func() { done <- cli.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("throng client: %v", err)
		}
	case <-time.After(10 * time.Second):
		cli.Process.Kill()
		t.Fatal("throng client did not exit at the end of input")
	}
}

// pageGet fetches url over a connection it does not keep, so no transport
// goroutine outlives the test.
func pageGet(t *testing.T, url string) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}
