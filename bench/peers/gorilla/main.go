// Command gorilla is the gorilla/websocket reference peer: /echo and
// /shootout on --addr, a goroutine per connection.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/throng-ws/throng/bench/peers/gorillapeer"
)

func main() {
	addr := flag.String("addr", ":8090", "listen address")
	compression := flag.Bool("compression", false, "accept permessage-deflate")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	peer := gorillapeer.New()
	if *compression {
		peer.EnableCompression()
	}
	srv := &http.Server{Addr: *addr, Handler: peer, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		peer.Close()
	}()
	log.Printf("gorilla peer on %s", *addr)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
