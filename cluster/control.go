package cluster

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
)

// Operators' actions (disconnect a user, take one out of a room, close a room)
// travel on PREFIX.control as requests: the node whose API was asked runs the
// action on its own connections and publishes it once; every other node runs
// it on its own and answers with how many it affected. The payload is the
// chat's (chat.Action as JSON); this package only carries it.

// actionReply is one node's answer to an action.
type actionReply struct {
	Node     string `json:"node"`
	Affected int    `json:"affected"`
	Error    string `json:"error,omitempty"`
}

// remoteActionTimeout bounds how long a node spends on another's action, so
// its answer comes back while the asker still waits (chat.ActionTimeout).
const remoteActionTimeout = 4 * time.Second

// HandleActions sets fn to run the actions that other nodes' APIs send; call
// it before Start. fn is called on the NATS client's goroutine for the
// control subscription, one action at a time.
func (n *Node) HandleActions(fn func(ctx context.Context, action []byte) (int, error)) {
	n.actor = fn
}

func (n *Node) onAction(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), remoteActionTimeout)
	affected, err := n.actor(ctx, m.Data)
	cancel()
	r := actionReply{Node: n.id, Affected: affected}
	if err != nil {
		r.Error = err.Error()
		n.log.Warn("cluster: action failed", "err", err)
	}
	b, _ := json.Marshal(r)
	m.Respond(b)
}

// Act implements chat.ClusterControl: it publishes action on the control
// subject and gathers the answers of the live nodes until each has answered or
// ctx ends. A node that answered with an error still counts as answered, with
// what it did.
func (n *Node) Act(ctx context.Context, action []byte) (affected, nodes int, partial bool, err error) {
	want := map[string]bool{}
	for _, p := range n.peers.status(time.Now()) {
		want[p.ID] = true
	}
	if len(want) == 0 {
		return 0, 0, false, nil
	}
	if n.nc == nil || !n.connected.Load() {
		return 0, 0, true, nil
	}
	inbox := n.nc.NewInbox()
	sub, err := n.nc.SubscribeSync(inbox)
	if err != nil {
		return 0, 0, true, err
	}
	defer sub.Unsubscribe()
	if err := n.nc.PublishRequest(n.actSubj, inbox, action); err != nil {
		return 0, 0, true, err
	}
	for len(want) > 0 {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return affected, nodes, true, nil
		}
		var r actionReply
		if json.Unmarshal(m.Data, &r) != nil || !want[r.Node] {
			continue
		}
		delete(want, r.Node)
		affected += r.Affected
		nodes++
	}
	return affected, nodes, false, nil
}
