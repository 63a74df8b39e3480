package room

import (
	"slices"
	"sync/atomic"
	"time"
)

// histogram counts observations in fixed buckets with atomic counters, so that
// recording one takes no lock and allocates nothing: it sits on the broadcast
// path, which is proven allocation-free. Values are integers in the
// histogram's unit (recipients, nanoseconds), so the sum needs no CAS loop.
type histogram struct {
	bounds []uint64        // inclusive upper bounds, ascending
	counts []atomic.Uint64 // len(bounds)+1; the last is the +Inf bucket
	sum    atomic.Uint64
}

func newHistogram(bounds []uint64) *histogram {
	return &histogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

func (h *histogram) observe(v uint64) {
	i, _ := slices.BinarySearch(h.bounds, v) // the first bound >= v
	h.counts[i].Add(1)
	h.sum.Add(v)
}

// snapshot reads the counters; scale converts the unit (1e-9 for nanoseconds
// to seconds). The buckets are read one by one while broadcasts go on, so Count
// is the sum of the buckets read, and Sum may include an observation or two
// more: Prometheus tolerates that skew.
func (h *histogram) snapshot(scale float64) HistogramSnapshot {
	s := HistogramSnapshot{
		Bounds: make([]float64, len(h.bounds)),
		Counts: make([]uint64, len(h.counts)),
	}
	for i, b := range h.bounds {
		s.Bounds[i] = float64(b) * scale
	}
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
		s.Count += s.Counts[i]
	}
	s.Sum = float64(h.sum.Load()) * scale
	return s
}

// HistogramSnapshot is a histogram read at one moment.
type HistogramSnapshot struct {
	// Bounds are the buckets' inclusive upper bounds, ascending.
	Bounds []float64
	// Counts are the observations per bucket, not cumulative: Counts[i] fell in
	// (Bounds[i-1], Bounds[i]], and the last, Counts[len(Bounds)], above every bound.
	Counts []uint64
	// Count is the number of observations; Sum is their total.
	Count uint64
	Sum   float64
}

// Cumulative returns the count of observations at or below each bound, the
// form Prometheus exposes.
func (s HistogramSnapshot) Cumulative() map[float64]uint64 {
	m := make(map[float64]uint64, len(s.Bounds))
	var n uint64
	for i, b := range s.Bounds {
		n += s.Counts[i]
		m[b] = n
	}
	return m
}

// Fan-out bucket bounds: recipients in a 1-2-5 series up to a million, and
// durations from 10µs to 10s, where a fan-out that long means a loop is stuck.
var (
	recipientBounds = []uint64{
		0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
		10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
	}
	durationBounds = func() []uint64 {
		var b []uint64
		for d := 10 * time.Microsecond; d <= 10*time.Second; d *= 10 {
			b = append(b, uint64(d), uint64(d*25/10), uint64(d*5))
		}
		return b[:len(b)-2] // end at 10s
	}()
)

// BroadcastStats describes the table's broadcasts: how many members each went
// to, and the time from the Broadcast call until the last loop had delivered it.
type BroadcastStats struct {
	Recipients HistogramSnapshot // in members
	Duration   HistogramSnapshot // in seconds
}

// BroadcastStats reads the table's fan-out histograms. Broadcasts to a room that
// does not exist are not counted.
func (t *Table) BroadcastStats() BroadcastStats {
	return BroadcastStats{
		Recipients: t.fanSize.snapshot(1),
		Duration:   t.fanTime.snapshot(1e-9),
	}
}
