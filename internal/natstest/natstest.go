// Package natstest runs an embedded nats-server for tests: the broker of
// package cluster's tests, the bench agents' and the throng binary's cluster
// tests.
package natstest

import (
	"net"
	"strconv"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// Start runs a nats-server on 127.0.0.1 until the test ends, on port (0: a
// random one), with JetStream storing in a temporary directory if jetstream
// is set, as `nats-server -js`. It returns the server and its URL. The
// server may be shut down sooner; shutting it down twice is harmless.
func Start(t testing.TB, port int, jetstream bool) (*natsserver.Server, string) {
	t.Helper()
	if port == 0 {
		port = natsserver.RANDOM_PORT
	}
	o := &natsserver.Options{Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true}
	if jetstream {
		o.JetStream, o.StoreDir = true, t.TempDir()
	}
	s, err := natsserver.NewServer(o)
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s, "nats://127.0.0.1:" + strconv.Itoa(s.Addr().(*net.TCPAddr).Port)
}
