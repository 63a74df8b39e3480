package chat

import (
	"testing"
	"unsafe"

	"github.com/throng-ws/throng/room"
)

// TestMemberList: a connection's memberships through adds and removes at
// every position, with the inline record listed once at most and never
// handed out twice, and the array behind rest given back once it is empty.
// A chatConn stays in the 96-byte size class.
func TestMemberList(t *testing.T) {
	if n := unsafe.Sizeof(chatConn{}); n > 96 {
		t.Errorf("chatConn is %d bytes, want at most 96", n)
	}
	cc := &chatConn{}
	want := map[*room.Member]bool{}
	check := func(step string) {
		t.Helper()
		if cc.rooms() != len(want) {
			t.Fatalf("%s: %d rooms, want %d", step, cc.rooms(), len(want))
		}
		seen := map[*room.Member]bool{}
		for i := range cc.rooms() {
			m := cc.at(i)
			if !want[m] || seen[m] {
				t.Fatalf("%s: at(%d) = %p, not one of the members or seen twice", step, i, m)
			}
			seen[m] = true
			if cc.index(m) != i {
				t.Fatalf("%s: index of at(%d) is %d", step, i, cc.index(m))
			}
		}
		if cc.rest != nil && len(*cc.rest) == 0 {
			t.Fatalf("%s: an empty array held", step)
		}
	}
	check("empty")
	var ms []*room.Member
	for i := range 5 {
		m := cc.newMember(string(rune('a'+i)), false)
		if (m == &cc.one) != (i == 0) {
			t.Fatalf("join %d: inline record %v, want it for the first join only", i, m == &cc.one)
		}
		if m.Sink != cc || m.Name != string(rune('a'+i)) {
			t.Fatalf("join %d: record %+v", i, m)
		}
		ms = append(ms, m)
		cc.add(m)
		want[m] = true
		check("add " + m.Name)
	}
	if cc.index(&room.Member{}) != -1 {
		t.Fatal("index of a stranger is not -1")
	}
	for _, i := range []int{2, 0, 2, 1, 0} { // the middle, the inline one, the last, ...
		m := cc.at(i)
		cc.remove(i)
		delete(want, m)
		check("remove " + m.Name)
	}
	if cc.rest != nil || cc.listed() {
		t.Fatal("an empty list holds something")
	}
	m := cc.newMember("again", true)
	if m == &cc.one {
		t.Fatal("the inline record was handed out a second time")
	}
	cc.add(m)
	want[m] = true
	check("add after empty")
}
