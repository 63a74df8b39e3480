//go:build race && (linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package poller

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// netpoll's race build (poll_default_*_race.go) finds the connection an event
// belongs to by its descriptor number instead of the pointer its normal build
// keeps in the event. An event the poller took from the kernel for a socket
// that is then closed can therefore land on the next socket given the same
// number: a hang-up meant for the old socket closes the new one before it has
// read a byte. Normal builds are not affected.
//
// So that the race detector can still run the server suite on netpoll, race
// builds keep a number that was closed within fdQuarantine from going to a new
// connection: the socket moves to another number and the old one is parked on
// /dev/null until the quarantine ends.

const fdQuarantine = time.Second

var fdq struct {
	mu     sync.Mutex
	closed map[int]time.Time // number → when netpoll was about to close it
	parked []parkedFD
	null   int
}

type parkedFD struct {
	fd    int
	until time.Time
}

// noteClosedFD records that netpoll is closing fd.
func noteClosedFD(fd int) {
	fdq.mu.Lock()
	defer fdq.mu.Unlock()
	if fdq.closed == nil {
		fdq.closed = make(map[int]time.Time)
	}
	fdq.closed[fd] = time.Now()
}

// freshFD returns a descriptor for the same socket as fd whose number was not
// closed within the quarantine, or fd itself if none can be had.
func freshFD(fd int) int {
	fdq.mu.Lock()
	defer fdq.mu.Unlock()
	now := time.Now()
	kept := fdq.parked[:0]
	for _, p := range fdq.parked {
		if now.Before(p.until) {
			kept = append(kept, p)
			continue
		}
		unix.Close(p.fd)
		delete(fdq.closed, p.fd)
	}
	fdq.parked = kept
	if len(fdq.closed) > 4096 {
		for n, t := range fdq.closed {
			if now.Sub(t) >= fdQuarantine {
				delete(fdq.closed, n)
			}
		}
	}
	if fdq.null == 0 {
		null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fd
		}
		fdq.null = null
	}
	for {
		t, ok := fdq.closed[fd]
		if !ok || now.Sub(t) >= fdQuarantine {
			delete(fdq.closed, fd)
			return fd
		}
		nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fd // out of descriptors: take the chance
		}
		// Swap the socket out of the old number for /dev/null.
		if err := unix.Dup2(fdq.null, fd); err != nil {
			unix.Close(nfd)
			return fd
		}
		fdq.parked = append(fdq.parked, parkedFD{fd: fd, until: t.Add(fdQuarantine)})
		fd = nfd
	}
}
