//go:build !linux

package poller

// DefaultBackend is netpoll where our epoll loop does not exist.
const DefaultBackend = BackendNetpoll
