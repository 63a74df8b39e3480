package server

import (
	"errors"
	"log/slog"
	"testing"
)

func TestRedactURI(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/ws", "/ws"},
		{"/ws?token=abc.def.ghi", "/ws?token=REDACTED"},
		{"/ws?room=1&token=abc&x=2", "/ws?room=1&token=REDACTED&x=2"},
		{"/ws?TOKEN=abc", "/ws?TOKEN=REDACTED"},
		{"/ws?tok%65n=abc", "/ws?tok%65n=REDACTED"},
		{"/ws?access_token=a&api_key=b&key=c&secret=d", "/ws?access_token=REDACTED&api_key=REDACTED&key=REDACTED&secret=REDACTED"},
		{"/ws?token=", "/ws?token=REDACTED"},
		{"/ws?tokens=abc&mytoken=abc", "/ws?tokens=abc&mytoken=abc"},
		{"/ws?token=a#frag", "/ws?token=REDACTED#frag"},
		{"/ws?a=1;token=b", "/ws?a=1;token=REDACTED"},
		{"GET /ws?token=abc HTTP/1.1", "GET /ws?token=REDACTED HTTP/1.1"},
		{`dial "ws://h/ws?token=abc": refused`, `dial "ws://h/ws?token=REDACTED": refused`},
		{"Authorization: Bearer abc.def", "Authorization: Bearer REDACTED"},
		{"throng.v1, bearer.abc.def", "throng.v1, bearer.REDACTED"},
		{"no secrets. here = there", "no secrets. here = there"},
	} {
		if got := RedactURI(tc.in); got != tc.want {
			t.Errorf("RedactURI(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestRedactAttr(t *testing.T) {
	for _, tc := range []struct {
		in   slog.Attr
		want string
	}{
		{slog.String("token", "abc"), Redacted},
		{slog.String("api_key", "abc"), Redacted},
		{slog.String("Authorization", "Bearer abc"), Redacted},
		{slog.String("jwt_secret", "abc"), Redacted},
		{slog.String("uri", "/ws?token=abc"), "/ws?token=REDACTED"},
		{slog.Any("err", errors.New("bad /ws?token=abc")), "bad /ws?token=REDACTED"},
		{slog.String("user", "alice"), "alice"},
		{slog.Int("conns", 3), "3"},
	} {
		if got := RedactAttr(nil, tc.in).Value.String(); got != tc.want {
			t.Errorf("RedactAttr(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
