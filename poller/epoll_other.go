//go:build !linux

package poller

import (
	"net"
	"net/netip"
)

// The epoll backend exists only on Linux; elsewhere these keep the dispatch in
// poller.go compiling and New refuses BackendEpoll.

func newEpoll(Handler, Options) (*Poller, error) { return nil, ErrUnsupported }

func (p *Poller) listenEpoll(string) (net.Addr, error)            { return nil, ErrUnsupported }
func (p *Poller) stopAcceptingEpoll()                             {}
func (p *Poller) dialEpoll(netip.AddrPort, netip.Addr, any) error { return ErrUnsupported }
func (p *Poller) closeEpoll() error                               { return ErrUnsupported }
func (l *Loop) wakeEpoll()                                        {}
func (c *Conn) write2Epoll([]byte, []byte) error                  { return ErrUnsupported }
func (c *Conn) writeFrameEpoll(*Frame) error                      { return ErrUnsupported }
func (c *Conn) closeWriteEpoll()                                  {}
func (l *Loop) closeConnEpoll(*Conn, error)                       {}

// uncork is the epoll backend's; netpoll never corks.
func (l *Loop) uncork(*Conn) {}
