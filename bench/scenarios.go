package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// serverRSS reads the target's resident memory from its PID or stats URL. ok is
// false when neither is configured. With several PIDs it is their sum.
func (r *run) serverRSS(ctx context.Context) (rss int64, ok bool, err error) {
	switch pids := r.t.pids(); {
	case len(pids) > 0:
		for _, pid := range pids {
			v, err := procRSS(pid)
			if err != nil {
				return 0, true, err
			}
			rss += v
		}
		return rss, true, nil
	case r.t.StatsURL != "":
		rss, err = fetchStat(ctx, r.t.StatsURL, r.cfg.StatsField)
		return rss, true, err
	}
	return 0, false, nil
}

// fetchStat GETs a JSON document and returns the number at a dotted field path.
func fetchStat(ctx context.Context, u, field string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("bench: stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("bench: stats: %s", resp.Status)
	}
	var v any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return 0, fmt.Errorf("bench: stats: %w", err)
	}
	for f := range strings.SplitSeq(field, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return 0, fmt.Errorf("bench: stats: no field %q", field)
		}
		v = m[f]
	}
	n, ok := v.(float64)
	if !ok {
		return 0, fmt.Errorf("bench: stats: field %q is not a number", field)
	}
	return int64(n), nil
}

// idle ramps the connections in ten chunks, reading the server's memory after
// each, holds them, checks a sample is alive, and reads memory again.
func (r *run) idle(ctx context.Context) error {
	cfg := r.cfg
	rss0, measured, err := r.serverRSS(ctx)
	if err != nil {
		return err
	}
	if measured {
		r.res.Server = &ServerStats{PID: r.t.PID, RSSBefore: rss0}
	}
	if len(cfg.Stages) > 0 {
		return r.idleStages(ctx, rss0, measured)
	}
	r.setPhase("ramp")
	chunks := min(10, cfg.Conns)
	opened, failed := 0, 0
	for i := range chunks {
		_, n := split(cfg.Conns, chunks, i)
		o, f, err := r.connect(ctx, n)
		opened += o
		failed += f
		if err != nil {
			return err
		}
		if measured {
			rss, _, err := r.serverRSS(ctx)
			if err != nil {
				return err
			}
			r.res.Memory = append(r.res.Memory, memPoint(opened, rss-rss0))
		}
	}
	r.setPhase("hold")
	if err := sleep(ctx, cfg.Hold); err != nil {
		return err
	}
	r.setPhase("probe")
	replies, err := r.all(ctx, func(i int) command {
		_, n := split(cfg.Sample, len(r.parts), i)
		return command{Op: opProbe, N: n, Duration: 5 * time.Second}
	})
	r.res.Probe = &ProbeStats{}
	for _, rp := range replies {
		r.res.Probe.Sampled += rp.Probed
		r.res.Probe.Alive += rp.Alive
	}
	if err != nil {
		return err
	}
	s, _ := r.snapshot()
	r.res.Conns.Held = int(s.Open)
	if measured {
		if r.res.Server.RSSAfter, r.res.Server.RSSPerConn, err = r.readMemory(ctx, rss0, int(s.Open)); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("bench: %d of %d connections failed to open", failed, cfg.Conns)
	}
	if r.res.Probe.Alive < r.res.Probe.Sampled {
		return fmt.Errorf("bench: %d of %d sampled connections did not answer a ping", r.res.Probe.Sampled-r.res.Probe.Alive, r.res.Probe.Sampled)
	}
	if cfg.Traffic > 0 {
		return r.idleTraffic(ctx, rss0, measured)
	}
	return nil
}

// idleStages runs the stages; at each stage's end it reads the server's memory
// and pings a sample of the connections.
func (r *run) idleStages(ctx context.Context, rss0 int64, measured bool) error {
	r.res.Probe = &ProbeStats{}
	err := r.stages(ctx, func(i int, sr *StageResult) error {
		r.res.Conns.Held = max(r.res.Conns.Held, int(sr.Reached))
		if measured {
			rss, _, err := r.serverRSS(ctx)
			if err != nil {
				return err
			}
			sr.RSS = rss
			p := memPoint(int(sr.Reached), rss-rss0)
			sr.RSSPerConn = p.PerConn
			if sr.Reached > 0 {
				r.res.Memory = append(r.res.Memory, p)
				r.res.Server.RSSAfter = max(r.res.Server.RSSAfter, rss)
			}
		}
		if sr.Reached == 0 {
			return nil
		}
		replies, err := r.all(ctx, func(i int) command {
			_, n := split(r.cfg.Sample, len(r.parts), i)
			return command{Op: opProbe, N: n, Duration: 5 * time.Second}
		})
		for _, rp := range replies {
			r.res.Probe.Sampled += rp.Probed
			r.res.Probe.Alive += rp.Alive
		}
		return err
	})
	if err != nil {
		return err
	}
	if r.res.Probe.Alive < r.res.Probe.Sampled {
		return fmt.Errorf("bench: %d of %d sampled connections did not answer a ping", r.res.Probe.Sampled-r.res.Probe.Alive, r.res.Probe.Sampled)
	}
	return nil
}

// withStages runs op on every part (echo's or chat's traffic for the stages'
// whole length) while the stages move the connection count, and returns op's
// replies and the first error of either.
func (r *run) withStages(ctx context.Context, op command) ([]reply, error) {
	op.Duration = r.cfg.stagesDuration()
	opCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var replies []reply
	var opErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		replies, opErr = r.all(opCtx, func(int) command { return op })
	}()
	if err := r.stages(ctx, nil); err != nil {
		// The op would run out its time: end it now.
		cancel()
		<-done
		return replies, err
	}
	<-done
	return replies, opErr
}

// idleTraffic has every held connection echo for Traffic, holds them idle
// again for Hold, and reads the server's memory per connection a second time.
func (r *run) idleTraffic(ctx context.Context, rss0 int64, measured bool) error {
	cfg := r.cfg
	before, _ := r.snapshot()
	r.setPhase("traffic")
	t0 := time.Now()
	replies, err := r.all(ctx, func(int) command {
		return command{Op: opEcho, Inflight: 1, Duration: cfg.Traffic}
	})
	el := time.Since(t0)
	after, _ := r.snapshot()
	lost := 0
	for _, rp := range replies {
		lost += rp.Lost
	}
	echoes := after.Recv - before.Recv
	r.res.Echo = &EchoStats{Conns: int(after.Open), Inflight: 1, Size: cfg.Size, Seconds: el.Seconds(),
		Echoes: echoes, Lost: lost, PerSec: float64(echoes) / el.Seconds()}
	if err != nil {
		return err
	}
	if lost > 0 {
		return fmt.Errorf("bench: traffic: %d echoes never came back", lost)
	}
	if after.Mismatch > before.Mismatch {
		return fmt.Errorf("bench: traffic: %d echoes did not match what was sent", after.Mismatch-before.Mismatch)
	}
	r.setPhase("hold after traffic")
	if err := sleep(ctx, cfg.Hold); err != nil {
		return err
	}
	s, _ := r.snapshot()
	if measured {
		if r.res.Server.RSSAfterTraffic, r.res.Server.RSSPerConnAfterTraffic, err = r.readMemory(ctx, rss0, int(s.Open)); err != nil {
			return err
		}
	}
	if held := int(s.Open); held < r.res.Conns.Held {
		return fmt.Errorf("bench: %d connections were lost during traffic", r.res.Conns.Held-held)
	}
	return nil
}

// readMemory reads the server's RSS with conns open, records the growth from
// rss0 as a memory point, and returns the RSS and the growth per connection.
func (r *run) readMemory(ctx context.Context, rss0 int64, conns int) (rss int64, perConn float64, err error) {
	if rss, _, err = r.serverRSS(ctx); err != nil {
		return 0, 0, err
	}
	p := memPoint(conns, rss-rss0)
	r.res.Memory = append(r.res.Memory, p)
	return rss, p.PerConn, nil
}

func memPoint(conns int, grown int64) MemPoint {
	p := MemPoint{Conns: conns, RSSGrowth: grown}
	if conns > 0 {
		p.PerConn = float64(grown) / float64(conns)
	}
	return p
}

// serverCPU reads the target's CPU time, if its PID is known; with several
// PIDs, their sum.
func (r *run) serverCPU() (time.Duration, bool) {
	pids := r.t.pids()
	if len(pids) == 0 {
		return 0, false
	}
	var sum time.Duration
	for _, pid := range pids {
		d, err := procCPU(pid)
		if err != nil {
			return 0, false
		}
		sum += d
	}
	return sum, true
}

// pids are the target's server processes: PIDs, or PID alone.
func (t Target) pids() []int {
	if len(t.PIDs) > 0 {
		return t.PIDs
	}
	if t.PID > 0 {
		return []int{t.PID}
	}
	return nil
}

// echo opens the connections, then measures Duration of echoes with Inflight
// per connection.
func (r *run) echo(ctx context.Context) error {
	cfg := r.cfg
	opened := 0
	if len(cfg.Stages) == 0 {
		r.setPhase("ramp")
		var err error
		if opened, _, err = r.connect(ctx, cfg.Conns); err != nil {
			return err
		}
		if opened == 0 {
			return fmt.Errorf("bench: no connection opened")
		}
	}
	before, _ := r.snapshot()
	r.mu.Lock()
	r.lat.Reset() // only the measured window's latencies count
	r.mu.Unlock()
	scpu0, sok := r.serverCPU()
	ccpu0 := r.clientCPU()
	t0 := time.Now()
	r.setPhase("echo")
	var replies []reply
	var err error
	if len(cfg.Stages) > 0 {
		replies, err = r.withStages(ctx, command{Op: opEcho, Inflight: cfg.Inflight})
	} else {
		replies, err = r.all(ctx, func(int) command {
			return command{Op: opEcho, Inflight: cfg.Inflight, Duration: cfg.Duration}
		})
	}
	el := time.Since(t0)
	if len(cfg.Stages) > 0 {
		s, _ := r.snapshot()
		opened = int(s.Peak)
	}
	scpu1, _ := r.serverCPU()
	ccpu1 := r.clientCPU()
	after, _ := r.snapshot()
	lost := 0
	for _, rp := range replies {
		lost += rp.Lost
	}
	echoes := after.Recv - before.Recv
	e := &EchoStats{
		Conns:    opened,
		Inflight: cfg.Inflight,
		Size:     cfg.Size,
		Seconds:  el.Seconds(),
		Echoes:   echoes,
		Lost:     lost,
		PerSec:   float64(echoes) / el.Seconds(),
	}
	e.ClientCPUSeconds = (ccpu1 - ccpu0).Seconds()
	r.res.Echo = e
	if sok {
		sec := (scpu1 - scpu0).Seconds()
		r.res.Server = &ServerStats{PID: r.t.PID, CPUSeconds: sec}
		if sec > 0 {
			r.res.Server.MsgsPerCPUSecond = float64(echoes) / sec
		}
		if echoes > 0 {
			r.res.Server.CPUMicrosPerMsg = sec * 1e6 / float64(echoes)
		}
		// On one machine the harness and the server share the CPUs: once the
		// harness burns as much as the server, the server is not what limits
		// the throughput.
		if e.ClientCPUSeconds >= sec {
			r.res.Client.Bound = true
			r.res.Notes = append(r.res.Notes, fmt.Sprintf("client-bound: the harness used %.2f CPU-seconds, the server %.2f", e.ClientCPUSeconds, sec))
		}
	}
	if err != nil {
		return err
	}
	if after.Mismatch > before.Mismatch {
		return fmt.Errorf("bench: %d echoes did not match what was sent", after.Mismatch-before.Mismatch)
	}
	if lost > 0 {
		return fmt.Errorf("bench: %d echoes never came back", lost)
	}
	return nil
}

// broadcast is the websocket-shootout stepping method: add StepSize clients,
// measure Samples broadcasts with Inflight in flight, verify every client got
// every broadcast exactly once, and go on until the LimitPercentile round trip
// passes LimitRTT or MaxClients are connected.
func (r *run) broadcast(ctx context.Context) error {
	cfg := r.cfg
	clients := 0
	for step := 1; clients < cfg.MaxClients; step++ {
		add := min(cfg.StepSize, cfg.MaxClients-clients)
		r.setPhase(fmt.Sprintf("step %d", step))
		opened, failed, err := r.connect(ctx, add)
		clients += opened
		if err != nil {
			return err
		}
		if failed > 0 {
			return fmt.Errorf("bench: step %d: %d of %d clients failed to connect", step, failed, add)
		}
		st, err := r.step(ctx, step, clients)
		if st != nil {
			r.res.Steps = append(r.res.Steps, *st)
		}
		if err != nil {
			return err
		}
		if !st.ExactlyOnce {
			return fmt.Errorf("bench: step %d: %d missing and %d duplicate deliveries", step, st.Missing, st.Duplicates)
		}
		if st.AtLimit > float64(cfg.LimitRTT)/float64(time.Millisecond) {
			r.res.Notes = append(r.res.Notes, fmt.Sprintf("stopped at %d clients: p%g RTT %.1fms passed the %v limit",
				clients, cfg.LimitPercentile, st.AtLimit, cfg.LimitRTT))
			break
		}
		r.res.MaxClients = clients
	}
	if r.res.MaxClients == clients {
		r.res.Notes = append(r.res.Notes, fmt.Sprintf("reached --max-clients %d under the limit", clients))
	}
	return nil
}

// step runs one broadcast step over the connected clients.
func (r *run) step(ctx context.Context, step, clients int) (*Step, error) {
	cfg := r.cfg
	w := len(r.parts)
	if _, err := r.all(ctx, func(int) command { return command{Op: opStepStart, Step: step, Total: cfg.Samples} }); err != nil {
		return nil, err
	}
	// Broadcasts in flight are split over the parts; a part with no share of
	// them sends none.
	active := min(w, cfg.Inflight)
	cpu0, cpuOK := r.serverCPU()
	t0 := time.Now()
	replies, err := r.all(ctx, func(i int) command {
		if i >= active {
			return command{Op: opBroadcast}
		}
		first, n := split(cfg.Samples, active, i)
		_, k := split(cfg.Inflight, active, i)
		return command{Op: opBroadcast, N: n, First: first, Inflight: k}
	})
	el := time.Since(t0)
	if err != nil {
		return nil, err
	}
	sent := 0
	for _, rp := range replies {
		sent += rp.Sent
	}
	grace := 2*time.Second + cfg.LimitRTT
	replies, err = r.all(ctx, func(int) command { return command{Op: opVerify, Total: cfg.Samples, Duration: grace} })
	if err != nil {
		return nil, err
	}
	rtt := newHist()
	st := &Step{Step: step, Clients: clients, Samples: sent, Seconds: el.Seconds(), MinListeners: -1, MaxListeners: -1}
	for _, rp := range replies {
		sr := rp.Step
		if sr == nil {
			continue
		}
		merge(rtt, sr.RTT)
		st.Results += sr.Results
		st.Receipts += sr.Receipts
		st.Missing += sr.Missing
		st.Duplicates += sr.Duplicates
		st.Late += sr.Late
		st.Receivers += sr.Clients
		if sr.Listeners[0] >= 0 && (st.MinListeners < 0 || sr.Listeners[0] < st.MinListeners) {
			st.MinListeners = sr.Listeners[0]
		}
		st.MaxListeners = max(st.MaxListeners, sr.Listeners[1])
		st.WireBytes += sr.Wire
	}
	if st.Receipts > 0 {
		st.WireBytesPerDelivery = float64(st.WireBytes) / float64(st.Receipts)
	}
	if cpu1, ok := r.serverCPU(); ok && cpuOK {
		st.ServerCPUSeconds = (cpu1 - cpu0).Seconds()
		if st.Receipts > 0 {
			st.ServerCPUMicrosPerDelivery = st.ServerCPUSeconds * 1e6 / float64(st.Receipts)
		}
	}
	st.RTT = latencyOf(rtt)
	st.AtLimit = ms(rtt.ValueAtQuantile(cfg.LimitPercentile))
	st.ExactlyOnce = st.Missing == 0 && st.Duplicates == 0 && st.Receivers == clients &&
		st.Receipts == uint64(sent)*uint64(clients)
	return st, nil
}

// chat joins the clients to rooms of RoomSize, sends RoomRate messages per
// second to each room for Duration, and counts the deliveries.
func (r *run) chat(ctx context.Context) error {
	cfg := r.cfg
	rss0, measured, err := r.serverRSS(ctx)
	if err != nil {
		return err
	}
	opened := 0
	if len(cfg.Stages) == 0 {
		r.setPhase("join")
		o, failed, err := r.connect(ctx, cfg.Conns)
		if err != nil {
			return err
		}
		if failed > 0 {
			return fmt.Errorf("bench: %d of %d clients failed to connect and join (does the server speak the chat protocol's join?)", failed, cfg.Conns)
		}
		opened = o
	}
	if cfg.JoinHold > 0 && len(cfg.Stages) == 0 {
		// Joined and silent: the server's memory per idle room member.
		r.setPhase("hold")
		if err := sleep(ctx, cfg.JoinHold); err != nil {
			return err
		}
		if measured {
			rss1, _, err := r.serverRSS(ctx)
			if err != nil {
				return err
			}
			r.res.Server = &ServerStats{PID: r.t.PID, RSSBefore: rss0, RSSAfter: rss1,
				RSSPerConn: float64(rss1-rss0) / float64(opened)}
			r.res.Memory = append(r.res.Memory, memPoint(opened, rss1-rss0))
		}
	}
	r.setPhase("chat")
	before, _ := r.snapshot()
	r.mu.Lock()
	r.lat.Reset()
	r.mu.Unlock()
	cpu0, cpuOK := r.serverCPU()
	t0 := time.Now()
	var replies []reply
	if len(cfg.Stages) > 0 {
		replies, err = r.withStages(ctx, command{Op: opChat, Rate: cfg.RoomRate})
	} else {
		replies, err = r.all(ctx, func(int) command {
			return command{Op: opChat, Rate: cfg.RoomRate, Duration: cfg.Duration}
		})
	}
	el := time.Since(t0)
	if len(cfg.Stages) > 0 {
		s, _ := r.snapshot()
		opened = int(s.Peak)
	}
	sent := 0
	for _, rp := range replies {
		sent += rp.Sent
	}
	expected := uint64(sent) * uint64(cfg.RoomSize)
	var after snapshot
	deadline := time.Now().Add(3 * time.Second)
	for {
		after, _ = r.snapshot()
		if after.Receipts-before.Receipts >= expected || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	got := after.Receipts - before.Receipts
	r.res.Chat = &ChatStats{
		Rooms:      opened / cfg.RoomSize,
		RoomSize:   cfg.RoomSize,
		RoomRate:   cfg.RoomRate,
		Sent:       sent,
		Expected:   expected,
		Deliveries: got,
		PerSec:     float64(got) / el.Seconds(),
		WireBytes:  after.WireRecv - before.WireRecv,
	}
	if got > 0 {
		r.res.Chat.WireBytesPerDelivery = float64(r.res.Chat.WireBytes) / float64(got)
	}
	if cpu1, ok := r.serverCPU(); ok && cpuOK && got > 0 {
		r.res.Chat.ServerCPUMicrosPerDelivery = (cpu1 - cpu0).Seconds() * 1e6 / float64(got)
	}
	if err != nil {
		return err
	}
	if got != expected {
		return fmt.Errorf("bench: %d deliveries, want %d", got, expected)
	}
	return nil
}

// churn holds Conns connections while closing and redialing ChurnRate of them
// per second for Duration.
func (r *run) churn(ctx context.Context) error {
	cfg := r.cfg
	r.setPhase("ramp")
	if _, _, err := r.connect(ctx, cfg.Conns); err != nil {
		return err
	}
	before, _ := r.snapshot()
	r.mu.Lock()
	r.hs.Reset()
	r.mu.Unlock()
	r.setPhase("churn")
	t0 := time.Now()
	_, err := r.all(ctx, func(int) command {
		return command{Op: opChurn, Rate: cfg.ChurnRate / float64(len(r.parts)), Duration: cfg.Duration}
	})
	el := time.Since(t0)
	after, _ := r.snapshot()
	r.res.Churn = &ChurnStats{
		Rate:       cfg.ChurnRate,
		Seconds:    el.Seconds(),
		Reconnects: after.Opened - before.Opened,
		Failed:     after.Failed - before.Failed,
		Open:       after.Open,
	}
	r.res.Churn.PerSec = float64(r.res.Churn.Reconnects) / el.Seconds()
	if err != nil {
		return err
	}
	if r.res.Churn.Failed > 0 {
		return fmt.Errorf("bench: %d reconnects failed", r.res.Churn.Failed)
	}
	return nil
}

// storm opens Conns connections, drops them all at once and measures how long
// until every one is connected again.
func (r *run) storm(ctx context.Context) error {
	cfg := r.cfg
	r.setPhase("ramp")
	opened, _, err := r.connect(ctx, cfg.Conns)
	if err != nil {
		return err
	}
	if err := sleep(ctx, time.Second); err != nil {
		return err
	}
	r.snapshot()
	r.mu.Lock()
	r.hs.Reset()
	mark := len(r.res.Timeline)
	r.mu.Unlock()
	r.setPhase("storm")
	t0 := time.Now()
	replies, err := r.all(ctx, func(int) command {
		return command{Op: opStorm, Rate: cfg.ReconnectRate / float64(len(r.parts))}
	})
	el := time.Since(t0)
	s := &StormStats{Dropped: opened}
	for _, rp := range replies {
		s.Reconnected += rp.Opened
		s.FailedAttempts += rp.Failed
		s.Seconds = max(s.Seconds, rp.Elapsed.Seconds())
	}
	if s.Seconds == 0 {
		s.Seconds = el.Seconds()
	}
	s.HandshakesPerSec = float64(s.Reconnected) / s.Seconds
	r.mu.Lock()
	for _, t := range r.res.Timeline[mark:] {
		s.PeakHandshakesPerSec = max(s.PeakHandshakesPerSec, t.OpenPerSec)
	}
	r.mu.Unlock()
	// A storm shorter than a progress interval has its peak as its average.
	s.PeakHandshakesPerSec = max(s.PeakHandshakesPerSec, s.HandshakesPerSec)
	r.res.Storm = s
	return err
}

// latencyOf summarizes a histogram in milliseconds.
func latencyOf(h *hdrhistogram.Histogram) *Latency {
	if h == nil || h.TotalCount() == 0 {
		return nil
	}
	return &Latency{
		Count: h.TotalCount(),
		Min:   ms(h.Min()),
		Mean:  h.Mean() / 1e3,
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P95:   ms(h.ValueAtQuantile(95)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
	}
}

// ms converts a histogram value in microseconds to milliseconds.
func ms(us int64) float64 { return float64(us) / 1e3 }
