package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/throng-ws/throng/room"
)

// A node that crashes cannot send user-left for its members, so the others
// send it for them. Each node keeps, for the rooms it has members in, the
// other nodes' members of those rooms: from the member lists it asks for when
// it subscribes to a room, then from the user-joined and user-left messages
// that cross the broker, which carry their origin (node and incarnation) in a
// header. When a node is dropped (silent for DeadAfter, said goodbye with
// members left, or came back as a new incarnation), every node writes a
// user-left for each of its remembered members to its own members of the room.
//
// The memory is one entry per remote member of a room with local members.
// It is as right as the messages it learns from: a join and a list reply that
// cross may count a member twice, and one lost message, once, so a crash can
// produce a stray or a missing user-left; the counts are the state streams'
// and never depend on it.

// originHeader carries a room message's origin: "<node> <incarnation>";
// seqHeader its number in the origin's sequence of room messages.
const (
	originHeader = "Throng-Origin"
	seqHeader    = "Throng-Seq"
)

var (
	joinedPrefix = []byte(`{"type":"user-joined"`)
	leftPrefix   = []byte(`{"type":"user-left"`)
)

func isPresence(payload []byte) bool {
	return bytes.HasPrefix(payload, joinedPrefix) || bytes.HasPrefix(payload, leftPrefix)
}

// origin is one incarnation of a node.
type origin struct {
	node string
	inc  uint64
}

func (o origin) String() string { return o.node + " " + strconv.FormatUint(o.inc, 10) }

func parseOrigin(s string) (origin, bool) {
	node, inc, ok := strings.Cut(s, " ")
	if !ok || !validToken(node) {
		return origin{}, false
	}
	n, err := strconv.ParseUint(inc, 10, 64)
	return origin{node, n}, err == nil
}

// memberKey is a member as presence messages name it; a user in a room from
// two connections counts twice.
type memberKey struct{ user, name string }

// remoteMembers is what this node knows of the other nodes' members of its
// rooms. The inbound goroutine and the member-list fetches write it; the
// worker takes a dropped node's members out of it.
type remoteMembers struct {
	mu    sync.Mutex
	rooms map[string]map[origin]map[memberKey]int // guarded by mu
}

func (r *remoteMembers) node(roomID string, o origin) map[memberKey]int {
	if r.rooms == nil {
		r.rooms = make(map[string]map[origin]map[memberKey]int)
	}
	nodes := r.rooms[roomID]
	if nodes == nil {
		nodes = make(map[origin]map[memberKey]int)
		r.rooms[roomID] = nodes
	}
	ms := nodes[o]
	if ms == nil {
		ms = make(map[memberKey]int)
		nodes[o] = ms
	}
	return ms
}

// presence applies a user-joined or user-left message from o.
func (r *remoteMembers) presence(roomID string, o origin, payload []byte) {
	var p struct {
		Type     string `json:"type"`
		UserID   string `json:"userId"`
		UserName string `json:"userName"`
	}
	if json.Unmarshal(payload, &p) != nil {
		return
	}
	k := memberKey{p.UserID, p.UserName}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch p.Type {
	case "user-joined":
		r.node(roomID, o)[k]++
	case "user-left":
		ms := r.rooms[roomID][o]
		if ms[k] > 1 {
			ms[k]--
			return
		}
		delete(ms, k)
		if len(ms) == 0 {
			delete(r.rooms[roomID], o)
		}
	}
}

// list replaces o's members of roomID with a member list it sent.
func (r *remoteMembers) list(roomID string, o origin, members []room.MemberInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, tracked := r.rooms[roomID]; !tracked {
		return // the room lost its local members meanwhile
	}
	ms := make(map[memberKey]int, len(members))
	for _, m := range members {
		ms[memberKey{m.UserID, m.Name}]++
	}
	r.rooms[roomID][o] = ms
}

// track starts keeping roomID's remote members; forget stops.
func (r *remoteMembers) track(roomID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rooms == nil {
		r.rooms = make(map[string]map[origin]map[memberKey]int)
	}
	if r.rooms[roomID] == nil {
		r.rooms[roomID] = make(map[origin]map[memberKey]int)
	}
}

func (r *remoteMembers) forget(roomID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.rooms, roomID)
}

// goneMember is a remembered member of a dropped node.
type goneMember struct {
	room  string
	key   memberKey
	conns int
}

// take removes and returns the members of node's incarnations up to and
// including inc (all of them if inc is 0).
func (r *remoteMembers) take(node string, inc uint64) []goneMember {
	r.mu.Lock()
	defer r.mu.Unlock()
	var gone []goneMember
	for roomID, nodes := range r.rooms {
		for o, ms := range nodes {
			if o.node != node || (inc != 0 && o.inc > inc) {
				continue
			}
			for k, c := range ms {
				gone = append(gone, goneMember{roomID, k, c})
			}
			delete(nodes, o)
		}
	}
	return gone
}

// nodeGone forgets the remembered members of node's incarnations up to inc
// (0: all) and, with announce, writes a user-left for each to this node's
// members of the room, with the counts read after the node was dropped from
// them. A node that said goodbye has sent its own user-left messages (some
// may still be on their way, on another subscription), so its members are
// only forgotten.
func (n *Node) nodeGone(node string, inc uint64, announce bool) {
	gone := n.remote.take(node, inc)
	if !announce {
		return
	}
	now := time.Now()
	for _, g := range gone {
		b, err := json.Marshal(struct {
			Type      string `json:"type"`
			RoomID    string `json:"roomId"`
			UserID    string `json:"userId"`
			UserName  string `json:"userName"`
			UserCount int    `json:"userCount"`
		}{"user-left", g.room, g.key.user, g.key.name, n.rooms.Count(g.room) + n.peers.room(g.room, now)})
		if err != nil {
			continue
		}
		for range g.conns {
			n.deliver.Deliver(g.room, b)
			n.c.goneMembers.Add(1)
		}
	}
}

// fetchMembers asks the nodes with members in roomID for their lists and
// remembers them; the worker starts it when the room gets its first local
// member.
func (n *Node) fetchMembers(roomID string) {
	ctx, cancel := context.WithTimeout(context.Background(), n.opts.DeadAfter)
	defer cancel()
	go func() {
		select {
		case <-n.bg.Quit():
			cancel()
		case <-ctx.Done():
		}
	}()
	lists := make(map[origin][]room.MemberInfo)
	n.gatherMembers(ctx, roomID, func(r membersReply) {
		o := origin{r.Node, r.Inc}
		lists[o] = append(lists[o], r.Members...)
	})
	for o, ms := range lists {
		n.remote.list(roomID, o, ms)
	}
}
