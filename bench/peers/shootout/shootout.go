// Package shootout is the websocket-shootout protocol as the reference peers
// serve it: the message forms, so that each peer only moves bytes its own way.
//
// JSON: {"type":"echo","payload":P} comes back unchanged; {"type":"broadcast",
// "payload":P} is sent as {"type":"broadcast","payload":P} to every client, the
// sender included, and the sender then gets {"type":"broadcastResult",
// "payload":P,"listenerCount":N}. Binary: byte 0 is 'e' or 'b', then a uint32
// big-endian length and the payload; an echo comes back unchanged, a broadcast
// fans out unchanged, and the result is the same bytes with byte 0 set to 'r'.
package shootout

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"strconv"
)

// Kind is what a client message asks for.
type Kind uint8

// Kinds.
const (
	Echo Kind = iota + 1
	Broadcast
)

// ErrBadMessage is returned for a message that is neither form.
var ErrBadMessage = errors.New("shootout: bad message")

type jsonMsg struct {
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

// ParseJSON reads a JSON client message. For a broadcast it returns the frame
// to fan out; for an echo the caller sends msg back as it is.
func ParseJSON(msg []byte) (k Kind, payload json.RawMessage, err error) {
	var m jsonMsg
	if err := json.Unmarshal(msg, &m); err != nil {
		return 0, nil, ErrBadMessage
	}
	switch m.Type {
	case "echo":
		return Echo, m.Payload, nil
	case "broadcast":
		return Broadcast, m.Payload, nil
	}
	return 0, nil, ErrBadMessage
}

// BroadcastJSON is the frame every client gets for a broadcast of payload.
func BroadcastJSON(payload []byte) []byte {
	b := make([]byte, 0, len(payload)+32)
	b = append(b, `{"type":"broadcast","payload":`...)
	b = append(b, payload...)
	return append(b, '}')
}

// ResultJSON is the sender's answer after a broadcast reached n clients.
func ResultJSON(payload []byte, n int) []byte {
	b := make([]byte, 0, len(payload)+64)
	b = append(b, `{"type":"broadcastResult","payload":`...)
	b = append(b, payload...)
	b = append(b, `,"listenerCount":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '}')
}

// ParseBinary checks a binary client message's header.
func ParseBinary(msg []byte) (Kind, error) {
	if len(msg) < 5 || int(binary.BigEndian.Uint32(msg[1:5])) != len(msg)-5 {
		return 0, ErrBadMessage
	}
	switch msg[0] {
	case 'e':
		return Echo, nil
	case 'b':
		return Broadcast, nil
	}
	return 0, ErrBadMessage
}

// ResultBinary is the sender's answer to a binary broadcast: a copy of it with
// byte 0 set to 'r'.
func ResultBinary(msg []byte) []byte {
	r := append([]byte(nil), msg...)
	r[0] = 'r'
	return r
}
