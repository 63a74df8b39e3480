package client

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// fixedSource returns the same value forever, to pin a draw to the bottom or
// the top of its range.
type fixedSource uint64

func (s fixedSource) Uint64() uint64 { return uint64(s) }

func TestBackoffCeiling(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := b.Ceiling(i + 1); got != w*time.Millisecond {
			t.Errorf("Ceiling(%d) = %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	// Far past the cap nothing overflows.
	if got := b.Ceiling(10_000); got != time.Second {
		t.Errorf("Ceiling(10000) = %v", got)
	}
	huge := Backoff{Base: time.Duration(math.MaxInt64 / 3), Max: time.Duration(math.MaxInt64)}
	if got := huge.Ceiling(64); got <= 0 {
		t.Errorf("huge Ceiling(64) = %v", got)
	}
	if got := (Backoff{}).Ceiling(1); got != DefaultBaseDelay {
		t.Errorf("zero Backoff Ceiling(1) = %v, want %v", got, DefaultBaseDelay)
	}
	if got := (Backoff{}).Ceiling(100); got != DefaultMaxDelay {
		t.Errorf("zero Backoff Ceiling(100) = %v, want %v", got, DefaultMaxDelay)
	}
	if got := (Backoff{Base: time.Minute, Max: time.Second}).Ceiling(1); got != time.Second {
		t.Errorf("Base over Max: Ceiling(1) = %v", got)
	}
}

// TestBackoffJitterBounds pins the jitter: the lowest draw waits nothing, the
// highest waits exactly the ceiling, and a seeded run stays inside [0, ceiling]
// and spreads over it (full jitter, not a fixed fraction).
func TestBackoffJitterBounds(t *testing.T) {
	base, limit := 10*time.Millisecond, 300*time.Millisecond
	low := Backoff{Base: base, Max: limit, Rand: fixedSource(0)}
	high := Backoff{Base: base, Max: limit, Rand: fixedSource(math.MaxUint64)}
	for attempt := 1; attempt <= 8; attempt++ {
		if got := low.Delay(attempt); got != 0 {
			t.Errorf("lowest draw, attempt %d: %v, want 0", attempt, got)
		}
		if got, want := high.Delay(attempt), low.Ceiling(attempt); got != want {
			t.Errorf("highest draw, attempt %d: %v, want the ceiling %v", attempt, got, want)
		}
	}

	seeded := Backoff{Base: base, Max: limit, Rand: rand.NewPCG(1, 2)}
	for attempt := 1; attempt <= 8; attempt++ {
		t.Run(fmt.Sprint("attempt=", attempt), func(t *testing.T) {
			ceil := seeded.Ceiling(attempt)
			const n = 2000
			var sum time.Duration
			lo, hi := ceil, time.Duration(0)
			for range n {
				d := seeded.Delay(attempt)
				if d < 0 || d > ceil {
					t.Fatalf("delay %v outside [0, %v]", d, ceil)
				}
				sum += d
				lo, hi = min(lo, d), max(hi, d)
			}
			mean := sum / n
			if mean < ceil*4/10 || mean > ceil*6/10 {
				t.Errorf("mean %v, want about %v", mean, ceil/2)
			}
			if lo > ceil/20 || hi < ceil*19/20 {
				t.Errorf("draws span [%v, %v], want most of [0, %v]", lo, hi, ceil)
			}
		})
	}

	// The same seed gives the same schedule.
	a := Backoff{Base: base, Max: limit, Rand: rand.NewPCG(7, 7)}
	b := Backoff{Base: base, Max: limit, Rand: rand.NewPCG(7, 7)}
	for attempt := 1; attempt <= 20; attempt++ {
		if x, y := a.Delay(attempt), b.Delay(attempt); x != y {
			t.Fatalf("attempt %d: %v != %v with the same seed", attempt, x, y)
		}
	}
	// Without a Rand the global source is used, within the same bounds.
	for range 100 {
		if d := (Backoff{Base: base, Max: limit}).Delay(3); d < 0 || d > 40*time.Millisecond {
			t.Fatalf("default source delay %v outside [0, 40ms]", d)
		}
	}
}

func TestRetryable(t *testing.T) {
	cases := []struct {
		code int
		want bool
	}{
		{1000, false}, // the server closed on purpose
		{1001, true},  // going away: shutdown, idle
		{1002, false}, // protocol error
		{1003, false}, // unsupported data
		{1005, true},  // no status
		{1006, true},  // dropped without a close frame
		{1007, false}, // invalid UTF-8
		{1008, false}, // policy: auth, token expired, abuse
		{1009, false}, // too big
		{1010, false},
		{1011, true}, // server error
		{1012, true}, // service restart
		{1013, true}, // try again later
		{1014, true},
		{1015, false},
		{4000, false},
	}
	for _, c := range cases {
		if got := Retryable(c.code); got != c.want {
			t.Errorf("Retryable(%d) = %v, want %v", c.code, got, c.want)
		}
	}
}

func TestRetryableHandshake(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{errors.New("connection refused"), true},
		{&HandshakeError{StatusCode: 503}, true},
		{&HandshakeError{StatusCode: 429}, true},
		{&HandshakeError{StatusCode: 502}, true},
		{&HandshakeError{StatusCode: 401}, false},
		{&HandshakeError{StatusCode: 403}, false},
		{&HandshakeError{StatusCode: 404}, false},
		{&HandshakeError{StatusCode: 426}, false},
	}
	for _, c := range cases {
		if got := retryableHandshake(c.err); got != c.want {
			t.Errorf("retryableHandshake(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if !errors.Is(&HandshakeError{StatusCode: 401}, ErrUnauthorized) || errors.Is(&HandshakeError{StatusCode: 403}, ErrUnauthorized) {
		t.Error("only a 401 is ErrUnauthorized")
	}
}
