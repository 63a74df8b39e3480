package server

import "github.com/gobwas/ws"

// Echo is the /echo endpoint: every message comes back exactly, text as text and
// binary as binary. Conformance suites and benchmarks use it.
type Echo struct{}

// OnOpen implements Handler.
func (Echo) OnOpen(*Conn) {}

// OnMessage implements Handler.
func (Echo) OnMessage(c *Conn, op ws.OpCode, data []byte) { c.WriteMessage(op, data) }

// OnClose implements Handler.
func (Echo) OnClose(*Conn, ws.StatusCode, string) {}

// OnError implements Handler.
func (Echo) OnError(*Conn, error) {}
