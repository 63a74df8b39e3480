// Package gorillapeer is a reference server on gorilla/websocket, written the
// way most Go servers are: a goroutine per connection, blocking reads, and a
// write lock per connection. throng is measured against it. It serves /echo
// (exact echo) and /shootout (the websocket-shootout protocol).
package gorillapeer

import (
	"net/http"
	"sync"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/bench/peers/shootout"
)

// Server is the peer's handler and the connections it holds.
type Server struct {
	up  websocket.Upgrader
	mux *http.ServeMux

	mu      sync.RWMutex
	clients map[*client]struct{} // guarded by mu: /shootout clients
	all     map[*client]struct{} // guarded by mu: every connection, for Close
	closed  bool                 // guarded by mu
	wg      sync.WaitGroup       // the connections' goroutines
}

type client struct {
	c   *websocket.Conn
	wmu sync.Mutex // gorilla allows one writer at a time
}

func (c *client) write(op int, b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.c.WriteMessage(op, b)
}

func (c *client) writePrepared(m *websocket.PreparedMessage) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.c.WritePreparedMessage(m)
}

// New returns a peer server.
func New() *Server {
	s := &Server{
		up:      websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }},
		mux:     http.NewServeMux(),
		clients: make(map[*client]struct{}),
		all:     make(map[*client]struct{}),
	}
	s.mux.HandleFunc("/echo", s.serveEcho)
	s.mux.HandleFunc("/shootout", s.serveShootout)
	return s
}

// EnableCompression has the peer accept permessage-deflate, as gorilla does it:
// no context takeover, BestSpeed, and a broadcast compressed once for all
// (its PreparedMessage keeps one compressed frame). Call it before serving.
func (s *Server) EnableCompression() { s.up.EnableCompression = true }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Close closes every upgraded connection, which the http.Server does not track,
// and waits for their goroutines.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.all {
		c.c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) upgrade(w http.ResponseWriter, r *http.Request, shootout bool) *client {
	conn, err := s.up.Upgrade(w, r, nil)
	if err != nil {
		return nil
	}
	c := &client{c: conn}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return nil
	}
	s.all[c] = struct{}{}
	if shootout {
		s.clients[c] = struct{}{}
	}
	s.wg.Add(1)
	s.mu.Unlock()
	return c
}

func (s *Server) drop(c *client) {
	s.mu.Lock()
	delete(s.all, c)
	delete(s.clients, c)
	s.mu.Unlock()
	c.c.Close()
	s.wg.Done()
}

func (s *Server) serveEcho(w http.ResponseWriter, r *http.Request) {
	c := s.upgrade(w, r, false)
	if c == nil {
		return
	}
	defer s.drop(c)
	for {
		op, msg, err := c.c.ReadMessage()
		if err != nil {
			return
		}
		if c.write(op, msg) != nil {
			return
		}
	}
}

func (s *Server) serveShootout(w http.ResponseWriter, r *http.Request) {
	c := s.upgrade(w, r, true)
	if c == nil {
		return
	}
	defer s.drop(c)
	for {
		op, msg, err := c.c.ReadMessage()
		if err != nil {
			return
		}
		if op == websocket.BinaryMessage {
			err = s.binary(c, msg)
		} else {
			err = s.json(c, msg)
		}
		if err != nil {
			return
		}
	}
}

func (s *Server) json(c *client, msg []byte) error {
	k, payload, err := shootout.ParseJSON(msg)
	if err != nil {
		return err
	}
	if k == shootout.Echo {
		return c.write(websocket.TextMessage, msg)
	}
	n, err := s.fanOut(websocket.TextMessage, shootout.BroadcastJSON(payload))
	if err != nil {
		return err
	}
	return c.write(websocket.TextMessage, shootout.ResultJSON(payload, n))
}

func (s *Server) binary(c *client, msg []byte) error {
	k, err := shootout.ParseBinary(msg)
	if err != nil {
		return err
	}
	if k == shootout.Echo {
		return c.write(websocket.BinaryMessage, msg)
	}
	if _, err := s.fanOut(websocket.BinaryMessage, msg); err != nil {
		return err
	}
	return c.write(websocket.BinaryMessage, shootout.ResultBinary(msg))
}

// fanOut writes one prepared frame to every /shootout client in turn, as the
// shootout's Go entries do; a slow client slows the broadcast, which is the
// cost this model pays. It returns how many clients it reached.
func (s *Server) fanOut(op int, frame []byte) (int, error) {
	pm, err := websocket.NewPreparedMessage(op, frame)
	if err != nil {
		return 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for c := range s.clients {
		if c.writePrepared(pm) == nil {
			n++
		}
	}
	return n, nil
}
