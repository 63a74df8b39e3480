package chat

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

type dashReply struct {
	IntervalMS int64       `json:"interval_ms"`
	HistoryMS  int64       `json:"history_ms"`
	Loops      int         `json:"loops"`
	Seq        uint64      `json:"seq"`
	Samples    []Sample    `json:"samples"`
	Rooms      []room.Info `json:"rooms"`
	Nodes      []struct {
		ID   string `json:"id"`
		Self bool   `json:"self"`
		Live bool   `json:"live"`
		Lost uint64 `json:"lost"`
	} `json:"nodes"`
}

// startDashboard serves the API with a Dashboard sampling every 20 ms over
// the last second (50 samples).
func startDashboard(t *testing.T, configure func(*Dashboard)) (*apiServer, *Dashboard) {
	t.Helper()
	ts := startAuthServer(t, server.Options{}, unlimitedChat)
	mux := ts.HTTPHandler()
	api := &API{Key: testAPIKey, Chat: ts.Chat, Rooms: ts.Rooms, Server: ts.Server}
	d := &Dashboard{API: api, Interval: 20 * time.Millisecond, History: time.Second, TopRooms: 2}
	if configure != nil {
		configure(d)
	}
	api.Dashboard = d
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if err := api.Register(mux); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return &apiServer{Server: hs, ts: ts}, d
}

func TestDashboardAPI(t *testing.T) {
	as, _ := startDashboard(t, nil)

	// The key is required, and since must be a number.
	var e apiErrorBody
	for _, key := range []string{"", "wrong"} {
		if r := as.do(t, "GET", "/api/dashboard", key, "", &e); r.StatusCode != http.StatusUnauthorized || e.Error.Code != "unauthorized" {
			t.Fatalf("key %q: %d %+v", key, r.StatusCode, e)
		}
	}
	if r := as.do(t, "GET", "/api/dashboard?since=x", testAPIKey, "", &e); r.StatusCode != http.StatusBadRequest || e.Error.Code != "invalid_since" {
		t.Fatalf("since=x: %d %+v", r.StatusCode, e)
	}

	// Traffic: three rooms of three, two and one; a message in the largest;
	// an upgrade refused for a path that does not exist.
	var peers []*chatPeer
	for i, n := range []int{3, 2, 1} {
		id := []string{"big", "mid", "one"}[i]
		for j := range n {
			p := dialUser(t, as.ts, id+string(rune('a'+j)))
			p.join(id, "N", j+1)
			peers = append(peers, p)
		}
	}
	peers[0].chat("big", "hello")
	if _, resp, err := websocket.DefaultDialer.Dial(as.ts.URL("/nope"), nil); err == nil || resp == nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("dial /nope: %v %v", err, resp)
	}

	var rep dashReply
	waitFor(t, "a sample with the traffic", func() bool {
		as.do(t, "GET", "/api/dashboard", testAPIKey, "", &rep)
		s := rep.Samples[len(rep.Samples)-1]
		return s.Conns == 6 && s.Rooms == 3 && s.Members == 6 && s.Deliveries >= 3 && s.MessagesIn >= 7 &&
			s.Broadcasts >= 1 && s.Refused["not_found"] == 1
	})
	if rep.IntervalMS != 20 || rep.HistoryMS != 1000 || rep.Loops != 2 {
		t.Fatalf("reply: %+v", rep)
	}
	// The two largest rooms, most first.
	if !slices.Equal(rep.Rooms, []room.Info{{ID: "big", Members: 3}, {ID: "mid", Members: 2}}) {
		t.Fatalf("rooms %+v", rep.Rooms)
	}
	s := rep.Samples[len(rep.Samples)-1]
	if len(s.LoopConns) != 2 || s.LoopConns[0]+s.LoopConns[1] != 6 || len(s.LoopLagUS) != 2 || len(s.LoopIn) != 2 ||
		s.LoopIn[0]+s.LoopIn[1] != s.MessagesIn {
		t.Fatalf("per-loop figures: %+v", s)
	}
	if rep.Nodes != nil {
		t.Fatalf("nodes without a cluster: %+v", rep.Nodes)
	}

	// since: only later samples; the ring keeps the last History.
	seq := rep.Seq
	waitFor(t, "newer samples", func() bool {
		as.do(t, "GET", "/api/dashboard?since="+strconv.FormatUint(seq, 10), testAPIKey, "", &rep)
		return len(rep.Samples) > 0
	})
	for _, s := range rep.Samples {
		if s.Seq <= seq {
			t.Fatalf("since=%d returned sample %d", seq, s.Seq)
		}
	}
	waitFor(t, "the ring to wrap", func() bool {
		as.do(t, "GET", "/api/dashboard", testAPIKey, "", &rep)
		return rep.Seq > 60
	})
	if n := len(rep.Samples); n != 50 || rep.Samples[n-1].Seq != rep.Seq || rep.Samples[0].Seq != rep.Seq-49 {
		t.Fatalf("after wrapping: %d samples, %d..%d, seq %d", n, rep.Samples[0].Seq, rep.Samples[n-1].Seq, rep.Seq)
	}
	for i := 1; i < len(rep.Samples); i++ {
		if rep.Samples[i].Seq != rep.Samples[i-1].Seq+1 || rep.Samples[i].Time < rep.Samples[i-1].Time {
			t.Fatalf("samples out of order at %d", i)
		}
	}
}

// A loop that is stuck shows as a growing lag, not as its last good figure.
func TestDashboardLoopLag(t *testing.T) {
	as, _ := startDashboard(t, nil)
	release := make(chan struct{})
	as.ts.Loops()[1].Post(poller.FuncJob(func() { <-release }))
	defer close(release)
	var rep dashReply
	waitFor(t, "loop 1's lag to pass 200 ms", func() bool {
		as.do(t, "GET", "/api/dashboard", testAPIKey, "", &rep)
		return rep.Samples[len(rep.Samples)-1].LoopLagUS[1] > 200_000
	})
	if lag := rep.Samples[len(rep.Samples)-1].LoopLagUS[0]; lag > 100_000 {
		t.Fatalf("loop 0's lag is %d µs while only loop 1 is stuck", lag)
	}
}

// In a cluster the largest rooms are ranked by their members everywhere, and
// the table has a row per node.
func TestDashboardCluster(t *testing.T) {
	fc := &fakeCluster{up: true, remote: map[string]int{"far": 10, "big": 1, "tiny": 1}}
	as, _ := startDashboard(t, func(d *Dashboard) {
		d.API.Chat.Cluster = fc
		d.NodeID = "n1"
		d.Cluster = func() ClusterStatus {
			return ClusterStatus{Connected: true, Lost: 4, DeadAfter: 15 * time.Second, Peers: []PeerStatus{
				{ID: "n3", SilenceMS: 20_000, Lost: 1, Received: 9},
				{ID: "n2", SilenceMS: 500, LagUS: 3000, Received: 100, Lost: 2, Conns: 7, Synced: true},
			}}
		}
	})
	for j := range 3 {
		dialUser(t, as.ts, "u"+string(rune('a'+j))).join("big", "N", j+2) // one elsewhere
	}
	var rep dashReply
	waitFor(t, "the cluster's rooms", func() bool {
		as.do(t, "GET", "/api/dashboard", testAPIKey, "", &rep)
		return len(rep.Rooms) == 2 && rep.Rooms[0].ID == "far"
	})
	if !slices.Equal(rep.Rooms, []room.Info{{ID: "far", Members: 10}, {ID: "big", Members: 4}}) {
		t.Fatalf("rooms %+v", rep.Rooms)
	}
	if len(rep.Nodes) != 3 || rep.Nodes[0].ID != "n1" || !rep.Nodes[0].Self || rep.Nodes[1].ID != "n2" || !rep.Nodes[1].Live ||
		rep.Nodes[1].Lost != 2 || rep.Nodes[2].ID != "n3" || rep.Nodes[2].Live {
		t.Fatalf("nodes %+v", rep.Nodes)
	}
	if s := rep.Samples[len(rep.Samples)-1]; s.ClusterLost != 4 {
		t.Fatalf("cluster_lost %d", s.ClusterLost)
	}
}

// Wrong keys from one address are throttled: after the burst, 429 with
// Retry-After, even for the right key, until the allowance refills.
func TestAPIWrongKeysThrottled(t *testing.T) {
	clock := newFakeClock()
	as, _ := startDashboard(t, func(d *Dashboard) { d.API.Now, d.API.KeyFailureBurst = clock.Now, 3 })
	var e apiErrorBody
	// No key at all is no guess.
	for range 5 {
		if r := as.do(t, "GET", "/api/dashboard", "", "", &e); r.StatusCode != http.StatusUnauthorized {
			t.Fatalf("no key: %d", r.StatusCode)
		}
	}
	for i := range 3 {
		if r := as.do(t, "GET", "/api/dashboard", "guess-"+strconv.Itoa(i), "", &e); r.StatusCode != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d", i, r.StatusCode)
		}
	}
	for _, key := range []string{"one-more-guess", testAPIKey} {
		r := as.do(t, "GET", "/api/dashboard", key, "", &e)
		if r.StatusCode != http.StatusTooManyRequests || e.Error.Code != "rate_limited" || r.Header.Get("Retry-After") != "1" {
			t.Fatalf("key %q after the burst: %d %q %+v", key, r.StatusCode, r.Header.Get("Retry-After"), e)
		}
	}
	// A second later one more try is allowed, and the right key gets in.
	clock.Advance(time.Second)
	if r := as.do(t, "GET", "/api/dashboard", testAPIKey, "", nil); r.StatusCode != http.StatusOK {
		t.Fatalf("the right key a second later: %d", r.StatusCode)
	}
	if r := as.do(t, "GET", "/api/dashboard", "guess-again", "", &e); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a guess a second later: %d", r.StatusCode)
	}
	if r := as.do(t, "GET", "/api/dashboard", "and-again", "", &e); r.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("a second guess within the second: %d", r.StatusCode)
	}
}
