// Package nbiopeer is a reference server on lesismal/nbio: an epoll event loop
// like throng's, with nbhttp parsing HTTP and nbio's websocket package framing
// messages. throng is measured against it. It serves /echo (exact echo) and
// /shootout (the websocket-shootout protocol).
package nbiopeer

import (
	"context"
	"net/http"
	"sync"

	"github.com/lesismal/nbio/nbhttp"
	"github.com/lesismal/nbio/nbhttp/websocket"

	"github.com/throng-ws/throng/bench/peers/shootout"
)

// Server is the peer's engine and its /shootout clients.
type Server struct {
	engine *nbhttp.Engine
	echo   *websocket.Upgrader
	shoot  *websocket.Upgrader

	mu      sync.RWMutex
	clients map[*websocket.Conn]struct{} // guarded by mu
}

// New returns a peer that will listen on addr once started.
func New(addr string) *Server {
	s := &Server{clients: make(map[*websocket.Conn]struct{})}
	mux := http.NewServeMux()
	s.engine = nbhttp.NewEngine(nbhttp.Config{
		Network: "tcp",
		Addrs:   []string{addr},
		Handler: mux,
	})

	s.echo = websocket.NewUpgrader()
	s.echo.Engine = s.engine
	s.echo.CheckOrigin = func(*http.Request) bool { return true }
	s.echo.OnMessage(func(c *websocket.Conn, mt websocket.MessageType, data []byte) {
		c.WriteMessage(mt, data)
	})

	s.shoot = websocket.NewUpgrader()
	s.shoot.Engine = s.engine
	s.shoot.CheckOrigin = func(*http.Request) bool { return true }
	s.shoot.OnOpen(func(c *websocket.Conn) {
		s.mu.Lock()
		s.clients[c] = struct{}{}
		s.mu.Unlock()
	})
	s.shoot.OnClose(func(c *websocket.Conn, _ error) {
		s.mu.Lock()
		delete(s.clients, c)
		s.mu.Unlock()
	})
	s.shoot.OnMessage(s.onShootout)

	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) { s.echo.Upgrade(w, r, nil) })
	mux.HandleFunc("/shootout", func(w http.ResponseWriter, r *http.Request) { s.shoot.Upgrade(w, r, nil) })
	return s
}

// EnableCompression has the peer accept permessage-deflate, as nbio does it:
// no context takeover, and each message compressed per recipient at nbio's
// default level. Call it before Start.
func (s *Server) EnableCompression() {
	s.echo.EnableCompression(true)
	s.shoot.EnableCompression(true)
}

// Start listens and starts the engine's loops.
func (s *Server) Start() error { return s.engine.Start() }

// Shutdown stops the engine, closing every connection.
func (s *Server) Shutdown(ctx context.Context) error { return s.engine.Shutdown(ctx) }

func (s *Server) onShootout(c *websocket.Conn, mt websocket.MessageType, data []byte) {
	if mt == websocket.BinaryMessage {
		k, err := shootout.ParseBinary(data)
		if err != nil {
			c.Close()
			return
		}
		if k == shootout.Echo {
			c.WriteMessage(mt, data)
			return
		}
		s.fanOut(mt, data)
		c.WriteMessage(mt, shootout.ResultBinary(data))
		return
	}
	k, payload, err := shootout.ParseJSON(data)
	if err != nil {
		c.Close()
		return
	}
	if k == shootout.Echo {
		c.WriteMessage(mt, data)
		return
	}
	n := s.fanOut(mt, shootout.BroadcastJSON(payload))
	c.WriteMessage(mt, shootout.ResultJSON(payload, n))
}

// fanOut queues the frame on every /shootout client; nbio's writes do not block
// on a slow reader.
func (s *Server) fanOut(mt websocket.MessageType, frame []byte) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for c := range s.clients {
		if c.WriteMessage(mt, frame) == nil {
			n++
		}
	}
	return n
}
