package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// ProtocolVersion is the version of the command protocol between a coordinator
// and its agents. A coordinator only uses agents that speak the same one, and
// an agent refuses work from a coordinator that does not: a change to command,
// reply, snapshot or agentConfig that an older peer would misread bumps it.
const ProtocolVersion = 2

// DefaultNATSPrefix is the first tokens of every bench subject:
//
//	<prefix>.discover          coordinator asks; every agent answers with its hello
//	<prefix>.agent.<name>      coordinator's start, cmd and stop requests to one agent
//	<prefix>.agent.<name>.hb   the agent's heartbeat, every AgentOptions.Heartbeat
//	<prefix>.run.<run>.hb      the coordinator's heartbeat while a run lasts
const DefaultNATSPrefix = "throng.bench"

// Defaults of the NATS transport.
const (
	DefaultHeartbeat    = time.Second
	DefaultAgentTimeout = 5 * time.Second  // silent this long: lost
	DefaultAgentWait    = 30 * time.Second // for --min-agents
	discoverWindow      = time.Second      // how long a discovery round collects answers
)

// hello is an agent's answer to discovery.
type hello struct {
	Version  int    `json:"version"`
	Name     string `json:"name"`
	Host     string `json:"host"`
	PID      int    `json:"pid"`
	Capacity int    `json:"capacity"` // connections it can hold
	Loops    int    `json:"loops"`
	Sources  int    `json:"sources"` // its own source addresses
	Busy     string `json:"busy,omitempty"`
}

// envelope is one request from a coordinator to an agent.
type envelope struct {
	Version int    `json:"version"`
	Op      string `json:"op"` // envStart, envCmd or envStop
	Run     string `json:"run"`
	// Start only.
	Config  *agentConfig  `json:"config,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"` // the coordinator is lost after this long without a heartbeat
	// Cmd only.
	Cmd *command `json:"cmd,omitempty"`
}

const (
	envStart = "start"
	envCmd   = "cmd"
	envStop  = "stop"
)

// heartbeat is what an agent and a coordinator publish to show they are alive.
type heartbeat struct {
	Version int    `json:"version"`
	Run     string `json:"run,omitempty"`
}

// ErrVersion is the error of a peer speaking another ProtocolVersion.
var ErrVersion = errors.New("bench: protocol version mismatch")

// AgentOptions configures a NATS agent, `throng bench agent`.
type AgentOptions struct {
	// NATS is the server URL, or several separated by commas. Required.
	NATS string
	// Name identifies the agent in subjects and reports; it must be unique
	// among the agents and one subject token (no dots, spaces or wildcards).
	// If empty, the host name and process id.
	Name string
	// SourceIPs are this agent's local addresses to dial from, such as
	// "127.0.0.2-127.0.0.50"; they replace the coordinator's --source-ips.
	SourceIPs string
	// MaxConns is the most connections the agent holds, what it reports as
	// its capacity. If zero, MaxConnsPerProcess.
	MaxConns int
	// Loops is the event loops the agent's clients run on. If zero, the
	// coordinator's --loops, or GOMAXPROCS.
	Loops int
	// Prefix is the subjects' first tokens. If empty, DefaultNATSPrefix.
	Prefix string
	// Heartbeat is how often the agent says it is alive. If zero,
	// DefaultHeartbeat.
	Heartbeat time.Duration
	// Logger receives the agent's log. If nil, nothing is logged.
	Logger *slog.Logger

	// version overrides ProtocolVersion, for tests of a mismatch.
	version int
}

func (o *AgentOptions) setDefaults() error {
	if o.NATS == "" {
		return errors.New("bench: agent needs --nats")
	}
	if o.Name == "" {
		h, _ := os.Hostname()
		o.Name = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	o.Name = strings.Map(func(r rune) rune {
		if r == '.' || r == '*' || r == '>' || r <= ' ' {
			return '_'
		}
		return r
	}, o.Name)
	if _, err := ParseSourceIPs(o.SourceIPs); err != nil {
		return err
	}
	if o.MaxConns <= 0 || o.MaxConns > MaxConnsPerProcess {
		if o.MaxConns > MaxConnsPerProcess {
			return fmt.Errorf("bench: --max-conns %d passes the per-process limit of %d: start more agents", o.MaxConns, MaxConnsPerProcess)
		}
		o.MaxConns = MaxConnsPerProcess
	}
	if o.Prefix == "" {
		o.Prefix = DefaultNATSPrefix
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.version == 0 {
		o.version = ProtocolVersion
	}
	return nil
}

// natsAgent is a running `throng bench agent`: one run at a time.
type natsAgent struct {
	o   AgentOptions
	nc  *nats.Conn
	ips []string
	log *slog.Logger

	mu     sync.Mutex
	run    string             // guarded by mu: the run being served, "" when idle
	a      *agent             // guarded by mu: nil once the run is ending
	ctx    context.Context    // guarded by mu: the run's commands'
	cancel context.CancelFunc // guarded by mu: ends the run's commands
	hbSub  *nats.Subscription // guarded by mu
	lastHB atomic.Int64       // unix ns of the run's coordinator's last heartbeat

	// Goroutines, each waited for: the run's commands, its watchdog, and
	// the end of a run the watchdog started.
	cmds    sync.WaitGroup
	watchWG sync.WaitGroup
	bg      sync.WaitGroup
}

// RunAgent runs a NATS agent until ctx ends: it answers discovery, serves one
// coordinator's run at a time, and drops a run whose coordinator goes silent.
func RunAgent(ctx context.Context, o AgentOptions) error {
	if err := o.setDefaults(); err != nil {
		return err
	}
	addrs, _ := ParseSourceIPs(o.SourceIPs)
	na := &natsAgent{o: o, log: o.Logger.With("agent", o.Name)}
	for _, a := range addrs {
		na.ips = append(na.ips, a.String())
	}
	raiseFileLimit()
	nc, err := nats.Connect(o.NATS, nats.Name("throng bench agent "+o.Name), nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true), nats.ReconnectWait(time.Second))
	if err != nil {
		return fmt.Errorf("bench: agent: nats: %w", err)
	}
	na.nc = nc
	defer nc.Close()
	sub1, err := nc.Subscribe(o.Prefix+".discover", na.onDiscover)
	if err != nil {
		return fmt.Errorf("bench: agent: %w", err)
	}
	defer sub1.Unsubscribe()
	sub2, err := nc.Subscribe(o.Prefix+".agent."+o.Name, na.onRequest)
	if err != nil {
		return fmt.Errorf("bench: agent: %w", err)
	}
	defer sub2.Unsubscribe()
	na.log.Info("agent waiting for work", "nats", o.NATS, "capacity", o.MaxConns, "sources", len(na.ips), "protocol", o.version)
	t := time.NewTicker(o.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			na.endRun("agent stopping")
			na.bg.Wait()
			nc.Flush()
			return nil
		case <-t.C:
			na.mu.Lock()
			hb, _ := json.Marshal(heartbeat{Version: o.version, Run: na.run})
			na.mu.Unlock()
			nc.Publish(o.Prefix+".agent."+o.Name+".hb", hb)
		}
	}
}

func (na *natsAgent) hello() hello {
	h, _ := os.Hostname()
	na.mu.Lock()
	defer na.mu.Unlock()
	return hello{Version: na.o.version, Name: na.o.Name, Host: h, PID: os.Getpid(), Capacity: na.o.MaxConns,
		Loops: na.o.Loops, Sources: len(na.ips), Busy: na.run}
}

func (na *natsAgent) onDiscover(m *nats.Msg) {
	b, _ := json.Marshal(na.hello())
	m.Respond(b)
}

func respond(m *nats.Msg, r reply) {
	b, _ := json.Marshal(r)
	m.Respond(b)
}

// onRequest serves the coordinator's requests. NATS calls it one message at a
// time, so commands, which may overlap (a snapshot while echo runs), each get a
// goroutine the run owns.
func (na *natsAgent) onRequest(m *nats.Msg) {
	var env envelope
	if err := json.Unmarshal(m.Data, &env); err != nil {
		respond(m, reply{Err: fmt.Sprintf("bench: agent %s: bad request: %v", na.o.Name, err)})
		return
	}
	if env.Version != na.o.version {
		respond(m, reply{Err: fmt.Sprintf("%v: agent %s speaks v%d, the coordinator v%d", ErrVersion, na.o.Name, na.o.version, env.Version)})
		return
	}
	switch env.Op {
	case envStart:
		respond(m, na.start(env))
	case envStop:
		na.mu.Lock()
		mine := na.run == env.Run
		na.mu.Unlock()
		if mine {
			na.endRun("coordinator stopped the run")
		}
		respond(m, reply{})
	case envCmd:
		na.mu.Lock()
		a, ctx := na.a, na.ctx
		if na.run != env.Run || a == nil || env.Cmd == nil {
			na.mu.Unlock()
			respond(m, reply{Err: fmt.Sprintf("bench: agent %s is not in run %s", na.o.Name, env.Run)})
			return
		}
		cmd := *env.Cmd
		na.cmds.Add(1) // under mu, so endRun's Wait never races an Add
		na.mu.Unlock()
		go func() {
			defer na.cmds.Done()
			r := a.do(ctx, cmd)
			r.ID = cmd.ID
			respond(m, r)
		}()
	default:
		respond(m, reply{Err: fmt.Sprintf("bench: agent: unknown op %q", env.Op)})
	}
}

func (na *natsAgent) start(env envelope) reply {
	if env.Config == nil || env.Run == "" {
		return reply{Err: "bench: agent: start without a run or configuration"}
	}
	na.mu.Lock()
	if na.run != "" {
		busy := na.run
		na.mu.Unlock()
		return reply{Err: fmt.Sprintf("bench: agent %s is busy with run %s", na.o.Name, busy)}
	}
	na.mu.Unlock()
	cfg := *env.Config
	if len(na.ips) > 0 {
		cfg.SourceIPs = na.ips
	}
	if na.o.Loops > 0 {
		cfg.Loops = na.o.Loops
	}
	cfg.MaxConns = na.o.MaxConns
	a, err := newAgent(cfg)
	if err != nil {
		return reply{Err: err.Error()}
	}
	timeout := env.Timeout
	if timeout <= 0 {
		timeout = DefaultAgentTimeout
	}
	na.lastHB.Store(time.Now().UnixNano())
	sub, err := na.nc.Subscribe(na.o.Prefix+".run."+env.Run+".hb", func(*nats.Msg) {
		na.lastHB.Store(time.Now().UnixNano())
	})
	if err != nil {
		a.close()
		return reply{Err: err.Error()}
	}
	ctx, cancel := context.WithCancel(context.Background())
	na.mu.Lock()
	na.run, na.a, na.ctx, na.cancel, na.hbSub = env.Run, a, ctx, cancel, sub
	na.mu.Unlock()
	na.log.Info("run started", "run", env.Run, "url", cfg.URL, "protocol", cfg.Protocol, "base", cfg.Base)
	na.watchWG.Add(1)
	go na.watch(ctx, env.Run, timeout)
	return reply{}
}

// watch ends the run if its coordinator goes silent for timeout.
func (na *natsAgent) watch(ctx context.Context, run string, timeout time.Duration) {
	defer na.watchWG.Done()
	t := time.NewTicker(timeout / 10)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if time.Since(time.Unix(0, na.lastHB.Load())) > timeout {
				na.bg.Add(1)
				go func() {
					defer na.bg.Done()
					na.endRun(fmt.Sprintf("coordinator of run %s silent for %v", run, timeout))
				}()
				return
			}
		}
	}
}

// endRun cancels the run's commands, closes its connections and makes the
// agent idle again. The agent logs its own figures, to set beside the
// coordinator's merged ones.
func (na *natsAgent) endRun(why string) {
	na.mu.Lock()
	a, run, cancel, sub := na.a, na.run, na.cancel, na.hbSub
	na.a = nil // refuses further commands; run stays set, so the agent is busy until it is done
	na.mu.Unlock()
	if a == nil {
		return
	}
	cancel()
	na.cmds.Wait()
	na.watchWG.Wait()
	sub.Unsubscribe()
	a.closeAll(context.Background())
	s := a.snapshot()
	a.close()
	na.log.Info("run ended", "run", run, "why", why, "opened", s.Opened, "failed", s.Failed, "dropped", s.Dropped,
		"peak", s.Peak, "sent", s.Sent, "recv", s.Recv, "mismatch", s.Mismatch, "receipts", s.Receipts)
	na.mu.Lock()
	na.run, na.cancel, na.hbSub, na.ctx = "", nil, nil, nil
	na.mu.Unlock()
}

// agentInfo is what a coordinator knows of an agent it uses.
type agentInfo = hello

// discover finds idle agents speaking this ProtocolVersion: it asks, collects
// answers for a second, and asks again until at least min answered or wait
// passes. Agents of another version and busy ones are reported in skipped.
func discover(ctx context.Context, nc *nats.Conn, prefix string, min int, wait time.Duration) (found []hello, skipped []string, err error) {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, nil, err
	}
	defer sub.Unsubscribe()
	deadline := time.Now().Add(wait)
	for {
		byName := map[string]hello{}
		why := map[string]string{}
		if err := nc.PublishRequest(prefix+".discover", inbox, nil); err != nil {
			return nil, nil, fmt.Errorf("bench: discover agents: %w", err)
		}
		rctx, cancel := context.WithTimeout(ctx, discoverWindow)
		for {
			m, err := sub.NextMsgWithContext(rctx)
			if err != nil {
				break
			}
			var h hello
			if json.Unmarshal(m.Data, &h) != nil || h.Name == "" {
				continue
			}
			switch {
			case h.Version != ProtocolVersion:
				why[h.Name] = fmt.Sprintf("agent %s speaks protocol v%d, this coordinator v%d", h.Name, h.Version, ProtocolVersion)
			case h.Busy != "":
				why[h.Name] = fmt.Sprintf("agent %s is busy with run %s", h.Name, h.Busy)
			default:
				byName[h.Name] = h
			}
		}
		cancel()
		found, skipped = found[:0], skipped[:0]
		for _, h := range byName {
			found = append(found, h)
		}
		for _, w := range why {
			skipped = append(skipped, w)
		}
		sort.Slice(found, func(i, j int) bool { return found[i].Name < found[j].Name })
		sort.Strings(skipped)
		if len(found) >= max(min, 1) {
			return found, skipped, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			msg := fmt.Sprintf("bench: %d of the %d agents needed answered on %s within %v", len(found), max(min, 1), nc.ConnectedUrlRedacted(), wait)
			if len(skipped) > 0 {
				msg += " (" + strings.Join(skipped, "; ") + ")"
			}
			return nil, skipped, errors.New(msg)
		}
	}
}

// natsPart is an agent on another process or machine, reached over NATS.
type natsPart struct {
	nc      *nats.Conn
	subj    string
	run     string
	info    hello
	timeout time.Duration

	life   context.Context // ends when the agent is lost
	lose   context.CancelCauseFunc
	lastHB atomic.Int64 // unix ns
	hbSub  *nats.Subscription
	watch  sync.WaitGroup
	nextID atomic.Uint64
}

// startNATSPart claims the agent for run and starts its share with cfg.
func startNATSPart(ctx context.Context, nc *nats.Conn, prefix, run string, h hello, cfg agentConfig, timeout time.Duration) (*natsPart, error) {
	p := &natsPart{nc: nc, subj: prefix + ".agent." + h.Name, run: run, info: h, timeout: timeout}
	p.life, p.lose = context.WithCancelCause(context.Background())
	p.lastHB.Store(time.Now().UnixNano())
	var err error
	p.hbSub, err = nc.Subscribe(p.subj+".hb", func(*nats.Msg) { p.lastHB.Store(time.Now().UnixNano()) })
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(envelope{Version: ProtocolVersion, Op: envStart, Run: run, Config: &cfg, Timeout: timeout})
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := nc.RequestWithContext(rctx, p.subj, b)
	if err == nil {
		var r reply
		if err = json.Unmarshal(m.Data, &r); err == nil && r.Err != "" {
			err = errors.New(r.Err)
		}
	}
	if err != nil {
		p.hbSub.Unsubscribe()
		p.lose(nil)
		return nil, fmt.Errorf("bench: start agent %s: %w", h.Name, err)
	}
	p.watch.Add(1)
	go p.watchdog()
	return p, nil
}

// watchdog marks the agent lost once it has been silent for the timeout.
func (p *natsPart) watchdog() {
	defer p.watch.Done()
	t := time.NewTicker(p.timeout / 10)
	defer t.Stop()
	for {
		select {
		case <-p.life.Done():
			return
		case <-t.C:
			if d := time.Since(time.Unix(0, p.lastHB.Load())); d > p.timeout {
				p.lose(fmt.Errorf("agent %s lost: no heartbeat for %v", p.info.Name, d.Round(100*time.Millisecond)))
				return
			}
		}
	}
}

func (p *natsPart) do(ctx context.Context, cmd command) reply {
	if p.life.Err() != nil {
		return reply{Err: context.Cause(p.life).Error(), Gone: true}
	}
	cmd.ID = p.nextID.Add(1)
	b, _ := json.Marshal(envelope{Version: ProtocolVersion, Op: envCmd, Run: p.run, Cmd: &cmd})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(p.life, cancel)()
	m, err := p.nc.RequestWithContext(ctx, p.subj, b)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			p.lose(fmt.Errorf("agent %s lost: no longer subscribed", p.info.Name))
		}
		if p.life.Err() != nil {
			return reply{Err: context.Cause(p.life).Error(), Gone: true}
		}
		return reply{Err: fmt.Sprintf("bench: agent %s: %v", p.info.Name, err)}
	}
	var r reply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return reply{Err: fmt.Sprintf("bench: agent %s: bad reply: %v", p.info.Name, err)}
	}
	return r
}

// stop ends the agent's run (it closes its connections) and forgets it.
func (p *natsPart) stop() error {
	var err error
	if p.life.Err() == nil {
		b, _ := json.Marshal(envelope{Version: ProtocolVersion, Op: envStop, Run: p.run})
		_, err = p.nc.Request(p.subj, b, DefaultCloseTimeout+15*time.Second)
	}
	p.lose(nil)
	p.watch.Wait()
	p.hbSub.Unsubscribe()
	return err
}

// lost reports why the agent was lost, or nil.
func (p *natsPart) lost() error {
	if p.life.Err() == nil {
		return nil
	}
	return context.Cause(p.life)
}

// coordinatorHeartbeat publishes the run's heartbeat until ctx ends.
func coordinatorHeartbeat(ctx context.Context, nc *nats.Conn, prefix, run string) {
	b, _ := json.Marshal(heartbeat{Version: ProtocolVersion, Run: run})
	t := time.NewTicker(DefaultHeartbeat / 2)
	defer t.Stop()
	for {
		nc.Publish(prefix+".run."+run+".hb", b)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func newRunID() string { return nuid.Next() }
