package server

import (
	"fmt"
	"testing"
)

// BenchmarkKeyedLimitAllow is one message's per-user rate check against a
// table of 10,000 users that spoke.
func BenchmarkKeyedLimitAllow(b *testing.B) {
	l := NewKeyedLimit[string](1e9, 1<<30)
	users := make([]string, 10000)
	for i := range users {
		users[i] = fmt.Sprint("bench-", i)
		l.Allow(users[i], 1)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		l.Allow(users[i%len(users)], 2)
		i++
	}
}

// BenchmarkUserCounts is one connection's count and release against 10,000
// users with one connection each.
func BenchmarkUserCounts(b *testing.B) {
	u := NewUserCounts()
	users := make([]string, 10000)
	for i := range users {
		users[i] = fmt.Sprint("bench-", i)
		u.Acquire(users[i], 16)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		user := users[i%len(users)]
		u.Acquire(user, 16)
		u.Release(user)
		i++
	}
}
