package config

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/throng-ws/throng/cluster"
)

func TestClusterSettings(t *testing.T) {
	clearEnv(t)
	c, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.NATS != "" || c.NodeID != "" || c.ClusterHeartbeat != cluster.DefaultHeartbeat || c.ClusterDeadAfter != cluster.DefaultDeadAfter {
		t.Fatalf("cluster defaults: %q %q %v %v", c.NATS, c.NodeID, c.ClusterHeartbeat, c.ClusterDeadAfter)
	}
	if _, ok := c.ClusterOptions(nil); ok {
		t.Fatal("cluster mode without --nats")
	}

	// Flag, environment and file, each on its own.
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"flags", []string{"--nats", "nats://127.0.0.1:4222, nats://127.0.0.1:4223", "--node-id", "n-1", "--cluster-heartbeat", "250ms", "--cluster-dead-after", "3s"}, nil},
		{"env", nil, map[string]string{"THRONG_NATS": "nats://127.0.0.1:4222,nats://127.0.0.1:4223", "THRONG_NODE_ID": "n-1",
			"THRONG_CLUSTER_HEARTBEAT": "250ms", "THRONG_CLUSTER_DEAD_AFTER": "3s"}},
		{"toml", []string{"--config", writeFile(t, "c.toml", "nats = \"nats://127.0.0.1:4222,nats://127.0.0.1:4223\"\nnode-id = \"n-1\"\ncluster-heartbeat = \"250ms\"\ncluster-dead-after = \"3s\"\n")}, nil},
		{"yaml", []string{"--config", writeFile(t, "c.yaml", "nats: nats://127.0.0.1:4222,nats://127.0.0.1:4223\nnode-id: n-1\ncluster-heartbeat: 250ms\ncluster-dead-after: 3s\n")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := parse(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			c.Dev = true
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			o, ok := c.ClusterOptions(nil)
			if !ok || !slices.Equal(o.URLs, []string{"nats://127.0.0.1:4222", "nats://127.0.0.1:4223"}) ||
				o.NodeID != "n-1" || o.Heartbeat != 250*time.Millisecond || o.DeadAfter != 3*time.Second {
				t.Fatalf("ClusterOptions = %+v, %v", o, ok)
			}
			if _, err := cluster.New(o); err != nil {
				t.Fatalf("cluster.New refuses what Validate passed: %v", err)
			}
		})
	}
}

func TestClusterValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // in the error; "" for none
	}{
		{"single node", nil, ""},
		{"bad url", []string{"--nats", "nats://user:hunter2@[::1"}, "--nats"},
		{"only commas", []string{"--nats", " , "}, "names no server"},
		{"node id", []string{"--nats", "nats://x:4222", "--node-id", "a.b"}, "--node-id"},
		{"heartbeat", []string{"--cluster-heartbeat", "0s"}, "--cluster-heartbeat"},
		{"dead-after", []string{"--cluster-heartbeat", "1s", "--cluster-dead-after", "1500ms"}, "--cluster-dead-after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			c, err := parse(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			c.Dev = true
			err = c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate: %v, want an error naming %s", err, tc.want)
			case err != nil && strings.Contains(err.Error(), "hunter2"):
				t.Fatalf("the error shows the password: %v", err)
			}
		})
	}
}
