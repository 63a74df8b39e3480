package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
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

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/cluster"
	"github.com/throng-ws/throng/config"
	"github.com/throng-ws/throng/echo"
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
	// Metrics go on a registry of their own, never the global one.
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		srv.Collector(),
		buildInfoMetric(),
	)
	mux := srv.HTTPHandler()
	hs, err := httplimit.New(server.LogRequests(log, httplimit.JSONErrors(mux)), c.HTTPOptions(log))
	if err != nil {
		return err
	}
	reg.MustRegister(hs.Collector())
	if endpoints["ws"] {
		rooms := room.New(srv.Loops(), c.RoomOptions())
		ch := c.Chat(rooms, verifier, log)
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
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	wsAddr, err := srv.Listen(c.WSAddr)
	if err != nil {
		return fmt.Errorf("--ws-addr: %w", err)
	}
	hln, err := net.Listen("tcp", c.HTTPAddr)
	if err != nil {
		return fmt.Errorf("--http-addr: %w", err)
	}
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

	select {
	case <-ctx.Done():
	case err := <-httpDone:
		return fmt.Errorf("http: %w", err)
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
