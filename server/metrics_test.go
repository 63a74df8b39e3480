package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/throng-ws/throng/poller"
)

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

// opsDialStatus dials and returns the handshake's status and Retry-After.
func opsDialStatus(t *testing.T, url string, h http.Header) (*websocket.Conn, int, string) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	c, resp, err := d.Dial(url, h)
	if err == nil {
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		return c, resp.StatusCode, ""
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	resp.Body.Close()
	return nil, resp.StatusCode, resp.Header.Get("Retry-After")
}

func TestMetricsConnectionsMessagesCloses(t *testing.T) {
	ts := startServer(t, Options{})
	col := ts.Collector()
	before := scrapeCollector(t, col)
	if n := before.sum("throng_connections"); n != 0 {
		t.Fatalf("throng_connections %v before any connection", n)
	}
	for _, key := range []string{"throng_connections{loop=0}", "throng_connections{loop=1}", "throng_sockets{loop=0}", "throng_max_connections", "throng_ready", "throng_slow_consumer_policy{policy=close}"} {
		before.get(t, key)
	}
	if before["throng_ready"] != 1 {
		t.Errorf("throng_ready %v, want 1", before["throng_ready"])
	}

	c := dial(t, ts.URL("/echo"), nil)
	if err := c.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, b, err := c.ReadMessage(); err != nil || string(b) != "hello" {
		t.Fatalf("echo: %q, %v", b, err)
	}
	// The counter moves just after the write, which the client may see first.
	var open opsScrape
	waitFor(t, "the echo to be counted", func() bool {
		open = scrapeCollector(t, col)
		return open["throng_messages_sent_total"] > before["throng_messages_sent_total"]
	})
	if n := open.sum("throng_connections"); n != 1 {
		t.Errorf("throng_connections sum %v with one open, want 1", n)
	}
	if n := open.sum("throng_sockets"); n != 1 {
		t.Errorf("throng_sockets sum %v with one open, want 1", n)
	}
	expectMoved(t, before, open, map[string]float64{
		"throng_sockets_accepted_total":              1,
		"throng_handshakes_total{result=ok}":         1,
		"throng_messages_received_total":             1,
		"throng_received_bytes_total":                5,
		"throng_messages_sent_total":                 1,
		"throng_sent_bytes_total":                    5,
		"throng_closes_total{code=1000,reason=peer}": 0,
	})

	// A refused handshake counts under its result.
	if _, status, _ := opsDialStatus(t, ts.URL("/nowhere"), nil); status != http.StatusNotFound {
		t.Fatalf("/nowhere: %d, want 404", status)
	}
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	expectClose(t, c, 1000)
	c.Close()
	waitFor(t, "the connection to close", func() bool { return ts.Stats().Open == 0 })

	// A binary message on /ws closes with 1003.
	w := dial(t, ts.URL("/ws"), nil)
	readText(t, w) // connected
	w.WriteMessage(websocket.BinaryMessage, []byte{1, 2, 3})
	expectClose(t, w, 1003)
	w.Close()
	waitFor(t, "the /ws connection to close", func() bool { return ts.Stats().Open == 0 })

	after := scrapeCollector(t, col)
	expectMoved(t, before, after, map[string]float64{
		"throng_handshakes_total{result=not_found}":         1,
		"throng_handshakes_total{result=ok}":                2,
		"throng_closes_total{code=1000,reason=peer}":        1,
		"throng_closes_total{code=1003,reason=unsupported}": 1,
		"throng_closes_total{code=1001,reason=shutdown}":    0,
	})
	if n := after.sum("throng_connections"); n != 0 {
		t.Errorf("throng_connections sum %v after the closes, want 0", n)
	}
}

func TestMetricsAuthFailures(t *testing.T) {
	ts := startAuthServer(t, Options{})
	col := ts.Collector()
	before := scrapeCollector(t, col)
	if _, status, _ := opsDialStatus(t, ts.URL("/ws"), nil); status != http.StatusUnauthorized {
		t.Fatalf("no token: %d, want 401", status)
	}
	if _, status, _ := opsDialStatus(t, ts.URL("/ws?token=not.a.jwt"), nil); status != http.StatusUnauthorized {
		t.Fatalf("bad token: %d, want 401", status)
	}
	dial(t, ts.URL("/ws?token="+ts.token("u", time.Hour)), nil)
	expectMovedSoon(t, col, before, map[string]float64{
		"throng_handshakes_total{result=unauthorized}": 2,
		"throng_handshakes_total{result=ok}":           1,
		"throng_auth_failures_total{reason=missing}":   1,
		"throng_auth_failures_total{reason=malformed}": 1,
		"throng_auth_failures_total{reason=expired}":   0,
	})
}

func TestMetricsAdmissionMaxConns(t *testing.T) {
	ts := startServer(t, Options{MaxConns: 2})
	col := ts.Collector()
	before := scrapeCollector(t, col)
	if v := before.get(t, "throng_max_connections"); v != 2 {
		t.Fatalf("throng_max_connections %v, want 2", v)
	}
	a := dial(t, ts.URL("/echo"), nil)
	dial(t, ts.URL("/echo"), nil)
	if _, status, retry := opsDialStatus(t, ts.URL("/echo"), nil); status != http.StatusServiceUnavailable || retry != "5" {
		t.Fatalf("third connection: %d, Retry-After %q; want 503, 5", status, retry)
	}
	expectMovedSoon(t, col, before, map[string]float64{
		"throng_handshakes_total{result=over_capacity}": 1,
		"throng_handshakes_total{result=ok}":            2,
	})
	a.Close()
	waitFor(t, "a connection to close", func() bool { return ts.Stats().Open == 1 })
	dial(t, ts.URL("/echo"), nil) // room again
}

func TestMetricsReadyDuringDrain(t *testing.T) {
	ts := startServer(t, Options{})
	col := ts.Collector()
	if v := scrapeCollector(t, col).get(t, "throng_ready"); v != 1 {
		t.Fatalf("throng_ready %v before the drain, want 1", v)
	}
	c := dial(t, ts.URL("/echo"), nil)
	go func() { // answers the drain's close frame
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	after := scrapeCollector(t, col)
	if v := after.get(t, "throng_ready"); v != 0 {
		t.Errorf("throng_ready %v after Shutdown, want 0", v)
	}
	if v := after.get(t, "throng_closes_total{code=1001,reason=shutdown}"); v != 1 {
		t.Errorf("shutdown closes %v, want 1", v)
	}
}

// TestMaxConnsIsAHardCap races handshakes on both loops against the cap.
func TestMaxConnsIsAHardCap(t *testing.T) {
	const limit, tries = 5, 40
	ts := startServer(t, Options{MaxConns: limit})
	var ok, refused atomic.Int64
	var mu sync.Mutex
	var conns []*websocket.Conn
	var wg sync.WaitGroup
	for range tries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, resp, err := websocket.DefaultDialer.Dial(ts.URL("/echo"), nil)
			switch {
			case err == nil:
				ok.Add(1)
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			case resp != nil && resp.StatusCode == http.StatusServiceUnavailable:
				refused.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}
	if ok.Load() != limit || refused.Load() != tries-limit {
		t.Fatalf("%d admitted and %d refused, want %d and %d", ok.Load(), refused.Load(), limit, tries-limit)
	}
}

// fakeRSS is an injected memory reading.
type fakeRSS struct{ v atomic.Uint64 }

func (f *fakeRSS) read() uint64 { return f.v.Load() }

func TestAdmissionByMemory(t *testing.T) {
	rss := new(fakeRSS)
	rss.v.Store(100 << 20)
	ts := startServer(t, Options{
		MemoryLimit:    1000 << 20,
		MemoryReader:   rss.read,
		MemoryInterval: time.Hour, // the test samples by hand
	})
	col := ts.Collector()
	before := scrapeCollector(t, col)
	expectMoved(t, opsScrape{}, before, map[string]float64{
		"throng_memory_limit_bytes":        1000 << 20,
		"throng_memory_high_water_bytes":   900 << 20,
		"throng_memory_low_water_bytes":    800 << 20,
		"throng_memory_rss_bytes":          100 << 20,
		"throng_memory_baseline_rss_bytes": 100 << 20,
		"throng_memory_refusing":           0,
	})
	old := dial(t, ts.URL("/echo"), nil)

	for _, step := range []struct {
		rss    uint64
		refuse bool
	}{
		{899 << 20, false}, // below high water
		{900 << 20, true},  // at it: refused
		{850 << 20, true},  // between the marks: still refused
		{800 << 20, true},  // at low water: still refused
		{799 << 20, false}, // below it: admitted again
		{850 << 20, false}, // between the marks, coming up: admitted
	} {
		rss.v.Store(step.rss)
		ts.sampleMemory()
		s := scrapeCollector(t, col)
		if got := s.get(t, "throng_memory_refusing"); got != map[bool]float64{true: 1}[step.refuse] {
			t.Errorf("rss %d MiB: throng_memory_refusing %v, want refusing=%v", step.rss>>20, got, step.refuse)
		}
		if got := s.get(t, "throng_memory_rss_bytes"); got != float64(step.rss) {
			t.Errorf("throng_memory_rss_bytes %v, want %v", got, step.rss)
		}
		c, status, retry := opsDialStatus(t, ts.URL("/echo"), nil)
		switch {
		case step.refuse && (status != http.StatusServiceUnavailable || retry != "5"):
			t.Errorf("rss %d MiB: %d, Retry-After %q; want 503, 5", step.rss>>20, status, retry)
		case !step.refuse && status != http.StatusSwitchingProtocols:
			t.Errorf("rss %d MiB: %d; want 101", step.rss>>20, status)
		}
		if c != nil {
			c.Close()
		}
		// The connection opened before is never dropped for memory.
		if err := old.WriteMessage(websocket.TextMessage, []byte("still here")); err != nil {
			t.Fatal(err)
		}
		if _, b, err := old.ReadMessage(); err != nil || string(b) != "still here" {
			t.Fatalf("old connection at rss %d MiB: %q, %v", step.rss>>20, b, err)
		}
	}
	expectMovedSoon(t, col, before, map[string]float64{
		"throng_handshakes_total{result=memory}": 3,
		"throng_handshakes_total{result=ok}":     4, // old, and three admitted
	})
	m := ts.Memory()
	if m.Limit != 1000<<20 || m.HighWater != 900<<20 || m.LowWater != 800<<20 || m.Refusing {
		t.Errorf("Memory() = %+v", m)
	}
}

func TestBytesPerConnection(t *testing.T) {
	rss := new(fakeRSS)
	rss.v.Store(50 << 20)
	ts := startServer(t, Options{MemoryReader: rss.read})
	col := ts.Collector()
	if v := scrapeCollector(t, col).get(t, "throng_bytes_per_connection"); v != 0 {
		t.Errorf("throng_bytes_per_connection %v without connections, want 0", v)
	}
	// The process grew with no connection open: the baseline follows it, as
	// what connections then add is what they cost.
	rss.v.Store(60 << 20)
	if m := ts.Memory(); m.Baseline != 60<<20 {
		t.Fatalf("baseline %d with no connections, want the reading %d", m.Baseline, 60<<20)
	}
	for range 4 {
		dial(t, ts.URL("/echo"), nil)
	}
	waitFor(t, "four connections", func() bool { return ts.Stats().Open == 4 })
	rss.v.Store(60<<20 + 4*3000)
	if v := scrapeCollector(t, col).get(t, "throng_bytes_per_connection"); v != 3000 {
		t.Errorf("throng_bytes_per_connection %v, want (RSS - baseline) / 4 = 3000", v)
	}
	m := ts.Memory()
	if m.Baseline != 60<<20 || m.Conns != 4 || m.BytesPerConn != 3000 || m.RSSPerConn != float64(60<<20+4*3000)/4 {
		t.Errorf("Memory() = %+v", m)
	}
	ts.sampleMemory() // with connections open the baseline stays
	if m := ts.Memory(); m.Baseline != 60<<20 {
		t.Errorf("baseline moved to %d with connections open", m.Baseline)
	}
}

func TestMemoryOptionsValidated(t *testing.T) {
	for _, o := range []Options{
		{MemoryHighWater: 0.8, MemoryLowWater: 0.8},
		{MemoryHighWater: 0.7},
		{MemoryHighWater: 1.5},
		{MemoryLowWater: -0.1},
		{MaxConns: -1},
		{StatsInterval: -time.Second},
	} {
		o.Handlers = map[string]Handler{"/echo": echoHandler{}}
		if s, err := newTestServer(o); err == nil {
			s.Close()
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

// TestCollectorLint runs Prometheus's own checks of names, help and units.
func TestCollectorLint(t *testing.T) {
	ts := startServer(t, Options{})
	problems, err := testutil.CollectAndLint(ts.Collector())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func TestPeerCloseCodes(t *testing.T) {
	for code, want := range map[uint16]string{
		1000: "1000", 1001: "1001", 1003: "1003", 1005: "1005", 1008: "1008", 1011: "1011",
		1004: "other", 1006: "other", 1012: "other", 2000: "other", 3000: "3000-3999", 4999: "4000-4999", 5000: "other",
	} {
		if got := peerCodeLabels[peerCodeIndex(code)]; got != want {
			t.Errorf("code %d labelled %s, want %s", code, got, want)
		}
	}
	if !slices.Equal(PeerCloseCodes(), peerCodeLabels[:]) {
		t.Error("PeerCloseCodes differs from the labels")
	}
}

// leakSample feeds w and returns whether it signalled.
func TestLeakWatch(t *testing.T) {
	rising := func(n int, conns int64, from, step float64) [][2]float64 {
		var s [][2]float64
		for i := range n {
			s = append(s, [2]float64{float64(conns), from + float64(i)*step})
		}
		return s
	}
	for _, tc := range []struct {
		name    string
		samples [][2]float64 // conns, bytes per conn
		want    []int        // indexes of the samples that signal
	}{
		{"steady rise", rising(6, 10_000, 1000, 10), []int{5}},
		{"rise goes on: signalled again after five more", rising(11, 10_000, 1000, 10), []int{5, 10}},
		{"five rises of under 2% in all", rising(6, 10_000, 1000, 3), nil},
		{"slow rise passes 2% later", rising(9, 10_000, 1000, 3), []int{7}},
		{"flat", rising(10, 10_000, 1000, 0), nil},
		{"too few connections", rising(10, 50, 1000, 100), nil},
		{"a dip breaks the run", append(rising(4, 10_000, 1000, 10), append([][2]float64{{10_000, 1000}}, rising(4, 10_000, 1001, 10)...)...), nil},
		{"a dip starts a new run", append(rising(4, 10_000, 1000, 10), append([][2]float64{{10_000, 1000}}, rising(5, 10_000, 1001, 10)...)...), []int{9}},
		{"count growing 1% is not steady", [][2]float64{{10_000, 1000}, {10_020, 1010}, {10_040, 1020}, {10_060, 1030}, {10_080, 1040}, {10_100, 1050}, {10_110, 1060}}, nil},
		{"count within 1% is steady", [][2]float64{{10_000, 1000}, {10_020, 1010}, {9_990, 1020}, {10_050, 1030}, {10_090, 1040}, {10_001, 1050}}, []int{5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var w leakWatch
			var got []int
			for i, s := range tc.samples {
				if from, to, ok := w.add(int64(s[0]), s[1]); ok {
					got = append(got, i)
					if to != s[1] || from >= to {
						t.Errorf("sample %d: signalled %v -> %v", i, from, to)
					}
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("signalled at %v, want %v", got, tc.want)
			}
		})
	}
}

// TestStatsLogLine drives the periodic line with injected readings: the line
// carries the figures, and a steady rise with the count unchanged warns.
func TestStatsLogLine(t *testing.T) {
	rss := new(fakeRSS)
	rss.v.Store(10 << 20)
	var buf opsLog
	ts := startServer(t, Options{MemoryReader: rss.read, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	for range leakMinConns {
		dial(t, ts.URL("/echo"), nil)
	}
	waitFor(t, "the connections", func() bool { return ts.Stats().Open == leakMinConns })
	var w leakWatch
	rss.v.Store(10<<20 + leakMinConns*4000)
	ts.logStats(&w)
	want := fmt.Sprintf("msg=stats conns=%d sockets=%d rss=%d bytes_per_conn=4000 refusing=false", leakMinConns, leakMinConns, 10<<20+leakMinConns*4000)
	if !strings.Contains(buf.String(), want) {
		t.Fatalf("stats line %q, want %q", buf.String(), want)
	}
	// Five rises of 100 bytes per connection, 12.5% in all, with the count held.
	for i := 1; i <= leakSamples; i++ {
		if strings.Contains(buf.String(), "possible leak") {
			t.Fatalf("leak warning after %d rises: %s", i-1, buf.String())
		}
		rss.v.Store(10<<20 + leakMinConns*uint64(4000+100*i))
		ts.logStats(&w)
	}
	want = fmt.Sprintf(`level=WARN msg="bytes per connection rising while the connection count holds: possible leak" conns=%d from=4000 to=4500 samples=5`, leakMinConns)
	if !strings.Contains(buf.String(), want) {
		t.Fatalf("no leak warning %q in:\n%s", want, buf.String())
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

// opsLog is a concurrency-safe buffer for a test's logs.
type opsLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *opsLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *opsLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
