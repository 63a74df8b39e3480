package bench

import (
	"math/bits"
	"testing"

	"github.com/valyala/fastjson"
)

func TestSeqMask(t *testing.T) {
	for _, c := range []struct {
		w    int
		n    uint64
		ones int
	}{
		{0, 0, 0}, {0, 1, 1}, {0, 63, 63}, {0, 64, 63}, {0, 500, 63},
		{1, 63, 0}, {1, 64, 1}, {1, 127, 64}, {1, 128, 64}, {2, 130, 3},
	} {
		if got := bits.OnesCount64(seqMask(c.w, c.n)); got != c.ones {
			t.Errorf("seqMask(%d, %d) has %d bits, want %d", c.w, c.n, got, c.ones)
		}
	}
}

// TestUpTally records deliveries as the members' loops would and checks the
// tally finds each kind of fault once.
func TestUpTally(t *testing.T) {
	const size = 3
	a := &agent{cfg: agentConfig{RoomSize: size, Upgrade: true}}
	for i := range size {
		a.peers = append(a.peers, &peer{id: 30 + i, room: 10, up: newUpTrack(size)})
	}
	for _, p := range a.peers {
		p.usent.Store(4) // each member sent 1..4
	}
	msg := func(to, from int, seq uint32) {
		b := appendHex32(nil, 10)
		b = appendHex32(b, uint32(30+from))
		b = appendHex32(b, seq)
		b = appendHex(b, 0)
		a.upMessage(a.peers[to], fastjson.MustParse(`{}`), b)
	}
	for to := range size {
		for from := range size {
			for seq := uint32(1); seq <= 4; seq++ {
				switch {
				case to == 1 && from == 2 && seq == 3: // lost
				case from == 0 && seq == 4: // never delivered to anyone
				case to == 2 && from == 1 && seq == 2: // after 3: out of order
				default:
					msg(to, from, seq)
				}
				if to == 2 && from == 1 && seq == 3 {
					msg(to, from, 2)
				}
			}
		}
	}
	msg(0, 1, 1) // a duplicate
	r := a.upTally()
	want := upReport{Expected: 3 * 3 * 4, Delivered: 3*3*4 - 3 - 1, Undelivered: 1, Duplicated: 1, OutOfOrder: 1}
	if r.Expected != want.Expected || r.Delivered != want.Delivered || r.Undelivered != want.Undelivered ||
		r.Duplicated != want.Duplicated || r.OutOfOrder != want.OutOfOrder {
		t.Errorf("tally %+v, want %+v", *r, want)
	}
	if a.mismatch.Load() != 0 {
		t.Errorf("%d mismatches", a.mismatch.Load())
	}
}
