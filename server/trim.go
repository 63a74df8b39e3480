package server

import (
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"time"
)

// The trim's thresholds. The heap is quiet when a monitor interval allocated
// at most trimQuietShare of the live heap (and at most trimQuietFloor bytes
// when the heap is small). A trim needs trimQuietIntervals quiet intervals in
// a row, and a quarter of the live heap (at least trimFloor) allocated since
// the previous trim: what a burst allocated is mostly garbage by then, and a
// trim costs at most the one collection per cycle that GOGC=25 runs anyway.
// The collector's own view of the garbage cannot be the test, as it sees
// none until it runs, and an idle heap is not collected for two minutes.
const (
	trimQuietShare     = 64 // live / 64 per interval
	trimQuietFloor     = 64 << 10
	trimQuietIntervals = 2
	trimFloor          = 1 << 20
)

// memTrim decides when to hand the heap's free memory back to the operating
// system. It is owned by the monitor goroutine; the counters are read by
// metrics.
type memTrim struct {
	samples    []metrics.Sample
	lastAllocs uint64 // cumulative bytes allocated at the previous check
	sinceTrim  uint64 // bytes allocated since the last trim
	quiet      int    // consecutive quiet intervals

	trims atomic.Uint64 // trims done
}

func newMemTrim() *memTrim {
	return &memTrim{samples: []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}}
}

// read returns the cumulative bytes allocated, the live heap as of the last
// collection, and the heap's footprint: its objects, live and dead, and its
// free memory not yet given back to the operating system.
func (t *memTrim) read() (allocs, live, footprint uint64) {
	metrics.Read(t.samples)
	v := func(i int) uint64 {
		if t.samples[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return t.samples[i].Value.Uint64()
	}
	return v(0), v(1), v(2) + v(3)
}

// check runs once per monitor interval and trims if the heap went quiet after
// enough allocation.
func (t *memTrim) check(log *slog.Logger) {
	allocs, live, before := t.read()
	if !t.due(allocs, live) {
		return
	}
	start := time.Now()
	// One collection and a scavenge of every free page. (A second
	// collection, to empty the sync.Pools' victim caches too, gave back
	// nothing more at 19,000 connections.)
	debug.FreeOSMemory()
	allocs, live, after := t.read()
	t.trimmed(allocs)
	log.Debug("memory trimmed", "live", live, "freed", int64(before)-int64(after), "took", time.Since(start))
}

// due takes one reading, the cumulative bytes allocated and the live heap,
// and reports whether to trim now.
func (t *memTrim) due(allocs, live uint64) bool {
	d := allocs - t.lastAllocs
	t.lastAllocs = allocs
	t.sinceTrim += d
	if d > max(trimQuietFloor, live/trimQuietShare) {
		t.quiet = 0
		return false
	}
	t.quiet++
	return t.quiet >= trimQuietIntervals && t.sinceTrim >= max(trimFloor, live/4)
}

// trimmed records a trim; allocs is the cumulative count after it.
func (t *memTrim) trimmed(allocs uint64) {
	t.lastAllocs = allocs
	t.sinceTrim = 0
	t.trims.Add(1)
}
