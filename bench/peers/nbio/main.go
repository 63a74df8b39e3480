// Command nbio is the lesismal/nbio reference peer: /echo and /shootout on
// --addr, on nbio's event loops.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/throng-ws/throng/bench/peers/nbiopeer"
)

func main() {
	addr := flag.String("addr", ":8091", "listen address")
	compression := flag.Bool("compression", false, "accept permessage-deflate")
	flag.Parse()
	s := nbiopeer.New(*addr)
	if *compression {
		s.EnableCompression()
	}
	if err := s.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "nbio peer:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "nbio peer on %s\n", *addr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Shutdown(sctx)
}
