package chat

import (
	"context"

	"github.com/throng-ws/throng/room"
)

// Cluster links a Handler to the other nodes of a cluster; package cluster
// implements it over NATS. Handler calls it on loop goroutines and the API on HTTP
// handlers' goroutines, so the methods other than RemoteMembers must not block.
//
// Delivery is local first. The handler writes a room's message to this node's members
// itself, through the room table, and hands the same payload to Publish for the
// other nodes, which write it to theirs with Handler.Deliver. The cluster never
// hands a node its own messages back, so every member, on the origin node or
// any other, gets each message once.
type Cluster interface {
	// Changed says that roomID's membership on this node changed. The cluster
	// reads the count from the room table itself, later, so the calls of
	// several loops may arrive in any order.
	Changed(roomID string)
	// Remote is roomID's members on the other live nodes, as they last
	// announced them.
	Remote(roomID string) int
	// Publish queues payload, a complete server-to-client message, for
	// roomID's members on the other nodes; payload is not kept past the call.
	// It reports false if the message cannot reach them (no broker, a full
	// queue): the cluster counts it as lost, and only this node's members
	// have it.
	Publish(roomID string, payload []byte) bool
	// RemoteRooms lists the rooms with members on the other live nodes whose
	// ids sort after after, with the members there, in no order.
	RemoteRooms(after string) []room.Info
	// RemoteMembers asks the other live nodes for roomID's members and waits
	// for their answers until ctx ends. partial reports that a node with
	// members did not answer.
	RemoteMembers(ctx context.Context, roomID string) (members []room.MemberInfo, partial bool, err error)
}

// Deliver writes a message that another node published to roomID (a complete
// server-to-client JSON message) to this node's members of the room, and
// returns how many it goes to. The frame is encoded once, and the room table
// writes the same bytes to every member. It may be called from any goroutine.
func (h *Handler) Deliver(roomID string, payload []byte) int {
	if h.Rooms == nil {
		return 0
	}
	return h.broadcast(roomID, payload, nil)
}

// delivery is where a message went: the local members it was written to, and
// the other nodes' members it was published for, as those nodes last
// announced them.
type delivery struct {
	local, remote int
	// published: the cluster took the message. Without a cluster it is true and
	// remote is 0; when false, remote is 0 as the message reached no other node.
	published bool
}

// send broadcasts payload to the room's local members except except, and
// publishes it for the other nodes' members. It leaves delivery.remote to the
// caller that wants it.
func (h *Handler) send(roomID string, payload []byte, except room.Sink) delivery {
	d := delivery{local: h.broadcast(roomID, payload, except), published: true}
	if h.Cluster != nil {
		d.published = h.Cluster.Publish(roomID, payload)
	}
	return d
}

// changed tells the cluster that roomID's local membership changed, and returns
// the room's count across the nodes, given the local one.
func (h *Handler) changed(roomID string, local int) int {
	if h.Cluster == nil {
		return local
	}
	h.Cluster.Changed(roomID)
	return local + h.Cluster.Remote(roomID)
}

// ClusterHistory is implemented by a Cluster that keeps the rooms' history
// (package cluster, in a NATS JetStream stream). With it the stream numbers
// the messages: the handler appends a room's message instead of delivering it,
// and every node, this one included, delivers the stream's messages to its
// members in the stream's order (DeliverStream). Offsets are stream
// sequences. While HistoryOn is false, chat is live only, as without it.
type ClusterHistory interface {
	HistoryOn() bool
	// HistoryEpoch names the stream.
	HistoryEpoch() string
	// HistoryPosition is the last stream sequence this node delivered.
	HistoryPosition() uint64
	// HistorySize is the most messages a room keeps.
	HistorySize() int
	// Append queues a message (without offset) for the stream; false: it
	// cannot, and the caller delivers it live only.
	Append(roomID string, payload []byte) bool
	// ReadAfter and ReadBefore read the stream; they block for broker round
	// trips, so the handler calls them on goroutines started with Go.
	ReadAfter(ctx context.Context, id string, after uint64, max int) (msgs []StreamMsg, upTo uint64, complete bool, err error)
	ReadBefore(ctx context.Context, id string, before uint64, limit int) (msgs []StreamMsg, latest uint64, more bool, err error)
	// Go runs f on a goroutine the cluster waits for when it stops.
	Go(f func()) bool
}

// StreamMsg is a room message read from a cluster's history: its offset and
// its payload without offset and epoch (the same type as cluster.StreamMsg).
type StreamMsg = struct {
	Seq     uint64
	Payload []byte
}
