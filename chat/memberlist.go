package chat

import (
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// chatConn is one connection's chat state, its server.Conn's Data, made at
// its first message, so a connection that only listens costs nothing here
// until it joins: 96 bytes, one allocation, for a connection in one room.
//
// Nearly every connection joins one room, so the record of its first
// membership is held inline (one) and the rest, when there are any, behind
// one pointer. The inline record serves one join only: once that membership
// ends, a broadcast already on its way may still hold it, so a later join
// gets a record of its own. The list's order is not kept.
type chatConn struct {
	c    *server.Conn
	rest *[]*room.Member // the memberships besides one; nil when there are none
	rate server.RateState
	one  room.Member // the first join's record; its Flags say whether it is used and listed
}

// Flags of chatConn.one.
const (
	oneUsed   uint8 = 1 << iota // handed out by newMember: never again
	oneListed                   // a membership in the list
)

// newMember returns the record for a join: the inline one, the first time.
func (cc *chatConn) newMember(name string, deflate bool) *room.Member {
	if cc.one.Flags&oneUsed == 0 {
		cc.one = room.Member{Sink: cc, Name: name, Deflate: deflate, Flags: oneUsed}
		return &cc.one
	}
	return &room.Member{Sink: cc, Name: name, Deflate: deflate}
}

func (cc *chatConn) listed() bool { return cc.one.Flags&oneListed != 0 }

// rooms is the number of memberships.
func (cc *chatConn) rooms() int {
	n := 0
	if cc.listed() {
		n++
	}
	if cc.rest != nil {
		n += len(*cc.rest)
	}
	return n
}

// at is the i-th membership, 0 <= i < rooms().
func (cc *chatConn) at(i int) *room.Member {
	if cc.listed() {
		if i == 0 {
			return &cc.one
		}
		i--
	}
	return (*cc.rest)[i]
}

// add lists a membership.
func (cc *chatConn) add(m *room.Member) {
	switch {
	case m == &cc.one:
		cc.one.Flags |= oneListed
	case cc.rest == nil:
		cc.rest = &[]*room.Member{m}
	default:
		*cc.rest = append(*cc.rest, m)
	}
}

// remove takes the i-th membership off the list, moving another into its
// place.
func (cc *chatConn) remove(i int) {
	if cc.listed() {
		if i == 0 {
			cc.one.Flags &^= oneListed
			return
		}
		i--
	}
	rest := *cc.rest
	last := len(rest) - 1
	rest[i] = rest[last]
	rest[last] = nil
	if last == 0 {
		cc.rest = nil // give the array back
	} else {
		*cc.rest = rest[:last]
	}
}

// index is m's position in the list, or -1.
func (cc *chatConn) index(m *room.Member) int {
	for i := range cc.rooms() {
		if cc.at(i) == m {
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
	for i := range cc.rooms() {
		if m := cc.at(i); m.Name == string(b) {
			return m.Name
		}
	}
	return string(b)
}
