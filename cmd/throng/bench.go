package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/throng-ws/throng/bench"
)

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
	return &ffcli.Command{
		Name:       "bench",
		ShortUsage: "throng bench <" + strings.Join(bench.Scenarios, "|") + "> [flags]",
		ShortHelp:  "load-test throng or any echo / websocket-shootout server",
		LongHelp: "throng bench drives WebSocket clients on an epoll event loop (about 19,000 per process;\n" +
			"--workers for more) against one or more targets and prints a table per target.\n" +
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
	fs.StringVar(&c.SourceIPs, "source-ips", "", "local addresses to spread connections over, such as 127.0.0.2-127.0.0.50")
	fs.IntVar(&c.Workers, "workers", 0, "worker processes, each at most 19,500 connections (0: in this process)")
	fs.IntVar(&c.Loops, "loops", 0, "event loops per process (0: GOMAXPROCS)")
	// Each scenario lists only its own flags, with the defaults it runs with;
	// bench.Config's zero values mean the same defaults.
	in := func(ss ...string) bool { return slices.Contains(ss, scenario) }
	const (
		idle, echo, broadcast, chat = bench.ScenarioIdle, bench.ScenarioEcho, bench.ScenarioBroadcast, bench.ScenarioChat
		churn, storm                = bench.ScenarioChurn, bench.ScenarioStorm
	)
	conns := 100
	if in(idle, storm) {
		conns = 1000
	}
	fs.IntVar(&c.Conns, "conns", conns, "connections")
	fs.Float64Var(&c.Rate, "rate", 1000, "connections opened per second while ramping up")
	if in(idle) {
		fs.DurationVar(&c.Hold, "hold", 10*time.Second, "how long to hold the connections")
		fs.DurationVar(&c.Traffic, "traffic", 0, "after the hold, echo on every connection this long (one --size message in flight each), hold again and read server memory again (0: no traffic)")
		fs.IntVar(&c.Sample, "sample", 100, "connections pinged after the hold to check they are alive")
	}
	if in(chat) {
		fs.DurationVar(&c.JoinHold, "join-hold", 0, "hold the joined, silent clients this long, then read server memory per member (0: no hold)")
		fs.IntVar(&c.RoomSize, "room-size", 10, "members per room")
		fs.Float64Var(&c.RoomRate, "room-rate", 1, "messages per second per room")
	}
	if in(echo, chat, churn) {
		fs.DurationVar(&c.Duration, "duration", 10*time.Second, "how long to run")
	}
	if in(echo) {
		fs.IntVar(&c.Inflight, "inflight", 1, "messages in flight per connection")
		fs.BoolVar(&c.Text, "text", false, "send text frames instead of binary")
	}
	if in(idle, echo, broadcast, chat) {
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
	fs.StringVar(&jsonFile, "json", "", "write every figure to this JSON file")
	fs.StringVar(&reportFile, "report", "", "write a self-contained HTML report with charts to this file")
	fs.BoolVar(&quiet, "quiet", false, "no progress line on stderr")
	return &ffcli.Command{
		Name:       scenario,
		ShortUsage: "throng bench " + scenario + " [flags]",
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
			c.Targets = targets
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
				return errors.New("bench: a target's run failed (see the table)")
			}
			return nil
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
