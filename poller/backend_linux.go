package poller

// DefaultBackend is epoll on Linux: it holds an idle connection in a few
// hundred bytes, where netpoll keeps kilobytes of buffers.
const DefaultBackend = BackendEpoll

// Backends lists the backends this platform has, the default first.
func Backends() []Backend { return []Backend{BackendEpoll, BackendNetpoll} }

// write2 calls the loop's backend by its concrete type. Through the
// interface, a and b would escape to the heap: the compiler cannot see what an
// interface method keeps, so a caller's stack buffer (a frame header) would be
// allocated on every write, and the echo path must not allocate.
func (l *Loop) write2(c *Conn, a, b []byte) error {
	switch be := l.be.(type) {
	case *epollLoop:
		return be.write2(c, a, b)
	case *npLoop:
		return be.write2(c, a, b)
	}
	panic("poller: unknown backend")
}
