package redact

import (
	"errors"
	"log/slog"
	"testing"
)

func TestString(t *testing.T) {
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
		if got := String(tc.in); got != tc.want {
			t.Errorf("String(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestAttr(t *testing.T) {
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
		if got := Attr(nil, tc.in).Value.String(); got != tc.want {
			t.Errorf("Attr(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestURLUserinfo(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                  "nats://127.0.0.1:4222",
		"nats://user:secret@host:4222":           "nats://REDACTED@host:4222",
		"tls://tok@host":                         "tls://REDACTED@host",
		"user:pass@host":                         "REDACTED@host",
		"nats://a:b@h1:4222,nats://c:d@h2:4222":  "nats://REDACTED@h1:4222,nats://REDACTED@h2:4222",
		`dial "nats://u:p@h/x?token=t": refused`: `dial "nats://REDACTED@h/x?token=REDACTED": refused`,
		"mail alice@example.com about it":        "mail alice@example.com about it",
	} {
		if got := String(in); got != want {
			t.Errorf("String(%q) = %q, want %q", in, got, want)
		}
	}
}
