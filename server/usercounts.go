package server

import (
	"hash/maphash"
	"math"
	"sync"
	"unsafe"
)

// UserCounts counts open connections per user id, in shards so that loops
// seldom wait on each other. It is the server's own UserConns, and package
// cluster's count of this node's connections.
//
// Every authenticated connection has an entry, so its size is per
// connection: each shard is an open-addressing table of 16-byte slots (the
// id's bytes, shared with the connection's own copy, its length and the
// count), about 28 B per user at the table's average load. A
// map[string]int32 spends a 24-byte slot and a control byte on each, about
// 46 B at 19,000 users.
type UserCounts struct {
	seed   maphash.Seed
	shards [limitShards]userShard
}

type userShard struct {
	mu sync.Mutex
	t  userTable // guarded by mu
}

// NewUserCounts returns an empty count.
func NewUserCounts() *UserCounts {
	return &UserCounts{seed: maphash.MakeSeed()}
}

func (u *UserCounts) shard(user string) (*userShard, uint64) {
	h := maphash.String(u.seed, user)
	return &u.shards[h%limitShards], h / limitShards
}

// Acquire implements UserConns.
func (u *UserCounts) Acquire(user string, max int) bool {
	sh, h := u.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.t.acquire(u.seed, h, user, max)
}

// Release implements UserConns.
func (u *UserCounts) Release(user string) {
	sh, h := u.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.t.release(u.seed, h, user)
}

// Count is user's open connections.
func (u *UserCounts) Count(user string) int {
	sh, h := u.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if i, ok := sh.t.find(h, user); ok {
		return int(sh.t.slots[i].n)
	}
	return 0
}

// Each calls fn for every user with a connection, a shard at a time, holding
// that shard's lock: fn must not call back into u.
func (u *UserCounts) Each(fn func(user string, n int)) {
	for i := range u.shards {
		sh := &u.shards[i]
		sh.mu.Lock()
		for j := range sh.t.slots {
			if s := &sh.t.slots[j]; s.n > 0 {
				fn(s.user(), int(s.n))
			}
		}
		sh.mu.Unlock()
	}
}

// userTable is a linear-probing hash table from user id to count. Its
// length is a power of two kept between an eighth and three quarters full,
// and a removal shifts the entries after it back (no tombstones), so a
// lookup ends at the first empty slot.
type userTable struct {
	slots []userSlot
	n     int // slots in use
}

// userSlot is one user: n is 0 for an empty slot, as a user with no
// connection has no entry. p keeps the id's bytes alive; they are the
// connection's own string's.
type userSlot struct {
	p   *byte
	len uint32
	n   uint32
}

func (s *userSlot) user() string { return unsafe.String(s.p, s.len) }

// userTableMin is the smallest table, in slots; a table never shrinks
// below it.
const userTableMin = 16

func (t *userTable) mask() uint64 { return uint64(len(t.slots) - 1) }

// find returns user's slot, or the empty slot where it would go.
func (t *userTable) find(h uint64, user string) (int, bool) {
	if len(t.slots) == 0 {
		return -1, false
	}
	m := t.mask()
	for i := h & m; ; i = (i + 1) & m {
		s := &t.slots[i]
		if s.n == 0 {
			return int(i), false
		}
		if int(s.len) == len(user) && s.user() == user {
			return int(i), true
		}
	}
}

func (t *userTable) acquire(seed maphash.Seed, h uint64, user string, limit int) bool {
	if limit <= 0 || uint64(len(user)) > math.MaxUint32 {
		return false
	}
	i, ok := t.find(h, user)
	if ok {
		s := &t.slots[i]
		if int(s.n) >= limit {
			return false
		}
		s.n++
		return true
	}
	if (t.n+1)*4 > len(t.slots)*3 {
		t.resize(seed, max(userTableMin, 2*len(t.slots)))
		i, _ = t.find(h, user)
	}
	t.slots[i] = userSlot{p: unsafe.StringData(user), len: uint32(len(user)), n: 1}
	t.n++
	return true
}

func (t *userTable) release(seed maphash.Seed, h uint64, user string) {
	i, ok := t.find(h, user)
	if !ok {
		return
	}
	if t.slots[i].n--; t.slots[i].n > 0 {
		return
	}
	// Shift back each following entry whose home is not between the gap and
	// itself, so that no lookup meets an empty slot before its entry.
	m := t.mask()
	gap := uint64(i)
	for j := (gap + 1) & m; t.slots[j].n > 0; j = (j + 1) & m {
		home := t.home(seed, &t.slots[j])
		if (j-home)&m < (j-gap)&m {
			continue // home lies after the gap: the entry is where it may be
		}
		t.slots[gap] = t.slots[j]
		gap = j
	}
	t.slots[gap] = userSlot{}
	t.n--
	if len(t.slots) > userTableMin && t.n*8 < len(t.slots) {
		t.resize(seed, len(t.slots)/2) // never holds on to a spike's room
	}
}

func (t *userTable) home(seed maphash.Seed, s *userSlot) uint64 {
	return maphash.String(seed, s.user()) / limitShards & t.mask()
}

func (t *userTable) resize(seed maphash.Seed, size int) {
	old := t.slots
	t.slots = make([]userSlot, size)
	m := t.mask()
	for k := range old {
		s := &old[k]
		if s.n == 0 {
			continue
		}
		i := maphash.String(seed, s.user()) / limitShards & m
		for t.slots[i].n > 0 {
			i = (i + 1) & m
		}
		t.slots[i] = *s
	}
}
