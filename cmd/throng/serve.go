package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

type serveConfig struct {
	wsAddr, httpAddr string
	loops            int
	maxMessageSize   int
	maxPending       int
	handshakeTimeout time.Duration
	pingInterval     time.Duration
	idleTimeout      time.Duration
	drainRate        int
	drainTimeout     time.Duration
	origins          string

	maxRoomsPerConn int
	maxRoomMembers  int
	roomShards      int
	maxContent      int
	rate            float64
	burst           int
	ban             time.Duration
	banCloseAfter   int
	handshakeRate   float64
	maxConnsPerUser int
	slowConsumer    string
	apiKey          string

	authMode, authFailure   string
	jwtSecret, jwtPublicKey string
	jwtIssuer, jwtAudience  string
	jwtLeeway               time.Duration
	dev                     bool
	logLevel                string
}

func serveCommand() *ffcli.Command {
	var c serveConfig
	fs := flag.NewFlagSet("throng serve", flag.ContinueOnError)
	fs.StringVar(&c.wsAddr, "ws-addr", ":8080", "WebSocket listener address (/ws, /echo, /shootout)")
	fs.StringVar(&c.httpAddr, "http-addr", ":8081", "HTTP listener address (/healthz, /readyz, /api)")
	fs.IntVar(&c.loops, "loops", 0, "event loops (0: GOMAXPROCS)")
	fs.IntVar(&c.maxMessageSize, "max-message-size", server.DefaultMaxMessageSize, "largest message in bytes, fragments summed; larger closes with 1009")
	fs.IntVar(&c.maxPending, "max-pending", server.DefaultMaxPending, "unsent bytes per connection before it is a slow consumer")
	fs.DurationVar(&c.handshakeTimeout, "handshake-timeout", server.DefaultHandshakeTimeout, "time allowed to send the whole upgrade request")
	fs.DurationVar(&c.pingInterval, "ping-interval", server.DefaultPingInterval, "ping a connection silent for this long")
	fs.DurationVar(&c.idleTimeout, "idle-timeout", server.DefaultIdleTimeout, "close a connection silent for this long (1001)")
	fs.IntVar(&c.drainRate, "drain-rate", server.DefaultDrainRate, "connections per second sent close 1001 on shutdown")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 30*time.Second, "how long shutdown waits for close acknowledgements")
	fs.StringVar(&c.origins, "origin", "", "comma-separated allowed Origin patterns, such as https://*.example.com (empty: any)")
	fs.IntVar(&c.maxRoomsPerConn, "max-rooms-per-conn", server.DefaultMaxRoomsPerConn, "rooms one connection may be in")
	fs.IntVar(&c.maxRoomMembers, "max-room-members", 0, "members per room (0: unbounded)")
	fs.IntVar(&c.roomShards, "room-shards", room.DefaultShards, "lock shards of the room table (rounded up to a power of two)")
	fs.IntVar(&c.maxContent, "max-content", server.DefaultMaxContent, "characters in a chat message")
	fs.Float64Var(&c.rate, "rate", server.DefaultRate, "inbound messages per second per connection (negative: unlimited)")
	fs.IntVar(&c.burst, "burst", server.DefaultBurst, "inbound messages a connection may send at once")
	fs.DurationVar(&c.ban, "ban", server.DefaultBan, "how long a connection over the rate is ignored")
	fs.IntVar(&c.banCloseAfter, "ban-close-after", server.DefaultBanCloseAfter, "close (1008) a banned connection after this many messages during its ban")
	fs.Float64Var(&c.handshakeRate, "handshake-rate", 0, "upgrades per second per client IP, answered 429 past it (0: unlimited)")
	fs.IntVar(&c.maxConnsPerUser, "max-conns-per-user", 0, "open connections per user id, answered 429 past it (0: unlimited)")
	fs.StringVar(&c.slowConsumer, "slow-consumer", "close", "what happens past --max-pending: close (1008) or drop (messages dropped, client told the count)")
	fs.StringVar(&c.apiKey, "api-key", "", "bearer key for /api on the HTTP listener (empty: /api is off; --dev makes one)")
	fs.StringVar(&c.authMode, "auth", "on", "on: a JWT is required; off: anonymous connections with random user ids")
	fs.StringVar(&c.authFailure, "auth-failure", "reject", "reject: answer 401 before the upgrade; close: upgrade, then close 1008 with the reason")
	fs.StringVar(&c.jwtSecret, "jwt-secret", "", "HMAC key for HS256/384/512 tokens")
	fs.StringVar(&c.jwtPublicKey, "jwt-public-key", "", "PEM file with the public key for RS*/PS*/ES*/EdDSA tokens")
	fs.StringVar(&c.jwtIssuer, "jwt-issuer", "", "required iss claim (empty: not checked)")
	fs.StringVar(&c.jwtAudience, "jwt-audience", "", "required aud claim (empty: not checked)")
	fs.DurationVar(&c.jwtLeeway, "jwt-leeway", auth.DefaultLeeway, "clock skew allowed for exp and nbf")
	fs.BoolVar(&c.dev, "dev", false, "development mode: a random secret unless --jwt-secret is set, and a ready ws:// URL printed")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	return &ffcli.Command{
		Name:       "serve",
		ShortUsage: "throng serve [flags]",
		ShortHelp:  "run the WebSocket server",
		FlagSet:    fs,
		Options:    envOptions,
		Exec:       func(ctx context.Context, _ []string) error { return serve(ctx, c) },
	}
}

func serve(ctx context.Context, c serveConfig) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	verifier, devSecret, err := buildAuth(c)
	if err != nil {
		return err
	}
	failure := server.AuthFailReject
	switch c.authFailure {
	case "reject":
	case "close":
		failure = server.AuthFailClose
	default:
		return fmt.Errorf("--auth-failure must be reject or close, not %q", c.authFailure)
	}
	var origins []string
	for _, o := range strings.Split(c.origins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			origins = append(origins, o)
		}
	}
	slow := server.SlowClose
	switch c.slowConsumer {
	case "close":
	case "drop":
		slow = server.SlowDrop
	default:
		return fmt.Errorf("--slow-consumer must be close or drop, not %q", c.slowConsumer)
	}
	if c.maxRoomsPerConn < 1 || c.maxContent < 1 || c.burst < 1 || c.maxRoomMembers < 0 || c.banCloseAfter < 0 {
		return errors.New("--max-rooms-per-conn, --max-content and --burst must be at least 1, --max-room-members and --ban-close-after at least 0")
	}
	if c.apiKey == "" && c.dev {
		var b [16]byte
		rand.Read(b[:])
		c.apiKey = hex.EncodeToString(b[:])
	}
	srv, err := server.New(server.Options{
		Auth:             verifier,
		AuthFailure:      failure,
		Origins:          origins,
		Loops:            c.loops,
		MaxMessageSize:   c.maxMessageSize,
		MaxPending:       c.maxPending,
		HandshakeTimeout: c.handshakeTimeout,
		PingInterval:     c.pingInterval,
		IdleTimeout:      c.idleTimeout,
		DrainRate:        c.drainRate,
		SlowConsumer:     slow,
		HandshakeRate:    c.handshakeRate,
		MaxConnsPerUser:  c.maxConnsPerUser,
		Subprotocols:     []string{"throng.v1"},
		Logger:           log,
	})
	if err != nil {
		return err
	}
	rooms := room.New(srv.Loops(), room.Options{Shards: c.roomShards, MaxMembers: c.maxRoomMembers})
	chat := &server.Chat{
		Rooms:           rooms,
		Auth:            verifier,
		Logger:          log,
		MaxRoomsPerConn: c.maxRoomsPerConn,
		MaxContent:      c.maxContent,
		Rate:            c.rate,
		Burst:           c.burst,
		Ban:             c.ban,
		BanCloseAfter:   c.banCloseAfter,
	}
	srv.Handle("/ws", chat)
	srv.Handle("/echo", server.Echo{})
	srv.Handle("/shootout", &server.Shootout{Rooms: room.New(srv.Loops(), room.Options{Shards: 1})})
	mux := srv.HTTPHandler()
	if c.apiKey != "" {
		api := &server.API{Key: c.apiKey, Chat: chat, Rooms: rooms}
		if err := api.Register(mux); err != nil {
			return err
		}
	}
	wsAddr, err := srv.Listen(c.wsAddr)
	if err != nil {
		srv.Close()
		return fmt.Errorf("--ws-addr: %w", err)
	}
	hln, err := net.Listen("tcp", c.httpAddr)
	if err != nil {
		srv.Close()
		return fmt.Errorf("--http-addr: %w", err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	httpDone := make(chan error, 1)
	go func() { httpDone <- hs.Serve(hln) }()

	loops := c.loops
	if loops <= 0 {
		loops = runtime.GOMAXPROCS(0)
	}
	log.Info("serving", "ws", wsAddr.String(), "http", hln.Addr().String(), "loops", loops, "auth", verifier != nil)
	if devSecret != "" {
		tok, err := auth.Mint([]byte(devSecret), "", "dev", 24*time.Hour, "Developer", time.Time{})
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "\n  dev mode: ws://%s/ws?token=%s\n  (secret %s, token for sub \"dev\", valid 24h)\n  API: curl -H 'Authorization: Bearer %s' http://%s/api/rooms\n\n",
			dialable(wsAddr), tok, devSecret, c.apiKey, dialable(hln.Addr()))
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
	case err := <-httpDone:
		srv.Close()
		return fmt.Errorf("http: %w", err)
	}
	stop()
	log.Info("shutting down", "drain_timeout", c.drainTimeout)
	dctx, cancel := context.WithTimeout(context.Background(), c.drainTimeout)
	defer cancel()
	if err := srv.Shutdown(dctx); err != nil {
		log.Warn("drain incomplete", "err", err)
	}
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	hs.Shutdown(hctx)
	log.Info("stopped")
	return nil
}

// buildAuth returns the token verifier, or nil with --auth=off. In --dev without a
// key it makes a random secret and returns it so a URL can be printed.
func buildAuth(c serveConfig) (*auth.Verifier, string, error) {
	switch c.authMode {
	case "on":
	case "off":
		if c.jwtSecret != "" || c.jwtPublicKey != "" {
			return nil, "", errors.New("--auth=off conflicts with --jwt-secret and --jwt-public-key")
		}
		return nil, "", nil
	default:
		return nil, "", fmt.Errorf("--auth must be on or off, not %q", c.authMode)
	}
	o := auth.Options{Secret: []byte(c.jwtSecret), Issuer: c.jwtIssuer, Audience: c.jwtAudience, Leeway: c.jwtLeeway}
	var devSecret string
	switch {
	case c.jwtSecret != "" && c.jwtPublicKey != "":
		return nil, "", errors.New("set --jwt-secret or --jwt-public-key, not both")
	case c.jwtPublicKey != "":
		pem, err := auth.LoadPublicKeyFile(c.jwtPublicKey)
		if err != nil {
			return nil, "", fmt.Errorf("--jwt-public-key: %w", err)
		}
		o.Secret, o.PublicKeyPEM = nil, pem
	case c.jwtSecret == "" && c.dev:
		var b [32]byte
		rand.Read(b[:])
		devSecret = hex.EncodeToString(b[:])
		o.Secret = []byte(devSecret)
	case c.jwtSecret == "":
		return nil, "", errors.New("no token key: set --jwt-secret (THRONG_JWT_SECRET) or --jwt-public-key, or run with --auth=off or --dev")
	case c.dev:
		devSecret = c.jwtSecret
	}
	v, err := auth.New(o)
	if err != nil {
		return nil, "", err
	}
	return v, devSecret, nil
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
