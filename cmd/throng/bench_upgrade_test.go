//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/throng-ws/throng/bench"
)

// TestBenchUpgrade runs `throng bench upgrade` at a small scale against a
// real `throng serve` in both modes. A handoff must go unnoticed: nothing
// dropped, lost, duplicated or reordered, and every message owed delivered.
// A drain must drop every connection, which redial to the restarted server;
// its history is new, so no rejoin recovers, and with a slow drain the
// members closed first miss what the others still send.
func TestBenchUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildThrong(t)
	const conns = 200
	for _, mode := range []string{bench.UpgradeHandoff, bench.UpgradeDrain} {
		t.Run(mode, func(t *testing.T) {
			args := []string{"serve", "--auth=off", "--http-addr", "127.0.0.1:0", "--rate", "-1", "--user-rate", "-1",
				"--drain-rate", "100"}
			p := startThrong(t, bin, cleanEnv(), append(args, "--ws-addr", "127.0.0.1:0")...)
			wsAddr, _ := p.servingAddrs(t)
			cfg := bench.Config{
				Scenario: bench.ScenarioUpgrade,
				Targets:  []bench.Target{{URL: "ws://" + wsAddr}},
				Conns:    conns,
				RoomSize: 10,
				RoomRate: 5,
				Loops:    2,
				Timeout:  time.Minute,
				Upgrade: bench.UpgradeOptions{Mode: mode, PID: p.cmd.Process.Pid,
					Warmup: 2 * time.Second, Settle: 2 * time.Second, SettleTimeout: 30 * time.Second},
			}
			if mode == bench.UpgradeDrain {
				// The same WebSocket address, free once the old process has exited.
				cfg.Upgrade.Restart = fmt.Sprintf("%s %s --ws-addr %s", bin, strings.Join(args, " "), wsAddr)
			}
			rep, err := bench.Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			r := rep.Results[0]
			u := r.Upgrade
			if u != nil && u.NewPID > 0 {
				t.Cleanup(func() { stopPID(t, u.NewPID) })
			}
			var b strings.Builder
			rep.WriteTable(&b)
			t.Logf("\n%s", b.String())
			if r.Error != "" || u == nil {
				t.Fatalf("run failed: %s", r.Error)
			}
			if u.NewPID == 0 || u.NewPID == u.PID {
				t.Errorf("new pid %d after %d", u.NewPID, u.PID)
			}
			if u.Conns != conns || u.Sent == 0 || u.Expected != u.Delivered+u.Lost || u.HandoffSeconds <= 0 ||
				u.OldPeakRSS == 0 || u.NewPeakRSS == 0 || u.Pause == nil || u.Baseline == nil {
				t.Errorf("incomplete report: %+v", u)
			}
			// The server left serving answers on the same address.
			c, err := net.Dial("tcp", wsAddr)
			if err != nil {
				t.Fatalf("nothing serves %s after the run: %v", wsAddr, err)
			}
			c.Close()
			switch mode {
			case bench.UpgradeHandoff:
				if !u.OK() || u.Delivered == 0 || u.Reconnected != 0 || r.Conns.Dropped != 0 {
					t.Errorf("the handoff was noticed: dropped %d, lost %d, duplicated %d, out of order %d, reconnected %d",
						u.Dropped, u.Lost, u.Duplicated, u.OutOfOrder, u.Reconnected)
				}
			case bench.UpgradeDrain:
				if u.Dropped != conns || u.Reconnected < conns || u.Rejoins == 0 || u.Recovered != 0 {
					t.Errorf("drain: dropped %d, reconnected %d, rejoins %d recovered %d; want %d dropped and back, none recovered",
						u.Dropped, u.Reconnected, u.Rejoins, u.Recovered, conns)
				}
				if u.Lost == 0 || u.OK() {
					t.Errorf("a 2s drain lost nothing: %+v", u)
				}
			}
		})
	}
}
