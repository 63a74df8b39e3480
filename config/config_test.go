package config

import (
	"bytes"
	"crypto/rand"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/httplimit"
	"github.com/throng-ws/throng/internal/redact"
	"github.com/throng-ws/throng/server"
)

// clearEnv unsets every THRONG_ variable for the test, so a developer's
// settings cannot change what it sees.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, EnvPrefix+"_") {
			t.Setenv(k, "") // restored after the test
			os.Unsetenv(k)
		}
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const testSecret = "0123456789abcdef0123456789abcdef"

func parse(t *testing.T, args ...string) (*Serve, error) {
	t.Helper()
	var c Serve
	fs := c.FlagSet()
	fs.SetOutput(new(bytes.Buffer))
	err := Parse(fs, args)
	return &c, err
}

func TestDefaults(t *testing.T) {
	clearEnv(t)
	c, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.WSAddr != ":8080" || c.HTTPAddr != ":8081" || c.PingInterval != server.DefaultPingInterval ||
		c.IdleTimeout != server.DefaultIdleTimeout || c.MemoryLimit != 0 || c.MemoryHighWater != 90 ||
		c.MemoryLowWater != 80 || c.MaxConns != 0 || c.LogFormat != "text" || c.StatsInterval != time.Minute {
		t.Errorf("defaults: %+v", c)
	}
	c.Dev = true // no key otherwise
	if err := c.Validate(); err != nil {
		t.Errorf("the defaults (with --dev) do not validate: %v", err)
	}
}

// TestPrecedence sets each setting in every combination of file, environment
// and flag, and checks the flag wins over the environment, the environment
// over the file, and the file over the default.
func TestPrecedence(t *testing.T) {
	for _, ext := range []string{".toml", ".yaml"} {
		t.Run(ext, func(t *testing.T) {
			file := map[string]string{
				".toml": "ws-addr = \"127.0.0.1:1001\"\nmemory-limit = \"1GiB\"\nping-interval = \"11s\"\nmax-conns = 10\n",
				".yaml": "ws-addr: \"127.0.0.1:1001\"\nmemory-limit: 1GiB\nping-interval: 11s\nmax-conns: 10\n",
			}[ext]
			path := writeFile(t, "throng"+ext, file)
			for _, tc := range []struct {
				name                string
				useFile, env, flags bool
				addr, ping, limit   string
				conns               int
			}{
				{"default", false, false, false, ":8080", "30s", "0", 0},
				{"file", true, false, false, "127.0.0.1:1001", "11s", "1GiB", 10},
				{"env over file", true, true, false, "127.0.0.1:2002", "22s", "2GiB", 20},
				{"env alone", false, true, false, "127.0.0.1:2002", "22s", "2GiB", 20},
				{"flag over env and file", true, true, true, "127.0.0.1:3003", "33s", "3GiB", 30},
				{"flag over file", true, false, true, "127.0.0.1:3003", "33s", "3GiB", 30},
			} {
				t.Run(tc.name, func(t *testing.T) {
					clearEnv(t)
					var args []string
					if tc.useFile {
						args = append(args, "--config", path)
					}
					if tc.env {
						t.Setenv("THRONG_WS_ADDR", "127.0.0.1:2002")
						t.Setenv("THRONG_PING_INTERVAL", "22s")
						t.Setenv("THRONG_MEMORY_LIMIT", "2GiB")
						t.Setenv("THRONG_MAX_CONNS", "20")
					}
					if tc.flags {
						args = append(args, "--ws-addr", "127.0.0.1:3003", "--ping-interval=33s", "--memory-limit", "3GiB", "--max-conns", "30")
					}
					c, err := parse(t, args...)
					if err != nil {
						t.Fatal(err)
					}
					if c.WSAddr != tc.addr || c.PingInterval.String() != tc.ping || c.MemoryLimit.String() != tc.limit || c.MaxConns != tc.conns {
						t.Errorf("ws-addr %s ping-interval %v memory-limit %v max-conns %d; want %s %s %s %d",
							c.WSAddr, c.PingInterval, c.MemoryLimit, c.MaxConns, tc.addr, tc.ping, tc.limit, tc.conns)
					}
				})
			}
		})
	}
}

func TestConfigFromEnv(t *testing.T) {
	clearEnv(t)
	t.Setenv("THRONG_CONFIG", writeFile(t, "c.yml", "max-conns: 7\n"))
	c, err := parse(t)
	if err != nil || c.MaxConns != 7 {
		t.Fatalf("THRONG_CONFIG: max-conns %d, %v; want 7", c.MaxConns, err)
	}
}

func TestConfigFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, file, content, want string
	}{
		{"unknown extension", "c.ini", "ws-addr = x\n", "must end in .toml, .yaml or .yml"},
		{"unknown key", "c.toml", "no-such-setting = 1\n", "no-such-setting"},
		{"bad TOML", "c.toml", "ws-addr = \n", "TOML"},
		{"bad YAML", "c.yaml", "ws-addr: [\n", "YAML"},
		{"bad value", "c.toml", "ping-interval = \"soon\"\n", "ping-interval"},
		{"bad size", "c.toml", "memory-limit = \"lots\"\n", "not a size"},
		{"config in config", "c.toml", "config = \"other.toml\"\n", "cannot set config"},
		{"YAML list for a string", "c.yaml", "ws-addr:\n  - \":8080\"\n  - \":8090\"\n", `c.yaml: key "ws-addr": a list, where one value belongs`},
		{"YAML one-item list", "c.yaml", "origin: [\"https://a\"]\n", `key "origin": a list`},
		{"TOML array", "c.toml", "origin = [\"https://a\", \"https://b\"]\n", `c.toml: key "origin": a list`},
		{"TOML table", "c.toml", "[ws-addr]\nx = 1\n", `key "ws-addr": a map`},
		{"names file and key", "c.toml", "drain-timeout = \"soon\"\n", `c.toml: key "drain-timeout": `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			_, err := parse(t, "--config", writeFile(t, tc.file, tc.content))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
	clearEnv(t)
	if _, err := parse(t, "--config", filepath.Join(t.TempDir(), "missing.toml")); err == nil {
		t.Error("a missing config file was accepted")
	}
}

// TestSampleConfig loads the shipped deploy/throng.toml: it must parse and, with
// a secret from the environment as its unit provides, validate.
func TestSampleConfig(t *testing.T) {
	clearEnv(t)
	t.Setenv("THRONG_JWT_SECRET", "from the environment file")
	c, err := parse(t, "--config", "../deploy/throng.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("deploy/throng.toml does not validate: %v", err)
	}
	if c.MaxConns != 1_000_000 || c.MemoryLimit != 12<<30 || c.LogFormat != "json" || c.HTTPAddr != "127.0.0.1:8081" {
		t.Errorf("deploy/throng.toml read as %+v", c)
	}
	o := c.ServerOptions(nil, nil)
	if o.MemoryLimit != 12<<30 || o.MemoryHighWater != 0.9 || o.MemoryLowWater != 0.8 || o.MaxConns != 1_000_000 {
		t.Errorf("server options %+v", o)
	}
}

// TestSettingsTable checks that the README's one table of settings names every
// flag and its environment variable, so the two cannot drift apart.
func TestSettingsTable(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var table []string
	for _, line := range strings.Split(string(readme), "\n") {
		if strings.HasPrefix(line, "| `--") {
			table = append(table, line)
		}
	}
	all := strings.Join(table, "\n")
	var c Serve
	c.FlagSet().VisitAll(func(f *flag.Flag) {
		env := EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if !regexp.MustCompile("`--" + regexp.QuoteMeta(f.Name) + "`").MatchString(all) {
			t.Errorf("README settings table lacks `--%s`", f.Name)
		}
		if !strings.Contains(all, "`"+env+"`") {
			t.Errorf("README settings table lacks `%s`", env)
		}
	})
}

func TestValidate(t *testing.T) {
	keyFile := writeFile(t, "not-a-key.pem", "not a PEM file")
	unreadable := filepath.Join(t.TempDir(), "absent.pem")
	for _, tc := range []struct {
		name string
		args []string
		want string // "" for valid
	}{
		{"valid", nil, ""},
		{"ws-addr without a port", []string{"--ws-addr", "localhost"}, `--ws-addr "localhost": address localhost: missing port`},
		{"http-addr port out of range", []string{"--http-addr", ":99999"}, `--http-addr ":99999"`},
		{"http-addr unknown service", []string{"--http-addr", "127.0.0.1:no-such-service"}, `--http-addr "127.0.0.1:no-such-service"`},
		{"same port twice", []string{"--ws-addr", ":9000", "--http-addr", "127.0.0.1:9000"}, "would listen on the same port"},
		{"both on port 0 is fine", []string{"--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, ""},
		{"idle timeout equal to ping", []string{"--ping-interval", "30s", "--idle-timeout", "30s"}, "--idle-timeout 30s must exceed --ping-interval 30s"},
		{"idle timeout below ping", []string{"--ping-interval", "1m", "--idle-timeout", "30s"}, "must exceed --ping-interval"},
		{"zero ping interval", []string{"--ping-interval", "0s"}, "--ping-interval must be more than 0"},
		{"negative max-conns", []string{"--max-conns", "-1"}, "--max-conns must be at least 0, not -1"},
		{"low water above high", []string{"--memory-high-water", "70", "--memory-low-water", "80"}, "--memory-low-water 80 must be above 0 and below --memory-high-water 70"},
		{"low water equal to high", []string{"--memory-high-water", "80", "--memory-low-water", "80"}, "must be above 0 and below --memory-high-water"},
		{"high water over 100", []string{"--memory-high-water", "120"}, "--memory-high-water must be a percentage"},
		{"memory limit too small", []string{"--memory-limit", "1MiB"}, "--memory-limit 1MiB is below"},
		{"memory limit fine", []string{"--memory-limit", "2GiB"}, ""},
		{"zero burst", []string{"--burst", "0"}, "--burst must be at least 1"},
		{"negative netpoll buffer", []string{"--netpoll-buffer-size", "-1"}, "--netpoll-buffer-size must be between 0 and 1048576 bytes, not -1"},
		{"huge netpoll buffer", []string{"--netpoll-buffer-size", "2097152"}, "--netpoll-buffer-size must be between"},
		{"unknown slow-consumer", []string{"--slow-consumer", "ignore"}, "--slow-consumer must be close or drop"},
		{"unknown compression", []string{"--compression", "gzip"}, "--compression must be on or off"},
		{"compression min size 0", []string{"--compression-min-size", "0"}, "--compression-min-size must be at least 1"},
		{"unknown log format", []string{"--log-format", "xml"}, "--log-format must be text or json"},
		{"unknown log level", []string{"--log-level", "loud"}, "--log-level must be debug, info, warn or error"},
		{"bad origin", []string{"--origin", "https://[x"}, "--origin"},
		{"unreadable key file", []string{"--jwt-secret", "", "--jwt-public-key", unreadable}, "--jwt-public-key"},
		{"key file that is no key", []string{"--jwt-secret", "", "--jwt-public-key", keyFile}, "--jwt-public-key"},
		{"secret and key", []string{"--jwt-public-key", keyFile}, "not both"},
		{"no key", []string{"--jwt-secret", ""}, "no token key"},
		{"no key in dev", []string{"--jwt-secret", "", "--dev"}, ""},
		{"auth off with a secret", []string{"--auth", "off"}, "--auth=off conflicts"},
		{"unknown auth", []string{"--auth", "maybe"}, "--auth must be on or off"},
		{"unknown auth failure", []string{"--auth-failure", "maybe"}, "--auth-failure must be reject or close"},
		// No value silently becomes a default.
		{"zero drain rate", []string{"--drain-rate", "0"}, "--drain-rate must be at least 1, not 0"},
		{"zero rate", []string{"--rate", "0"}, "--rate 0 would refuse every message"},
		{"negative rate is unlimited", []string{"--rate", "-1"}, ""},
		{"zero room shards", []string{"--room-shards", "0"}, "--room-shards must be at least 1, not 0"},
		{"zero max message size", []string{"--max-message-size", "0"}, "--max-message-size must be at least 1, not 0"},
		{"one-byte secret", []string{"--jwt-secret", "x"}, "--jwt-secret is 1 bytes: an HMAC key needs at least 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			c, err := parse(t, append([]string{"--jwt-secret", testSecret}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			err = c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	clearEnv(t)
	c, err := parse(t, "--max-conns", "-1", "--log-format", "xml", "--ws-addr", "nope")
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	for _, want := range []string{"--max-conns", "--log-format", "--ws-addr", "no token key"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want it to mention %s", err, want)
		}
	}
}

func TestByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		str  string
	}{
		{"2GiB", 2 << 30, "2GiB"},
		{"512MiB", 512 << 20, "512MiB"},
		{"1.5GiB", 3 << 29, "1536MiB"},
		{"2G", 2_000_000_000, "1953125KiB"},
		{"2 GB", 2_000_000_000, "1953125KiB"},
		{"1048576", 1 << 20, "1MiB"},
		{"1000", 1000, "1000"},
		{"0", 0, "0"},
		{"", 0, "0"},
	} {
		var b ByteSize
		if err := b.Set(tc.in); err != nil || uint64(b) != tc.want || b.String() != tc.str {
			t.Errorf("Set(%q): %d %q %v, want %d %q", tc.in, uint64(b), b.String(), err, tc.want, tc.str)
		}
		var back ByteSize
		if err := back.Set(b.String()); err != nil || back != b {
			t.Errorf("%q does not read back: %v %v", b.String(), back, err)
		}
	}
	for _, bad := range []string{"lots", "-1GiB", "2XB"} {
		var b ByteSize
		if err := b.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted: %v", bad, b)
		}
	}
}

func TestLogger(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		c := Serve{LogLevel: "info", LogFormat: format}
		log, err := c.Logger(&buf)
		if err != nil {
			t.Fatal(err)
		}
		log.Debug("hidden")
		log.Info("shown", "token", "s3cr3t", "uri", "/ws?token=s3cr3t", "api_key", "k3y")
		out := buf.String()
		if strings.Contains(out, "hidden") || !strings.Contains(out, "shown") {
			t.Errorf("%s: level not applied: %s", format, out)
		}
		if strings.Contains(out, "s3cr3t") || strings.Contains(out, "k3y") || !strings.Contains(out, redact.Redacted) {
			t.Errorf("%s: credentials not redacted: %s", format, out)
		}
		if format == "json" && !strings.HasPrefix(out, "{") {
			t.Errorf("json: %s", out)
		}
	}
	if _, err := (&Serve{LogLevel: "info", LogFormat: "xml"}).Logger(new(bytes.Buffer)); err == nil {
		t.Error("xml log format accepted")
	}
}

func TestVerifier(t *testing.T) {
	clearEnv(t)
	c, _ := parse(t, "--dev")
	v, dev, err := c.Verifier(rand.Reader)
	if err != nil || v == nil || len(dev) != 64 {
		t.Fatalf("--dev: verifier %v, secret %q, %v", v, dev, err)
	}
	c, _ = parse(t, "--auth", "off")
	if v, _, err := c.Verifier(rand.Reader); v != nil || err != nil {
		t.Fatalf("--auth=off: %v, %v", v, err)
	}
	c, _ = parse(t, "--jwt-secret", "s")
	if v, dev, err := c.Verifier(rand.Reader); v == nil || dev != "" || err != nil {
		t.Fatalf("--jwt-secret: %v, %q, %v", v, dev, err)
	}
}

// TestAllowNoExp checks that a token without exp is refused unless
// --jwt-allow-no-exp, and that allowing it is logged as a warning.
func TestAllowNoExp(t *testing.T) {
	clearEnv(t)
	forever, err := auth.Mint([]byte("s"), "", "u", 0, "", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want auth.Reason
		warn bool
	}{
		{[]string{"--jwt-secret", "s"}, auth.ReasonNoExpiry, false},
		{[]string{"--jwt-secret", "s", "--jwt-allow-no-exp"}, auth.ReasonNone, true},
	} {
		c, err := parse(t, tc.args...)
		if err != nil {
			t.Fatal(err)
		}
		v, _, err := c.Verifier(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(forever); auth.ReasonOf(err) != tc.want {
			t.Errorf("%v: token without exp: %v, want %v", tc.args, err, tc.want)
		}
		var buf bytes.Buffer
		c.Warn(slog.New(slog.NewTextHandler(&buf, nil)))
		if warned := strings.Contains(buf.String(), "level=WARN") && strings.Contains(buf.String(), "--jwt-allow-no-exp"); warned != tc.warn {
			t.Errorf("%v: warning logged %v, want %v: %q", tc.args, warned, tc.warn, buf.String())
		}
	}
}

func TestHTTPOptions(t *testing.T) {
	clearEnv(t)
	c, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	def := c.HTTPOptions(nil)
	if def.ReadTimeout != httplimit.DefaultReadTimeout || def.WriteTimeout != httplimit.DefaultWriteTimeout ||
		def.IdleTimeout != httplimit.DefaultIdleTimeout || def.MaxConns != httplimit.DefaultMaxConns ||
		def.MaxBodyBytes != httplimit.DefaultMaxBodyBytes {
		t.Errorf("default HTTP options %+v", def)
	}
	t.Setenv("THRONG_HTTP_MAX_CONNS", "7")
	c, err = parse(t, "--http-read-timeout", "2s", "--http-write-timeout", "3s", "--http-idle-timeout", "4s", "--http-max-body", "1KiB", "--dev")
	if err != nil {
		t.Fatal(err)
	}
	o := c.HTTPOptions(nil)
	if o.ReadTimeout != 2*time.Second || o.WriteTimeout != 3*time.Second || o.IdleTimeout != 4*time.Second ||
		o.MaxConns != 7 || o.MaxBodyBytes != 1024 {
		t.Errorf("HTTP options %+v", o)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{{"--http-read-timeout", "0"}, {"--http-idle-timeout", "-1s"}, {"--http-max-conns", "0"}, {"--http-max-body", "0"}} {
		c, err := parse(t, append(bad, "--dev")...)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), bad[0]) {
			t.Errorf("%v: Validate %v", bad, err)
		}
	}
}

// TestDevLoopback: --dev listens on loopback unless an address is given, by
// flag, environment or config file.
func TestDevLoopback(t *testing.T) {
	file := writeFile(t, "dev.toml", "http-addr = \"0.0.0.0:9001\"\n")
	for _, tc := range []struct {
		name             string
		env              []string
		args             []string
		wantWS, wantHTTP string
	}{
		{"dev", nil, []string{"--dev"}, "127.0.0.1:8080", "127.0.0.1:8081"},
		{"not dev", nil, nil, ":8080", ":8081"},
		{"dev with ws flag", nil, []string{"--dev", "--ws-addr", ":9000"}, ":9000", "127.0.0.1:8081"},
		{"dev with env", []string{"THRONG_HTTP_ADDR=:9001"}, []string{"--dev"}, "127.0.0.1:8080", ":9001"},
		{"dev from env with file", []string{"THRONG_DEV=true"}, []string{"--config", file}, "127.0.0.1:8080", "0.0.0.0:9001"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			for _, kv := range tc.env {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			var c Serve
			fs := c.FlagSet()
			fs.SetOutput(new(bytes.Buffer))
			if err := Parse(fs, tc.args); err != nil {
				t.Fatal(err)
			}
			c.DevLoopback(fs)
			if c.WSAddr != tc.wantWS || c.HTTPAddr != tc.wantHTTP {
				t.Errorf("ws %q http %q, want %q and %q", c.WSAddr, c.HTTPAddr, tc.wantWS, tc.wantHTTP)
			}
		})
	}
}

func TestWebOptions(t *testing.T) {
	clearEnv(t)
	c, err := parse(t, "--public-ws-url", "wss://chat.example.com/ws", "--dev")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if o := c.WebOptions("[::]:8080", nil, "s"); o.WSURL != "wss://chat.example.com/ws" || o.WSAddr != "[::]:8080" || !o.Reasons || string(o.DevSecret) != "s" {
		t.Errorf("web options %+v", o)
	}
	c, _ = parse(t, "--jwt-secret", "s")
	if o := c.WebOptions(":8080", nil, ""); o.Reasons || o.WSURL != "" {
		t.Errorf("without --dev: web options %+v", o)
	}
	for _, bad := range []string{"chat.example.com", "https://chat.example.com/ws", "wss://"} {
		c, _ := parse(t, "--public-ws-url", bad, "--dev")
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--public-ws-url") {
			t.Errorf("--public-ws-url %q: %v", bad, err)
		}
	}
}

func TestServerOptions(t *testing.T) {
	clearEnv(t)
	c, err := parse(t, "--slow-consumer", "drop", "--auth-failure", "close", "--origin", " https://a.example , https://*.b.example ",
		"--max-conns", "5", "--memory-limit", "1GiB", "--memory-high-water", "95", "--memory-low-water", "85", "--stats-interval", "10s")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	o := c.ServerOptions(nil, log)
	if o.SlowConsumer != server.SlowDrop || o.AuthFailure != server.AuthFailClose || len(o.Origins) != 2 || o.Origins[1] != "https://*.b.example" ||
		o.MaxConns != 5 || o.MemoryLimit != 1<<30 || o.MemoryHighWater != 0.95 || o.MemoryLowWater != 0.85 || o.StatsInterval != 10*time.Second || o.Logger != log {
		t.Errorf("server options %+v", o)
	}
	if r := c.RoomOptions(); r.Shards != 64 {
		t.Errorf("room options %+v", r)
	}
	if o.Compression != server.CompressionOn || o.CompressionMinSize != server.DefaultCompressionMinSize {
		t.Errorf("compression %v, min size %d; want on by default", o.Compression, o.CompressionMinSize)
	}
	off, err := parse(t, "--compression", "off", "--compression-min-size", "512")
	if err != nil {
		t.Fatal(err)
	}
	if o := off.ServerOptions(nil, log); o.Compression != server.CompressionOff || o.CompressionMinSize != 512 {
		t.Errorf("--compression off --compression-min-size 512: %v, %d", o.Compression, o.CompressionMinSize)
	}
	if ch := c.Chat(nil, nil, log); ch.Rate != server.DefaultRate || ch.Burst != server.DefaultBurst {
		t.Errorf("chat %+v", ch)
	}
}

func TestEffectiveAndSample(t *testing.T) {
	clearEnv(t)
	t.Setenv("THRONG_MAX_CONNS", "5000")
	file := writeFile(t, "c.toml", "drain-rate = 77\napi-key = \"supersecretkey\"\n")
	args := []string{"--config", file, "--ws-addr", ":9999"}
	var c Serve
	fs := c.FlagSet()
	if err := Parse(fs, args); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	WriteEffective(&b, fs, args, os.Environ())
	out := b.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`--ws-addr\s+:9999\s+flag\s+THRONG_WS_ADDR`),
		regexp.MustCompile(`--max-conns\s+5000\s+env\s`),
		regexp.MustCompile(`--drain-rate\s+77\s+file\s`),
		regexp.MustCompile(`--api-key\s+\(set, 14 bytes\)\s+file\s`),
		regexp.MustCompile(`--ping-interval\s+30s\s+default\s`),
	} {
		if !want.MatchString(out) {
			t.Errorf("effective settings lack %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "supersecretkey") {
		t.Error("a secret was printed")
	}
	// The sample parses back to the defaults.
	b.Reset()
	WriteSample(&b, fs)
	sample := b.String()
	if !strings.Contains(sample, "# ping-interval = \"30s\"") || !strings.Contains(sample, "# max-conns = 0") {
		t.Errorf("sample:\n%s", sample)
	}
	uncommented := regexp.MustCompile(`(?m)^# ([a-z-]+ = .*)$`).ReplaceAllString(sample, "$1")
	clearEnv(t)
	d, err := parse(t, "--config", writeFile(t, "s.toml", uncommented))
	if err != nil {
		t.Fatalf("the sample, uncommented, does not parse: %v", err)
	}
	def, _ := parse(t)
	d.Config = ""
	if *d != *def {
		t.Errorf("the sample's values differ from the defaults:\n%+v\n%+v", d, def)
	}
}

func TestLoggerDurationsAsStrings(t *testing.T) {
	clearEnv(t)
	c, _ := parse(t, "--log-format", "json")
	var b strings.Builder
	log, err := c.Logger(&b)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("x", "drain_timeout", 30*time.Second)
	if !strings.Contains(b.String(), `"drain_timeout":"30s"`) {
		t.Errorf("log line %s", b.String())
	}
}
