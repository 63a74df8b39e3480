//go:build !linux

package poller

// DefaultBackend is netpoll where our epoll loop does not exist.
const DefaultBackend = BackendNetpoll

// Backends lists the backends this platform has, the default first.
func Backends() []Backend { return []Backend{BackendNetpoll} }

// newEpoll refuses: the epoll backend (epoll_linux.go) is Linux only.
func newEpoll(*Poller) error { return ErrUnsupported }

// write2 calls the loop's backend by its concrete type, so that a and b do
// not escape (see backend_linux.go).
func (l *Loop) write2(c *Conn, a, b []byte) error {
	return l.be.(*npLoop).write2(c, a, b)
}
