package chat

import "github.com/throng-ws/throng/room"

// memberList is a connection's memberships, one per room it is in. Nearly
// every connection is in one room or none, so the first is held inline and
// the rest, when there are any, behind one pointer: 16 bytes and no
// allocation of their own for one room, where a slice would be a 24-byte
// header and an 8-byte array. Order is not kept: remove moves the last
// member into the gap.
type memberList struct {
	first *room.Member
	rest  *[]*room.Member // nil unless the connection is in two rooms or more
}

func (l *memberList) len() int {
	switch {
	case l.first == nil:
		return 0
	case l.rest == nil:
		return 1
	}
	return 1 + len(*l.rest)
}

func (l *memberList) at(i int) *room.Member {
	if i == 0 {
		return l.first
	}
	return (*l.rest)[i-1]
}

func (l *memberList) add(m *room.Member) {
	switch {
	case l.first == nil:
		l.first = m
	case l.rest == nil:
		l.rest = &[]*room.Member{m}
	default:
		*l.rest = append(*l.rest, m)
	}
}

// remove takes out the i-th member, moving the last into its place.
func (l *memberList) remove(i int) {
	if l.rest == nil {
		l.first = nil
		return
	}
	rest := *l.rest
	last := len(rest) - 1
	if i == 0 {
		l.first = rest[last]
	} else {
		rest[i-1] = rest[last]
	}
	rest[last] = nil
	if last == 0 {
		l.rest = nil // back to one room: give the array back
	} else {
		*l.rest = rest[:last]
	}
}

// index is m's position, or -1.
func (l *memberList) index(m *room.Member) int {
	for i := range l.len() {
		if l.at(i) == m {
			return i
		}
	}
	return -1
}

// name returns b as a string, sharing the bytes of the user id or of a name
// the connection already joined under when it is the same, as it usually
// is: a member's name then costs no allocation.
func (cc *chatConn) name(b []byte) string {
	if u := cc.c.UserID(); u == string(b) {
		return u
	}
	for i := range cc.rooms.len() {
		if m := cc.rooms.at(i); m.Name == string(b) {
			return m.Name
		}
	}
	return string(b)
}
