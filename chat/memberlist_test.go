package chat

import (
	"testing"
	"unsafe"

	"github.com/throng-ws/throng/room"
)

// TestMemberList: a connection's memberships through adds and removes at
// every position, with the array behind rest given back once one is left.
// A chatConn stays in the 48-byte size class.
func TestMemberList(t *testing.T) {
	if n := unsafe.Sizeof(chatConn{}); n > 48 {
		t.Errorf("chatConn is %d bytes, want at most 48", n)
	}
	ms := make([]*room.Member, 5)
	for i := range ms {
		ms[i] = &room.Member{Name: string(rune('a' + i))}
	}
	var l memberList
	want := map[*room.Member]bool{}
	check := func(step string) {
		t.Helper()
		if l.len() != len(want) {
			t.Fatalf("%s: len %d, want %d", step, l.len(), len(want))
		}
		seen := map[*room.Member]bool{}
		for i := range l.len() {
			m := l.at(i)
			if !want[m] || seen[m] {
				t.Fatalf("%s: at(%d) = %v, not one of the members or seen twice", step, i, m)
			}
			seen[m] = true
			if l.index(m) != i {
				t.Fatalf("%s: index of at(%d) is %d", step, i, l.index(m))
			}
		}
		if (l.rest != nil) != (len(want) > 1) {
			t.Fatalf("%s: rest %v with %d members", step, l.rest, len(want))
		}
	}
	check("empty")
	for _, m := range ms {
		l.add(m)
		want[m] = true
		check("add " + m.Name)
	}
	if l.index(&room.Member{}) != -1 {
		t.Fatal("index of a stranger is not -1")
	}
	for _, i := range []int{2, 0, 2, 1, 0} { // the middle, the inline one, the last, ...
		m := l.at(i)
		l.remove(i)
		delete(want, m)
		check("remove " + m.Name)
	}
	l.add(ms[0])
	want[ms[0]] = true
	check("add after empty")
}
