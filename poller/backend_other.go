//go:build !linux

package poller

// DefaultBackend is netpoll where our epoll loop does not exist.
const DefaultBackend = BackendNetpoll

// Backends lists the backends this platform has, the default first.
func Backends() []Backend { return []Backend{BackendNetpoll} }
