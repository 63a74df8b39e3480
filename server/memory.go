package server

import (
	"log/slog"
	"sync/atomic"
	"time"
)

// memMonitor is admission control by memory. The monitor goroutine reads the
// process's RSS every Options.MemoryInterval; every loop's handshake reads the
// verdict, one atomic load. Open connections are never closed for memory: the
// remedy for a full server is to stop it growing, not to drop its clients.
type memMonitor struct {
	limit, high, low uint64        // bytes
	rss              atomic.Uint64 // the latest reading; 0 if unknown
	refusing         atomic.Bool   // new handshakes are refused
}

func newMemMonitor(limit uint64, high, low float64) *memMonitor {
	return &memMonitor{limit: limit, high: uint64(float64(limit) * high), low: uint64(float64(limit) * low)}
}

// update records a reading and moves the admission state: refusing from the
// high-water mark up, admitting again only below the low-water mark, so that a
// server hovering at the mark does not flap. An unknown reading (0) changes
// nothing.
func (m *memMonitor) update(rss uint64, log *slog.Logger) {
	m.rss.Store(rss)
	switch {
	case rss == 0:
	case rss >= m.high && m.refusing.CompareAndSwap(false, true):
		log.Warn("memory high-water mark reached: refusing new connections",
			"rss", rss, "high_water", m.high, "limit", m.limit)
	case rss < m.low && m.refusing.CompareAndSwap(true, false):
		log.Info("memory below the low-water mark: admitting new connections",
			"rss", rss, "low_water", m.low, "limit", m.limit)
	}
}

// MemoryStats is the process memory the server watches and its admission state.
type MemoryStats struct {
	// RSS is the resident set size now, in bytes; 0 if it cannot be read.
	RSS uint64
	// Baseline is the RSS the last time no socket was open: read when Listen is
	// called, and again at every sample (Options.MemoryInterval) and every call
	// of Memory while there are none.
	Baseline uint64
	// Conns is the number of open (upgraded) connections.
	Conns int64
	// BytesPerConn estimates what one connection costs: (RSS - Baseline) / Conns.
	// It is 0 without connections. The kernel's socket buffers are not in RSS.
	BytesPerConn float64
	// RSSPerConn is RSS / Conns: the whole process divided among its connections.
	RSSPerConn float64
	// Limit is Options.MemoryLimit; 0 if memory does not limit admission.
	Limit uint64
	// HighWater and LowWater are the admission marks, in bytes.
	HighWater, LowWater uint64
	// Refusing is true while new connections are refused for memory.
	Refusing bool
}

// Memory reads the process's RSS now and returns it with the admission state.
func (s *Server) Memory() MemoryStats {
	rss := s.noteBaseline(s.opts.MemoryReader())
	m := MemoryStats{RSS: rss, Baseline: s.baseline.Load(), Conns: s.openConns()}
	if m.Conns > 0 {
		m.RSSPerConn = float64(m.RSS) / float64(m.Conns)
		if m.RSS > m.Baseline {
			m.BytesPerConn = float64(m.RSS-m.Baseline) / float64(m.Conns)
		}
	}
	if s.mem != nil {
		m.Limit, m.HighWater, m.LowWater = s.mem.limit, s.mem.high, s.mem.low
		m.Refusing = s.mem.refusing.Load()
	}
	return m
}

// openConns sums the loops' open connections without building a Stats.
func (s *Server) openConns() int64 {
	var n int64
	for _, ls := range s.loops {
		n += ls.c.open.Load()
	}
	return n
}

// noteBaseline takes rss as the baseline if no socket is open, and returns it.
// The latest reading at zero is kept, not the lowest: the process's fixed cost
// grows after start (the HTTP server, the runtime's own caches), and what a
// connection costs is what it adds to the process as it then is.
func (s *Server) noteBaseline(rss uint64) uint64 {
	if rss != 0 && s.Conns() == 0 {
		s.baseline.Store(rss)
	}
	return rss
}

// sampleMemory reads RSS, updates the admission state and the baseline.
func (s *Server) sampleMemory() {
	rss := s.noteBaseline(s.opts.MemoryReader())
	if s.mem != nil {
		s.mem.update(rss, s.log)
	}
}

// monitor is the server's one background goroutine: it samples memory for
// admission and the baseline, lets handlers shed idle state (Sweeper), trims
// the heap when it went quiet (Options.TrimIdleMemory), and logs the periodic
// stats line. It runs until Close.
func (s *Server) monitor() {
	var statsC <-chan time.Time
	mt := time.NewTicker(s.opts.MemoryInterval)
	defer mt.Stop()
	memC := mt.C
	if s.opts.StatsInterval > 0 {
		t := time.NewTicker(s.opts.StatsInterval)
		defer t.Stop()
		statsC = t.C
	}
	var leak leakWatch
	for {
		select {
		case <-s.bg.Quit():
			return
		case <-memC:
			s.sampleMemory()
			s.sweep()
			if s.trim != nil {
				s.trim.check(s.log)
			}
		case <-statsC:
			s.logStats(&leak)
		}
	}
}

// logStats writes the periodic stats line, and a warning when leak sees bytes
// per connection rising steadily with the count unchanged.
func (s *Server) logStats(leak *leakWatch) {
	m := s.Memory()
	s.log.Info("stats", "conns", m.Conns, "sockets", s.Conns(), "rss", m.RSS,
		"bytes_per_conn", int64(m.BytesPerConn), "refusing", m.Refusing)
	if from, to, ok := leak.add(m.Conns, m.BytesPerConn); ok {
		s.log.Warn("bytes per connection rising while the connection count holds: possible leak",
			"conns", m.Conns, "from", int64(from), "to", int64(to), "samples", leakSamples)
	}
}

// The leak signal, made concrete: bytes per connection rose at each of
// leakSamples consecutive stats samples, by more than leakRise in all, while
// the connection count stayed within leakConnDrift of where the run began, with
// at least leakMinConns connections (fewer make the per-connection figure noise).
const (
	leakSamples   = 5
	leakRise      = 0.02
	leakConnDrift = 0.01
	leakMinConns  = 100
)

// leakWatch follows a run of rising samples. It is owned by the monitor
// goroutine.
type leakWatch struct {
	conns  int64   // the count when the run began
	first  float64 // bytes per connection when the run began
	last   float64 // the previous sample
	rises  int     // consecutive rises since first
	primed bool    // first holds a sample
}

// add takes one sample and reports whether it completes a leak signal, with the
// bytes per connection at the run's start and now. After a signal the run
// starts over, so a leak that goes on is reported every leakSamples samples.
func (w *leakWatch) add(conns int64, bpc float64) (from, to float64, leak bool) {
	drift := float64(conns - w.conns)
	if drift < 0 {
		drift = -drift
	}
	if !w.primed || conns < leakMinConns || drift >= leakConnDrift*float64(w.conns) || bpc <= w.last {
		*w = leakWatch{conns: conns, first: bpc, last: bpc, primed: true}
		return 0, 0, false
	}
	w.rises++
	w.last = bpc
	if w.rises >= leakSamples && bpc > w.first*(1+leakRise) {
		from = w.first
		*w = leakWatch{conns: conns, first: bpc, last: bpc, primed: true}
		return from, bpc, true
	}
	return 0, 0, false
}

// Sweeper is implemented by a Handler that holds state it can shed while the
// server is quiet (chat's per-user rate buckets). The monitor goroutine calls
// Sweep once every Options.MemoryInterval, before it decides whether to trim
// the heap; Sweep runs concurrently with the loops and must not block them
// for long.
type Sweeper interface {
	Sweep(now time.Time)
}

// sweep calls every handler that is a Sweeper. Until Listen, Handle may still
// be adding routes; from then on the map is only read.
func (s *Server) sweep() {
	if !s.listened.Load() {
		return
	}
	now := s.now()
	for _, r := range s.routes {
		if sw, ok := r.h.(Sweeper); ok {
			sw.Sweep(now)
		}
	}
}
