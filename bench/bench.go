// Package bench is throng's load tester: it drives many WebSocket client
// connections against a server (throng, a reference peer, or any server that
// speaks exact echo or the websocket-shootout protocol) and measures what the
// server does with them: memory per idle connection, echo throughput and
// latency per server CPU-second, broadcast round trips as clients are added,
// chat deliveries, churn and reconnect storms.
//
// Client connections run on the same epoll poller as the server, so one
// process holds about 19,000 of them without a goroutine each; --workers
// spreads more over child processes, whose counters and HdrHistograms a
// coordinator merges. Every run is bounded in connections and time and stops
// by itself.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/nats-io/nats.go"
)

// Scenarios.
const (
	ScenarioIdle      = "idle"
	ScenarioEcho      = "echo"
	ScenarioBroadcast = "broadcast"
	ScenarioChat      = "chat"
	ScenarioChurn     = "churn"
	ScenarioStorm     = "reconnect-storm"
	ScenarioUpgrade   = "upgrade"
)

// Scenarios lists every scenario, in the order the help text gives them.
var Scenarios = []string{ScenarioIdle, ScenarioEcho, ScenarioBroadcast, ScenarioChat, ScenarioChurn, ScenarioStorm, ScenarioUpgrade}

// ScenarioHelp is a line of help per scenario.
var ScenarioHelp = map[string]string{
	ScenarioIdle:      "ramp --conns at --rate, hold, ping a sample; server RSS per connection",
	ScenarioEcho:      "--conns with --inflight echoes each for --duration; throughput, latency, server CPU per echo",
	ScenarioBroadcast: "websocket-shootout stepping: add --step-size clients until the p95 RTT passes --limit-rtt",
	ScenarioChat:      "rooms of --room-size, --room-rate messages per room per second; deliveries/s and latency",
	ScenarioChurn:     "hold --conns while closing and reopening --churn-rate per second",
	ScenarioStorm:     "drop every connection at once; seconds until all are back and handshakes/s",
	ScenarioUpgrade:   "rooms chat while the target --pid upgrades (SIGUSR2) or drains and restarts (--mode drain); drops, lost/duplicated/reordered messages, pauses, memory",
}

// Target is one server to measure.
type Target struct {
	// Name labels the target's column in the table and report. If empty, the
	// URL's host is used.
	Name string `json:"name"`
	// URL is the WebSocket endpoint. If it has no path, the scenario's default
	// path is used (/echo, /shootout for broadcast, /ws for chat).
	URL string `json:"url"`
	// URLs, if set, are the endpoints of several servers measured as one, such
	// as the nodes of a cluster: connection i goes to URLs[i % len(URLs)], so
	// the members of a chat room are spread over all of them. URL is then the
	// first; each takes the default path as URL does.
	URLs []string `json:"urls,omitempty"`
	// PID is the server's process id, for RSS and CPU from /proc. Zero: not
	// measured.
	PID int `json:"pid,omitempty"`
	// PIDs are the process ids of the servers behind URLs, for their RSS and
	// CPU summed: the RSS per connection is then the nodes' average. If set,
	// PID is ignored.
	PIDs []int `json:"pids,omitempty"`
	// StatsURL is an HTTP URL answering JSON with the server's RSS in bytes at
	// the field named by Config.StatsField, an alternative to PID for memory.
	StatsURL string `json:"stats_url,omitempty"`
}

// ParseTarget parses "name=URL[,pid=N][,stats=URL]" or a bare URL.
func ParseTarget(s string) (Target, error) {
	var t Target
	for i, f := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(f, "=")
		switch {
		case i == 0 && !ok:
			t.URL = f
		case i == 0 && strings.Contains(k, "://"):
			t.URL = f
		case i == 0:
			t.Name, t.URL = k, v
		case k == "pid":
			pid, err := strconv.Atoi(v)
			if err != nil || pid <= 0 {
				return t, fmt.Errorf("bench: target %q: bad pid", s)
			}
			t.PID = pid
		case k == "stats":
			t.StatsURL = v
		default:
			return t, fmt.Errorf("bench: target %q: unknown field %q", s, k)
		}
	}
	if t.URL == "" {
		return t, fmt.Errorf("bench: target %q: no URL", s)
	}
	return t, nil
}

// ClusterTarget makes one target of several servers, such as the nodes of a
// cluster, from comma-separated URLs and, optionally, their comma-separated
// process ids (for RSS and CPU summed over them).
func ClusterTarget(urls, pids string) (Target, error) {
	var t Target
	for u := range strings.SplitSeq(urls, ",") {
		if u = strings.TrimSpace(u); u != "" {
			t.URLs = append(t.URLs, u)
		}
	}
	if len(t.URLs) == 0 {
		return t, fmt.Errorf("bench: --urls %q names no URL", urls)
	}
	for p := range strings.SplitSeq(pids, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		pid, err := strconv.Atoi(p)
		if err != nil || pid <= 0 {
			return t, fmt.Errorf("bench: --server-pids: bad pid %q", p)
		}
		t.PIDs = append(t.PIDs, pid)
	}
	t.URL = t.URLs[0]
	return t, nil
}

// Config is one bench run. Zero fields take the defaults documented on them,
// which depend on the scenario.
type Config struct {
	// Scenario is one of Scenarios.
	Scenario string `json:"scenario"`
	// Targets are measured one after another with the same load. At least one.
	Targets []Target `json:"targets"`

	// Conns is the number of connections: idle's N, echo's C, churn's and
	// reconnect-storm's population, chat's total (rounded down to whole rooms).
	// If zero: 1000 for idle and reconnect-storm, 100 otherwise.
	Conns int `json:"conns"`
	// Rate is how many connections per second are opened while ramping up. If
	// zero, 1000. reconnect-storm's redial is not paced unless ReconnectRate is.
	Rate float64 `json:"rate"`
	// Hold is how long idle holds its connections. If zero, 10s.
	Hold time.Duration `json:"hold"`
	// Traffic, for idle, is how long every held connection then echoes (one
	// message of Size in flight each), after which idle holds again and reads
	// the server's memory a second time: buffers that grow with traffic show
	// there and not in the first reading. If zero, no traffic.
	Traffic time.Duration `json:"traffic,omitempty"`
	// JoinHold is how long chat holds its joined, silent clients before the
	// messages start, to read the server's memory per idle room member. If
	// zero, chat does not hold or read memory.
	JoinHold time.Duration `json:"join_hold,omitempty"`
	// Sample is how many connections idle checks are still alive. If zero, 100.
	Sample int `json:"sample"`
	// Duration is how long echo, chat and churn run. If zero, 10s.
	Duration time.Duration `json:"duration"`
	// Inflight is echo's messages in flight per connection (if zero, 1) and
	// broadcast's broadcasts in flight in all (-c; if zero, 4).
	Inflight int `json:"inflight"`
	// Size is the payload size in bytes. If zero, 64; echo needs at least 32.
	Size int `json:"size"`
	// Text sends echo payloads as text frames instead of binary.
	Text bool `json:"text,omitempty"`

	// Protocol is broadcast's shootout form: "json" (the default) or "binary".
	Protocol string `json:"protocol"`
	// StepSize is how many clients broadcast adds per step. If zero, 1000.
	StepSize int `json:"step_size"`
	// Samples is how many broadcasts each step measures (-s). If zero, 40.
	Samples int `json:"samples"`
	// MaxClients stops broadcast once this many clients are connected. If zero,
	// 10000.
	MaxClients int `json:"max_clients"`
	// LimitPercentile and LimitRTT stop broadcast once the percentile's round
	// trip passes the limit. If zero, 95 and 500ms.
	LimitPercentile float64       `json:"limit_percentile"`
	LimitRTT        time.Duration `json:"limit_rtt"`

	// RoomSize is chat's members per room (K). If zero, 10.
	RoomSize int `json:"room_size"`
	// RoomRate is chat's messages per second per room (M). If zero, 1.
	RoomRate float64 `json:"room_rate"`
	// ChurnRate is churn's disconnects (each followed by a reconnect) per
	// second. If zero, 10.
	ChurnRate float64 `json:"churn_rate"`
	// ReconnectRate paces reconnect-storm's redial. If zero, every client
	// redials at once.
	ReconnectRate float64 `json:"reconnect_rate,omitempty"`
	// Upgrade configures the upgrade scenario.
	Upgrade UpgradeOptions `json:"upgrade,omitzero"`

	// JWTSecret, if set, mints an HS256 token per client, subject "bench-<i>".
	JWTSecret string `json:"-"`
	// TokenInHeader sends tokens as an Authorization header, not ?token=.
	TokenInHeader bool `json:"token_in_header,omitempty"`
	// Compression offers permessage-deflate (without context takeover) on
	// every connection and inflates what the server compresses; chat and
	// broadcast then report the bytes on the wire per delivery.
	Compression bool `json:"compression,omitempty"`
	// SourceIPs are local addresses to spread connections over, such as
	// "127.0.0.2-127.0.0.50" or "127.0.0.2,127.0.0.3".
	SourceIPs string `json:"source_ips,omitempty"`
	// StatsField is the JSON field of a target's StatsURL holding RSS bytes,
	// dotted for nesting. If empty, "rss_bytes".
	StatsField string `json:"stats_field,omitempty"`

	// Workers is the number of worker processes. If zero or one, the load runs
	// in this process. Each holds at most MaxConnsPerProcess connections.
	Workers int `json:"workers"`
	// Loops is the event loops per process. If zero, GOMAXPROCS.
	Loops int `json:"loops,omitempty"`
	// WorkerCommand starts a worker. If empty, this executable with the
	// argument "bench".
	WorkerCommand []string `json:"-"`
	// Agents is the URL of a NATS server where `throng bench agent`s wait for
	// work. If set, the load runs on them, spread by the capacity each
	// reports, instead of in this process or Workers.
	Agents string `json:"agents,omitempty"`
	// MinAgents is how many idle agents of this ProtocolVersion must answer
	// before the run starts; every one that answers is used. If zero, 1.
	MinAgents int `json:"min_agents,omitempty"`
	// AgentWait bounds the wait for MinAgents. If zero, DefaultAgentWait.
	AgentWait time.Duration `json:"agent_wait,omitempty"`
	// AgentTimeout is how long an agent may be silent (no heartbeat, no
	// answer) before it is lost. If zero, DefaultAgentTimeout.
	AgentTimeout time.Duration `json:"agent_timeout,omitempty"`
	// OnAgentLoss is what a lost agent does to the run: "fail" (the default)
	// ends it with an error; "continue" carries on with the others, the lost
	// agent's connections counted in Result.LostConns.
	OnAgentLoss string `json:"on_agent_loss,omitempty"`
	// NATSPrefix is the bench subjects' first tokens. If empty,
	// DefaultNATSPrefix.
	NATSPrefix string `json:"nats_prefix,omitempty"`

	// Stages, for idle, echo and chat, replace the ramp and hold: each moves
	// the connection count linearly to its target over its duration.
	Stages []Stage `json:"stages,omitempty"`
	// Thresholds are pass/fail criteria checked against every result; a
	// breached one fails the run (exit status 1).
	Thresholds []Threshold `json:"thresholds,omitempty"`
	// Floor names the target the others are quoted against as ratios
	// (Result.VsFloor), a reference server that does only the I/O. If
	// empty, the target named DefaultFloorTarget, if there is one.
	Floor string `json:"floor,omitempty"`
	// Command is the command line, shown in the HTML report. Secrets in it
	// should be redacted by the caller.
	Command []string `json:"command,omitempty"`

	// HandshakeTimeout bounds each connect plus upgrade. If zero, 10s.
	HandshakeTimeout time.Duration `json:"handshake_timeout"`
	// Timeout bounds the whole run for one target. If zero, 10 minutes.
	Timeout time.Duration `json:"timeout"`

	// Progress receives a progress line every second. If nil, none.
	Progress io.Writer `json:"-"`
}

func (c *Config) setDefaults() error {
	known := false
	for _, s := range Scenarios {
		known = known || s == c.Scenario
	}
	if !known {
		return fmt.Errorf("bench: unknown scenario %q (want one of %s)", c.Scenario, strings.Join(Scenarios, ", "))
	}
	if len(c.Targets) == 0 {
		return errors.New("bench: no target: set --url or --target")
	}
	if err := c.checkFloor(); err != nil {
		return err
	}
	for _, n := range []struct {
		name string
		v    float64
	}{
		{"conns", float64(c.Conns)}, {"rate", c.Rate}, {"hold", float64(c.Hold)}, {"sample", float64(c.Sample)},
		{"duration", float64(c.Duration)}, {"inflight", float64(c.Inflight)}, {"size", float64(c.Size)},
		{"step-size", float64(c.StepSize)}, {"samples", float64(c.Samples)}, {"max-clients", float64(c.MaxClients)},
		{"room-size", float64(c.RoomSize)}, {"room-rate", c.RoomRate}, {"churn-rate", c.ChurnRate},
		{"reconnect-rate", c.ReconnectRate}, {"traffic", float64(c.Traffic)}, {"join-hold", float64(c.JoinHold)},
		{"handshake-timeout", float64(c.HandshakeTimeout)}, {"timeout", float64(c.Timeout)}, {"workers", float64(c.Workers)},
	} {
		// Zero means the default; a negative value is a mistake, never the default.
		if n.v < 0 {
			return fmt.Errorf("bench: --%s must not be negative", n.name)
		}
	}
	if c.Conns <= 0 {
		c.Conns = 100
		switch c.Scenario {
		case ScenarioIdle, ScenarioStorm:
			c.Conns = 1000
		case ScenarioUpgrade:
			c.Conns = DefaultUpgradeConns
		}
	}
	if c.Scenario == ScenarioUpgrade {
		if err := c.Upgrade.setDefaults(c); err != nil {
			return err
		}
	}
	setDef(&c.Rate, 1000)
	setDef(&c.Hold, 10*time.Second)
	setDef(&c.Sample, 100)
	setDef(&c.Duration, 10*time.Second)
	if c.Inflight <= 0 {
		c.Inflight = 1
		if c.Scenario == ScenarioBroadcast {
			c.Inflight = 4
		}
	}
	setDef(&c.Size, 64)
	if c.Protocol == "" {
		c.Protocol = ProtoShootoutJSON
	}
	if c.Protocol != ProtoShootoutJSON && c.Protocol != ProtoShootoutBinary {
		return fmt.Errorf("bench: --protocol must be json or binary, not %q", c.Protocol)
	}
	setDef(&c.StepSize, 1000)
	setDef(&c.Samples, 40)
	setDef(&c.MaxClients, 10000)
	setDef(&c.LimitPercentile, 95)
	setDef(&c.LimitRTT, 500*time.Millisecond)
	setDef(&c.RoomSize, 10)
	setDef(&c.RoomRate, 1)
	setDef(&c.ChurnRate, 10)
	setDef(&c.HandshakeTimeout, 10*time.Second)
	setDef(&c.Timeout, 10*time.Minute)
	if c.StatsField == "" {
		c.StatsField = "rss_bytes"
	}
	if (c.Scenario == ScenarioEcho || c.Scenario == ScenarioIdle && c.Traffic > 0) && c.Size < echoHeader {
		return fmt.Errorf("bench: echo --size must be at least %d", echoHeader)
	}
	if c.Scenario == ScenarioBroadcast && c.Samples > 1<<16 {
		return errors.New("bench: --samples is at most 65536 per step")
	}
	if c.inRooms() {
		c.Conns -= c.Conns % c.RoomSize
		if c.Conns == 0 {
			return errors.New("bench: chat needs --conns of at least --room-size")
		}
	}
	if c.LimitPercentile <= 0 || c.LimitPercentile > 100 {
		return errors.New("bench: --limit-percentile must be in (0, 100]")
	}
	if _, err := ParseSourceIPs(c.SourceIPs); err != nil {
		return err
	}
	if len(c.Stages) > 0 {
		switch c.Scenario {
		case ScenarioIdle, ScenarioEcho, ScenarioChat:
		default:
			return fmt.Errorf("bench: --stages applies to idle, echo and chat, not %s", c.Scenario)
		}
		for i, st := range c.Stages {
			if st.Target < 0 || st.Duration < 0 {
				return fmt.Errorf("bench: stage %d: negative target or duration", i+1)
			}
			if c.Scenario == ScenarioChat && st.Target%c.RoomSize != 0 {
				return fmt.Errorf("bench: chat stage %d: target %d is not whole rooms of %d", i+1, st.Target, c.RoomSize)
			}
		}
	}
	for _, th := range c.Thresholds {
		if err := th.validate(); err != nil {
			return err
		}
	}
	switch c.OnAgentLoss {
	case "":
		c.OnAgentLoss = AgentLossFail
	case AgentLossFail, AgentLossContinue:
	default:
		return fmt.Errorf("bench: --on-agent-loss must be %s or %s, not %q", AgentLossFail, AgentLossContinue, c.OnAgentLoss)
	}
	if c.Agents != "" && c.Workers > 1 {
		return errors.New("bench: --agents and --workers exclude each other: agents are the workers")
	}
	setDef(&c.AgentWait, DefaultAgentWait)
	setDef(&c.AgentTimeout, DefaultAgentTimeout)
	if c.NATSPrefix == "" {
		c.NATSPrefix = DefaultNATSPrefix
	}
	perProc := c.peakConns() / max(c.Workers, 1)
	if c.peakConns()%max(c.Workers, 1) != 0 {
		perProc++
	}
	if c.Agents == "" && perProc > MaxConnsPerProcess {
		return fmt.Errorf("bench: %d connections per process passes the limit of %d (20,000 open files per process): use more --workers",
			perProc, MaxConnsPerProcess)
	}
	// The targets get the scenario's path here: a copy, so that a caller's
	// slice, reused for another scenario, keeps its own.
	c.Targets = slices.Clone(c.Targets)
	for i := range c.Targets {
		t := &c.Targets[i]
		if len(t.URLs) > 0 {
			t.URLs = slices.Clone(t.URLs)
			t.URL = t.URLs[0]
		}
		u, err := c.withPath(t.URL)
		if err != nil {
			return err
		}
		t.URL = u.String()
		if t.Name == "" {
			t.Name = u.Host
			if len(t.URLs) > 1 {
				t.Name = fmt.Sprintf("%s+%d", u.Host, len(t.URLs)-1)
			}
		}
		for j, s := range t.URLs {
			u, err := c.withPath(s)
			if err != nil {
				return err
			}
			t.URLs[j] = u.String()
		}
	}
	return nil
}

// withPath parses a target URL and gives it the scenario's default path if it
// has none.
func (c *Config) withPath(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("bench: target url %q: not a ws:// URL", s)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = c.defaultPath()
	}
	return u, nil
}

func setDef[T int | float64 | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// peakConns is the most connections the run holds at once.
func (c *Config) peakConns() int {
	if c.Scenario == ScenarioBroadcast {
		return c.MaxClients
	}
	if len(c.Stages) > 0 {
		n := 0
		for _, st := range c.Stages {
			n = max(n, st.Target)
		}
		return n
	}
	return c.Conns
}

// What a lost agent does to the run (Config.OnAgentLoss).
const (
	AgentLossFail     = "fail"
	AgentLossContinue = "continue"
)

func (c *Config) defaultPath() string {
	switch c.Scenario {
	case ScenarioBroadcast:
		return "/shootout"
	case ScenarioChat, ScenarioUpgrade:
		return "/ws"
	}
	return "/echo"
}

func (c *Config) protocol() string {
	switch c.Scenario {
	case ScenarioBroadcast:
		return c.Protocol
	case ScenarioChat, ScenarioUpgrade:
		return ProtoChat
	}
	return ProtoEcho
}

// inRooms reports whether the scenario's connections are chat room members,
// counted and spread in whole rooms.
func (c *Config) inRooms() bool { return c.Scenario == ScenarioChat || c.Scenario == ScenarioUpgrade }

// ParseSourceIPs parses a comma-separated list of addresses and inclusive
// IPv4 ranges ("127.0.0.2-127.0.0.50").
func ParseSourceIPs(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		a, err := netip.ParseAddr(lo)
		if err != nil {
			return nil, fmt.Errorf("bench: source ip %q: %w", f, err)
		}
		if !isRange {
			out = append(out, a)
			continue
		}
		b, err := netip.ParseAddr(hi)
		if err != nil || b.Less(a) || a.Is4() != b.Is4() {
			return nil, fmt.Errorf("bench: source ip range %q", f)
		}
		for ; a.Compare(b) <= 0; a = a.Next() {
			out = append(out, a)
			if len(out) > 1<<16 {
				return nil, fmt.Errorf("bench: source ip range %q is too large", f)
			}
		}
	}
	return out, nil
}

// split divides total into parts as evenly as possible and returns part i's
// first index and count.
func split(total, parts, i int) (first, n int) {
	q, r := total/parts, total%parts
	first = i*q + min(i, r)
	n = q
	if i < r {
		n++
	}
	return first, n
}

// Run measures every target in turn and returns the report. A target that fails
// gets its error recorded in its result, as does a breached threshold; Run
// fails only on a bad Config.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	rep := &Report{Scenario: cfg.Scenario, Started: time.Now(), Config: cfg, CPUs: runtime.NumCPU()}
	for _, t := range cfg.Targets {
		if ctx.Err() != nil {
			break
		}
		rep.Results = append(rep.Results, runTarget(ctx, cfg, t))
	}
	// Thresholds may hold a result against the floor's, measured last.
	rep.compareToFloor()
	for _, res := range rep.Results {
		res.Thresholds = checkThresholds(cfg.Thresholds, res)
	}
	return rep, ctx.Err()
}

// run is the coordinator's state for one target.
type run struct {
	cfg   Config
	t     Target
	parts []part
	names []string // each part's name in reports
	res   *Result
	nc    *nats.Conn // with Config.Agents

	mu      sync.Mutex
	share   shares      // guarded by mu: connections asked of each part, in units
	last    []*snapshot // guarded by mu: each part's latest snapshot
	dead    []bool      // guarded by mu: parts lost
	lat, hs *hdrhistogram.Histogram
	start   time.Time
	phase   string // guarded by mu: shown on the progress line
	target  int    // guarded by mu: the current stage's target
}

func runTarget(ctx context.Context, cfg Config, t Target) *Result {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	r := &run{cfg: cfg, t: t, lat: newHist(), hs: newHist(), start: time.Now()}
	r.res = &Result{Target: t.Name, URL: t.URL, Workers: max(cfg.Workers, 1)}
	if err := r.startParts(ctx); err != nil {
		r.res.Error = err.Error()
		return r.res
	}
	r.res.Workers = len(r.parts)
	r.start = time.Now()
	cpu0 := r.clientCPU()
	progCtx, stopProgress := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.progress(progCtx) }()
	if r.nc != nil {
		wg.Add(1)
		go func() { defer wg.Done(); coordinatorHeartbeat(progCtx, r.nc, cfg.NATSPrefix, r.res.Run) }()
	}

	var err error
	switch cfg.Scenario {
	case ScenarioIdle:
		err = r.idle(ctx)
	case ScenarioEcho:
		err = r.echo(ctx)
	case ScenarioBroadcast:
		err = r.broadcast(ctx)
	case ScenarioChat:
		err = r.chat(ctx)
	case ScenarioChurn:
		err = r.churn(ctx)
	case ScenarioStorm:
		err = r.storm(ctx)
	case ScenarioUpgrade:
		err = r.upgrade(ctx)
	}
	r.setPhase("closing")
	r.all(context.Background(), func(int) command { return command{Op: opClose} })
	r.collect()
	stopProgress()
	wg.Wait()
	r.res.Client.CPUSeconds = (r.clientCPU() - cpu0).Seconds()
	r.res.Client.WallSeconds = time.Since(r.start).Seconds()
	r.res.Client.finish()
	r.stopParts()
	if err == nil && r.res.Messages.Mismatch > 0 {
		err = fmt.Errorf("bench: %d mismatched messages", r.res.Messages.Mismatch)
	}
	if err != nil {
		r.res.Error = err.Error()
	}
	return r.res
}

func (r *run) stopParts() {
	for _, p := range r.parts {
		p.stop()
	}
	if r.nc != nil {
		r.nc.Close()
	}
}

func (r *run) startParts(ctx context.Context) error {
	cfg := r.cfg
	ips := []string{}
	addrs, _ := ParseSourceIPs(cfg.SourceIPs)
	for _, a := range addrs {
		ips = append(ips, a.String())
	}
	// Chat rooms must not straddle processes, or no process could count a
	// room's deliveries: shares are whole rooms, and bases fall on room
	// boundaries. Each part's ids start past the previous part's capacity,
	// so ids never collide whatever share each ends up with.
	unit := 1
	if cfg.inRooms() {
		unit = cfg.RoomSize
	}
	ac := agentConfig{
		URL:              r.t.URL,
		URLs:             r.t.URLs,
		Protocol:         cfg.protocol(),
		JWTSecret:        cfg.JWTSecret,
		TokenInHeader:    cfg.TokenInHeader,
		Compression:      cfg.Compression,
		SourceIPs:        ips,
		Loops:            cfg.Loops,
		Size:             cfg.Size,
		Text:             cfg.Text,
		RoomSize:         cfg.RoomSize,
		HandshakeTimeout: cfg.HandshakeTimeout,
	}
	if !cfg.inRooms() {
		ac.RoomSize = 0
	}
	if cfg.Scenario == ScenarioUpgrade {
		ac.Upgrade = true
		ac.Backoff, ac.BackoffMax = cfg.Upgrade.Backoff, cfg.Upgrade.BackoffMax
	}
	if cfg.Agents != "" {
		return r.startAgents(ctx, ac, unit)
	}
	stride := (MaxConnsPerProcess + unit - 1) / unit * unit
	w := max(cfg.Workers, 1)
	for i := range w {
		ac.Base = i * stride
		r.share.add1(1, MaxConnsPerProcess/unit)
		if cfg.Workers <= 1 {
			a, err := newAgent(ac)
			if err != nil {
				return err
			}
			r.parts = append(r.parts, localPart{a})
			r.names = append(r.names, "local")
			break
		}
		argv := cfg.WorkerCommand
		if len(argv) == 0 {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("bench: find own executable for --workers: %w", err)
			}
			argv = []string{exe, "bench"}
		}
		rp, err := startWorker(argv, ac)
		if err != nil {
			for _, p := range r.parts {
				p.stop()
			}
			r.parts = nil
			return err
		}
		r.parts = append(r.parts, rp)
		r.names = append(r.names, fmt.Sprintf("worker %d", i))
	}
	r.last = make([]*snapshot, len(r.parts))
	r.dead = make([]bool, len(r.parts))
	return nil
}

// startAgents discovers agents over NATS and starts each one's share of the
// run, weighted by the capacity it reports.
func (r *run) startAgents(ctx context.Context, ac agentConfig, unit int) error {
	cfg := r.cfg
	nc, err := nats.Connect(cfg.Agents, nats.Name("throng bench coordinator"))
	if err != nil {
		return fmt.Errorf("bench: --agents: %w", err)
	}
	r.nc = nc
	found, skipped, err := discover(ctx, nc, cfg.NATSPrefix, cfg.MinAgents, cfg.AgentWait)
	r.res.Notes = append(r.res.Notes, skipped...)
	if err != nil {
		nc.Close()
		r.nc = nil
		return err
	}
	capacity := 0
	for _, h := range found {
		capacity += h.Capacity / unit * unit
	}
	if need := cfg.peakConns(); need > capacity {
		nc.Close()
		r.nc = nil
		return fmt.Errorf("bench: the %d agents found hold %d connections together; the run needs %d", len(found), capacity, need)
	}
	r.res.Run = newRunID()
	base := 0
	for _, h := range found {
		ac.Base = base
		base += (h.Capacity + unit - 1) / unit * unit
		p, err := startNATSPart(ctx, nc, cfg.NATSPrefix, r.res.Run, h, ac, cfg.AgentTimeout)
		if err != nil {
			r.stopParts()
			r.parts, r.nc = nil, nil
			return err
		}
		r.parts = append(r.parts, p)
		r.names = append(r.names, h.Name)
		r.share.add1(float64(h.Capacity), h.Capacity/unit)
		r.res.Agents = append(r.res.Agents, AgentStats{Name: h.Name, Host: h.Host, PID: h.PID, Capacity: h.Capacity})
	}
	r.last = make([]*snapshot, len(r.parts))
	r.dead = make([]bool, len(r.parts))
	return nil
}

// all sends each live part the command mk(i) and waits for every reply. A part
// found lost is marked so; it fails the run unless OnAgentLoss is continue.
// The first error is returned with the replies.
func (r *run) all(ctx context.Context, mk func(i int) command) ([]reply, error) {
	out := make([]reply, len(r.parts))
	r.mu.Lock()
	dead := slices.Clone(r.dead)
	r.mu.Unlock()
	var wg sync.WaitGroup
	for i, p := range r.parts {
		if dead[i] {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = p.do(ctx, mk(i))
		}()
	}
	wg.Wait()
	var first error
	for i, rp := range out {
		if rp.Gone {
			r.lose(i, rp.Err)
			if r.cfg.OnAgentLoss == AgentLossContinue {
				continue
			}
		}
		if rp.Err != "" && first == nil {
			if len(r.parts) > 1 {
				first = fmt.Errorf("%s: %s", r.names[i], rp.Err)
			} else {
				first = errors.New(rp.Err)
			}
		}
	}
	if first == nil && r.liveParts() == 0 {
		first = errors.New("bench: every agent was lost")
	}
	return out, first
}

// lose marks part i lost: its connections leave the share and the counts,
// and the result says so.
func (r *run) lose(i int, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead[i] {
		return
	}
	r.dead[i] = true
	lost := r.share.drop(i)
	if r.cfg.inRooms() {
		lost *= r.cfg.RoomSize
	}
	r.res.LostConns += lost
	if s := r.last[i]; s != nil {
		c := *s
		c.Open = 0 // its connections are gone with it, as far as anyone can tell
		r.last[i] = &c
	}
	if i < len(r.res.Agents) {
		r.res.Agents[i].Lost = why
		r.res.Agents[i].LostConns = lost
	}
	r.res.Notes = append(r.res.Notes, fmt.Sprintf("%s; its %d connections are counted as lost", why, lost))
}

func (r *run) liveParts() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, d := range r.dead {
		if !d {
			n++
		}
	}
	return n
}

// connect adds n connections across the parts, by weight, at the configured
// rate and returns how many opened.
func (r *run) connect(ctx context.Context, n int) (opened, failed int, err error) {
	return r.connectAt(ctx, n, r.cfg.Rate)
}

func (r *run) connectAt(ctx context.Context, n int, rate float64) (opened, failed int, err error) {
	unit := 1
	if r.cfg.inRooms() {
		unit = r.cfg.RoomSize
	}
	r.mu.Lock()
	add, err := r.share.add(n / unit)
	r.mu.Unlock()
	if err != nil {
		return 0, 0, err
	}
	live := r.liveParts()
	replies, err := r.all(ctx, func(i int) command {
		return command{Op: opConnect, N: add[i] * unit, Rate: rate / float64(max(live, 1))}
	})
	for _, rp := range replies {
		opened += rp.Opened
		failed += rp.Failed
	}
	r.res.Conns.Requested += n
	return opened, failed, err
}

// shrink closes n connections across the parts, from those holding more than
// their weighted share first.
func (r *run) shrink(ctx context.Context, n int) error {
	unit := 1
	if r.cfg.inRooms() {
		unit = r.cfg.RoomSize
	}
	r.mu.Lock()
	sub := r.share.remove(n / unit)
	r.mu.Unlock()
	_, err := r.all(ctx, func(i int) command { return command{Op: opShrink, N: sub[i] * unit} })
	return err
}

// shares apportions connections over parts by weight: each part's share stays
// within one unit of its weighted ideal as the total grows and shrinks, and
// never passes its capacity. A lost part has no weight and no share.
type shares struct {
	w    []float64
	cap  []int
	have []int
}

func (s *shares) add1(w float64, capacity int) {
	s.w = append(s.w, w)
	s.cap = append(s.cap, capacity)
	s.have = append(s.have, 0)
}

func (s *shares) total() (n int, w float64) {
	for i, h := range s.have {
		n += h
		w += s.w[i]
	}
	return n, w
}

// add gives out n more units and returns each part's increment.
func (s *shares) add(n int) ([]int, error) {
	out := make([]int, len(s.w))
	t, w := s.total()
	t += n
	ideal := func(i int) float64 { return float64(t) * s.w[i] / w }
	given := 0
	// Most of it by the floor of each part's need, the rest a unit at a time
	// to the part with the least per weight, which keeps the proportions
	// among the parts not yet full.
	for i := range s.w {
		if w == 0 || s.w[i] == 0 {
			continue
		}
		need := min(int(ideal(i))-s.have[i], s.cap[i]-s.have[i], n-given)
		if need > 0 {
			out[i] += need
			s.have[i] += need
			given += need
		}
	}
	for ; given < n; given++ {
		best, gap := -1, 0.0
		for i := range s.w {
			if s.w[i] == 0 || s.have[i] >= s.cap[i] {
				continue
			}
			if g := float64(s.have[i]) / s.w[i]; best < 0 || g < gap {
				best, gap = i, g
			}
		}
		if best < 0 {
			// Roll back: the parts cannot hold it.
			for i, k := range out {
				s.have[i] -= k
			}
			return nil, fmt.Errorf("bench: the parts left cannot hold %d more connections", n)
		}
		out[best]++
		s.have[best]++
	}
	return out, nil
}

// remove takes n units back, a unit at a time from the part with the most per
// weight, and returns each part's decrement.
func (s *shares) remove(n int) []int {
	out := make([]int, len(s.w))
	t, _ := s.total()
	n = min(n, t)
	for k := 0; k < n; k++ {
		best, gap := -1, 0.0
		for i := range s.w {
			if s.have[i] == 0 || s.w[i] == 0 {
				continue
			}
			if g := float64(s.have[i]) / s.w[i]; best < 0 || g > gap {
				best, gap = i, g
			}
		}
		out[best]++
		s.have[best]--
	}
	return out
}

// drop removes part i from the apportioning and returns the units it held.
func (s *shares) drop(i int) int {
	n := s.have[i]
	s.w[i], s.have[i], s.cap[i] = 0, 0, 0
	return n
}

func (r *run) setPhase(p string) {
	r.mu.Lock()
	r.phase = p
	r.mu.Unlock()
}

// snapshot asks every part for its snapshot and folds the histograms into the
// run's totals. It returns the summed counters and the interval histogram.
func (r *run) snapshot() (sum snapshot, lat *hdrhistogram.Histogram) {
	replies, _ := r.all(context.Background(), func(int) command { return command{Op: opSnapshot} })
	lat = newHist()
	hs := newHist()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, rp := range replies {
		if rp.Snap != nil {
			r.last[i] = rp.Snap
			merge(lat, rp.Snap.Lat)
			merge(hs, rp.Snap.Handshake)
		}
	}
	r.lat.Merge(lat)
	r.hs.Merge(hs)
	sum.Errors = map[string]uint64{}
	for _, s := range r.last {
		if s == nil {
			continue
		}
		sum.Open += s.Open
		sum.Peak += s.Peak
		sum.Dialed += s.Dialed
		sum.Opened += s.Opened
		sum.Failed += s.Failed
		sum.Dropped += s.Dropped
		sum.Sent += s.Sent
		sum.Recv += s.Recv
		sum.BytesSent += s.BytesSent
		sum.BytesRecv += s.BytesRecv
		sum.Mismatch += s.Mismatch
		sum.Receipts += s.Receipts
		sum.WireRecv += s.WireRecv
		sum.CPU += s.CPU
		for k, v := range s.Errors {
			sum.Errors[k] += v
		}
	}
	return sum, lat
}

// clientCPU is the CPU the harness has used: the workers' and this process's.
func (r *run) clientCPU() time.Duration {
	cpu := selfCPU()
	if r.cfg.Workers > 1 || r.cfg.Agents != "" {
		s, _ := r.snapshot()
		cpu += s.CPU
	}
	return cpu
}

// progress samples the parts every second, prints a line and records the
// timeline, until ctx ends.
func (r *run) progress(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var prev snapshot
	prevT := time.Now()
	tty := isTerminal(r.cfg.Progress)
	for {
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintln(r.cfg.Progress)
			}
			return
		case <-t.C:
		}
		s, lat := r.snapshot()
		now := time.Now()
		dt := now.Sub(prevT).Seconds()
		prevT = now
		var errs uint64
		for _, v := range s.Errors {
			errs += v
		}
		tick := Tick{
			T:          now.Sub(r.start).Seconds(),
			Open:       s.Open,
			MsgsPerSec: float64(s.Recv-prev.Recv) / dt,
			SentPerSec: float64(s.Sent-prev.Sent) / dt,
			OpenPerSec: float64(s.Opened-prev.Opened) / dt,
			Errors:     errs + s.Mismatch,
		}
		r.mu.Lock()
		if len(r.cfg.Stages) > 0 {
			tick.Target = r.target
		}
		r.mu.Unlock()
		if lat.TotalCount() > 0 {
			tick.P50 = ms(lat.ValueAtQuantile(50))
			tick.P99 = ms(lat.ValueAtQuantile(99))
		}
		prev = s
		r.mu.Lock()
		r.res.Timeline = append(r.res.Timeline, tick)
		phase := r.phase
		r.mu.Unlock()
		if r.cfg.Progress == nil {
			continue
		}
		line := fmt.Sprintf("%s %-9s [%4.0fs] conns %d (+%.0f/s)  msgs/s %.0f  p50 %.2fms p99 %.2fms  errors %d",
			r.t.Name, phase, tick.T, tick.Open, tick.OpenPerSec, tick.MsgsPerSec, tick.P50, tick.P99, tick.Errors)
		if n := len(r.parts) - r.liveParts(); n > 0 {
			line += fmt.Sprintf("  LOST %d of %d agents", n, len(r.parts))
		}
		if tty {
			fmt.Fprintf(r.cfg.Progress, "\r\033[K%s", line)
		} else {
			fmt.Fprintln(r.cfg.Progress, line)
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// collect takes the final snapshot and fills the result's common figures.
func (r *run) collect() {
	s, _ := r.snapshot()
	res := r.res
	res.Conns.Opened = int(s.Opened)
	res.Conns.Failed = int(s.Failed)
	res.Conns.Dropped = int(s.Dropped)
	res.Messages.Sent = s.Sent
	res.Messages.Recv = s.Recv
	res.Messages.BytesSent = s.BytesSent
	res.Messages.BytesRecv = s.BytesRecv
	res.Messages.Mismatch = s.Mismatch
	if len(s.Errors) > 0 {
		res.Errors = s.Errors
	}
	// Each process counts its peak at every open; their sum is the peak of
	// a run whose processes peak together, as they do when they ramp, hold
	// and close together.
	res.Conns.PeakOpen = int(s.Peak)
	r.mu.Lock()
	defer r.mu.Unlock()
	res.Latency = latencyOf(r.lat)
	res.Handshake = latencyOf(r.hs)
	for i, s := range r.last {
		if i < len(res.Agents) && s != nil {
			a := &res.Agents[i]
			a.Opened, a.Failed, a.Dropped, a.Peak = int(s.Opened), int(s.Failed), int(s.Dropped), int(s.Peak)
			a.Sent, a.Recv, a.Mismatch, a.Receipts = s.Sent, s.Recv, s.Mismatch, s.Receipts
		}
	}
}

// sleep waits for d or ctx.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// MarshalJSON writes Config with its durations as strings ("10s"), as people
// read and write them, rather than as nanoseconds.
func (c Config) MarshalJSON() ([]byte, error) {
	type plain Config // without this method
	ds := func(d time.Duration) string {
		if d == 0 {
			return ""
		}
		return d.String()
	}
	return json.Marshal(struct {
		plain
		Hold             string `json:"hold"`
		Traffic          string `json:"traffic,omitempty"`
		JoinHold         string `json:"join_hold,omitempty"`
		Duration         string `json:"duration"`
		LimitRTT         string `json:"limit_rtt"`
		HandshakeTimeout string `json:"handshake_timeout"`
		Timeout          string `json:"timeout"`
	}{plain(c), ds(c.Hold), ds(c.Traffic), ds(c.JoinHold), ds(c.Duration), ds(c.LimitRTT), ds(c.HandshakeTimeout), ds(c.Timeout)})
}

// UnmarshalJSON reads what MarshalJSON writes; a duration may also be a
// number of nanoseconds, as older reports have it.
func (c *Config) UnmarshalJSON(b []byte) error {
	type plain Config
	var aux struct {
		*plain
		Hold             json.RawMessage `json:"hold"`
		Traffic          json.RawMessage `json:"traffic"`
		JoinHold         json.RawMessage `json:"join_hold"`
		Duration         json.RawMessage `json:"duration"`
		LimitRTT         json.RawMessage `json:"limit_rtt"`
		HandshakeTimeout json.RawMessage `json:"handshake_timeout"`
		Timeout          json.RawMessage `json:"timeout"`
	}
	aux.plain = (*plain)(c)
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	for _, d := range []struct {
		raw json.RawMessage
		dst *time.Duration
	}{
		{aux.Hold, &c.Hold}, {aux.Traffic, &c.Traffic}, {aux.JoinHold, &c.JoinHold}, {aux.Duration, &c.Duration},
		{aux.LimitRTT, &c.LimitRTT}, {aux.HandshakeTimeout, &c.HandshakeTimeout}, {aux.Timeout, &c.Timeout},
	} {
		if len(d.raw) == 0 || string(d.raw) == "null" {
			continue
		}
		var s string
		if json.Unmarshal(d.raw, &s) == nil {
			if s == "" {
				*d.dst = 0
				continue
			}
			v, err := time.ParseDuration(s)
			if err != nil {
				return fmt.Errorf("bench: config: %w", err)
			}
			*d.dst = v
			continue
		}
		var n int64
		if err := json.Unmarshal(d.raw, &n); err != nil {
			return fmt.Errorf("bench: config: a duration: %w", err)
		}
		*d.dst = time.Duration(n)
	}
	return nil
}
