package server

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/throng-ws/throng/poller"
)

// ErrBadCloseCode is returned by CloseUser for a code a server may not send,
// or a reason that does not fit a close frame.
var ErrBadCloseCode = errors.New("server: close code must be 1000, 1001, 1008, 1011 or 3000-4999, and the reason at most 123 bytes of UTF-8")

// ValidCloseCode reports whether an application may close connections with
// code and reason: 1000, 1001, 1008 and 1011 of RFC 6455's codes (the others
// describe the transport, not a decision), or 3000-4999 (registered and
// private codes), and a reason that fits a close frame.
func ValidCloseCode(code int, reason string) bool {
	switch {
	case len(reason) > ws.MaxControlFramePayloadSize-2 || !utf8.ValidString(reason):
		return false
	case code == 1000 || code == 1001 || code == 1008 || code == 1011:
		return true
	}
	return code >= 3000 && code <= 4999
}

// EachUserConn runs fn for every open connection of user (of every user if
// user is empty) on the goroutine of the loop that owns it, as Conn's methods
// require, and waits until every loop has done so or ctx ends. It returns how
// many calls fn reported true for. A loop that runs the job after ctx ended
// skips it. It costs one job per loop and a pass over
// each loop's connections, no index per user: it is for operators' actions,
// not for a hot path.
func (s *Server) EachUserConn(ctx context.Context, user string, fn func(*Conn) bool) (int, error) {
	var n atomic.Int64
	var wg sync.WaitGroup
	for _, l := range s.p.Loops() {
		wg.Add(1)
		job := poller.FuncJob(func() {
			defer wg.Done()
			if ctx.Err() != nil {
				return // given up on: act on nothing after the caller has been answered
			}
			l.Range(func(pc *poller.Conn) bool {
				if c := connOf(pc); c.state == stateOpen && (user == "" || c.user == user) && fn(c) {
					n.Add(1)
				}
				return true
			})
		})
		if !l.Post(job) {
			wg.Done()
		}
	}
	// A stopping loop still runs the jobs posted before it stopped, so this
	// never waits for one that will not come (room.Members waits the same way).
	wg.Wait()
	return int(n.Load()), ctx.Err()
}

// CloseUser starts the close handshake, with code and reason, on every open
// connection of user on this server, and returns how many it closed. The
// closes are counted under CloseOperator. code and reason must pass
// ValidCloseCode.
func (s *Server) CloseUser(ctx context.Context, user string, code int, reason string) (int, error) {
	if !ValidCloseCode(code, reason) {
		return 0, ErrBadCloseCode
	}
	if user == "" {
		return 0, errors.New("server: CloseUser needs a user id")
	}
	return s.EachUserConn(ctx, user, func(c *Conn) bool {
		c.closeWith(CloseOperator, ws.StatusCode(code), reason)
		return true
	})
}
