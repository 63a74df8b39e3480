//go:build linux

package main

import (
	"encoding/json"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/auth"
)

// TestServeUpgradeLimits upgrades `throng serve` while a user is at its
// limits: it has spent its --user-burst, and holds its --max-conns-per-user.
// After the upgrade a second connection of the user is still refused 429,
// and once the first has closed, a new one's first message gets the same
// rate_limited error as the user's last before the upgrade, not a fresh
// burst.
func TestServeUpgradeLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const secret = "the upgrade limits test's secret"
	bin := buildThrong(t)
	p := startThrong(t, bin, cleanEnv(), "serve", "--jwt-secret", secret, "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--rate", "1000", "--burst", "1000", "--user-rate", "0.0001", "--user-burst", "3", "--max-conns-per-user", "1")
	wsAddr, _ := p.servingAddrs(t)
	pid := p.cmd.Process.Pid
	tok, err := auth.Mint([]byte(secret), "", "alice", time.Hour, "", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	url := "ws://" + wsAddr + "/ws?token=" + tok
	dial := func() (*websocket.Conn, int) {
		d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
		c, resp, err := d.Dial(url, nil)
		if err != nil {
			if resp == nil {
				t.Fatal(err)
			}
			return nil, resp.StatusCode
		}
		if typ, _ := readMsgType(t, c); typ != "connected" {
			t.Fatalf("greeting %s", typ)
		}
		return c, http.StatusSwitchingProtocols
	}
	// send sends a message and returns the answer.
	send := func(c *websocket.Conn, m map[string]any) map[string]any {
		t.Helper()
		if err := c.WriteJSON(m); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, b, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		json.Unmarshal(b, &got)
		return got
	}

	c1, _ := dial()
	if m := send(c1, map[string]any{"type": "join", "roomId": "r", "userName": "alice"}); m["type"] != "joined" {
		t.Fatalf("join: %v", m)
	}
	for i := range 2 {
		if m := send(c1, map[string]any{"type": "chat", "roomId": "r", "content": strconv.Itoa(i)}); m["type"] != "message" {
			t.Fatalf("chat %d: %v", i, m)
		}
	}
	before := send(c1, map[string]any{"type": "chat", "roomId": "r", "content": "over"})
	if before["type"] != "error" || before["code"] != "rate_limited" {
		t.Fatalf("alice's fourth message: %v, want rate_limited", before)
	}
	if _, code := dial(); code != http.StatusTooManyRequests {
		t.Fatalf("alice's second connection: %d, want 429", code)
	}

	syscall.Kill(pid, syscall.SIGUSR2)
	m := p.waitLine(t, `upgrade: handed over" new_pid=(\d+) conns=(\d+)`)
	newPID, _ := strconv.Atoi(m[1])
	t.Cleanup(func() { stopPID(t, newPID) })
	p.waitLine(t, `upgrade: the new process serves every connection; exiting`)
	if !waitGone(pid, 15*time.Second) {
		t.Fatal("the old process did not exit")
	}

	if _, code := dial(); code != http.StatusTooManyRequests {
		t.Fatalf("alice's second connection after the upgrade: %d, want 429", code)
	}
	c1.Close()
	var c2 *websocket.Conn
	for deadline := time.Now().Add(10 * time.Second); c2 == nil; {
		// Until the new process has counted the close, it refuses.
		var code int
		if c2, code = dial(); c2 == nil && (code != http.StatusTooManyRequests || time.Now().After(deadline)) {
			t.Fatalf("alice's connection after closing the first: %d", code)
		}
		if c2 == nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
	defer c2.Close()
	after := send(c2, map[string]any{"type": "join", "roomId": "r", "userName": "alice"})
	if after["type"] != "error" || after["code"] != before["code"] || after["retryAfter"] != before["retryAfter"] {
		t.Fatalf("alice's first message after the upgrade: %v, before it %v", after, before)
	}
}
