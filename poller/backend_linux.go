package poller

// DefaultBackend is epoll on Linux: it holds an idle connection in a few
// hundred bytes, where netpoll keeps kilobytes of buffers.
const DefaultBackend = BackendEpoll

// Backends lists the backends this platform has, the default first.
func Backends() []Backend { return []Backend{BackendEpoll, BackendNetpoll} }
