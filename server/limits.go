package server

import (
	"cmp"
	"hash/maphash"
	"maps"
	"sync"
	"time"
)

// bucket is a token bucket on a millisecond clock. It is 16 bytes, against about
// ninety for golang.org/x/time/rate's Limiter with its mutex: per-connection
// buckets are only touched by the connection's loop, and a server holds
// hundreds of thousands of them.
type bucket struct {
	tokens float64
	last   int64 // unix ms of the last refill; 0 before first use
}

// take spends one token if there is one. Otherwise it reports how long until
// there will be.
func (b *bucket) take(now int64, rate float64, burst int) (bool, time.Duration) {
	if b.last == 0 {
		b.tokens, b.last = float64(burst), now
	}
	if dt := now - b.last; dt > 0 {
		b.tokens = min(float64(burst), b.tokens+float64(dt)*rate/1000)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) / rate * float64(time.Second))
	return false, wait
}

// full reports whether the bucket would be full at now, so it can be forgotten.
func (b *bucket) full(now int64, rate float64, burst int) bool {
	return b.tokens+float64(now-b.last)*rate/1000 >= float64(burst)
}

// RateLimit is the inbound message limit an application applies to each
// connection, as the seed's server does: a token bucket, and a client that
// breaks it is banned for a while; what it sends during the ban is dropped, and
// if it keeps sending it is closed. The zero value is the documented defaults.
type RateLimit struct {
	// Rate is the messages per second a connection may send on average. If
	// zero, DefaultRate is used; if negative, messages are not limited.
	Rate float64
	// Burst is how many messages may arrive at once. If zero, DefaultBurst is
	// used.
	Burst int
	// Ban is how long a connection that broke the rate is ignored. If zero,
	// DefaultBan is used.
	Ban time.Duration
	// BanCloseAfter closes a banned connection (1008, CloseRateLimited) that
	// sends more than this many messages during its ban. If zero,
	// DefaultBanCloseAfter is used.
	BanCloseAfter int
}

// Defaults for RateLimit.
const (
	DefaultRate          = 10
	DefaultBurst         = 20
	DefaultBan           = 5 * time.Minute
	DefaultBanCloseAfter = 100
)

// RateState is one connection's standing against a RateLimit. Its zero value
// is a full bucket; it is 16 bytes, and only the connection's loop touches it.
//
// A ban reuses the bucket's two fields, as a banned connection's bucket is
// not consulted and starts full when the ban is served: b.last is the ban's
// end (unix ms) and b.tokens is −1 − the messages received during it. Tokens
// are never negative otherwise.
type RateState struct {
	b bucket
}

func (st *RateState) isBanned() bool { return st.b.tokens < 0 }

// ban returns the ban's end (unix ms) and the messages received during it,
// or 0, 0 when st is not banned.
func (st *RateState) ban() (until int64, n uint32) {
	if !st.isBanned() {
		return 0, 0
	}
	return st.b.last, uint32(-1 - st.b.tokens)
}

func (st *RateState) setBan(until int64, n uint32) {
	st.b.last, st.b.tokens = until, -1-float64(n)
}

// Verdict is what RateLimit.Allow decided about one message.
type Verdict uint8

const (
	// Allowed: handle the message.
	Allowed Verdict = iota
	// BanStarted: the message broke the rate and a ban begins. Drop it, and
	// tell the client once.
	BanStarted
	// Banned: the connection is serving a ban. Drop the message silently.
	Banned
	// BanExceeded: the connection kept sending through its ban. Close it
	// (Conn.Close(CloseRateLimited)).
	BanExceeded
)

// Allow decides one message at now (unix ms).
func (l *RateLimit) Allow(st *RateState, now int64) Verdict {
	rate := l.Rate
	if rate < 0 {
		return Allowed
	}
	if rate == 0 {
		rate = DefaultRate
	}
	if until, n := st.ban(); until != 0 {
		if now < until {
			n++
			st.setBan(until, n)
			if int(n) > cmp.Or(l.BanCloseAfter, DefaultBanCloseAfter) {
				return BanExceeded
			}
			return Banned
		}
		*st = RateState{} // the ban is served: start with a full bucket
	}
	if ok, _ := st.b.take(now, rate, cmp.Or(l.Burst, DefaultBurst)); ok {
		return Allowed
	}
	st.setBan(now+cmp.Or(l.Ban, DefaultBan).Milliseconds(), 0)
	return BanStarted
}

// StartBan starts a ban on st at now, as if its connection had broken the
// rate: for a limit that spans connections (a user's), which the one
// connection then serves like its own.
func (l *RateLimit) StartBan(st *RateState, now int64) {
	st.setBan(now+cmp.Or(l.Ban, DefaultBan).Milliseconds(), 0)
}

// Admit applies l to one message of c, for an endpoint that has no message of
// its own to refuse it in: the first message over the limit closes c with
// 1008 (CloseRateLimited), as a silent drop would look like loss.
func (l *RateLimit) Admit(c *Conn, st *RateState) bool {
	if l.Allow(st, c.Now().UnixMilli()) == Allowed {
		return true
	}
	c.Close(CloseRateLimited)
	return false
}

const limitShards = 16

// limitShrinkMin is the peak below which a shard's map is kept as it is:
// remaking a small map gives back too little to be worth it.
const limitShrinkMin = 64

// KeyedLimit is a token bucket per key (a client IP, a user id), in shards so
// that loops seldom wait on each other. A key whose bucket has refilled is
// the same as a new one, so Prune forgets it: the table holds only the keys
// that sent recently.
type KeyedLimit[K comparable] struct {
	rate   float64
	burst  int
	seed   maphash.Seed
	shards [limitShards]struct {
		mu sync.Mutex
		// m holds the buckets by value: one bucket per key that spoke,
		// pruned within seconds, would otherwise be a 16-byte object each,
		// leaving holes among the long-lived 16-byte objects (user ids)
		// when it goes.
		m map[K]bucket // guarded by mu
		// peak is the most keys m held since it was made: a Go map never
		// gives back the room of deleted keys, so Prune makes a new one
		// when most of it is empty. Guarded by mu.
		peak int
	}
}

// NewKeyedLimit returns a limit of rate per second with burst, per key.
func NewKeyedLimit[K comparable](rate float64, burst int) *KeyedLimit[K] {
	l := &KeyedLimit[K]{rate: rate, burst: burst, seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].m = make(map[K]bucket)
	}
	return l
}

// Allow takes a token for key at now (unix ms), or says how long to wait for
// one.
func (l *KeyedLimit[K]) Allow(key K, now int64) (bool, time.Duration) {
	sh := &l.shards[maphash.Comparable(l.seed, key)%limitShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.m[key]
	ok, wait := b.take(now, l.rate, l.burst)
	sh.m[key] = b
	sh.peak = max(sh.peak, len(sh.m))
	return ok, wait
}

// Prune forgets the keys whose buckets have refilled by now.
func (l *KeyedLimit[K]) Prune(now int64) {
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for k, b := range sh.m {
			if b.full(now, l.rate, l.burst) {
				delete(sh.m, k)
			}
		}
		if len(sh.m) <= sh.peak/4 && sh.peak >= limitShrinkMin {
			// Not maps.Clone: a clone keeps the old map's capacity.
			m := make(map[K]bucket, len(sh.m))
			maps.Copy(m, sh.m)
			sh.m, sh.peak = m, len(m)
		}
		sh.mu.Unlock()
	}
}

// Len is the number of keys held.
func (l *KeyedLimit[K]) Len() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// UserConns counts open connections per user id against
// Options.MaxConnsPerUser. The server's own count holds the limit on one node;
// package cluster provides one that adds the other nodes' connections. Both
// methods are called on loop goroutines and must not block.
type UserConns interface {
	// Acquire counts one more connection for user unless the user already has
	// max, and reports whether it did.
	Acquire(user string, max int) bool
	// Release gives back a connection that Acquire counted.
	Release(user string)
}
