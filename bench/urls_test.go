package bench

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/throng-ws/throng/echo"
	"github.com/throng-ws/throng/server"
)

func TestClusterTarget(t *testing.T) {
	got, err := ClusterTarget(" ws://a:1/ws, ws://b:2 ,ws://c:3/ws,", "11, 12,13")
	want := Target{URL: "ws://a:1/ws", URLs: []string{"ws://a:1/ws", "ws://b:2", "ws://c:3/ws"}, PIDs: []int{11, 12, 13}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ClusterTarget = %+v, %v; want %+v", got, err, want)
	}
	for _, bad := range [][2]string{{"", ""}, {" , ", ""}, {"ws://a:1", "x"}, {"ws://a:1", "-3"}} {
		if _, err := ClusterTarget(bad[0], bad[1]); err == nil {
			t.Errorf("ClusterTarget(%q, %q) accepted", bad[0], bad[1])
		}
	}
	c := Config{Scenario: ScenarioChat, Targets: []Target{got}}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	tg := c.Targets[0]
	if tg.Name != "a:1+2" || tg.URL != "ws://a:1/ws" || !reflect.DeepEqual(tg.URLs, []string{"ws://a:1/ws", "ws://b:2/ws", "ws://c:3/ws"}) {
		t.Fatalf("after defaults: %+v", tg)
	}
}

// TestURLsSpreadConnections: with several URLs, connection i goes to the
// (i mod n)th server, so each holds its share.
func TestURLsSpreadConnections(t *testing.T) {
	var srvs []*server.Server
	var urls []string
	for range 3 {
		s, err := server.New(server.Options{Handlers: map[string]server.Handler{"/echo": &echo.Handler{RateLimit: server.RateLimit{Rate: -1}}}, Loops: 1, TickInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		addr, err := s.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srvs = append(srvs, s)
		urls = append(urls, "ws://"+addr.String())
	}
	r := runOne(t, Config{Scenario: ScenarioIdle, Targets: []Target{{URLs: urls}}, Conns: 31, Rate: 5000, Hold: 10 * time.Millisecond, Sample: 6})
	if r.Conns.Opened != 31 || r.Probe.Alive != 6 {
		t.Fatalf("opened %d, alive %d of %d", r.Conns.Opened, r.Probe.Alive, r.Probe.Sampled)
	}
	for i, s := range srvs {
		want := uint64(10)
		if i == 0 {
			want = 11
		}
		if got := s.Stats().Handshakes["ok"]; got != want {
			t.Errorf("server %d upgraded %d connections, want %d", i, got, want)
		}
	}
}

// TestConfigJSONDurations: the report's config writes durations as strings.
func TestConfigJSONDurations(t *testing.T) {
	b, err := json.Marshal(Config{Scenario: ScenarioEcho, Duration: 30 * time.Second, Timeout: 10 * time.Minute, Conns: 5})
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`"duration":"30s"`, `"timeout":"10m0s"`, `"conns":5`, `"scenario":"echo"`} {
		if !strings.Contains(s, want) {
			t.Errorf("config JSON %s lacks %s", s, want)
		}
	}
	if strings.Contains(s, "30000000000") || strings.Contains(s, `"traffic"`) {
		t.Errorf("config JSON %s", s)
	}
}
