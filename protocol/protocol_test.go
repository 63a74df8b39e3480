package protocol

import (
	"strings"
	"testing"
)

func TestValidFields(t *testing.T) {
	cases := []struct {
		in         string
		room, name bool
	}{
		{"lobby", true, true},
		{"", false, false},
		{"a b", true, true},
		{"tab\there", false, false},
		{"nl\n", false, false},
		{"\x00", false, false},
		{"bad\xff", false, false},
		{"\xef\xbf\xbd", true, true},   // U+FFFD itself is printable
		{"\xed\xa0\x80", false, false}, // a surrogate's encoding is not UTF-8
		{"日本語", true, true},
		{strings.Repeat("x", MaxRoomID), true, false},
		{strings.Repeat("x", MaxRoomID+1), false, false},
		{strings.Repeat("é", MaxUserName), true, true}, // 100 bytes, 50 characters
		{strings.Repeat("é", MaxUserName+1), true, false},
		{strings.Repeat("é", MaxRoomID/2+1), false, false},
		{"\u2028", false, false},
	}
	for _, c := range cases {
		if got := ValidRoomID(c.in); got != c.room {
			t.Errorf("ValidRoomID(%q) = %v, want %v", c.in, got, c.room)
		}
		if got := ValidRoomID([]byte(c.in)); got != c.room {
			t.Errorf("ValidRoomID([]byte(%q)) = %v, want %v", c.in, got, c.room)
		}
		if got := ValidUserName(c.in); got != c.name {
			t.Errorf("ValidUserName(%q) = %v, want %v", c.in, got, c.name)
		}
	}
}

func TestValidFieldsNoAlloc(t *testing.T) {
	b := []byte(strings.Repeat("ünïcödé ", 40))
	if n := testing.AllocsPerRun(100, func() {
		Printable(b)
		ValidUserName(b[:20])
	}); n != 0 {
		t.Fatalf("%v allocations, want 0", n)
	}
}

func TestCodesDistinct(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range Codes() {
		if c == "" || seen[c] {
			t.Fatalf("code %q empty or listed twice", c)
		}
		seen[c] = true
	}
}
