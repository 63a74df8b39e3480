package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/throng-ws/throng/bench"
	"github.com/throng-ws/throng/internal/redact"
)

type thresholdsFlag []bench.Threshold

func (t *thresholdsFlag) String() string { return fmt.Sprint(len(*t)) }

func (t *thresholdsFlag) Set(s string) error {
	th, err := bench.ParseThreshold(s)
	if err != nil {
		return err
	}
	*t = append(*t, th)
	return nil
}

type stagesFlag []bench.Stage

func (s *stagesFlag) String() string { return fmt.Sprint(len(*s)) }

func (s *stagesFlag) Set(v string) error {
	st, err := bench.ParseStages(v)
	if err != nil {
		return err
	}
	*s = st
	return nil
}

type targetsFlag []bench.Target

func (t *targetsFlag) String() string {
	if t == nil || len(*t) == 0 {
		return ""
	}
	return fmt.Sprint(len(*t), " targets")
}

func (t *targetsFlag) Set(s string) error {
	tg, err := bench.ParseTarget(s)
	if err != nil {
		return err
	}
	*t = append(*t, tg)
	return nil
}

func benchCommand() *ffcli.Command {
	var subs []*ffcli.Command
	for _, sc := range bench.Scenarios {
		subs = append(subs, benchScenarioCommand(sc))
	}
	subs = append(subs, benchAgentCommand())
	subs = append(subs, benchRecoveryCommand())
	return &ffcli.Command{
		Name:       "bench",
		ShortUsage: "throng bench <" + strings.Join(bench.Scenarios, "|") + "|recovery> [flags]",
		ShortHelp:  "load-test throng or any echo / websocket-shootout server",
		LongHelp: "throng bench drives WebSocket clients on an epoll event loop (about 19,000 per process;\n" +
			"--workers for more on this machine, --agents for `throng bench agent`s on many) against\n" +
			"one or more targets and prints a table per target.\n" +
			"Every run is bounded in connections and time (--timeout) and stops by itself.",
		Subcommands: subs,
		Exec: func(context.Context, []string) error {
			// A coordinator re-executes `throng bench` as its workers.
			if ok, code := bench.WorkerMain(); ok {
				os.Exit(code)
			}
			return flag.ErrHelp
		},
	}
}

func benchScenarioCommand(scenario string) *ffcli.Command {
	var c bench.Config
	c.Scenario = scenario
	var (
		targets              targetsFlag
		url, statsURL        string
		urls, pids           string
		pid                  int
		jsonFile, reportFile string
		quiet                bool
		thresholds           thresholdsFlag
		stages               stagesFlag
	)
	fs := flag.NewFlagSet("throng bench "+scenario, flag.ContinueOnError)
	fs.StringVar(&url, "url", "", "target WebSocket URL, such as ws://127.0.0.1:8080/echo (no path: the scenario's default)")
	fs.Var(&targets, "target", "a target to compare, name=URL[,pid=N][,stats=URL]; repeat for several (instead of --url)")
	fs.StringVar(&urls, "urls", "", "comma-separated WebSocket URLs measured as one target, such as a cluster's nodes: connection i goes to the (i mod n)th, so chat rooms span them (instead of --url)")
	fs.StringVar(&pids, "server-pids", "", "with --urls: the servers' comma-separated process ids; RSS and CPU are summed over them")
	fs.IntVar(&pid, "server-pid", 0, "the --url server's process id: RSS and CPU are read from /proc")
	fs.StringVar(&statsURL, "stats-url", "", "HTTP URL answering JSON with the server's RSS bytes (instead of --server-pid)")
	fs.StringVar(&c.StatsField, "stats-field", "rss_bytes", "dotted JSON field of --stats-url holding RSS bytes")
	fs.StringVar(&c.JWTSecret, "jwt-secret", "", "HMAC secret: mint an HS256 token per client (sub bench-<i>); also THRONG_JWT_SECRET")
	fs.BoolVar(&c.TokenInHeader, "token-in-header", false, "send tokens as Authorization: Bearer instead of ?token=")
	fs.BoolVar(&c.Compression, "compression", false, "offer permessage-deflate (no context takeover) on every connection and inflate what the server compresses; chat and broadcast report bytes on the wire per delivery")
	fs.StringVar(&c.SourceIPs, "source-ips", "", "local addresses to spread connections over, such as 127.0.0.2-127.0.0.50")
	fs.IntVar(&c.Workers, "workers", 0, "worker processes, each at most 19,500 connections (0: in this process)")
	fs.IntVar(&c.Loops, "loops", 0, "event loops per process (0: GOMAXPROCS)")
	// Each scenario lists only its own flags, with the defaults it runs with;
	// bench.Config's zero values mean the same defaults.
	in := func(ss ...string) bool { return slices.Contains(ss, scenario) }
	const (
		idle, echo, broadcast, chat = bench.ScenarioIdle, bench.ScenarioEcho, bench.ScenarioBroadcast, bench.ScenarioChat
		churn, storm, upgrade       = bench.ScenarioChurn, bench.ScenarioStorm, bench.ScenarioUpgrade
	)
	conns := 100
	switch {
	case in(idle, storm):
		conns = 1000
	case in(upgrade):
		conns = bench.DefaultUpgradeConns
	}
	fs.IntVar(&c.Conns, "conns", conns, "connections")
	fs.Float64Var(&c.Rate, "rate", 1000, "connections opened per second while ramping up")
	if in(idle) {
		fs.DurationVar(&c.Hold, "hold", 10*time.Second, "how long to hold the connections")
		fs.DurationVar(&c.Traffic, "traffic", 0, "after the hold, echo on every connection this long (one --size message in flight each), hold again and read server memory again (0: no traffic)")
		fs.IntVar(&c.Sample, "sample", 100, "connections pinged after the hold to check they are alive")
	}
	if in(chat, upgrade) {
		fs.IntVar(&c.RoomSize, "room-size", 10, "members per room")
		fs.Float64Var(&c.RoomRate, "room-rate", 1, "messages per second per room")
	}
	if in(upgrade) {
		u := &c.Upgrade
		fs.StringVar(&u.Mode, "mode", bench.UpgradeHandoff, "handoff: SIGUSR2, the new process takes every connection; drain: SIGTERM (close 1001 at the server's --drain-rate), then --restart, and the clients redial and recover")
		fs.IntVar(&u.PID, "pid", 0, "the target server's process id, on this machine (required)")
		fs.StringVar(&u.Restart, "restart", "", "with --mode drain: the command that starts the server again, run as sh -c 'exec COMMAND' once the old process has exited (as systemctl restart does); it is left serving")
		fs.DurationVar(&u.Warmup, "warmup", 10*time.Second, "how long the rooms chat before the signal (the baseline pauses)")
		fs.DurationVar(&u.Settle, "settle", 5*time.Second, "how long the rooms go on chatting once every member is served again")
		fs.DurationVar(&u.SettleTimeout, "settle-timeout", time.Minute, "fail if the members are not all served again this long after the signal")
		fs.DurationVar(&u.Backoff, "backoff", 100*time.Millisecond, "a member's first redial waits a random time between half this and this, doubling each failure")
		fs.DurationVar(&u.BackoffMax, "backoff-max", 5*time.Second, "the most a redial waits")
	}
	if in(chat) {
		fs.DurationVar(&c.JoinHold, "join-hold", 0, "hold the joined, silent clients this long, then read server memory per member (0: no hold)")
	}
	if in(echo, chat, churn) {
		fs.DurationVar(&c.Duration, "duration", 10*time.Second, "how long to run")
	}
	if in(echo) {
		fs.IntVar(&c.Inflight, "inflight", 1, "messages in flight per connection")
		fs.BoolVar(&c.Text, "text", false, "send text frames instead of binary")
	}
	if in(idle, echo, broadcast, chat, upgrade) {
		fs.IntVar(&c.Size, "size", 64, "payload bytes (echo needs at least 32)")
	}
	if in(broadcast) {
		fs.IntVar(&c.Inflight, "inflight", 4, "broadcasts in flight")
		fs.IntVar(&c.Inflight, "c", 4, "as websocket-bench's -c (same as --inflight)")
		fs.StringVar(&c.Protocol, "protocol", "json", "websocket-shootout form, json or binary")
		fs.IntVar(&c.StepSize, "step-size", 1000, "clients added per step")
		fs.IntVar(&c.Samples, "samples", 40, "broadcasts measured per step")
		fs.IntVar(&c.Samples, "s", 40, "as websocket-bench's -s (same as --samples)")
		fs.IntVar(&c.MaxClients, "max-clients", 10000, "stop at this many clients")
		fs.Float64Var(&c.LimitPercentile, "limit-percentile", 95, "the RTT percentile held against --limit-rtt")
		fs.DurationVar(&c.LimitRTT, "limit-rtt", 500*time.Millisecond, "stop once the percentile RTT passes this")
	}
	if in(churn) {
		fs.Float64Var(&c.ChurnRate, "churn-rate", 10, "disconnects (each followed by a reconnect) per second")
	}
	if in(storm) {
		fs.Float64Var(&c.ReconnectRate, "reconnect-rate", 0, "redials per second (0: all at once)")
	}
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", 10*time.Second, "connect plus upgrade deadline per connection")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Minute, "hard bound on the run against each target")
	fs.StringVar(&c.Agents, "agents", "", "NATS URL where `throng bench agent`s wait: run the load on them, spread by the capacity each reports (instead of --workers)")
	fs.IntVar(&c.MinAgents, "min-agents", 1, "with --agents: wait until this many idle agents of this protocol version answer; all that answer are used")
	fs.DurationVar(&c.AgentWait, "agent-wait", 30*time.Second, "with --agents: how long to wait for --min-agents")
	fs.DurationVar(&c.AgentTimeout, "agent-timeout", 5*time.Second, "with --agents: an agent silent this long is lost")
	fs.StringVar(&c.OnAgentLoss, "on-agent-loss", "fail", "with --agents: fail the run when an agent is lost, or continue with the others (its connections counted as lost)")
	fs.StringVar(&c.NATSPrefix, "nats-prefix", bench.DefaultNATSPrefix, "with --agents: the bench subjects' prefix, the same as the agents'")
	if in(idle, echo, chat) {
		fs.Var(&stages, "stages", "ramp the connection count as duration:target stages, such as 30s:10000,2m:10000,30s:0 (replaces --conns and the ramp and hold)")
	}
	fs.Var(&thresholds, "threshold", "fail the run (exit status 1) unless metric op value holds, such as 'p99<50ms', 'errors==0', 'bytes_per_conn<800'; repeat for several. Metrics: "+strings.Join(bench.ThresholdMetrics(), ", "))
	fs.StringVar(&c.Floor, "floor", "", "the --target the others are quoted against as ratios (CPU per echo or delivery, latency), a server that does only the I/O such as bench/peers/floor (default: the target named "+bench.DefaultFloorTarget+", if any)")
	fs.StringVar(&jsonFile, "json", "", "write every figure to this JSON file")
	fs.StringVar(&reportFile, "report", "", "write a self-contained HTML report with charts to this file")
	fs.BoolVar(&quiet, "quiet", false, "no progress line on stderr")
	return &ffcli.Command{
		Name:       scenario,
		ShortUsage: "throng bench " + scenario + " [flags]",
		LongHelp:   bench.ScenarioLongHelp[scenario],
		ShortHelp:  bench.ScenarioHelp[scenario],
		FlagSet:    fs,
		Options:    envOptions,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Sprintf("bench %s: unexpected arguments %q", scenario, args)}
			}
			if err := positive(fs, "traffic", "join-hold", "reconnect-rate", "workers", "loops", "server-pid", "sample"); err != nil {
				return usageError{"bench " + scenario + ": " + err.Error()}
			}
			switch {
			case urls != "" && (url != "" || pid != 0):
				return errors.New("bench: --urls replaces --url and --server-pid (use --server-pids)")
			case urls != "":
				tg, err := bench.ClusterTarget(urls, pids)
				if err != nil {
					return err
				}
				tg.StatsURL = statsURL
				targets = append(targets, tg)
			case pids != "":
				return errors.New("bench: --server-pids goes with --urls")
			case url != "":
				targets = append(targets, bench.Target{URL: url, PID: pid, StatsURL: statsURL})
			case pid != 0 || statsURL != "":
				return errors.New("bench: --server-pid and --stats-url go with --url; use pid= and stats= in --target")
			}
			if scenario == upgrade && len(targets) == 1 && targets[0].PID == 0 {
				targets[0].PID = c.Upgrade.PID
			}
			c.Targets = targets
			c.Stages = stages
			c.Thresholds = thresholds
			c.Command = redactArgs(os.Args)
			for _, f := range []string{jsonFile, reportFile} {
				if f != "" {
					if err := bench.CheckOutput(f); err != nil {
						return err
					}
				}
			}
			if !quiet {
				c.Progress = os.Stderr
			}
			ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			rep, err := bench.Run(ctx, c)
			if rep == nil {
				return err
			}
			rep.WriteTable(os.Stdout)
			if jsonFile != "" {
				if err := rep.WriteJSON(jsonFile); err != nil {
					return err
				}
			}
			if reportFile != "" {
				if err := rep.WriteHTML(reportFile); err != nil {
					return err
				}
			}
			if err != nil {
				return err
			}
			if rep.Failed() {
				return errors.New("bench: a target's run failed or breached a threshold (see the table)")
			}
			return nil
		},
	}
}

// redactArgs is the command line with --jwt-secret's value and any URL's
// credentials replaced, fit for a report.
func redactArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case strings.HasPrefix(a, "-") && name == "jwt-secret" && hasValue:
			out[i] = a[:strings.IndexByte(a, '=')+1] + redact.Redacted
		case i > 0 && strings.HasPrefix(args[i-1], "-") && strings.TrimLeft(args[i-1], "-") == "jwt-secret":
			out[i] = redact.Redacted
		default:
			out[i] = redact.String(a)
		}
	}
	return out
}

func benchAgentCommand() *ffcli.Command {
	var o bench.AgentOptions
	fs := flag.NewFlagSet("throng bench agent", flag.ContinueOnError)
	fs.StringVar(&o.NATS, "nats", "", "NATS server URL(s), comma-separated, where coordinators find this agent (required)")
	fs.StringVar(&o.Name, "name", "", "agent name, unique among the agents, one NATS subject token (default: host name and pid)")
	fs.StringVar(&o.SourceIPs, "source-ips", "", "local addresses this agent dials from, such as 127.0.0.2-127.0.0.50 (replace the coordinator's --source-ips)")
	fs.IntVar(&o.MaxConns, "max-conns", 0, "connections this agent holds at most, its weight when a run is spread (0 and at most: 19,500)")
	fs.IntVar(&o.Loops, "loops", 0, "event loops (0: the coordinator's --loops, or GOMAXPROCS)")
	fs.StringVar(&o.Prefix, "nats-prefix", bench.DefaultNATSPrefix, "the bench subjects' prefix, the same as the coordinator's")
	return &ffcli.Command{
		Name:       "agent",
		ShortUsage: "throng bench agent --nats nats://host:4222 [flags]",
		ShortHelp:  "wait on NATS for a coordinator's `throng bench <scenario> --agents` and generate its share of the load",
		LongHelp: "throng bench agent runs on each load machine. It answers coordinators' discovery on NATS,\n" +
			"serves one run at a time, and drops a run (closing its connections) whose coordinator goes silent.\n" +
			"It stops on SIGINT or SIGTERM.",
		FlagSet: fs,
		Options: envOptions,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("bench agent: unexpected arguments %q", args)
			}
			ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
			return bench.RunAgent(ctx, o)
		},
	}
}

// positive checks that every numeric flag of fs is above 0, except those
// named, for which 0 means "none" and only a negative value is refused: none
// of them silently becomes a default.
func positive(fs *flag.FlagSet, zeroOK ...string) error {
	var errs []string
	fs.VisitAll(func(f *flag.Flag) {
		g, ok := f.Value.(flag.Getter)
		if !ok {
			return
		}
		var n float64
		switch x := g.Get().(type) {
		case int:
			n = float64(x)
		case float64:
			n = x
		case time.Duration:
			n = float64(x)
		default:
			return // not a number
		}
		v := f.Value.String()
		switch {
		case n < 0:
			errs = append(errs, fmt.Sprintf("--%s must not be negative, not %s", f.Name, v))
		case n == 0 && !slices.Contains(zeroOK, f.Name):
			errs = append(errs, fmt.Sprintf("--%s must be more than 0, not %s", f.Name, v))
		}
	})
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// benchRecoveryCommand is `throng bench recovery`: members drop and redial at
// random while rooms chat; every member must end with every message of the
// room's history once and in order.
func benchRecoveryCommand() *ffcli.Command {
	var c bench.RecoveryConfig
	var urls, apis, jsonFile string
	fs := flag.NewFlagSet("throng bench recovery", flag.ContinueOnError)
	fs.StringVar(&urls, "urls", "", "comma-separated /ws URLs of the nodes (ws://127.0.0.1:8080/ws,...)")
	fs.StringVar(&apis, "apis", "", "comma-separated HTTP base URLs of the nodes, for the rooms' histories at the end (http://127.0.0.1:8081,...)")
	fs.StringVar(&c.APIKey, "api-key", "", "the nodes' --api-key")
	fs.StringVar(&c.JWTSecret, "jwt-secret", "", "HMAC secret: mint an HS256 token per connection")
	fs.IntVar(&c.Rooms, "rooms", 10, "rooms")
	fs.IntVar(&c.RoomSize, "room-size", 10, "members per room, besides one sender")
	fs.Float64Var(&c.RoomRate, "room-rate", 5, "messages per second per room")
	fs.DurationVar(&c.Duration, "duration", 20*time.Second, "how long the rooms chat")
	fs.DurationVar(&c.DropEvery, "drop-every", 3*time.Second, "mean time between a member's drops (0: no drops)")
	fs.DurationVar(&c.Settle, "settle", 3*time.Second, "how long members stay, without drops, after the chat")
	fs.StringVar(&jsonFile, "json", "", "write the result to this JSON file")
	return &ffcli.Command{
		Name:       "recovery",
		ShortUsage: "throng bench recovery --urls U --apis A --api-key K [flags]",
		ShortHelp:  "members drop and redial at random while rooms chat; missing, duplicated and out-of-order messages, all must be 0",
		FlagSet:    fs,
		Options:    envOptions,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("bench: unexpected arguments %q", args)
			}
			c.URLs = strings.Split(urls, ",")
			c.APIs = strings.Split(apis, ",")
			ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			res, err := bench.RunRecovery(ctx, c)
			if res != nil {
				fmt.Println(res)
				if jsonFile != "" {
					b, _ := json.MarshalIndent(res, "", "  ")
					if werr := os.WriteFile(jsonFile, b, 0o644); werr != nil {
						return werr
					}
				}
			}
			if err != nil {
				return err
			}
			if !res.OK() {
				return errors.New("bench: some members did not get every message once and in order")
			}
			return nil
		},
	}
}
