package server

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/throng-ws/throng/handoff"
)

func putKey(e *handoff.Enc, k string) { e.String(k) }

func getKey(d *handoff.Dec) (string, error) { k := d.String(); return k, d.Err() }

// exportAll runs a part's export to its last chunk, as handoff.Send does.
func exportAll(t *testing.T, p handoff.StatePart, max int) [][]byte {
	t.Helper()
	var chunks [][]byte
	for last := false; !last; {
		var b []byte
		var err error
		if b, last, err = p.Export(nil, max); err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, b)
		if len(chunks) > 10_000 {
			t.Fatal("the export does not end")
		}
	}
	return chunks
}

// TestKeyedLimitHandoff moves a KeyedLimit's buckets in chunks of about 64
// bytes: every key arrives with its tokens and refill time, the old table
// is untouched, a key spent before is refused after, and a smaller burst in
// the new process cuts the buckets to it.
func TestKeyedLimitHandoff(t *testing.T) {
	const keys = 500
	const now = 1_000_000
	old := NewKeyedLimit[string](0.001, 3)
	for i := range keys {
		for range i % 4 { // key i spends min(i%4, 3) tokens; %4 == 3 is spent
			old.Allow(fmt.Sprint("user", i), now)
		}
	}
	chunks := exportAll(t, old.HandoffPart("p", putKey), 64)
	if len(chunks) < keys/8 {
		t.Fatalf("%d keys in %d chunks, want chunks of a few keys", keys, len(chunks))
	}
	for i, c := range chunks[:len(chunks)-1] {
		if len(c) > 64+32 {
			t.Fatalf("chunk %d is %d bytes", i, len(c))
		}
	}
	if n := old.Len(); n != keys*3/4 {
		t.Fatalf("the old table holds %d keys after the export, want %d", n, keys*3/4)
	}
	for _, burst := range []int{3, 1} {
		t.Run(fmt.Sprint("burst=", burst), func(t *testing.T) {
			new := NewKeyedLimit[string](0.001, burst)
			im := new.HandoffImporter("p", getKey)
			for i, c := range chunks {
				if err := im.Import(c, i == len(chunks)-1); err != nil {
					t.Fatal(err)
				}
			}
			if n := new.Len(); n != keys*3/4 {
				t.Fatalf("the new table holds %d keys, want %d", n, keys*3/4)
			}
			for i := range keys {
				got := 0
				for range 4 {
					if ok, _ := new.Allow(fmt.Sprint("user", i), now); ok {
						got++
					}
				}
				if want := min(burst, 3-i%4); got != want {
					t.Fatalf("key %d (spent %d of 3) sent %d more, want %d", i, i%4, got, want)
				}
			}
		})
	}
}

// TestKeyedLimitHandoffCorrupt refuses chunks that do not decode or hold an
// impossible bucket, and a nil limit reads a good chunk and keeps nothing.
func TestKeyedLimitHandoffCorrupt(t *testing.T) {
	good := func() []byte {
		var e handoff.Enc
		e.String("k")
		e.Float(1)
		e.Int(5)
		return e.B
	}()
	for _, tc := range []struct {
		name  string
		chunk []byte
	}{
		{"truncated", good[:len(good)-1]},
		{"negative tokens", func() []byte { var e handoff.Enc; e.String("k"); e.Float(-1); e.Int(5); return e.B }()},
		{"no refill time", func() []byte { var e handoff.Enc; e.String("k"); e.Float(1); e.Int(0); return e.B }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := NewKeyedLimit[string](1, 3)
			err := l.HandoffImporter("p", getKey).Import(tc.chunk, true)
			if !errors.Is(err, handoff.ErrCorrupt) || !strings.Contains(err.Error(), "p") {
				t.Fatalf("import: %v, want a corrupt-state error naming the part", err)
			}
		})
	}
	var none *KeyedLimit[string]
	if err := none.HandoffImporter("p", getKey).Import(good, true); err != nil {
		t.Fatalf("a nil limit's import: %v", err)
	}
}
