package server

import (
	"hash/maphash"
	"net/netip"
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

const limitShards = 16

// ipLimiter limits handshakes per client IP.
type ipLimiter struct {
	rate   float64
	burst  int
	seed   maphash.Seed
	shards [limitShards]struct {
		mu sync.Mutex
		m  map[netip.Addr]*bucket // guarded by mu
	}
}

func newIPLimiter(rate float64, burst int) *ipLimiter {
	l := &ipLimiter{rate: rate, burst: burst, seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].m = make(map[netip.Addr]*bucket)
	}
	return l
}

// allow takes a handshake token for ip, or says how long to wait for one.
func (l *ipLimiter) allow(ip netip.Addr, now int64) (bool, time.Duration) {
	b16 := ip.As16()
	sh := &l.shards[maphash.Bytes(l.seed, b16[:])%limitShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.m[ip]
	if b == nil {
		b = new(bucket)
		sh.m[ip] = b
	}
	return b.take(now, l.rate, l.burst)
}

// prune forgets IPs whose buckets have refilled: they are the same as new ones.
func (l *ipLimiter) prune(now int64) {
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for ip, b := range sh.m {
			if b.full(now, l.rate, l.burst) {
				delete(sh.m, ip)
			}
		}
		sh.mu.Unlock()
	}
}

// userCounts is the server's own UserConns: it counts this node's open
// connections per user id.
type userCounts struct {
	seed   maphash.Seed
	shards [limitShards]struct {
		mu sync.Mutex
		m  map[string]int32 // guarded by mu
	}
}

func newUserCounts() *userCounts {
	u := &userCounts{seed: maphash.MakeSeed()}
	for i := range u.shards {
		u.shards[i].m = make(map[string]int32)
	}
	return u
}

func (u *userCounts) shard(user string) *struct {
	mu sync.Mutex
	m  map[string]int32
} {
	return &u.shards[maphash.String(u.seed, user)%limitShards]
}

// Acquire implements UserConns.
func (u *userCounts) Acquire(user string, max int) bool {
	sh := u.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if int(sh.m[user]) >= max {
		return false
	}
	sh.m[user]++
	return true
}

// Release implements UserConns.
func (u *userCounts) Release(user string) {
	sh := u.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if n := sh.m[user] - 1; n > 0 {
		sh.m[user] = n
	} else {
		delete(sh.m, user)
	}
}
