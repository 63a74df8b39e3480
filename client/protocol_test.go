package client

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/protocol"
)

func TestEncode(t *testing.T) {
	cases := []struct {
		m    Msg
		want string
	}{
		{Join{RoomID: "r", UserName: "Ann"}, `{"type":"join","roomId":"r","userName":"Ann"}`},
		{Chat{RoomID: "r", Content: `say "hi" <b>`}, `{"type":"chat","roomId":"r","content":"say \"hi\" \u003cb\u003e"}`},
		{Leave{RoomID: "r"}, `{"type":"leave","roomId":"r"}`},
		{Ping{}, `{"type":"ping"}`},
		{Refresh{Token: "t"}, `{"type":"refresh","token":"t"}`},
		{&Refreshed{}, `{"type":"refreshed"}`},
		{&ServerError{Code: "x", Message: "y"}, `{"type":"error","code":"x","message":"y"}`},
	}
	for _, c := range cases {
		got, err := Encode(c.m)
		if err != nil {
			t.Fatalf("Encode(%#v): %v", c.m, err)
		}
		if string(got) != c.want {
			t.Errorf("Encode(%#v) = %s, want %s", c.m, got, c.want)
		}
	}
}

// TestDecode reads what the server writes, byte for byte as README shows it.
func TestDecode(t *testing.T) {
	ts := time.Date(2026, 3, 14, 15, 9, 26, 535_000_000, time.UTC)
	cases := []struct {
		in   string
		want Msg
	}{
		{`{"type":"connected","userId":"u1","timestamp":"2026-03-14T15:09:26.535Z"}`, &Connected{UserID: "u1", Timestamp: ts}},
		{`{"type":"joined","roomId":"r","userId":"u1","userCount":3}`, &Joined{RoomID: "r", UserID: "u1", UserCount: 3}},
		{`{"type":"user-joined","roomId":"r","userId":"u2","userName":"Bo","userCount":2}`, &UserJoined{RoomID: "r", UserID: "u2", UserName: "Bo", UserCount: 2}},
		{`{"type":"message","roomId":"r","userId":"u2","userName":"Bo","content":"hi","timestamp":"2026-03-14T15:09:26.535Z"}`,
			&Message{RoomID: "r", UserID: "u2", UserName: "Bo", Content: "hi", Timestamp: ts}},
		{`{"type":"left","roomId":"r"}`, &Left{RoomID: "r"}},
		{`{"type":"user-left","roomId":"r","userId":"u2","userName":"Bo","userCount":1}`, &UserLeft{RoomID: "r", UserID: "u2", UserName: "Bo", UserCount: 1}},
		{`{"type":"pong"}`, &Pong{}},
		{`{"type":"refreshed","expiresAt":"2026-03-14T15:09:26.535Z"}`, &Refreshed{ExpiresAt: ts}},
		{`{"type":"refreshed"}`, &Refreshed{}},
		{`{"type":"error","code":"invalid_message","message":"Invalid message format: roomId","field":"roomId"}`,
			&ServerError{Code: "invalid_message", Message: "Invalid message format: roomId", Field: "roomId"}},
		{`{"type":"error","code":"messages_dropped","message":"3 messages were dropped","count":3}`,
			&ServerError{Code: "messages_dropped", Message: "3 messages were dropped", Count: 3}},
		{`{"type":"join","roomId":"r","userName":"Ann","extra":true}`, &Join{RoomID: "r", UserName: "Ann"}},
		{`{"type":"chat","roomId":"r","content":"c"}`, &Chat{RoomID: "r", Content: "c"}},
		{`{"type":"leave","roomId":"r"}`, &Leave{RoomID: "r"}},
		{`{"type":"ping"}`, &Ping{}},
		{`{"type":"refresh","token":"t"}`, &Refresh{Token: "t"}},
		{`{"type":"typing","roomId":"r"}`, &Unknown{Kind: "typing", Raw: json.RawMessage(`{"type":"typing","roomId":"r"}`)}},
	}
	for _, c := range cases {
		got, err := Decode([]byte(c.in))
		if err != nil {
			t.Fatalf("Decode(%s): %v", c.in, err)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("Decode(%s) = %#v, want %#v", c.in, got, c.want)
		}
		if got.Type() != c.want.Type() {
			t.Errorf("Type() = %q, want %q", got.Type(), c.want.Type())
		}
	}
	for _, bad := range []string{``, `[]`, `{}`, `{"type":3}`, `{"type":"joined","userCount":"x"}`, `{"type":"joined"`} {
		if m, err := Decode([]byte(bad)); err == nil {
			t.Errorf("Decode(%s) = %#v, want an error", bad, m)
		}
	}
	if _, err := Decode([]byte(`{"roomId":"r"}`)); !errors.Is(err, ErrNoType) {
		t.Errorf("no type: %v, want ErrNoType", err)
	}
}

// TestCodesMatchServer keeps this package's copy of the error codes in step
// with the server's, which it does not import.
func TestCodesMatchServer(t *testing.T) {
	pairs := [][2]string{
		{CodeInvalidJSON, protocol.CodeInvalidJSON},
		{CodeInvalidMessage, protocol.CodeInvalidMessage},
		{CodeUnknownType, protocol.CodeUnknownType},
		{CodeNotInRoom, protocol.CodeNotInRoom},
		{CodeAlreadyInRoom, protocol.CodeAlreadyInRoom},
		{CodeTooManyRooms, protocol.CodeTooManyRooms},
		{CodeRoomFull, protocol.CodeRoomFull},
		{CodeRateLimited, protocol.CodeRateLimited},
		{CodeInvalidToken, protocol.CodeInvalidToken},
		{CodeTokenExpired, protocol.CodeTokenExpired},
		{CodeMessagesDropped, protocol.CodeMessagesDropped},
		{CodeUnavailable, protocol.CodeUnavailable},
	}
	for _, p := range pairs {
		if p[0] != p[1] {
			t.Errorf("code %q, server says %q", p[0], p[1])
		}
	}
}

func TestTokenExpiry(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tok, err := auth.Mint(testSecret, "", "u", time.Hour, "", now)
	if err != nil {
		t.Fatal(err)
	}
	if got := tokenExpiry(tok); !got.Equal(now.Add(time.Hour)) {
		t.Errorf("tokenExpiry = %v, want %v", got, now.Add(time.Hour))
	}
	forever, _ := auth.Mint(testSecret, "", "u", 0, "", now)
	for _, s := range []string{"", "a.b", "a.!!.c", "a.e30.c", forever} {
		if got := tokenExpiry(s); !got.IsZero() {
			t.Errorf("tokenExpiry(%q) = %v, want zero", s, got)
		}
	}
}

// FuzzDecode feeds arbitrary bytes, split where the fuzzer likes, to Decode:
// it must never panic, and what it accepts must survive a round trip.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"type":"message","roomId":"r","userId":"u","userName":"n","content":"c","timestamp":"2026-03-14T15:09:26.535Z"}`,
		`{"type":"error","code":"rate_limited","message":"m"}`,
		`{"type":"joined","roomId":"r","userId":"u","userCount":1}`,
		`{"type":"x"}`, `{"type":null}`, `{`, `"type"`,
	} {
		f.Add([]byte(s), 3)
	}
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		// Decode sees whole messages; a split only checks that a prefix never
		// decodes as something else than an error or a valid message.
		if split > 0 && split < len(data) {
			Decode(data[:split])
		}
		m, err := Decode(data)
		if err != nil {
			return
		}
		b, err := Encode(m)
		if err != nil {
			t.Fatalf("Encode(Decode(%q)): %v", data, err)
		}
		m2, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%q))) = %q: %v", data, b, err)
		}
		if m2.Type() != m.Type() {
			t.Fatalf("round trip changed the type: %q → %q", m.Type(), m2.Type())
		}
	})
}
