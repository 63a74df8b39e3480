//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestServeUpgrade drives `throng serve` as an operator would: a SIGUSR2
// whose new binary exits at once is rolled back, then one with a real binary
// hands every connection over, a second SIGUSR2 meanwhile is refused, and
// the clients (gorilla) see no close and lose no message through either.
func TestServeUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildThrong(t)
	p := startThrong(t, bin, cleanEnv(), "serve", "--auth=off", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--rate", "-1", "--user-rate", "-1")
	wsAddr, _ := p.servingAddrs(t)
	pid := p.cmd.Process.Pid

	const n = 3
	clients := make([]*websocket.Conn, n)
	for i := range clients {
		c := dialWS(t, "ws://"+wsAddr+"/ws")
		readMsgType(t, c) // connected
		c.WriteJSON(map[string]any{"type": "join", "roomId": "lobby", "userName": fmt.Sprint("u", i)})
		for typ := ""; typ != "joined"; typ, _ = readMsgType(t, c) {
		}
		clients[i] = c
	}
	// Drain the user-joined of later joiners.
	for i, c := range clients {
		for range n - 1 - i {
			if typ, _ := readMsgType(t, c); typ != "user-joined" {
				t.Fatalf("client %d read %s", i, typ)
			}
		}
	}
	seq := 0
	// History is on (the default): the room's epoch and offsets go on
	// across both upgrades, without a gap or a repeat.
	var epoch string
	// chat has client 0 say the next number and checks every client reads
	// it next: nothing lost, repeated or reordered, no close.
	chat := func() {
		t.Helper()
		if err := clients[0].WriteJSON(map[string]any{"type": "chat", "roomId": "lobby", "content": strconv.Itoa(seq)}); err != nil {
			t.Fatal(err)
		}
		for i, c := range clients {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, b, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
			var m struct {
				Type, Content, Epoch string
				Offset               int
			}
			json.Unmarshal(b, &m)
			if m.Type != "message" || m.Content != strconv.Itoa(seq) {
				t.Fatalf("client %d read %s, want message %d", i, b, seq)
			}
			if epoch == "" {
				epoch = m.Epoch
			}
			if m.Epoch != epoch || m.Offset != seq+1 {
				t.Fatalf("client %d read %s, want offset %d of epoch %s", i, b, seq+1, epoch)
			}
		}
		seq++
	}
	chat()

	// The binary on disk fails at once: the old process takes everything back.
	real := bin + ".real"
	if err := os.Rename(bin, real); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pid, syscall.SIGUSR2)
	p.waitLine(t, `upgrade: failed, keeping every connection`)
	chat()

	// A real binary: every connection moves. A second SIGUSR2 meanwhile is
	// refused.
	if err := os.Rename(real, bin); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pid, syscall.SIGUSR2)
	time.Sleep(20 * time.Millisecond)
	syscall.Kill(pid, syscall.SIGUSR2)
	m := p.waitLine(t, `upgrade: handed over" new_pid=(\d+) conns=(\d+)`)
	newPID, _ := strconv.Atoi(m[1])
	t.Cleanup(func() { stopPID(t, newPID) })
	if m[2] != strconv.Itoa(n) {
		t.Errorf("handed over %s connections, want %d", m[2], n)
	}
	// The old process exits (its stderr stays open in the new one, so wait
	// for the process, not the pipe).
	p.waitLine(t, `upgrade: the new process serves every connection; exiting`)
	if !waitGone(pid, 15*time.Second) {
		t.Fatal("the old process did not exit")
	}
	if !strings.Contains(p.stderr(), "upgrade: refused, another upgrade is in progress") {
		t.Error("the second SIGUSR2 was not refused")
	}
	chat()
	chat()
	// The room is whole on the new process, which accepts on the same address.
	late := dialWS(t, "ws://"+wsAddr+"/ws")
	readMsgType(t, late)
	late.WriteJSON(map[string]any{"type": "join", "roomId": "lobby", "userName": "late"})
	var joined struct {
		Type      string
		UserCount int
	}
	late.ReadJSON(&joined)
	if joined.Type != "joined" || joined.UserCount != n+1 {
		t.Fatalf("late join: %+v", joined)
	}
	// A client that recovers from the first message's offset gets every
	// later one, from both sides of the upgrades.
	rec := dialWS(t, "ws://"+wsAddr+"/ws")
	readMsgType(t, rec)
	rec.WriteJSON(map[string]any{"type": "join", "roomId": "lobby", "userName": "rec",
		"since": map[string]any{"offset": 1, "epoch": epoch}})
	for k := 2; k <= seq; k++ {
		var m struct {
			Type, Content string
			Offset        int
		}
		if err := rec.ReadJSON(&m); err != nil || m.Type != "message" || m.Offset != k || m.Content != strconv.Itoa(k-1) {
			t.Fatalf("recovery read %+v, %v; want the message at offset %d", m, err, k)
		}
	}
	var rj struct {
		Type      string
		Recovered bool
		Offset    int
		Epoch     string
	}
	if err := rec.ReadJSON(&rj); err != nil || rj.Type != "joined" || !rj.Recovered || rj.Offset != seq || rj.Epoch != epoch {
		t.Fatalf("recovery joined %+v, %v; want recovered at offset %d of epoch %s", rj, err, seq, epoch)
	}
}

// stopPID stops a process the test did not start (the new throng, whose
// parent has exited) and waits until it is gone.
func stopPID(t *testing.T, pid int) {
	syscall.Kill(pid, syscall.SIGTERM)
	if !waitGone(pid, 15*time.Second) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("new process %d did not stop on SIGTERM", pid)
	}
}

// waitGone waits until pid has exited (gone, or a zombie).
func waitGone(pid int, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		st, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil || strings.Contains(string(st), ") Z ") {
			return true
		}
	}
	return false
}
