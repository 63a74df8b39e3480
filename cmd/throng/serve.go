package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/cluster"
	"github.com/throng-ws/throng/config"
	"github.com/throng-ws/throng/echo"
	"github.com/throng-ws/throng/handoff"
	"github.com/throng-ws/throng/history"
	"github.com/throng-ws/throng/httplimit"
	"github.com/throng-ws/throng/internal/buildinfo"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
	"github.com/throng-ws/throng/shootout"
	"github.com/throng-ws/throng/web"
)

func serveCommand() *ffcli.Command {
	var c config.Serve
	fs := c.FlagSet()
	return &ffcli.Command{
		Name:       "serve",
		ShortUsage: "throng serve [flags]",
		ShortHelp:  "run the WebSocket server",
		LongHelp: "Every flag can also be set as a THRONG_* environment variable (--ws-addr is THRONG_WS_ADDR)\n" +
			"or as a key of the --config file (ws-addr = \":8080\"). A flag wins over the environment,\n" +
			"which wins over the file.",
		FlagSet: fs,
		Options: config.Options(fs),
		Exec: func(ctx context.Context, _ []string) error {
			c.DevLoopback(fs)
			return serve(ctx, &c)
		},
	}
}

func serve(ctx context.Context, c *config.Serve) error {
	if err := c.Validate(); err != nil {
		return err
	}
	// The binary an upgrade starts: this path, resolved now, names whatever
	// was installed at it since.
	exe, exeErr := os.Executable()
	// Started by an upgrade: the old process waits on this socket.
	hoConn, inherited, err := handoff.FromEnv()
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	if hoConn != nil {
		defer hoConn.Close()
	}
	// Started by the upgrade of a cluster node: this process takes the node's
	// id and incarnation, so the other nodes see the same node go on.
	var takeover *cluster.Takeover
	var takeoverID string
	if v, ok := os.LookupEnv(cluster.TakeoverEnv); ok {
		os.Unsetenv(cluster.TakeoverEnv)
		if inherited {
			if takeoverID, takeover, err = cluster.ParseTakeover(v); err != nil {
				return fmt.Errorf("upgrade: %w", err)
			}
		}
	}
	// Catch the signals before anything is announced: a SIGTERM that arrives
	// just after the "serving" line must drain, not kill.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log, err := c.Logger(os.Stderr)
	if err != nil {
		return err
	}
	c.Warn(log)
	verifier, devSecret, err := c.Verifier(rand.Reader)
	if err != nil {
		return err
	}
	if c.MemoryLimit > 0 {
		// The Go runtime collects harder as it nears the limit; admission control
		// (in the server) stops new connections at the high-water mark of the same.
		debug.SetMemoryLimit(int64(c.MemoryLimit))
	}
	if _, set := os.LookupEnv("GOGC"); !set && c.GCPercent > 0 {
		// GOGC, when the operator sets it, is the runtime's own and wins.
		debug.SetGCPercent(c.GCPercent)
	}
	if c.APIKey == "" && c.Dev {
		var b [16]byte
		rand.Read(b[:])
		c.APIKey = hex.EncodeToString(b[:])
	}
	// With --nats the node carries its rooms to and from the other nodes, and
	// counts their connections against --max-conns-per-user.
	var node *cluster.Node
	var srv *server.Server // made below; the node reads it only once started
	if co, ok := c.ClusterOptions(log); ok {
		co.Conns = func() int { return srv.Conns() }
		if takeover != nil {
			if co.NodeID != "" && co.NodeID != takeoverID {
				log.Warn("upgrade: --node-id differs from the old process's; the node keeps its id", "node_id", co.NodeID, "kept", takeoverID)
			}
			co.NodeID, co.Takeover = takeoverID, takeover
		}
		if node, err = cluster.New(co); err != nil {
			return err
		}
	}
	sopts := c.ServerOptions(verifier, log)
	if node != nil {
		sopts.UserConns = node
	}
	srv, err = server.New(sopts)
	if err != nil {
		return err
	}
	// Every error path below closes the server; after a Shutdown, a no-op.
	defer srv.Close()
	endpoints, _ := c.EndpointSet() // checked by Validate
	var ch *chat.Handler
	// Metrics go on a registry of their own, never the global one.
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		srv.Collector(),
		buildInfoMetric(),
	)
	mux := srv.HTTPHandler()
	hs, err := httplimit.New(server.LogRequests(log, httplimit.JSONErrors(srv.HandoffGate(mux))), c.HTTPOptions(log))
	if err != nil {
		return err
	}
	reg.MustRegister(hs.Collector())
	if endpoints["ws"] {
		rooms := room.New(srv.Loops(), c.RoomOptions())
		ch = c.Chat(rooms, verifier, log)
		ch.Deflater = srv.Deflater()
		var api *chat.API
		if c.APIKey != "" {
			api = &chat.API{Key: c.APIKey, Chat: ch, Rooms: rooms, Server: srv, Logger: log}
			// The operator's page (/dashboard) polls this.
			api.Dashboard = &chat.Dashboard{API: api}
			if node != nil {
				api.Dashboard.NodeID = node.ID()
				api.Dashboard.Cluster = func() chat.ClusterStatus { return clusterStatus(node, c.ClusterDeadAfter) }
			}
			if err := api.Dashboard.Start(); err != nil {
				return err
			}
			defer api.Dashboard.Close()
			if err := api.Register(mux); err != nil {
				return err
			}
		}
		if ho, ok := c.HistoryOptions(); ok && node == nil {
			// A room's log is kept while the room has members here.
			ho.Live = func(id string) bool { return rooms.Count(id) > 0 }
			ch.History = history.New(ho)
			if err := ch.History.Start(); err != nil {
				return err
			}
			defer ch.History.Close()
		}
		if node != nil {
			ch.Cluster = node
			if api != nil {
				// The other nodes' operators' actions run here as this API's.
				node.HandleActions(api.RunRemote)
			}
			if err := node.Start(rooms, ch); err != nil {
				return fmt.Errorf("--nats: %w", err)
			}
			defer node.Close() // after Shutdown below, a no-op
			reg.MustRegister(node.Collector())
		}
		srv.Handle("/ws", ch)
		reg.MustRegister(ch.Collector())
	}
	if endpoints["echo"] {
		srv.Handle("/echo", &echo.Handler{RateLimit: c.RateLimit()})
	}
	if endpoints["shootout"] {
		// A room table of its own, so no chat room can share its room's name.
		srv.Handle("/shootout", &shootout.Handler{Rooms: room.New(srv.Loops(), room.Options{Shards: 1}), RateLimit: c.RateLimit(), Deflater: srv.Deflater()})
	}
	up := &handoff.Upgrader{Exe: exe, Args: os.Args[1:], Logger: log}
	if node != nil {
		up.Env = append(os.Environ(), cluster.TakeoverEnv+"="+node.TakeoverValue())
	}
	reg.MustRegister(up.Collector())
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	var wsAddr net.Addr
	var hln net.Listener
	if inherited {
		// Everything is built and checked: take the old process's listeners
		// and connections. On an error it keeps them all.
		sink := &server.HandoffSink{Server: srv, Listener: func(name string, fd int) error {
			f := os.NewFile(uintptr(fd), name)
			defer f.Close()
			if name != "http" {
				return fmt.Errorf("upgrade: a listener %q this version does not know", name)
			}
			ln, err := net.FileListener(f)
			hln = ln
			return err
		}}
		if ch != nil {
			sink.Importers = ch.HandoffImporters()
		}
		if node != nil {
			sink.Importers = append(sink.Importers, node.HandoffImporter())
			if takeover != nil {
				// Every live node's counts whole, and every room's messages
				// coming, before the old process freezes anything.
				sctx, scancel := context.WithTimeout(ctx, c.ClusterDeadAfter)
				err := node.Standby(sctx)
				scancel()
				if err != nil {
					return fmt.Errorf("upgrade: %w", err)
				}
				sink.Check = node.CheckTakeover
				// The node takes over before the connections thaw: what they
				// send at once goes to the other nodes.
				sink.OnCommit = node.Activate
			}
		}
		res, err := handoff.Receive(hoConn, sink, handoff.ReceiveOptions{})
		hoConn.Close()
		if err == nil && hln == nil {
			err = errors.New("no HTTP listener handed over")
		}
		if err != nil {
			if hln != nil {
				hln.Close()
			}
			return fmt.Errorf("upgrade: %w", err)
		}
		wsAddr = sink.Addr
		log.Info("upgrade: took over", "conns", res.Conns, "batches", res.Batches, "state_bytes", res.Bytes,
			"max_batch_bytes", res.MaxBatch, "app_state_bytes", res.StateBytes, "app_state_chunks", res.StateChunks,
			"frozen", res.Frozen)
		handoff.Notify(fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid()))
	} else {
		if wsAddr, err = srv.Listen(c.WSAddr); err != nil {
			return fmt.Errorf("--ws-addr: %w", err)
		}
		if hln, err = net.Listen("tcp", c.HTTPAddr); err != nil {
			return fmt.Errorf("--http-addr: %w", err)
		}
		handoff.Notify("READY=1")
	}
	src := &server.HandoffSource{Server: srv, Extra: func() ([]handoff.Listener, error) {
		fd, err := dupListener(hln)
		if err != nil {
			return nil, err
		}
		return []handoff.Listener{{Name: "http", FD: fd}}, nil
	}}
	// The application's state, once the server is frozen: the cluster node's
	// place first (pausing it), then the chat's history and cursors.
	src.Parts = func() []handoff.StatePart {
		var parts []handoff.StatePart
		if node != nil {
			parts = append(parts, node.HandoffPart())
		}
		if ch != nil {
			parts = append(parts, ch.HandoffState()...)
		}
		return parts
	}
	if node != nil {
		src.OnRollback = node.Resume
		src.OnCommit = node.Retire
	}
	up.Source = src
	// The demo page and /client.js; the page connects to the WebSocket listener.
	wo := c.WebOptions(wsAddr.String(), verifier, devSecret)
	wo.Dashboard = c.APIKey != "" && endpoints["ws"] // the page reads /api/dashboard
	mux.Handle("/", web.Handler(wo))
	httpDone := make(chan error, 1)
	go func() { httpDone <- hs.Serve(hln) }()

	loops := c.Loops
	if loops <= 0 {
		loops = runtime.GOMAXPROCS(0)
	}
	log.Info("serving", "ws", wsAddr.String(), "http", hln.Addr().String(), "loops", loops, "auth", verifier != nil,
		"max_conns", c.MaxConns, "memory_limit", c.MemoryLimit.String())
	if devSecret != "" {
		tok, err := auth.Mint([]byte(devSecret), "", "dev", 24*time.Hour, "Developer", time.Time{})
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "\n  dev mode: ws://%s/ws?token=%s\n  (secret %s, token for sub \"dev\", valid 24h)\n  API: curl -H 'Authorization: Bearer %s' http://%s/api/rooms\n\n",
			dialable(wsAddr), tok, devSecret, c.APIKey, dialable(hln.Addr()))
	}

	// SIGUSR2 hands every connection to the binary now on disk.
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	upDone := make(chan error, 1)
	upgrading := false
wait:
	for {
		select {
		case <-ctx.Done():
			if upgrading {
				// Let the upgrade finish: it either hands everything over
				// or takes it all back, and then the drain runs.
				if err := <-upDone; err == nil {
					return upgraded(log, hs)
				}
			}
			break wait
		case err := <-httpDone:
			return fmt.Errorf("http: %w", err)
		case <-usr2:
			switch {
			case upgrading:
				up.Upgrade(ctx) // refused and counted: one at a time
			case !srv.CanHandOff():
				up.Refuse()
				log.Warn("upgrade: refused: --poller netpoll cannot hand connections over; restart with a drain (SIGTERM) instead")
			case exeErr != nil:
				up.Refuse()
				log.Warn("upgrade: refused: the binary's path is unknown", "err", exeErr)
			default:
				upgrading = true
				go func() { upDone <- upgrade(up, node) }()
			}
		case err := <-upDone:
			upgrading = false
			if err == nil {
				return upgraded(log, hs)
			}
		}
	}
	stop()
	log.Info("shutting down", "drain_timeout", c.DrainTimeout)
	dctx, cancel := context.WithTimeout(context.Background(), c.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(dctx); err != nil {
		log.Warn("drain incomplete", "err", err)
	}
	if node != nil {
		// After the drain, so the other nodes hear of every leave first.
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := node.Shutdown(cctx); err != nil {
			log.Warn("cluster: leaving incomplete", "err", err)
		}
		ccancel()
	}
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	hs.Shutdown(hctx)
	log.Info("stopped")
	return nil
}

// upgrade runs one upgrade. A cluster node first listens to every room, so
// that it knows each other node's last message when it pauses, whichever
// rooms its members join meanwhile (cluster.Node.Watch).
func upgrade(up *handoff.Upgrader, node *cluster.Node) error {
	if node != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := node.Watch(ctx)
		cancel()
		if err != nil {
			node.Unwatch()
			up.Logger.Error("upgrade: failed, keeping every connection", "err", err)
			return err
		}
	}
	_, err := up.Upgrade(context.Background())
	if err != nil && node != nil {
		node.Unwatch()
	}
	return err
}

// upgraded ends the old process after a committed upgrade: the server has
// let go of every connection already; the HTTP listener's requests finish.
func upgraded(log *slog.Logger, hs *httplimit.Server) error {
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	hs.Shutdown(hctx)
	log.Info("upgrade: the new process serves every connection; exiting")
	return nil
}

// dupListener duplicates a listener's descriptor without putting it in
// blocking mode (as os.File.Fd would, for this process's copy too).
func dupListener(ln net.Listener) (int, error) {
	sc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	cerr := sc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if cerr != nil {
		return -1, cerr
	}
	return fd, err
}

// dialable turns a listening address such as [::]:8080 into one a client on this
// machine can dial.
func dialable(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// clusterStatus is what the dashboard shows of the cluster, from the node.
func clusterStatus(n *cluster.Node, deadAfter time.Duration) chat.ClusterStatus {
	st := n.Stats()
	cs := chat.ClusterStatus{Connected: st.Connected, Published: st.Published, Received: st.Received,
		Dropped: st.Dropped, DeadAfter: deadAfter}
	for _, v := range st.Lost {
		cs.Lost += v
	}
	for _, p := range n.Peers() {
		cs.Peers = append(cs.Peers, chat.PeerStatus{ID: p.ID, Synced: p.Synced, SilenceMS: p.Silence.Milliseconds(),
			LagUS: p.Lag.Microseconds(), Received: p.Received, Lost: p.Lost, Conns: p.Conns, Rooms: p.Rooms, Members: p.Members})
	}
	return cs
}

// buildInfoMetric is throng_build_info: 1, labelled with the version, the VCS
// revision and the Go version, so dashboards can tell the builds of a fleet
// apart.
func buildInfoMetric() prometheus.Collector {
	bi := buildinfo.Read()
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "throng_build_info",
		Help:        "1, labelled with the build's version, VCS revision and Go version.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "revision": bi.Revision, "goversion": bi.Go},
	}, func() float64 { return 1 })
}
