// Package config is the configuration of `throng serve`: one struct whose
// fields are the command's flags, the THRONG_* environment variables and the
// keys of an optional TOML or YAML file, in that order of precedence over the
// defaults; and Validate, which refuses a configuration that cannot work before
// anything starts. It is apart from cmd/throng so that all of it is tested
// without building or running the binary.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/pelletier/go-toml"
	"github.com/peterbourgon/ff/v3"
	"gopkg.in/yaml.v2"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/chat"
	"github.com/throng-ws/throng/cluster"
	"github.com/throng-ws/throng/history"
	"github.com/throng-ws/throng/httplimit"
	"github.com/throng-ws/throng/internal/redact"
	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
	"github.com/throng-ws/throng/web"
)

// DefaultMaxConnsPerUser bounds one user's open connections: far above a
// person's tabs and devices, far below what would let one token hold a node.
const DefaultMaxConnsPerUser = 16

// EnvPrefix prefixes the environment variable of every flag: --ws-addr is
// THRONG_WS_ADDR.
const EnvPrefix = "THRONG"

// Serve is the configuration of `throng serve`. Each field is one flag, named in
// its comment; FlagSet binds them and sets the defaults.
type Serve struct {
	Config string // --config: a .toml, .yaml or .yml file of settings

	WSAddr   string // --ws-addr
	HTTPAddr string // --http-addr
	// --endpoints: the WebSocket endpoints to mount, of ws, echo and shootout
	Endpoints string

	HTTPReadTimeout  time.Duration // --http-read-timeout
	HTTPWriteTimeout time.Duration // --http-write-timeout
	HTTPIdleTimeout  time.Duration // --http-idle-timeout
	HTTPMaxConns     int           // --http-max-conns
	HTTPMaxBody      ByteSize      // --http-max-body
	PublicWSURL      string        // --public-ws-url
	Loops            int           // --loops
	Poller           string        // --poller: epoll or netpoll
	// --netpoll-buffer-size: netpoll's input buffer per connection
	NetpollBufferSize int

	MaxMessageSize   int           // --max-message-size
	MaxPending       int           // --max-pending
	SlowConsumer     string        // --slow-consumer: close or drop
	HandshakeTimeout time.Duration // --handshake-timeout
	PingInterval     time.Duration // --ping-interval
	IdleTimeout      time.Duration // --idle-timeout
	DrainRate        int           // --drain-rate
	DrainTimeout     time.Duration // --drain-timeout
	Origins          string        // --origin: comma-separated patterns

	Compression        string // --compression: on or off (permessage-deflate)
	CompressionMinSize int    // --compression-min-size: shorter messages are sent plain

	MaxConns        int      // --max-conns
	MaxConnsPerUser int      // --max-conns-per-user
	HandshakeRate   float64  // --handshake-rate
	MemoryLimit     ByteSize // --memory-limit
	MemoryHighWater float64  // --memory-high-water, percent of MemoryLimit
	MemoryLowWater  float64  // --memory-low-water, percent of MemoryLimit
	GCPercent       int      // --gc-percent
	TrimIdleMemory  bool     // --trim-idle-memory

	MaxRoomsPerConn int           // --max-rooms-per-conn
	MaxRoomMembers  int           // --max-room-members
	RoomShards      int           // --room-shards
	MaxContent      int           // --max-content
	Rate            float64       // --rate
	Burst           int           // --burst
	Ban             time.Duration // --ban
	BanCloseAfter   int           // --ban-close-after
	UserRate        float64       // --user-rate
	UserBurst       int           // --user-burst

	HistorySize   int           // --history-size: messages per room; 0 turns history off
	HistoryTTL    time.Duration // --history-ttl
	HistoryMemory ByteSize      // --history-memory
	HistoryOnJoin int           // --history-on-join

	Auth          string        // --auth: on or off
	AuthFailure   string        // --auth-failure: reject or close
	JWTSecret     string        // --jwt-secret
	JWTPublicKey  string        // --jwt-public-key: a PEM file
	JWTIssuer     string        // --jwt-issuer
	JWTAudience   string        // --jwt-audience
	JWTLeeway     time.Duration // --jwt-leeway
	JWTAllowNoExp bool          // --jwt-allow-no-exp
	APIKey        string        // --api-key
	Dev           bool          // --dev

	LogLevel      string        // --log-level
	LogFormat     string        // --log-format: text or json
	StatsInterval time.Duration // --stats-interval

	NATS             string        // --nats: comma-separated NATS URLs; set, it turns on cluster mode
	NodeID           string        // --node-id
	ClusterHeartbeat time.Duration // --cluster-heartbeat
	ClusterDeadAfter time.Duration // --cluster-dead-after
}

// Defaults that are the command's own; the rest are the packages' defaults.
const (
	DefaultWSAddr   = ":8080"
	DefaultHTTPAddr = ":8081"
	// DevWSAddr and DevHTTPAddr replace the defaults under --dev: /dev/token
	// mints a token for any subject, so a dev server answers only this
	// machine unless an address is given.
	DevWSAddr              = "127.0.0.1:8080"
	DevHTTPAddr            = "127.0.0.1:8081"
	DefaultDrainTimeout    = 30 * time.Second
	DefaultStatsInterval   = time.Minute
	DefaultMemoryHighWater = server.DefaultMemoryHighWater * 100
	DefaultMemoryLowWater  = server.DefaultMemoryLowWater * 100
	// DefaultGCPercent keeps the heap within a quarter of its live size:
	// throng's steady paths (frames, fan-out) do not allocate, so the
	// collector runs mostly during connection ramps, and there a lower goal
	// costs little CPU for a heap that holds a connection's state and little
	// else (docs/BENCHMARKS.md, "512 B per room member").
	DefaultGCPercent = 25
	// MinMemoryLimit is the smallest --memory-limit accepted: below it the
	// process's own start-up footprint would pass the high-water mark and no
	// connection would ever be admitted.
	MinMemoryLimit = 32 << 20
	// MinJWTSecret is the shortest --jwt-secret accepted, in bytes; below
	// GoodJWTSecret a warning is logged at start.
	MinJWTSecret  = 16
	GoodJWTSecret = 32
)

// FlagSet returns the flags of `throng serve`, bound to c's fields and set to
// their defaults. Its help text is the reference for every setting; the README's
// table repeats it.
func (c *Serve) FlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("throng serve", flag.ContinueOnError)
	fs.StringVar(&c.Config, "config", "", "file of settings, .toml or .yaml by extension; flags and THRONG_* variables win over it")

	fs.StringVar(&c.WSAddr, "ws-addr", DefaultWSAddr, "WebSocket listener address (the paths --endpoints mounts); with --dev and not set, "+DevWSAddr)
	fs.StringVar(&c.HTTPAddr, "http-addr", DefaultHTTPAddr, "HTTP listener address (/healthz, /readyz, /metrics, /api, the demo page); with --dev and not set, "+DevHTTPAddr)
	fs.StringVar(&c.Endpoints, "endpoints", "ws", "WebSocket endpoints to mount, comma-separated: ws (/ws, the chat protocol), echo (/echo) and shootout (/shootout); the last two are for conformance runs and benchmarks")
	fs.DurationVar(&c.HTTPReadTimeout, "http-read-timeout", httplimit.DefaultReadTimeout, "HTTP listener: time to read a whole request, body included")
	fs.DurationVar(&c.HTTPWriteTimeout, "http-write-timeout", httplimit.DefaultWriteTimeout, "HTTP listener: time to write a response")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", httplimit.DefaultIdleTimeout, "HTTP listener: close a keep-alive connection idle this long")
	fs.IntVar(&c.HTTPMaxConns, "http-max-conns", httplimit.DefaultMaxConns, "HTTP listener: concurrent connections at most; past it new ones wait in the listen backlog")
	c.HTTPMaxBody = httplimit.DefaultMaxBodyBytes
	fs.Var(&c.HTTPMaxBody, "http-max-body", "HTTP listener: largest request body, such as 64KiB")
	fs.StringVar(&c.PublicWSURL, "public-ws-url", "", "the chat endpoint's public URL (wss://chat.example.com/ws) given to the demo page; empty: the --ws-addr host if it names one, else the page's own host on the --ws-addr port")
	fs.IntVar(&c.Loops, "loops", 0, "event loops (0: GOMAXPROCS)")
	fs.StringVar(&c.Poller, "poller", string(poller.DefaultBackend), "event-loop backend: epoll (Linux; least memory per idle connection) or netpoll (cloudwego/netpoll; also macOS)")

	fs.IntVar(&c.NetpollBufferSize, "netpoll-buffer-size", poller.DefaultNetpollBufferSize, "netpoll backend: input buffer bytes per connection, kept while it lives; larger reads grow it")

	fs.IntVar(&c.MaxMessageSize, "max-message-size", server.DefaultMaxMessageSize, "largest message in bytes, fragments summed; larger closes with 1009")
	fs.StringVar(&c.Compression, "compression", "on", "permessage-deflate (RFC 7692): on accepts browsers' and clients' offers, without context takeover, so an idle connection keeps no compression state; off leaves it out of every handshake")
	fs.IntVar(&c.CompressionMinSize, "compression-min-size", server.DefaultCompressionMinSize, "messages shorter than this many bytes are sent uncompressed")
	fs.IntVar(&c.MaxPending, "max-pending", server.DefaultMaxPending, "unsent bytes per connection before it is a slow consumer")
	fs.StringVar(&c.SlowConsumer, "slow-consumer", "close", "what happens past --max-pending: close (1008) or drop (messages dropped, client told the count)")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", server.DefaultHandshakeTimeout, "time allowed to send the whole upgrade request")
	fs.DurationVar(&c.PingInterval, "ping-interval", server.DefaultPingInterval, "ping a connection silent for this long; keep it below the load balancer's idle timeout")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", server.DefaultIdleTimeout, "close a connection silent for this long (1001); must exceed --ping-interval")
	fs.IntVar(&c.DrainRate, "drain-rate", server.DefaultDrainRate, "connections per second sent close 1001 on shutdown")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", DefaultDrainTimeout, "how long shutdown waits for close acknowledgements")
	fs.StringVar(&c.Origins, "origin", "", "comma-separated allowed Origin patterns, such as https://*.example.com (empty: any)")

	fs.IntVar(&c.MaxConns, "max-conns", 0, "open connections at most; past it upgrades are answered 503 with Retry-After (0: no cap)")
	fs.IntVar(&c.MaxConnsPerUser, "max-conns-per-user", DefaultMaxConnsPerUser, "open connections per user id, answered 429 past it (0: unlimited)")
	fs.Float64Var(&c.HandshakeRate, "handshake-rate", 0, "upgrades per second per client IP, answered 429 past it (0: unlimited)")
	fs.Var(&c.MemoryLimit, "memory-limit", "memory budget, such as 2GiB: sets GOMEMLIMIT, and past --memory-high-water of it (as RSS) upgrades are answered 503 (0: none)")
	fs.Float64Var(&c.MemoryHighWater, "memory-high-water", DefaultMemoryHighWater, "percent of --memory-limit at which new connections are refused")
	fs.Float64Var(&c.MemoryLowWater, "memory-low-water", DefaultMemoryLowWater, "percent of --memory-limit below which new connections are admitted again")
	fs.IntVar(&c.GCPercent, "gc-percent", DefaultGCPercent, "the Go collector's heap growth between collections, in percent of the live heap; lower keeps RSS closer to the live heap for a little more GC CPU (0, or the GOGC variable set: the runtime's GOGC)")
	fs.BoolVar(&c.TrimIdleMemory, "trim-idle-memory", true, "give the heap's free memory back to the OS once allocation goes quiet after a burst (a collection and a scavenge)")

	fs.IntVar(&c.MaxRoomsPerConn, "max-rooms-per-conn", chat.DefaultMaxRoomsPerConn, "rooms one connection may be in")
	fs.IntVar(&c.MaxRoomMembers, "max-room-members", 0, "members per room (0: unbounded)")
	fs.IntVar(&c.RoomShards, "room-shards", room.DefaultShards, "lock shards of the room table (rounded up to a power of two)")
	fs.IntVar(&c.MaxContent, "max-content", protocol.DefaultMaxContent, "characters in a chat message")
	fs.Float64Var(&c.Rate, "rate", server.DefaultRate, "inbound messages per second per connection, on every endpoint (negative: unlimited)")
	fs.IntVar(&c.Burst, "burst", server.DefaultBurst, "inbound messages a connection may send at once")
	fs.DurationVar(&c.Ban, "ban", server.DefaultBan, "how long a connection over the rate is ignored")
	fs.Float64Var(&c.UserRate, "user-rate", chat.DefaultUserRate, "chat messages per second per user across all its connections; past it the sending connection is banned (negative: no per-user limit)")
	fs.IntVar(&c.UserBurst, "user-burst", chat.DefaultUserBurst, "chat messages a user may send at once across its connections")
	fs.IntVar(&c.BanCloseAfter, "ban-close-after", server.DefaultBanCloseAfter, "close (1008) a banned connection after this many messages during its ban")
	fs.IntVar(&c.HistorySize, "history-size", history.DefaultSize, "recent messages kept per room, for recovery after a reconnect and the history request (0: history off)")
	fs.DurationVar(&c.HistoryTTL, "history-ttl", history.DefaultTTL, "how long a message is kept in its room's history")
	c.HistoryMemory = history.DefaultMemory
	fs.Var(&c.HistoryMemory, "history-memory", "memory budget of all rooms' history on this node, such as 64MiB; past it the oldest messages are evicted")
	fs.IntVar(&c.HistoryOnJoin, "history-on-join", 0, "recent messages sent before joined to a join that asks for neither since nor history (0: none, as the seed's protocol)")

	fs.StringVar(&c.Auth, "auth", "on", "on: a JWT is required; off: anonymous connections with random user ids")
	fs.StringVar(&c.AuthFailure, "auth-failure", "reject", "reject: answer 401 before the upgrade; close: upgrade, then close 1008 with the reason")
	fs.StringVar(&c.JWTSecret, "jwt-secret", "", "HMAC key for HS256/384/512 tokens")
	fs.StringVar(&c.JWTPublicKey, "jwt-public-key", "", "PEM file with the public key for RS*/PS*/ES*/EdDSA tokens")
	fs.StringVar(&c.JWTIssuer, "jwt-issuer", "", "required iss claim (empty: not checked)")
	fs.StringVar(&c.JWTAudience, "jwt-audience", "", "required aud claim (empty: not checked)")
	fs.DurationVar(&c.JWTLeeway, "jwt-leeway", auth.DefaultLeeway, "clock skew allowed for exp, nbf and iat; a connection is closed at exp plus this, when its token would no longer pass the handshake")
	fs.BoolVar(&c.JWTAllowNoExp, "jwt-allow-no-exp", false, "accept tokens without an exp claim, which never expire (logged as a warning at start)")
	fs.StringVar(&c.APIKey, "api-key", "", "bearer key for /api on the HTTP listener (empty: /api is off; --dev makes one)")
	fs.BoolVar(&c.Dev, "dev", false, "development mode: a random secret unless --jwt-secret is set, /dev/token mints tokens for anyone, a ready ws:// URL printed; listens on loopback unless --ws-addr or --http-addr say otherwise")

	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "text", "text or json")
	fs.DurationVar(&c.StatsInterval, "stats-interval", DefaultStatsInterval, "how often to log connections, RSS and bytes per connection, warning of a leak signal (0: never)")

	fs.StringVar(&c.NATS, "nats", "", "comma-separated NATS server URLs (nats://127.0.0.1:4222): run as one node of a cluster (empty: a single node, no broker)")
	fs.StringVar(&c.NodeID, "node-id", "", "this node's name in the cluster: 1 to 64 of A-Z a-z 0-9 _ - (empty: random)")
	fs.DurationVar(&c.ClusterHeartbeat, "cluster-heartbeat", cluster.DefaultHeartbeat, "how often a node announces itself and checks the others")
	fs.DurationVar(&c.ClusterDeadAfter, "cluster-dead-after", cluster.DefaultDeadAfter, "a node not heard from this long drops out of every count; at least twice --cluster-heartbeat")
	return fs
}

// Options are the ff options that read THRONG_* variables and the --config file,
// for ffcli.Command.Options. ff gives flags precedence over the environment,
// and the environment over the file.
func Options(fs *flag.FlagSet) []ff.Option {
	return []ff.Option{
		ff.WithEnvVarPrefix(EnvPrefix),
		ff.WithConfigFileFlag("config"),
		ff.WithConfigFileParser(fileParser(fs)),
	}
}

// Parse sets fs from args, the environment and the config file, in that order of
// precedence. It is what ffcli does with Options; tests call it directly.
func Parse(fs *flag.FlagSet, args []string) error {
	return ff.Parse(fs, args, Options(fs)...)
}

// fileParser reads the --config file: TOML or YAML by its extension. Every
// key must be a flag's name and hold one value (a string, number or bool); a
// list or a table where one value belongs is an error, as is a value the flag
// refuses, and every error names the file and the key.
func fileParser(fs *flag.FlagSet) ff.ConfigFileParser {
	return func(r io.Reader, set func(name, value string) error) error {
		name := fs.Lookup("config").Value.String()
		set = noConfigKey(set)
		var m map[string]any
		switch strings.ToLower(filepath.Ext(name)) {
		case ".toml":
			t, err := toml.LoadReader(r)
			if err != nil {
				return fmt.Errorf("--config %s: %v", name, err)
			}
			m = t.ToMap()
		case ".yaml", ".yml":
			if err := yaml.NewDecoder(r).Decode(&m); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("--config %s: %v", name, err)
			}
		default:
			return fmt.Errorf("--config %s: the name must end in .toml, .yaml or .yml", name)
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			v, err := scalar(m[k])
			if err == nil {
				if fs.Lookup(k) == nil {
					err = errors.New("no such setting (the keys are serve's flag names without dashes)")
				} else {
					err = set(k, v)
				}
			}
			if err != nil {
				return fmt.Errorf("--config %s: key %q: %v", name, k, err)
			}
		}
		return nil
	}
}

// scalar is a config file value as a flag reads it; lists and tables are
// refused.
func scalar(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case bool, int, int64, uint64, float64:
		return fmt.Sprint(v), nil
	case time.Time:
		return "", errors.New("a date, where a string, number or bool belongs")
	case nil:
		return "", errors.New("no value")
	case []any:
		return "", errors.New("a list, where one value belongs (write several as one comma-separated string)")
	}
	return "", fmt.Errorf("a %T, where a string, number or bool belongs", v)
}

// noConfigKey refuses a config key in the config file, which would name a
// second file that is never read.
func noConfigKey(set func(name, value string) error) func(name, value string) error {
	return func(name, value string) error {
		if name == "config" {
			return errors.New("a config file cannot set config")
		}
		return set(name, value)
	}
}

// DevLoopback makes --dev listen on 127.0.0.1 (DevWSAddr, DevHTTPAddr) for
// each listener whose address was not given, as a flag, a THRONG_* variable
// or in the --config file (ff sets all three through fs, so fs.Visit sees
// them). Call it after parsing fs, before Validate.
func (c *Serve) DevLoopback(fs *flag.FlagSet) {
	if !c.Dev {
		return
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["ws-addr"] {
		c.WSAddr = DevWSAddr
	}
	if !set["http-addr"] {
		c.HTTPAddr = DevHTTPAddr
	}
}

// Validate checks every setting and returns all the problems at once, each
// naming its flag, or nil.
func (c *Serve) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	wsAddr, err1 := checkAddr("--ws-addr", c.WSAddr)
	httpAddr, err2 := checkAddr("--http-addr", c.HTTPAddr)
	switch {
	case err1 != nil || err2 != nil:
		errs = append(errs, err1, err2)
	case wsAddr.Port != 0 && wsAddr.Port == httpAddr.Port && (anyIP(wsAddr.IP) || anyIP(httpAddr.IP) || wsAddr.IP.Equal(httpAddr.IP)):
		bad("--ws-addr %s and --http-addr %s would listen on the same port", c.WSAddr, c.HTTPAddr)
	}

	for _, n := range []struct {
		flag string
		v    int
		min  int
	}{
		{"--loops", c.Loops, 0},
		{"--max-message-size", c.MaxMessageSize, 1},
		{"--max-pending", c.MaxPending, 1},
		{"--drain-rate", c.DrainRate, 1},
		{"--max-conns", c.MaxConns, 0},
		{"--max-conns-per-user", c.MaxConnsPerUser, 0},
		{"--max-rooms-per-conn", c.MaxRoomsPerConn, 1},
		{"--max-room-members", c.MaxRoomMembers, 0},
		{"--room-shards", c.RoomShards, 1},
		{"--max-content", c.MaxContent, 1},
		{"--burst", c.Burst, 1},
		{"--ban-close-after", c.BanCloseAfter, 0},
		{"--user-burst", c.UserBurst, 1},
		{"--history-size", c.HistorySize, 0},
		{"--history-on-join", c.HistoryOnJoin, 0},
		{"--http-max-conns", c.HTTPMaxConns, 1},
		{"--http-max-body", int(min(c.HTTPMaxBody, 1<<40)), 1},
	} {
		if n.v < n.min {
			bad("%s must be at least %d, not %d", n.flag, n.min, n.v)
		}
	}
	if c.UserRate == 0 {
		bad("--user-rate must be more than 0, or negative for no per-user limit")
	}
	if c.Rate == 0 {
		bad("--rate 0 would refuse every message: give a rate above 0, or a negative one for no limit")
	}
	if c.HistorySize > 0 && c.HistoryMemory == 0 {
		bad("--history-memory must be more than 0 while --history-size is not 0")
	}
	if c.HandshakeRate < 0 {
		bad("--handshake-rate must be at least 0, not %v", c.HandshakeRate)
	}

	for _, d := range []struct {
		flag string
		v    time.Duration
	}{
		{"--handshake-timeout", c.HandshakeTimeout},
		{"--ping-interval", c.PingInterval},
		{"--idle-timeout", c.IdleTimeout},
		{"--drain-timeout", c.DrainTimeout},
		{"--ban", c.Ban},
		{"--history-ttl", c.HistoryTTL},
		{"--http-read-timeout", c.HTTPReadTimeout},
		{"--http-write-timeout", c.HTTPWriteTimeout},
		{"--http-idle-timeout", c.HTTPIdleTimeout},
	} {
		if d.v <= 0 {
			bad("%s must be more than 0, not %v", d.flag, d.v)
		}
	}
	if c.PublicWSURL != "" {
		if u, err := url.Parse(c.PublicWSURL); err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
			bad("--public-ws-url %q: not a URL such as wss://chat.example.com/ws", c.PublicWSURL)
		}
	}
	for _, u := range c.NATSURLs() {
		if pu, err := url.Parse(u); err != nil || pu.Host == "" {
			bad("--nats %q: not a URL such as nats://127.0.0.1:4222", redact.String(u))
		}
	}
	if c.NATS != "" && len(c.NATSURLs()) == 0 {
		bad("--nats %q names no server", redact.String(c.NATS))
	}
	if c.NodeID != "" {
		if err := cluster.CheckNodeID(c.NodeID); err != nil {
			bad("--node-id %q must be 1 to %d of A-Z a-z 0-9 _ -", c.NodeID, cluster.MaxNodeID)
		}
	}
	if c.ClusterHeartbeat <= 0 {
		bad("--cluster-heartbeat must be more than 0, not %v", c.ClusterHeartbeat)
	} else if c.ClusterDeadAfter < 2*c.ClusterHeartbeat {
		bad("--cluster-dead-after %v must be at least twice --cluster-heartbeat %v", c.ClusterDeadAfter, c.ClusterHeartbeat)
	}
	if c.JWTLeeway < 0 || c.StatsInterval < 0 {
		bad("--jwt-leeway and --stats-interval must not be negative")
	}
	if c.GCPercent < 0 {
		bad("--gc-percent must be 0 (the runtime's GOGC) or more, not %d", c.GCPercent)
	}
	if c.PingInterval > 0 && c.IdleTimeout > 0 && c.IdleTimeout <= c.PingInterval {
		bad("--idle-timeout %v must exceed --ping-interval %v, or every connection is closed before it is pinged", c.IdleTimeout, c.PingInterval)
	}

	if c.MemoryLimit != 0 && c.MemoryLimit < MinMemoryLimit {
		bad("--memory-limit %v is below the %v the process needs to start", c.MemoryLimit, ByteSize(MinMemoryLimit))
	}
	if !(c.MemoryHighWater > 0 && c.MemoryHighWater <= 100) {
		bad("--memory-high-water must be a percentage above 0 and at most 100, not %v", c.MemoryHighWater)
	}
	if !(c.MemoryLowWater > 0 && c.MemoryLowWater < c.MemoryHighWater) {
		bad("--memory-low-water %v must be above 0 and below --memory-high-water %v", c.MemoryLowWater, c.MemoryHighWater)
	}

	for _, o := range c.OriginList() {
		if _, err := path.Match(o, ""); err != nil {
			bad("--origin %q: %v", o, err)
		}
	}
	if c.Poller != string(poller.BackendEpoll) && c.Poller != string(poller.BackendNetpoll) {
		bad("--poller must be epoll or netpoll, not %q", c.Poller)
	}
	if c.NetpollBufferSize < 0 || c.NetpollBufferSize > 1<<20 {
		bad("--netpoll-buffer-size must be between 0 and 1048576 bytes, not %d", c.NetpollBufferSize)
	}
	if eps, err := c.EndpointSet(); err != nil {
		errs = append(errs, err)
	} else if !eps["ws"] && c.NATS != "" {
		bad("--nats carries chat rooms: --endpoints must include ws")
	}
	if c.Compression != "on" && c.Compression != "off" {
		bad("--compression must be on or off, not %q", c.Compression)
	}
	if c.CompressionMinSize < 1 {
		bad("--compression-min-size must be at least 1, not %d", c.CompressionMinSize)
	}
	if c.SlowConsumer != "close" && c.SlowConsumer != "drop" {
		bad("--slow-consumer must be close or drop, not %q", c.SlowConsumer)
	}
	if c.AuthFailure != "reject" && c.AuthFailure != "close" {
		bad("--auth-failure must be reject or close, not %q", c.AuthFailure)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		bad("--log-level must be debug, info, warn or error, not %q", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("--log-format must be text or json, not %q", c.LogFormat)
	}
	switch c.Auth {
	case "on":
		switch {
		case c.JWTSecret != "" && c.JWTPublicKey != "":
			bad("set --jwt-secret or --jwt-public-key, not both")
		case c.JWTPublicKey != "":
			if _, err := auth.LoadPublicKeyFile(c.JWTPublicKey); err != nil {
				bad("--jwt-public-key: %v", err)
			}
		case c.JWTSecret == "" && !c.Dev:
			bad("no token key: set --jwt-secret (THRONG_JWT_SECRET) or --jwt-public-key, or run with --auth=off or --dev")
		case c.JWTSecret != "" && len(c.JWTSecret) < MinJWTSecret:
			bad("--jwt-secret is %d bytes: an HMAC key needs at least %d, and should have 32 (openssl rand -hex 32)", len(c.JWTSecret), MinJWTSecret)
		}
	case "off":
		if c.JWTSecret != "" || c.JWTPublicKey != "" {
			bad("--auth=off conflicts with --jwt-secret and --jwt-public-key")
		}
	default:
		bad("--auth must be on or off, not %q", c.Auth)
	}
	return errors.Join(errs...)
}

// checkAddr checks a listen address: host:port, the port a number or a service
// name, the host empty, an IP or a name that resolves.
func checkAddr(flag, addr string) (*net.TCPAddr, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("%s %q: %v (want host:port, such as :8080 or 127.0.0.1:8080)", flag, addr, err)
	}
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %v", flag, addr, err)
	}
	return a, nil
}

func anyIP(ip net.IP) bool { return len(ip) == 0 || ip.IsUnspecified() }

// OriginList splits --origin into its patterns.
func (c *Serve) OriginList() []string {
	var out []string
	for _, o := range strings.Split(c.Origins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, o)
		}
	}
	return out
}

// Logger returns the logger --log-format and --log-level ask for, writing to w.
// Credentials are redacted from every attribute (redact.Attr). Call it
// after Validate.
func (c *Serve) Logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	o := &slog.HandlerOptions{Level: level, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		a = redact.Attr(groups, a)
		// A duration reads "30s" in JSON too, not 30000000000.
		if a.Value.Kind() == slog.KindDuration {
			a.Value = slog.StringValue(a.Value.Duration().String())
		}
		return a
	}}
	switch c.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", c.LogFormat)
}

// Verifier returns the token verifier, or nil with --auth=off. In --dev without a
// key it makes up a secret from random, and returns it so that the command can
// print a URL with a token; otherwise devSecret is the --jwt-secret in --dev
// and empty without it. Call it after Validate.
func (c *Serve) Verifier(random io.Reader) (v *auth.Verifier, devSecret string, err error) {
	if c.Auth == "off" {
		return nil, "", nil
	}
	o := auth.Options{Secret: []byte(c.JWTSecret), Issuer: c.JWTIssuer, Audience: c.JWTAudience, Leeway: c.JWTLeeway,
		AllowNoExp: c.JWTAllowNoExp}
	switch {
	case c.JWTPublicKey != "":
		pem, err := auth.LoadPublicKeyFile(c.JWTPublicKey)
		if err != nil {
			return nil, "", fmt.Errorf("--jwt-public-key: %w", err)
		}
		o.Secret, o.PublicKeyPEM = nil, pem
	case c.JWTSecret == "" && c.Dev:
		var b [32]byte
		if _, err := io.ReadFull(random, b[:]); err != nil {
			return nil, "", err
		}
		devSecret = fmt.Sprintf("%x", b)
		o.Secret = []byte(devSecret)
	case c.JWTSecret == "":
		return nil, "", errors.New("no token key: set --jwt-secret (THRONG_JWT_SECRET) or --jwt-public-key, or run with --auth=off or --dev")
	case c.Dev:
		devSecret = c.JWTSecret
	}
	v, err = auth.New(o)
	if err != nil {
		return nil, "", err
	}
	return v, devSecret, nil
}

// Warn logs, once at start, every setting that weakens the server on purpose,
// so that it is in the log of every run rather than only in a config file.
func (c *Serve) Warn(log *slog.Logger) {
	if c.Auth == "on" && c.JWTSecret != "" && len(c.JWTSecret) < GoodJWTSecret {
		log.Warn(fmt.Sprintf("--jwt-secret is %d bytes: a guessable HMAC key lets anyone mint tokens; use 32 random bytes (openssl rand -hex 32)", len(c.JWTSecret)))
	}
	if c.JWTAllowNoExp && c.Auth == "on" {
		log.Warn("--jwt-allow-no-exp: tokens without exp are accepted and never expire; " +
			"a leaked one is valid until the key is rotated, and a refresh with one lifts a connection's expiry")
	}
}

// ServerOptions maps the settings onto server.Options, one field per flag.
func (c *Serve) ServerOptions(v *auth.Verifier, log *slog.Logger) server.Options {
	o := server.Options{
		Auth:              v,
		Origins:           c.OriginList(),
		HandshakeRate:     c.HandshakeRate,
		MaxConnsPerUser:   c.MaxConnsPerUser,
		MaxConns:          c.MaxConns,
		MemoryLimit:       uint64(c.MemoryLimit),
		MemoryHighWater:   c.MemoryHighWater / 100,
		MemoryLowWater:    c.MemoryLowWater / 100,
		StatsInterval:     c.StatsInterval,
		TrimIdleMemory:    c.TrimIdleMemory,
		Subprotocols:      []string{"throng.v1"},
		Loops:             c.Loops,
		Backend:           poller.Backend(c.Poller),
		NetpollBufferSize: c.NetpollBufferSize,
		MaxMessageSize:    c.MaxMessageSize,
		MaxPending:        c.MaxPending,
		HandshakeTimeout:  c.HandshakeTimeout,
		PingInterval:      c.PingInterval,
		IdleTimeout:       c.IdleTimeout,
		DrainRate:         c.DrainRate,
		Logger:            log,
	}
	if c.AuthFailure == "close" {
		o.AuthFailure = server.AuthFailClose
	}
	if c.Compression == "on" {
		o.Compression = server.CompressionOn
	}
	o.CompressionMinSize = c.CompressionMinSize
	if c.SlowConsumer == "drop" {
		o.SlowConsumer = server.SlowDrop
	}
	return o
}

// HTTPOptions maps the HTTP listener's settings onto httplimit.Options.
func (c *Serve) HTTPOptions(log *slog.Logger) httplimit.Options {
	return httplimit.Options{
		ReadTimeout:  c.HTTPReadTimeout,
		WriteTimeout: c.HTTPWriteTimeout,
		IdleTimeout:  c.HTTPIdleTimeout,
		MaxConns:     c.HTTPMaxConns,
		MaxBodyBytes: int64(c.HTTPMaxBody),
		Logger:       log,
	}
}

// WebOptions maps the settings onto web.Options for the demo page, given the
// WebSocket listener's bound address and the verifier and dev secret that
// Verifier returned.
func (c *Serve) WebOptions(wsAddr string, v *auth.Verifier, devSecret string) web.Options {
	return web.Options{WSAddr: wsAddr, WSURL: c.PublicWSURL, Auth: v, DevSecret: []byte(devSecret), Reasons: c.Dev}
}

// RoomOptions maps the settings onto room.Options.
func (c *Serve) RoomOptions() room.Options {
	return room.Options{Shards: c.RoomShards, MaxMembers: c.MaxRoomMembers}
}

// NATSURLs splits --nats into its URLs; none means a single node.
func (c *Serve) NATSURLs() []string {
	var out []string
	for _, u := range strings.Split(c.NATS, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// ClusterOptions maps the cluster settings onto cluster.Options; ok is false
// without --nats, when the node runs alone.
func (c *Serve) ClusterOptions(log *slog.Logger) (o cluster.Options, ok bool) {
	urls := c.NATSURLs()
	if len(urls) == 0 {
		return o, false
	}
	return cluster.Options{
		URLs:      urls,
		NodeID:    c.NodeID,
		Heartbeat: c.ClusterHeartbeat,
		DeadAfter: c.ClusterDeadAfter,
		History:   c.clusterHistory(),
		Logger:    log,
	}, true
}

// clusterHistory is the history settings for a cluster's JetStream stream,
// nil with --history-size 0.
func (c *Serve) clusterHistory() *cluster.HistoryOptions {
	if c.HistorySize <= 0 {
		return nil
	}
	return &cluster.HistoryOptions{Size: c.HistorySize, TTL: c.HistoryTTL, Memory: int64(c.HistoryMemory)}
}

// Endpoints are the WebSocket endpoints --endpoints may name.
var Endpoints = []string{"ws", "echo", "shootout"}

// EndpointSet returns the endpoints --endpoints names, without duplicates.
func (c *Serve) EndpointSet() (map[string]bool, error) {
	set := make(map[string]bool)
	for _, e := range strings.Split(c.Endpoints, ",") {
		e = strings.TrimPrefix(strings.TrimSpace(e), "/")
		if !slices.Contains(Endpoints, e) {
			return nil, fmt.Errorf("--endpoints: %q is not one of %s", e, strings.Join(Endpoints, ", "))
		}
		set[e] = true
	}
	return set, nil
}

// RateLimit is the inbound message limit of every endpoint.
func (c *Serve) RateLimit() server.RateLimit {
	return server.RateLimit{Rate: c.Rate, Burst: c.Burst, Ban: c.Ban, BanCloseAfter: c.BanCloseAfter}
}

// Chat returns the /ws endpoint the settings describe.
func (c *Serve) Chat(rooms *room.Table, v *auth.Verifier, log *slog.Logger) *chat.Handler {
	return &chat.Handler{
		Rooms:           rooms,
		Auth:            v,
		Logger:          log,
		MaxRoomsPerConn: c.MaxRoomsPerConn,
		MaxContent:      c.MaxContent,
		RateLimit:       c.RateLimit(),
		UserRate:        c.UserRate,
		UserBurst:       c.UserBurst,
		JoinHistory:     min(c.HistoryOnJoin, protocol.MaxHistoryLimit),
	}
}

// HistoryOptions maps the history settings onto history.Options; ok is false
// with --history-size 0, when history is off.
func (c *Serve) HistoryOptions() (o history.Options, ok bool) {
	if c.HistorySize <= 0 {
		return o, false
	}
	return history.Options{Size: c.HistorySize, TTL: c.HistoryTTL, Memory: int64(c.HistoryMemory)}, true
}

// ByteSize is a flag value for a size in bytes, written with a unit as
// GOMEMLIMIT is: 2GiB, 512MiB, or a plain number of bytes. KiB, MiB, GiB and
// TiB are powers of 1024; KB, MB, GB and TB (and K, M, G, T) powers of 1000,
// as go-humanize reads them.
type ByteSize uint64

// Set parses s.
func (b *ByteSize) Set(s string) error {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		*b = 0
		return nil
	}
	v, err := humanize.ParseBytes(s)
	if err != nil {
		return fmt.Errorf("%q is not a size such as 2GiB or 512MiB", s)
	}
	*b = ByteSize(v)
	return nil
}

// String writes the size in the largest binary unit that divides it exactly,
// so that it reads back as the same number.
func (b ByteSize) String() string {
	v := uint64(b)
	if v == 0 {
		return "0"
	}
	for _, u := range []struct {
		name string
		size uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if v%u.size == 0 {
			return strconv.FormatUint(v/u.size, 10) + u.name
		}
	}
	return strconv.FormatUint(v, 10)
}
