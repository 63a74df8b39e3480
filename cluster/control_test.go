package cluster_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

type actionResult struct {
	Affected, Local, Remote, Nodes int
	Partial                        bool
}

// closed waits until c's connection ends and returns the close error.
func (c *client) closed() *websocket.CloseError {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.t.Fatalf("%s: still open", c.name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ce, ok := c.err.(*websocket.CloseError)
	if !ok {
		c.t.Fatalf("%s: ended with %v, not a close frame", c.name, c.err)
	}
	return ce
}

// TestActionsAcrossNodes: an operator's disconnect, removal and room close on
// one node's API reach the user's connections and the room's members on every
// node, and the answer counts them.
func TestActionsAcrossNodes(t *testing.T) {
	o := nodeOptions{auth: true}
	b := startBroker(t, 0)
	a, bn, c := startNode(t, "a", b.URL(), o), startNode(t, "b", b.URL(), o), startNode(t, "c", b.URL(), o)
	eventually(t, "a to hear b and c", 5*time.Second, func() bool { return len(a.cl.Peers()) == 2 })

	var alice []*client
	for _, n := range []*node{a, bn, c, c} {
		alice = append(alice, dial(t, n.url("alice"), "alice@"+n.name))
	}
	bob := dial(t, bn.url("bob"), "bob@b")
	var res actionResult
	if st := a.call("POST", "/api/users/alice/disconnect", `{"code":4003,"reason":"account suspended"}`, &res); st != http.StatusOK {
		t.Fatalf("disconnect: %d", st)
	}
	if res.Affected != 4 || res.Local != 1 || res.Remote != 3 || res.Nodes != 2 || res.Partial {
		t.Fatalf("disconnect answered %+v", res)
	}
	for _, cl := range alice {
		if ce := cl.closed(); ce.Code != 4003 || ce.Text != "account suspended" {
			t.Fatalf("%s: close %d %q", cl.name, ce.Code, ce.Text)
		}
	}
	bob.send(map[string]string{"type": "ping"})
	bob.waitFor("pong", func(ms []msg) bool { return count(ms, "pong") == 1 })

	// Removal and close reach members on every node.
	carolA, carolC := dial(t, a.url("carol"), "carol@a"), dial(t, c.url("carol"), "carol@c")
	dave := dial(t, bn.url("dave"), "dave@b")
	carolA.join("lobby")
	carolC.join("lobby")
	dave.join("lobby")
	bob.join("lobby")
	waitCount(t, "lobby", 4, a, bn, c)
	if st := bn.call("DELETE", "/api/rooms/lobby/members/carol", `{"reason":"spam"}`, &res); st != http.StatusOK || res.Affected != 2 || res.Local != 0 {
		t.Fatalf("remove: %d %+v", st, res)
	}
	for _, cl := range []*client{carolA, carolC} {
		cl.waitFor("left", func(ms []msg) bool { m := last(ms, "left"); return m.RoomID == "lobby" && m.Reason == "spam" })
	}
	waitCount(t, "lobby", 2, a, bn, c)
	carolA.join("lobby")
	waitCount(t, "lobby", 3, a, bn, c)
	if st := c.call("DELETE", "/api/rooms/lobby", "", &res); st != http.StatusOK || res.Affected != 3 || res.Nodes != 2 {
		t.Fatalf("close room: %d %+v", st, res)
	}
	for _, cl := range []*client{carolA, dave, bob} {
		cl.waitFor("left", func(ms []msg) bool { return last(ms, "left").Reason != "" })
	}
	waitCount(t, "lobby", 0, a, bn, c)

	// The canary's view carries each peer's connections.
	eventually(t, "a to see b's connections", 5*time.Second, func() bool {
		for _, p := range a.cl.Peers() {
			if p.ID == "b" {
				return p.Conns == int64(bn.srv.Conns()) && p.Conns == 2
			}
		}
		return false
	})
}
