package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/internal/natstest"
)

// TestServeCluster runs two `throng serve --nats` processes on an embedded
// nats-server: a message crosses from one to the other, /metrics has the
// cluster's figures, and a node stopped with SIGTERM leaves the other's counts
// at once, long before --cluster-dead-after.
func TestServeCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	_, natsURL := natstest.Start(t, 0, false)

	bin := buildThrong(t)
	start := func(id string) (*throngProc, string, string) {
		p := startThrong(t, bin, cleanEnv("THRONG_NATS="+natsURL), "serve", "--auth=off", "--node-id", id,
			"--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--api-key", "k",
			"--cluster-heartbeat", "100ms", "--cluster-dead-after", "1m", "--stats-interval", "0")
		ws, h := p.servingAddrs(t)
		return p, ws, h
	}
	pa, wsA, httpA := start("alpha")
	pb, wsB, _ := start("beta")

	join := func(addr string) *websocket.Conn {
		c := dialWS(t, "ws://"+addr+"/ws")
		if typ, _ := readMsgType(t, c); typ != "connected" {
			t.Fatalf("first message %q", typ)
		}
		if err := c.WriteJSON(map[string]string{"type": "join", "roomId": "lobby", "userName": addr}); err != nil {
			t.Fatal(err)
		}
		if typ, _ := readMsgType(t, c); typ != "joined" {
			t.Fatalf("join answered %q", typ)
		}
		return c
	}
	ca := join(wsA)
	metric := func(name string) string {
		resp, err := http.Get("http://" + httpA + "/metrics")
		if err != nil {
			t.Fatal(err)
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
	waitMetric := func(name, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for metric(name) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s = %q, want %q", name, metric(name), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitMetric("throng_cluster_peers", "1")
	waitMetric(`throng_cluster_peer_members{peer="beta"}`, "0")
	cb := join(wsB)
	// beta's join reaches alpha's member as user-joined, with both counted.
	var uj struct {
		Type      string `json:"type"`
		UserCount int    `json:"userCount"`
	}
	if err := ca.ReadJSON(&uj); err != nil || uj.Type != "user-joined" || uj.UserCount != 2 {
		t.Fatalf("alpha's member read %+v, %v; want user-joined with 2", uj, err)
	}
	if err := cb.WriteJSON(map[string]string{"type": "chat", "roomId": "lobby", "content": "across"}); err != nil {
		t.Fatal(err)
	}
	var m struct{ Type, Content string }
	if err := ca.ReadJSON(&m); err != nil || m.Type != "message" || m.Content != "across" {
		t.Fatalf("alpha's member read %+v, %v; want beta's message", m, err)
	}
	waitMetric("throng_cluster_connected", "1")
	if v, _ := strconv.Atoi(metric("throng_cluster_received_total")); v < 1 {
		t.Fatalf("throng_cluster_received_total = %q", metric("throng_cluster_received_total"))
	}

	// beta drains, says goodbye, and alpha drops it at once.
	pb.cmd.Process.Signal(syscall.SIGTERM)
	if err := pb.wait(t); err != nil {
		t.Fatalf("beta exited with %v", err)
	}
	waitMetric("throng_cluster_peers", "0")
	var left struct {
		Type      string `json:"type"`
		UserCount int    `json:"userCount"`
	}
	if err := ca.ReadJSON(&left); err != nil || left.Type != "user-left" || left.UserCount != 1 {
		t.Fatalf("alpha's member read %+v, %v; want beta's user-left with 1", left, err)
	}
	var stats map[string]any
	req, _ := http.NewRequest("GET", "http://"+httpA+"/api/rooms/lobby", nil)
	req.Header.Set("Authorization", "Bearer k")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		json.NewDecoder(resp.Body).Decode(&stats)
		resp.Body.Close()
	}
	if stats["count"] != float64(1) {
		t.Fatalf("alpha's room after beta left: %v", stats)
	}
	pa.cmd.Process.Signal(syscall.SIGTERM)
	if err := pa.wait(t); err != nil {
		t.Fatalf("alpha exited with %v", err)
	}
}
