// Package echo is the /echo endpoint: every message comes back exactly, text as
// text and binary as binary. Conformance suites (Autobahn|Testsuite) and the
// bench's echo scenario use it; it is mounted only when asked for
// (--endpoints).
package echo

import (
	"github.com/gobwas/ws"

	"github.com/throng-ws/throng/server"
)

// Handler echoes. A connection that sends faster than RateLimit allows is
// closed with 1008 (server.CloseRateLimited): there is no message in which to
// tell it, and a silent drop would look like loss.
type Handler struct {
	// RateLimit bounds each connection's inbound messages. Its zero value is
	// the server's defaults (server.DefaultRate); a negative Rate, no limit.
	RateLimit server.RateLimit
}

// OnOpen implements server.Handler.
func (*Handler) OnOpen(*server.Conn) {}

// OnMessage implements server.Handler.
func (h *Handler) OnMessage(c *server.Conn, op ws.OpCode, data []byte) {
	if h.RateLimit.Rate >= 0 {
		// The connection's standing is made at its first message, so an idle
		// connection costs nothing here.
		st, ok := c.Data().(*server.RateState)
		if !ok {
			st = new(server.RateState)
			c.SetData(st)
		}
		if !h.RateLimit.Admit(c, st) {
			return
		}
	}
	c.WriteMessage(op, data)
}

// OnClose implements server.Handler.
func (*Handler) OnClose(*server.Conn, ws.StatusCode, string) {}

// OnError implements server.Handler.
func (*Handler) OnError(*server.Conn, error) {}
