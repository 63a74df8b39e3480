package client

import (
	"errors"
	"math/rand/v2"
	"net/http"
	"time"
)

// Backoff spaces reconnect attempts: exponential growth with full jitter, so
// that clients dropped together (a server restart) do not all come back in
// the same instant. Attempt n waits a uniformly random time in
// [0, min(Max, Base·2^(n-1))].
type Backoff struct {
	// Base is the first attempt's ceiling. If zero, DefaultBaseDelay is used.
	Base time.Duration
	// Max caps the ceiling. If zero, DefaultMaxDelay is used.
	Max time.Duration
	// Rand draws the jitter: a draw of 0 waits nothing, the largest uint64
	// waits the whole ceiling. If nil, math/rand/v2's goroutine-safe global
	// source is used; tests inject a seeded or fixed one. Sources such as
	// rand.PCG are not safe for concurrent use: give each Backoff its own.
	Rand rand.Source
}

// Defaults for Backoff and Options.
const (
	DefaultBaseDelay = 500 * time.Millisecond
	DefaultMaxDelay  = 30 * time.Second
)

// Ceiling is the longest wait before attempt n (counted from 1).
func (b Backoff) Ceiling(attempt int) time.Duration {
	base, limit := b.Base, b.Max
	if base <= 0 {
		base = DefaultBaseDelay
	}
	if limit <= 0 {
		limit = DefaultMaxDelay
	}
	if base >= limit {
		return limit
	}
	d := base
	for i := 1; i < attempt; i++ {
		// Doubling past limit stops the loop before d can overflow.
		if d >= limit/2 {
			return limit
		}
		d *= 2
	}
	return d
}

// Delay is the wait before attempt n: uniform in [0, Ceiling(n)].
func (b Backoff) Delay(attempt int) time.Duration {
	var u uint64
	if b.Rand != nil {
		u = b.Rand.Uint64()
	} else {
		u = rand.Uint64()
	}
	// The top 53 bits as a fraction of their maximum: 0 and 1 both reachable.
	frac := float64(u>>11) / float64(1<<53-1)
	return time.Duration(frac * float64(b.Ceiling(attempt)))
}

// Retryable reports whether a connection closed by the server with code should
// be dialed again. Going away (1001), a dropped TCP connection (1006, or 1005
// with no code), a server error (1011) and the restart and overload codes
// (1012–1014) are worth another try. A policy violation (1008: a bad or expired
// token, abuse) is not, nor is a normal close the server chose (1000), nor a
// complaint about what the client sent (1002, 1003, 1007, 1009, 1010): the
// same client would be refused again.
func Retryable(code int) bool {
	switch code {
	case 1001, 1005, 1006, 1011, 1012, 1013, 1014:
		return true
	}
	return false
}

// HandshakeError is a refused upgrade: the server answered with a status other
// than 101. A 401 (bad or missing token) matches ErrUnauthorized.
type HandshakeError struct {
	StatusCode int
}

func (e *HandshakeError) Error() string {
	return "client: handshake refused: " + http.StatusText(e.StatusCode)
}

// Is makes errors.Is(err, ErrUnauthorized) true for a 401.
func (e *HandshakeError) Is(target error) bool {
	return target == ErrUnauthorized && e.StatusCode == http.StatusUnauthorized
}

// retryableHandshake reports whether a refused upgrade may succeed later: the
// server is draining (503) or throttling (429), or something between is
// failing (5xx). Other refusals (a bad path, a forbidden origin) will recur.
func retryableHandshake(err error) bool {
	var he *HandshakeError
	if !errors.As(err, &he) {
		return true // no answer at all: the server is down or unreachable
	}
	return he.StatusCode == http.StatusTooManyRequests || he.StatusCode >= 500
}
