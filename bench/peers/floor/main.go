// Command floor is the bench's reference floor (package bench/floor): /echo
// and /shootout on --addr, served by bare epoll_wait/read/write loops with no
// WebSocket work beyond frame boundaries and unmasking. Measure it next to
// throng and the peers to see what the I/O alone costs.
package main

import (
	"context"
	"flag"
	"log"
	"os/signal"
	"syscall"

	"github.com/throng-ws/throng/bench/floor"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8092", "listen address (IPv4)")
	loops := flag.Int("loops", 0, "event loops, each on a locked OS thread (0: GOMAXPROCS)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	s, err := floor.New(floor.Options{Addr: *addr, Loops: *loops})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("floor on %s", s.Addr())
	<-ctx.Done()
	s.Close()
	st := s.Stats()
	log.Printf("floor: %d accepted, %d frames, %d replies, %d broadcasts, %d deliveries, %d reads, %d writes, %d refused",
		st.Accepted, st.Frames, st.Replies, st.Broadcasts, st.Deliveries, st.Reads, st.Writes, st.Refused)
}
