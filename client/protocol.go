package client

import "github.com/throng-ws/throng/protocol"

// The chat protocol's messages, as package protocol defines them; the names
// are kept here so a program that uses the client needs one import.
type (
	Msg         = protocol.Msg
	Join        = protocol.Join
	Chat        = protocol.Chat
	Leave       = protocol.Leave
	Ping        = protocol.Ping
	Refresh     = protocol.Refresh
	Connected   = protocol.Connected
	Joined      = protocol.Joined
	UserJoined  = protocol.UserJoined
	Message     = protocol.Message
	Left        = protocol.Left
	UserLeft    = protocol.UserLeft
	Pong        = protocol.Pong
	Refreshed   = protocol.Refreshed
	Unknown     = protocol.Unknown
	ServerError = protocol.ServerError

	HistoryRequest = protocol.HistoryRequest
	HistoryPage    = protocol.HistoryPage
	Position       = protocol.Position
)

// Error codes the server sends in ServerError.Code.
const (
	CodeInvalidJSON     = protocol.CodeInvalidJSON
	CodeInvalidMessage  = protocol.CodeInvalidMessage
	CodeUnknownType     = protocol.CodeUnknownType
	CodeNotInRoom       = protocol.CodeNotInRoom
	CodeAlreadyInRoom   = protocol.CodeAlreadyInRoom
	CodeTooManyRooms    = protocol.CodeTooManyRooms
	CodeRoomFull        = protocol.CodeRoomFull
	CodeRateLimited     = protocol.CodeRateLimited
	CodeInvalidToken    = protocol.CodeInvalidToken
	CodeTokenExpired    = protocol.CodeTokenExpired
	CodeMessagesDropped = protocol.CodeMessagesDropped
	CodeUnavailable     = protocol.CodeUnavailable
	CodeUnknownEpoch    = protocol.CodeUnknownEpoch
)

// ErrNoType is returned by Decode for a JSON object without a string "type".
var ErrNoType = protocol.ErrNoType

// Encode writes m as one protocol message (see protocol.Encode).
func Encode(m Msg) ([]byte, error) { return protocol.Encode(m) }

// Decode reads one protocol message (see protocol.Decode).
func Decode(data []byte) (Msg, error) { return protocol.Decode(data) }
