package poller

import (
	"errors"
	"testing"
)

// TestWriteFramesInOrder writes shared frames several at a time from a job
// to a peer that reads slowly, so that the first groups go out in one write
// each, one is cut by the full socket and the rest are queued; they must
// arrive whole and in order.
func TestWriteFramesInOrder(t *testing.T) {
	const size, count = 40 << 10, 240 // 9.6 MB: far past the socket buffers
	pc, c := slowReaderConn(t, Options{Loops: 1})
	pc.Loop().Post(FuncJob(func() {
		fs := numberedFrames(0, count, size)
		for i := 0; i < count; {
			k := min(1+i%4, count-i) // groups of 1 to 4
			if n, err := pc.WriteFrames(fs[i : i+k]); err != nil || n != k {
				t.Errorf("frames %d-%d: %d accepted, %v", i, i+k-1, n, err)
			}
			i += k
		}
		for _, f := range fs {
			f.Release() // the queue holds its own references
		}
		pc.CloseWrite()
	}))
	if n := readNumbered(t, c, size); n != count {
		t.Fatalf("read %d frames, want %d", n, count)
	}
}

// TestWriteFramesPendingLimit writes groups of frames from a job until
// MaxPending refuses one: the frame the socket took only part of is finished,
// and the peer reads exactly the frames WriteFrames reports accepted, whole
// (on epoll a group is refused whole).
func TestWriteFramesPendingLimit(t *testing.T) {
	const size = 40 << 10
	pc, c := slowReaderConn(t, Options{Loops: 1, MaxPending: 8 << 10})
	accepted := make(chan int, 1)
	pc.Loop().Post(FuncJob(func() {
		fs := numberedFrames(0, 999, size)
		n := 0
		for n < len(fs) {
			k, err := pc.WriteFrames(fs[n : n+3])
			n += k
			if err != nil {
				if !errors.Is(err, ErrPendingLimit) {
					t.Errorf("WriteFrames: %v, want ErrPendingLimit", err)
				}
				if testBackend == BackendEpoll && k != 0 {
					t.Errorf("epoll accepted %d of a refused group", k)
				}
				break
			}
			if k != 3 {
				t.Errorf("%d of 3 accepted without an error", k)
			}
		}
		for _, f := range fs {
			f.Release()
		}
		pc.CloseWrite()
		accepted <- n
	}))
	want := <-accepted
	if want == 999 {
		t.Fatal("MaxPending never refused a group")
	}
	if n := readNumbered(t, c, size); n != want {
		t.Fatalf("read %d frames, want the %d accepted", n, want)
	}
}
