//go:build !linux

package handoff

import (
	"syscall"

	"golang.org/x/sys/unix"
)

func socketpair() ([2]int, error) {
	// No SOCK_CLOEXEC: hold the fork lock so no exec inherits them meanwhile.
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.CloseOnExec(fds[0])
		unix.CloseOnExec(fds[1])
	}
	return fds, err
}
