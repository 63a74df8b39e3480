// Package protocol is the chat protocol's vocabulary, in one place: the message
// types, the error codes and their texts, the limits on fields, and the
// timestamp layout. The server's chat application, the Go client and the bench
// harness all speak it from here, and a test checks the browser client's copy.
//
// It is a leaf: it imports nothing of throng, so a client can use it without
// pulling in the server.
package protocol

import (
	"unicode"
	"unicode/utf8"
)

// Message types, the "type" field of every message.
const (
	// Client to server.
	TypeJoin    = "join"
	TypeChat    = "chat"
	TypeLeave   = "leave"
	TypePing    = "ping"
	TypeRefresh = "refresh"
	TypeHistory = "history"
	// TypeMembers goes both ways: a member asks for its room's members, and
	// the server answers with them (Members).
	TypeMembers = "members"

	// Server to client.
	TypeConnected  = "connected"
	TypeJoined     = "joined"
	TypeUserJoined = "user-joined"
	TypeMessage    = "message"
	TypeLeft       = "left"
	TypeUserLeft   = "user-left"
	TypePong       = "pong"
	TypeRefreshed  = "refreshed"
	TypeError      = "error"
	// TypeHistoryPage answers TypeHistory.
	TypeHistoryPage = "history-page"
)

// Error codes, the "code" field of an error message.
const (
	CodeInvalidJSON     = "invalid_json"
	CodeInvalidMessage  = "invalid_message"
	CodeUnknownType     = "unknown_type"
	CodeNotInRoom       = "not_in_room"
	CodeAlreadyInRoom   = "already_in_room"
	CodeTooManyRooms    = "too_many_rooms"
	CodeRoomFull        = "room_full"
	CodeRateLimited     = "rate_limited"
	CodeInvalidToken    = "invalid_token"
	CodeTokenExpired    = "token_expired"
	CodeMessagesDropped = "messages_dropped"
	CodeUnavailable     = "unavailable"
	// CodeUnknownEpoch refuses a history request whose epoch is not the
	// room's: the offsets it names belong to a history that is gone.
	CodeUnknownEpoch = "unknown_epoch"
)

// Codes lists every error code, for tests that check another copy against
// this one.
func Codes() []string {
	return []string{
		CodeInvalidJSON, CodeInvalidMessage, CodeUnknownType, CodeNotInRoom,
		CodeAlreadyInRoom, CodeTooManyRooms, CodeRoomFull, CodeRateLimited,
		CodeInvalidToken, CodeTokenExpired, CodeMessagesDropped, CodeUnavailable,
		CodeUnknownEpoch,
	}
}

// Texts of error messages, the "message" field, as the seed's server words
// them. An invalid_message names the field after a colon ("Invalid message
// format: roomId"); unknown_type appends the type it did not know;
// messages_dropped starts with the count (" messages were dropped").
const (
	TextInvalidJSON     = "Invalid JSON"
	TextInvalidMessage  = "Invalid message format"
	TextUnknownType     = "Unknown message type: "
	TextNotInRoom       = "Not in this room"
	TextAlreadyInRoom   = "Already in this room"
	TextTooManyRooms    = "Too many rooms"
	TextRoomFull        = "Room is full"
	TextRateLimited     = "Rate limit exceeded. You are temporarily banned."
	TextInvalidToken    = "Invalid token"
	TextTokenExpired    = "Token expired"
	TextMessagesDropped = " messages were dropped"
	TextUnavailable     = "Rooms are not available"
	TextNoHistory       = "History is not available"
	TextUnknownEpoch    = "Unknown epoch: the room's history was lost"
)

// Limits on fields.
const (
	// MaxRoomID bounds a room id, in bytes.
	MaxRoomID = 128
	// MaxUserName bounds a user name, in characters.
	MaxUserName = 50
	// DefaultMaxContent bounds a chat message's content, in characters, unless
	// the server is configured otherwise (--max-content).
	DefaultMaxContent = 500
	// MaxEchoedType bounds the unknown type an unknown_type error repeats, in
	// bytes; a longer one is not repeated.
	MaxEchoedType = 64
	// MaxHistoryLimit bounds the messages one history request returns, and
	// the recent messages a join asks for ("history").
	MaxHistoryLimit = 100
	// DefaultHistoryLimit is a history request's limit when it names none,
	// and what a join that asks to recover but cannot gets as context.
	DefaultHistoryLimit = 50
	// MaxEpoch bounds an epoch, in bytes.
	MaxEpoch = 64
	// MaxMembersListed bounds the members a members reply lists; userCount
	// still counts them all.
	MaxMembersListed = 100
)

// ValidEpoch reports whether e is 1 to MaxEpoch bytes of A-Z a-z 0-9 _ - and
// ".", the alphabet of every epoch a server hands out.
func ValidEpoch[S ~string | ~[]byte](e S) bool {
	if len(e) == 0 || len(e) > MaxEpoch {
		return false
	}
	for i := 0; i < len(e); i++ {
		c := e[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// TimeLayout is the protocol's timestamp format: RFC 3339 in UTC with
// milliseconds, as JavaScript's Date.toISOString writes it.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// Printable reports whether s is valid UTF-8 made only of printable
// characters (unicode.IsPrint: letters, marks, numbers, punctuation, symbols
// and the ASCII space).
func Printable[S ~string | ~[]byte](s S) bool {
	_, ok := printableRunes(s)
	return ok
}

// printableRunes counts s's characters and reports whether all are printable
// and s is valid UTF-8. It allocates for neither form of s.
func printableRunes[S ~string | ~[]byte](s S) (int, bool) {
	n := 0
	for i := 0; i < len(s); n++ {
		r, size := rune(s[i]), 1
		if r >= utf8.RuneSelf {
			// At most 4 bytes: converting them does not allocate.
			r, size = utf8.DecodeRune([]byte(s[i:min(i+utf8.UTFMax, len(s))]))
			if r == utf8.RuneError && size == 1 {
				return n, false
			}
		}
		if !unicode.IsPrint(r) {
			return n, false
		}
		i += size
	}
	return n, true
}

// ValidRoomID reports whether id is 1 to MaxRoomID bytes of printable UTF-8.
func ValidRoomID[S ~string | ~[]byte](id S) bool {
	return len(id) > 0 && len(id) <= MaxRoomID && Printable(id)
}

// ValidUserName reports whether name is 1 to MaxUserName printable
// characters.
func ValidUserName[S ~string | ~[]byte](name S) bool {
	n, ok := printableRunes(name)
	return ok && n > 0 && n <= MaxUserName
}
