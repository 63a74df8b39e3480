package chat

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/server"
)

// TestMembersRequest asks for a room's members: every connection of the room,
// from both loops, with its name; only a member may ask.
func TestMembersRequest(t *testing.T) {
	ts := startChatServer(t, server.Options{}, unlimitedChat)
	var peers []*chatPeer
	for i := range 4 {
		p := dialPeer(t, ts)
		p.join("crew", fmt.Sprintf("P%d", i), i+1)
		if i > 0 {
			for _, q := range peers {
				q.expect("user-joined")
			}
		}
		peers = append(peers, p)
	}
	peers[3].send(`{"type":"members","roomId":"crew"}`)
	var got protocol.Members
	if err := json.Unmarshal([]byte(peers[3].expect("members").raw), &got); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range got.Members {
		ids = append(ids, m.UserID+"="+m.UserName)
	}
	slices.Sort(ids)
	var want []string
	for i, p := range peers {
		want = append(want, fmt.Sprintf("%s=P%d", p.id, i))
	}
	slices.Sort(want)
	if got.RoomID != "crew" || got.UserCount != 4 || !slices.Equal(ids, want) {
		t.Fatalf("members %+v, want %v", got, want)
	}

	// Not a member, a bad room id.
	outsider := dialPeer(t, ts)
	outsider.send(`{"type":"members","roomId":"crew"}`)
	if m := outsider.expect("error"); m.Code != protocol.CodeNotInRoom {
		t.Fatalf("outsider: %s", m.raw)
	}
	outsider.send(`{"type":"members"}`)
	if m := outsider.expect("error"); m.Code != protocol.CodeInvalidMessage || m.Field != "roomId" {
		t.Fatalf("no roomId: %s", m.raw)
	}
}

// More members than a reply lists: the list is bounded, the count is not.
func TestMembersRequestBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("opens over a hundred connections")
	}
	ts := startChatServer(t, server.Options{}, unlimitedChat)
	n := protocol.MaxMembersListed + 5
	var last *chatPeer
	for i := range n {
		last = dialPeer(t, ts)
		last.join("big", "N", i+1)
	}
	last.send(`{"type":"members","roomId":"big"}`)
	var got protocol.Members
	if err := json.Unmarshal([]byte(last.expect("members").raw), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Members) != protocol.MaxMembersListed || got.UserCount != n {
		t.Fatalf("%d listed of %d", len(got.Members), got.UserCount)
	}
}

// The rate_limited error says how long the ban lasts.
func TestRateLimitedSaysHowLong(t *testing.T) {
	ts := startClockChat(t, func(c *Handler) { c.Rate, c.Burst, c.Ban = 1, 1, 90*time.Second+time.Millisecond })
	p := dialPeer(t, ts)
	p.sync()
	p.send(`{"type":"ping"}`)
	m := p.expect("error")
	var e protocol.ServerError
	if err := json.Unmarshal([]byte(m.raw), &e); err != nil {
		t.Fatal(err)
	}
	if e.Code != protocol.CodeRateLimited || e.Message != protocol.TextRateLimited || e.RetryAfter != 91 {
		t.Fatalf("got %s, want rate_limited with retryAfter 91", m.raw)
	}
}
