//go:build !linux

package floor

// Server is a floor server; where there is no epoll, New refuses to make one.
type Server struct{}

// New returns ErrUnsupported: the floor runs on epoll.
func New(Options) (*Server, error) { return nil, ErrUnsupported }

// Addr is empty.
func (s *Server) Addr() string { return "" }

// Close does nothing.
func (s *Server) Close() error { return nil }

// Stats are zero.
func (s *Server) Stats() Stats { return Stats{} }
