package bench

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/throng-ws/throng/bench/peers/gorillapeer"
	"github.com/throng-ws/throng/server"
)

// TestCompressionWire runs chat and broadcast against one throng with
// permessage-deflate, with and without --compression: every message is
// delivered exactly once either way (the client inflates what came
// compressed), and the bytes on the wire per delivery are fewer with it.
func TestCompressionWire(t *testing.T) {
	url := startThrongOpts(t, false, server.CompressionOn)
	wire := map[string]float64{}
	for _, compression := range []bool{false, true} {
		chat := runOne(t, Config{
			Scenario:    ScenarioChat,
			Targets:     []Target{{URL: url}},
			Conns:       40,
			RoomSize:    8,
			RoomRate:    10,
			Duration:    time.Second,
			Size:        400,
			Compression: compression,
		}).Chat
		if chat == nil || chat.Deliveries != chat.Expected || chat.Sent == 0 || chat.WireBytesPerDelivery <= 0 {
			t.Fatalf("compression %v: chat %+v", compression, chat)
		}
		wire[fmt.Sprint("chat ", compression)] = chat.WireBytesPerDelivery
		r := runOne(t, Config{
			Scenario:    ScenarioBroadcast,
			Targets:     []Target{{URL: url}},
			StepSize:    20,
			MaxClients:  20,
			Samples:     10,
			Inflight:    2,
			Size:        1000,
			LimitRTT:    10 * time.Second,
			Compression: compression,
		})
		if len(r.Steps) != 1 || !r.Steps[0].ExactlyOnce || r.Steps[0].WireBytesPerDelivery <= 0 {
			t.Fatalf("compression %v: steps %+v", compression, r.Steps)
		}
		wire[fmt.Sprint("broadcast ", compression)] = r.Steps[0].WireBytesPerDelivery
	}
	t.Logf("wire bytes per delivery: %v", wire)
	for _, s := range []string{"chat", "broadcast"} {
		if wire[s+" true"] >= wire[s+" false"]*0.9 {
			t.Fatalf("%s: %.1f wire bytes per delivery compressed, %.1f plain", s, wire[s+" true"], wire[s+" false"])
		}
	}
}

// TestCompressionPeers: the gorilla peer with compression answers the bench's
// offer, and the bench inflates its broadcasts. (The nbio peer is left out:
// nbio's engine has a data race of its own between listening and its first
// request, which -race reports; the measurement runs use it.)
func TestCompressionPeers(t *testing.T) {
	g := gorillapeer.New()
	g.EnableCompression()
	gs := httptest.NewServer(g)
	t.Cleanup(func() {
		g.Close()
		gs.Close()
	})
	for name, url := range map[string]string{"gorilla": strings.Replace(gs.URL, "http://", "ws://", 1)} {
		wire := map[bool]float64{}
		for _, compression := range []bool{false, true} {
			r := runOne(t, Config{
				Scenario:    ScenarioBroadcast,
				Targets:     []Target{{URL: url}},
				StepSize:    20,
				MaxClients:  20,
				Samples:     10,
				Inflight:    2,
				Size:        1000,
				LimitRTT:    10 * time.Second,
				Compression: compression,
			})
			if len(r.Steps) != 1 || !r.Steps[0].ExactlyOnce {
				t.Fatalf("%s, compression %v: steps %+v", name, compression, r.Steps)
			}
			wire[compression] = r.Steps[0].WireBytesPerDelivery
		}
		if wire[true] >= wire[false]*0.9 {
			t.Fatalf("%s: %.1f wire bytes per delivery compressed, %.1f plain", name, wire[true], wire[false])
		}
	}
}
