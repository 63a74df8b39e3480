package chat

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/server"
)

// chatMsg reads messages until one of type typ arrives, or returns the next
// one if typ is empty.
func chatMsg(t *testing.T, c *websocket.Conn, typ string) map[string]any {
	t.Helper()
	for {
		var m map[string]any
		if err := json.Unmarshal([]byte(readText(t, c)), &m); err != nil {
			t.Fatal(err)
		}
		if typ == "" || m["type"] == typ {
			return m
		}
	}
}

func TestMetricsChatRoomsBroadcasts(t *testing.T) {
	ts := startChatServer(t, server.Options{}, func(c *Handler) { c.Rate, c.Burst, c.Ban = 0.001, 4, time.Hour })
	col := ts.collector()
	before := scrapeCollector(t, col)
	for _, key := range []string{"throng_rooms", "throng_room_members", "throng_broadcast_recipients_count", "throng_broadcast_duration_seconds_count", "throng_chat_bans_total", "throng_chat_rate_limited_messages_total"} {
		before.get(t, key)
	}

	a, b := dial(t, ts.URL("/ws"), nil), dial(t, ts.URL("/ws"), nil)
	chatMsg(t, a, "connected")
	chatMsg(t, b, "connected")
	a.WriteMessage(websocket.TextMessage, []byte(`{"type":"join","roomId":"r","userName":"A"}`))
	chatMsg(t, a, "joined")
	b.WriteMessage(websocket.TextMessage, []byte(`{"type":"join","roomId":"r","userName":"B"}`))
	chatMsg(t, b, "joined")
	chatMsg(t, a, "user-joined")
	a.WriteMessage(websocket.TextMessage, []byte(`{"type":"chat","roomId":"r","content":"hi"}`))
	chatMsg(t, a, "message")
	chatMsg(t, b, "message")

	// Two presence broadcasts (to 0, then 1 other member) and one chat message
	// (to both): three broadcasts, three recipients.
	var mid opsScrape
	waitFor(t, "three broadcasts recorded", func() bool {
		mid = scrapeCollector(t, col)
		return mid["throng_broadcast_recipients_count"]-before["throng_broadcast_recipients_count"] == 3
	})
	expectMoved(t, before, mid, map[string]float64{
		"throng_rooms":                            1,
		"throng_room_members":                     2,
		"throng_broadcast_recipients_count":       3,
		"throng_broadcast_recipients_sum":         3,
		"throng_broadcast_duration_seconds_count": 3,
		"throng_chat_rate_limited_messages_total": 0,
		"throng_chat_bans_total":                  0,
	})
	if d := mid["throng_broadcast_duration_seconds_sum"] - before["throng_broadcast_duration_seconds_sum"]; d <= 0 {
		t.Errorf("broadcast durations sum moved by %v, want more than 0", d)
	}

	// A has spent 2 of its burst of 4; the fifth message is over the rate: a ban.
	for range 3 {
		a.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`))
	}
	chatMsg(t, a, "pong")
	chatMsg(t, a, "pong")
	if m := chatMsg(t, a, "error"); m["code"] != protocol.CodeRateLimited {
		t.Fatalf("error %v, want rate_limited", m)
	}
	a.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)) // ignored during the ban
	a.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""))
	chatMsg(t, b, "user-left")
	after := scrapeCollector(t, col)
	expectMoved(t, before, after, map[string]float64{
		"throng_chat_rate_limited_messages_total": 2,
		"throng_chat_bans_total":                  1,
		"throng_rooms":                            1,
		"throng_room_members":                     1,
	})
}

// stuckClient is a /ws connection with a tiny receive buffer that never reads
// past its handshake, so that what the server sends it piles up.
func stuckClient(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return serr
	}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	nc.Write([]byte(req))
	nc.Write(frame(true, 0, 0x1, []byte(`{"type":"join","roomId":"slow","userName":"S"}`), true))
	return nc
}

func TestMetricsSlowConsumers(t *testing.T) {
	for _, tc := range []struct {
		policy server.SlowConsumerPolicy
		moved  string
		still  string
	}{
		{server.SlowClose, "throng_slow_consumer_closed_total", "throng_slow_consumer_dropped_messages_total"},
		{server.SlowDrop, "throng_slow_consumer_dropped_messages_total", "throng_slow_consumer_closed_total"},
	} {
		t.Run(tc.policy.String(), func(t *testing.T) {
			ts := startChatServer(t, server.Options{MaxPending: 16 << 10, SlowConsumer: tc.policy}, func(c *Handler) { c.Rate = -1 })
			col := ts.collector()
			before := scrapeCollector(t, col)
			before.get(t, "throng_slow_consumer_policy{policy="+tc.policy.String()+"}")
			stuckClient(t, ts.Addr)
			waitFor(t, "the stuck client to join", func() bool { return ts.Rooms.Count("slow") == 1 })
			filler := strings.Repeat("x", 400)
			for i := 0; ; i++ {
				if s := ts.Stats(); s.SlowClosed > 0 || s.SlowDropped > 0 {
					break
				}
				if i > 200_000 {
					t.Fatalf("never a slow consumer: %+v", ts.Stats())
				}
				ts.Chat.Publish("slow", ServerUserID, "pub", filler, time.Now())
				if i%100 == 99 {
					// Let the loops catch up, so that the backlog grows on the
					// socket rather than in the loops' job lists.
					opsBarrier(ts)
				}
			}
			waitFor(t, "the counter to be exported", func() bool {
				return scrapeCollector(t, col)[tc.moved] > 0
			})
			after := scrapeCollector(t, col)
			if after[tc.still] != 0 {
				t.Errorf("%s = %v under policy %s, want 0", tc.still, after[tc.still], tc.policy)
			}
			if tc.policy == server.SlowClose {
				waitFor(t, "the slow_consumer close", func() bool {
					return scrapeCollector(t, col)["throng_closes_total{code=1008,reason=slow_consumer}"] == 1
				})
			}
		})
	}
}

func TestAPIStats(t *testing.T) {
	rss := new(fakeRSS)
	rss.v.Store(40 << 20)
	ts := startChatServer(t, server.Options{MemoryReader: rss.read, MaxConns: 100, MemoryLimit: 1 << 30, MemoryInterval: time.Hour}, nil)
	mux := http.NewServeMux()
	api := &API{Key: "k3y-for-stats", Chat: ts.Chat, Rooms: ts.Rooms, Server: ts.Server}
	if err := api.Register(mux); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(mux)
	defer hs.Close()
	get := func(key string) (int, map[string]any) {
		req, _ := http.NewRequest("GET", hs.URL+"/api/stats", nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := hs.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	if status, _ := get(""); status != http.StatusUnauthorized {
		t.Errorf("/api/stats without the key: %d, want 401", status)
	}
	if status, _ := get("wrong"); status != http.StatusUnauthorized {
		t.Errorf("/api/stats with a wrong key: %d, want 401", status)
	}
	for range 2 {
		dial(t, ts.URL("/ws"), nil)
	}
	waitFor(t, "two connections", func() bool { return ts.Stats().Open == 2 })
	rss.v.Store(40<<20 + 2*5000)
	status, m := get("k3y-for-stats")
	if status != http.StatusOK {
		t.Fatalf("/api/stats: %d", status)
	}
	limit := uint64(1 << 30)
	high, low := uint64(float64(limit)*server.DefaultMemoryHighWater), uint64(float64(limit)*server.DefaultMemoryLowWater)
	want := map[string]float64{
		"connections":             2,
		"sockets":                 2,
		"max_conns":               100,
		"rss_bytes":               40<<20 + 10000,
		"baseline_rss_bytes":      40 << 20,
		"bytes_per_conn":          5000,
		"rss_per_conn":            (40<<20 + 10000) / 2,
		"memory_limit_bytes":      1 << 30,
		"memory_high_water_bytes": float64(high),
		"memory_low_water_bytes":  float64(low),
	}
	for k, v := range want {
		if got, ok := m[k].(float64); !ok || got != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	for _, k := range []string{"heap_bytes", "go_runtime_bytes", "goroutines"} {
		if got, ok := m[k].(float64); !ok || got <= 0 {
			t.Errorf("%s = %v, want a positive number", k, m[k])
		}
	}
	for _, k := range []string{"handshakes", "auth_failures", "closes", "peer_closes"} {
		if _, ok := m[k].(map[string]any); !ok {
			t.Errorf("%s = %v, want an object", k, m[k])
		}
	}
	if per, ok := m["connections_per_loop"].([]any); !ok || len(per) != 2 || per[0].(float64)+per[1].(float64) != 2 {
		t.Errorf("connections_per_loop = %v", m["connections_per_loop"])
	}
	if m["ready"] != true || m["memory_refusing"] != false {
		t.Errorf("ready %v, memory_refusing %v", m["ready"], m["memory_refusing"])
	}
}

// opsScrape is one scrape of a collector: "name{k=v,...}" to value. A
// histogram gives name_count and name_sum; series without labels have no braces.
type opsScrape map[string]float64

func scrapeCollector(t testing.TB, c prometheus.Collector) opsScrape {
	t.Helper()
	reg := prometheus.NewPedanticRegistry() // checks Describe against Collect
	if err := reg.Register(c); err != nil {
		t.Fatalf("register: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := make(opsScrape)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			key := mf.GetName()
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
				out[key+"_sum"] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

// sum adds every series of a metric, whatever its labels.
func (s opsScrape) sum(name string) float64 {
	var n float64
	for k, v := range s {
		if k == name || strings.HasPrefix(k, name+"{") {
			n += v
		}
	}
	return n
}

// get is one series; it fails the test if the series is not exported.
func (s opsScrape) get(t testing.TB, key string) float64 {
	t.Helper()
	v, ok := s[key]
	if !ok {
		var keys []string
		for k := range s {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		t.Fatalf("no series %s; have:\n%s", key, strings.Join(keys, "\n"))
	}
	return v
}

// expectMoved checks that each series moved by exactly the given amount
// between two scrapes.
func expectMoved(t testing.TB, before, after opsScrape, want map[string]float64) {
	t.Helper()
	for k, d := range want {
		if got := after.get(t, k) - before[k]; got != d {
			t.Errorf("%s moved by %v, want %v", k, got, d)
		}
	}
}

// expectMovedSoon is expectMoved for counters that move just after the event the
// client sees (a handshake's response is written before it is counted): it
// scrapes until they match, or reports the last scrape.
func expectMovedSoon(t testing.TB, c prometheus.Collector, before opsScrape, want map[string]float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		after := scrapeCollector(t, c)
		match := true
		for k, d := range want {
			if after[k]-before[k] != d {
				match = false
			}
		}
		if match || time.Now().After(deadline) {
			expectMoved(t, before, after, want)
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// opsBarrier waits until every loop has run the jobs posted before it.
func opsBarrier(ts *testServer) {
	var wg sync.WaitGroup
	for _, l := range ts.Loops() {
		wg.Add(1)
		if !l.Post(poller.FuncJob(wg.Done)) {
			wg.Done()
		}
	}
	wg.Wait()
}

// fakeRSS is an injected memory reading.
type fakeRSS struct{ v atomic.Uint64 }

func (f *fakeRSS) read() uint64 { return f.v.Load() }

// collector is the transport's and the chat's collectors as one, as serve
// registers both.
func (ts *testServer) collector() prometheus.Collector {
	return collectors{ts.Collector(), ts.Chat.Collector()}
}

type collectors []prometheus.Collector

func (cs collectors) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range cs {
		c.Describe(ch)
	}
}

func (cs collectors) Collect(ch chan<- prometheus.Metric) {
	for _, c := range cs {
		c.Collect(ch)
	}
}

// TestCollectorLint runs Prometheus's own checks of names, help and units.
func TestCollectorLint(t *testing.T) {
	ts := startChatServer(t, server.Options{}, nil)
	problems, err := testutil.CollectAndLint(ts.Chat.Collector())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}
