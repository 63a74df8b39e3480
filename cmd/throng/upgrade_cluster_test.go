//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/internal/natstest"
)

// TestServeClusterUpgrade hands a cluster node over (SIGUSR2) while its room
// chats across nodes: two members on the upgraded node and two on the other
// each send numbered messages all through it. Every member reads every
// message exactly once and in each sender's order, no connection closes,
// nobody reads a user-left or user-joined, the counts are the same on both
// nodes before and after, the node keeps its id (a random one: --node-id is
// not given) and the other node sees no member leave. Before it, an upgrade
// whose new process refuses the node's state, after the old one paused, is
// rolled back just as unnoticed. Without JetStream the
// messages cross the broker live; with it they go through the history
// stream, and their offsets run on without a gap or a repeat in one epoch.
func TestServeClusterUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	for _, js := range []bool{false, true} {
		t.Run(fmt.Sprintf("jetstream=%v", js), func(t *testing.T) { clusterUpgrade(t, buildThrong(t), js) })
	}
}

func clusterUpgrade(t *testing.T, bin string, js bool) {
	_, natsURL := natstest.Start(t, 0, js)
	history := "0"
	if js {
		history = "1000"
	}
	start := func(id ...string) (*throngProc, string, string) {
		args := []string{"serve", "--auth=off", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--api-key", "k",
			"--cluster-heartbeat", "100ms", "--cluster-dead-after", "2s", "--stats-interval", "0",
			"--rate", "-1", "--user-rate", "-1", "--history-size", history}
		args = append(args, id...)
		p := startThrong(t, bin, cleanEnv("THRONG_NATS="+natsURL), args...)
		ws, h := p.servingAddrs(t)
		return p, ws, h
	}
	pa, wsA, httpA := start() // a random node id
	pb, wsB, httpB := start("--node-id", "beta")
	idRx := regexp.MustCompile(`msg="cluster: started" node=(\S+)`)
	idOf := func(p *throngProc) string {
		m := idRx.FindStringSubmatch(p.stderr())
		if m == nil {
			t.Fatal("no cluster: started line")
		}
		return m[1]
	}
	alphaID := idOf(pa)
	if js {
		pa.waitLine(t, `history stream ready`)
	}

	get := func(addr, path string, v any) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		req.Header.Set("Authorization", "Bearer k")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %q: %v", path, b, err)
		}
	}
	metric := func(addr, name string) string {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for line := range strings.SplitSeq(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return v
			}
		}
		return ""
	}
	waitMetric := func(addr, name, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for metric(addr, name) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s = %q, want %q", name, metric(addr, name), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	roomCount := func(addr string) float64 {
		var st map[string]any
		get(addr, "/api/rooms/lobby", &st)
		c, _ := st["count"].(float64)
		return c
	}
	waitMetric(httpB, "throng_cluster_peers", "1")

	// Four members, two on each node, each with a reader that records what
	// it reads.
	type member struct {
		name string
		ws   *websocket.Conn
		mu   sync.Mutex
		msgs []map[string]any
		err  error
		done chan struct{}
	}
	var members []*member
	join := func(addr, name string) *member {
		c := dialWS(t, "ws://"+addr+"/ws")
		if typ, _ := readMsgType(t, c); typ != "connected" {
			t.Fatalf("%s: first message %q", name, typ)
		}
		if err := c.WriteJSON(map[string]string{"type": "join", "roomId": "lobby", "userName": name}); err != nil {
			t.Fatal(err)
		}
		for {
			typ, _ := readMsgType(t, c)
			if typ == "joined" {
				break
			}
		}
		c.SetReadDeadline(time.Time{})
		m := &member{name: name, ws: c, done: make(chan struct{})}
		members = append(members, m)
		return m
	}
	a1, a2 := join(wsA, "a1"), join(wsA, "a2")
	b1, b2 := join(wsB, "b1"), join(wsB, "b2")
	for _, addr := range []string{httpA, httpB} {
		deadline := time.Now().Add(10 * time.Second)
		for roomCount(addr) != 4 {
			if time.Now().After(deadline) {
				t.Fatalf("room count on %s = %v, want 4", addr, roomCount(addr))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitMetric(httpB, `throng_cluster_peer_members{peer="`+alphaID+`"}`, "2")
	// The joins' user-joined are behind us: from here on nobody may read one.
	time.Sleep(300 * time.Millisecond)
	for _, m := range members {
		go func() {
			defer close(m.done)
			for {
				_, b, err := m.ws.ReadMessage()
				if err != nil {
					m.mu.Lock()
					m.err = err
					m.mu.Unlock()
					return
				}
				var v map[string]any
				json.Unmarshal(b, &v)
				m.mu.Lock()
				m.msgs = append(m.msgs, v)
				m.mu.Unlock()
			}
		}()
	}
	// Drop what the joins left (user-joined of the later joiners), once read.
	time.Sleep(200 * time.Millisecond)
	for _, m := range members {
		m.mu.Lock()
		m.msgs = nil
		m.mu.Unlock()
	}

	// Every sender says its next number every few milliseconds until told to
	// stop, then "end".
	senders := []*member{a1, a2, b1, b2}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	sent := make([]int, len(senders))
	for i, s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					s.ws.WriteJSON(map[string]string{"type": "chat", "roomId": "lobby", "content": s.name + " end"})
					sent[i] = n
					return
				case <-time.After(3 * time.Millisecond):
				}
				if err := s.ws.WriteJSON(map[string]string{"type": "chat", "roomId": "lobby", "content": s.name + " " + strconv.Itoa(n)}); err != nil {
					t.Errorf("%s: write: %v", s.name, err)
					sent[i] = n
					return
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)

	// First a new process that refuses the cluster's state, once the old
	// one has paused (history in JetStream on one side and off on the
	// other): the old process resumes, and its members notice nothing.
	pid := pa.cmd.Process.Pid
	real := bin + ".real"
	if err := os.Rename(bin, real); err != nil {
		t.Fatal(err)
	}
	flip := "1000"
	if js {
		flip = "0"
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexec "+real+" \"$@\" --history-size "+flip+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pid, syscall.SIGUSR2)
	pa.waitLine(t, `cluster: resumed after a failed handoff`)
	m := pa.waitLine(t, `upgrade: failed, keeping every connection" err="(.*)`)
	if !strings.Contains(m[1], "history in JetStream is") {
		t.Errorf("the upgrade failed with %s, want the new process's refusal of the cluster's state", m[1])
	}
	if err := os.Rename(real, bin); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)

	syscall.Kill(pid, syscall.SIGUSR2)
	m = pa.waitLine(t, `upgrade: handed over" new_pid=(\d+) conns=(\d+)`)
	newPID, _ := strconv.Atoi(m[1])
	t.Cleanup(func() { stopPID(t, newPID) })
	if m[2] != "2" {
		t.Errorf("handed over %s connections, want 2", m[2])
	}
	pa.waitLine(t, `upgrade: the new process serves every connection; exiting`)
	if !waitGone(pid, 15*time.Second) {
		t.Fatal("the old process did not exit")
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	// Every member reads every sender's "end".
	deadline := time.Now().Add(15 * time.Second)
	for _, m := range members {
		for {
			m.mu.Lock()
			ends := 0
			for _, v := range m.msgs {
				if c, _ := v["content"].(string); strings.HasSuffix(c, " end") {
					ends++
				}
			}
			err := m.err
			m.mu.Unlock()
			if err != nil {
				t.Fatalf("%s: connection ended: %v", m.name, err)
			}
			if ends == len(senders) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s read %d of the %d ends", m.name, ends, len(senders))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Exactly once, in each sender's order; no presence; offsets (with
	// JetStream) one after another in one epoch.
	for _, m := range members {
		m.mu.Lock()
		next := map[string]int{}
		var epoch string
		var offset float64
		for _, v := range m.msgs {
			typ, _ := v["type"].(string)
			if typ != "message" {
				t.Errorf("%s read a %s: %v", m.name, typ, v)
				continue
			}
			c, _ := v["content"].(string)
			who, num, _ := strings.Cut(c, " ")
			if js {
				e, _ := v["epoch"].(string)
				o, _ := v["offset"].(float64)
				if epoch != "" && (e != epoch || o != offset+1) {
					t.Errorf("%s: %q at offset %v of epoch %q after %v of %q", m.name, c, o, e, offset, epoch)
				}
				epoch, offset = e, o
			}
			if num == "end" {
				next[who] = -1
				continue
			}
			n, _ := strconv.Atoi(num)
			if n != next[who] {
				t.Errorf("%s read %s's %d, want %d (lost, repeated or out of order)", m.name, who, n, next[who])
			}
			next[who] = n + 1
		}
		m.mu.Unlock()
	}
	a1.mu.Lock()
	t.Logf("sent %v; every member read %d messages; handoff: %s", sent, len(a1.msgs), regexp.MustCompile(`frozen=\S+`).FindString(pa.stderr()))
	a1.mu.Unlock()
	for i, s := range senders {
		if sent[i] < 50 {
			t.Errorf("%s sent only %d messages", s.name, sent[i])
		}
	}

	// The same counts on both nodes, the same node id, no member left.
	if c := roomCount(httpA); c != 4 {
		t.Errorf("room count on the upgraded node = %v, want 4", c)
	}
	if c := roomCount(httpB); c != 4 {
		t.Errorf("room count on the other node = %v, want 4", c)
	}
	if got := metric(httpB, `throng_cluster_peer_members{peer="`+alphaID+`"}`); got != "2" {
		t.Errorf("the other node sees %q members on %s, want 2", got, alphaID)
	}
	// The state stream's numbering went on: the other node takes the new
	// process's messages as the next ones (not as stragglers it had), with
	// no gap.
	recv := func() int {
		v, _ := strconv.Atoi(metric(httpB, `throng_cluster_peer_messages_total{peer="`+alphaID+`"}`))
		return v
	}
	r0 := recv()
	for deadline := time.Now().Add(10 * time.Second); recv() <= r0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the other node takes no state message of the new process")
		}
	}
	if got := metric(httpB, `throng_cluster_peer_lost_total{peer="`+alphaID+`"}`); got != "0" {
		t.Errorf("the other node counts %q state messages of %s lost", got, alphaID)
	}
	if got := metric(httpB, "throng_cluster_peers"); got != "1" {
		t.Errorf("the other node sees %s peers", got)
	}
	var dash struct {
		NodeID string `json:"node"`
	}
	get(httpA, "/api/dashboard", &dash)
	if dash.NodeID != alphaID {
		t.Errorf("the new process is node %q, want %q", dash.NodeID, alphaID)
	}
	for _, bad := range []string{"node left", "node joined", "node silent", "another node uses this node's id"} {
		if strings.Count(pb.stderr(), bad) > 0 && !(bad == "node joined" && strings.Count(pb.stderr(), bad) == 1) {
			t.Errorf("the other node logged %q:\n%s", bad, pb.stderr())
		}
	}
	if strings.Contains(pa.stderr()+pb.stderr(), "DATA RACE") {
		t.Error("a process reported a data race (built with GOFLAGS=-race)")
	}
	if v := metric(httpB, "throng_cluster_dead_members_left_total"); v != "0" && v != "" {
		t.Errorf("the other node wrote %s user-left for a dropped node", v)
	}
}
