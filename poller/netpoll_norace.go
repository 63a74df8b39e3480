//go:build !race && (linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package poller

// See netpoll_race.go: only netpoll's race build needs descriptor numbers kept
// from quick reuse.

func noteClosedFD(int) {}

func freshFD(fd int) int { return fd }
