package server

import (
	"io"
	"log/slog"
	"testing"
)

// garbage keeps the allocations of the trim test from being optimized away.
var garbage [][]byte

// TestMemTrimAfterQuiet: a burst of allocation followed by quiet intervals
// gets one trim; quiet without allocation since gets none, and allocation
// going on holds it off.
func TestMemTrimAfterQuiet(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tr := newMemTrim()
	tr.check(log) // the first reading counts everything since the start
	tr.sinceTrim, tr.quiet = 0, 0

	burst := func() {
		garbage = nil
		for range 4096 {
			garbage = append(garbage, make([]byte, 1024)) // 4 MiB
		}
		garbage = nil
	}
	burst()
	tr.check(log) // the burst's interval is busy
	if tr.trims.Load() != 0 {
		t.Fatal("trimmed during the burst")
	}
	for range trimQuietIntervals {
		tr.check(log)
	}
	if tr.trims.Load() != 1 {
		t.Fatalf("%d trims after %d quiet intervals following a burst, want 1", tr.trims.Load(), trimQuietIntervals)
	}
	for range 3 * trimQuietIntervals {
		tr.check(log)
	}
	if tr.trims.Load() != 1 {
		t.Fatalf("%d trims while idle after the trim, want still 1", tr.trims.Load())
	}
	// Busy intervals reset the quiet count: no trim while they go on.
	for range 3 {
		burst()
		tr.check(log)
	}
	if tr.trims.Load() != 1 || tr.quiet != 0 {
		t.Fatalf("trims %d, quiet %d while allocating, want 1 and 0", tr.trims.Load(), tr.quiet)
	}
}
