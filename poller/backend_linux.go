package poller

// DefaultBackend is epoll on Linux: it holds an idle connection in a few
// hundred bytes, where netpoll keeps kilobytes of buffers.
const DefaultBackend = BackendEpoll
