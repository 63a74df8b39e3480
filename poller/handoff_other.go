//go:build !linux

package poller

import (
	"net"

	"golang.org/x/sys/unix"
)

// Off Linux there is no epoll backend, so no handoff (handoff.go).

// Freeze refuses: see ErrHandoffUnsupported.
func (c *Conn) Freeze() error { return ErrHandoffUnsupported }

// Thaw refuses: see ErrHandoffUnsupported.
func (c *Conn) Thaw() error { return ErrHandoffUnsupported }

// Export refuses: see ErrHandoffUnsupported.
func (c *Conn) Export() (int, HandoffState, error) { return -1, HandoffState{}, ErrHandoffUnsupported }

// Detach refuses: see ErrHandoffUnsupported.
func (c *Conn) Detach() error { return ErrHandoffUnsupported }

// Adopt refuses: see ErrHandoffUnsupported. It closes fd.
func (l *Loop) Adopt(fd int, _ HandoffState, _ any) (*Conn, error) {
	closeFD(fd)
	return nil, ErrHandoffUnsupported
}

// PauseAccept refuses: see ErrHandoffUnsupported.
func (p *Poller) PauseAccept() error { return ErrHandoffUnsupported }

// ResumeAccept refuses: see ErrHandoffUnsupported.
func (p *Poller) ResumeAccept() error { return ErrHandoffUnsupported }

// ListenerFD refuses: see ErrHandoffUnsupported.
func (p *Poller) ListenerFD() (int, error) { return -1, ErrHandoffUnsupported }

// ListenFD refuses: see ErrHandoffUnsupported. It closes fd.
func (p *Poller) ListenFD(fd int) (net.Addr, error) {
	closeFD(fd)
	return nil, ErrHandoffUnsupported
}

func closeFD(fd int) { unix.Close(fd) }
