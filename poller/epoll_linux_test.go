package poller

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestEpollCtlFailureClosesConn takes a connection's descriptor out of its
// loop's epoll set underneath the loop, then writes more than the socket
// takes, so arming EPOLLOUT fails with ENOENT. The connection must be closed
// with that error as its cause, not left queued with nothing to wake it.
func TestEpollCtlFailureClosesConn(t *testing.T) {
	if testBackend != BackendEpoll {
		t.Skip("epoll_ctl is the epoll backend's")
	}
	writeErr := make(chan error, 1)
	h := &lineEcho{}
	h.onData = func(c *Conn, data []byte) int {
		el := c.Loop().be.(*epollLoop)
		if err := unix.EpollCtl(el.epfd, unix.EPOLL_CTL_DEL, c.Fd(), nil); err != nil {
			t.Errorf("EPOLL_CTL_DEL: %v", err)
		}
		var err error
		chunk := make([]byte, 64<<10)
		for range 128 { // 8 MiB: far more than the socket buffers hold
			if err = c.Write(chunk); err != nil {
				break
			}
		}
		writeErr <- err
		return len(data)
	}
	_, addr := startPoller(t, h, Options{Loops: 1})
	c := dialRcvBuf(t, addr, 4<<10)
	c.Write([]byte("go"))
	// The write that queued reports ENOENT, or ErrClosed if the queueing
	// happened while flushing replies gathered earlier.
	if err := <-writeErr; !errors.Is(err, unix.ENOENT) && !errors.Is(err, ErrClosed) {
		t.Errorf("write after the failed arm: %v, want ENOENT or ErrClosed", err)
	}
	eventually(t, "OnClose", func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.closed) == 1 })
	h.mu.Lock()
	defer h.mu.Unlock()
	if !errors.Is(h.closed[0], unix.ENOENT) {
		t.Fatalf("close cause %v, want the epoll_ctl error (ENOENT)", h.closed[0])
	}
}
