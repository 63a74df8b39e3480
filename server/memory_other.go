//go:build !linux

package server

// ReadRSS returns 0: the resident set size is read from /proc on Linux only.
func ReadRSS() uint64 { return 0 }
