package history

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestHandoffExportImport moves a store in small chunks: every room keeps
// its epoch, next offset and messages with their times, the source is left
// as it was, and a truncated or forged chunk is refused, never guessed at.
func TestHandoffExportImport(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	src := New(Options{Size: 5, Now: clock})
	epochs := map[string]string{}
	for r := range 4 {
		id := fmt.Sprint("room", r)
		l := src.Lock(id)
		epochs[id] = l.Epoch()
		for k := range 3 + 2*r { // room3 has 9: its first 4 were evicted
			l.Append(fmt.Appendf(nil, `{"n":%d}`, k))
			now = now.Add(time.Second)
		}
		l.Unlock()
	}
	before := src.Stats()

	dst := New(Options{Size: 5, Now: clock})
	x := src.Exporter()
	chunks := 0
	for last := false; !last; {
		var b []byte
		b, last = x.Next(nil, 10)
		if err := dst.Import(b); err != nil {
			t.Fatal(err)
		}
		chunks++
	}
	if chunks != 4 {
		t.Errorf("%d chunks of about 10 bytes for 4 rooms, want one room each", chunks)
	}
	if src.Stats() != before {
		t.Errorf("export changed the source: %+v, was %+v", src.Stats(), before)
	}
	for id, epoch := range epochs {
		a, b := src.Lock(id), dst.Lock(id)
		if b.Epoch() != epoch || b.Next() != a.Next() {
			t.Errorf("%s: epoch %s next %d, want %s %d", id, b.Epoch(), b.Next(), epoch, a.Next())
		}
		am, _ := a.Page(0, 10)
		bm, _ := b.Page(0, 10)
		if fmt.Sprint(am) != fmt.Sprint(bm) {
			t.Errorf("%s: messages %q, want %q", id, bm, am)
		}
		// Recovery from an offset of the old process works on the new.
		if got, ok := b.Recover(a.Latest()-2, epoch, 10); !ok || len(got) != 2 {
			t.Errorf("%s: recovery of the last 2: %d, %v", id, len(got), ok)
		}
		a.Unlock()
		b.Unlock()
	}
	// The times came along: after the TTL from the first message, it goes.
	now = time.Unix(1000, 0).Add(DefaultTTL).Add(time.Second)
	dst.Sweep()
	if st := dst.Stats(); st.EvictedTTL == 0 {
		t.Errorf("no message expired after the TTL: %+v", st)
	}

	full, _ := src.Exporter().Next(nil, 1<<20)
	for _, bad := range [][]byte{full[:len(full)/2], full[:7], {0xff}, append([]byte{1, 'x', 0, 1, 0}, full...)} {
		if err := New(Options{}).Import(bad); !errors.Is(err, ErrImport) {
			t.Errorf("import of %d forged bytes: %v, want ErrImport", len(bad), err)
		}
	}
}

// FuzzImport feeds Import arbitrary chunks, split anywhere: it takes them or
// refuses them with ErrImport, and never panics or loops.
func FuzzImport(f *testing.F) {
	src := New(Options{})
	l := src.Lock("r")
	l.Append([]byte(`{"a":1}`))
	l.Append([]byte(`{"a":2}`))
	l.Unlock()
	full, _ := src.Exporter().Next(nil, 1<<20)
	f.Add(full)
	f.Add(full[:len(full)-1])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		s := New(Options{Size: 3})
		if err := s.Import(b); err != nil && !errors.Is(err, ErrImport) {
			t.Fatalf("Import: %v", err)
		}
	})
}
