package server

import (
	"bytes"
	"strconv"

	"golang.org/x/sys/unix"
)

var pageSize = uint64(unix.Getpagesize())

// ReadRSS returns the process's resident set size in bytes (VmRSS, the second
// field of /proc/self/statm), or 0 if it cannot be read. It costs an open, a
// read and a close: cheap enough for every scrape and every sample.
func ReadRSS() uint64 {
	fd, err := unix.Open("/proc/self/statm", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	var buf [256]byte
	n, err := unix.Read(fd, buf[:])
	if err != nil || n <= 0 {
		return 0
	}
	// size resident shared text lib data dt, in pages
	_, rest, ok := bytes.Cut(buf[:n], []byte{' '})
	if !ok {
		return 0
	}
	field, _, _ := bytes.Cut(rest, []byte{' '})
	pages, err := strconv.ParseUint(string(field), 10, 64)
	if err != nil {
		return 0
	}
	return pages * pageSize
}
