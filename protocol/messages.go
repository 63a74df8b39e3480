package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Msg is one message of the chat protocol, in either direction. Its Type is the
// message's "type" field on the wire.
type Msg interface{ Type() string }

// Client to server.
type (
	// Join asks to join a room under a display name; the reply is Joined.
	// With Since the server first sends the messages after Since.Offset, if
	// they are all still in the room's history (Joined.Recovered says whether
	// they were). History asks for up to that many recent messages, sent
	// before Joined, when there is nothing to recover.
	Join struct {
		RoomID   string    `json:"roomId"`
		UserName string    `json:"userName"`
		Since    *Position `json:"since,omitempty"`
		History  int       `json:"history,omitempty"`
	}
	// HistoryRequest pages backwards through a room's history: up to Limit
	// messages before the offset Before (0: the newest). A non-empty Epoch
	// must be the room's. The reply is HistoryPage.
	HistoryRequest struct {
		RoomID string `json:"roomId"`
		Before uint64 `json:"before,omitempty"`
		Limit  int    `json:"limit,omitempty"`
		Epoch  string `json:"epoch,omitempty"`
	}
	// Chat sends a message to a room the client is in; every member, the sender
	// included, gets it as a Message.
	Chat struct {
		RoomID  string `json:"roomId"`
		Content string `json:"content"`
	}
	// Leave leaves a room; the reply is Left.
	Leave struct {
		RoomID string `json:"roomId"`
	}
	// Ping asks for a Pong.
	Ping struct{}
	// Refresh replaces the connection's token with a later one for the same
	// user; the reply is Refreshed.
	Refresh struct {
		Token string `json:"token"`
	}
	// Members asks for the members of a room the client is in (RoomID only);
	// the server answers with a Members that lists them.
	Members struct {
		RoomID string `json:"roomId"`
		// Members are up to MaxMembersListed of the room's members on the
		// node the client is connected to, one entry per connection (a user
		// in two tabs is listed twice).
		Members []Member `json:"members,omitempty"`
		// UserCount counts every member, on every node of a cluster; when it
		// is more than len(Members), the rest are not listed.
		UserCount int `json:"userCount,omitempty"`
	}
)

// Member is one entry of Members.
type Member struct {
	UserID   string `json:"userId"`
	UserName string `json:"userName"`
}

// Server to client.
type (
	// Connected greets a new connection.
	Connected struct {
		UserID    string    `json:"userId"`
		Timestamp time.Time `json:"timestamp"`
	}
	// Joined answers Join. With history on it carries the room's epoch and
	// newest offset; Recovered is set when the join asked to recover (Since),
	// and Replayed counts the messages of the room sent just before it.
	Joined struct {
		RoomID    string `json:"roomId"`
		UserID    string `json:"userId"`
		UserCount int    `json:"userCount"`
		Epoch     string `json:"epoch,omitempty"`
		Offset    uint64 `json:"offset,omitempty"`
		Recovered *bool  `json:"recovered,omitempty"`
		Replayed  int    `json:"replayed,omitempty"`
	}
	// UserJoined tells a room's members that someone else joined.
	UserJoined struct {
		RoomID    string `json:"roomId"`
		UserID    string `json:"userId"`
		UserName  string `json:"userName"`
		UserCount int    `json:"userCount"`
	}
	// Message is a chat message in a room. With history on, Offset is its
	// place in the room's history (increasing, not necessarily by one) and
	// Epoch names that history.
	Message struct {
		RoomID    string    `json:"roomId"`
		UserID    string    `json:"userId"`
		UserName  string    `json:"userName"`
		Content   string    `json:"content"`
		Timestamp time.Time `json:"timestamp"`
		Offset    uint64    `json:"offset,omitempty"`
		Epoch     string    `json:"epoch,omitempty"`
	}
	// HistoryPage answers HistoryRequest: Messages in offset order, oldest
	// first; More says older ones remain. Offset is the room's newest.
	HistoryPage struct {
		RoomID   string    `json:"roomId"`
		Epoch    string    `json:"epoch"`
		Offset   uint64    `json:"offset"`
		Messages []Message `json:"messages"`
		More     bool      `json:"more"`
	}
	// Left answers Leave, or tells a member that an operator took it out of
	// the room (Reason set: removed, or the room closed).
	Left struct {
		RoomID string `json:"roomId"`
		Reason string `json:"reason,omitempty"`
	}
	// UserLeft tells a room's members that someone left or disconnected.
	UserLeft struct {
		RoomID    string `json:"roomId"`
		UserID    string `json:"userId"`
		UserName  string `json:"userName"`
		UserCount int    `json:"userCount"`
	}
	// Pong answers Ping.
	Pong struct{}
	// Refreshed answers Refresh. ExpiresAt is zero for a token without exp.
	Refreshed struct {
		ExpiresAt time.Time `json:"expiresAt,omitzero"`
	}
	// Unknown is a message of a type this package does not know, kept whole so
	// that a newer server does not break an older client.
	Unknown struct {
		Kind string
		Raw  json.RawMessage
	}
)

// Position is a place in a room's history: the offset of the last message a
// client has, and the epoch of the history it comes from.
type Position struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

// ServerError is the protocol's error message. It is also a Go error: calls
// return it when the server refuses them.
type ServerError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Field names the offending field of an invalid_message.
	Field string `json:"field,omitempty"`
	// Count is how many messages were lost, for messages_dropped.
	Count int `json:"count,omitempty"`
	// RetryAfter is, for rate_limited, how many seconds the ban lasts: the
	// server ignores what the connection sends until then.
	RetryAfter int `json:"retryAfter,omitempty"`
}

func (e *ServerError) Error() string {
	if e.Message == "" {
		return "protocol: server error " + e.Code
	}
	return "protocol: server error " + e.Code + ": " + e.Message
}

func (Join) Type() string           { return TypeJoin }
func (Chat) Type() string           { return TypeChat }
func (Leave) Type() string          { return TypeLeave }
func (Ping) Type() string           { return TypePing }
func (Refresh) Type() string        { return TypeRefresh }
func (Members) Type() string        { return TypeMembers }
func (HistoryRequest) Type() string { return TypeHistory }
func (HistoryPage) Type() string    { return TypeHistoryPage }
func (Connected) Type() string      { return TypeConnected }
func (Joined) Type() string         { return TypeJoined }
func (UserJoined) Type() string     { return TypeUserJoined }
func (Message) Type() string        { return TypeMessage }
func (Left) Type() string           { return TypeLeft }
func (UserLeft) Type() string       { return TypeUserLeft }
func (Pong) Type() string           { return TypePong }
func (Refreshed) Type() string      { return TypeRefreshed }
func (ServerError) Type() string    { return TypeError }
func (u Unknown) Type() string      { return u.Kind }
func (u *Unknown) String() string   { return "unknown message " + strconv.Quote(u.Kind) }

// ErrNoType is returned by Decode for a JSON object without a string "type".
var ErrNoType = errors.New("protocol: message has no type")

// Encode writes m as one protocol message: a JSON object whose first field is
// "type". An *Unknown is written back as it was received.
func Encode(m Msg) ([]byte, error) {
	if u, ok := m.(*Unknown); ok {
		return append([]byte(nil), u.Raw...), nil
	}
	body, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("protocol: encode %s: %w", m.Type(), err)
	}
	if len(body) < 2 || body[0] != '{' {
		return nil, fmt.Errorf("protocol: encode %s: not a JSON object", m.Type())
	}
	out := make([]byte, 0, len(body)+len(m.Type())+10)
	out = append(out, `{"type":`...)
	out = strconv.AppendQuote(out, m.Type()) // types are ASCII: Go and JSON quoting agree
	if len(body) > 2 {
		out = append(out, ',')
	}
	return append(out, body[1:]...), nil
}

// Decode reads one protocol message sent by either side and returns a pointer
// to its type, such as *Message or *ServerError; an unknown type comes back as
// *Unknown. Unknown fields are ignored, as the server ignores them.
func Decode(data []byte) (Msg, error) {
	var head struct {
		Type *string `json:"type"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("protocol: decode: %w", err)
	}
	if head.Type == nil {
		return nil, ErrNoType
	}
	var m Msg
	switch *head.Type {
	case TypeJoin:
		m = new(Join)
	case TypeChat:
		m = new(Chat)
	case TypeLeave:
		m = new(Leave)
	case TypePing:
		return &Ping{}, nil
	case TypeRefresh:
		m = new(Refresh)
	case TypeHistory:
		m = new(HistoryRequest)
	case TypeHistoryPage:
		m = new(HistoryPage)
	case TypeMembers:
		m = new(Members)
	case TypeConnected:
		m = new(Connected)
	case TypeJoined:
		m = new(Joined)
	case TypeUserJoined:
		m = new(UserJoined)
	case TypeMessage:
		m = new(Message)
	case TypeLeft:
		m = new(Left)
	case TypeUserLeft:
		m = new(UserLeft)
	case TypePong:
		return &Pong{}, nil
	case TypeRefreshed:
		m = new(Refreshed)
	case TypeError:
		m = new(ServerError)
	default:
		return &Unknown{Kind: *head.Type, Raw: append(json.RawMessage(nil), data...)}, nil
	}
	if err := json.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("protocol: decode %s: %w", *head.Type, err)
	}
	return m, nil
}
