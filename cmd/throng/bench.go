package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/throng-ws/throng/bench"
)

type targetsFlag []bench.Target

func (t *targetsFlag) String() string { return fmt.Sprint(len(*t)) }

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
	subs = append(subs, benchRecoveryCommand())
	return &ffcli.Command{
		Name:       "bench",
		ShortUsage: "throng bench <" + strings.Join(bench.Scenarios, "|") + "|recovery> [flags]",
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
	fs.StringVar(&c.JWTSecret, "jwt-secret", "", "HMAC secret: mint an HS256 token per client (sub bench-<i>)")
	fs.BoolVar(&c.TokenInHeader, "token-in-header", false, "send tokens as Authorization: Bearer instead of ?token=")
	fs.StringVar(&c.SourceIPs, "source-ips", "", "local addresses to spread connections over, such as 127.0.0.2-127.0.0.50")
	fs.IntVar(&c.Workers, "workers", 0, "worker processes, each at most 19,500 connections (0: in this process)")
	fs.IntVar(&c.Loops, "loops", 0, "event loops per process (0: GOMAXPROCS)")
	fs.IntVar(&c.Conns, "conns", 0, "connections (0: 1000 for idle and reconnect-storm, 100 otherwise)")
	fs.Float64Var(&c.Rate, "rate", 1000, "connections opened per second while ramping up")
	fs.DurationVar(&c.Hold, "hold", 0, "idle: how long to hold the connections (0: 10s)")
	fs.DurationVar(&c.Traffic, "traffic", 0, "idle: after the hold, echo on every connection this long (one --size message in flight each), hold again and read server memory again (0: no traffic)")
	fs.DurationVar(&c.JoinHold, "join-hold", 0, "chat: hold the joined, silent clients this long, then read server memory per member (0: no hold)")
	fs.IntVar(&c.Sample, "sample", 100, "idle: connections pinged after the hold to check they are alive")
	fs.DurationVar(&c.Duration, "duration", 0, "echo, chat, churn: how long to run (0: 10s)")
	fs.IntVar(&c.Inflight, "inflight", 0, "echo: messages in flight per connection (0: 1); broadcast: broadcasts in flight (0: 4)")
	fs.IntVar(&c.Inflight, "c", 0, "broadcast: broadcasts in flight, as websocket-bench's -c (same as --inflight)")
	fs.IntVar(&c.Size, "size", 0, "payload bytes (0: 64; echo needs at least 32)")
	fs.BoolVar(&c.Text, "text", false, "echo: send text frames instead of binary")
	fs.StringVar(&c.Protocol, "protocol", "json", "broadcast: websocket-shootout form, json or binary")
	fs.IntVar(&c.StepSize, "step-size", 0, "broadcast: clients added per step (0: 1000)")
	fs.IntVar(&c.Samples, "samples", 0, "broadcast: broadcasts measured per step (0: 40)")
	fs.IntVar(&c.Samples, "s", 0, "broadcast: as websocket-bench's -s (same as --samples)")
	fs.IntVar(&c.MaxClients, "max-clients", 0, "broadcast: stop at this many clients (0: 10000)")
	fs.Float64Var(&c.LimitPercentile, "limit-percentile", 95, "broadcast: the RTT percentile held against --limit-rtt")
	fs.DurationVar(&c.LimitRTT, "limit-rtt", 0, "broadcast: stop once the percentile RTT passes this (0: 500ms)")
	fs.IntVar(&c.RoomSize, "room-size", 0, "chat: members per room (0: 10)")
	fs.Float64Var(&c.RoomRate, "room-rate", 0, "chat: messages per second per room (0: 1)")
	fs.Float64Var(&c.ChurnRate, "churn-rate", 0, "churn: disconnects (each followed by a reconnect) per second (0: 10)")
	fs.Float64Var(&c.ReconnectRate, "reconnect-rate", 0, "reconnect-storm: redials per second (0: all at once)")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", 0, "connect plus upgrade deadline per connection (0: 10s)")
	fs.DurationVar(&c.Timeout, "timeout", 0, "hard bound on the run against each target (0: 10m)")
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
				return fmt.Errorf("bench: unexpected arguments %q", args)
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
