package server

import (
	"io"
	"log/slog"
	"testing"
)

// TestMemTrimDue: a burst of allocation followed by trimQuietIntervals quiet
// intervals is due one trim; staying quiet afterwards is not due another,
// busy intervals hold a trim off, and a quiet heap that allocated less than
// a quarter of its live size since the last trim is left alone.
func TestMemTrimDue(t *testing.T) {
	const live = 64 << 20
	tr := newMemTrim()
	allocs := uint64(0)
	step := func(d uint64) bool {
		allocs += d
		due := tr.due(allocs, live)
		if due {
			tr.trimmed(allocs)
		}
		return due
	}
	quiet := uint64(live / trimQuietShare / 2)
	if step(live) { // the ramp: busy
		t.Fatal("due during a burst")
	}
	for i := 1; i < trimQuietIntervals; i++ {
		if step(quiet) {
			t.Fatalf("due after %d quiet intervals, before %d", i, trimQuietIntervals)
		}
	}
	if !step(quiet) {
		t.Fatalf("not due after %d quiet intervals following a burst", trimQuietIntervals)
	}
	for range 10 {
		if step(quiet) {
			t.Fatal("due again while quiet, with a fraction of live/4 allocated since the trim")
		}
	}
	// Allocation going on: busy intervals reset the count.
	for range 5 {
		if step(live / 8) {
			t.Fatal("due while busy")
		}
	}
	if tr.quiet != 0 {
		t.Fatalf("quiet count %d after a busy interval, want 0", tr.quiet)
	}
	// A quarter of the live heap allocated since the trim, then quiet: due.
	due := false
	for range trimQuietIntervals {
		due = step(quiet)
	}
	if !due || tr.trims.Load() != 2 {
		t.Fatalf("due %v, trims %d after a second burst and quiet, want true, 2", due, tr.trims.Load())
	}
}

// TestMemTrimCheck runs the real readings and trim: whatever the rest of
// the process allocates meanwhile, a check never trims in the interval of a
// burst, and a trim, when one comes, is counted and resets what was allocated
// since.
func TestMemTrimCheck(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tr := newMemTrim()
	tr.check(log)
	n := tr.trims.Load()
	garbage = nil
	for range 4096 {
		garbage = append(garbage, make([]byte, 1024))
	}
	garbage = nil
	tr.check(log)
	if tr.trims.Load() != n {
		t.Fatal("trimmed in the interval of a 4 MiB burst")
	}
	for range 100 {
		tr.check(log)
		if tr.trims.Load() > n {
			if tr.sinceTrim != 0 || tr.quiet < trimQuietIntervals {
				t.Fatalf("after a trim: since %d, quiet %d", tr.sinceTrim, tr.quiet)
			}
			return
		}
	}
	t.Log("no quiet intervals in 100 checks: the rest of the process kept allocating")
}

// garbage keeps the allocations of the trim test from being optimized away.
var garbage [][]byte
