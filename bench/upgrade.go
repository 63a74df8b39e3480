package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gobwas/ws"
	"github.com/valyala/fastjson"

	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/protocol"
)

// The upgrade scenario: rooms chat over every connection while the target
// process is replaced, by a handoff (SIGUSR2: the new process takes every
// connection) or by today's drain and restart (SIGTERM: close 1001 at the
// server's --drain-rate, a restarted server, clients that redial and recover).
// Every member records what it got from each sender by the sender's own
// sequence number, so the tally finds every delivery lost, duplicated or out
// of order, and the longest silence each member saw.

// Upgrade modes.
const (
	UpgradeHandoff = "handoff"
	UpgradeDrain   = "drain"
)

// DefaultUpgradeConns is the upgrade scenario's connection count: what one
// server process holds on a machine with 20,000 open files per process.
const DefaultUpgradeConns = 19000

// UpgradeOptions configure the upgrade scenario. Zero fields take the
// defaults given.
type UpgradeOptions struct {
	// Mode is UpgradeHandoff (the default) or UpgradeDrain.
	Mode string `json:"mode"`
	// PID is the target server's process id, on this machine. Required.
	PID int `json:"pid"`
	// Restart, in drain mode, is the shell command that starts the server
	// again, run as `sh -c 'exec <Restart>'` once the old process has exited
	// (what `systemctl restart` does). The process it starts is left serving,
	// as the new process of a handoff is; the report gives its pid.
	Restart string `json:"restart,omitempty"`
	// Warmup is how long the rooms chat before the signal; the pauses seen
	// in it are the baseline. If zero, 10s.
	Warmup time.Duration `json:"warmup"`
	// Settle is how long the rooms go on chatting once the new process serves
	// every connection again. If zero, 5s.
	Settle time.Duration `json:"settle"`
	// SettleTimeout bounds the wait for every connection to be served again
	// after the signal. If zero, 60s.
	SettleTimeout time.Duration `json:"settle_timeout"`
	// Backoff and BackoffMax shape a member's redials after its connection
	// ends: the n-th waits a random time between half and all of
	// min(Backoff·2ⁿ, BackoffMax). If zero, 100ms and 5s.
	Backoff    time.Duration `json:"backoff"`
	BackoffMax time.Duration `json:"backoff_max"`
}

func (o *UpgradeOptions) setDefaults(c *Config) error {
	switch o.Mode {
	case "":
		o.Mode = UpgradeHandoff
	case UpgradeHandoff, UpgradeDrain:
	default:
		return fmt.Errorf("bench: --mode must be %s or %s, not %q", UpgradeHandoff, UpgradeDrain, o.Mode)
	}
	if o.PID <= 0 {
		return errors.New("bench: upgrade needs the target server's --pid")
	}
	if o.Mode == UpgradeDrain && o.Restart == "" {
		return errors.New("bench: --mode drain needs --restart, the command that starts the server again")
	}
	if o.Mode == UpgradeHandoff && o.Restart != "" {
		return errors.New("bench: --restart goes with --mode drain; a handoff starts the new process itself")
	}
	for _, d := range []*time.Duration{&o.Warmup, &o.Settle, &o.SettleTimeout, &o.Backoff, &o.BackoffMax} {
		if *d < 0 {
			return errors.New("bench: upgrade durations must not be negative")
		}
	}
	setDef(&o.Warmup, 10*time.Second)
	setDef(&o.Settle, 5*time.Second)
	setDef(&o.SettleTimeout, 60*time.Second)
	setDef(&o.Backoff, 100*time.Millisecond)
	setDef(&o.BackoffMax, 5*time.Second)
	if len(c.Targets) != 1 || len(c.Targets[0].URLs) > 1 {
		return errors.New("bench: upgrade measures one target, the server of --pid")
	}
	if len(c.Stages) > 0 {
		return errors.New("bench: --stages does not apply to upgrade")
	}
	return nil
}

// MarshalJSON writes the durations as strings, as Config does.
func (o UpgradeOptions) MarshalJSON() ([]byte, error) {
	type plain UpgradeOptions
	return json.Marshal(struct {
		plain
		Warmup        string `json:"warmup"`
		Settle        string `json:"settle"`
		SettleTimeout string `json:"settle_timeout"`
		Backoff       string `json:"backoff"`
		BackoffMax    string `json:"backoff_max"`
	}{plain(o), o.Warmup.String(), o.Settle.String(), o.SettleTimeout.String(), o.Backoff.String(), o.BackoffMax.String()})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (o *UpgradeOptions) UnmarshalJSON(b []byte) error {
	type plain UpgradeOptions
	var aux struct {
		*plain
		Warmup, Settle, SettleTimeout, Backoff, BackoffMax string
	}
	aux.plain = (*plain)(o)
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	for _, d := range []struct {
		s   string
		dst *time.Duration
	}{{aux.Warmup, &o.Warmup}, {aux.Settle, &o.Settle}, {aux.SettleTimeout, &o.SettleTimeout}, {aux.Backoff, &o.Backoff}, {aux.BackoffMax, &o.BackoffMax}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil {
			return fmt.Errorf("bench: upgrade options: %w", err)
		}
		*d.dst = v
	}
	return nil
}

// UpgradeStats is what the upgrade scenario measured. The same fields for
// both modes, so the two can be set side by side.
type UpgradeStats struct {
	Mode     string  `json:"mode"`
	PID      int     `json:"pid"`
	NewPID   int     `json:"new_pid,omitempty"` // the process serving at the end
	Rooms    int     `json:"rooms"`
	RoomSize int     `json:"room_size"`
	RoomRate float64 `json:"room_rate"`
	Conns    int     `json:"conns"` // joined before the signal

	// Dropped are the members' connections that ended without the bench
	// asking, Reconnected the redials that joined again, Rejoins those of
	// them that asked to recover (they had a history position), Recovered
	// those answered "recovered":true.
	Dropped     int    `json:"dropped"`
	Reconnected int    `json:"reconnected"`
	FailedDials int    `json:"failed_dials"`
	Rejoins     uint64 `json:"rejoins"`
	Recovered   uint64 `json:"recovered"`

	// Sent are the messages written, Expected the deliveries they owe (each
	// to every member of its room), Delivered those that arrived (once
	// each); Lost is Expected − Delivered; Undelivered are messages no member
	// got at all (the server never took them). Duplicated and OutOfOrder are
	// deliveries of a message already had, or after a later one of the same
	// sender. Skipped are sends due while no member of the room was joined.
	Sent        uint64 `json:"sent"`
	Skipped     uint64 `json:"skipped"`
	Expected    uint64 `json:"expected"`
	Delivered   uint64 `json:"delivered"`
	Lost        uint64 `json:"lost"`
	Undelivered uint64 `json:"undelivered"`
	Duplicated  uint64 `json:"duplicated"`
	OutOfOrder  uint64 `json:"out_of_order"`

	// Pause is, over the members, the longest time each went without a
	// delivery from the signal to the end; Baseline the same over the
	// warm-up, for the gap the message rate alone makes.
	Pause    *Latency `json:"pause"`
	Baseline *Latency `json:"baseline_pause"`
	// WarmupLatency is the send-to-receive latency over the warm-up; the
	// result's latency is that from the signal on, which a freeze shows in.
	WarmupLatency *Latency `json:"warmup_latency,omitempty"`

	// HandoffSeconds runs from the signal to the old process's exit;
	// BackSeconds from the signal until every member was served again (the
	// old process gone and every connection open and joined).
	HandoffSeconds float64 `json:"handoff_seconds"`
	BackSeconds    float64 `json:"back_seconds"`

	// Memory, sampled from /proc every 10ms from the signal: the old
	// process's RSS at the signal and its peak until it exited, the new
	// process's peak while it took over and settled and its RSS at the end,
	// and the peak of both together.
	OldRSS      int64      `json:"old_rss"`
	OldPeakRSS  int64      `json:"old_peak_rss"`
	NewPeakRSS  int64      `json:"new_peak_rss"`
	NewRSSEnd   int64      `json:"new_rss_end"`
	BothPeakRSS int64      `json:"both_peak_rss"`
	RSS         []RSSPoint `json:"rss,omitempty"`
}

// RSSPoint is the two processes' RSS at T seconds after the signal.
type RSSPoint struct {
	T   float64 `json:"t"`
	Old int64   `json:"old"`
	New int64   `json:"new"`
}

// OK reports whether the upgrade went unnoticed: no connection dropped, no
// delivery lost, duplicated or reordered.
func (u *UpgradeStats) OK() bool {
	return u.Dropped == 0 && u.Lost == 0 && u.Duplicated == 0 && u.OutOfOrder == 0 && u.Undelivered == 0
}

// Agent side.

// Upgrade scenario operations.
const (
	opUpStart = "up-start" // send Rate messages per second to every room until up-stop
	opUpMark  = "up-mark"  // report the members' longest pauses so far and start counting again
	opUpStop  = "up-stop"  // stop sending and redialing
	opUpTally = "up-tally" // count what every member got against what was sent
)

// upAgent is an agent's upgrade-scenario state.
type upAgent struct {
	reconnect atomic.Bool // redial the members whose connections end

	mu     sync.Mutex
	stop   chan struct{} // guarded by mu: closed by up-stop
	done   chan struct{} // guarded by mu: closed when the sender has returned
	stopAt time.Time     // guarded by mu

	sent, skipped           atomic.Uint64
	rejoins, recovered      atomic.Uint64
	redials, redialFailures atomic.Uint64
}

// upTrack is one member's record of what it got. Guarded by mu: written on
// the member's loop, read by the tally.
type upTrack struct {
	mu      sync.Mutex
	got     [][]uint64 // per sender (its index in the room): a bit per sequence number had
	hi      []uint32   // per sender: the highest sequence number had
	last    time.Time  // the last delivery
	maxGap  time.Duration
	dups    uint64
	ooo     uint64
	offset  uint64 // the room history position of the last message, for since
	epoch   string
	started bool // joined once
	rejoin  bool // the current connection is a redial
	attempt int  // redials since the last join
}

// upReport is one agent's tally.
type upReport struct {
	Sent        uint64                 `json:"sent"`
	Skipped     uint64                 `json:"skipped"`
	Expected    uint64                 `json:"expected"`
	Delivered   uint64                 `json:"delivered"`
	Undelivered uint64                 `json:"undelivered"`
	Duplicated  uint64                 `json:"duplicated"`
	OutOfOrder  uint64                 `json:"out_of_order"`
	Rejoins     uint64                 `json:"rejoins"`
	Recovered   uint64                 `json:"recovered"`
	Pauses      *hdrhistogram.Snapshot `json:"pauses,omitempty"` // each member's longest pause, µs
}

func newUpTrack(roomSize int) *upTrack {
	return &upTrack{got: make([][]uint64, roomSize), hi: make([]uint32, roomSize)}
}

// upJoinSince appends the since of a member that had messages, so a redial
// recovers what it missed, as a real client does.
func upJoinSince(b []byte, t *upTrack) []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rejoin = t.started
	if t.epoch == "" {
		return b
	}
	b = append(b, `,"since":{"offset":`...)
	b = appendUint(b, t.offset)
	b = append(b, `,"epoch":`...)
	b = protocol.AppendJSONString(b, t.epoch)
	return append(b, '}')
}

func (a *agent) upJoined(p *peer, v *fastjson.Value) {
	t := p.up
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.rejoin && v.Get("recovered") != nil {
		a.up.rejoins.Add(1)
		if v.GetBool("recovered") {
			a.up.recovered.Add(1)
		}
	}
	t.started, t.attempt = true, 0
	off, e := v.GetUint64("offset"), v.GetStringBytes("epoch")
	if len(e) > 0 && (string(e) != t.epoch || off > t.offset) {
		t.offset, t.epoch = off, string(e)
	}
}

// upMessage records a delivery: content is room (8 hex digits), sender id
// (8), the sender's sequence number (8), send time (16).
func (a *agent) upMessage(p *peer, v *fastjson.Value, content []byte) {
	sender, ok1 := parseHexN(content, 8, 8)
	seq, ok2 := parseHexN(content, 16, 8)
	if !ok1 || !ok2 || seq == 0 || int(sender)/a.cfg.RoomSize != p.room {
		a.mismatch.Add(1)
		return
	}
	si := int(sender) % a.cfg.RoomSize
	now := time.Now()
	t := p.up
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.last.IsZero() {
		t.maxGap = max(t.maxGap, now.Sub(t.last))
	}
	t.last = now
	w, bit := int(seq/64), uint64(1)<<(seq%64)
	for len(t.got[si]) <= w {
		t.got[si] = append(t.got[si], 0)
	}
	switch {
	case t.got[si][w]&bit != 0:
		t.dups++
	default:
		t.got[si][w] |= bit
		if uint32(seq) < t.hi[si] {
			t.ooo++
		}
		t.hi[si] = max(t.hi[si], uint32(seq))
	}
	if off := v.GetUint64("offset"); off > 0 {
		t.offset = off
		if e := v.GetStringBytes("epoch"); string(e) != t.epoch {
			t.epoch = string(e)
		}
	}
}

// upClosed redials a member whose connection ended, after a backoff, while
// the scenario runs.
func (a *agent) upClosed(p *peer, wasReady bool) {
	if !a.up.reconnect.Load() || p.parked.Load() {
		return
	}
	t := p.up
	t.mu.Lock()
	n := t.attempt
	t.attempt++
	t.mu.Unlock()
	if !wasReady {
		a.up.redialFailures.Add(1)
	}
	d := min(a.cfg.Backoff<<min(n, 20), a.cfg.BackoffMax)
	d = d/2 + rand.N(d/2+1)
	time.AfterFunc(d, func() {
		if a.up.reconnect.Load() {
			a.up.redials.Add(1)
			a.dialTracked(p)
		}
	})
}

// upStart starts sending rate messages per second to each room, from its
// joined members in turn, until upStop. Unlike chat it goes on while members
// are away: what they miss is what the tally counts.
func (a *agent) upStart(rate float64) error {
	if rate <= 0 {
		return errors.New("bench: upgrade needs a message rate")
	}
	a.up.mu.Lock()
	defer a.up.mu.Unlock()
	if a.up.stop != nil {
		return errors.New("bench: upgrade traffic already started")
	}
	stop, done := make(chan struct{}), make(chan struct{})
	a.up.stop, a.up.done = stop, done
	a.up.reconnect.Store(true)
	go func() {
		defer close(done)
		a.upSend(rate, stop)
	}()
	return nil
}

func (a *agent) upSend(rate float64, stop <-chan struct{}) {
	size := a.cfg.RoomSize
	interval := time.Duration(float64(time.Second) / rate)
	var jobs sync.WaitGroup
	defer jobs.Wait()
	peers := a.upPeers()
	rooms := len(peers) / size
	start := time.Now()
	next := make([]time.Time, rooms)
	turn := make([]int, rooms)
	for k := range next {
		// Spread the rooms' sends over the interval rather than all at once.
		next[k] = start.Add(time.Duration(rand.Int64N(int64(interval))))
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		now := time.Now()
		batches := make(map[*poller.Loop][]*peer)
		for k := range rooms {
			for ; !next[k].After(now); next[k] = next[k].Add(interval) {
				var p *peer
				for j := range size {
					q := peers[k*size+(turn[k]+j)%size]
					if q.loop.Load() != nil {
						p = q
						turn[k] += j + 1
						break
					}
				}
				if p == nil {
					a.up.skipped.Add(1)
					continue
				}
				l := p.loop.Load()
				batches[l] = append(batches[l], p)
			}
		}
		for l, ps := range batches {
			jobs.Add(1)
			if !l.Post(poller.FuncJob(func() {
				defer jobs.Done()
				al := a.loops[l.Index()]
				for _, p := range ps {
					if p.c == nil || !p.c.Open() || !p.joined || !a.upSendOne(p, al) {
						a.up.skipped.Add(1)
					}
				}
			})) {
				jobs.Done()
			}
		}
	}
}

// upSendOne sends p's next message; its sequence number counts only once the
// message is on its way.
func (a *agent) upSendOne(p *peer, al *agentLoop) bool {
	seq := p.usent.Load() + 1
	b := append(al.buf[:0], `{"type":"chat","roomId":"`...)
	b = appendRoom(b, p.room)
	b = append(b, `","content":"`...)
	b = appendHex32(b, uint32(p.room))
	b = appendHex32(b, uint32(p.id))
	b = appendHex32(b, seq)
	b = appendHex(b, uint64(time.Now().UnixNano()))
	b = append(b, a.pad[:max(min(a.cfg.Size, 500)-bcastID, 0)]...)
	b = append(b, `"}`...)
	al.buf = b
	if !a.send(p.c, ws.OpText, b) {
		return false
	}
	p.usent.Store(seq)
	a.up.sent.Add(1)
	return true
}

// upMark returns every member's longest pause so far and starts counting
// pauses again.
func (a *agent) upMark() *hdrhistogram.Snapshot {
	h := newHist()
	for _, p := range a.upPeers() {
		t := p.up
		t.mu.Lock()
		if t.maxGap > 0 {
			h.RecordValue(max(t.maxGap.Microseconds(), 1))
		}
		t.maxGap = 0
		t.mu.Unlock()
	}
	return export(h)
}

// upStop stops the sends and the redials, and waits for the last sends.
func (a *agent) upStop(ctx context.Context) (sent int, err error) {
	a.up.mu.Lock()
	stop, done := a.up.stop, a.up.done
	if stop == nil {
		a.up.mu.Unlock()
		return 0, errors.New("bench: upgrade traffic not started")
	}
	select {
	case <-stop:
	default:
		close(stop)
		a.up.stopAt = time.Now()
	}
	a.up.mu.Unlock()
	a.up.reconnect.Store(false)
	select {
	case <-done:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return int(a.up.sent.Load()), nil
}

func (a *agent) upPeers() []*peer {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.peers
}

// upTally counts, for every room, what each member got of what each member
// sent.
func (a *agent) upTally() *upReport {
	a.up.mu.Lock()
	end := a.up.stopAt
	a.up.mu.Unlock()
	if end.IsZero() {
		end = time.Now()
	}
	r := &upReport{Sent: a.up.sent.Load(), Skipped: a.up.skipped.Load(), Rejoins: a.up.rejoins.Load(), Recovered: a.up.recovered.Load()}
	size := a.cfg.RoomSize
	peers := a.upPeers()
	pauses := newHist()
	union := make([][]uint64, size)
	for k := 0; k+size <= len(peers); k += size {
		room := peers[k : k+size]
		for s := range union {
			union[s] = union[s][:0]
		}
		for _, m := range room {
			t := m.up
			t.mu.Lock()
			gap := t.maxGap
			if !t.last.IsZero() {
				gap = max(gap, end.Sub(t.last))
			}
			pauses.RecordValue(max(gap.Microseconds(), 1))
			r.Duplicated += t.dups
			r.OutOfOrder += t.ooo
			for s, sender := range room {
				n := uint64(sender.usent.Load())
				r.Expected += n
				got := t.got[s]
				for len(union[s]) < len(got) {
					union[s] = append(union[s], 0)
				}
				for w, word := range got {
					union[s][w] |= word
					r.Delivered += uint64(bits.OnesCount64(word & seqMask(w, n)))
				}
			}
			t.mu.Unlock()
		}
		for s, sender := range room {
			n := uint64(sender.usent.Load())
			had := uint64(0)
			for w, word := range union[s] {
				had += uint64(bits.OnesCount64(word & seqMask(w, n)))
			}
			r.Undelivered += n - had
		}
	}
	r.Pauses = export(pauses)
	return r
}

// seqMask is the bits of word w that stand for sequence numbers 1..n.
func seqMask(w int, n uint64) uint64 {
	lo := uint64(w) * 64
	var m uint64 = ^uint64(0)
	if w == 0 {
		m &^= 1 // there is no sequence number 0
	}
	switch {
	case n < lo:
		return 0
	case n-lo >= 63:
		return m
	}
	return m & (uint64(1)<<(n-lo+1) - 1)
}

// Coordinator side.

// procWatch samples the old and new server processes' memory from the
// signal on.
type procWatch struct {
	mu       sync.Mutex
	old, new int // guarded by mu; new is 0 until known
	oldGone  time.Time
	st       UpgradeStats // guarded by mu: the RSS fields
	t0       time.Time
}

func (w *procWatch) setNew(pid int) {
	w.mu.Lock()
	w.new = pid
	w.mu.Unlock()
}

func (w *procWatch) pids() (oldPID, newPID int, oldGone time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.old, w.new, w.oldGone
}

// findNew returns the old process's live child: the new process. The Go
// runtime's first process start also clones a child that exits at once (its
// CLONE_PIDFD probe), so a child that has exited is passed over, and one
// chosen before is replaced if it exits while the old process lives.
func (w *procWatch) findNew(oldPID, cur int) int {
	var live []int
	for _, k := range procChildren(oldPID) {
		if st, err := procState(k); err == nil && !st.exited {
			if k == cur {
				return cur
			}
			live = append(live, k)
		}
	}
	if len(live) == 0 {
		return cur
	}
	w.setNew(live[len(live)-1])
	return live[len(live)-1]
}

// run samples every 10ms until ctx ends. In handoff mode the new process is
// the old one's child, found while the old one lives.
func (w *procWatch) run(ctx context.Context, findChild bool) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	lastPoint := -1.0
	for {
		w.mu.Lock()
		oldPID, newPID, gone := w.old, w.new, !w.oldGone.IsZero()
		w.mu.Unlock()
		var oldRSS, newRSS int64
		if !gone {
			st, err := procState(oldPID)
			if err != nil || st.exited {
				w.mu.Lock()
				w.oldGone = time.Now()
				w.mu.Unlock()
			} else {
				oldRSS = st.rss
				if findChild {
					newPID = w.findNew(oldPID, newPID)
				}
			}
		}
		if newPID > 0 {
			if st, err := procState(newPID); err == nil && !st.exited {
				newRSS = st.rss
			}
		}
		now := time.Since(w.t0).Seconds()
		w.mu.Lock()
		w.st.OldPeakRSS = max(w.st.OldPeakRSS, oldRSS)
		w.st.NewPeakRSS = max(w.st.NewPeakRSS, newRSS)
		w.st.BothPeakRSS = max(w.st.BothPeakRSS, oldRSS+newRSS)
		if newRSS > 0 {
			w.st.NewRSSEnd = newRSS
		}
		if now-lastPoint >= 0.1 {
			w.st.RSS = append(w.st.RSS, RSSPoint{T: now, Old: oldRSS, New: newRSS})
			lastPoint = now
		}
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// upgrade runs the scenario: join, chat, warm up, signal, wait until every
// member is served again, settle, stop, tally.
func (r *run) upgrade(ctx context.Context) error {
	cfg := r.cfg
	o := cfg.Upgrade
	u := &UpgradeStats{Mode: o.Mode, PID: o.PID, RoomSize: cfg.RoomSize, RoomRate: cfg.RoomRate}
	r.res.Upgrade = u
	if st, err := procState(o.PID); err != nil || st.exited {
		return fmt.Errorf("bench: upgrade: no running process %d", o.PID)
	}
	r.setPhase("join")
	opened, failed, err := r.connect(ctx, cfg.Conns)
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("bench: %d of %d clients failed to connect and join", failed, cfg.Conns)
	}
	u.Conns, u.Rooms = opened, opened/cfg.RoomSize
	before, _ := r.snapshot()
	r.setPhase("warm-up")
	if _, err := r.all(ctx, func(int) command { return command{Op: opUpStart, Rate: cfg.RoomRate} }); err != nil {
		return err
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		_, err := r.all(context.Background(), func(int) command { return command{Op: opUpStop} })
		return err
	}
	defer stop()
	if err := sleep(ctx, o.Warmup); err != nil {
		return err
	}
	replies, err := r.all(ctx, func(int) command { return command{Op: opUpMark} })
	if err != nil {
		return err
	}
	base := newHist()
	for _, rp := range replies {
		if rp.Up != nil {
			merge(base, rp.Up.Pauses)
		}
	}
	u.Baseline = latencyOf(base)
	r.snapshot()
	r.mu.Lock()
	u.WarmupLatency = latencyOf(r.lat)
	r.lat.Reset() // the result's latency is from the signal on
	r.mu.Unlock()

	// The signal, and memory sampled from it.
	u.OldRSS, _ = procRSS(o.PID)
	w := &procWatch{old: o.PID, t0: time.Now()}
	wctx, stopWatch := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stopWatch(); wg.Wait() }()
	wg.Add(1)
	go func() { defer wg.Done(); w.run(wctx, o.Mode == UpgradeHandoff) }()
	sig := syscall.SIGUSR2
	if o.Mode == UpgradeDrain {
		sig = syscall.SIGTERM
	}
	r.setPhase(o.Mode)
	t0 := w.t0
	if err := syscall.Kill(o.PID, sig); err != nil {
		return fmt.Errorf("bench: signal %d: %w", o.PID, err)
	}
	deadline := time.Now().Add(o.SettleTimeout)
	var restarted *exec.Cmd
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: %s: the members were not all served again within %v", o.Mode, o.SettleTimeout)
		}
		_, newPID, gone := w.pids()
		if !gone.IsZero() && u.HandoffSeconds == 0 {
			u.HandoffSeconds = gone.Sub(t0).Seconds()
		}
		if o.Mode == UpgradeDrain && !gone.IsZero() && restarted == nil {
			r.setPhase("restart")
			restarted = exec.Command("/bin/sh", "-c", "exec "+o.Restart)
			restarted.Stdout, restarted.Stderr = os.Stderr, os.Stderr
			// Its own session: it serves on after the bench, as the
			// handoff's new process does, and a ^C to the bench is not for it.
			restarted.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := restarted.Start(); err != nil {
				return fmt.Errorf("bench: --restart: %w", err)
			}
			w.setNew(restarted.Process.Pid)
			newPID = restarted.Process.Pid
		}
		if restarted != nil {
			// Not waited for while it runs: it outlives the bench.
			if st, err := procState(newPID); err != nil || st.exited {
				return fmt.Errorf("bench: the --restart command exited: %v", restarted.Wait())
			}
		}
		if !gone.IsZero() && newPID > 0 {
			if s, _ := r.snapshot(); int(s.Open) >= opened {
				u.BackSeconds = time.Since(t0).Seconds()
				u.NewPID = newPID
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, err := procState(u.NewPID); err != nil || st.exited {
		return fmt.Errorf("bench: the new process %d is not running", u.NewPID)
	}
	r.setPhase("settle")
	if err := sleep(ctx, o.Settle); err != nil {
		return err
	}
	r.setPhase("tally")
	if err := stop(); err != nil {
		return err
	}
	// Let the last messages land.
	if err := sleep(ctx, 2*time.Second); err != nil {
		return err
	}
	stopWatch()
	wg.Wait()
	w.mu.Lock()
	u.OldPeakRSS, u.NewPeakRSS, u.NewRSSEnd, u.BothPeakRSS, u.RSS = w.st.OldPeakRSS, w.st.NewPeakRSS, w.st.NewRSSEnd, w.st.BothPeakRSS, w.st.RSS
	w.mu.Unlock()
	replies, err = r.all(ctx, func(int) command { return command{Op: opUpTally} })
	if err != nil {
		return err
	}
	pauses := newHist()
	for _, rp := range replies {
		t := rp.Up
		if t == nil {
			continue
		}
		u.Sent += t.Sent
		u.Skipped += t.Skipped
		u.Expected += t.Expected
		u.Delivered += t.Delivered
		u.Undelivered += t.Undelivered
		u.Duplicated += t.Duplicated
		u.OutOfOrder += t.OutOfOrder
		u.Rejoins += t.Rejoins
		u.Recovered += t.Recovered
		merge(pauses, t.Pauses)
	}
	u.Lost = u.Expected - u.Delivered
	u.Pause = latencyOf(pauses)
	after, _ := r.snapshot()
	u.Dropped = int(after.Dropped - before.Dropped)
	u.Reconnected = int(after.Opened - before.Opened)
	u.FailedDials = int(after.Failed - before.Failed)
	if o.Mode == UpgradeHandoff && !u.OK() {
		return fmt.Errorf("bench: the handoff was noticed: %d dropped, %d deliveries lost, %d duplicated, %d out of order",
			u.Dropped, u.Lost, u.Duplicated, u.OutOfOrder)
	}
	return nil
}

// upgradeRows adds the upgrade scenario's lines to the table.
func upgradeRows(add func(label string, f func(r *Result) string)) {
	up := func(label string, f func(u *UpgradeStats) string) {
		add(label, func(r *Result) string {
			if r.Upgrade == nil {
				return ""
			}
			return f(r.Upgrade)
		})
	}
	mib := func(v int64) string { return fmt.Sprintf("%.0f", float64(v)/(1<<20)) }
	up("upgrade: mode, pid → new pid", func(u *UpgradeStats) string {
		return fmt.Sprintf("%s, %d → %d", u.Mode, u.PID, u.NewPID)
	})
	up("upgrade: members (rooms x size, msgs/s per room)", func(u *UpgradeStats) string {
		return fmt.Sprintf("%d (%d x %d, %g)", u.Conns, u.Rooms, u.RoomSize, u.RoomRate)
	})
	up("upgrade: connections dropped", func(u *UpgradeStats) string { return itoa(u.Dropped) })
	up("upgrade: reconnected / failed dials / recovered", func(u *UpgradeStats) string {
		return fmt.Sprintf("%d / %d / %d of %d", u.Reconnected, u.FailedDials, u.Recovered, u.Rejoins)
	})
	up("upgrade: messages sent (skipped)", func(u *UpgradeStats) string { return fmt.Sprintf("%d (%d)", u.Sent, u.Skipped) })
	up("upgrade: deliveries had / owed", func(u *UpgradeStats) string { return fmt.Sprintf("%d / %d", u.Delivered, u.Expected) })
	up("upgrade: lost / never delivered messages", func(u *UpgradeStats) string { return fmt.Sprintf("%d / %d", u.Lost, u.Undelivered) })
	up("upgrade: duplicated / out of order", func(u *UpgradeStats) string { return fmt.Sprintf("%d / %d", u.Duplicated, u.OutOfOrder) })
	up("upgrade: longest pause max / p99 / p50", func(u *UpgradeStats) string {
		if u.Pause == nil {
			return ""
		}
		return fmt.Sprintf("%s / %s / %s", fmtMS(u.Pause.Max), fmtMS(u.Pause.P99), fmtMS(u.Pause.P50))
	})
	up("upgrade: warm-up pause max / p99", func(u *UpgradeStats) string {
		if u.Baseline == nil {
			return ""
		}
		return fmt.Sprintf("%s / %s", fmtMS(u.Baseline.Max), fmtMS(u.Baseline.P99))
	})
	up("upgrade: warm-up latency p50 / p99 / max", func(u *UpgradeStats) string {
		if u.WarmupLatency == nil {
			return ""
		}
		return fmt.Sprintf("%s / %s / %s", fmtMS(u.WarmupLatency.P50), fmtMS(u.WarmupLatency.P99), fmtMS(u.WarmupLatency.Max))
	})
	up("upgrade: signal → old exit / all served", func(u *UpgradeStats) string {
		return fmt.Sprintf("%.3fs / %.3fs", u.HandoffSeconds, u.BackSeconds)
	})
	up("upgrade: RSS MiB old at signal / old peak / new peak / new at end / both peak", func(u *UpgradeStats) string {
		return fmt.Sprintf("%s / %s / %s / %s / %s", mib(u.OldRSS), mib(u.OldPeakRSS), mib(u.NewPeakRSS), mib(u.NewRSSEnd), mib(u.BothPeakRSS))
	})
}

// ScenarioLongHelp is a scenario's longer help, where it needs one.
var ScenarioLongHelp = map[string]string{
	ScenarioUpgrade: "throng bench upgrade joins --conns clients to rooms of --room-size on the target (--url, on this\n" +
		"machine, process --pid), has every room chat at --room-rate, and after --warmup replaces the server:\n" +
		"  --mode handoff  SIGUSR2: the server hands every connection to a new process of the binary on disk;\n" +
		"  --mode drain    SIGTERM: the server sends close 1001 at its --drain-rate and exits; the bench then\n" +
		"                  runs --restart, and the clients redial with backoff, asking to recover from history.\n" +
		"The rooms chat on until every member is served again and --settle has passed. Each message carries its\n" +
		"sender and the sender's sequence number, so the report counts connections dropped, deliveries lost,\n" +
		"duplicated and out of order, each member's longest pause in delivery (max and p99), the time from the\n" +
		"signal to the old process's exit, and both processes' RSS sampled every 10ms. A handoff that drops,\n" +
		"loses, duplicates or reorders anything fails the run. The server left serving is the new process.",
}
