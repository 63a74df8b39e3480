package cluster

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestRoomSubject(t *testing.T) {
	n, err := New(Options{URLs: []string{"nats://127.0.0.1:4222"}, NodeID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{
		"general", "a.b", "*", ">", "a.*.>", "with space", "tab\there", "ünïcödé ☃", "..", "=", "a_b-c",
		strings.Repeat("x", 128), strings.Repeat("é", 64),
	} {
		subj := n.RoomSubject(id)
		tok, ok := strings.CutPrefix(subj, "throng.room.")
		if !ok || !validToken(tok) {
			t.Errorf("room %q: subject %q is not the prefix and one plain token", id, subj)
		}
		if got, ok := n.roomOf(subj); !ok || got != id {
			t.Errorf("room %q: roomOf(%q) = %q, %v", id, subj, got, ok)
		}
	}
	for _, bad := range []string{"throng.room.***", "other.room.YQ", "throng.room"} {
		if _, ok := n.roomOf(bad); ok {
			t.Errorf("roomOf(%q) accepted", bad)
		}
	}
}

func TestNewOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		ok   bool
	}{
		{"defaults", Options{URLs: []string{"nats://x:4222"}}, true},
		{"no url", Options{}, false},
		{"empty url", Options{URLs: []string{" "}}, false},
		{"node id with dot", Options{URLs: []string{"nats://x"}, NodeID: "a.b"}, false},
		{"node id too long", Options{URLs: []string{"nats://x"}, NodeID: strings.Repeat("a", MaxNodeID+1)}, false},
		{"bad prefix", Options{URLs: []string{"nats://x"}, Prefix: "a..b"}, false},
		{"dotted prefix", Options{URLs: []string{"nats://x"}, Prefix: "prod.chat"}, true},
		{"dead-after too short", Options{URLs: []string{"nats://x"}, Heartbeat: time.Second, DeadAfter: 1500 * time.Millisecond}, false},
		{"negative", Options{URLs: []string{"nats://x"}, OutboundQueue: -1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := New(tc.o)
			if (err == nil) != tc.ok {
				t.Fatalf("New: %v, want ok=%v", err, tc.ok)
			}
			if err == nil && (n.ID() == "" || n.Options().DeadAfter == 0 || n.Options().Heartbeat == 0) {
				t.Fatalf("defaults not filled in: %+v", n.Options())
			}
		})
	}
}

// feed is a peer table fed the state stream of node "b" by hand.
type feed struct {
	t    *testing.T
	tab  peerTable
	now  time.Time
	inc  uint64
	seq  uint64
	asks int
}

func newFeed(t *testing.T) *feed {
	f := &feed{t: t, now: time.Unix(1_800_000_000, 0), inc: 1}
	f.tab.init("a", 10*time.Second)
	return f
}

// send numbers m as b's next message and applies it.
func (f *feed) send(m stateMsg) applied {
	f.seq++
	return f.raw(m, f.seq)
}

func (f *feed) raw(m stateMsg, seq uint64) applied {
	m.Node, m.Inc, m.Seq, m.Sent = "b", f.inc, seq, f.now.Add(-3*time.Millisecond).UnixNano()
	a := f.tab.apply(&m, f.now, time.Second)
	if a.ask {
		f.asks++
	}
	return a
}

func (f *feed) peer() PeerStatus {
	for _, p := range f.tab.status(f.now) {
		if p.ID == "b" {
			return p
		}
	}
	return PeerStatus{ID: "(gone)"}
}

func TestPeerSnapshotThenDeltas(t *testing.T) {
	f := newFeed(t)
	a := f.send(stateMsg{Kind: kindSnap, First: true, Last: true, Rooms: map[string]int32{"r": 2, "s": 1}, Users: map[string]int32{"u": 1}})
	if !a.joined || a.ask {
		t.Fatalf("first snapshot: %+v, want joined and no ask", a)
	}
	if p := f.peer(); !p.Synced || p.Members != 3 || p.Lag != 3*time.Millisecond {
		t.Fatalf("after snapshot: %+v", p)
	}
	f.send(stateMsg{Kind: kindDelta, Rooms: map[string]int32{"r": 5, "s": 0}, Users: map[string]int32{"u": 2, "v": 1}})
	if got := f.tab.room("r", f.now); got != 5 {
		t.Fatalf("room r = %d, want 5", got)
	}
	if got := f.tab.room("s", f.now); got != 0 {
		t.Fatalf("room s = %d, want 0 (removed)", got)
	}
	if got := f.tab.user("u", f.now) + f.tab.user("v", f.now); got != 3 {
		t.Fatalf("users = %d, want 3", got)
	}
	// The same delta again (a duplicate) changes nothing.
	f.raw(stateMsg{Kind: kindDelta, Rooms: map[string]int32{"r": 1}}, f.seq)
	if got := f.tab.room("r", f.now); got != 5 {
		t.Fatalf("room r after a duplicate = %d, want 5", got)
	}
	if p := f.peer(); p.Lost != 0 || p.Received != 2 || f.asks != 0 {
		t.Fatalf("peer %+v, asks %d", p, f.asks)
	}
}

func TestPeerGapAsksForSnapshot(t *testing.T) {
	f := newFeed(t)
	f.send(stateMsg{Kind: kindSnap, First: true, Last: true, Rooms: map[string]int32{"r": 1}})
	f.seq += 3 // three messages lost
	if a := f.send(stateMsg{Kind: kindHeartbeat}); !a.ask {
		t.Fatal("a gap did not ask for a snapshot")
	}
	p := f.peer()
	if p.Lost != 3 || p.Synced {
		t.Fatalf("after a gap of 3: %+v", p)
	}
	// Counts known so far are kept while the snapshot is on its way.
	if got := f.tab.room("r", f.now); got != 1 {
		t.Fatalf("room r = %d, want 1", got)
	}
	f.now = f.now.Add(500 * time.Millisecond)
	if a := f.send(stateMsg{Kind: kindHeartbeat}); a.ask {
		t.Fatal("asked again within a heartbeat")
	}
	f.now = f.now.Add(600 * time.Millisecond)
	if a := f.send(stateMsg{Kind: kindHeartbeat}); !a.ask {
		t.Fatal("did not ask again after a heartbeat")
	}
	// A snapshot in two parts, the second lost: nothing is replaced.
	f.send(stateMsg{Kind: kindSnap, First: true, Rooms: map[string]int32{"x": 9}})
	f.seq++
	f.send(stateMsg{Kind: kindHeartbeat})
	if got := f.tab.room("x", f.now); got != 0 || f.peer().Synced {
		t.Fatalf("half a snapshot was applied: x = %d, %+v", got, f.peer())
	}
	// A whole one, in parts, replaces everything at its last part.
	f.send(stateMsg{Kind: kindSnap, First: true, Rooms: map[string]int32{"x": 9}})
	if got := f.tab.room("x", f.now); got != 0 {
		t.Fatalf("a snapshot's first part was applied before its last: x = %d", got)
	}
	f.send(stateMsg{Kind: kindSnap, Last: true, Rooms: map[string]int32{"y": 2}})
	if x, y, r := f.tab.room("x", f.now), f.tab.room("y", f.now), f.tab.room("r", f.now); x != 9 || y != 2 || r != 0 || !f.peer().Synced {
		t.Fatalf("after the snapshot: x=%d y=%d r=%d %+v", x, y, r, f.peer())
	}
}

func TestPeerFirstHeardMidStream(t *testing.T) {
	f := newFeed(t)
	f.seq = 41
	if a := f.send(stateMsg{Kind: kindHeartbeat}); !a.joined || !a.ask {
		t.Fatalf("a node first heard mid-stream: %+v, want joined and ask", a)
	}
	if p := f.peer(); p.Lost != 0 || p.Synced {
		t.Fatalf("%+v: what came before we listened is not loss", p)
	}
}

func TestPeerRestartAndBye(t *testing.T) {
	f := newFeed(t)
	f.send(stateMsg{Kind: kindSnap, First: true, Last: true, Rooms: map[string]int32{"r": 4}})
	// The node restarts: a new incarnation, its sequence from 1, nothing lost.
	f.inc, f.seq = 2, 0
	if a := f.send(stateMsg{Kind: kindSnap, First: true, Last: true, Rooms: map[string]int32{"s": 1}}); !a.joined {
		t.Fatal("a new incarnation was not a new node")
	}
	if r, s := f.tab.room("r", f.now), f.tab.room("s", f.now); r != 0 || s != 1 || f.peer().Lost != 0 {
		t.Fatalf("after restart: r=%d s=%d %+v", r, s, f.peer())
	}
	// A straggler from the old incarnation is ignored.
	f.inc = 1
	f.raw(stateMsg{Kind: kindDelta, Rooms: map[string]int32{"r": 7}}, 99)
	f.inc = 2
	if r := f.tab.room("r", f.now); r != 0 {
		t.Fatalf("old incarnation applied: r=%d", r)
	}
	if a := f.send(stateMsg{Kind: kindBye}); !a.left {
		t.Fatal("bye not reported")
	}
	if s := f.tab.room("s", f.now); s != 0 || f.peer().ID != "(gone)" {
		t.Fatalf("after bye: s=%d %+v", s, f.peer())
	}
}

func TestPeerDeadAfterSilence(t *testing.T) {
	f := newFeed(t)
	f.send(stateMsg{Kind: kindSnap, First: true, Last: true, Rooms: map[string]int32{"r": 3}, Users: map[string]int32{"u": 1}})
	f.now = f.now.Add(10*time.Second - time.Millisecond)
	if r := f.tab.room("r", f.now); r != 3 {
		t.Fatalf("just before dead-after: r=%d, want 3", r)
	}
	if dead := f.tab.sweep(f.now); len(dead) != 0 {
		t.Fatalf("swept a live node: %v", dead)
	}
	f.now = f.now.Add(time.Millisecond)
	if r, u, l := f.tab.room("r", f.now), f.tab.user("u", f.now), f.tab.list("", f.now); r != 0 || u != 0 || len(l) != 0 {
		t.Fatalf("at dead-after: r=%d u=%d list=%v, want nothing", r, u, l)
	}
	if dead := f.tab.sweep(f.now); len(dead) != 1 || dead[0] != "b" {
		t.Fatalf("sweep = %v", dead)
	}
	// Heard again: a new node to this one, asked for a snapshot.
	if a := f.send(stateMsg{Kind: kindHeartbeat}); !a.joined || !a.ask {
		t.Fatalf("back from the dead: %+v", a)
	}
}

func TestStateBuilderParts(t *testing.T) {
	var msgs []*stateMsg
	emit := func(m *stateMsg) { msgs = append(msgs, m) }

	// An empty delta is not sent; an empty snapshot is, as one whole part.
	b := stateBuilder{emit: emit, kind: kindDelta}
	b.finish()
	if len(msgs) != 0 {
		t.Fatalf("empty delta sent: %d", len(msgs))
	}
	b = stateBuilder{emit: emit, kind: kindSnap}
	b.finish()
	if len(msgs) != 1 || !msgs[0].First || !msgs[0].Last {
		t.Fatalf("empty snapshot: %+v", msgs)
	}

	// A large snapshot is cut into parts, each under the payload limit, first
	// and last marked, every entry in exactly one part.
	msgs = nil
	b = stateBuilder{emit: emit, kind: kindSnap}
	const rooms = 5000
	id := func(i int) string {
		return strings.Repeat("<", 100) + string(rune('a'+i%26)) + strings.Repeat("x", i%7) + "#" + itoa(i)
	}
	for i := range rooms {
		b.room(id(i), i+1)
	}
	b.user("u", 1)
	b.finish()
	if len(msgs) < 2 {
		t.Fatalf("%d parts, want several", len(msgs))
	}
	seen := map[string]int32{}
	for i, m := range msgs {
		if m.First != (i == 0) || m.Last != (i == len(msgs)-1) {
			t.Fatalf("part %d: first=%v last=%v", i, m.First, m.Last)
		}
		raw, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(raw) > 1<<20 {
			t.Fatalf("part %d is %d bytes, over the broker's 1 MiB", i, len(raw))
		}
		for k, v := range m.Rooms {
			if _, dup := seen[k]; dup {
				t.Fatalf("room %q in two parts", k)
			}
			seen[k] = v
		}
	}
	if len(seen) != rooms {
		t.Fatalf("%d rooms in the parts, want %d", len(seen), rooms)
	}
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}
