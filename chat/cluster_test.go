package chat

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// fakeCluster is a Cluster whose other nodes are a table the test fills in.
type fakeCluster struct {
	mu        sync.Mutex
	up        bool                         // Publish succeeds
	remote    map[string]int               // room → members elsewhere
	members   map[string][]room.MemberInfo // room → their member lists
	changed   []string
	published []string // payloads, in order
}

func (f *fakeCluster) Changed(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changed = append(f.changed, id)
}

func (f *fakeCluster) Remote(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.remote[id]
}

func (f *fakeCluster) Publish(id string, payload []byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.up {
		return false
	}
	f.published = append(f.published, string(payload))
	return true
}

func (f *fakeCluster) RemoteRooms(after string) []room.Info {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []room.Info
	for id, n := range f.remote {
		if id > after {
			out = append(out, room.Info{ID: id, Members: n})
		}
	}
	return out
}

func (f *fakeCluster) RemoteMembers(ctx context.Context, id string) ([]room.MemberInfo, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.members[id], false, nil
}

func (f *fakeCluster) publishedOfType(typ string) []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []map[string]any
	for _, p := range f.published {
		var m map[string]any
		json.Unmarshal([]byte(p), &m)
		if m["type"] == typ {
			out = append(out, m)
		}
	}
	return out
}

func readMap(t *testing.T, c interface{ ReadJSON(any) error }) map[string]any {
	t.Helper()
	var m map[string]any
	if err := c.ReadJSON(&m); err != nil {
		t.Fatalf("read: %v", err)
	}
	return m
}

// TestChatClusterHooks: with a Cluster, joins and leaves are announced and
// counted with the other nodes' members, every message is written locally and
// published once, and a message from another node reaches the local members.
func TestChatClusterHooks(t *testing.T) {
	fc := &fakeCluster{up: true, remote: map[string]int{"r": 5, "elsewhere": 2},
		members: map[string][]room.MemberInfo{"r": {{UserID: "far", Name: "Far"}}}}
	ts := startChatServer(t, server.Options{}, func(c *Handler) { c.Rate = -1; c.Cluster = fc })
	a := dial(t, ts.URL("/ws"), nil)
	readMap(t, a) // connected
	a.WriteJSON(map[string]string{"type": "join", "roomId": "r", "userName": "A"})
	if m := readMap(t, a); m["type"] != "joined" || m["userCount"] != float64(6) {
		t.Fatalf("joined %v, want userCount 1 here + 5 elsewhere", m)
	}
	if uj := fc.publishedOfType("user-joined"); len(uj) != 1 || uj[0]["userCount"] != float64(6) || uj[0]["userName"] != "A" {
		t.Fatalf("published user-joined %v", uj)
	}
	a.WriteJSON(map[string]string{"type": "chat", "roomId": "r", "content": "hi"})
	if m := readMap(t, a); m["type"] != "message" || m["content"] != "hi" {
		t.Fatalf("the sender read %v", m)
	}
	if msgs := fc.publishedOfType("message"); len(msgs) != 1 || msgs[0]["content"] != "hi" {
		t.Fatalf("published messages %v, want the one", msgs)
	}
	// From another node: written here once, not published again.
	if n := ts.Chat.Deliver("r", []byte(`{"type":"message","roomId":"r","userId":"far","userName":"Far","content":"yo","timestamp":"x"}`)); n != 1 {
		t.Fatalf("Deliver went to %d, want 1", n)
	}
	if m := readMap(t, a); m["content"] != "yo" {
		t.Fatalf("read %v, want the delivered message", m)
	}
	if msgs := fc.publishedOfType("message"); len(msgs) != 1 {
		t.Fatalf("a delivered message was published again: %v", msgs)
	}

	mux := ts.HTTPHandler()
	api := &API{Key: testAPIKey, Chat: ts.Chat, Rooms: ts.Rooms}
	if err := api.Register(mux); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	as := &apiServer{Server: hs, ts: ts}
	var list struct{ Rooms []room.Info }
	as.do(t, "GET", "/api/rooms", testAPIKey, "", &list)
	if len(list.Rooms) != 2 || list.Rooms[0] != (room.Info{ID: "elsewhere", Members: 2}) || list.Rooms[1] != (room.Info{ID: "r", Members: 6}) {
		t.Fatalf("GET /api/rooms = %+v", list.Rooms)
	}
	var rm struct {
		Count   int
		Members []room.MemberInfo
	}
	as.do(t, "GET", "/api/rooms/r", testAPIKey, "", &rm)
	if rm.Count != 2 || len(rm.Members) != 2 {
		t.Fatalf("GET /api/rooms/r = %+v, want A here and Far elsewhere", rm)
	}
	var pub map[string]any
	as.do(t, "POST", "/api/rooms/r/messages", testAPIKey, `{"content":"x"}`, &pub)
	if pub["recipients"] != float64(6) || pub["local"] != float64(1) || pub["remote"] != float64(5) || pub["published"] != true {
		t.Fatalf("publish with the broker up answered %v", pub)
	}
	readMap(t, a)
	// The broker down: only the local member has it, and the answer says so.
	fc.mu.Lock()
	fc.up = false
	fc.mu.Unlock()
	as.do(t, "POST", "/api/rooms/r/messages", testAPIKey, `{"content":"y"}`, &pub)
	if pub["recipients"] != float64(1) || pub["remote"] != float64(0) || pub["published"] != false {
		t.Fatalf("publish with the broker down answered %v", pub)
	}
	if m := readMap(t, a); m["content"] != "y" {
		t.Fatalf("read %v, want the local delivery", m)
	}

	a.WriteJSON(map[string]string{"type": "leave", "roomId": "r"})
	if m := readMap(t, a); m["type"] != "left" {
		t.Fatalf("read %v", m)
	}
	fc.mu.Lock()
	changed := append([]string(nil), fc.changed...)
	fc.mu.Unlock()
	if len(changed) != 2 || changed[0] != "r" || changed[1] != "r" {
		t.Fatalf("Changed calls %v, want the join and the leave", changed)
	}
}
