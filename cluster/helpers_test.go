package cluster_test

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/cluster"
	"github.com/throng-ws/throng/internal/natstest"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var testSecret = []byte("0123456789abcdef0123456789abcdef")

const apiKey = "test-api-key"

// broker is an embedded nats-server on loopback.
type broker struct {
	t    *testing.T
	srv  *natsserver.Server
	port int
}

// startBroker runs a nats-server on 127.0.0.1, on port (0: a random one), and
// shuts it down when the test ends.
func startBroker(t *testing.T, port int) *broker {
	t.Helper()
	return startBrokerOpts(t, port, false)
}

// startBrokerJS is startBroker with JetStream on, storing in a temporary
// directory, as `nats-server -js`.
func startBrokerJS(t *testing.T) *broker {
	t.Helper()
	return startBrokerOpts(t, 0, true)
}

func startBrokerOpts(t *testing.T, port int, js bool) *broker {
	t.Helper()
	s, _ := natstest.Start(t, port, js)
	return &broker{t: t, srv: s, port: s.Addr().(*net.TCPAddr).Port}
}

func (b *broker) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(b.port) }

func (b *broker) stop() {
	b.srv.Shutdown()
	b.srv.WaitForShutdown()
}

// node is one in-process throng node: server, room table, chat, cluster node,
// and the HTTP API on httptest.
type node struct {
	t     *testing.T
	name  string
	srv   *server.Server
	rooms *room.Table
	chat  *chat.Handler
	cl    *cluster.Node
	addr  string
	api   *httptest.Server
	once  sync.Once
}

type nodeOptions struct {
	heartbeat, deadAfter time.Duration
	maxConnsPerUser      int
	auth                 bool
	history              bool // rooms' history in JetStream
}

// startNode starts a node of the cluster on brokerURL, listening on
// 127.0.0.1:0. It is killed (without a drain) when the test ends unless the
// test stops it first.
func startNode(t *testing.T, name, brokerURL string, o nodeOptions) *node {
	t.Helper()
	n := &node{t: t, name: name}
	cl, err := cluster.New(cluster.Options{
		URLs:          []string{brokerURL},
		NodeID:        name,
		Heartbeat:     cmp.Or(o.heartbeat, 100*time.Millisecond),
		DeadAfter:     cmp.Or(o.deadAfter, 2*time.Second),
		ReconnectWait: 50 * time.Millisecond,
		Conns:         func() int { return n.srv.Conns() },
		History:       hist(o.history),
	})
	if err != nil {
		t.Fatalf("cluster.New: %v", err)
	}
	so := server.Options{Loops: 2, TickInterval: 20 * time.Millisecond, MaxConnsPerUser: o.maxConnsPerUser}
	if o.maxConnsPerUser > 0 {
		so.UserConns = cl
	}
	var v *auth.Verifier
	if o.auth {
		if v, err = auth.New(auth.Options{Secret: testSecret}); err != nil {
			t.Fatal(err)
		}
		so.Auth = v
	}
	srv, err := server.New(so)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	n.srv, n.cl = srv, cl
	n.rooms = room.New(srv.Loops(), room.Options{})
	n.chat = &chat.Handler{Rooms: n.rooms, Auth: v, RateLimit: server.RateLimit{Rate: -1}, Cluster: cl}
	if err := srv.Handle("/ws", n.chat); err != nil {
		t.Fatal(err)
	}
	mux := srv.HTTPHandler()
	api := &chat.API{Key: apiKey, Chat: n.chat, Rooms: n.rooms, Server: srv}
	if err := api.Register(mux); err != nil {
		t.Fatal(err)
	}
	cl.HandleActions(api.RunRemote)
	if err := cl.Start(n.rooms, n.chat); err != nil {
		srv.Close()
		t.Fatalf("Start: %v", err)
	}
	addr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		cl.Close()
		srv.Close()
		t.Fatal(err)
	}
	n.addr = addr.String()
	n.api = httptest.NewServer(mux)
	t.Cleanup(n.kill)
	return n
}

func hist(on bool) *cluster.HistoryOptions {
	if !on {
		return nil
	}
	return &cluster.HistoryOptions{Size: 1000}
}

// kill stops the node as a crash would: the cluster node goes first, without a
// goodbye, so the others hear nothing of its members leaving; then its
// connections drop.
func (n *node) kill() {
	n.once.Do(func() {
		n.cl.Close()
		n.srv.Close()
		n.api.Close()
	})
}

// url is the node's /ws URL, with a token for user when the node has auth.
func (n *node) url(user string) string {
	u := "ws://" + n.addr + "/ws"
	if user != "" {
		tok, err := auth.Mint(testSecret, "", user, time.Hour, user, time.Time{})
		if err != nil {
			n.t.Fatal(err)
		}
		u += "?token=" + url.QueryEscape(tok)
	}
	return u
}

// call sends a request to the node's API and decodes the JSON answer into v.
func (n *node) call(method, path, body string, v any) int {
	n.t.Helper()
	req, _ := http.NewRequest(method, n.api.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			n.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
	return resp.StatusCode
}

// get calls the node's API and decodes the JSON answer into v.
func (n *node) get(path string, v any) int {
	n.t.Helper()
	req, _ := http.NewRequest("GET", n.api.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, v); err != nil {
			n.t.Fatalf("GET %s: %v in %s", path, err, body)
		}
	}
	return resp.StatusCode
}

type roomMembers struct {
	ID      string `json:"id"`
	Count   int    `json:"count"`
	Partial bool   `json:"partial"`
	Members []struct {
		UserID string `json:"userId"`
		Name   string `json:"userName"`
	} `json:"members"`
}

type roomList struct {
	Rooms []room.Info `json:"rooms"`
}

// msg is a message a client received.
type msg struct {
	Type      string `json:"type"`
	RoomID    string `json:"roomId"`
	UserID    string `json:"userId"`
	UserName  string `json:"userName"`
	UserCount int    `json:"userCount"`
	Content   string `json:"content"`
	Code      string `json:"code"`
	Reason    string `json:"reason"`
	Offset    uint64 `json:"offset"`
	Epoch     string `json:"epoch"`
	Recovered *bool  `json:"recovered"`
	Replayed  int    `json:"replayed"`
}

// client is a gorilla/websocket client that records every message it gets.
type client struct {
	t    *testing.T
	name string
	conn *websocket.Conn
	id   string // its user id, from "connected"

	mu   sync.Mutex
	msgs []msg
	err  error // what ended the read loop; guarded by mu
	done chan struct{}
}

func dial(t *testing.T, u, name string) *client {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("%s: dial: %v (status %d)", name, err, status)
	}
	c := &client{t: t, name: name, conn: conn, done: make(chan struct{})}
	go c.read()
	t.Cleanup(c.close)
	c.waitFor("connected", func(ms []msg) bool { return count(ms, "connected") == 1 })
	c.id = c.all()[0].UserID
	return c
}

// dialStatus tries to connect and returns the handshake's HTTP status.
func dialStatus(t *testing.T, u string) int {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(u, nil)
	if err == nil {
		conn.Close()
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Fatalf("dial: %v", err)
	}
	return resp.StatusCode
}

func (c *client) read() {
	defer close(c.done)
	for {
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		var m msg
		if err := json.Unmarshal(data, &m); err != nil {
			c.t.Errorf("%s: bad JSON %q", c.name, data)
			return
		}
		c.mu.Lock()
		c.msgs = append(c.msgs, m)
		c.mu.Unlock()
	}
}

func (c *client) close() {
	c.conn.Close()
	<-c.done
}

func (c *client) all() []msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]msg(nil), c.msgs...)
}

func (c *client) send(v any) {
	c.t.Helper()
	if err := c.conn.WriteJSON(v); err != nil {
		c.t.Fatalf("%s: write: %v", c.name, err)
	}
}

func (c *client) join(roomID string) msg {
	c.t.Helper()
	n := count(c.all(), "joined")
	c.send(map[string]string{"type": "join", "roomId": roomID, "userName": c.name})
	c.waitFor("joined", func(ms []msg) bool { return count(ms, "joined") > n })
	return last(c.all(), "joined")
}

func (c *client) chat(roomID, content string) {
	c.send(map[string]string{"type": "chat", "roomId": roomID, "content": content})
}

// waitFor polls the client's messages until cond holds, or fails the test.
func (c *client) waitFor(what string, cond func([]msg) bool) {
	c.t.Helper()
	eventually(c.t, c.name+": "+what, 10*time.Second, func() bool { return cond(c.all()) })
}

func count(ms []msg, typ string) int {
	n := 0
	for _, m := range ms {
		if m.Type == typ {
			n++
		}
	}
	return n
}

func last(ms []msg, typ string) msg {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].Type == typ {
			return ms[i]
		}
	}
	return msg{}
}

func contents(ms []msg) map[string]int {
	out := map[string]int{}
	for _, m := range ms {
		if m.Type == "message" {
			out[m.Content]++
		}
	}
	return out
}

// eventually polls cond every few milliseconds until it holds, or fails the
// test after timeout.
func eventually(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitCount waits until every node counts want members in roomID: its own and
// the live others' as announced.
func waitCount(t *testing.T, roomID string, want int, nodes ...*node) {
	t.Helper()
	for _, n := range nodes {
		eventually(t, fmt.Sprintf("%s to count %d in %q", n.name, want, roomID), 10*time.Second, func() bool {
			return n.rooms.Count(roomID)+n.cl.Remote(roomID) == want
		})
	}
}
