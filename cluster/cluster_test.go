package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/throng-ws/throng/cluster"
)

// A room id with every character a NATS subject gives meaning to.
const oddRoom = "lobby.*> main hall"

// TestCrossNodeExactlyOnce spreads a room's members over three nodes and has
// every member send: every member, on the origin node or another, gets every
// message exactly once, and so does an API publish.
//
// Duplicates would show by the barrier: after everyone has every message, each
// node's first client sends a barrier. A barrier reaches the other nodes
// through the broker only, after anything the broker had already taken, and a
// node's local deliveries are synchronous; so once a client holds the barriers
// of both other nodes, any duplicate of an earlier message would already be in
// its log.
func TestCrossNodeExactlyOnce(t *testing.T) {
	b := startBroker(t, 0)
	nodes := []*node{startNode(t, "n0", b.URL(), nodeOptions{}), startNode(t, "n1", b.URL(), nodeOptions{}), startNode(t, "n2", b.URL(), nodeOptions{})}
	var clients []*client
	for i, n := range nodes {
		for j := range 2 {
			c := dial(t, n.url(""), fmt.Sprintf("c%d%d", i, j))
			c.join(oddRoom)
			clients = append(clients, c)
		}
	}
	waitCount(t, oddRoom, len(clients), nodes...)

	const perClient = 5
	want := map[string]int{}
	for _, c := range clients {
		for k := range perClient {
			content := fmt.Sprintf("%s-%d", c.name, k)
			c.chat(oddRoom, content)
			want[content] = 1
		}
	}
	// An API publish on a node with members goes out once, too.
	req, _ := http.NewRequest("POST", nodes[1].api.URL+"/api/rooms/"+strings.ReplaceAll(oddRoom, " ", "%20")+"/messages",
		bytes.NewReader([]byte(`{"content":"from the api"}`)))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var pub struct {
		Recipients int  `json:"recipients"`
		Local      int  `json:"local"`
		Remote     int  `json:"remote"`
		Published  bool `json:"published"`
	}
	decodeJSON(t, resp, &pub)
	if pub.Recipients != 6 || pub.Local != 2 || pub.Remote != 4 || !pub.Published {
		t.Fatalf("API publish answered %+v, want 6 recipients, 2 local, 4 remote, published", pub)
	}
	want["from the api"] = 1

	for _, c := range clients {
		c.waitFor("every message", func(ms []msg) bool { return len(contents(ms)) == len(want) })
	}
	for i, n := range nodes {
		clients[2*i].chat(oddRoom, "barrier-"+n.name)
	}
	for i, c := range clients {
		node := i / 2
		c.waitFor("the other nodes' barriers", func(ms []msg) bool {
			got := contents(ms)
			for j, n := range nodes {
				if j != node && got["barrier-"+n.name] == 0 {
					return false
				}
			}
			return true
		})
		got := contents(c.all())
		for content := range want {
			if got[content] != 1 {
				t.Errorf("%s got %q %d times, want once", c.name, content, got[content])
			}
		}
		for content, k := range got {
			if k != 1 {
				t.Errorf("%s got %q %d times", c.name, content, k)
			}
		}
	}
	for _, n := range nodes {
		if s := n.cl.Stats(); s.Published == 0 || s.Received == 0 || sum(s.Lost) != 0 || s.Subscriptions != 1 {
			t.Errorf("%s: stats %+v", n.name, s)
		}
	}
}

func sum(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

func decodeJSON(t *testing.T, resp *http.Response, v any) {
	t.Helper()
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("status %d: %s", resp.StatusCode, buf.String())
	}
	if err := json.Unmarshal(buf.Bytes(), v); err != nil {
		t.Fatalf("%v in %s", err, buf.String())
	}
}

// TestCountsAcrossNodes: joined, user-joined and user-left carry the room's
// count over every node, and so do the API's room and list.
func TestCountsAcrossNodes(t *testing.T) {
	b := startBroker(t, 0)
	a, bn, c := startNode(t, "a", b.URL(), nodeOptions{}), startNode(t, "b", b.URL(), nodeOptions{}), startNode(t, "c", b.URL(), nodeOptions{})
	nodes := []*node{a, bn, c}

	ca := dial(t, a.url(""), "alice")
	if j := ca.join(oddRoom); j.UserCount != 1 {
		t.Fatalf("first join: userCount %d, want 1", j.UserCount)
	}
	waitCount(t, oddRoom, 1, nodes...)

	cb := dial(t, bn.url(""), "bob")
	if j := cb.join(oddRoom); j.UserCount != 2 {
		t.Fatalf("join on b: userCount %d, want 2", j.UserCount)
	}
	ca.waitFor("bob's user-joined", func(ms []msg) bool { return count(ms, "user-joined") == 1 })
	if m := last(ca.all(), "user-joined"); m.UserCount != 2 || m.UserName != "bob" || m.UserID != cb.id || m.RoomID != oddRoom {
		t.Fatalf("alice got %+v, want bob's user-joined with 2", m)
	}
	waitCount(t, oddRoom, 2, nodes...)

	cc := dial(t, c.url(""), "carol")
	if j := cc.join(oddRoom); j.UserCount != 3 {
		t.Fatalf("join on c: userCount %d, want 3", j.UserCount)
	}
	for _, cl := range []*client{ca, cb} {
		cl.waitFor("carol's user-joined", func(ms []msg) bool {
			m := last(ms, "user-joined")
			return m.UserName == "carol" && m.UserCount == 3
		})
	}
	if n := count(cc.all(), "user-joined"); n != 0 {
		t.Fatalf("carol got %d user-joined, want none (not her own)", n)
	}
	waitCount(t, oddRoom, 3, nodes...)

	// Every node's API answers for the whole cluster.
	path := "/api/rooms/" + strings.ReplaceAll(oddRoom, " ", "%20")
	for _, n := range nodes {
		var rm roomMembers
		if st := n.get(path, &rm); st != http.StatusOK {
			t.Fatalf("%s: GET room: %d", n.name, st)
		}
		var names []string
		for _, m := range rm.Members {
			names = append(names, m.Name)
		}
		sort.Strings(names)
		if rm.Count != 3 || rm.Partial || !slices.Equal(names, []string{"alice", "bob", "carol"}) {
			t.Fatalf("%s: GET room = %+v", n.name, rm)
		}
		var rl roomList
		n.get("/api/rooms", &rl)
		if len(rl.Rooms) != 1 || rl.Rooms[0].ID != oddRoom || rl.Rooms[0].Members != 3 {
			t.Fatalf("%s: GET rooms = %+v", n.name, rl)
		}
	}
	// A room only another node has is listed, and found.
	solo := dial(t, c.url(""), "solo")
	solo.join("c-only")
	waitCount(t, "c-only", 1, nodes...)
	var rl roomList
	a.get("/api/rooms?limit=1", &rl)
	if len(rl.Rooms) != 1 || rl.Rooms[0].ID != "c-only" {
		t.Fatalf("a: GET rooms?limit=1 = %+v, want c-only first", rl)
	}
	var rm roomMembers
	if st := a.get("/api/rooms/c-only", &rm); st != http.StatusOK || rm.Count != 1 || rm.Members[0].Name != "solo" {
		t.Fatalf("a: GET c-only: %d %+v", st, rm)
	}
	if st := a.get("/api/rooms/nowhere", nil); st != http.StatusNotFound {
		t.Fatalf("a: GET nowhere: %d, want 404", st)
	}

	// Leaves: an explicit one and a dropped connection.
	cb.send(map[string]string{"type": "leave", "roomId": oddRoom})
	for _, cl := range []*client{ca, cc} {
		cl.waitFor("bob's user-left", func(ms []msg) bool {
			m := last(ms, "user-left")
			return m.UserName == "bob" && m.UserCount == 2
		})
	}
	cc.close()
	ca.waitFor("carol's user-left", func(ms []msg) bool {
		m := last(ms, "user-left")
		return m.UserName == "carol" && m.UserCount == 1
	})
	waitCount(t, oddRoom, 1, nodes...)
	if s := c.cl.Stats(); s.Subscriptions != 1 { // c-only is left; oddRoom was unsubscribed
		t.Fatalf("c: %d subscriptions, want 1", s.Subscriptions)
	}
}

// TestNodeCrashLeavesCounts: a node killed without a drain says nothing, and
// drops out of every count within dead-after; no member of it lingers.
func TestNodeCrashLeavesCounts(t *testing.T) {
	const deadAfter = time.Second
	o := nodeOptions{heartbeat: 100 * time.Millisecond, deadAfter: deadAfter}
	b := startBroker(t, 0)
	a, bn, c := startNode(t, "a", b.URL(), o), startNode(t, "b", b.URL(), o), startNode(t, "c", b.URL(), o)
	ca := dial(t, a.url(""), "alice")
	ca.join("r")
	dial(t, bn.url(""), "bob").join("r")
	dial(t, c.url(""), "carol").join("r")
	dial(t, c.url(""), "dave").join("r")
	waitCount(t, "r", 4, a, bn, c)

	killed := time.Now()
	c.kill()
	eventually(t, "c's members to drop out", 3*deadAfter, func() bool {
		return a.cl.Remote("r") == 1 && bn.cl.Remote("r") == 1
	})
	took := time.Since(killed)
	// Reads leave a node out as soon as it has been silent for dead-after, and
	// its last heartbeat came before the kill: only scheduling adds to this.
	if took > deadAfter+500*time.Millisecond {
		t.Fatalf("c dropped out after %v, want within dead-after %v", took, deadAfter)
	}
	if took < deadAfter-2*o.heartbeat {
		t.Fatalf("c dropped out after %v, before dead-after %v: was it told?", took, deadAfter)
	}
	var rm roomMembers
	a.get("/api/rooms/r", &rm)
	var rl roomList
	a.get("/api/rooms", &rl)
	if rm.Count != 2 || rm.Partial || len(rl.Rooms) != 1 || rl.Rooms[0].Members != 2 {
		t.Fatalf("after the crash: room %+v, list %+v", rm, rl)
	}
	for _, p := range a.cl.Peers() {
		if p.ID == "c" {
			t.Fatalf("a still lists c: %+v", p)
		}
	}
	if j := dial(t, bn.url(""), "erin").join("r"); j.UserCount != 3 {
		t.Fatalf("a join after the crash: userCount %d, want 3", j.UserCount)
	}
	eventually(t, "a's sweep to count c dead", 5*time.Second, func() bool { return a.cl.Stats().PeersDead == 1 })
}

// TestShutdownLeavesAtOnce: a node that leaves in good order is dropped at
// once, long before dead-after.
func TestShutdownLeavesAtOnce(t *testing.T) {
	o := nodeOptions{deadAfter: time.Minute}
	b := startBroker(t, 0)
	a, bn := startNode(t, "a", b.URL(), o), startNode(t, "b", b.URL(), o)
	dial(t, bn.url(""), "bob").join("r")
	waitCount(t, "r", 1, a)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := bn.cl.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	eventually(t, "b to leave", 5*time.Second, func() bool { return len(a.cl.Peers()) == 0 })
	if a.cl.Remote("r") != 0 {
		t.Fatal("b's member still counted")
	}
}

// TestBrokerRestart: while the broker is away each node's rooms go on
// locally, and what could not reach the others is counted lost, never
// delivered late. When a broker is back on the same address, the nodes
// reconnect with their subscriptions, delivery resumes, and the canary shows
// the gap.
func TestBrokerRestart(t *testing.T) {
	o := nodeOptions{heartbeat: 50 * time.Millisecond, deadAfter: 10 * time.Second}
	b := startBroker(t, 0)
	a, bn := startNode(t, "a", b.URL(), o), startNode(t, "b", b.URL(), o)
	a1, a2 := dial(t, a.url(""), "a1"), dial(t, a.url(""), "a2")
	b1 := dial(t, bn.url(""), "b1")
	for _, c := range []*client{a1, a2, b1} {
		c.join("r")
	}
	waitCount(t, "r", 3, a, bn)
	a1.chat("r", "before")
	b1.waitFor("before", func(ms []msg) bool { return contents(ms)["before"] == 1 })

	b.stop()
	eventually(t, "both nodes to see the broker gone", 10*time.Second, func() bool {
		return !a.cl.Stats().Connected && !bn.cl.Stats().Connected
	})
	a1.chat("r", "during")
	a2.waitFor("the local message", func(ms []msg) bool { return contents(ms)["during"] == 1 })
	if lost := a.cl.Stats().Lost["broker_down"]; lost == 0 {
		t.Fatal("a message published with the broker down was not counted lost")
	}
	outage := 300 * time.Millisecond
	time.Sleep(outage) // let heartbeats fail, so the canary has a gap to show

	startBroker(t, b.port)

	eventually(t, "both nodes to reconnect", 10*time.Second, func() bool {
		return a.cl.Stats().Connected && bn.cl.Stats().Connected
	})
	// The subscriptions came back with the connection: no join is needed.
	for i := 0; ; i++ {
		a1.chat("r", fmt.Sprintf("after-%d", i))
		if eventuallyOK(time.Second, func() bool { return hasPrefix(b1.all(), "after-") }) {
			break
		}
		if i == 10 {
			t.Fatal("delivery did not resume after the broker came back")
		}
	}
	if got := contents(b1.all())["during"]; got != 0 {
		t.Fatalf("b1 got the message sent while the broker was down %d times", got)
	}
	// The canary: b saw a's heartbeats go missing, and says so.
	eventually(t, "the canary to show the gap", 5*time.Second, func() bool {
		for _, p := range bn.cl.Peers() {
			if p.ID == "a" && p.Lost > 0 && p.Synced {
				return true
			}
		}
		return false
	})
	lost := gather(t, bn, "throng_cluster_peer_lost_total", "a")
	if lost < float64(outage/o.heartbeat)/2 {
		t.Fatalf("throng_cluster_peer_lost_total{peer=a} = %v after a %v outage with a %v heartbeat", lost, outage, o.heartbeat)
	}
	if v := gather(t, a, "throng_cluster_lost_total", "broker_down"); v < 1 {
		t.Fatalf("throng_cluster_lost_total{reason=broker_down} = %v", v)
	}
	if v := gather(t, a, "throng_cluster_reconnects_total", ""); v < 1 {
		t.Fatalf("throng_cluster_reconnects_total = %v", v)
	}
	// Counts are whole again on both sides.
	waitCount(t, "r", 3, a, bn)
	if j := dial(t, bn.url(""), "b2").join("r"); j.UserCount != 4 {
		t.Fatalf("join after the outage: userCount %d, want 4", j.UserCount)
	}
}

func hasPrefix(ms []msg, prefix string) bool {
	for _, m := range ms {
		if m.Type == "message" && strings.HasPrefix(m.Content, prefix) {
			return true
		}
	}
	return false
}

func eventuallyOK(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// gather scrapes the node's cluster collector through a pedantic registry (so
// its descriptions are checked too) and returns the metric's value with the
// given label value ("" for an unlabelled metric).
func gather(t *testing.T, n *node, name, label string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(n.cl.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && !hasLabel(m, label) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	t.Fatalf("no metric %s{%s}", name, label)
	return 0
}

func hasLabel(m *dto.Metric, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetValue() == v {
			return true
		}
	}
	return false
}

// TestMaxConnsPerUserAcrossNodes: --max-conns-per-user counts a user's
// connections on every node.
func TestMaxConnsPerUserAcrossNodes(t *testing.T) {
	o := nodeOptions{maxConnsPerUser: 2, auth: true}
	b := startBroker(t, 0)
	a, bn, c := startNode(t, "a", b.URL(), o), startNode(t, "b", b.URL(), o), startNode(t, "c", b.URL(), o)

	onA := dial(t, a.url("alice"), "alice@a")
	dial(t, bn.url("alice"), "alice@b")
	eventually(t, "c to see alice's two connections", 5*time.Second, func() bool { return c.cl.RemoteUser("alice") == 2 })
	eventually(t, "a to see alice's one on b", 5*time.Second, func() bool { return a.cl.RemoteUser("alice") == 1 })
	if st := dialStatus(t, c.url("alice")); st != http.StatusTooManyRequests {
		t.Fatalf("third connection on c: status %d, want 429", st)
	}
	if st := dialStatus(t, a.url("alice")); st != http.StatusTooManyRequests {
		t.Fatalf("third connection on a: status %d, want 429", st)
	}
	dial(t, c.url("bob"), "bob@c") // another user is not affected

	onA.close()
	eventually(t, "c to see alice's connection on a close", 5*time.Second, func() bool { return c.cl.RemoteUser("alice") == 1 })
	dial(t, c.url("alice"), "alice@c")
	if s := c.cl.Stats(); s.UserRefused != 1 {
		t.Fatalf("c refused %d, want 1", s.UserRefused)
	}
}

// TestStartWithoutBroker: a node whose broker is not up yet still starts and
// serves its rooms locally, then joins the cluster when the broker comes.
func TestStartWithoutBroker(t *testing.T) {
	b := startBroker(t, 0)
	port := b.port
	b.stop()
	a := startNode(t, "a", b.URL(), nodeOptions{})
	a1, a2 := dial(t, a.url(""), "a1"), dial(t, a.url(""), "a2")
	a1.join("r")
	if j := a2.join("r"); j.UserCount != 2 {
		t.Fatalf("local join without a broker: userCount %d, want 2", j.UserCount)
	}
	a1.chat("r", "alone")
	a2.waitFor("the local message", func(ms []msg) bool { return contents(ms)["alone"] == 1 })

	b = startBroker(t, port)
	bn := startNode(t, "b", b.URL(), nodeOptions{})
	eventually(t, "a to connect", 10*time.Second, func() bool { return a.cl.Stats().Connected })
	waitCount(t, "r", 2, a, bn)
	b1 := dial(t, bn.url(""), "b1")
	if j := b1.join("r"); j.UserCount != 3 {
		t.Fatalf("join on b: userCount %d, want 3", j.UserCount)
	}
	a1.waitFor("b1's user-joined", func(ms []msg) bool { return last(ms, "user-joined").UserName == "b1" })
}

// TestMetricsDocumented: every metric the collector describes is in the
// operations guide's table.
func TestMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	n, err := cluster.New(cluster.Options{URLs: []string{"nats://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *prometheus.Desc, 100)
	n.Collector().Describe(ch)
	close(ch)
	name := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	count := 0
	for d := range ch {
		m := name.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		count++
		if !bytes.Contains(doc, []byte("`"+m[1]+"`")) {
			t.Errorf("%s is not in docs/OPERATIONS.md", m[1])
		}
	}
	if count < 20 {
		t.Fatalf("only %d metrics described", count)
	}
}

// TestNodeCrashTellsUserLeft: when a node dies without a word, the others
// write a user-left for each of its members to their own members of the room:
// for a member they heard join, and for one that was there before they
// subscribed (learned from the member list). A member that left in good order
// is not announced again.
func TestNodeCrashTellsUserLeft(t *testing.T) {
	o := nodeOptions{heartbeat: 100 * time.Millisecond, deadAfter: time.Second}
	b := startBroker(t, 0)
	a, bn, c := startNode(t, "a", b.URL(), o), startNode(t, "b", b.URL(), o), startNode(t, "c", b.URL(), o)
	alice := dial(t, a.url(""), "alice")
	alice.join("r") // before b and c have members in r: they learn her from the list
	waitCount(t, "r", 1, bn, c)
	bob := dial(t, bn.url(""), "bob")
	bob.join("r")
	carol := dial(t, c.url(""), "carol")
	carol.join("r")
	dave := dial(t, a.url(""), "dave")
	dave.join("r") // after them: they hear him join
	erin := dial(t, a.url(""), "erin")
	erin.join("r")
	waitCount(t, "r", 5, a, bn, c)
	erin.send(map[string]any{"type": "leave", "roomId": "r"}) // in good order
	for _, cl := range []*client{bob, carol} {
		cl.waitFor("erin's user-left", func(ms []msg) bool { return countLeft(ms, erin.id) == 1 })
	}

	a.kill()
	for _, cl := range []*client{bob, carol} {
		cl.waitFor("user-left for alice and dave", func(ms []msg) bool {
			return countLeft(ms, alice.id) == 1 && countLeft(ms, dave.id) == 1
		})
		ms := cl.all()
		for _, m := range ms {
			if m.Type == "user-left" && (m.UserID == alice.id || m.UserID == dave.id) && (m.UserCount != 2 || m.RoomID != "r") {
				t.Errorf("%s: %+v, want room r with userCount 2 (bob and carol)", cl.name, m)
			}
		}
		if n := countLeft(ms, erin.id); n != 1 {
			t.Errorf("%s: %d user-left for erin, want the one she sent", cl.name, n)
		}
		if n := countLeft(ms, bob.id) + countLeft(ms, carol.id); n != 0 {
			t.Errorf("%s: %d user-left for live members", cl.name, n)
		}
	}
	for _, n := range []*node{bn, c} {
		if s := n.cl.Stats(); s.GoneMembers != 2 {
			t.Errorf("%s: GoneMembers %d, want 2", n.name, s.GoneMembers)
		}
	}
}

func countLeft(ms []msg, user string) int {
	n := 0
	for _, m := range ms {
		if m.Type == "user-left" && m.UserID == user {
			n++
		}
	}
	return n
}

// TestNodeRestartTellsUserLeft: a node that crashes and comes back under the
// same id before dead-after is a new incarnation, and the members of its
// previous life are announced as gone at once.
func TestNodeRestartTellsUserLeft(t *testing.T) {
	o := nodeOptions{heartbeat: 100 * time.Millisecond, deadAfter: time.Minute}
	b := startBroker(t, 0)
	a, bn := startNode(t, "a", b.URL(), o), startNode(t, "b", b.URL(), o)
	bob := dial(t, bn.url(""), "bob")
	bob.join("r")
	alice := dial(t, a.url(""), "alice")
	alice.join("r")
	waitCount(t, "r", 2, a, bn)

	a.kill()
	startNode(t, "a", b.URL(), o) // well within dead-after
	bob.waitFor("alice's user-left", func(ms []msg) bool { return countLeft(ms, alice.id) == 1 })
	if m := last(bob.all(), "user-left"); m.UserID != alice.id || m.UserCount != 1 {
		t.Fatalf("user-left %+v, want alice with userCount 1", m)
	}
}
